"""Argument validation for every factory in the library: one function per kind of check.

Every failed check raises `ValueError("<factory>: <argument> must be ..., got <value>")`,
naming the factory (`where`), the argument and the value. Checks run when the factory runs,
never under `jit`. There are two families:

* Hyperparameters of transforms (`non_negative`, `positive`, `unit_interval`, `at_least`,
  `learning_rate`, `non_negative_or_schedule`, `constant`): a Python number is checked and
  returned as a float (an integer `b1=0` must not turn into integer arithmetic under jit).
  Arrays (including the tracers `inject_hyperparams` passes) and schedules pass unchecked:
  their values are only known at run time.
* Static arguments, whose values the factory itself computes with (schedule arguments, step
  counts, seeds, patience): `real` and `integer` accept Python numbers only and return a
  Python `float` / `int`.

The rest check one kind of thing each: `state_dtype`, `one_of`, `function`, and the checks
between arguments, `ordered`, `non_decreasing`, `nesterov` and `requires`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import jax.numpy as jnp

from gradxform import _quantize

_UNSET: Any = object()


def _concrete(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(where: str, name: str, value: Any) -> Any:
  """A hyperparameter: a Python number as float; an array or a schedule as it is."""
  if isinstance(value, bool):
    raise ValueError(f"{where}: {name} must be a number, got the boolean {value!r}")
  if _concrete(value):
    return float(value)
  if callable(value) or hasattr(value, "shape"):
    return value
  raise ValueError(f"{where}: {name} must be a number, got {type(value).__name__} {value!r}")


# ---------------------------------------------------------------------------------------------
# Hyperparameters: numbers are checked and made floats; arrays and schedules pass.


def at_least(where: str, name: str, value: Any, minimum: float, *, why: str = "") -> Any:
  """`value >= minimum`; `why` (e.g. " (r_t is undefined below 4)") follows the bound."""
  value = _number(where, name, value)
  if _concrete(value) and not value >= minimum:
    raise ValueError(f"{where}: {name} must be >= {minimum:g}{why}, got {value!r}")
  return value


def non_negative(where: str, name: str, value: Any) -> Any:
  """`value >= 0`."""
  return at_least(where, name, value, 0.0)


def positive(where: str, name: str, value: Any) -> Any:
  """`value > 0`."""
  value = _number(where, name, value)
  if _concrete(value) and not value > 0.0:
    raise ValueError(f"{where}: {name} must be > 0, got {value!r}")
  return value


def non_zero(where: str, name: str, value: Any) -> Any:
  """A finite `value != 0` (a factor that is divided by, of either sign)."""
  value = _number(where, name, value)
  if _concrete(value) and not (math.isfinite(value) and value != 0.0):
    raise ValueError(f"{where}: {name} must be a finite non-zero number, got {value!r}")
  return value


def unit_interval(where: str, name: str, value: Any, *, closed: bool = False) -> Any:
  """`0 <= value < 1` (`<= 1` when `closed`): a decay, a momentum, a dampening."""
  value = _number(where, name, value)
  if _concrete(value):
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok:
      interval = "[0, 1]" if closed else "[0, 1)"
      raise ValueError(f"{where}: {name} must be in {interval}, got {value!r}")
  return value


def non_negative_or_schedule(where: str, name: str, value: Any) -> Any:
  """A rate: a number `>= 0` (as float), a scalar array, or a schedule `step -> value`."""
  if callable(value):
    return value
  return non_negative(where, name, value)


def learning_rate(where: str, value: Any) -> Any:
  """`non_negative_or_schedule` for the argument called `learning_rate`."""
  return non_negative_or_schedule(where, "learning_rate", value)


def constant(where: str, name: str, value: Any, *, instead: str) -> Any:
  """A number (as float) or an array, not a schedule; `instead` says what takes a schedule."""
  if callable(value):
    raise ValueError(f"{where}: {name} must be a number or array; for a schedule use {instead}")
  return _number(where, name, value)


# ---------------------------------------------------------------------------------------------
# Static arguments: Python numbers the factory computes with.


def _bounds(gt: Any, ge: Any, lt: Any, le: Any) -> str:
  """The bounds as text: `> 0`, `>= 1`, `in [0, 1)`."""
  low = (f"({gt:g}", f"> {gt:g}") if gt is not None else (
      (f"[{ge:g}", f">= {ge:g}") if ge is not None else None)
  high = (f"{lt:g})", f"< {lt:g}") if lt is not None else (
      (f"{le:g}]", f"<= {le:g}") if le is not None else None)
  if low and high:
    return f"in {low[0]}, {high[0]}"
  return (low or high or ("", ""))[1]


def real(where: str, name: str, value: Any, *, gt: float | None = None,
         ge: float | None = None, lt: float | None = None, le: float | None = None) -> float:
  """A finite Python number, as float, within the bounds given (`gt`: `value > gt`, ...)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise ValueError(f"{where}: {name} must be a finite number, got {value!r}")
  value = float(value)
  if ((gt is not None and not value > gt) or (ge is not None and not value >= ge)
      or (lt is not None and not value < lt) or (le is not None and not value <= le)):
    raise ValueError(f"{where}: {name} must be a number {_bounds(gt, ge, lt, le)}, "
                     f"got {value!r}")
  return value


