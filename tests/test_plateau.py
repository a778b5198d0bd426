"""reduce_on_plateau against torch ReduceLROnPlateau (mode min, threshold_mode rel): a small
re-implementation written from torch's documentation, scales printed by torch 2.13 (torch is
not imported here), and hand-derived boundary cases."""

from __future__ import annotations

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx

SEQ = [1.0, 0.9, 0.9, 0.95, 0.9, 0.9, 0.9, 0.89999, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6,
       0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]


def reference(values, factor, patience, threshold, cooldown, min_scale, eps=0.0):
  """torch.optim.lr_scheduler.ReduceLROnPlateau.step, mode='min', threshold_mode='rel',
  with lr = 1 so that lr is the scale."""
  best, bad, cool, lr, out = math.inf, 0, 0, 1.0, []
  for v in values:
    if v < best * (1 - threshold):
      best, bad = v, 0
    else:
      bad += 1
    if cool > 0:
      cool -= 1
      bad = 0
    if bad > patience:
      new = max(lr * factor, min_scale)
      if lr - new > eps:
        lr = new
      cool, bad = cooldown, 0
    out.append(lr)
  return out


def scales(values, jit=True, **kwargs):
  tx = gx.reduce_on_plateau(**kwargs)
  state = tx.init({"w": jnp.zeros(2)})
  update = jax.jit(tx.update) if jit else tx.update
  out = []
  for v in values:
    u, state = update({"w": jnp.ones(2)}, state, value=jnp.float32(v))
    np.testing.assert_allclose(u["w"], float(state.scale))   # this step uses the new scale
    out.append(float(state.scale))
  return out


def test_torch_values():
  # printed by torch 2.13 ReduceLROnPlateau on SGD(lr=1.0)
  want_a = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.125, 0.125, 0.125,
            0.0625, 0.0625, 0.0625, 0.0625, 0.0625, 0.03125, 0.03125, 0.03125, 0.015625,
            0.015625, 0.015625, 0.0078125, 0.0078125, 0.0078125, 0.00390625, 0.00390625]
  np.testing.assert_allclose(
      scales(SEQ, factor=0.5, patience=2, threshold=1e-4, cooldown=0, min_scale=0.0), want_a)
  want_b = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25] + [0.2] * 19
  np.testing.assert_allclose(
      scales(SEQ, factor=0.5, patience=1, threshold=0.01, cooldown=2, min_scale=0.2), want_b,
      rtol=1e-7)


def test_hand_derived_boundaries():
  # patience=2: the cut comes on the 3rd non-improving step (bad = 3 > 2), not before.
  # step 0: best=1 | 1: 1.0 not < 1*(1-1e-4): bad 1 | 2: bad 2 | 3: bad 3 -> 0.1
  np.testing.assert_allclose(scales([1.0] * 4, patience=2), [1, 1, 1, 0.1], rtol=1e-7)
  # a relative improvement of exactly the threshold is not an improvement
  np.testing.assert_allclose(scales([1.0, 0.99, 0.98], patience=0, threshold=0.01,
                                    factor=0.5), [1.0, 0.5, 0.5])
  # cooldown=2 holds bad at 0 for two steps after a cut; patience=0 then cuts on the next
  np.testing.assert_allclose(scales([1.0] * 6, patience=0, cooldown=2, factor=0.5),
                             [1.0, 0.5, 0.5, 0.5, 0.25, 0.25])
  # min_scale floors the scale
  np.testing.assert_allclose(scales([1.0] * 5, patience=0, factor=0.1, min_scale=0.05),
                             [1.0, 0.1, 0.05, 0.05, 0.05], rtol=1e-7)
  # a NaN loss never improves
  np.testing.assert_allclose(scales([1.0, math.nan, math.nan], patience=1, factor=0.5),
                             [1.0, 1.0, 0.5])


@pytest.mark.parametrize("kwargs", [
    dict(factor=0.7, patience=3, threshold=1e-3, cooldown=1, min_scale=0.01),
    dict(factor=0.1, patience=0, threshold=0.0, cooldown=0, min_scale=0.0, eps=1e-8),
    dict(factor=0.5, patience=5, threshold=0.05, cooldown=4, min_scale=0.0),
])
def test_against_reference(kwargs):
  rng = random.Random(0)
  values = [rng.choice([1.0, 0.99, 0.98, 1.01, 0.5]) * (1 - i / 200) for i in range(120)]
  np.testing.assert_allclose(scales(values, **kwargs), reference(values, **kwargs), rtol=1e-6)


def test_in_a_chain_and_state():
  tx = gx.chain(gx.sgd(0.1), gx.reduce_on_plateau(patience=0, factor=0.5))
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  u, state = tx.update({"w": jnp.ones(2)}, state, params, value=1.0)
  np.testing.assert_allclose(u["w"], -0.1)
  u, state = tx.update({"w": jnp.ones(2)}, state, params, value=1.0)
  np.testing.assert_allclose(u["w"], -0.05)
  s = state[1]
  assert isinstance(s, gx.ReduceOnPlateauState)
  assert s.scale.dtype == jnp.float32 and s.plateau_count.dtype == jnp.int32
  assert gx.reduce_on_plateau(patience=3) == gx.reduce_on_plateau(patience=3)


def test_missing_value_and_validation():
  tx = gx.reduce_on_plateau()
  state = tx.init({"w": jnp.zeros(2)})
  with pytest.raises(ValueError, match="value=loss"):
    tx.update({"w": jnp.ones(2)}, state)
  with pytest.raises(ValueError, match="scalar"):
    tx.update({"w": jnp.ones(2)}, state, value=jnp.ones(3))
  for kwargs, name in [(dict(factor=1.0), "factor"), (dict(factor=-0.1), "factor"),
                       (dict(patience=-1), "patience"), (dict(patience=1.5), "patience"),
                       (dict(threshold=-1e-3), "threshold"), (dict(cooldown=-1), "cooldown"),
                       (dict(min_scale=2.0), "min_scale"), (dict(eps=-1.0), "eps")]:
    with pytest.raises(ValueError, match=name):
      gx.reduce_on_plateau(**kwargs)
