"""The parameter-free optimizers of issue 18: DoG, DoWG, COCOB, Mechanic (`mechanize`), and
their primitives `scale_by_dog`, `scale_by_dowg`, `scale_by_cocob`.

Oracle: Optax's `optax.contrib` in float64, in closed loop (each step's gradient is that of a
fixed function at the current parameters), 30 steps over a tree with a 130 × 129 matrix, a
vector and a scalar, with Optax's defaults and with every hyperparameter moved; the parameters
must agree to 1e-7 relative after every step. Then the contract (`gradxform.testing`), the
wrappers (`inject_hyperparams`, `masked` / `partition`, `apply_if_finite`: each against Optax
on the same problem), equality by value, validation and a checkpoint round trip.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib as oc
from optax.contrib import _dog as optax_dog  # 0.2.8 does not export scale_by_dog / _dowg
import pytest
from flax import serialization

import gradxform as gx
import gradxform.testing as gxt

STEPS = 30
RTOL = 1e-7
MASK = {"w": True, "v": False, "s": True}

# name -> [(gradxform optimizer, Optax optimizer)]: the defaults first, then moved values.
CASES = {
    "dog": [
        (lambda: gx.dog(), lambda: oc.dog()),
        (lambda: gx.dog(0.7, ("distance", 1e-2), 1e-6, 0.05, MASK),
         lambda: oc.dog(0.7, ("distance", 1e-2), 1e-6, 0.05, MASK)),
        (lambda: gx.dog(gx.linear_schedule(1.0, 0.5, 20), ("learning_rate", 1e-2)),
         lambda: oc.dog(optax.linear_schedule(1.0, 0.5, 20), ("learning_rate", 1e-2))),
    ],
    "dowg": [
        (lambda: gx.dowg(), lambda: oc.dowg()),
        (lambda: gx.dowg(0.8, 1e-3, 1e-6, 0.05, MASK),
         lambda: oc.dowg(0.8, 1e-3, 1e-6, 0.05, MASK)),
    ],
    "cocob": [
        (lambda: gx.cocob(), lambda: oc.cocob()),
        (lambda: gx.cocob(0.5, 20.0, 1e-4, 0.05, MASK),
         lambda: oc.cocob(0.5, 20.0, 1e-4, 0.05, MASK)),
    ],
    "mechanize": [
        (lambda: gx.mechanize(gx.sgd(0.1)), lambda: oc.mechanize(optax.sgd(0.1))),
        (lambda: gx.mechanize(gx.adam(0.05), 0.1, 1e-6, 1e-4, 3),
         lambda: oc.mechanize(optax.adam(0.05), 0.1, 1e-6, 1e-4, 3)),
    ],
    "scale_by_dog": [
        (lambda: gx.chain(gx.scale_by_dog(("heuristic", 1e-4)), gx.scale(-1.0)),
         lambda: optax.chain(optax_dog.scale_by_dog(("heuristic", 1e-4)), optax.scale(-1.0))),
    ],
    "scale_by_dowg": [
        (lambda: gx.chain(gx.scale_by_dowg(eps=1e-3), gx.scale(-0.5)),
         lambda: optax.chain(optax_dog.scale_by_dowg(eps=1e-3), optax.scale(-0.5))),
    ],
}
IDS = [f"{name}-{'default' if i == 0 else f'moved{i}'}" for name, cases in CASES.items()
       for i in range(len(cases))]
FLAT = [pair for cases in CASES.values() for pair in cases]


def _problem():
  """Start, curvature and centre of `f(θ) = Σ ½ a (θ − c)² + 0.3 Σ sin θ` (float64)."""
  rng = np.random.default_rng(18)

  def draw(shape):
    return (rng.uniform(-2.0, 2.0, shape), rng.uniform(0.2, 3.0, shape),
            rng.uniform(-1.0, 1.0, shape))

  parts = {"w": draw((130, 129)), "v": draw((17,)), "s": draw(())}
  return tuple({k: np.asarray(p[i]) for k, p in parts.items()} for i in range(3))


def _grad(theta, a, c):
  return jax.tree.map(lambda t, a_, c_: a_ * (t - c_) + 0.3 * jnp.cos(t), theta, a, c)


def _both(theta0, a, c, pair):
  """Both optimizers in closed loop; each one's parameters after every step."""
  ours, theirs = pair[0](), pair[1]()

  def step(carry, _):
    (p1, s1), (p2, s2) = carry
    u1, s1 = ours.update(_grad(p1, a, c), s1, p1)
    u2, s2 = theirs.update(_grad(p2, a, c), s2, p2)
    p1, p2 = gx.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    return ((p1, s1), (p2, s2)), (p1, p2)

  carry = ((theta0, ours.init(theta0)), (theta0, theirs.init(theta0)))
  _, trajectories = jax.lax.scan(step, carry, None, length=STEPS)
  return trajectories


