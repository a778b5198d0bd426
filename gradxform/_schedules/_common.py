"""Helpers shared by the schedule modules: the step/value conventions and cosine arithmetic.

Every schedule takes an integer step (a Python int or an int array, 0 at the first update) and
returns a float32 scalar array. Arithmetic happens in `scalar_dtype()` (float32, or float64
under `jax_enable_x64`) and is cast to float32 at the end; no Python branch ever depends on the
traced step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradxform._numerics import scalar_dtype

OUT_DTYPE = jnp.float32


def as_step(step: Any) -> jax.Array:
  """The step as an integer array (floats are rejected: steps count updates)."""
  step = jnp.asarray(step)
  if not jnp.issubdtype(step.dtype, jnp.integer):
    raise TypeError(f"a schedule's step must be an integer array, got dtype {step.dtype}")
  return step


def as_float(step: jax.Array) -> jax.Array:
  return step.astype(scalar_dtype())


def out(value: Any) -> jax.Array:
  return jnp.asarray(value).astype(OUT_DTYPE)


def cosine_fraction(t: jax.Array, period: Any, rest: jax.Array | None = None) -> jax.Array:
  """`(1 + cos(π t / T)) / 2`: 1 at t = 0, 0 at t = T.

  Evaluated as `cos²(π t / 2T)` in the first half and `sin²(π (T − t) / 2T)` in the second,
  so values near 0 keep full relative accuracy (plain `1 + cos` cancels there in float32).
  `rest` is `T − t` when the caller knows it more accurately than the subtraction.
  """
  rest = period - t if rest is None else rest
  half = 0.5 * jnp.pi / period
  return jnp.where(2.0 * t <= period, jnp.cos(half * t) ** 2, jnp.sin(half * rest) ** 2)


def cosine_mix(start: Any, end: Any, t: jax.Array, period: Any,
               rest: jax.Array | None = None) -> jax.Array:
  """`end + (start − end)(1 + cos(π t / T)) / 2`, as `start·w(t) + end·w(T − t)`.

  `w(T − t) = 1 − w(t)` is computed on its own, so both ends are exact and neither a small end
  value nor a small start value is swamped by rounding of the other.
  """
  rest = period - t if rest is None else rest
  return start * cosine_fraction(t, period, rest) + end * cosine_fraction(rest, period, t)


def linear_mix(start: Any, end: Any, t: jax.Array, period: Any) -> jax.Array:
  """`start + (end − start) t / T`, as `start·(T − t)/T + end·t/T` (exact at both ends)."""
  return start * ((period - t) / period) + end * (t / period)
