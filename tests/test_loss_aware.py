"""The optimizers that need the loss (issue 16): Polyak SGD, MoMo, MoMo-Adam, and their
primitives `scale_by_polyak`, `scale_by_momo`, `scale_by_momo_adam`.

Oracle: Optax itself in float64 (`optax.polyak_sgd`, `optax.contrib.momo`,
`optax.contrib.momo_adam`), in closed loop: each step's gradient and loss (`value=`) are those
of a fixed function at the current parameters, 30 steps over a tree with a 130 × 129 matrix,
a vector and a scalar, with Optax's defaults and with every hyperparameter moved (a
non-default `f_min` / lower bound, the `sps+` variant, the adaptive lower bound); parameters
must agree to 1e-7 relative after every step. Then the contract: `gradxform.testing`, the
wrappers, equality by value, validation, a missing `value=`, a checkpoint round trip.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from flax import serialization

import gradxform as gx
import gradxform.testing as gxt

STEPS = 30
RTOL = 1e-7



def _decay(count):
  """One schedule for both libraries (their linear schedules round differently in float32)."""
  return 1.0 / (1.0 + 0.05 * count)


# name -> [(gradxform optimizer, Optax optimizer)]: the defaults first, then moved values.
CASES = {
    "polyak_sgd": [
        (lambda: gx.polyak_sgd(), lambda: optax.polyak_sgd()),
        (lambda: gx.polyak_sgd(0.3, 0.7, 300.0, 1e-3, "sps+"),
         lambda: optax.polyak_sgd(0.3, 0.7, 300.0, 1e-3, "sps+")),
        (lambda: gx.polyak_sgd(2.0, _decay, f_min=-5.0),
         lambda: optax.polyak_sgd(2.0, _decay, f_min=-5.0)),
    ],
    "momo": [
        (lambda: gx.momo(), lambda: optax.contrib.momo()),
        (lambda: gx.momo(0.5, 0.7, 50.0, 0.01, True),
         lambda: optax.contrib.momo(0.5, 0.7, 50.0, 0.01, True)),
        (lambda: gx.momo(_decay, 0.8, 20.0, 0.1),
         lambda: optax.contrib.momo(_decay, 0.8, 20.0, 0.1)),
    ],
    "momo_adam": [
        (lambda: gx.momo_adam(), lambda: optax.contrib.momo_adam()),
        (lambda: gx.momo_adam(0.1, 0.8, 0.99, 1e-6, 50.0, 0.05, True),
         lambda: optax.contrib.momo_adam(0.1, 0.8, 0.99, 1e-6, 50.0, 0.05, True)),
    ],
}
IDS = [f"{name}-{i}" for name, cases in CASES.items() for i in range(len(cases))]
FLAT = [pair for cases in CASES.values() for pair in cases]


def _problem():
  """Start, curvature and centre of `f(θ) = Σ ½ a (θ − c)² + 0.3 Σ (1 + sin θ)` (float64)."""
  rng = np.random.default_rng(1616)

  def draw(shape):
    return (rng.uniform(-2.0, 2.0, shape), rng.uniform(0.2, 3.0, shape),
            rng.uniform(-1.0, 1.0, shape))

  parts = {"w": draw((130, 129)), "v": draw((17,)), "s": draw(())}
  return tuple({k: np.asarray(p[i]) for k, p in parts.items()} for i in range(3))


def _loss(theta, a, c):
  return sum(jnp.sum(0.5 * a[k] * (theta[k] - c[k]) ** 2 + 0.3 * (1.0 + jnp.sin(theta[k])))
             for k in theta)


def _both(theta0, a, c, pair):
  """Both optimizers in closed loop; each one's parameters after every step."""
  ours, theirs = pair[0](), pair[1]()
  value_and_grad = jax.value_and_grad(_loss)

  def step(carry, _):
    (p1, s1), (p2, s2) = carry
    f1, g1 = value_and_grad(p1, a, c)
    f2, g2 = value_and_grad(p2, a, c)
    u1, s1 = ours.update(g1, s1, p1, value=f1)
    u2, s2 = theirs.update(g2, s2, p2, value=f2)
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
    assert moved > 1e-3, f"{key} barely moved ({moved}): the comparison would be weak"
    for t in range(STEPS):
      np.testing.assert_allclose(ours[key][t], theirs[key][t], rtol=RTOL, atol=1e-12,
                                 err_msg=f"leaf {key}, step {t + 1}")


