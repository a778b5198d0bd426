"""Dtypes: updates in each parameter's dtype, low-precision parameters, `state_dtype`,
float64 under `jax_enable_x64`, `None` leaves, and the single int32 step counter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_algorithms import (CASES, lr_schedule_jnp, make_problem, reference_run, run_gx,
                             shapes_for)

import gradxform as gx

#: One configuration per algorithm (the non-default flags where there are any); `state_dtype`
#: is passed by keyword.
ALGORITHMS = {
    "sgd": lambda **kw: gx.sgd(0.05, 0.9, dampening=0.1, weight_decay=1e-3, **kw),
    "sgdw": lambda **kw: gx.sgdw(0.05, 0.9, nesterov=True, **kw),
    "adagrad": lambda **kw: gx.adagrad(0.1, initial_accumulator_value=0.1, **kw),
    "adadelta": lambda **kw: gx.adadelta(**kw),
    "rmsprop": lambda **kw: gx.rmsprop(0.01, centered=True, momentum=0.9, nesterov=True, **kw),
    "adam": lambda **kw: gx.adam(lr_schedule_jnp, eps_root=1e-8, **kw),
    "adamw": lambda **kw: gx.adamw(0.01, weight_decay=0.1, **kw),
    "adamax": lambda **kw: gx.adamax(0.01, eps_in_max=True, **kw),
    "nadam": lambda **kw: gx.nadam(0.01, momentum_decay=0.004, **kw),
    "amsgrad": lambda **kw: gx.amsgrad(0.01, **kw),
    "radam": lambda **kw: gx.radam(0.01, **kw),
    "powersign": lambda **kw: gx.powersign(0.01, **kw),
    "addsign": lambda **kw: gx.addsign(0.01, **kw),
    "noisy_sgd": lambda **kw: gx.noisy_sgd(0.01, **kw),
}
STATEFUL = sorted(set(ALGORITHMS) - {"noisy_sgd"})  # noisy_sgd keeps only a counter

MIXED = {"f32": jnp.ones([3, 2], jnp.float32) * 0.5,
         "bf16": {"w": jnp.full([4], 0.3, jnp.bfloat16)},
         "f16": jnp.full([2, 2], -0.7, jnp.float16), "scalar_bf16": jnp.asarray(1.5, jnp.bfloat16)}


def _steps(tx, params, n=3):
  """`n` eager steps on deterministic gradients: (params, last updates, state).

  Eager on purpose: for these tiny trees op-by-op dispatch costs less than compiling a jit
  per configuration (jit / no-jit agreement is test_algorithms.py's business).
  """
  state = tx.init(params)
  ups = None
  for i in range(n):
    ups, state = tx.update(_grads_like_traced(params, i), state, params)
    params = gx.apply_updates(params, ups)
  return params, ups, state


def _grads_like_traced(params, i):
  """Deterministic, step-dependent gradients usable under jit."""
  return jax.tree.map(lambda p: (jnp.sin(jnp.arange(p.size, dtype=jnp.float32) * 1.7 + i)
                                 .reshape(p.shape)).astype(p.dtype), params)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_updates_in_each_parameter_dtype(name):
  tx = ALGORITHMS[name]()
  params, ups, _ = _steps(tx, MIXED)
  for p0, p, u in zip(jax.tree.leaves(MIXED), jax.tree.leaves(params), jax.tree.leaves(ups),
                      strict=True):
    assert u.dtype == p0.dtype and p.dtype == p0.dtype, (name, p0.dtype, u.dtype, p.dtype)
    assert bool(jnp.all(jnp.isfinite(p.astype(jnp.float32))))
    assert bool(jnp.any(u != 0)), name  # (a bf16 1.5 may not move by Adadelta's 1e-3 steps)


def _moment_leaves(state):
  """The state's buffers shaped like the parameters (not counters or scalar products)."""
  return [x for x in jax.tree.leaves(state) if jnp.ndim(x) > 0]


@pytest.mark.parametrize("name", STATEFUL)
def test_state_dtype(name):
  """Traced with `jax.eval_shape` (dtypes only, nothing compiled or run)."""
  params = {"w": jnp.full([4, 3], 0.5, jnp.bfloat16), "b": jnp.full([3], 0.1, jnp.bfloat16)}
  # float32 moments for bf16 parameters, kept across steps; updates still bf16.
  tx = ALGORITHMS[name](state_dtype=jnp.float32)
  out, ups, state = jax.eval_shape(lambda p: _steps(tx, p, n=2), params)
  moments = _moment_leaves(state)
  assert moments and all(m.dtype == jnp.float32 for m in moments), name
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(ups))
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(out))
  # bfloat16 moments for float32 parameters halve the state's bytes, also after a step.
  params32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  full = _moment_leaves(jax.eval_shape(ALGORITHMS[name]().init, params32))
  half_tx = ALGORITHMS[name](state_dtype=jnp.bfloat16)
  half = _moment_leaves(jax.eval_shape(lambda p: _steps(half_tx, p, n=2), params32)[2])
  assert all(m.dtype == jnp.bfloat16 for m in half)
  nbytes = lambda leaves: sum(m.size * m.dtype.itemsize for m in leaves)
  assert nbytes(half) * 2 == nbytes(full)


