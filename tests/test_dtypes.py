"""Dtypes: updates in each parameter's dtype, low-precision parameters, `state_dtype`,
float64 under `jax_enable_x64`, `None` leaves, and the single int32 step counter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as R
from test_algorithms import (CASES, lr_schedule_jnp, lr_schedule_np, make_problem,
                             reference_run, run_gx, shapes_for)
from test_primitives import documented_normals

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

#: The float64 NumPy reference of each configuration above, for one flat leaf (noisy_sgd's, in
#: `_reference`, is given the documented normal draws of its leaf).
REFERENCES = {
    "sgd": lambda: R.SGD(0.05, 0.9, dampening=0.1, weight_decay=1e-3),
    "sgdw": lambda: R.SGDW(0.05, 0.9, nesterov=True, weight_decay=1e-4),
    "adagrad": lambda: R.Adagrad(0.1, initial_accumulator_value=0.1),
    "adadelta": lambda: R.Adadelta(),
    "rmsprop": lambda: R.RMSprop(0.01, centered=True, momentum=0.9, nesterov=True),
    "adam": lambda: R.Adam(lr_schedule_np, eps_root=1e-8),
    "adamw": lambda: R.Adam(0.01, weight_decay=0.1),
    "adamax": lambda: R.Adamax(0.01, eps_in_max=True),
    "nadam": lambda: R.Nadam(0.01, momentum_decay=0.004),
    "amsgrad": lambda: R.AMSGrad(0.01),
    "radam": lambda: R.RAdam(0.01),
    "powersign": lambda: R.PowerSign(0.01),
    "addsign": lambda: R.AddSign(0.01),
}


def _reference(name, leaf, params):
  """A fresh reference for leaf number `leaf` (in `jax.tree.leaves(params)` order)."""
  if name == "noisy_sgd":
    normals = lambda t: jax.tree.leaves(documented_normals(0, t, params))[leaf].ravel()
    return R.NoisySGD(0.01, normals)
  return REFERENCES[name]()


def _assert_update_matches(name, step, u, expected, factor):
  """|u − expected| ≤ factor · eps(u's dtype) · max |expected| on the leaf."""
  eps = float(jnp.finfo(u.dtype).eps)
  np.testing.assert_allclose(np.asarray(u, np.float64).ravel(), expected, rtol=0,
                             atol=factor * eps * np.max(np.abs(expected)),
                             err_msg=f"{name} step {step} {u.dtype}")

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
  """Three eager steps on a tree of float32, bfloat16 and float16 leaves (state in each
  parameter's dtype): every update is in its parameter's dtype and equals the float64
  reference driven by the same low-precision parameters and gradients, within a few units of
  that dtype's eps (× max|u| on the leaf). Observed worst: 2.0 (float32), 1.3 (bfloat16), 0.8
  (float16), the same with --xla_cpu_max_isa=AVX2; but 6.1 for Adadelta's float16 leaf, whose
  E[Δ²] ~ 1e-6 is subnormal in float16 (< 6.1e-5): 16 there, 8 elsewhere."""
  tx = ALGORITHMS[name]()
  params = MIXED
  refs = [_reference(name, i, MIXED) for i in range(len(jax.tree.leaves(MIXED)))]
  state = tx.init(params)
  for i in range(3):
    grads = _grads_like_traced(params, i)
    ups, state = tx.update(grads, state, params)
    new = gx.apply_updates(params, ups)
    for ref, p, g, u, p1 in zip(refs, jax.tree.leaves(params), jax.tree.leaves(grads),
                                jax.tree.leaves(ups), jax.tree.leaves(new), strict=True):
      assert u.dtype == p.dtype and p1.dtype == p.dtype, (name, p.dtype, u.dtype, p1.dtype)
      theta = np.asarray(p, np.float64).ravel()
      expected = ref.step(theta, np.asarray(g, np.float64).ravel()) - theta
      factor = 16 if (name, u.dtype) == ("adadelta", jnp.float16) else 8
      _assert_update_matches(name, i + 1, u, expected, factor)
    params = new


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


def test_bf16_params_track_the_reference():
  """bf16 parameters with float32 moments stay near the float64 reference run on the same
  (bf16) inputs: only the parameters' own rounding, ≤ half a bf16 ulp a step (2^-8 for
  |θ| < 2), separates them. Observed worst after 5 steps: 7.9e-3 (nadam, whose small steps
  round away at θ = ±1), against the bound 5 · 2^-8 = 1.95e-2."""
  p16 = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4).astype(jnp.bfloat16)}
  theta0 = np.asarray(p16["w"], np.float64).ravel()
  grads = [np.asarray(_grads_like_traced(p16, i)["w"], np.float64).ravel() for i in range(5)]
  for name in ["adam", "sgd", "rmsprop", "nadam"]:
    got = _steps(ALGORITHMS[name](state_dtype=jnp.float32), p16, n=5)[0]["w"]
    assert got.dtype == jnp.bfloat16
    expected = R.run(REFERENCES[name](), theta0, np.stack(grads))
    np.testing.assert_allclose(np.asarray(got, np.float64).ravel(), expected, rtol=0,
                               atol=5 * 2.0 ** -8, err_msg=name)


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
  """`None` leaves stay `None`; the other leaves get the reference's updates, as if the `None`
  leaves were not there (noisy_sgd: its keys are split over the two real leaves)."""
  tx = ALGORITHMS[name]()
  params = {"w": jnp.ones([3]), "frozen": None, "inner": {"b": jnp.zeros([2]), "c": None}}
  grads = {"w": jnp.full([3], 0.5), "frozen": None, "inner": {"b": jnp.ones([2]), "c": None}}
  leaves = jax.tree.leaves(params)  # [inner.b, w]: None is not a leaf
  assert len(leaves) == 2
  refs = [_reference(name, i, params) for i in range(len(leaves))]
  state = tx.init(params)
  for step in (1, 2):  # the same parameters twice; the gradients of step 2 are 3 times larger
    g_step = jax.tree.map(lambda g, k=2 * step - 1: k * g, grads)
    updates, state = tx.update(g_step, state, params)
    new = gx.apply_updates(params, updates)
    for tree in (updates, new):
      assert tree["frozen"] is None and tree["inner"]["c"] is None
    for ref, p, g, u in zip(refs, leaves, jax.tree.leaves(g_step), jax.tree.leaves(updates),
                            strict=True):
      theta = np.asarray(p, np.float64).ravel()
      expected = ref.step(theta, np.asarray(g, np.float64).ravel()) - theta
      _assert_update_matches(name, step, u, expected, 8)


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
