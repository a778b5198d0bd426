"""Hyperparameter validation at construction time.

Each check coerces a Python number to float (an integer `b1=0` must not turn into integer
arithmetic under jit) and raises `ValueError` naming the parameter and the value. Arrays
(including tracers from `inject_hyperparams`) and schedules pass unchecked: they are only known
at run time.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp


def _concrete(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(where: str, name: str, value: Any) -> Any:
  if isinstance(value, bool):
    raise ValueError(f"{where}: {name} must be a number, got the boolean {value!r}")
  if _concrete(value):
    return float(value)
  if callable(value) or hasattr(value, "shape"):
    return value
  raise ValueError(f"{where}: {name} must be a number, got {type(value).__name__} {value!r}")


def non_negative(where: str, name: str, value: Any) -> Any:
  value = _number(where, name, value)
  if _concrete(value) and not value >= 0.0:
    raise ValueError(f"{where}: {name} must be >= 0, got {value!r}")
  return value


def positive(where: str, name: str, value: Any) -> Any:
  value = _number(where, name, value)
  if _concrete(value) and not value > 0.0:
    raise ValueError(f"{where}: {name} must be > 0, got {value!r}")
  return value


def unit_interval(where: str, name: str, value: Any, *, closed: bool = False) -> Any:
  """Checks `0 <= value < 1` (or `<= 1` when `closed`)."""
  value = _number(where, name, value)
  if _concrete(value):
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok:
      interval = "[0, 1]" if closed else "[0, 1)"
      raise ValueError(f"{where}: {name} must be in {interval}, got {value!r}")
  return value


def learning_rate(where: str, value: Any) -> Any:
  """A float, a scalar array or a schedule; a negative number raises."""
  if callable(value):
    return value
  return non_negative(where, "learning_rate", value)


def positive_int(where: str, name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
  return int(value)


def state_dtype(where: str, value: Any) -> Any:
  """None (each parameter's own dtype) or a floating dtype."""
  if value is None:
    return None
  try:
    dtype = jnp.dtype(value)
  except TypeError as e:
    raise ValueError(f"{where}: state_dtype must be a floating dtype or None, got {value!r}") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{where}: state_dtype must be a floating dtype or None, got {dtype}")
  return dtype


def one_of(where: str, name: str, value: Any, choices: tuple) -> Any:
  if value not in choices:
    raise ValueError(f"{where}: {name} must be one of {choices}, got {value!r}")
  return value
