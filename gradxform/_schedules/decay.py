"""Monotone decays: constant, step, piecewise constant, exponential, 1/t, polynomial, linear.

Every schedule maps the step `t` (0 at the first update, an int array) to a float32 scalar and
is decorated with `by_value`, so schedules built from equal arguments compare and hash equal
(an optimizer that holds one is then equal to a rebuilt one and hits the jit cache).
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _check
from gradxform._base import Schedule
from gradxform._equality import by_value
from gradxform._schedules import _common as c


@by_value
def constant_schedule(value: float) -> Schedule:
  """`η_t = value` for every step.

  Args:
    value: the constant.

  Example:
    >>> gx.constant_schedule(0.1)(jnp.arange(3))
    Array([0.1, 0.1, 0.1], dtype=float32)

  References:
    Optax's `constant_schedule` (https://github.com/google-deepmind/optax).
  """
  value = _check.real("constant_schedule", "value", value)

  def schedule(step):
    step = c.as_step(step)
    return jnp.full(jnp.shape(step), value, c.OUT_DTYPE)

  return schedule


@by_value
def step_decay_schedule(init_value: float, step_size: int, gamma: float = 0.1) -> Schedule:
  """Step decay: `η_t = η0 · γ^⌊t / step_size⌋` (torch `StepLR`).

  Args:
    init_value: η0.
    step_size: steps between two decays (a positive integer).
    gamma: multiplicative factor γ ≥ 0 of each decay.

  Example:
    >>> gx.step_decay_schedule(0.1, 30)(jnp.array([0, 29, 30, 60]))
    Array([0.1  , 0.1  , 0.01 , 0.001], dtype=float32)

  References:
    He, Zhang, Ren & Sun, "Deep residual learning for image recognition", CVPR 2016
    (learning rate ×0.1 at fixed steps).
  """
  where = "step_decay_schedule"
  init_value = _check.real(where, "init_value", init_value)
  step_size = _check.integer(where, "step_size", step_size, minimum=1)
  gamma = _check.real(where, "gamma", gamma, ge=0.0)

  def schedule(step):
    step = c.as_step(step)
    k = c.as_float(step // step_size)
    if gamma == 0.0:
      return c.out(jnp.where(k == 0, init_value, 0.0))
    return c.out(init_value * jnp.exp(k * math.log(gamma)))

  return schedule


@by_value
def piecewise_constant_schedule(init_value: float,
                                boundaries_and_scales: Mapping[int, float] | None = None
                                ) -> Schedule:
  """Piecewise constant: `η_t = η0 · ∏_{b ≤ t} s_b` (torch `MultiStepLR`, Optax).

  The scale of boundary `b` applies from step `b` on (inclusive), and scales multiply.

  Args:
    init_value: η0.
    boundaries_and_scales: a dict from boundary step (int ≥ 0) to multiplicative scale ≥ 0.

  Example:
    >>> schedule = gx.piecewise_constant_schedule(0.1, {100: 0.1, 200: 0.1})
    >>> schedule(jnp.array([0, 99, 100, 200]))
    Array([0.1  , 0.1  , 0.01 , 0.001], dtype=float32)

  References:
    He, Zhang, Ren & Sun, "Deep residual learning for image recognition", CVPR 2016.
  """
  where = "piecewise_constant_schedule"
  init_value = _check.real(where, "init_value", init_value)
  if boundaries_and_scales is None:
    boundaries_and_scales = {}
  _check.requires(where, isinstance(boundaries_and_scales, Mapping),
                  "boundaries_and_scales must be a dict step -> scale, got "
                  f"{boundaries_and_scales!r}")
  items = sorted((_check.integer(where, "boundaries_and_scales boundary", b, minimum=0),
                  _check.real(where, f"boundaries_and_scales[{b!r}]", s, ge=0.0))
                 for b, s in boundaries_and_scales.items())
  _check.requires(where, len({b for b, _ in items}) == len(items),
                  f"boundaries_and_scales has repeated boundaries: {items}")
  values = [init_value]
  for _, s in items:
    values.append(values[-1] * s)   # cumulative products in float64, then one rounding
  bounds = np.asarray([b for b, _ in items], np.int64)
  table = np.asarray(values, np.float64)

  def schedule(step):
    step = c.as_step(step)
    if not len(items):
      return c.out(jnp.full(jnp.shape(step), init_value))
    idx = jnp.searchsorted(jnp.asarray(bounds, step.dtype), step, side="right")
    return c.out(jnp.asarray(table.astype(np.float32))[idx])

  return schedule


def _progress(step: jax.Array, transition_steps: int, transition_begin: int,
              staircase: bool) -> jax.Array:
  """`(t − begin) / transition_steps`, clipped at 0 below, floored when `staircase`."""
  t = jnp.maximum(step - transition_begin, 0)
  if staircase:
    return c.as_float(t // transition_steps)
  return c.as_float(t) / transition_steps


@by_value
def exponential_decay(init_value: float, decay_rate: float, *, transition_steps: int = 1,
                      staircase: bool = False, end_value: float | None = None,
                      transition_begin: int = 0) -> Schedule:
  """Exponential decay: `η_t = η0 · r^{t / k}` (`⌊t/k⌋` with `staircase`), as Optax.

  With `end_value`, the value is clipped there (a lower bound when `r < 1`, an upper bound when
  `r > 1`). Before `transition_begin` the value is η0 and `t` counts from it.

  Args:
    init_value: η0.
    decay_rate: r > 0.
    transition_steps: k, a positive integer.
    staircase: decay in discrete jumps every k steps.
    end_value: optional bound.
    transition_begin: steps (≥ 0) to hold η0 before decaying (an Optax option).

  Example:
    >>> gx.exponential_decay(1.0, 0.5, transition_steps=10)(jnp.array([0, 5, 10, 20]))
    Array([1.        , 0.70710677, 0.5       , 0.25      ], dtype=float32)

  References:
    Optax's `exponential_decay` (https://github.com/google-deepmind/optax), after
    TensorFlow's `tf.keras.optimizers.schedules.ExponentialDecay`.
  """
  where = "exponential_decay"
  init_value = _check.real(where, "init_value", init_value)
  decay_rate = _check.real(where, "decay_rate", decay_rate, gt=0.0)
  transition_steps = _check.integer(where, "transition_steps", transition_steps, minimum=1)
  transition_begin = _check.integer(where, "transition_begin", transition_begin, minimum=0)
  if end_value is not None:
    end_value = _check.real(where, "end_value", end_value)
  log_rate = math.log(decay_rate)   # in float64: r in float32 would compound over t

  def schedule(step):
    p = _progress(c.as_step(step), transition_steps, transition_begin, staircase)
    value = init_value * jnp.exp(p * log_rate)
    if end_value is not None:
      value = jnp.maximum(value, end_value) if decay_rate < 1 else jnp.minimum(value, end_value)
    return c.out(value)

  return schedule


@by_value
def inverse_time_decay(init_value: float, decay_rate: float, *, transition_steps: int = 1,
                       staircase: bool = False) -> Schedule:
  """Inverse-time decay: `η_t = η0 / (1 + r · t / k)` (`⌊t/k⌋` with `staircase`).

  Args:
    init_value: η0.
    decay_rate: r ≥ 0.
    transition_steps: k, a positive integer.
    staircase: decay in discrete jumps every k steps.

  Example:
    >>> gx.inverse_time_decay(1.0, 1.0, transition_steps=10)(jnp.array([0, 10, 30]))
    Array([1.  , 0.5 , 0.25], dtype=float32)

  References:
    Bottou, "Stochastic gradient descent tricks", Neural Networks: Tricks of the Trade, 2012
    (`η_t = η0 / (1 + λ η0 t)`).
  """
  where = "inverse_time_decay"
  init_value = _check.real(where, "init_value", init_value)
  decay_rate = _check.real(where, "decay_rate", decay_rate, ge=0.0)
  transition_steps = _check.integer(where, "transition_steps", transition_steps, minimum=1)

  def schedule(step):
    p = _progress(c.as_step(step), transition_steps, 0, staircase)
    return c.out(init_value / (1.0 + decay_rate * p))

  return schedule


@by_value
def polynomial_schedule(init_value: float, end_value: float, power: float,
                        transition_steps: int, transition_begin: int = 0) -> Schedule:
  """Polynomial decay: `η_t = (η0 − η_end)(1 − s/T)^p + η_end`, `s = clip(t − begin, 0, T)`.

  η0 until `transition_begin`, η_end from `transition_begin + T` on (Optax's schedule).

  Args:
    init_value: η0.
    end_value: η_end.
    power: p > 0.
    transition_steps: T, a positive integer.
    transition_begin: steps (≥ 0) to hold η0 first.

  Example:
    >>> gx.polynomial_schedule(1.0, 0.0, 2, 10)(jnp.array([0, 5, 10, 20]))
    Array([1.  , 0.25, 0.  , 0.  ], dtype=float32)

  References:
    Optax's `polynomial_schedule` (https://github.com/google-deepmind/optax), after
    TensorFlow's `PolynomialDecay`.
  """
  return _polynomial("polynomial_schedule", init_value, end_value, power, transition_steps,
                     transition_begin)


@by_value
def linear_schedule(init_value: float, end_value: float, transition_steps: int,
                    transition_begin: int = 0) -> Schedule:
  """Linear interpolation from η0 to η_end over T steps: `polynomial_schedule` with p = 1.

  Args:
    init_value: η0.
    end_value: η_end.
    transition_steps: T, a positive integer.
    transition_begin: steps (≥ 0) to hold η0 first.

  Example:
    >>> gx.linear_schedule(0.0, 1.0, 4)(jnp.arange(6))
    Array([0.  , 0.25, 0.5 , 0.75, 1.  , 1.  ], dtype=float32)

  References:
    Optax's `linear_schedule` (https://github.com/google-deepmind/optax); torch's `LinearLR`.
  """
  return _polynomial("linear_schedule", init_value, end_value, 1.0, transition_steps,
                     transition_begin)


def _polynomial(where: str, init_value: float, end_value: float, power: float,
                transition_steps: int, transition_begin: int) -> Schedule:
  init_value = _check.real(where, "init_value", init_value)
  end_value = _check.real(where, "end_value", end_value)
  power = _check.real(where, "power", power, gt=0.0)
  transition_steps = _check.integer(where, "transition_steps", transition_steps, minimum=1)
  transition_begin = _check.integer(where, "transition_begin", transition_begin, minimum=0)

  def schedule(step):
    s = c.as_float(jnp.clip(c.as_step(step) - transition_begin, 0, transition_steps))
    if power == 1.0:
      return c.out(c.linear_mix(init_value, end_value, s, transition_steps))
    w = ((transition_steps - s) / transition_steps) ** power
    return c.out(init_value * w + end_value * (1.0 - w))

  return schedule