_both = jax.jit(_both, static_argnums=3)              # one compile per configuration


@pytest.mark.parametrize("pair", FLAT, ids=IDS)
def test_equals_optax_float64_every_step(pair):
  with jax.enable_x64(True):
    theta0, a, c = _problem()
    ours, theirs = jax.device_get(_both(theta0, a, c, pair))
  for key in theta0:
    assert ours[key].dtype == np.float64
    moved = np.abs(ours[key][-1] - theta0[key]).max()
    assert moved > 1e-4, f"{key} barely moved ({moved}): the comparison would be weak"
    for t in range(STEPS):
      np.testing.assert_allclose(ours[key][t], theirs[key][t], rtol=RTOL, atol=1e-12,
                                 err_msg=f"leaf {key}, step {t + 1}")


# --- the contract ------------------------------------------------------------------------

OPTIMIZERS = {
    "dog": lambda **kw: gx.dog(**kw),
    "dowg": lambda **kw: gx.dowg(**kw),
    "cocob": lambda **kw: gx.cocob(**kw),
    "mechanize": lambda **kw: gx.mechanize(gx.adam(0.1), **kw),
}
PRIMITIVES = {
    "scale_by_dog": lambda **kw: gx.scale_by_dog(("heuristic", 1e-4), **kw),
    "scale_by_dowg": lambda **kw: gx.scale_by_dowg(**kw),
    "scale_by_cocob": lambda **kw: gx.scale_by_cocob(**kw),
}
# Optax's counterparts of OPTIMIZERS (the oracle of the wrapper tests).
OPTAX = {
    "dog": oc.dog,
    "dowg": oc.dowg,
    "cocob": oc.cocob,
    "mechanize": lambda **kw: oc.mechanize(optax.adam(0.1), **kw),
}


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.3, -0.2]),
          "s": jnp.asarray(0.7, jnp.float32)}


def _grads(k=0):
  return {"w": jnp.cos(jnp.arange(12.0) + k).reshape(3, 4), "b": jnp.array([-0.5, 0.25 + k]),
          "s": jnp.asarray(0.4 - 0.3 * k, jnp.float32)}


def _run(tx, params, steps=4, bad_step=None, update=None):
  """`steps` closed-loop updates (the params move); the updates of each. At `bad_step` the
  gradient is NaN."""
  update = update or tx.update
  state = tx.init(params)
  outs = []
  for k in range(steps):
    grads = {key: g for key, g in _grads(k).items() if key in params}
    if k == bad_step:
      grads = jax.tree.map(lambda g: g * jnp.nan, grads)
    u, state = update(grads, state, params)
    params = jax.tree.map(lambda p, u_: p + u_, params, u)
    outs.append(u)
  return outs, state, params


def _close(ours, theirs, rtol=2e-5, atol=1e-7):
  for p, q in zip(ours, theirs):
    assert jax.tree.structure(p) == jax.tree.structure(q)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), p, q)


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_check_transform(name):
  factory = {**OPTIMIZERS, **PRIMITIVES}[name]
  gxt.check_transform(factory(), _params(), needs_params=True)


def test_cocob_bfloat16_accumulators():
  gxt.check_transform(gx.scale_by_cocob(state_dtype=jnp.bfloat16), _params(), needs_params=True,
                      pmap=False)
  for tx in (gx.scale_by_cocob(state_dtype=jnp.bfloat16), gx.cocob(state_dtype=jnp.bfloat16)):
    state = tx.init(_params())
    state = state if isinstance(state, tuple) and hasattr(state, "reward") else state[-1]
    for field in ("cumulative_gradients", "scale", "subgradients", "reward"):
      assert {x.dtype for x in jax.tree.leaves(getattr(state, field))} == {
          jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(state.init_particles)} == {
        jnp.dtype(jnp.float32)}                      # the starting point stays exact


