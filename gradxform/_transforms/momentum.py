"""Momentum: heavy ball (Polyak), Nesterov (Sutskever form), and the EMA form used by Adam."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, next_count, step_count, transform,
                             trees_checked)


class MomentumState(NamedTuple):
  """State of `scale_by_momentum`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  trace: Any               # the momentum buffer b (or EMA m), like params


@transform(shares_count=True, accumulates=True, hyperparams=("decay", "dampening"))
def scale_by_momentum(decay: float = 0.9, *, nesterov: bool = False, dampening: float = 0.0,
                      ema: bool = False, state_dtype: Any = None) -> GradientTransformation:
  """Momentum on the incoming updates `g`.

  Heavy ball (default): `b ← μ b + (1 − d) g`, output `b`; on the first step `b = g`, as
  torch.optim.SGD (this only matters when the dampening `d` is non-zero).
  Nesterov (`nesterov=True`, Sutskever et al. 2013 as torch writes it): output `g + μ b`.
  EMA (`ema=True`, Adam's first moment): `m ← μ m + (1 − μ) g`, output `m`; with Nesterov the
  look-ahead `μ m + (1 − μ) g`.

  Args:
    decay: μ in [0, 1).
    nesterov: output the Nesterov look-ahead instead of the buffer.
    dampening: d in [0, 1], heavy-ball form only; must be 0 with Nesterov.
    ema: exponential moving average instead of a heavy-ball sum.
    state_dtype: dtype of the buffer (None: each parameter's dtype).

  State: `MomentumState(count, trace)`.

  Example:
    >>> tx = gx.scale_by_momentum(0.9)
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(grads, state)
    >>> updates["b"]                          # b = 0.9 · 0.5 + 0.5
    Array([0.95, 0.95], dtype=float32)

  References:
    Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
    Sutskever et al., "On the importance of initialization and momentum in deep learning",
    ICML 2013.
  """
  where = "scale_by_momentum"
  decay = _check.unit_interval(where, "decay", decay)
  dampening = _check.unit_interval(where, "dampening", dampening, closed=True)
  state_dtype = _check.state_dtype(where, state_dtype)
  undamped = isinstance(dampening, float) and dampening == 0.0
  _check.nesterov(where, nesterov, dampening=dampening)
  _check.requires(where, undamped or not ema, "dampening applies to the heavy-ball form only "
                  f"(ema=False), got dampening={dampening!r} with ema=True")

  def init(params):
    return MomentumState(count=_numerics.zero_count(),
                         trace=_numerics.state_zeros(params, state_dtype))

  def leaf(g, b, first):
    cd = _numerics.compute_dtype(g, b)
    g32, b32 = _numerics.cast(g, cd), _numerics.cast(b, cd)
    if ema:
      new_b = _numerics.ema(b32, g32, decay)
      out = _numerics.ema(new_b, g32, decay) if nesterov else new_b
    else:
      new_b = decay * b32 + g32 if undamped else jnp.where(
          first, g32, decay * b32 + (1.0 - dampening) * g32)
      out = g32 + decay * new_b if nesterov else new_b
    return _numerics.cast(out, g.dtype), _numerics.cast(new_b, b.dtype)

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.trace, updates)
    count = step_count(state, extra)
    first = count == 0
    out, trace = _tree.map_unzip(lambda g, b: leaf(g, b, first), 2, updates, state.trace)
    return out, MomentumState(count=next_count(state, count), trace=trace)

  tx = GradientTransformation(init, update)
  return elementwise(tx)

