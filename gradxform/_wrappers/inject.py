"""`inject_hyperparams`: numeric hyperparameters live in the state, readable and replaceable.

`inject_hyperparams(gx.adam)(learning_rate=1e-3, b1=0.9)` is Adam whose `learning_rate` and
`b1` are arrays in `state.hyperparams`. Each update rebuilds the inner optimizer from those
arrays (inside the trace, so this costs nothing at run time) and applies it to the inner state.
Because the values are traced arguments rather than constants baked into the compiled step,
replacing them between steps never recompiles::

    state = state.with_hyperparams(learning_rate=1e-4)

A schedule given as a hyperparameter is evaluated at every update from the wrapper's own step
counter; its entry in `state.hyperparams` then holds the value used by the latest update (the
first update's value right after `init`), for logging.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import numbers
import types
import typing
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._base import (
  COUNT_KEY,
  HYPERPARAMS_ATTR,
  GradientTransformation,
  _accepts_extra,
  _as_transform,
  declare_around,
  next_count,
  step_count,
  substitute,
  transform,
)
from gradxform._equality import by_value
from gradxform._numerics import zero_count

_STATIC, _NUMBER, _SCHEDULE = "static", "number", "schedule"


class InjectHyperparamsState(NamedTuple):
  """State of `inject_hyperparams(factory)(...)`.

  Fields:
    count: int32 scalar, updates so far (drives the scheduled hyperparameters; None when it
      borrows the step counter of an enclosing chain).
    hyperparams: dict name -> array: the numeric hyperparameters (replace them freely) and the
      latest values of the scheduled ones (recomputed at every update).
    inner_state: the state of the wrapped optimizer.

  Example:
    >>> state = gx.inject_hyperparams(gx.sgd)(learning_rate=0.1).init(params)
    >>> state.hyperparams
    {'learning_rate': Array(0.1, dtype=float32)}

  References:
    Optax's `InjectHyperparamsState` (https://github.com/google-deepmind/optax).
  """

  count: jax.Array | None  # type: ignore[assignment]
  hyperparams: dict[str, jax.Array]
  inner_state: Any

  def with_hyperparams(self, **values: Any) -> "InjectHyperparamsState":
    """A copy with some hyperparameters replaced, each cast to its current dtype and shape.

    Casting keeps the traced signature of a jitted step unchanged, so nothing recompiles (a
    bare Python float stored in the dict would be weakly typed and retrace once).

    Example:
      >>> state = gx.inject_hyperparams(gx.adam)(learning_rate=1e-3, b1=0.9).init(params)
      >>> state = state.with_hyperparams(learning_rate=1e-4, b1=0.95)
      >>> state.hyperparams["b1"]
      Array(0.95, dtype=float32)
    """
    hyperparams = dict(self.hyperparams)
    for name, value in values.items():
      if name not in hyperparams:
        raise KeyError(f"with_hyperparams: {name!r} is not an injected hyperparameter; the "
                       f"state has {sorted(hyperparams)}. Only the arguments passed to "
                       "inject_hyperparams(...)(...) as numbers are injectable (not defaults "
                       "left out), and only for parameters the factory declares as "
                       "hyperparameters (@gx.transform(hyperparams=...)).")
      old = hyperparams[name]
      new = jnp.asarray(value)
      if new.shape != jnp.shape(old):
        raise ValueError(f"with_hyperparams: {name} must keep its shape {jnp.shape(old)}, got "
                         f"{new.shape}")
      hyperparams[name] = new.astype(jnp.result_type(old))
    return self._replace(hyperparams=hyperparams)


# What may be injected. A factory decorated with `gx.transform(hyperparams=...)` declares its
# numeric hyperparameters, and only those are injected (numbers) or evaluated (schedules). A
# factory that declares nothing (Optax's, a plain function) is read from its parameters' type
# annotations, Optax's convention: a parameter whose type is a number (or a union with a float
# or an array type) takes a number; a union of a number and a callable (Optax's and gradxform's
# `ScalarOrSchedule`) also takes a schedule; an unannotated (or `Any`) parameter takes both.
Slot = tuple[bool, bool]   # (takes a number, takes a schedule)
_ANYTHING: Slot = (True, True)
_NOTHING: Slot = (False, False)
_UNIONS = (typing.Union, types.UnionType)
_NUMBER_TYPES = (float, complex, numbers.Real, numbers.Complex)


def _declared(factory: Callable[..., Any]) -> tuple[str, ...] | None:
  """The hyperparameters `factory` declares with `gx.transform`, or None if it declares none."""
  target = factory.func if isinstance(factory, functools.partial) else factory
  return getattr(target, HYPERPARAMS_ATTR, None)


def _slots(factory: Callable[..., Any], signature: inspect.Signature | None
           ) -> Callable[[str], Slot]:
  """`slot(name)`: whether the argument `name` of `factory` takes a number / a schedule."""
  declared = _declared(factory)
  if declared is not None:
    return lambda name: _ANYTHING if name in declared else _NOTHING
  if signature is None:
    return lambda name: _ANYTHING
  namespace = getattr(inspect.unwrap(factory), "__globals__", {})
  table = {name: _annotated_slot(p.annotation, namespace)
           for name, p in signature.parameters.items()}
  return lambda name: table.get(name, _ANYTHING)


def _annotated_slot(annotation: Any, namespace: dict[str, Any]) -> Slot:
  """The slot a foreign factory's parameter annotation describes (see above)."""
  if isinstance(annotation, str):             # `from __future__ import annotations`
    try:
      annotation = eval(annotation, dict(namespace))  # noqa: S307 - the factory's own annotation
    except Exception:  # noqa: BLE001 - unresolvable: as if unannotated
      return _ANYTHING
  if annotation is inspect.Parameter.empty or annotation is Any:
    return _ANYTHING
  members = typing.get_args(annotation) if typing.get_origin(annotation) in _UNIONS else (
      annotation,)
  number = any(m in _NUMBER_TYPES or (isinstance(m, type) and issubclass(
      m, (jax.Array, np.ndarray, np.number))) for m in members)
  schedule = number and any(m is collections.abc.Callable
                            or typing.get_origin(m) is collections.abc.Callable
                            for m in members)
  return number, schedule


