"""Cosine annealing: cosine decay, linear warm-up then cosine, and SGDR's warm restarts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _check
from gradxform._base import Schedule
from gradxform._equality import by_value
from gradxform._schedules import _common as c

#: Most restarts `sgdr_schedule` tabulates (a period_mult very close to 1 needs many).
MAX_RESTARTS = 1 << 17
_INT32_MAX = int(np.iinfo(np.int32).max)


@by_value
def cosine_decay_schedule(init_value: float, decay_steps: int, *, end_value: float = 0.0,
                          exponent: float = 1.0) -> Schedule:
  """Cosine decay: `η_t = η_end + (η0 − η_end) · ((1 + cos(π s / T)) / 2)^e`, `s = min(t, T)`.

  Equal to Optax's `cosine_decay_schedule(η0, T, alpha=η_end/η0, exponent=e)`, and to torch's
  `CosineAnnealingLR(T_max=T, eta_min=η_end)` for `t ≤ T` (torch keeps following the cosine
  back up after T; here the value stays at η_end).

  Args:
    init_value: η0.
    decay_steps: T, a positive integer.
    end_value: η_end.
    exponent: e > 0 (1: the plain cosine).

  Example:
    >>> jnp.round(gx.cosine_decay_schedule(1.0, 100)(jnp.array([0, 50, 100, 150])), 3)
    Array([1. , 0.5, 0. , 0. ], dtype=float32)

  References:
    Loshchilov & Hutter, "SGDR: Stochastic gradient descent with warm restarts", ICLR 2017.
  """
  where = "cosine_decay_schedule"
  init_value = _check.real(where, "init_value", init_value)
  decay_steps = _check.integer(where, "decay_steps", decay_steps, minimum=1)
  end_value = _check.real(where, "end_value", end_value)
  exponent = _check.real(where, "exponent", exponent, gt=0.0)

  def schedule(step):
    s = c.as_float(jnp.minimum(c.as_step(step), decay_steps))
    return c.out(_cosine(init_value, end_value, s, decay_steps, exponent))

  return schedule


@by_value
def warmup_cosine_decay_schedule(init_value: float, peak_value: float, warmup_steps: int,
                                 decay_steps: int, end_value: float = 0.0, *,
                                 exponent: float = 1.0) -> Schedule:
  """Linear warm-up from η0 to η_peak over `W` steps, then cosine decay to η_end.

  `η_t = η0 + (η_peak − η0) t / W` for `t < W`, then
  `η_t = η_end + (η_peak − η_end) · ((1 + cos(π s / (T − W))) / 2)^e`, `s = min(t − W, T − W)`.
  `decay_steps` (T) is the total length *including* the warm-up, as in Optax.

  Args:
    init_value: η0, the value at step 0.
    peak_value: η_peak, reached at step W.
    warmup_steps: W ≥ 0 (0: no warm-up).
    decay_steps: T > W, the total length.
    end_value: η_end, from step T on.
    exponent: e > 0 of the cosine part.

  Example:
    >>> schedule = gx.warmup_cosine_decay_schedule(0.0, 1.0, 10, 110)
    >>> jnp.round(schedule(jnp.array([0, 5, 10, 60, 110])), 3)
    Array([0. , 0.5, 1. , 0.5, 0. ], dtype=float32)

  References:
    Goyal et al., "Accurate, large minibatch SGD: training ImageNet in 1 hour", 2017
    (linear warm-up); Loshchilov & Hutter, "SGDR", ICLR 2017 (cosine annealing).
  """
  where = "warmup_cosine_decay_schedule"
  init_value = _check.real(where, "init_value", init_value)
  peak_value = _check.real(where, "peak_value", peak_value)
  warmup_steps = _check.integer(where, "warmup_steps", warmup_steps, minimum=0)
  decay_steps = _check.integer(where, "decay_steps", decay_steps, minimum=1)
  end_value = _check.real(where, "end_value", end_value)
  exponent = _check.real(where, "exponent", exponent, gt=0.0)
  _check.ordered(where, ("warmup_steps", warmup_steps), ("decay_steps", decay_steps),
                 strict=True, why=" (decay_steps is the total length, warm-up included)")
  cosine_steps = decay_steps - warmup_steps

  def schedule(step):
    step = c.as_step(step)
    warm = c.linear_mix(init_value, peak_value, c.as_float(jnp.minimum(step, warmup_steps)),
                        max(warmup_steps, 1))
    s = c.as_float(jnp.clip(step - warmup_steps, 0, cosine_steps))
    cos = _cosine(peak_value, end_value, s, cosine_steps, exponent)
    return c.out(jnp.where(step < warmup_steps, warm, cos))

  return schedule


def _cosine(start: float, end: float, s: jax.Array, steps: int, exponent: float) -> jax.Array:
  if exponent == 1.0:
    return c.cosine_mix(start, end, s, steps)
  w = c.cosine_fraction(s, steps) ** exponent
  return start * w + end * (1.0 - w)


def _restart_table(first_period: int, period_mult: float) -> tuple[np.ndarray, ...]:
  """Restart steps `R_k`, the offsets `R_k − C_k` and periods `T_k` (k = 0 is the start).

  `C_k = T_0 (1 + m + … + m^{k−1})` is when restart k is due; it happens at the first step
  `R_k ≥ C_k` (torch's per-step rule `T_cur ≥ T_i`), after which `t_cur = t − C_k`.
  """
  starts, offsets, periods = [0], [0.0], [float(first_period)]
  due, period = 0.0, float(first_period)
  while True:
    due += period
    snapped = round(due)
    if abs(due - snapped) <= 1e-12 * max(1.0, due):  # C_k an integer up to float64 rounding
      due = float(snapped)
    start = math.ceil(due)
    if start > _INT32_MAX:
      break
    if len(starts) >= MAX_RESTARTS:
      raise ValueError(
          f"sgdr_schedule: period_mult={period_mult!r} with first_period={first_period} makes "
          f"more than {MAX_RESTARTS} restarts within the int32 step range; use "
          "period_mult=1.0 or a larger one")
    period *= period_mult
    starts.append(start)
    offsets.append(start - due)
    periods.append(period)
  return (np.asarray(starts, np.int64), np.asarray(offsets, np.float64),
          np.asarray(periods, np.float64))


@by_value
def sgdr_schedule(init_value: float, first_period: int, *, period_mult: float = 1.0,
                  min_value: float = 0.0) -> Schedule:
  """Cosine annealing with warm restarts (SGDR).

  Within restart `i`, of length `T_i = T_0 · m^i`:
  `η_t = η_min + (η0 − η_min) (1 + cos(π t_cur / T_i)) / 2`, and `t_cur` returns to 0 at
  each restart. Equal to torch `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)` stepped
  once per step (torch accepts integer `T_mult` only). A non-integer `m` follows the same
  per-step rule: restart `k` is due at `C_k = T_0 (1 + m + … + m^{k−1})`, happens at the first
  step `≥ C_k`, and `t_cur = t − C_k` may then start at a fraction (as torch's `T_cur`
  would).

  Args:
    init_value: η0, the value right after each restart.
    first_period: T_0, a positive integer.
    period_mult: m ≥ 1, growth of the period at each restart.
    min_value: η_min, approached at the end of each period.

  Example:
    >>> jnp.round(gx.sgdr_schedule(1.0, 10)(jnp.array([0, 5, 10, 15])), 3)
    Array([1. , 0.5, 1. , 0.5], dtype=float32)

  References:
    Loshchilov & Hutter, "SGDR: Stochastic gradient descent with warm restarts", ICLR 2017.
  """
  where = "sgdr_schedule"
  init_value = _check.real(where, "init_value", init_value)
  first_period = _check.integer(where, "first_period", first_period, minimum=1)
  period_mult = _check.real(where, "period_mult", period_mult, ge=1.0)
  min_value = _check.real(where, "min_value", min_value)
  if period_mult == 1.0:
    def periodic(step):
      t_cur = c.as_float(c.as_step(step) % first_period)
      return c.out(c.cosine_mix(init_value, min_value, t_cur, first_period))

    return periodic

  starts, offsets, periods = _restart_table(first_period, period_mult)
  # Steps from each restart to the next and the next restart's offset:
  # `T_i − t_cur = (R_{k+1} − t) − offset_{k+1}`, accurate near 0. The last period ends past
  # the int32 range, so its `T_i − t_cur` is `(T_i − offset_i) − (t − R_i)`: length 0 and
  # "next offset" `offset_i − T_i` give exactly that.
  lengths = np.append(np.diff(starts), 0).astype(np.int32)
  next_offsets = np.append(offsets[1:], offsets[-1] - periods[-1])

  def schedule(step):
    step = c.as_step(step).astype(jnp.int32)
    k = jnp.maximum(jnp.searchsorted(jnp.asarray(starts.astype(np.int32)), step,
                                     side="right") - 1, 0)
    dtype = c.as_float(step).dtype
    into = step - jnp.asarray(starts.astype(np.int32))[k]
    t_cur = c.as_float(into) + jnp.asarray(offsets, dtype)[k]
    rest = c.as_float(jnp.asarray(lengths)[k] - into) - jnp.asarray(next_offsets, dtype)[k]
    period = jnp.asarray(periods, dtype)[k]
    return c.out(c.cosine_mix(init_value, min_value, t_cur, period, rest))

  return schedule
