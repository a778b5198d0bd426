"""gx.stateless: a transform from `f(updates, params) -> updates`, with `EmptyState`.

Values are derived by hand in the comments; the library's own stateless transforms (`clip`,
`scale`, `clip_by_global_norm`, `set_to_zero`) are built with it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx

PARAMS = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
GRADS = {"w": jnp.array([0.5, 0.25]), "b": jnp.array(-1.0)}


def pull_to_zero(updates, params):
  """u + 0.1 θ: a hand-written weight decay."""
  return jax.tree.map(lambda u, p: u + 0.1 * p, updates, params)


def test_update_is_the_function_and_state_is_empty():
  tx = gx.stateless(pull_to_zero)
  state = tx.init(PARAMS)
  assert state == gx.EmptyState()
  updates, new_state = tx.update(GRADS, state, PARAMS, value=3.0)   # extras are ignored
  assert new_state == gx.EmptyState()
  # w: (0.5 + 0.1, 0.25 − 0.2) = (0.6, 0.05); b: −1 + 0.05 = −0.95
  np.testing.assert_allclose(updates["w"], [0.6, 0.05], rtol=1e-6)
  np.testing.assert_allclose(updates["b"], -0.95, rtol=1e-6)


def test_params_none_reaches_the_function():
  seen = []

  def record(updates, params):
    seen.append(params)
    return jax.tree.map(lambda u: -u, updates)

  tx = gx.stateless(record)
  updates, _ = tx.update(GRADS, tx.init(PARAMS))
  assert seen == [None]
  np.testing.assert_allclose(updates["w"], [-0.5, -0.25])


def test_composes_in_chain_under_jit():
  """chain(stateless decay, momentum 0.5, scale −0.1), two steps with the same gradient:
  d = g + 0.1 θ; b₁ = d₁, b₂ = 0.5 b₁ + d₂; u = −0.1 b."""
  tx = gx.chain(gx.stateless(pull_to_zero), gx.scale_by_momentum(0.5), gx.scale(-0.1))
  state = tx.init(PARAMS)
  assert state[0] == gx.EmptyState()
  step = jax.jit(tx.update)
  params = PARAMS
  u1, state = step(GRADS, state, params)
  params = gx.apply_updates(params, u1)
  # step 1, w: d₁ = (0.6, 0.05), u₁ = (−0.06, −0.005), θ₁ = (0.94, −2.005)
  np.testing.assert_allclose(u1["w"], [-0.06, -0.005], rtol=1e-6)
  np.testing.assert_allclose(params["w"], [0.94, -2.005], rtol=1e-6)
  u2, state = step(GRADS, state, params)
  # step 2, w: d₂ = (0.5 + 0.094, 0.25 − 0.2005) = (0.594, 0.0495);
  # b₂ = 0.5 (0.6, 0.05) + d₂ = (0.894, 0.0745); u₂ = (−0.0894, −0.00745)
  np.testing.assert_allclose(u2["w"], [-0.0894, -0.00745], rtol=1e-5)
  # b: d₁ = −0.95, θ₁ = 0.595; d₂ = −1 + 0.0595 = −0.9405; b₂ = −0.475 − 0.9405 = −1.4155
  np.testing.assert_allclose(u2["b"], 0.14155, rtol=1e-5)


@gx.transform(hyperparams=("factor",))
def scale_and_shift(factor: float, shift: float = 0.0):
  """u ← factor · u + shift, built with gx.stateless from a fresh closure each call."""
  return gx.stateless(lambda u, p: jax.tree.map(lambda x: factor * x + shift, u))


def test_equal_by_value_when_built_by_a_decorated_factory():
  a, b = scale_and_shift(2.0), scale_and_shift(factor=2.0, shift=0.0)
  assert a == b and hash(a) == hash(b)
  assert a != scale_and_shift(3.0) and a != scale_and_shift(2.0, shift=1.0)
  # Alone, stateless is equal for the same function object only.
  assert gx.stateless(pull_to_zero) == gx.stateless(pull_to_zero)
  assert gx.stateless(lambda u, p: u) != gx.stateless(lambda u, p: u)
  # Equal transforms share one compile as a static argument.
  traces = []

  def first_update(tx, g):
    traces.append(1)
    return tx.update(g, tx.init(g))[0]

  step = jax.jit(first_update, static_argnums=0)
  for _ in range(3):
    out = step(scale_and_shift(2.0, 1.0), GRADS)
  assert len(traces) == 1
  np.testing.assert_allclose(out["w"], [2.0, 1.5])             # 2 · (0.5, 0.25) + 1
  # Its declared hyperparameter is injectable.
  tx = gx.inject_hyperparams(scale_and_shift)(factor=2.0, shift=1.0)
  state = tx.init(PARAMS)
  assert sorted(state.hyperparams) == ["factor"]
  state = state.with_hyperparams(factor=-1.0)
  np.testing.assert_allclose(tx.update(GRADS, state)[0]["b"], 2.0)   # −1 · (−1) + 1


def test_complex_leaves_are_pairs_of_reals():
  """Like every transform, `f` sees a complex leaf as (re, im) on a trailing axis."""
  shapes = []

  def square(updates, params):
    shapes.append(jnp.shape(updates["z"]))
    return jax.tree.map(jnp.square, updates)

  tx = gx.stateless(square)
  z = {"z": jnp.array([1.0 + 2.0j, -3.0 + 0.5j], jnp.complex64)}
  updates, _ = tx.update(z, tx.init(z))
  assert shapes == [(2, 2)]
  np.testing.assert_allclose(updates["z"], [1.0 + 4.0j, 9.0 + 0.25j])   # (re², im²)


def test_library_stateless_transforms_are_built_with_it():
  for tx in (gx.clip(0.3), gx.scale(2.0), gx.clip_by_global_norm(1.0), gx.set_to_zero()):
    assert tx.init(PARAMS) == gx.EmptyState()
  u, _ = gx.clip(0.3).update(GRADS, gx.EmptyState())
  np.testing.assert_allclose(u["w"], [0.3, 0.25])
  np.testing.assert_allclose(u["b"], -0.3)


def test_not_a_function():
  with pytest.raises(TypeError, match="update_fn must be a function"):
    gx.stateless(0.5)