def _is_dtype(value: Any) -> bool:
  if isinstance(value, (type, np.dtype)):
    return True
  try:
    np.dtype(value)
  except TypeError:
    return False
  return not isinstance(value, numbers.Number)


def _is_numeric(value: Any) -> bool:
  if isinstance(value, bool):
    return False
  if isinstance(value, numbers.Real):
    return True
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    dtype = np.asarray(value).dtype if not isinstance(value, jax.Array) else value.dtype
    return bool(jnp.issubdtype(dtype, jnp.number))
  return False


def _kind(name: str, value: Any, slot: Slot, static_args: tuple) -> str:
  """Whether an argument is injected as a number, evaluated as a schedule, or passed as is.

  A number or numeric array is injected, and a callable evaluated as a schedule, where the
  parameter's slot takes one (see `_slots`). Everything else is static: None, flags, strings,
  dtypes, masks, functions such as `decay_fn`, undeclared parameters, and any name listed in
  `static_args`.
  """
  if name in static_args or value is None or isinstance(value, (bool, str, bytes)):
    return _STATIC
  takes_number, takes_schedule = slot
  if _is_numeric(value):
    return _NUMBER if takes_number else _STATIC
  if callable(value) and not _is_dtype(value):
    return _SCHEDULE if takes_schedule else _STATIC
  return _STATIC


def _value_dtype(value: Any, hyperparam_dtype: Any) -> Any:
  if hyperparam_dtype is not None:
    return jnp.dtype(hyperparam_dtype)
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    dtype = jnp.result_type(value)
    if jnp.issubdtype(dtype, jnp.inexact):
      return dtype
  return jnp.dtype(jnp.float32)


