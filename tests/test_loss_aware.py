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

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

import closed_loop as cl
import gradxform as gx
import gradxform.testing as gxt


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


def _loss(theta, a, c):
  """`f(θ) = Σ ½ a (θ − c)² + 0.3 Σ (1 + sin θ)`: positive, as the Polyak step wants."""
  return sum(jnp.sum(0.5 * a[k] * (theta[k] - c[k]) ** 2 + 0.3 * (1.0 + jnp.sin(theta[k])))
             for k in theta)


@pytest.mark.parametrize("pair", FLAT, ids=IDS)
def test_equals_optax_float64_every_step(pair):
  theta0, (ours, theirs) = cl.closed_loop(pair, seed=1616, loss=_loss)
  cl.assert_trajectories_close(theta0, ours, theirs)


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


def _value(k):
  """The loss passed with step `k` of the runs on the small tree."""
  return jnp.float32(2.0 / (1 + k))


_run = functools.partial(cl.run, value=_value)


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_check_transform(name):
  factory = {**OPTIMIZERS, **PRIMITIVES}[name]
  gxt.check_transform(factory(), cl.params(), needs_params=True, extra=EXTRA,
                      pmap=name in OPTIMIZERS)
  if name in BF16:                          # moments in bfloat16 for float32 parameters
    tx = factory(state_dtype=jnp.bfloat16)
    gxt.check_transform(tx, cl.params(), needs_params=True, extra=EXTRA, pmap=False)
    state = tx.init(cl.params())
    moments = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    assert {x.dtype for x in moments} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_missing_value_raises_naming_it(name):
  tx = {**OPTIMIZERS, **PRIMITIVES}[name]()
  with pytest.raises(ValueError, match=r"needs the loss: call update\(grads, state, params, "
                     r"value=loss\)"):
    tx.update(cl.grads(), tx.init(cl.params()), cl.params())


@pytest.mark.parametrize("name", ["momo", "momo_adam"])
def test_missing_params_raise(name):
  tx = OPTIMIZERS[name]()
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(cl.grads(), tx.init(cl.params()), None, value=1.0)


INJECTED = {
    "polyak_sgd": (dict(max_learning_rate=0.5, scaling=0.8, f_min=0.1, eps=1e-3), "scaling"),
    "momo": (dict(learning_rate=0.5, beta=0.8, lower_bound=0.1, weight_decay=0.01),
             "learning_rate"),
    "momo_adam": (dict(learning_rate=0.05, b1=0.8, b2=0.99, eps=1e-6, lower_bound=0.1,
                       weight_decay=0.01), "learning_rate"),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_inject_hyperparams_equals_plain_and_injects(name):
  kwargs, rate = INJECTED[name]
  cl.assert_inject_equals_plain(getattr(gx, name), kwargs, rate=rate, run_fn=_run,
                                zero_value=1.0)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_masked_and_partition_equal_the_optimizer_on_its_leaves(name):
  cl.assert_masked_and_partition_match(OPTIMIZERS[name](), run_fn=_run)


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_equal_by_value(name):
  cl.assert_equal_by_value({**OPTIMIZERS, **PRIMITIVES}[name], state_dtype=name in STATEFUL)


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
  run = cl.checkpoint_round_trip(OPTIMIZERS[name], cl.params(),
                                 value=lambda i: jnp.float32(3.0 / (1 + i)))
  cl.assert_identical(run.full[:2], run.resumed[:2])
