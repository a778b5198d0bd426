"""reduce_on_plateau against torch ReduceLROnPlateau: learning rates stepped out of real torch
2.13 over scripted loss sequences, stored in tests/data/torch_schedules.json (written by
tests/data/make_torch_schedules.py; torch is not imported here), and hand-derived boundary
cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx

from torch_data import DATA_PATH, MISSING, TORCH


def torch_case(name):
  """The stored torch run `name`; fails (never skips) when the data file is missing."""
  if TORCH is None:
    pytest.fail(f"{DATA_PATH} is missing: regenerate it with "
                "`python tests/data/make_torch_schedules.py` (needs torch)")
  return TORCH["plateau"][name]


def scales(values, **kwargs):
  """`reduce_on_plateau(**kwargs)`'s scale after each loss in `values` (one jitted scan);
  checks on the way that each step's output is the input times the scale just computed."""
  tx = gx.reduce_on_plateau(**kwargs)

  def body(state, v):
    u, state = tx.update({"w": jnp.ones(2)}, state, value=v)
    return state, (state.scale, u["w"])

  run = jax.jit(lambda vs: jax.lax.scan(body, tx.init({"w": jnp.zeros(2)}), vs)[1])
  scale, out = run(jnp.asarray(values, jnp.float32))
  scale = np.asarray(scale, np.float64)
  np.testing.assert_array_equal(np.asarray(out), np.repeat(np.asarray(scale)[:, None], 2, 1)
                                .astype(np.float32))
  return scale


def _from_torch_kwargs(lr, kwargs):
  """gradxform's arguments for torch's `ReduceLROnPlateau(SGD(lr), **kwargs)`, and the sign
  that turns torch's metric into gradxform's loss. Rates become scales (`min_lr / lr`,
  `eps / lr`); `mode="max"` is minimising the negated metric, which equals torch's rule only
  with `threshold=0` (gradxform has no `mode` or `threshold_mode`)."""
  kwargs = dict(kwargs)
  sign = 1.0
  if kwargs.pop("mode", "min") == "max":
    assert kwargs["threshold"] == 0.0
    sign = -1.0
  assert kwargs.pop("threshold_mode", "rel") == "rel"
  out = dict(factor=kwargs.pop("factor"), patience=kwargs.pop("patience"),
             threshold=kwargs.pop("threshold"), cooldown=kwargs.pop("cooldown"),
             min_scale=kwargs.pop("min_lr") / lr, eps=kwargs.pop("eps") / lr)
  assert not kwargs, f"torch arguments the test does not translate: {kwargs}"
  return out, sign


@pytest.mark.parametrize("name", sorted(TORCH["plateau"]) if TORCH else [MISSING])
def test_against_torch(name):
  case = torch_case(name)
  kwargs, sign = _from_torch_kwargs(case["lr"], case["kwargs"])
  losses = [math.nan if v is None else sign * v for v in case["losses"]]
  want = np.asarray(case["values"], np.float64)
  assert len(want) == len(losses)
  # scale = lr / initial lr; float32 products of the factor drift by ~1e-7 over a dozen cuts
  np.testing.assert_allclose(case["lr"] * scales(losses, **kwargs), want, rtol=1e-6, atol=0)


def test_torch_data_covers_the_options():
  """The stored runs exercise every option of the translation above, and cut at all."""
  if TORCH is None:
    pytest.fail(f"{DATA_PATH} is missing: run tests/data/make_torch_schedules.py")
  assert TORCH["torch_version"].startswith("2.")
  runs = TORCH["plateau"].values()
  kw = [r["kwargs"] for r in runs]
  assert any(k["cooldown"] > 0 for k in kw) and any(k["patience"] == 0 for k in kw)
  assert any(k["min_lr"] > 0 and min(r["values"]) == k["min_lr"]
             for k, r in zip(kw, runs, strict=True))
  assert any(k["eps"] > 0.01 for k in kw) and any(k.get("mode") == "max" for k in kw)
  assert any(r["lr"] != 1.0 for r in runs)
  assert any(None in r["losses"] for r in runs)                   # NaN losses
  assert all(len(set(r["values"])) >= 3 for r in runs)            # at least two cuts each


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