@by_value
def inject_hyperparams(factory: Callable[..., Any], *, static_args: tuple[str, ...] = (),
                       hyperparam_dtype: Any = None) -> Callable[..., GradientTransformation]:
  """Wraps an optimizer factory so its numeric hyperparameters live in the optimizer state.

  `inject_hyperparams(factory)(*args, **kwargs)` builds `factory(*args, **kwargs)`, except
  that each hyperparameter given as a number or numeric array becomes an array in
  `state.hyperparams[name]` (float32 unless it is already a float array or `hyperparam_dtype`
  says otherwise), and each hyperparameter given as a schedule is evaluated at each update
  with the wrapper's step count (0 at the first update), its current value kept in
  `state.hyperparams[name]` for logging. Other arguments (flags, masks, `decay_fn`, dtypes,
  integers such as `seed`, names in `static_args`) are passed to `factory` unchanged. Only
  arguments actually passed are injected; defaults stay Python constants.

  Which arguments are hyperparameters is what the factory declares: every gradxform factory
  names its own with `@gx.transform(hyperparams=(...))` (`gx.adam`: `learning_rate`, `b1`,
  `b2`, `eps`, `eps_root`), and so can yours; any of them may be given as a number or as a
  schedule. A factory that declares nothing (an Optax one, a plain function) is read from its
  parameters' type annotations, Optax's convention: a number type (or a union with a float or
  an array type) takes a number, a union of a number and a callable (`ScalarOrSchedule`) also
  a schedule, an unannotated parameter either.

  Replace a value between steps with `state.with_hyperparams(name=value)` (or
  `state._replace(hyperparams={...})` with arrays of the same dtype): the jitted step does not
  recompile. The trajectory equals the plain optimizer's, up to the hyperparameters being
  float32 arrays rather than float64 Python constants (e.g. `1 − b2` is then computed from
  float32 `b2`).

  Args:
    factory: an optimizer or transform factory (any gradxform factory, or a foreign one
      returning an `(init, update)` pair).
    static_args: names to pass statically even if they are hyperparameters.
    hyperparam_dtype: dtype of every injected hyperparameter (default float32, or a float
      array's own dtype).

  Returns:
    A factory with `factory`'s signature returning a `GradientTransformation` whose state is
    `InjectHyperparamsState(count, hyperparams, inner_state)`. Equal arguments give equal
    transforms, so rebuilding one does not recompile a step that takes it as a static
    argument.

  Example:
    >>> tx = gx.inject_hyperparams(gx.adamw)(learning_rate=gx.cosine_decay_schedule(1e-3, 100),
    ...                                      weight_decay=1e-2)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> state.hyperparams["learning_rate"]                 # the value this update used
    Array(0.001, dtype=float32)
    >>> state = state.with_hyperparams(weight_decay=0.0)   # no recompilation

  References:
    Optax's `inject_hyperparams` (https://github.com/google-deepmind/optax).
  """
  where = "inject_hyperparams"
  if not callable(factory):
    raise TypeError(f"{where}: factory must be a function returning a transform (e.g. "
                    f"gx.adam, not gx.adam(1e-3)), got {factory!r}")
  if isinstance(static_args, str):
    static_args = (static_args,)
  static_args = tuple(static_args)
  for name in static_args:
    if not isinstance(name, str):
      raise TypeError(f"{where}: static_args must be parameter names, got {static_args!r}")
  if hyperparam_dtype is not None:
    hyperparam_dtype = jnp.dtype(hyperparam_dtype)
  try:
    signature = inspect.signature(factory)
  except (TypeError, ValueError):
    signature = None

  def build(*args: Any, **kwargs: Any) -> GradientTransformation:
    if signature is None:
      if args:
        raise TypeError(f"{where}: {factory!r} has no inspectable signature; pass keyword "
                        "arguments only")
      arguments = tuple(sorted(kwargs.items()))
    else:
      try:
        bound = signature.bind(*args, **kwargs)
      except TypeError as e:
        raise TypeError(f"{where}({getattr(factory, '__name__', factory)}): {e}") from None
      arguments = _flatten_arguments(signature, bound.arguments)
    return _injected(factory, arguments, static_args, hyperparam_dtype)

  build.__name__ = f"inject_hyperparams({getattr(factory, '__name__', 'factory')})"
  build.__doc__ = getattr(factory, "__doc__", None)
  if signature is not None:
    build.__signature__ = signature  # type: ignore[attr-defined]
  if _declared(factory) is not None:      # the wrapped factory declares the same names
    setattr(build, HYPERPARAMS_ATTR, _declared(factory))
  return build


