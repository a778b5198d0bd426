"""Bias correction of an exponential moving average started at zero."""

from __future__ import annotations

from typing import NamedTuple

import jax

from gradxform import _check, _numerics
from gradxform._base import GradientTransformation, elementwise, next_count, step_count, transform


class BiasCorrectionState(NamedTuple):
  """State of `bias_correction`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count


@transform(shares_count=True, hyperparams=("decay",))
def bias_correction(decay: float) -> GradientTransformation:
  """Divides the incoming updates by `1 − decay^t`, `t` = 1, 2, … this transform's steps.

  Placed after `scale_by_momentum(decay, ema=True)` it turns the EMA `m` into Kingma & Ba's
  unbiased `m̂ = m / (1 − β1^t)`.

  Args:
    decay: the decay of the moving average being corrected, in [0, 1).

  State: `BiasCorrectionState(count)`.

  Example:
    >>> tx = gx.chain(gx.scale_by_momentum(0.9, ema=True), gx.bias_correction(0.9))
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> jnp.round(updates["b"], 4)            # m = 0.1 · 0.5, m̂ = m / (1 − 0.9)
    Array([0.5, 0.5], dtype=float32)

  References:
    Kingma & Ba, "Adam: A method for stochastic optimization", ICLR 2015, section 3.
  """
  decay = _check.unit_interval("bias_correction", "decay", decay)

  def init(params):
    del params
    return BiasCorrectionState(count=_numerics.zero_count())

  def update(updates, state, params=None, **extra):
    del params
    count = step_count(state, extra)
    corr = _numerics.one_minus_decay_power(decay, count + 1)
    out = jax.tree.map(lambda u: _numerics.cast(u / corr, u.dtype), updates)
    return out, BiasCorrectionState(count=next_count(state, count))

  return elementwise(GradientTransformation(init, update))
