"""Value identity: equal arguments give equal (and equally hashed) results.

Optax builds every transform from fresh closures, so two `adam(1e-3)` never compare equal and
an optimizer passed as a static argument to `jax.jit`, or rebuilt each epoch, recompiles. Here
this module is the one mechanism for equality by value, used by everything that has it:

* `by_value(factory)` decorates a factory. What the factory returns, a function (a schedule)
  or a NamedTuple holding functions (`GradientTransformation`, `EarlyStopping`, a search
  `Task`), gets each function wrapped in an `Fn` whose equality and hash are those of
  `(factory, bound arguments, field name)`. `gradxform.transform` builds on it.
* `same_value` / `value_hash` compare and hash plain values the same way (frozen by `freeze`),
  for classes whose `__eq__` and `__hash__` must be written by hand (a NamedTuple holding
  arrays).

Arguments that cannot be frozen into a hashable key (a traced array, an unhashable object)
fall back to identity, which is never wrong, only slower.

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


def _fields(value: tuple) -> tuple:
  """`freeze` of a NamedTuple's fields (not of the NamedTuple: its own `__eq__` may call us)."""
  return (type(value), tuple(freeze(v) for v in value))


def same_value(a: tuple, b: object) -> bool:
  """`a == b` for a NamedTuple `a` that holds arrays: same type and frozen fields, or `a is b`.

  A field with no sound key (a tracer) makes the two unequal unless they are one object.
  """
  if a is b:
    return True
  if type(a) is not type(b):
    return False
  ka, kb = _fields(a), _fields(b)
  if any(v is _UNHASHABLE for v in ka[1] + kb[1]):
    return False
  return ka == kb


def value_hash(a: tuple) -> int:
  """The hash that goes with `same_value` (identity when a field has no sound key)."""
  key = _fields(a)
  return id(a) if any(v is _UNHASHABLE for v in key[1]) else hash(key)


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


def keyed(result: Any, key: Any) -> Any:
  """`result` with the value identity `key` (None: identity).

  A function becomes an `Fn` keyed `key`. A NamedTuple gets each of its function fields
  replaced by an `Fn` keyed `key + (field name,)`; its other fields are kept. An `Fn` keeps its
  `meta` and is re-keyed.
  """

  def one(f: Any, k: Any) -> Any:
    if isinstance(f, Fn):
      return Fn(f.fn, k, **f.meta)
    return Fn(f, k)

  if isinstance(result, tuple) and hasattr(result, "_fields"):
    return type(result)(*(
        one(f, None if key is None else key + (name,)) if callable(f) else f
        for name, f in zip(result._fields, result)))
  return one(result, key)


def by_value(factory: Callable[..., Any], *,
             finish: Callable[[Any], Any] | None = None) -> Callable[..., Any]:
  """Decorates a factory: results built from equal arguments compare and hash equal.

  The result (see `keyed`) is keyed by `(factory, its bound arguments)`, defaults applied, so
  positional and keyword spellings agree. `finish`, when given, is applied to the factory's
  result before it is keyed (`gradxform.transform` uses it to attach its metadata).

  Example:
    >>> from gradxform._equality import by_value
    >>> @by_value
    ... def halve_every(period: int):
    ...   return lambda step: 0.5 ** (step // period)
    >>> halve_every(10) == halve_every(period=10), halve_every(10) == halve_every(20)
    (True, False)
  """

  @functools.wraps(factory)
  def build(*args: Any, **kwargs: Any) -> Any:
    result = factory(*args, **kwargs)
    if finish is not None:
      result = finish(result)
    return keyed(result, factory_key(factory, args, kwargs))

  return build