def _flatten_arguments(signature: inspect.Signature, arguments: dict[str, Any]
                       ) -> tuple[tuple[str, Any], ...]:
  out = []
  for name, value in arguments.items():
    kind = signature.parameters[name].kind
    if kind is inspect.Parameter.VAR_KEYWORD:
      out.extend(value.items())
    elif kind is inspect.Parameter.VAR_POSITIONAL:
      out.append(("*" + name, tuple(value)))
    else:
      out.append((name, value))
  return tuple(out)


def _call(factory: Callable[..., Any], signature: inspect.Signature | None,
          arguments: dict[str, Any]) -> GradientTransformation:
  args, kwargs = [], {}
  for name, value in arguments.items():
    if name.startswith("*"):
      args.extend(value)
    elif signature is not None and name in signature.parameters and (
        signature.parameters[name].kind is inspect.Parameter.POSITIONAL_ONLY):
      args.append(value)
    else:
      kwargs[name] = value
  return _as_transform(factory(*args, **kwargs), "inject_hyperparams: the factory's result")


@transform(shares_count=True)
def _injected(factory: Callable[..., Any], arguments: tuple[tuple[str, Any], ...],
              static_args: tuple[str, ...], hyperparam_dtype: Any,
              variant: tuple[Any, ...] | None = None) -> GradientTransformation:
  """`inject_hyperparams(factory)(**arguments)`. With `variant` (a leaf's key, see
  `declare_around`), the optimizer's leafwise parts are replaced by their variants for it."""
  where = f"inject_hyperparams({getattr(factory, '__name__', 'factory')})"
  try:
    signature = inspect.signature(factory)
  except (TypeError, ValueError):
    signature = None
  slot = _slots(factory, signature)
  kinds = {name: _kind(name, value, slot(name), static_args) for name, value in arguments}
  given = dict(arguments)
  dtypes = {n: _value_dtype(given[n], hyperparam_dtype) for n, k in kinds.items()
            if k != _STATIC}
  numbers_ = [n for n, k in kinds.items() if k == _NUMBER]
  schedules = [n for n, k in kinds.items() if k == _SCHEDULE]

  def evaluate(hyperparams: dict[str, Any], count: jax.Array) -> dict[str, jax.Array]:
    out = {}
    for name in numbers_:
      if name not in hyperparams:
        raise ValueError(f"{where}.update: state.hyperparams has no {name!r} (it has "
                         f"{sorted(hyperparams)}); replace values, keep the keys "
                         "(state.with_hyperparams(...)).")
      value = jnp.asarray(hyperparams[name])
      if value.shape != jnp.shape(given[name]):
        raise ValueError(f"{where}.update: hyperparams[{name!r}] has shape {value.shape}, "
                         f"expected {jnp.shape(given[name])}")
      out[name] = value.astype(dtypes[name])
    for name in schedules:
      out[name] = jnp.asarray(given[name](count)).astype(dtypes[name])
    return out

  def inner(hyperparams: dict[str, jax.Array]) -> GradientTransformation:
    tx = _call(factory, signature, {**given, **hyperparams})
    return tx if variant is None else substitute(tx, variant)

  def init(params):
    count = zero_count()
    hyperparams = evaluate({n: given[n] for n in numbers_}, count)
    return InjectHyperparamsState(count=count, hyperparams=hyperparams,
                                  inner_state=inner(hyperparams).init(params))

  def update(updates, state, params=None, **extra):
    if not isinstance(state, InjectHyperparamsState):
      raise ValueError(f"{where}.update: expected the InjectHyperparamsState made by this "
                       f"transform's init(), got {type(state).__name__}")
    count = step_count(state, extra)
    hyperparams = evaluate(state.hyperparams, count)
    tx = inner(hyperparams)
    extra = {k: v for k, v in extra.items() if k != COUNT_KEY}
    if _accepts_extra(tx.update):
      updates, inner_state = tx.update(updates, state.inner_state, params, **extra)
    else:
      updates, inner_state = tx.update(updates, state.inner_state, params)
    return updates, InjectHyperparamsState(count=next_count(state, count),
                                           hyperparams=hyperparams, inner_state=inner_state)

  tx = GradientTransformation(init, update)
  # Scalars in the state around an elementwise (or leafwise) optimizer: the same, fused by
  # `update_and_apply`, whatever values the hyperparameters take.
  return declare_around(tx, inner({}), lambda key: _injected(
      factory, arguments, static_args, hyperparam_dtype, key))
