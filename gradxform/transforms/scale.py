"""Scaling by a constant factor or by a (scheduled) learning rate."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from gradxform import _check, _numerics
from gradxform._base import (EmptyState, GradientTransformation, ScalarOrSchedule, next_count,
                             step_count, transform)
from gradxform._numerics import zero_count


class ScheduleState(NamedTuple):
  """State of `scale_by_learning_rate` with a schedule."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count


def _scaled(updates: Any, factor: Any) -> Any:
  return jax.tree.map(lambda u: _numerics.cast(factor * u, u.dtype), updates)


@transform
def scale(factor: float | jax.Array) -> GradientTransformation:
  """Multiplies updates by a constant: `u ← factor · u`. No state.

  Args:
    factor: a float or scalar array.
  """
  if callable(factor):
    raise ValueError("scale: factor must be a number or array; for a schedule use "
                     "scale_by_learning_rate(schedule, flip_sign=False)")

  def init(params):
    del params
    return EmptyState()

  def update(updates, state, params=None, **extra):
    del params, extra
    return _scaled(updates, factor), state

  return GradientTransformation(init, update)


@transform(shares_count=True)
def scale_by_learning_rate(learning_rate: ScalarOrSchedule, *,
                           flip_sign: bool = True) -> GradientTransformation:
  """Scales updates by the learning rate: `u ← −η_t · u` (`+η_t` with `flip_sign=False`).

  Args:
    learning_rate: a float, a scalar array, or a schedule `step -> value` evaluated at the
      number of updates before this one (0 on the first).
    flip_sign: negate, turning a descent direction into a parameter update.

  State: `ScheduleState(count)` for a schedule; `EmptyState()` for a constant.
  """
  lr = _check.learning_rate("scale_by_learning_rate", learning_rate)
  sign = -1.0 if flip_sign else 1.0
  if not callable(lr):
    return scale(sign * lr)

  def init(params):
    del params
    return ScheduleState(count=zero_count())

  def update(updates, state, params=None, **extra):
    del params
    count = step_count(state, extra)
    return _scaled(updates, sign * lr(count)), ScheduleState(count=next_count(state, count))

  return GradientTransformation(init, update)
