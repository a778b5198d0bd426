"""The parameter-free optimizers of issue 18: DoG, DoWG, COCOB, Mechanic (`mechanize`), and
their primitives `scale_by_dog`, `scale_by_dowg`, `scale_by_cocob`.

Oracle: Optax's `optax.contrib` in float64, in closed loop (each step's gradient is that of a
fixed function at the current parameters), 30 steps over a tree with a 130 × 129 matrix, a
vector and a scalar, with Optax's defaults and with every hyperparameter moved; the parameters
must agree to 1e-7 relative after every step. Then the contract (`gradxform.testing`), the
wrappers (`inject_hyperparams`, `masked` / `partition`, `apply_if_finite`: each against Optax
on the same problem), equality by value, validation and a checkpoint round trip.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib as oc
from optax.contrib import _dog as optax_dog  # 0.2.8 does not export scale_by_dog / _dowg
import pytest

import closed_loop as cl
import gradxform as gx
import gradxform.testing as gxt
from closed_loop import MASK


# name -> [(gradxform optimizer, Optax optimizer)]: the defaults first, then moved values.
CASES = {
    "dog": [
        (lambda: gx.dog(), lambda: oc.dog()),
        (lambda: gx.dog(0.7, ("distance", 1e-2), 1e-6, 0.05, MASK),
         lambda: oc.dog(0.7, ("distance", 1e-2), 1e-6, 0.05, MASK)),
        # 16 transition steps: every value of the schedule (float32, also under x64) is exact,
        # so the comparison does not depend on how XLA rounds it (FMA or not)
        (lambda: gx.dog(gx.linear_schedule(1.0, 0.5, 16), ("learning_rate", 1e-2)),
         lambda: oc.dog(optax.linear_schedule(1.0, 0.5, 16), ("learning_rate", 1e-2))),
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


@pytest.mark.parametrize("pair", FLAT, ids=IDS)
def test_equals_optax_float64_every_step(pair):
  theta0, (ours, theirs) = cl.closed_loop(pair, seed=18)
  cl.assert_trajectories_close(theta0, ours, theirs, min_move=1e-4)


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


# closed-loop updates of the small tree (the parameters move), 4 steps unless told
_run = functools.partial(cl.run, steps=4, move=True)


def _nan_at(bad_step):
  """`cl.grads_for`, but all NaN at step `bad_step`."""
  def grad_fn(k, params):
    g = cl.grads_for(k, params)
    return jax.tree.map(lambda x: x * jnp.nan, g) if k == bad_step else g
  return grad_fn


def _close(ours, theirs):
  cl.assert_steps_close(ours, theirs, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_check_transform(name):
  factory = {**OPTIMIZERS, **PRIMITIVES}[name]
  # pmap on the primitives, which carry the state; the optimizers chain them
  gxt.check_transform(factory(), cl.params(), needs_params=True, pmap=name in PRIMITIVES)


def test_cocob_bfloat16_accumulators():
  gxt.check_transform(gx.scale_by_cocob(state_dtype=jnp.bfloat16), cl.params(), needs_params=True,
                      pmap=False)
  for tx in (gx.scale_by_cocob(state_dtype=jnp.bfloat16), gx.cocob(state_dtype=jnp.bfloat16)):
    state = tx.init(cl.params())
    state = state if isinstance(state, tuple) and hasattr(state, "reward") else state[-1]
    for field in ("cumulative_gradients", "scale", "subgradients", "reward"):
      assert {x.dtype for x in jax.tree.leaves(getattr(state, field))} == {
          jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(state.init_particles)} == {
        jnp.dtype(jnp.float32)}                      # the starting point stays exact


def test_scalars_kept_in_float32_for_bfloat16_params():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), cl.params())
  grads = jax.tree.map(lambda g: g.astype(jnp.bfloat16), cl.grads())
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
  assert set(injected.init(cl.params()).hyperparams) == set(kwargs)
  ours, _, _ = _run(injected, cl.params())
  theirs, _, _ = _run(OPTAX[name](**kwargs), cl.params())
  _close(ours, theirs)
  if name != "mechanize":                                 # η injected as 0: no step
    state = injected.init(cl.params())
    state = state._replace(hyperparams={**state.hyperparams, "learning_rate": jnp.asarray(0.0)})
    u, _ = injected.update(cl.grads(), state, cl.params())
    cl.assert_all_zero(u)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_masked_and_partition_equal_optax_on_their_leaves(name):
  cl.assert_masked_and_partition_match(OPTIMIZERS[name](), reference=OPTAX[name](), run_fn=_run,
                                       steps=4, masked_steps=1, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_apply_if_finite_skips_a_nan_step_as_optax(name):
  ours, state, _ = _run(gx.apply_if_finite(OPTIMIZERS[name](), 2), cl.params(),
                        grad_fn=_nan_at(1))
  theirs, _, _ = _run(optax.apply_if_finite(OPTAX[name](), 2), cl.params(), grad_fn=_nan_at(1))
  cl.assert_all_zero(ours[1])
  assert int(state.total_notfinite) == 1
  _close(ours, theirs)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_checkpoint_round_trip_then_resume_equals_optax(name):
  n, k = 5, 2
  theirs, _, _ = _run(OPTAX[name](), cl.params(), steps=n)
  tx = OPTIMIZERS[name]()
  upd = jax.jit(tx.update)
  first, state, params = _run(tx, cl.params(), steps=k, update=upd)
  fresh = OPTIMIZERS[name]()                       # a new optimizer object, as after a restart
  params, restored = cl.save_and_restore(params, state, cl.params(), fresh.init(cl.params()))
  cl.assert_identical(restored, state)
  rest, _, _ = _run(fresh, params, steps=n - k, start=k, state=restored)
  _close(first + rest, theirs)


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_equal_by_value(name):
  cl.assert_equal_by_value({**OPTIMIZERS, **PRIMITIVES}[name])


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