def test_scalars_kept_in_float32_for_bfloat16_params():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params())
  grads = jax.tree.map(lambda g: g.astype(jnp.bfloat16), _grads())
  for tx, fields in ((gx.scale_by_dog(("heuristic", 1e-6)), ("max_dist", "sum_sq_norm_grads")),
                     (gx.scale_by_dowg(), ("estim_sq_dist", "weighted_sq_norm_grads")),
                     (gx.mechanize(gx.sgd(0.1)), ("r", "m", "v", "s"))):
    u, state = tx.update(grads, tx.init(params), params)
    assert all(getattr(state, f).dtype == jnp.float32 for f in fields)   # Optax: bfloat16
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))


INJECTED = {
    "dog": dict(learning_rate=0.5, eps=1e-6, weight_decay=0.1),
    "dowg": dict(learning_rate=0.5, init_estim_sq_dist=1e-3, eps=1e-5, weight_decay=0.1),
    "cocob": dict(learning_rate=0.5, alpha=20.0, eps=1e-6, weight_decay=0.1),
    "mechanize": dict(weight_decay=0.05, eps=1e-7, s_init=1e-3),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_inject_hyperparams_equals_optax_and_injects(name):
  kwargs = INJECTED[name]
  if name == "mechanize":
    injected = gx.inject_hyperparams(gx.mechanize)(gx.adam(0.1), **kwargs)
  else:
    injected = gx.inject_hyperparams(getattr(gx, name))(**kwargs)
  assert set(injected.init(_params()).hyperparams) == set(kwargs)
  ours, _, _ = _run(injected, _params())
  theirs, _, _ = _run(OPTAX[name](**kwargs), _params())
  _close(ours, theirs)
  if name != "mechanize":                                 # η injected as 0: no step
    state = injected.init(_params())
    state = state._replace(hyperparams={**state.hyperparams, "learning_rate": jnp.asarray(0.0)})
    u, _ = injected.update(_grads(), state, _params())
    assert all(np.all(np.asarray(x) == 0.0) for x in jax.tree.leaves(u))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_masked_and_partition_equal_optax_on_their_leaves(name):
  opt = OPTIMIZERS[name]()
  params = _params()
  sub = {"w": params["w"], "s": params["s"]}
  alone, _, _ = _run(OPTAX[name](), sub)
  grouped, _, _ = _run(gx.partition({"opt": opt, "sgd": gx.sgd(0.1)},
                                    {"w": "opt", "b": "sgd", "s": "opt"}), params)
  masked, _, _ = _run(gx.masked(opt, {"w": True, "b": False, "s": True}), params, steps=1)
  for k in range(4):
    for key in ("w", "s"):
      np.testing.assert_allclose(grouped[k][key], alone[k][key], rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(grouped[k]["b"], -0.1 * _grads(k)["b"], rtol=1e-6)
  for key in ("w", "s"):
    np.testing.assert_allclose(masked[0][key], alone[0][key], rtol=2e-5, atol=1e-7)
  np.testing.assert_array_equal(masked[0]["b"], _grads(0)["b"])   # passed through


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_apply_if_finite_skips_a_nan_step_as_optax(name):
  ours, state, _ = _run(gx.apply_if_finite(OPTIMIZERS[name](), 2), _params(), bad_step=1)
  theirs, _, _ = _run(optax.apply_if_finite(OPTAX[name](), 2), _params(), bad_step=1)
  assert all(np.all(np.asarray(x) == 0.0) for x in jax.tree.leaves(ours[1]))
  assert int(state.total_notfinite) == 1
  _close(ours, theirs)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_checkpoint_round_trip_then_resume_equals_optax(name):
  n, k = 5, 2
  theirs, _, _ = _run(OPTAX[name](), _params(), steps=n)
  tx = OPTIMIZERS[name]()
  upd = jax.jit(tx.update)
  first, state, params = _run(tx, _params(), steps=k, update=upd)
  blob = serialization.to_bytes({"params": params, "opt": state})
  fresh = OPTIMIZERS[name]()                       # a new optimizer object, as after a restart
  restored = serialization.from_bytes({"params": _params(), "opt": fresh.init(_params())}, blob)
  assert jax.tree.structure(restored["opt"]) == jax.tree.structure(state)
  for x, y in zip(jax.tree.leaves(restored["opt"]), jax.tree.leaves(state)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(x, y)
  params, state = restored["params"], restored["opt"]
  rest = []
  for i in range(k, n):
    u, state = fresh.update(_grads(i), state, params)
    params = jax.tree.map(lambda p, u_: p + u_, params, u)
    rest.append(u)
  _close(first + rest, theirs)


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_equal_by_value(name):
  factory = {**OPTIMIZERS, **PRIMITIVES}[name]
  assert factory() == factory() and hash(factory()) == hash(factory())


def test_different_hyperparameters_differ():
  assert gx.dog() != gx.dog(init_step=("distance", 1e-6))
  assert gx.dog(weight_decay=0.1, mask=MASK) == gx.dog(weight_decay=0.1, mask=dict(MASK))
  assert gx.dowg() != gx.dowg(eps=1e-3)
  assert gx.cocob() != gx.cocob(alpha=50.0)
  assert gx.cocob() != gx.cocob(state_dtype=jnp.bfloat16)
  assert gx.mechanize(gx.sgd(0.1)) == gx.mechanize(gx.sgd(0.1))
  assert gx.mechanize(gx.sgd(0.1)) != gx.mechanize(gx.sgd(0.2))
  assert gx.mechanize(gx.sgd(0.1)) != gx.mechanize(gx.sgd(0.1), num_betas=3)
  assert gx.scale_by_dog(("heuristic", 1e-6)) == gx.scale_by_dog(("heuristic", 1e-6), 1e-8)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.dog(-1.0), "dog: learning_rate"),
    (lambda: gx.dog(init_step=("guess", 1e-6)), "dog: init_step tag must be one of"),
    (lambda: gx.dog(init_step=1e-6), "dog: init_step must be a pair"),
    (lambda: gx.dog(init_step=("distance", 0.0)), "dog: init_step value must be > 0"),
    (lambda: gx.dog(eps=-1.0), "dog: eps must be"),
    (lambda: gx.dog(weight_decay=-0.1), "dog: weight_decay must be"),
    (lambda: gx.dowg(-0.5), "dowg: learning_rate"),
    (lambda: gx.dowg(init_estim_sq_dist=-1.0), "dowg: init_estim_sq_dist must be"),
    (lambda: gx.dowg(eps=-1.0), "dowg: eps must be"),
    (lambda: gx.dowg(weight_decay=-1.0), "dowg: weight_decay must be"),
    (lambda: gx.cocob(-1.0), "cocob: learning_rate"),
    (lambda: gx.cocob(alpha=-1.0), "cocob: alpha must be"),
    (lambda: gx.cocob(eps=0.0), "cocob: eps must be > 0"),
    (lambda: gx.cocob(weight_decay=-1.0), "cocob: weight_decay must be"),
    (lambda: gx.cocob(state_dtype=jnp.int32), "scale_by_cocob: state_dtype"),
    (lambda: gx.mechanize(gx.sgd(0.1), weight_decay=-1.0), "mechanize: weight_decay must be"),
    (lambda: gx.mechanize(gx.sgd(0.1), eps=-1.0), "mechanize: eps must be"),
    (lambda: gx.mechanize(gx.sgd(0.1), s_init=0.0), "mechanize: s_init must be > 0"),
    (lambda: gx.mechanize(gx.sgd(0.1), num_betas=0), "mechanize: num_betas must be"),
    (lambda: gx.mechanize(gx.sgd(0.1), num_betas=2.5), "mechanize: num_betas must be"),
    (lambda: gx.scale_by_dog(("heuristic", -1.0)), "scale_by_dog: init_step value"),
    (lambda: gx.scale_by_dowg(eps=-1.0), "scale_by_dowg: eps must be"),
    (lambda: gx.scale_by_cocob(eps=-1.0), "scale_by_cocob: eps must be > 0"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_mechanize_rejects_a_non_transform():
  with pytest.raises(TypeError, match="mechanize: base_optimizer"):
    gx.mechanize(0.1)


# --- hand-checked values and conventions ------------------------------------------------

def test_dog_steps_by_hand():
  tx = gx.scale_by_dog(("learning_rate", 0.25), eps=0.0)
  params = {"w": jnp.array([3.0, 4.0])}
  state = tx.init(params)
  u, state = tx.update({"w": jnp.array([1.0, 0.0])}, state, params)
  np.testing.assert_allclose(u["w"], [0.25, 0.0])          # the given first step size
  moved = {"w": jnp.array([0.0, 0.0])}                     # ‖θ − θ₀‖ = 5
  u, state = tx.update({"w": jnp.array([0.0, 2.0])}, state, moved)
  np.testing.assert_allclose(u["w"], [0.0, 5.0 / np.sqrt(5.0) * 2.0], rtol=1e-6)
  u, _ = tx.update({"w": jnp.array([0.0, 1.0])}, state, params)   # back at θ₀: r̄ stays 5
  np.testing.assert_allclose(u["w"], [0.0, 5.0 / np.sqrt(6.0)], rtol=1e-6)


def test_dowg_steps_by_hand():
  tx = gx.scale_by_dowg(init_estim_sq_dist=4.0, eps=0.0)
  params = {"w": jnp.array([1.0, 1.0])}
  state = tx.init(params)
  u, state = tx.update({"w": jnp.array([3.0, 4.0])}, state, params)
  np.testing.assert_allclose(u["w"], np.array([3.0, 4.0]) * 4.0 / np.sqrt(4.0 * 25.0))
  far = {"w": jnp.array([4.0, 5.0])}                       # ‖θ − θ₀‖² = 25 > 4
  u, _ = tx.update({"w": jnp.array([0.0, 1.0])}, state, far)
  np.testing.assert_allclose(u["w"], [0.0, 25.0 / np.sqrt(100.0 + 25.0)], rtol=1e-6)


def test_cocob_second_step_by_hand():
  alpha = 4.0
  tx = gx.scale_by_cocob(alpha=alpha, eps=1e-8)
  p0 = {"w": jnp.array([1.0])}
  state = tx.init(p0)
  u, state = tx.update({"w": jnp.array([2.0])}, state, p0)
  # L = 2, G = 2, R = 0, C = −2: θ₁ = 1 − 2 · 2/(2 · max(4, 8)) = 0.75
  np.testing.assert_allclose(u["w"], [-0.25])
  u, _ = tx.update({"w": jnp.array([-1.0])}, state, {"w": jnp.array([0.75])})
  # L = 2, G = 3, R = max(0 + 1 · (−0.25), 0) = 0, C = −1: θ₂ = 1 − 1 · 2/(2 · 8)
  np.testing.assert_allclose(u["w"], [1.0 - 2.0 / 16.0 - 0.75])


def test_mechanize_starts_from_the_first_updates_params():
  tx = gx.mechanize(gx.sgd(1.0), s_init=1e-2, num_betas=1)
  state = tx.init({"w": jnp.zeros(2)})                     # init sees placeholder zeros
  pretrained = {"w": jnp.array([1.0, -1.0])}
  u, state = tx.update({"w": jnp.array([0.5, 0.5])}, state, pretrained)
  np.testing.assert_array_equal(state.x0["w"], pretrained["w"])
  np.testing.assert_allclose(u["w"], [-0.005, -0.005], rtol=1e-4)   # −s_init · g from there


def test_mechanize_first_two_steps_by_hand():
  eps = 1e-8
  tx = gx.mechanize(gx.sgd(1.0), weight_decay=0.0, eps=eps, s_init=0.01, num_betas=1)
  p = {"w": jnp.array([1.0, -1.0], jnp.float32)}
  state = tx.init(p)
  g = jnp.array([0.5, 0.5])
  u, state = tx.update({"w": g}, state, p)
  # h = 0: m = ε, v = 0, r = 0 → s = (0.01 · ε)/(0 + ε) = 0.01; θ₁ = θ₀ − 0.01 · g
  np.testing.assert_allclose(state.s, [0.01], rtol=1e-6)
  np.testing.assert_allclose(u["w"], -0.01 * g, rtol=1e-5)
  p1 = {"w": p["w"] + u["w"]}
  u, state = tx.update({"w": g}, state, p1)
  # Δ = (θ₀ − θ₁)/s = g, h = ⟨g, Δ⟩ = 0.5 > m = ε: clipped to ε; β = 0.9
  h = 0.5
  m, v, r = max(0.9 * eps, h + eps), h * h, 0.0 + eps * 0.01
  s = (0.01 * m + r) / (np.sqrt(v) + eps)
  np.testing.assert_allclose(state.s, [s], rtol=1e-5)
  np.testing.assert_allclose(p1["w"] + u["w"], p["w"] - s * (2 * g), rtol=1e-5)