def test_polyak_first_step_by_hand():
  # θ = (3, −4): g = θ for f = ½‖θ‖² = 12.5, ‖g‖² = 25, γ = min(12.5/25, 1) = 0.5 → θ/2.
  theta = {"w": jnp.array([3.0, -4.0])}
  tx = gx.polyak_sgd()
  u, _ = tx.update(theta, tx.init(theta), theta, value=12.5)
  np.testing.assert_allclose(u["w"], [-1.5, 2.0], rtol=1e-6)
  # f* above the loss: "sps" steps uphill, "sps+" takes no step
  u, _ = tx.update(theta, tx.init(theta), theta, value=-1.0)
  assert float(u["w"][0]) > 0
  plus = gx.polyak_sgd(variant="sps+")
  u, _ = plus.update(theta, plus.init(theta), theta, value=-1.0)
  np.testing.assert_array_equal(u["w"], [0.0, 0.0])


def test_complex_parameters_count_as_two_reals():
  # z = 3 + 4i, g = z: ‖g‖² = |z|² = 25 (the real view's norm), f = 12.5 → γ = 0.5
  z = {"z": jnp.array([3.0 + 4.0j])}
  tx = gx.polyak_sgd()
  u, _ = tx.update(z, tx.init(z), z, value=12.5)
  assert u["z"].dtype == jnp.complex64
  np.testing.assert_allclose(u["z"], [-1.5 - 2.0j], rtol=1e-6)
  # MoMo's first step is the same Polyak step (⟨g, θ⟩ terms cancel)
  tx = gx.momo()
  u, _ = tx.update(z, tx.init(z), z, value=12.5)
  np.testing.assert_allclose(u["z"], [-1.5 - 2.0j], rtol=1e-6)


# --- the contract ------------------------------------------------------------------------

OPTIMIZERS = {
    "polyak_sgd": lambda **kw: gx.polyak_sgd(0.5),
    "momo": lambda **kw: gx.momo(0.5, **kw),
    "momo_adam": lambda **kw: gx.momo_adam(0.05, **kw),
}
PRIMITIVES = {
    "scale_by_polyak": lambda **kw: gx.scale_by_polyak(),
    "scale_by_momo": lambda **kw: gx.scale_by_momo(**kw),
    "scale_by_momo_adam": lambda **kw: gx.scale_by_momo_adam(**kw),
}
STATEFUL = {"momo", "momo_adam", "scale_by_momo", "scale_by_momo_adam"}
BF16 = {"momo", "momo_adam"}               # the primitives' moments are these optimizers' own
EXTRA = {"value": jnp.float32(2.0)}


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.3, -0.2]),
          "s": jnp.asarray(0.7, jnp.float32)}


def _grads(k=0):
  return {"w": jnp.cos(jnp.arange(12.0) + k).reshape(3, 4), "b": jnp.array([-0.5, 0.25 + k]),
          "s": jnp.asarray(0.4 - 0.3 * k, jnp.float32)}


def _run(tx, params, steps=3):
  state = tx.init(params)
  outs = []
  for k in range(steps):
    grads = {key: g for key, g in _grads(k).items() if key in params}
    u, state = tx.update(grads, state, params, value=jnp.float32(2.0 / (1 + k)))
    outs.append(u)
  return outs, state


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_check_transform(name):
  factory = {**OPTIMIZERS, **PRIMITIVES}[name]
  gxt.check_transform(factory(), _params(), needs_params=True, extra=EXTRA,
                      pmap=name in OPTIMIZERS)
  if name in BF16:                          # moments in bfloat16 for float32 parameters
    tx = factory(state_dtype=jnp.bfloat16)
    gxt.check_transform(tx, _params(), needs_params=True, extra=EXTRA, pmap=False)
    state = tx.init(_params())
    moments = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    assert {x.dtype for x in moments} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_missing_value_raises_naming_it(name):
  tx = {**OPTIMIZERS, **PRIMITIVES}[name]()
  with pytest.raises(ValueError, match=r"needs the loss: call update\(grads, state, params, "
                     r"value=loss\)"):
    tx.update(_grads(), tx.init(_params()), _params())


@pytest.mark.parametrize("name", ["momo", "momo_adam"])
def test_missing_params_raise(name):
  tx = OPTIMIZERS[name]()
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(_grads(), tx.init(_params()), None, value=1.0)


