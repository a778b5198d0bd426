"""Joining schedules end to end."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from gradxform import _check
from gradxform._base import Schedule
from gradxform._equality import by_value
from gradxform._schedules import _common as c


@by_value
def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
  """Runs `schedules[0]` until `boundaries[0]`, then `schedules[1]`, and so on (as Optax).

  Schedule `i > 0` sees `t − boundaries[i−1]`, so each starts from its own step 0.

  Args:
    schedules: n ≥ 1 schedules.
    boundaries: n − 1 non-decreasing steps ≥ 0.

  Example:
    >>> warm = gx.linear_schedule(0.0, 1e-3, 100)
    >>> schedule = gx.join_schedules([warm, gx.cosine_decay_schedule(1e-3, 900)], [100])
    >>> schedule(jnp.array([0, 50, 100, 550, 1000]))
    Array([0.    , 0.0005, 0.001 , 0.0005, 0.    ], dtype=float32)
    >>> tx = gx.adam(schedule)

  References:
    Optax's `join_schedules` (https://github.com/google-deepmind/optax).
  """
  where = "join_schedules"
  schedules = tuple(schedules)
  boundaries = tuple(boundaries)
  _check.requires(where, bool(schedules), "schedules must not be empty")
  for i, s in enumerate(schedules):
    _check.function(where, f"schedules[{i}]", s)
  _check.requires(where, len(boundaries) == len(schedules) - 1,
                  f"boundaries must have len(schedules) - 1 = {len(schedules) - 1} entries, "
                  f"got {len(boundaries)}: {boundaries!r}")
  boundaries = tuple(_check.integer(where, f"boundaries[{i}]", b, minimum=0)
                     for i, b in enumerate(boundaries))
  _check.non_decreasing(where, "boundaries", boundaries)

  def schedule(step):
    step = c.as_step(step)
    value = c.out(schedules[0](step))
    for boundary, sched in zip(boundaries, schedules[1:], strict=True):
      value = jnp.where(step < boundary, value, c.out(sched(step - boundary)))
    return value

  return schedule
