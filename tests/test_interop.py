"""Optax interop: `gx.to_optax` and `gx.from_optax`, with Optax itself as the oracle."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx


def _problem():
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"w": jax.random.normal(k1, (4, 3)), "b": jnp.zeros((3,))}
  x = jax.random.normal(k2, (16, 4))
  y = jnp.sin(x[:, :3])

  def loss(p):
    return jnp.mean((jnp.tanh(x @ p["w"] + p["b"]) - y) ** 2)

  return params, loss


def _run(tx, steps=12, **extra):
  params, loss = _problem()
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params


def _close(a, b, rtol=1e-5, atol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_import_gradxform_does_not_import_optax_or_flax():
  code = "import sys, gradxform; print('optax' in sys.modules, 'flax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["False", "False"]


def test_to_optax_is_a_real_optax_transform_and_keeps_equality():
  tx = gx.to_optax(gx.adam(1e-3))
  assert isinstance(tx, optax.GradientTransformation)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  assert tx == gx.to_optax(gx.adam(1e-3))
  assert hash(tx) == hash(gx.to_optax(gx.adam(1e-3)))
  assert gx.to_optax(tx) is tx


def test_optax_chain_of_to_optax_equals_optax():
  ours = optax.chain(optax.clip_by_global_norm(0.5), gx.to_optax(gx.adam(1e-2)))
  ref = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
  _close(_run(ours), _run(ref))


def test_to_optax_accepts_optax_extra_args():
  tx = optax.chain(gx.to_optax(gx.sgd(0.1, 0.9)), optax.scale(1.0))
  _close(_run(tx, value=jnp.float32(1.0)), _run(optax.sgd(0.1, 0.9)))


def test_gx_chain_of_from_optax_clip_equals_optax():
  ours = gx.chain(gx.from_optax(optax.clip(0.01)), gx.adam(1e-2))
  ref = optax.chain(optax.clip(0.01), optax.adam(1e-2))
  _close(_run(ours), _run(ref))


def test_from_optax_in_the_middle_of_a_chain():
  # momentum (gradxform) -> Optax's global-norm clip -> learning rate (gradxform)
  ours = gx.chain(gx.scale_by_momentum(0.9), gx.from_optax(optax.clip_by_global_norm(0.1)),
                  gx.scale_by_learning_rate(0.05))
  ref = optax.chain(optax.trace(0.9), optax.clip_by_global_norm(0.1), optax.scale(-0.05))
  _close(_run(ours), _run(ref))


def test_from_optax_never_forwards_reserved_extras():
  seen = {}

  def update(updates, state, params=None, **extra):
    seen.update(extra)
    return updates, state

  spy = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
  tx = gx.chain(gx.scale_by_momentum(0.9), gx.from_optax(spy), gx.sgd(0.1))
  params, _ = _problem()
  tx.update(params, tx.init(params), params, value=jnp.float32(3.0))
  assert set(seen) == {"value"} and float(seen["value"]) == 3.0

  # A plain optax.GradientTransformation gets no extras at all (it would raise TypeError).
  # Adam's first step is −η g / (|g| + ε) (m̂ = g, v̂ = g²), which clip(1.0) leaves alone.
  plain = gx.chain(gx.adam(1e-3), gx.from_optax(optax.clip(1.0)))
  updates, _ = plain.update(params, plain.init(params), params, value=jnp.float32(3.0))
  expected = jax.tree.map(lambda g: -1e-3 * g / (np.abs(g) + 1e-8),
                          jax.tree.map(lambda x: np.asarray(x, np.float64), params))
  _close(updates, expected, rtol=2e-6, atol=1e-12)  # observed 1.7e-7


def test_from_optax_extra_args_transform_gets_value():
  # The loss improves once, then fails to improve three times; with patience 1 each of those
  # reaches the patience and halves the scale: 1 → 0.5 → 0.25 → 0.125.
  plateau = optax.contrib.reduce_on_plateau(patience=1, factor=0.5, cooldown=0)
  tx = gx.chain(gx.sgd(0.1), gx.from_optax(plateau))
  params, _ = _problem()
  state = tx.init(params)
  scales = []
  for loss in [1.0, 2.0, 3.0, 4.0]:
    updates, state = tx.update(params, state, params, value=jnp.float32(loss))
    scales.append(float(state[1].scale))
  assert scales == [1.0, 0.5, 0.25, 0.125]
  # The gradients are the parameters here: the last step is −0.1 · 0.125 · θ.
  _close(updates, jax.tree.map(lambda p: -0.0125 * np.asarray(p, np.float64), params),
         rtol=1e-6, atol=0)


def test_from_optax_equality_and_errors():
  clip = optax.clip(1.0)
  assert gx.from_optax(clip) == gx.from_optax(clip)
  with pytest.raises(TypeError, match="already a gradxform"):
    gx.from_optax(gx.adam(1e-3))
  with pytest.raises(TypeError, match="from_optax"):
    gx.from_optax(3.0)
  with pytest.raises(TypeError, match="to_optax"):
    gx.to_optax("adam")


def test_to_optax_of_plain_optax_transform_drops_extras():
  tx = gx.to_optax(optax.clip(1.0))
  params, _ = _problem()
  # clip(1.0) takes no extras (it would raise TypeError); it clips each entry to [−1, 1].
  updates, _ = tx.update(params, tx.init(params), params, value=1.0)
  expected = jax.tree.map(lambda p: np.clip(np.asarray(p, np.float64), -1.0, 1.0), params)
  assert any(np.any(np.abs(np.asarray(p)) > 1.0) for p in jax.tree.leaves(params))
  _close(updates, expected, rtol=0, atol=0)