INJECTED = {
    "polyak_sgd": (dict(max_learning_rate=0.5, scaling=0.8, f_min=0.1, eps=1e-3), "scaling"),
    "momo": (dict(learning_rate=0.5, beta=0.8, lower_bound=0.1, weight_decay=0.01),
             "learning_rate"),
    "momo_adam": (dict(learning_rate=0.05, b1=0.8, b2=0.99, eps=1e-6, lower_bound=0.1,
                       weight_decay=0.01), "learning_rate"),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_inject_hyperparams_equals_plain_and_injects(name):
  factory, (kwargs, rate) = getattr(gx, name), INJECTED[name]
  injected = gx.inject_hyperparams(factory)(**kwargs)
  assert set(injected.init(_params()).hyperparams) == set(kwargs)
  plain_out, _ = _run(factory(**kwargs), _params())
  injected_out, _ = _run(injected, _params())
  for p, q in zip(plain_out, injected_out):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-7), p, q)
  state = injected.init(_params())
  state = state._replace(hyperparams={**state.hyperparams, rate: jnp.asarray(0.0)})
  u, _ = injected.update(_grads(), state, _params(), value=1.0)     # rate 0: no step
  assert all(np.all(np.asarray(x) == 0.0) for x in jax.tree.leaves(u))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_masked_and_partition_equal_the_optimizer_on_its_leaves(name):
  opt = OPTIMIZERS[name]()
  params = _params()
  alone, _ = _run(opt, {"w": params["w"], "s": params["s"]})
  masked, _ = _run(gx.masked(opt, {"w": True, "b": False, "s": True}), params)
  grouped, _ = _run(gx.partition({"opt": opt, "sgd": gx.sgd(0.1)},
                                 {"w": "opt", "b": "sgd", "s": "opt"}), params)
  for k in range(3):
    for key in ("w", "s"):
      np.testing.assert_allclose(masked[k][key], alone[k][key], rtol=1e-6)
      np.testing.assert_allclose(grouped[k][key], alone[k][key], rtol=1e-6)
    np.testing.assert_array_equal(masked[k]["b"], _grads(k)["b"])   # passed through
    np.testing.assert_allclose(grouped[k]["b"], -0.1 * _grads(k)["b"], rtol=1e-6)


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_equal_by_value(name):
  factory = {**OPTIMIZERS, **PRIMITIVES}[name]
  assert factory() == factory() and hash(factory()) == hash(factory())
  if name in STATEFUL:
    assert factory() != factory(state_dtype=jnp.bfloat16)


def test_different_hyperparameters_differ():
  assert gx.polyak_sgd() != gx.polyak_sgd(f_min=1.0)
  assert gx.polyak_sgd() != gx.polyak_sgd(variant="sps+")
  assert gx.momo() != gx.momo(adapt_lower_bound=True)
  assert gx.momo_adam() != gx.momo_adam(1e-3)
  assert gx.momo_adam(1e-2, 0.9) == gx.momo_adam(learning_rate=1e-2, b1=0.9)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.polyak_sgd(-1.0), "polyak_sgd: max_learning_rate must be >= 0"),
    (lambda: gx.polyak_sgd(scaling=-1.0), "polyak_sgd: scaling must be >= 0"),
    (lambda: gx.polyak_sgd(eps=-1.0), "polyak_sgd: eps must be >= 0"),
    (lambda: gx.polyak_sgd(variant="sgd"), "polyak_sgd: variant must be one of"),
    (lambda: gx.polyak_sgd(f_min=float("nan")), "scale_by_polyak: f_min"),
    (lambda: gx.momo(-1.0), "momo: learning_rate"),
    (lambda: gx.momo(beta=1.0), "momo: beta must be in [0, 1), got 1.0"),
    (lambda: gx.momo(weight_decay=-0.1), "momo: weight_decay must be >= 0"),
    (lambda: gx.momo(lower_bound="zero"), "scale_by_momo: lower_bound must be a number"),
    (lambda: gx.momo_adam(-1.0), "momo_adam: learning_rate"),
    (lambda: gx.momo_adam(b1=1.5), "momo_adam: b1 must be in [0, 1), got 1.5"),
    (lambda: gx.momo_adam(b2=-0.5), "momo_adam: b2 must be in [0, 1)"),
    (lambda: gx.momo_adam(eps=-1.0), "momo_adam: eps must be >= 0"),
    (lambda: gx.momo_adam(weight_decay=-1.0), "momo_adam: weight_decay"),
    (lambda: gx.scale_by_polyak(max_learning_rate=-1.0),
     "scale_by_polyak: max_learning_rate must be >= 0"),
    (lambda: gx.scale_by_momo(beta=-0.1), "scale_by_momo: beta must be in [0, 1)"),
    (lambda: gx.scale_by_momo_adam(state_dtype=jnp.int32), "scale_by_momo_adam: state_dtype"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_checkpoint_round_trip_and_exact_resume(name):
  make = OPTIMIZERS[name]
  params0 = _params()

  def train(tx, state, params, start, stop):
    for i in range(start, stop):
      u, state = tx.update(_grads(i), state, params, value=jnp.float32(3.0 / (1 + i)))
      params = gx.apply_updates(params, u)
    return params, state

  full_params, full_state = train(make(), make().init(params0), params0, 0, 5)
  tx = make()
  params, state = train(tx, tx.init(params0), params0, 0, 2)
  blob = serialization.to_bytes({"params": params, "opt": state})
  fresh = make()
  restored = serialization.from_bytes({"params": params0, "opt": fresh.init(params0)}, blob)
  params, state = train(fresh, restored["opt"], restored["params"], 2, 5)
  for x, y in zip(jax.tree.leaves((full_params, full_state)), jax.tree.leaves((params, state))):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
