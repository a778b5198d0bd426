"""Decay functions `f(t)` for PowerSign and AddSign (Bello et al. 2017).

`sign_agreement(decay_fn=f)` scales the sign-agreement term by `f(step)`, `step` = 0 at the
first update. With `T = decay_steps` and `n = min(step, T)`:

* `linear_sign_decay`: `f = (T − n) / T`.
* `cosine_sign_decay`: `f = (1 + cos(π φ)) / 2`, `φ = 2 · num_periods · n / T`.
* `restart_sign_decay`: `f = (1 + cos(π φ)) / 2`, `φ = ((num_periods · n) mod T) / T`.

These follow the paper's TensorFlow implementation (`tf.contrib.opt.sign_decay`).

References:
  Bello, Zoph, Vasudevan & Le, "Neural optimizer search with reinforcement learning",
  ICML 2017.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp

from gradxform import _check
from gradxform._base import Schedule
from gradxform._equality import by_value
from gradxform._schedules import _common as c

def _zero_after(where: str, value: Any) -> float | None:
  return None if value is None else _check.real(where, "zero_after", value, ge=0.0)


@by_value
def linear_sign_decay(decay_steps: int) -> Schedule:
  """`f(t) = max(0, (T − min(t, T)) / T)`: 1 at the first update, 0 from step T on.

  Args:
    decay_steps: T, a positive integer.

  Example:
    >>> gx.linear_sign_decay(10)(jnp.array([0, 5, 10]))
    Array([1. , 0.5, 0. ], dtype=float32)

  References:
    Bello, Zoph, Vasudevan & Le, "Neural optimizer search with reinforcement learning",
    ICML 2017 (linear decay of the sign term).
  """
  decay_steps = _check.integer("linear_sign_decay", "decay_steps", decay_steps, minimum=1)

  def decay_fn(step):
    n = jnp.minimum(c.as_step(step), decay_steps)
    return c.out(c.as_float(decay_steps - n) / decay_steps)

  return decay_fn


@by_value
def cosine_sign_decay(decay_steps: int, num_periods: float = 0.5,
                      zero_after: float | None = None) -> Schedule:
  """`f(t) = (1 + cos(π φ)) / 2`, `φ = 2 · num_periods · min(t, T) / T`.

  With the default half period, `f` falls from 1 to 0 over T steps, a cosine. With
  `zero_after`, `f = 0` wherever `φ ≥ 2 · zero_after` (after that many periods).

  Args:
    decay_steps: T, a positive integer.
    num_periods: cosine periods over T steps (> 0).
    zero_after: optional number of periods after which `f` is 0.

  Example:
    >>> jnp.round(gx.cosine_sign_decay(10)(jnp.array([0, 5, 10])), 4)
    Array([1. , 0.5, 0. ], dtype=float32)

  References:
    Bello, Zoph, Vasudevan & Le, ICML 2017 (cyclical cosine decay of the sign term).
  """
  where = "cosine_sign_decay"
  decay_steps = _check.integer(where, "decay_steps", decay_steps, minimum=1)
  num_periods = _check.real(where, "num_periods", num_periods, gt=0.0)
  zero_after = _zero_after(where, zero_after)

  def decay_fn(step):
    n = c.as_float(jnp.minimum(c.as_step(step), decay_steps))
    phi = 2.0 * num_periods * (n / decay_steps)
    f = c.cosine_fraction(2.0 * num_periods * n, float(decay_steps))   # (1 + cos πφ) / 2
    if zero_after is not None:
      f = jnp.where(phi >= 2.0 * zero_after, 0.0, f)
    return c.out(f)

  return decay_fn


@by_value
def restart_sign_decay(decay_steps: int, num_periods: float = 1,
                       zero_after: float | None = None) -> Schedule:
  """`f(t) = (1 + cos(π φ)) / 2`, `φ = ((num_periods · n) mod T) / T`, `n = min(t, T)`.

  A cosine from 1 towards 0 that restarts at 1 `num_periods` times over T steps. With
  `zero_after`, `f = 0` wherever `num_periods · n / T ≥ zero_after`. As in the TensorFlow
  original, an integer `num_periods` gives `φ = 0`, so `f = 1`, from step T on (`n` stops at
  T); pass `zero_after=num_periods` to end at 0 instead.

  Args:
    decay_steps: T, a positive integer.
    num_periods: restarts over T steps (> 0).
    zero_after: optional number of periods after which `f` is 0.

  Example:
    >>> jnp.round(gx.restart_sign_decay(10, num_periods=2)(jnp.array([0, 2, 5])), 4)
    Array([1.    , 0.6545, 1.    ], dtype=float32)

  References:
    Bello, Zoph, Vasudevan & Le, ICML 2017 (cosine decay with restarts);
    Loshchilov & Hutter, "SGDR: stochastic gradient descent with warm restarts", ICLR 2017.
  """
  where = "restart_sign_decay"
  decay_steps = _check.integer(where, "decay_steps", decay_steps, minimum=1)
  num_periods = _check.real(where, "num_periods", num_periods, gt=0.0)
  zero_after = _zero_after(where, zero_after)
  integral = isinstance(num_periods, numbers.Real) and float(num_periods).is_integer()

  def decay_fn(step):
    n = jnp.minimum(c.as_step(step), decay_steps)
    if integral:   # exact integer modulo
      num = c.as_float((int(num_periods) * n) % decay_steps)
    else:
      num = jnp.mod(num_periods * c.as_float(n), float(decay_steps))
    f = c.cosine_fraction(num, float(decay_steps))   # (1 + cos(π num / T)) / 2
    if zero_after is not None:
      f = jnp.where(num_periods * c.as_float(n) / decay_steps >= zero_after, 0.0, f)
    return c.out(f)

  return decay_fn
