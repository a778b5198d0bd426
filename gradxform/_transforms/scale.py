"""Scaling by a constant factor or by a (scheduled) learning rate."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from gradxform import _check, _numerics
from gradxform._base import (GradientTransformation, ScalarOrSchedule, elementwise, next_count,
                             step_count, transform)
from gradxform._numerics import zero_count
from gradxform._transforms.stateless import stateless


class ScheduleState(NamedTuple):
  """State of `scale_by_learning_rate` with a schedule."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count


def _scaled(updates: Any, factor: Any) -> Any:
  return jax.tree.map(lambda u: _numerics.cast(factor * u, u.dtype), updates)


@transform(hyperparams=("factor",))
def scale(factor: float | jax.Array) -> GradientTransformation:
  """Multiplies updates by a constant: `u ← factor · u`. No state.

  Args:
    factor: a float or scalar array.

  Example:
    >>> tx = gx.scale(-2.0)
    >>> tx.update(grads, tx.init(params))[0]["b"]
    Array([-1., -1.], dtype=float32)

  References:
    Optax's `scale` (https://github.com/google-deepmind/optax).
  """
  factor = _check.constant("scale", "factor", factor,
                           instead="scale_by_learning_rate(schedule, flip_sign=False)")

  return elementwise(stateless(lambda updates, params: _scaled(updates, factor)))


@transform(shares_count=True, hyperparams=("learning_rate",))
def scale_by_learning_rate(learning_rate: ScalarOrSchedule, *,
                           flip_sign: bool = True) -> GradientTransformation:
  """Scales updates by the learning rate: `u ← −η_t · u` (`+η_t` with `flip_sign=False`).

  Args:
    learning_rate: a float, a scalar array, or a schedule `step -> value` evaluated at the
      number of updates before this one (0 on the first).
    flip_sign: negate, turning a descent direction into a parameter update.

  State: `ScheduleState(count)` for a schedule; `EmptyState()` for a constant.

  Example:
    >>> tx = gx.scale_by_learning_rate(gx.linear_schedule(0.1, 0.0, 10))
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(grads, state)
    >>> updates["b"]                          # −η_1 · 0.5 with η_1 = 0.09
    Array([-0.045, -0.045], dtype=float32)

  References:
    Robbins & Monro, "A stochastic approximation method", Ann. Math. Statist. 1951 (the step
    size); Optax's `scale_by_learning_rate` (https://github.com/google-deepmind/optax).
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

  return elementwise(GradientTransformation(init, update))