def test_bf16_params_track_float32():
  """bf16 parameters with float32 moments stay near the float32 run (bf16 rounding only)."""
  p32 = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
  p16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), p32)
  for name in ["adam", "sgd", "rmsprop", "nadam"]:
    a = _steps(ALGORITHMS[name](state_dtype=jnp.float32), p16, n=5)[0]["w"]
    b = _steps(ALGORITHMS[name](), p32, n=5)[0]["w"]
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), atol=2e-2, err_msg=name)


# ---------------------------------------------------------------------------------------------
# float64.

# One flag-heavy configuration per algorithm (a jit of a 100-step scan each).
X64_CASES = ["sgd_dampening", "sgdw_nomomentum_mask", "adagrad_torch", "adadelta_2",
             "rmsprop_centered_momentum_torch", "adam_schedule", "adamw_mask_fn", "adamax",
             "nadam_torch_2", "amsgrad", "radam", "radam_2", "powersign_decay",
             "addsign_decay"]


@pytest.mark.parametrize("name", X64_CASES)
def test_float64_matches_reference(name):
  tx, make_ref = CASES[name]
  with jax.enable_x64(True):
    params, grads = make_problem(dtype=np.float64, shapes=shapes_for(name))
    got = run_gx(tx, params, grads)
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(got))
  ref = reference_run(make_ref(), params, grads)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-13, err_msg=name)


def test_x64_does_not_leak():
  assert not jax.config.jax_enable_x64
  assert jnp.zeros([1]).dtype == jnp.float32
  assert jax.tree.leaves(gx.adam(0.1).init({"w": jnp.zeros([2])}))[0].dtype == jnp.int32


# ---------------------------------------------------------------------------------------------
# None leaves, step counters.


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_none_leaves_pass_through(name):
  tx = ALGORITHMS[name]()
  params = {"w": jnp.ones([3]), "frozen": None, "inner": {"b": jnp.zeros([2]), "c": None}}

  state = tx.init(params)
  grads = {"w": jnp.full([3], 0.5), "frozen": None, "inner": {"b": jnp.ones([2]), "c": None}}
  updates, state = tx.update(grads, state, params)
  updates, state = tx.update(grads, state, params)
  new = gx.apply_updates(params, updates)
  for tree in (updates, new):
    assert tree["frozen"] is None and tree["inner"]["c"] is None
    assert tree["w"].shape == (3,) and tree["inner"]["b"].shape == (2,)
  assert not bool(jnp.all(new["w"] == 1.0))


def _int_leaves(state):
  return [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.integer)]


@pytest.mark.parametrize("tx", [
    gx.adam(lr_schedule_jnp), gx.adamw(lr_schedule_jnp, weight_decay=lr_schedule_jnp),
    gx.nadam(lr_schedule_jnp), gx.nadam(lr_schedule_jnp, momentum_decay=0.004),
    gx.radam(lr_schedule_jnp), gx.amsgrad(lr_schedule_jnp), gx.adamax(lr_schedule_jnp),
    gx.sgd(lr_schedule_jnp, 0.9), gx.sgdw(lr_schedule_jnp, weight_decay=lr_schedule_jnp),
    gx.powersign(lr_schedule_jnp), gx.rmsprop(lr_schedule_jnp, momentum=0.9),
], ids=["adam", "adamw", "nadam", "nadam_torch", "radam", "amsgrad", "adamax", "sgd", "sgdw",
        "powersign", "rmsprop_momentum"])
def test_one_int32_step_counter(tx):
  params = {"w": jnp.ones([3]), "b": jnp.ones([])}
  state = tx.init(params)
  (count,) = _int_leaves(state)
  assert count.dtype == jnp.int32 and count.shape == () and int(count) == 0
  _, _, state = _steps(tx, params, n=4)
  (count,) = _int_leaves(state)
  assert count.dtype == jnp.int32 and int(count) == 4
