"""The transform protocol: `GradientTransformation`, `chain`, `named_chain`, `apply_updates`.

A transform is a pure pair `init(params) -> state`, `update(updates, state, params=None,
**extra) -> (updates, state)`. It is a NamedTuple of two functions, exactly Optax's shape, so
Flax's `TrainState` and `nnx.Optimizer` take it as is.

Two things pass between the parts of a chain through `**extra` (both documented in
BUILD_NOTES.md):

* `grad`: the gradient as it was before any part that turns it into a running average
  (`scale_by_momentum` and friends). Second-moment parts (`scale_by_rms`, ...) square this,
  not the momentum they receive, which is how Adam can be written as
  `chain(scale_by_momentum(b1, ema=True), bias_correction(b1), scale_by_rms(b2, ...), lr)`.
  A part used outside a chain simply squares its input.
* `count`: one step counter per chain. The first part whose state has a `count` owns it; every
  later part that can share (declared with `@transform(shares_count=True)`) keeps
  `count=None` in its state and reads the owner's count instead, so an Adam with a schedule
  holds one counter, not four that could drift apart.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple, Protocol, Union

import jax
import jax.numpy as jnp

from gradxform import _complex
from gradxform._equality import Fn, factory_key
from gradxform._numerics import cast

PyTree = Any
Params = Any
Updates = Any
OptState = Any
Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = Union[float, jax.Array, Schedule]

#: Reserved keys of `**extra`, set by `chain` (see the module docstring).
GRAD_KEY = "grad"
COUNT_KEY = "count"


class TransformInitFn(Protocol):

  def __call__(self, params: Params) -> OptState:
    ...


class TransformUpdateFn(Protocol):

  def __call__(self, updates: Updates, state: OptState, params: Params | None = None,
               **extra: Any) -> tuple[Updates, OptState]:
    ...


class GradientTransformation(NamedTuple):
  """A pure optimizer transform: `init(params) -> state` and `update(...) -> (updates, state)`.

  `update(updates, state, params=None, **extra)` returns the transformed updates and the new
  state. Transforms that need no extra arguments ignore `**extra`.
  """

  init: TransformInitFn
  update: TransformUpdateFn


class EmptyState(NamedTuple):
  """The state of a stateless transform."""


def meta(tx: GradientTransformation, name: str) -> Any:
  """Static metadata a gradxform transform declares (False for foreign transforms)."""
  return getattr(tx.update, "meta", {}).get(name, False)


def transform(factory: Callable[..., GradientTransformation] | None = None, *,
              shares_count: bool = False, accumulates: bool = False) -> Any:
  """Decorates a transform factory.

  The transform it returns compares (and hashes) equal to any other built by the same factory
  from equal arguments. `shares_count`: the state has a `count` field and `update` accepts
  `count=None` in the state, reading `extra['count']` instead (see `step_count`).
  `accumulates`: the output is a running average of the gradient, so later parts of a chain
  get the raw gradient as `extra['grad']`.
  """

  def decorate(factory: Callable[..., GradientTransformation]) -> Any:

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> GradientTransformation:
      tx = factory(*args, **kwargs)
      key = factory_key(factory, args, kwargs)
      init, update = (f.fn if isinstance(f, Fn) else f for f in tx)
      info = dict(getattr(tx.update, "meta", {}))
      info.update(name=factory.__name__, shares_count=shares_count, accumulates=accumulates)
      return GradientTransformation(
          Fn(_complex_as_real_init(init), None if key is None else key + ("init",)),
          Fn(_complex_as_real_update(update), None if key is None else key + ("update",),
             **info))

    return build

  return decorate if factory is None else decorate(factory)


def _complex_as_real_init(init: Callable[..., Any]) -> Callable[..., Any]:
  """`init` on the real view of complex parameters (see `gradxform._complex`)."""

  @functools.wraps(init)
  def real_init(params):
    return init(_complex.to_real(params))

  return real_init


def _complex_as_real_update(update: Callable[..., Any]) -> Callable[..., Any]:
  """`update` on the real views of complex updates, params and raw gradient; the updates it
  returns are complex again where the incoming ones were."""

  @functools.wraps(update)
  def real_update(updates, state, params=None, **extra):
    grad = extra.get(GRAD_KEY)
    if not (_complex.has_complex(updates) or _complex.has_complex(params)
            or _complex.has_complex(grad)):
      return update(updates, state, params, **extra)
    if grad is not None:
      extra = {**extra, GRAD_KEY: _complex.to_real(grad)}
    out, state = update(_complex.to_real(updates), state, _complex.to_real(params), **extra)
    return _complex.from_real(out, updates), state

  return real_update


# ---------------------------------------------------------------------------------------------
# Step counting shared along a chain.


def step_count(state: Any, extra: dict[str, Any]) -> jax.Array:
  """The number of updates before this one (0 on the first), from the state or the chain."""
  if "count" not in getattr(type(state), "_fields", ()):
    raise ValueError(f"got a state of type {type(state).__name__}, which has no step counter: "
                     "pass the state that this transform's own init() returned (was the state "
                     "made by a different optimizer?).")
  if state.count is not None:
    return state.count
  if COUNT_KEY not in extra:
    raise ValueError(
        f"{type(state).__name__} has count=None (it borrows its chain's step counter) but "
        "update() got no count: pass the state that this transform's own init() returned.")
  return extra[COUNT_KEY]


def next_count(state: Any, count: jax.Array) -> jax.Array | None:
  """The `count` field to store after this update: None when the count is borrowed."""
  from gradxform._numerics import safe_increment  # local: _numerics imports this module
  return None if state.count is None else safe_increment(count)


def require_params(name: str, params: Params | None) -> Params:
  if params is None:
    raise ValueError(
        f"{name}.update needs the current parameters: call update(updates, state, params) "
        "(in a chain, pass params to the chain's update).")
  return params


# ---------------------------------------------------------------------------------------------
# Composition.


def _accepts_extra(update: Callable[..., Any]) -> bool:
  if isinstance(update, Fn):
    return True
  try:
    sig = inspect.signature(update)
  except (TypeError, ValueError):
    return True
  return any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _as_transform(tx: Any, where: str) -> GradientTransformation:
  if isinstance(tx, GradientTransformation):
    return tx
  init, update = getattr(tx, "init", None), getattr(tx, "update", None)
  if callable(init) and callable(update):
    return GradientTransformation(init, update)  # e.g. an optax.GradientTransformation
  raise TypeError(f"{where}: expected a GradientTransformation, got {type(tx).__name__}: {tx!r}")


def _shares(tx: GradientTransformation, state: Any) -> bool:
  return bool(meta(tx, "shares_count")) and "count" in getattr(type(state), "_fields", ())


def _chain_init(parts: list[GradientTransformation], params: Params) -> list[Any]:
  states = [tx.init(params) for tx in parts]
  owner = None
  for i, (tx, s) in enumerate(zip(parts, states)):
    if _shares(tx, s):
      if owner is None:
        owner = i
      else:
        states[i] = s._replace(count=None)
  _remember_state_types(parts, jax.tree.structure(params), states)
  return states


#: (id of a chain's parts list, treedef of the updates) -> the types of the parts' states. A
#: cache of a pure function of its key (init's state types depend on the tree's structure only).
_STATE_TYPES: dict[Any, Any] = {}


def _remember_state_types(parts: list[GradientTransformation], treedef: Any,
                          states: list[Any]) -> None:
  """Records the types of the states `init` made, so the first `update` on the same tree
  structure need not trace every part's `init` again to check them."""
  if len(_STATE_TYPES) > 256:
    _STATE_TYPES.clear()
  _STATE_TYPES[(id(parts), treedef)] = ([type(x) for x in states], parts)