def _as_int(value: Any) -> int | None:
  """`value` as an int if it is an integer or an integral float (100.0), else None."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return None
  if isinstance(value, numbers.Integral):
    return int(value)
  if math.isfinite(value) and float(value).is_integer():
    return int(float(value))
  return None


def integer(where: str, name: str, value: Any, *, minimum: int | None = None) -> int:
  """An integer `>= minimum` (any integer when None), as int; integral floats (100.0) pass."""
  ivalue = _as_int(value)
  if ivalue is None or (minimum is not None and ivalue < minimum):
    what = ("an int" if minimum is None else "a positive integer" if minimum == 1
            else f"an int >= {minimum}")
    raise ValueError(f"{where}: {name} must be {what}, got {value!r}")
  return ivalue


def positive_int_or_schedule(where: str, name: str, value: Any) -> Any:
  """An integer `>= 1` (as int) or a schedule `step -> value`."""
  if callable(value):
    return value
  ivalue = _as_int(value)
  if ivalue is None or ivalue < 1:
    raise ValueError(f"{where}: {name} must be a positive int or a schedule, got {value!r}")
  return ivalue


# ---------------------------------------------------------------------------------------------
# Kinds, dtypes and functions.


def state_dtype(where: str, value: Any, *, int8: bool = True) -> Any:
  """None (each parameter's own dtype), a floating dtype, or (where `int8`) "int8" /
  `jnp.int8`: blockwise 8-bit quantized state, returned as the `_quantize.INT8` marker."""
  if value is None:
    return None
  if _quantize.is_int8(value):
    dtype: Any = value
  else:
    try:
      dtype = jnp.dtype(value)
    except TypeError as e:
      raise ValueError(f"{where}: state_dtype must be a floating dtype, 'int8' or None, got "
                       f"{value!r}") from e
  if _quantize.is_int8(dtype) or dtype == jnp.int8:
    if not int8:
      raise ValueError(f"{where}: state_dtype='int8' (quantized state) is not supported by "
                       f"{where}; use a floating dtype or None")
    return _quantize.INT8
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{where}: state_dtype must be a floating dtype, 'int8' or None, got "
                     f"{dtype}")
  return dtype


def one_of(where: str, name: str, value: Any, choices: tuple) -> Any:
  """`value` is one of `choices` (a mode, a string option)."""
  if value not in choices:
    raise ValueError(f"{where}: {name} must be one of {choices}, got {value!r}")
  return value


def function(where: str, name: str, value: Any, *, optional: bool = False) -> Any:
  """A function of the step (a schedule, a decay function), or None when `optional`."""
  if not callable(value) and not (optional and value is None):
    raise ValueError(f"{where}: {name} must be a function of the step"
                     f"{' or None' if optional else ''}, got {value!r}")
  return value


# ---------------------------------------------------------------------------------------------
# Checks between arguments.


def ordered(where: str, low: tuple[str, Any], high: tuple[str, Any], *, strict: bool = False,
            why: str = "") -> None:
  """`low <= high` (`<` when `strict`) for two arguments given as `(name, value)` pairs."""
  (low_name, low_value), (high_name, high_value) = low, high
  if not (low_value < high_value if strict else low_value <= high_value):
    raise ValueError(f"{where}: {high_name} must be {'>' if strict else '>='} {low_name}{why}, "
                     f"got {low_name}={low_value!r}, {high_name}={high_value!r}")


def non_decreasing(where: str, name: str, values: Sequence[Any]) -> None:
  """The entries of `values` never decrease (boundaries of consecutive phases)."""
  if list(values) != sorted(values):
    raise ValueError(f"{where}: {name} must be non-decreasing, got {tuple(values)!r}")


def nesterov(where: str, nesterov: bool, *, momentum: Any = _UNSET,
             dampening: Any = _UNSET) -> None:
  """Nesterov momentum needs a non-zero `momentum` and no `dampening` (those that are given).

  A momentum given as an array passes (it is only known at run time); a dampening must be the
  number 0.
  """
  if not nesterov:
    return
  given = {k: v for k, v in (("momentum", momentum), ("dampening", dampening)) if v is not _UNSET}
  bad_momentum = "momentum" in given and _concrete(momentum) and momentum == 0
  bad_dampening = "dampening" in given and not (_concrete(dampening) and dampening == 0)
  if bad_momentum or bad_dampening:
    needs = " and ".join(n for n, ok in (("momentum > 0", "momentum" in given),
                                          ("dampening = 0", "dampening" in given)) if ok)
    got = ", ".join(f"{k}={v!r}" for k, v in given.items())
    raise ValueError(f"{where}: Nesterov momentum requires {needs}, got {got}")


def requires(where: str, ok: bool, message: str) -> None:
  """A one-off condition between arguments: `message` says what is required and what was got."""
  if not ok:
    raise ValueError(f"{where}: {message}")
