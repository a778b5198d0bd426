"""Value identity for factories: equal arguments give equal (and equally hashed) results.

Optax builds every transform from fresh closures, so two `adam(1e-3)` never compare equal and
an optimizer passed as a static argument to `jax.jit`, or rebuilt each epoch, recompiles. Here
each public factory is decorated with `by_value`: what it returns is wrapped in `Fn` objects
whose equality and hash are those of `(factory, bound arguments)`. Arguments that cannot be
frozen into a hashable key (a traced array, an unhashable object) fall back to identity, which
is never wrong, only slower.

`Fn` also carries the small amount of static metadata `chain` needs (whether a transform may
borrow its chain's step counter, whether it turns gradients into a running average).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable

import jax
import numpy as np

_UNHASHABLE = object()


class Fn:
  """A callable with value equality: `Fn(f, key) == Fn(g, key)` whenever the keys are equal.

  With `key=None` equality is identity. `meta` holds static facts about the transform the
  function belongs to (see `gradxform._base.transform`).
  """

  def __init__(self, fn: Callable[..., Any], key: Any = None, **meta: Any):
    self.fn = fn
    self.key = key
    self.meta = meta
    functools.update_wrapper(self, fn)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self.fn(*args, **kwargs)

  def __eq__(self, other: object) -> bool:
    if self is other:
      return True
    if not isinstance(other, Fn) or self.key is None or other.key is None:
      return False
    return self.key == other.key

  def __hash__(self) -> int:
    return id(self) if self.key is None else hash(self.key)

  def __repr__(self) -> str:
    return f"<gradxform {getattr(self, '__qualname__', 'function')}>"


def freeze(value: Any) -> Any:
  """A hashable stand-in for `value` that compares equal exactly when values do.

  Returns `_UNHASHABLE` for values with no sound key (tracers, arbitrary unhashable objects).
  """
  if value is None or isinstance(value, (bool, str, bytes)):
    return (type(value).__name__, value)
  if isinstance(value, (int, float, complex, np.number)):
    v = value.item() if isinstance(value, np.number) else value
    if isinstance(v, float) and math.isnan(v):
      return ("nan",)
    return ("num", v)
  if isinstance(value, jax.core.Tracer):
    return _UNHASHABLE
  if isinstance(value, (np.ndarray, jax.Array)):
    try:
      arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - deleted or non-addressable arrays
      return _UNHASHABLE
    return ("array", str(arr.dtype), arr.shape, arr.tobytes())
  if isinstance(value, (list, tuple)):
    items = tuple(freeze(v) for v in value)
    if any(i is _UNHASHABLE for i in items):
      return _UNHASHABLE
    return (type(value).__name__, items)
  if isinstance(value, dict):
    try:
      keys = sorted(value)
    except TypeError:
      return _UNHASHABLE
    items = tuple((k, freeze(value[k])) for k in keys)
    if any(v is _UNHASHABLE for _, v in items):
      return _UNHASHABLE
    return ("dict", items)
  try:
    hash(value)
  except TypeError:
    return _UNHASHABLE
  return ("obj", value)


def factory_key(factory: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
  """The value key of `factory(*args, **kwargs)`, or None when it has none."""
  try:
    bound = inspect.signature(factory).bind(*args, **kwargs)
  except TypeError:
    return None
  bound.apply_defaults()
  frozen = freeze(tuple(bound.arguments.items()))
  if frozen is _UNHASHABLE:
    return None
  return (factory.__module__, factory.__qualname__, frozen)


def by_value(factory: Callable[..., Any]) -> Callable[..., Any]:
  """Decorates a schedule factory: equal arguments give equal schedules."""

  @functools.wraps(factory)
  def build(*args: Any, **kwargs: Any) -> Any:
    result = factory(*args, **kwargs)
    key = factory_key(factory, args, kwargs)
    if isinstance(result, Fn):
      return Fn(result.fn, key, **result.meta)
    return Fn(result, key)

  return build