def _check_part_states(name: str, parts: list[GradientTransformation], states: list[Any],
                       updates: Updates, params: Params | None) -> None:
  """Clear errors before any part runs: float updates, params like updates, and each part's
  state of the type that part's init() makes (else the state is from a different optimizer)."""
  from gradxform import _tree  # local: _tree is a leaf module, kept free of imports from here
  _tree.check_floating(name, updates)
  if params is not None:
    _tree.check_same_structure(name, params, updates, "params", "updates")
    _tree.check_shapes(name, params, updates, "params", "updates")
  key = (id(parts), jax.tree.structure(updates))
  if key not in _STATE_TYPES:
    try:
      shapes = jax.eval_shape(lambda u: [tx.init(u) for tx in parts], updates)
    except Exception:  # noqa: BLE001 - a part's init fails on these updates: its update says why
      return
    _remember_state_types(parts, key[1], shapes)  # parts kept alive: their id stays unique
  expected = _STATE_TYPES[key][0]
  for i, (tx, want, got) in enumerate(zip(parts, expected, states)):
    if want is not type(got):
      what = getattr(tx.update, "meta", {}).get("name", "transform")
      raise ValueError(
          f"{name}.update: part {i} ({what}) expected a {want.__name__} state, got "
          f"{type(got).__name__}. The state was made by a different optimizer or chain: pass "
          "the state that this optimizer's own init() returned.")


