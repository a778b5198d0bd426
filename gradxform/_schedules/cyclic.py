"""Cyclical learning rates (Smith 2017) and the one-cycle policy (Smith & Topin 2018)."""

from __future__ import annotations

import math

import jax.numpy as jnp

from gradxform import _check
from gradxform._base import Schedule
from gradxform._equality import by_value
from gradxform._schedules import _common as c


@by_value
def cyclical_schedule(base_value: float, max_value: float, step_size_up: int, *,
                      step_size_down: int | None = None, mode: str = "triangular",
                      gamma: float = 1.0) -> Schedule:
  """Cyclical learning rate, as torch `CyclicLR` stepped once per step.

  A cycle is `step_size_up + step_size_down` steps: linear from `base` to `max` over
  `step_size_up` steps, then back to `base`. With `r = t mod cycle` and the height
  `h = r / up` (rising) or `(cycle − r) / down` (falling):
  `η_t = base + (max − base) · h · scale`, where `scale` is
  1 (`"triangular"`), `2^{−(c−1)}` for cycle `c = 1, 2, …` (`"triangular2"`, halved each
  cycle), or `γ^t` (`"exp_range"`, per step).

  Args:
    base_value: the lower bound (value at step 0).
    max_value: the upper bound, reached at `t = step_size_up` of the first cycle.
    step_size_up: steps of the rising half (a positive integer).
    step_size_down: steps of the falling half (default: `step_size_up`).
    mode: "triangular", "triangular2" or "exp_range".
    gamma: the `exp_range` decay per step, in (0, 1].

  Example:
    >>> gx.cyclical_schedule(0.1, 1.0, 10)(jnp.array([0, 5, 10, 15, 20]))
    Array([0.1 , 0.55, 1.  , 0.55, 0.1 ], dtype=float32)

  References:
    Smith, "Cyclical learning rates for training neural networks", WACV 2017.
  """
  where = "cyclical_schedule"
  base_value = _check.real(where, "base_value", base_value)
  max_value = _check.real(where, "max_value", max_value)
  up = _check.integer(where, "step_size_up", step_size_up, minimum=1)
  down = up if step_size_down is None else _check.integer(where, "step_size_down",
                                                          step_size_down, minimum=1)
  mode = _check.one_of(where, "mode", mode, ("triangular", "triangular2", "exp_range"))
  gamma = _check.real(where, "gamma", gamma, gt=0.0, le=1.0)
  total = up + down

  def schedule(step):
    step = c.as_step(step)
    r = step % total
    height = jnp.where(r <= up, c.as_float(r) / up, c.as_float(total - r) / down)
    if mode == "triangular":
      scale = 1.0
    elif mode == "triangular2":
      scale = jnp.exp2(-c.as_float(step // total))
    else:
      scale = jnp.exp(c.as_float(step) * math.log(gamma)) if gamma != 1.0 else 1.0
    w = height * scale
    return c.out(base_value * (1.0 - w) + max_value * w)

  return schedule


@by_value
def one_cycle_schedule(total_steps: int, max_value: float, *, pct_start: float = 0.3,
                       div_factor: float = 25.0, final_div_factor: float = 1e4,
                       anneal: str = "cos") -> Schedule:
  """The one-cycle policy, as torch `OneCycleLR(three_phase=False)` stepped once per step.

  `η_init = max / div_factor`, `η_min = η_init / final_div_factor`. Phase 1 anneals from
  `η_init` to `max` over steps `[0, e1]`, `e1 = pct_start · total − 1`; phase 2 from `max` to
  `η_min` over `[e1, total − 1]`. Annealing from `a` to `b` at fraction `p`:
  `b + (a − b)(1 + cos(π p)) / 2` (`"cos"`) or `a + (b − a) p` (`"linear"`).
  After `total − 1` the value stays at `η_min` (torch raises past `total_steps`).

  Args:
    total_steps: the cycle length (a positive integer).
    max_value: the peak.
    pct_start: fraction of the steps spent rising, in [0, 1].
    div_factor: `max / η_init` (> 0).
    final_div_factor: `η_init / η_min` (> 0).
    anneal: "cos" or "linear".

  Example:
    >>> schedule = gx.one_cycle_schedule(100, 1.0)   # peak at step 0.3 · 100 − 1 = 29
    >>> schedule(jnp.array([0, 29, 99]))
    Array([4.e-02, 1.e+00, 4.e-06], dtype=float32)

  References:
    Smith & Topin, "Super-convergence: very fast training of neural networks using large
    learning rates", 2018.
  """
  where = "one_cycle_schedule"
  total_steps = _check.integer(where, "total_steps", total_steps, minimum=1)
  max_value = _check.real(where, "max_value", max_value)
  pct_start = _check.real(where, "pct_start", pct_start, ge=0.0, le=1.0)
  div_factor = _check.real(where, "div_factor", div_factor, gt=0.0)
  final_div_factor = _check.real(where, "final_div_factor", final_div_factor, gt=0.0)
  anneal = _check.one_of(where, "anneal", anneal, ("cos", "linear"))
  initial = max_value / div_factor
  final = initial / final_div_factor
  end1 = float(pct_start * total_steps) - 1.0   # torch's phase boundaries, as floats
  end2 = float(total_steps - 1)

  def anneal_between(a, b, t, start, end):
    span = end - start   # a phase of length 0 (torch divides by zero) sits at its end value
    if span <= 0:
      return jnp.full_like(t, b)
    if anneal == "cos":
      return c.cosine_mix(a, b, t - start, span)
    return c.linear_mix(a, b, t - start, span)

  def schedule(step):
    t = c.as_float(jnp.minimum(c.as_step(step), total_steps - 1))
    rising = anneal_between(initial, max_value, t, 0.0, end1)
    falling = anneal_between(max_value, final, t, end1, end2)
    return c.out(jnp.where(t <= end1, rising, falling))

  return schedule
