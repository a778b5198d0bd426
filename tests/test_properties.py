"""Property-based tests: random parameter trees and random chains of transforms."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradxform as gx

# GX_EXAMPLES=60 for a longer search; 8 keeps the suite inside its time budget.
SETTINGS = dict(max_examples=int(os.environ.get("GX_EXAMPLES", 8)), deadline=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
SHAPES = [(), (0,), (3,), (2, 2)]


def _array(spec):
  shape, dtype, seed = spec
  n = int(np.prod(shape))
  values = np.cos(np.arange(n) * 1.3 + seed).reshape(shape) + 0.1
  return jnp.asarray(values, dtype)


leaves = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(SHAPES), st.sampled_from(DTYPES),
              st.integers(0, 9)).map(_array))
trees = st.recursive(
    leaves,
    lambda kids: st.one_of(st.lists(kids, min_size=1, max_size=3),
                           st.lists(kids, min_size=1, max_size=2).map(tuple),
                           st.dictionaries(st.sampled_from(["a", "b", "c"]), kids, min_size=1,
                                           max_size=3)),
    max_leaves=5).filter(lambda t: len(jax.tree.leaves(t)) > 0)


def _size_over_one(p):
  return jax.tree.map(lambda x: x.size > 1, p)


PARTS = [
    lambda: gx.clip(0.5),
    lambda: gx.clip_by_global_norm(1.0),
    lambda: gx.scale_by_momentum(0.9),
    lambda: gx.scale_by_momentum(0.9, ema=True, nesterov=True),
    lambda: gx.bias_correction(0.9),
    lambda: gx.scale_by_rms(0.99, eps_in_sqrt=False, bias_correction=True),
    lambda: gx.add_gradient_noise(0.01),
    lambda: gx.decoupled_weight_decay(0.1),
    lambda: gx.adam(0.1),
    lambda: gx.sgd(0.1, 0.9),
    lambda: gx.masked(gx.scale_by_momentum(0.5), _size_over_one),
    lambda: gx.apply_if_finite(gx.adamw(0.1), 2),
    lambda: gx.accumulate_gradients(gx.scale_by_momentum(0.9), 2),
    lambda: gx.flatten(gx.adam(0.1)),
    lambda: gx.scale_by_learning_rate(0.1),
]
chains = st.lists(st.integers(0, len(PARTS) - 1), min_size=1, max_size=3).map(
    lambda idx: gx.chain(*[PARTS[i]() for i in idx]))


def _grads(params):
  return jax.tree.map(lambda p: (jnp.sin(p.astype(jnp.float32) * 3.0) + 0.2).astype(p.dtype),
                      params)


def _tol(dtype):
  return {"float32": 1e-5, "bfloat16": 3e-2, "float16": 5e-3}[jnp.dtype(dtype).name]


def _assert_close(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert jnp.result_type(x) == jnp.result_type(y) and jnp.shape(x) == jnp.shape(y)
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
      tol = _tol(jnp.result_type(x))
      np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                 rtol=tol, atol=tol)
    else:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _steps(tx, params, update, n=2):
  state = tx.init(params)
  outs = []
  for _ in range(n):
    u, state = update(_grads(params), state, params)
    outs.append((u, state))
    params = gx.apply_updates(params, u)
  return outs, params


@settings(**SETTINGS)
@given(params=trees, tx=chains)
def test_jit_equals_no_jit_and_types_are_preserved(params, tx):
  init_state = tx.init(params)
  eager, p_eager = _steps(tx, params, tx.update)
  jitted, p_jit = _steps(tx, params, jax.jit(tx.update))
  _assert_close(p_eager, p_jit)
  for (u, s), (ju, js) in zip(eager, jitted):
    _assert_close(u, ju)
    _assert_close(s, js)
    # updates keep the gradient's structure and dtypes; state keeps its structure and dtypes
    assert jax.tree.structure(u) == jax.tree.structure(params)
    for g, x in zip(jax.tree.leaves(params), jax.tree.leaves(u)):
      assert jnp.result_type(g) == jnp.result_type(x)
    assert jax.tree.structure(s) == jax.tree.structure(init_state)
    for a, b in zip(jax.tree.leaves(init_state), jax.tree.leaves(s)):
      assert jnp.result_type(a) == jnp.result_type(b) and jnp.shape(a) == jnp.shape(b)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_eager)):
    assert jnp.result_type(a) == jnp.result_type(b)


OUR_MESSAGES = re.compile(r"does not match the|shape mismatch at|optimizers need floating-point")


def _mutate(params, kind):
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = [x for _, x in paths_leaves]
  if kind == "shape":
    leaves[0] = jnp.zeros(jnp.shape(leaves[0]) + (1,), jnp.result_type(leaves[0]))
  elif kind == "int":
    leaves[0] = jnp.zeros(jnp.shape(leaves[0]), jnp.int32)
  out = treedef.unflatten(leaves)
  if kind == "structure":
    out = {"wrapped": out} if not isinstance(out, dict) else dict(out, extra=jnp.ones(2))
  return out


@settings(**SETTINGS)
@given(params=trees, tx=chains, kind=st.sampled_from(["structure", "shape", "int"]),
       jit=st.booleans())
def test_bad_gradients_give_our_clear_errors(params, tx, kind, jit):
  state = tx.init(params)
  bad = _mutate(_grads(params), kind)
  update = jax.jit(tx.update) if jit else tx.update
  try:
    update(bad, state, params)
  except (ValueError, TypeError) as e:
    assert OUR_MESSAGES.search(str(e)), f"not one of gradxform's messages: {e}"
    if kind == "int":
      assert isinstance(e, TypeError)
  else:
    raise AssertionError(f"no error for a {kind} mismatch")