def _chain_update(parts: list[GradientTransformation], passes_extra: list[bool],
                  states: list[Any], updates: Updates, params: Params | None,
                  extra: dict[str, Any], name: str = "chain") -> tuple[Updates, list[Any]]:
  _check_part_states(name, parts, states, updates, params)
  extra = dict(extra)
  extra.pop(COUNT_KEY, None)
  grad = extra.pop(GRAD_KEY, None)
  count = next((s.count for tx, s in zip(parts, states)
                if _shares(tx, s) and s.count is not None), None)
  new_states = []
  for tx, s, passes in zip(parts, states, passes_extra):
    raw = updates if grad is None else grad
    if not passes:
      updates, s = tx.update(updates, s, params)
    elif _shares(tx, s) and s.count is None and count is not None:
      updates, s = tx.update(updates, s, params, **extra, grad=raw, count=count)
    else:
      updates, s = tx.update(updates, s, params, **extra, grad=raw)
    if grad is None and meta(tx, "accumulates"):
      grad = raw
    new_states.append(s)
  return updates, new_states


def _check_chain_state(name: str, state: Any, n: int, kind: type[tuple]) -> None:
  if not isinstance(state, kind) or len(state) != n:
    got = f"{type(state).__name__} of length {len(state)}" if hasattr(state, "__len__") else (
        type(state).__name__)
    raise ValueError(f"{name}.update: expected the state made by this {name}'s init() "
                     f"({kind.__name__} of {n} parts), got {got}.")


@transform
def chain(*transforms: GradientTransformation) -> GradientTransformation:
  """Applies `transforms` in sequence; the state is the tuple of their states.

  Example:
    >>> tx = gx.chain(gx.clip_by_global_norm(1.0), gx.scale_by_momentum(0.9),
    ...               gx.scale_by_learning_rate(0.1))
  """
  parts = [_as_transform(t, f"chain argument {i}") for i, t in enumerate(transforms)]
  passes = [_accepts_extra(t.update) for t in parts]

  def init(params):
    return tuple(_chain_init(parts, params))

  def update(updates, state, params=None, **extra):
    _check_chain_state("chain", state, len(parts), tuple)
    updates, states = _chain_update(parts, passes, list(state), updates, params, extra)
    return updates, tuple(states)

  return GradientTransformation(init, update)


@transform
def named_chain(*transforms: tuple[str, GradientTransformation]) -> GradientTransformation:
  """Like `chain`, with each part named; the state is a dict from name to that part's state.

  Example:
    >>> tx = gx.named_chain(("clip", gx.clip(1.0)), ("sgd", gx.sgd(0.1)))
    >>> state = tx.init(params); state["sgd"]
  """
  names = [n for n, _ in transforms]
  if len(set(names)) != len(names):
    raise ValueError(f"named_chain: names must be unique, got {names}")
  parts = [_as_transform(t, f"named_chain part {n!r}") for n, t in transforms]
  passes = [_accepts_extra(t.update) for t in parts]

  def init(params):
    return dict(zip(names, _chain_init(parts, params)))

  def update(updates, state, params=None, **extra):
    if not isinstance(state, dict) or set(state) != set(names):
      raise ValueError(f"named_chain.update: expected a state dict with keys {names}, got "
                       f"{sorted(state) if isinstance(state, dict) else type(state).__name__}.")
    updates, states = _chain_update(parts, passes, [state[n] for n in names], updates, params,
                                    extra, "named_chain")
    return updates, dict(zip(names, states))

  return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------
# Applying updates and the simplest transforms.


def apply_updates(params: Params, updates: Updates) -> Params:
  """Returns `params + updates` leaf-wise, each result in its parameter's dtype.

  `None` leaves (in both trees) pass through.
  """
  def add(p, u):
    if p is None:
      return None
    return cast(jnp.asarray(p + u), jnp.result_type(p))

  from gradxform._tree import check_same_structure
  check_same_structure("apply_updates", params, updates, "params", "updates")
  return jax.tree.map(add, params, updates, is_leaf=lambda x: x is None)


@transform
def identity() -> GradientTransformation:
  """Passes updates through unchanged; no state."""

  def init(params):
    del params
    return EmptyState()

  def update(updates, state, params=None, **extra):
    del params, extra
    return updates, state

  return GradientTransformation(init, update)


def raw_gradient(updates: Updates, extra: dict[str, Any]) -> Updates:
  """The gradient a second-moment transform squares: `extra['grad']` in a chain, else `updates`."""
  grad = extra.get(GRAD_KEY)
  return updates if grad is None else grad
