"""Joining schedules end to end."""

from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from gradxform._equality import by_value
from gradxform.schedules import _common as c

Schedule = Callable[[Any], jax.Array]


@by_value
def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
  """Runs `schedules[0]` until `boundaries[0]`, then `schedules[1]`, and so on (as Optax).

  Schedule `i > 0` sees `t − boundaries[i−1]`, so each starts from its own step 0.

  Args:
    schedules: n ≥ 1 schedules.
    boundaries: n − 1 non-decreasing steps ≥ 0.

  Example:
    >>> warm = gx.linear_schedule(0.0, 1e-3, 100)
    >>> tx = gx.adam(gx.join_schedules([warm, gx.cosine_decay_schedule(1e-3, 900)], [100]))
  """
  where = "join_schedules"
  schedules = tuple(schedules)
  boundaries = tuple(boundaries)
  if not schedules:
    raise ValueError(f"{where}: schedules must not be empty")
  for i, s in enumerate(schedules):
    if not callable(s):
      raise ValueError(f"{where}: schedules[{i}] must be a function of the step, got {s!r}")
  if len(boundaries) != len(schedules) - 1:
    raise ValueError(f"{where}: boundaries must have len(schedules) - 1 = {len(schedules) - 1} "
                     f"entries, got {len(boundaries)}: {boundaries!r}")
  for b in boundaries:
    if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 0:
      raise ValueError(f"{where}: boundaries must be integers >= 0, got {boundaries!r}")
  if list(boundaries) != sorted(boundaries):
    raise ValueError(f"{where}: boundaries must be non-decreasing, got {boundaries!r}")

  def schedule(step):
    step = c.as_step(step)
    value = c.out(schedules[0](step))
    for boundary, sched in zip(boundaries, schedules[1:], strict=True):
      value = jnp.where(step < boundary, value, c.out(sched(step - boundary)))
    return value

  return schedule
