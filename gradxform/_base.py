"""The transform protocol: `GradientTransformation`, `chain`, `named_chain`, `apply_updates`.

A transform is a pure pair `init(params) -> state`, `update(updates, state, params=None,
**extra) -> (updates, state)`. It is a NamedTuple of two functions, exactly Optax's shape, so
Flax's `TrainState` and `nnx.Optimizer` take it as is.

Three things pass between the parts of a chain through `**extra` (documented in
BUILD_NOTES.md; read them with `raw_gradient`, `step_count` and `trees_checked`):

* `grad`: the gradient as it was before any part that turns it into a running average
  (`scale_by_momentum` and friends). Second-moment parts (`scale_by_rms`, ...) square this,
  not the momentum they receive, which is how Adam can be written as
  `chain(scale_by_momentum(b1, ema=True), bias_correction(b1), scale_by_rms(b2, ...), lr)`.
  A part used outside a chain simply squares its input.
* `count`: one step counter per chain. The first part whose state has a `count` owns it; every
  later part that can share (declared with `@transform(shares_count=True)`) keeps
  `count=None` in its state and reads the owner's count instead, so an Adam with a schedule
  holds one counter, not four that could drift apart.
* `trees_checked`: True when the chain has verified that every part's state has the tree
  structure and shapes its `init` makes for these updates, so parts skip their own tree checks
  (which still run, and name the offending leaf, when a part is used alone or a state is off).

A chain runs the leaf parts of nested chains as one flat sequence, so grouping never changes
the result (`chain(chain(a, b), c)` is `chain(a, b, c)`); only the state keeps the nesting.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Hashable, NamedTuple, Protocol, Sequence, Union

import jax
import jax.numpy as jnp

from gradxform import _complex
from gradxform._equality import Fn, by_value
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
CHECKED_KEY = "trees_checked"


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

  Example:
    >>> tx = gx.sgd(0.1)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> gx.apply_updates(params, updates)["b"]
    Array([ 0.05, -0.15], dtype=float32)

  References:
    Babuschkin et al., "The DeepMind JAX ecosystem", 2020: Optax's `GradientTransformation`,
    whose shape this is (https://github.com/google-deepmind/optax).
  """

  init: TransformInitFn
  update: TransformUpdateFn


class EmptyState(NamedTuple):
  """The state of a stateless transform.

  Example:
    >>> gx.clip(1.0).init(params)
    EmptyState()

  References:
    Optax's `EmptyState` (https://github.com/google-deepmind/optax).
  """


def meta(tx: GradientTransformation, name: str) -> Any:
  """Static metadata a gradxform transform declares (False for foreign transforms)."""
  return getattr(tx.update, "meta", {}).get(name, False)


def elementwise(tx: GradientTransformation) -> GradientTransformation:
  """Declares `tx` elementwise, so that `update_and_apply` can fuse it with its neighbours.

  A transform is elementwise when its update does the same arithmetic on every element of
  every leaf, given only scalars (step counts, hyperparameters, schedules) besides the
  element's own values, and its state holds such scalars and arrays shaped like the parameters
  ("slots", one per parameter) and nothing else: a momentum, an RMS, a sign rule, a clip by
  value. The run of elementwise parts at the end of a chain then runs with the parameter step
  as one fused pass on CPU (`update_and_apply`); gradxform's own such transforms are declared
  already. The declaration is checked where a trace can check it: a reduction over a leaf, an
  operation the fused pass has no instruction for, or a state of another layout make the step
  the two calls, with the same results. What no trace shows is a dependence on a leaf's shape
  or path: do not declare such a transform.

  Args:
    tx: a transform, not a chain (declare its parts).

  Returns:
    `tx` with the declaration: the same `init`, the same `update` (and equal to `tx`).

  Raises:
    TypeError: `tx` is not a `GradientTransformation`.
    ValueError: `tx` is a chain.

  Example:
    >>> signs = gx.elementwise(gx.stateless(lambda u, p: jax.tree.map(jnp.sign, u)))
    >>> tx = gx.chain(gx.clip_by_global_norm(1.0), signs, gx.scale(-0.01))
    >>> new_params, state = gx.update_and_apply(tx, grads, tx.init(params), params)
    >>> new_params["b"]                       # θ − 0.01 · sign(g)
    Array([ 0.09, -0.11], dtype=float32)

  References:
    torch.optim's `fused=True` steps, which run an optimizer's whole elementwise step as one
    pass over each parameter; here the pass is traced from the declared parts instead of
    written per optimizer (BUILD_NOTES: Performance design).
  """
  tx = _as_transform(tx, "gx.elementwise")
  if meta(tx, "flat_chain"):
    raise ValueError("gx.elementwise declares one transform, not a chain: declare each of its "
                     "parts that is elementwise, then chain them")
  return _declare(tx, elementwise=True)


class LeafVariants(NamedTuple):
  """How a leafwise part acts on each leaf (`leafwise`)."""
  keys: Callable[[Params], list[Any]]    # params -> a hashable key per leaf, in leaves order
  variant: Callable[[Any], GradientTransformation]  # key -> an elementwise transform


def leafwise(tx: GradientTransformation, keys: Callable[[Params], list[Any]],
             variant: Callable[[Any], GradientTransformation]) -> GradientTransformation:
  """Declares that `tx` acts on each leaf as one of a few elementwise transforms (private).

  `keys(params)` gives a hashable key for each leaf of `params` in `jax.tree.leaves` order, and
  `variant(key)` a transform declared elementwise that does on the leaves of that key what `tx`
  does there: a masked weight decay has keys True and False, and its variants are the decay
  and a pass-through. Every variant's state has the structure of `tx`'s and the same scalars
  (counters advance alike). Then `tx` takes part in a chain's fused tail (`update_and_apply`)
  like an elementwise part, the leaves of one key sharing a program; where the variants'
  states differ in their slots (a masked momentum) the step is the two calls.
  """
  return _declare(tx, leaf_variants=LeafVariants(keys, variant))


def _declare(tx: GradientTransformation, **declared: Any) -> GradientTransformation:
  """`tx` with `declared` added to its update's metadata: the same init, the same update."""
  fn, key, info = (tx.update.fn, tx.update.key, dict(tx.update.meta)) if isinstance(
      tx.update, Fn) else (tx.update, None, {})
  return GradientTransformation(tx.init, Fn(fn, key, **{**info, **declared}))


def fusable(tx: GradientTransformation) -> bool:
  """Whether `tx` can be part of a chain's fused tail: declared elementwise or leafwise."""
  return bool(meta(tx, "elementwise") or meta(tx, "leaf_variants"))


def all_elementwise(tx: GradientTransformation) -> bool:
  """Whether `tx` is declared elementwise, or is a chain of such parts only: a wrapper that
  adds elementwise arithmetic and slots of its own to it (schedule-free, lookahead) is then
  elementwise too."""
  return all(meta(t, "elementwise") for t in _leaf_parts(tx))


def _leaf_parts(tx: GradientTransformation) -> list[GradientTransformation]:
  """The parts of `tx` that run one after another: a chain's flat parts, else `tx` itself."""
  flat = meta(tx, "flat_chain")
  return list(flat.parts) if flat else [tx]


def declare_around(tx: GradientTransformation, inner: GradientTransformation,
                   rebuild: Callable[[Any], GradientTransformation]
                   ) -> GradientTransformation:
  """Declares `tx`, a wrapper whose own arithmetic is elementwise, by what `inner` is.

  Elementwise when every part of `inner` is (see `all_elementwise`). Leafwise when each is
  elementwise or leafwise and `inner`'s leafwise parts see the wrapper's own params: a leaf's
  key is the tuple of their keys there, and `rebuild(key)` must give the wrapper around
  `substitute(inner, key)` (each leafwise part replaced by its variant). Otherwise `tx` as it
  is (its step is the two calls).
  """
  parts = _leaf_parts(inner)
  if all(meta(t, "elementwise") for t in parts):
    return elementwise(tx)
  if not all(fusable(t) for t in parts):
    return tx
  per_part = [meta(t, "leaf_variants") for t in parts if meta(t, "leaf_variants")]

  def keys(params: Params) -> list[Any]:
    return list(zip(*[v.keys(params) for v in per_part]))

  return leafwise(tx, keys, lambda key: elementwise(rebuild(key)))


def transform(factory: Callable[..., GradientTransformation] | None = None, *,
              shares_count: bool = False, accumulates: bool = False,
              hyperparams: Sequence[str] | str = ()) -> Any:
  """Decorates a transform factory.

  The transform it returns compares (and hashes) equal to any other built by the same factory
  from equal arguments. `shares_count`: the state has a `count` field and `update` accepts
  `count=None` in the state, reading `extra['count']` instead (see `step_count`).
  `accumulates`: the output is a running average of the gradient, so later parts of a chain
  get the raw gradient as `extra['grad']`.

  `hyperparams` names the factory's numeric hyperparameters (learning rates, decays, ε, weight
  decays): the arguments that `inject_hyperparams` keeps in its state as arrays when they are
  given as numbers, and evaluates at every step when they are given as schedules. This
  declaration is all `inject_hyperparams` goes by: every other argument (flags, integers such
  as a seed, dtypes, masks, functions such as `decay_fn`) is passed to the factory unchanged.
  The factory must accept a traced scalar array for each name it declares. Each name must be
  a parameter of the factory (`TypeError` when the decorator runs, otherwise).

  Example:
    >>> @gx.transform
    ... def scale_by_two():
    ...   def init(params):
    ...     return gx.EmptyState()
    ...   def update(updates, state, params=None, **extra):
    ...     return jax.tree.map(lambda u: 2 * u, updates), state
    ...   return gx.GradientTransformation(init, update)
    >>> scale_by_two() == scale_by_two()
    True
    >>> @gx.transform(hyperparams=("factor",))
    ... def scale_by(factor: float, *, seed: int = 0):
    ...   return gx.stateless(lambda updates, params: jax.tree.map(lambda u: factor * u, updates))
    >>> state = gx.inject_hyperparams(scale_by)(factor=3.0, seed=1).init(params)
    >>> sorted(state.hyperparams)            # declared: injected; seed: passed as is
    ['factor']

  References:
    The chain protocol in BUILD_NOTES.md; docs/guide/composing.md declares a momentum with it.
  """
  names = (hyperparams,) if isinstance(hyperparams, str) else tuple(hyperparams)

  def decorate(factory: Callable[..., GradientTransformation]) -> Any:
    _check_hyperparams(factory, names)

    def declare(tx: GradientTransformation) -> GradientTransformation:
      init, update = (f.fn if isinstance(f, Fn) else f for f in tx)
      info = dict(getattr(tx.update, "meta", {}))
      info.update(name=factory.__name__, shares_count=shares_count, accumulates=accumulates)
      return GradientTransformation(_complex_as_real_init(init),
                                    Fn(_complex_as_real_update(update), None, **info))

    build = by_value(factory, finish=declare)
    setattr(build, HYPERPARAMS_ATTR, names)
    return build

  return decorate if factory is None else decorate(factory)


#: The attribute of a `transform`-decorated factory that holds its declared `hyperparams`.
HYPERPARAMS_ATTR = "__gradxform_hyperparams__"


def _check_hyperparams(factory: Callable[..., Any], names: tuple[str, ...]) -> None:
  """TypeError unless every declared hyperparameter is a named parameter of `factory`."""
  if not names:
    return
  params = inspect.signature(factory).parameters
  allowed = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  bad = [n for n in names if not isinstance(n, str) or n not in allowed]
  if bad:
    raise TypeError(f"transform({factory.__name__}): hyperparams {bad} are not parameters of "
                    f"the factory; its parameters are {allowed}.")


def _complex_as_real_init(init: Callable[..., Any]) -> Callable[..., Any]:
  """`init` on the real view of complex parameters (see `gradxform._complex`)."""

  @functools.wraps(init)
  def real_init(params):
    return init(_complex.to_real(params))

  return real_init


#: Extra keyword arguments that are functions of the parameters (SAM's `grad_fn`, a line
#: search's `value_fn`): with complex parameters they are handed the real view.
_PARAMS_FUNCTIONS = ("grad_fn", "value_fn")


def _on_real_view(name: str, fn: Callable[..., Any], like: Any) -> Callable[..., Any]:
  """`fn` (of complex params) as a function of their real view; `grad_fn`'s gradient is
  returned as a real view too. `functools.wraps` keeps `fn`'s signature for introspection."""

  @functools.wraps(fn)
  def on_real(p, *args, **kwargs):
    out = fn(_complex.from_real(p, like), *args, **kwargs)
    return _complex.to_real(out) if name == "grad_fn" else out

  return on_real


def _complex_as_real_update(update: Callable[..., Any]) -> Callable[..., Any]:
  """`update` on the real views of complex updates, params and raw gradient (and of the
  argument of `grad_fn` / `value_fn`); the updates it returns are complex again where the
  incoming ones were."""

  @functools.wraps(update)
  def real_update(updates, state, params=None, **extra):
    grad = extra.get(GRAD_KEY)
    if not (_complex.has_complex(updates) or _complex.has_complex(params)
            or _complex.has_complex(grad)):
      return update(updates, state, params, **extra)
    if grad is not None:
      extra = {**extra, GRAD_KEY: _complex.to_real(grad)}
    like = updates if params is None else params
    extra = {k: (_on_real_view(k, v, like) if k in _PARAMS_FUNCTIONS and callable(v) else v)
             for k, v in extra.items()}
    out, state = update(_complex.to_real(updates), state, _complex.to_real(params), **extra)
    return _complex.from_real(out, updates), state

  return real_update


# ---------------------------------------------------------------------------------------------
# Step counting shared along a chain.


def step_count(state: Any, extra: dict[str, Any]) -> jax.Array:
  """The number of updates before this one (0 on the first), from the state or the chain.

  Example:
    >>> state = gx.scale_by_momentum(0.9).init(params)
    >>> int(gx.step_count(state, {}))
    0
    >>> int(gx.step_count(state._replace(count=None), {"count": jnp.int32(7)}))   # borrowed
    7

  References:
    The chain protocol in BUILD_NOTES.md; docs/guide/composing.md uses it in a transform.
  """
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
  """The `count` field to store after this update: None when the count is borrowed.

  Example:
    >>> state = gx.scale_by_momentum(0.9).init(params)
    >>> int(gx.next_count(state, gx.step_count(state, {})))
    1
    >>> gx.next_count(state._replace(count=None), jnp.int32(7)) is None
    True

  References:
    The chain protocol in BUILD_NOTES.md; docs/guide/composing.md uses it in a transform.
  """
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


# A chain runs its *leaf parts* as one flat sequence, whatever the grouping it was built with:
# `chain(chain(a, b), c)` runs `a, b, c` with one raw gradient and one step counter, exactly as
# `chain(a, b, c)` does. Only the state keeps the grouping (a tuple inside a tuple), so a named
# algorithm's state looks the same alone and inside a bigger chain. A layout node is an int (the
# index of a leaf part in the flat sequence), a tuple of nodes (a `chain`) or a dict from name
# to node (a `named_chain`).
Layout = Union[int, tuple, dict]


def _flatten_parts(parts: list[GradientTransformation],
                   names: list[str] | None = None) -> tuple[list[GradientTransformation], Layout]:
  """The leaf parts of a (possibly nested) chain in order, and the layout of its state."""
  flat: list[GradientTransformation] = []

  def walk(tx: GradientTransformation) -> Layout:
    sub = meta(tx, "chain_parts")
    if sub is False:
      flat.append(tx)
      return len(flat) - 1
    nodes = [walk(t) for t in sub["parts"]]
    return tuple(nodes) if sub["names"] is None else dict(zip(sub["names"], nodes))

  nodes = [walk(t) for t in parts]
  return flat, (tuple(nodes) if names is None else dict(zip(names, nodes)))


def _nest(layout: Layout, flat: list[Any]) -> Any:
  """The flat per-part states arranged as `layout` says."""
  if isinstance(layout, int):
    return flat[layout]
  if isinstance(layout, dict):
    return {k: _nest(v, flat) for k, v in layout.items()}
  return tuple(_nest(v, flat) for v in layout)


def _unnest(name: str, layout: Layout, state: Any, flat: list[Any]) -> None:
  """Fills `flat` from a state arranged as `layout`, with a clear error where it is not."""
  if isinstance(layout, int):
    flat[layout] = state
    return
  if isinstance(layout, dict):
    if not isinstance(state, dict) or set(state) != set(layout):
      got = sorted(state) if isinstance(state, dict) else type(state).__name__
      raise ValueError(f"{name}.update: expected a state dict with keys {list(layout)} (the "
                       f"state this named_chain's init() made), got {got}.")
    for k, v in layout.items():
      _unnest(name, v, state[k], flat)
    return
  if not isinstance(state, tuple) or len(state) != len(layout):
    got = (f"{type(state).__name__} of length {len(state)}" if hasattr(state, "__len__")
           else type(state).__name__)
    raise ValueError(f"{name}.update: expected the state made by this {name}'s init() (tuple "
                     f"of {len(layout)} parts), got {got}.")
  for v, s in zip(layout, state):
    _unnest(name, v, s, flat)


def _tree_key(tree: Any) -> tuple[Any, tuple[tuple[int, ...], ...]]:
  """What a part's init() depends on: the tree structure and the leaves' shapes."""
  return jax.tree.structure(tree), tuple(jnp.shape(x) for x in jax.tree.leaves(tree))


class _Chain:
  """The flat sequence of leaf parts behind a `chain` or `named_chain`, and what it checks.

  `known_states` maps the structure and shapes of the updates to what the parts' `init` makes
  for them (each state's type, tree structure and leaf shapes), so the check of a state traces
  each `init` once per tree layout, not at every `update` trace. It is this chain's own record,
  not a global cache.
  """

  def __init__(self, name: str, parts: list[GradientTransformation], names: list[str] | None):
    self.name = name
    self.parts, self.layout = _flatten_parts(parts, names)
    self.passes = [_accepts_extra(t.update) for t in self.parts]
    from gradxform._fused import program  # local: the fused kernels build on this module
    self.tail = program.tail_start(self.parts)  # `update_and_apply`'s elementwise tail
    self.known_states: dict[Any, list[tuple[type, Any, list[tuple[int, ...]]]]] = {}

  def _init_flat(self, params: Params) -> list[Any]:
    states = [tx.init(params) for tx in self.parts]
    owner = None
    for i, (tx, s) in enumerate(zip(self.parts, states)):
      if _shares(tx, s):
        if owner is None:
          owner = i
        else:
          states[i] = s._replace(count=None)
    return states

  def init(self, params: Params) -> Any:
    states = self._init_flat(params)
    self._remember(_tree_key(params), states)
    return _nest(self.layout, states)

  def _remember(self, key: Any, states: list[Any]) -> None:
    if len(self.known_states) > 64:
      self.known_states.clear()
    self.known_states[key] = [
        (type(s), jax.tree.structure(s), [jnp.shape(x) for x in jax.tree.leaves(s)])
        for s in states]

  def check(self, states: list[Any], updates: Updates, params: Params | None) -> bool:
    """Clear errors before any part runs: float updates, params like updates, and each part's
    state of the type that part's init() makes (else the state is from a different optimizer).

    Returns whether every part's state has exactly the structure and shapes its init() makes
    for these updates: then the parts need not check their trees again (`trees_checked`). When
    not, the parts' own checks run and name the offending leaf.
    """
    from gradxform import _tree  # local: _tree is a leaf module, kept free of imports from here
    _tree.check_floating(self.name, updates)
    if params is not None:
      _tree.check_same_structure(self.name, params, updates, "params", "updates")
      _tree.check_shapes(self.name, params, updates, "params", "updates")
    key = _tree_key(updates)
    if key not in self.known_states:
      try:
        shapes = jax.eval_shape(self._init_flat, updates)
      except Exception:  # noqa: BLE001 - a part's init fails on these updates: its update says why
        return False
      self._remember(key, shapes)
    matches = True
    for i, (tx, (kind, structure, leaf_shapes), got) in enumerate(
        zip(self.parts, self.known_states[key], states)):
      if kind is not type(got):
        what = meta(tx, "name") or "transform"
        raise ValueError(
            f"{self.name}.update: part {i} ({what}) expected a {kind.__name__} state, got "
            f"{type(got).__name__}. The state was made by a different optimizer or chain: pass "
            "the state that this optimizer's own init() returned.")
      matches = matches and jax.tree.structure(got) == structure and leaf_shapes == [
          jnp.shape(x) for x in jax.tree.leaves(got)]
    return matches

  def _start(self, updates: Updates, state: Any, params: Params | None,
             extra: dict[str, Any]) -> tuple[list[Any], dict[str, Any], Any, Any]:
    """The parts' states, the extras to pass them, the raw gradient and the shared count."""
    states: list[Any] = [None] * len(self.parts)
    _unnest(self.name, self.layout, state, states)
    extra = dict(extra)
    # An enclosing chain that checked its parts' states checked this one's too.
    if not extra.pop(CHECKED_KEY, False) and self.check(states, updates, params):
      extra[CHECKED_KEY] = True
    extra.pop(COUNT_KEY, None)
    grad = extra.pop(GRAD_KEY, None)
    count = next((s.count for tx, s in zip(self.parts, states)
                  if _shares(tx, s) and s.count is not None), None)
    return states, extra, grad, count

  def _run(self, parts: range, updates: Updates, states: list[Any], params: Params | None,
           extra: dict[str, Any], grad: Any, count: Any,
           instead: dict[int, GradientTransformation] | None = None) -> tuple[Updates, Any]:
    """Runs `parts` in order, replacing their entries of `states`; returns the updates and
    the raw gradient that later parts see. `instead` maps a part's index to the transform
    that runs in its place (a leafwise part's variant, in the fused step's trace)."""
    for i in parts:
      tx, s, passes = self.parts[i], states[i], self.passes[i]
      if instead and i in instead:
        tx = instead[i]
        passes = _accepts_extra(tx.update)
      raw = updates if grad is None else grad
      if not passes:
        updates, states[i] = tx.update(updates, s, params)
      elif _shares(tx, s) and s.count is None and count is not None:
        updates, states[i] = tx.update(updates, s, params, **extra, grad=raw, count=count)
      else:
        updates, states[i] = tx.update(updates, s, params, **extra, grad=raw)
      if grad is None and meta(tx, "accumulates"):
        grad = raw
    return updates, grad

  def update(self, updates: Updates, state: Any, params: Params | None,
             extra: dict[str, Any]) -> tuple[Updates, Any]:
    states, extra, grad, count = self._start(updates, state, params, extra)
    start = self._quantized_tail(states, params)
    if start is not None:
      updates, grad = self._run(range(start), updates, states, params, extra, grad, count)
      fused = _fused_update(self, start, updates, states[start:], params, extra, grad, count)
      if fused is not None:
        updates, states[start:] = fused
        return updates, _nest(self.layout, states)
    updates, _ = self._run(range(start or 0, len(self.parts)), updates, states, params, extra,
                           grad, count)
    return updates, _nest(self.layout, states)

  def _quantized_tail(self, states: list[Any], params: Params | None) -> int | None:
    """Where `update` runs the elementwise tail as one pass: where it keeps int8 state
    (`state_dtype="int8"`), the parameters are given, and `update` is traced (`jax.jit`,
    `vmap`, ...). Called eagerly, the parts run one operation at a time, as they always
    did: the reference the pass equals bit for bit. Float state stays XLA's: under
    `jax.jit` XLA fuses that tail into `apply_updates` itself."""
    from gradxform import _quantize
    if self.tail is None or params is None:
      return None
    held = jax.tree.leaves(states[self.tail:], is_leaf=_quantize.is_quantized)
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params))
    return self.tail if traced and any(map(_quantize.is_quantized, held)) else None

  def update_and_apply(self, grads: Updates, state: Any, params: Params) -> tuple[Params, Any]:
    """`update`, then `apply_updates`; the elementwise tail (if any) runs as one kernel."""
    from gradxform._fused import program  # local: the fused kernels build on this module
    states, extra, grad, count = self._start(grads, state, params, {})
    n = len(self.parts)
    # Without an elementwise tail, a last part with a route of its own (`partition`, `zero1`)
    # takes the step, where it sees what it sees in `update`: no raw gradient fixed earlier,
    # no shared count.
    last = self.parts[-1] if n and self.tail is None else None
    route = (meta(last, "update_and_apply")
             if last is not None and not meta(last, "shares_count") else None)
    start = n - 1 if route else n if self.tail is None else self.tail
    updates, grad = self._run(range(start), grads, states, params, extra, grad, count)
    if route and grad is None:
      params, states[-1] = route(updates, states[-1], params)
      return params, _nest(self.layout, states)
    while start < n and not route:
      fused = program.apply(self, start, updates, states[start:], params, extra, grad, count)
      if fused is not None:
        params, states[start:] = fused
        return params, _nest(self.layout, states)
      # A leafwise part whose variants keep different slots (a masked momentum) cannot share
      # one layout: it runs as a part, and the parts after it may still fuse.
      after = next((i + 1 for i in range(start, n) if meta(self.parts[i], "leaf_variants")),
                   n)
      updates, grad = self._run(range(start, after), updates, states, params, extra, grad,
                                count)
      start = after
    updates, _ = self._run(range(start, n), updates, states, params, extra, grad, count)
    return apply_updates(params, updates), _nest(self.layout, states)


def _fused_update(chain: _Chain, start: int, updates: Updates, states: list[Any], params: Params,
                  extra: dict[str, Any], grad: Any, count: Any) -> tuple[Updates, list[Any]] | None:
  """The updates and new states of `chain`'s parts from `start` on by one fused pass
  (`gradxform._fused.program.apply` with `write="updates"`), or None where it cannot run.

  With int8 state the two calls otherwise pass each moment through float32 copies. The pass
  is bit-equal to the parts run eagerly; derivatives are those of the parts in XLA's
  operations (a custom JVP), as for int8's codec kernels.
  """
  from gradxform._fused import program  # local: the fused kernels build on this module

  def kernel(u, s, p, g, c):
    return program.apply(chain, start, u, list(s), p, extra, g, c, write="updates")

  def parts(u, s, p, g, c):
    s = [None] * start + list(s)
    u, _ = chain._run(range(start, len(chain.parts)), u, s, p, extra, g, c)
    return u, s[start:]

  args = (updates, tuple(states), params, grad, count)
  if not program.ready() or jax.eval_shape(kernel, *args) is None:
    return None
  fused = jax.custom_jvp(kernel)
  fused.defjvp(lambda primals, tangents: jax.jvp(parts, primals, tangents))
  return fused(*args)


@transform
def chain(*transforms: GradientTransformation) -> GradientTransformation:
  """Applies `transforms` in sequence; the state is the tuple of their states.

  Grouping does not matter: `chain(chain(a, b), c)` gives the same updates as `chain(a, b, c)`
  and holds as many step counters (the parts of nested chains run as one flat sequence); only
  the state keeps the nesting, `((sa, sb), sc)`.

  In symbols, starting from `u = g`: `(u, s_i) ← t_i.update(u, s_i, params)` for `i = 1 … n`.

  Example:
    >>> tx = gx.chain(gx.clip_by_global_norm(1.0), gx.scale_by_momentum(0.9),
    ...               gx.scale_by_learning_rate(0.1))
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                      # −0.1 · g/‖g‖, with ‖g‖ = √(6 · 0.5²)
    Array([-0.04082483, -0.04082483], dtype=float32)

  References:
    Babuschkin et al., "The DeepMind JAX ecosystem", 2020: Optax's `chain`
    (https://github.com/google-deepmind/optax); the protocol is in BUILD_NOTES.md.
  """
  parts = [_as_transform(t, f"chain argument {i}") for i, t in enumerate(transforms)]
  flat = _Chain("chain", parts, None)

  def update(updates, state, params=None, **extra):
    return flat.update(updates, state, params, extra)

  return GradientTransformation(
      flat.init, Fn(update, None, chain_parts={"parts": tuple(parts), "names": None},
                    flat_chain=flat))


@transform
def named_chain(*transforms: tuple[str, GradientTransformation]) -> GradientTransformation:
  """Like `chain`, with each part named; the state is a dict from name to that part's state.

  Example:
    >>> tx = gx.named_chain(("clip", gx.clip(1.0)), ("sgd", gx.sgd(0.1)))
    >>> state = tx.init(params)
    >>> sorted(state)
    ['clip', 'sgd']

  References:
    Optax's `named_chain` (https://github.com/google-deepmind/optax).
  """
  names = [n for n, _ in transforms]
  if len(set(names)) != len(names):
    raise ValueError(f"named_chain: names must be unique, got {names}")
  parts = [_as_transform(t, f"named_chain part {n!r}") for n, t in transforms]
  flat = _Chain("named_chain", parts, names)

  def update(updates, state, params=None, **extra):
    return flat.update(updates, state, params, extra)

  return GradientTransformation(
      flat.init, Fn(update, None, chain_parts={"parts": tuple(parts), "names": tuple(names)},
                    flat_chain=flat))


def substitute(tx: GradientTransformation, key: tuple[Hashable, ...]) -> GradientTransformation:
  """`tx` with its leafwise parts (in the order of a chain's flat parts) replaced by their
  variants for `key`'s entries, one entry each; chains are rebuilt with the same nesting, so
  the state keeps its layout (see `declare_around`)."""
  entries = iter(key)

  def walk(t: GradientTransformation) -> GradientTransformation:
    sub = meta(t, "chain_parts")
    if sub:
      parts = [walk(p) for p in sub["parts"]]
      return chain(*parts) if sub["names"] is None else named_chain(*zip(sub["names"], parts))
    variants = meta(t, "leaf_variants")
    return variants.variant(next(entries)) if variants else t

  return walk(tx)


# ---------------------------------------------------------------------------------------------
# Applying updates and the simplest transforms.


def apply_updates(params: Params, updates: Updates) -> Params:
  """Returns `params + updates` leaf-wise, each result in its parameter's dtype.

  `None` leaves (in both trees) pass through.

  `θ ← θ + u`: the updates already carry the sign and the learning rate.

  Example:
    >>> gx.apply_updates(params, grads)["b"]
    Array([0.6, 0.4], dtype=float32)

  References:
    Optax's `apply_updates` (https://github.com/google-deepmind/optax).
  """
  def add(p, u):
    if p is None:
      return None
    return cast(jnp.asarray(p + u), jnp.result_type(p))

  from gradxform._tree import check_same_structure
  check_same_structure("apply_updates", params, updates, "params", "updates")
  return jax.tree.map(add, params, updates, is_leaf=lambda x: x is None)


def update_and_apply(tx: GradientTransformation, grads: Updates, state: OptState,
                     params: Params) -> tuple[Params, OptState]:
  """One optimizer step: `tx.update`, then `apply_updates`, returning `(params, state)`.

  The result is that of

      updates, state = tx.update(grads, state, params)
      params = gx.apply_updates(params, updates)

  and the state has the same layout. On CPU, the elementwise parts at the end of a chain
  (momentum, RMS, Adam's moments, bias correction, Lion, Adagrad, AMSGrad, sign rules, weight
  decay with or without a mask, the learning rate: those of SGD, Adam, AdamW, RMSprop, Lion
  and most named optimizers, also after clipping or other parts, and `inject_hyperparams`,
  `schedule_free` or `lookahead` around them; see `elementwise`) run with the parameter step
  as one fused pass over all leaves: each gradient, parameter and state slot is read once and
  written once, in place when `params` and `state` are donated to the `jax.jit` around it.
  Wrappers with a step of their own take it: `partition` (each group fused), `zero1`,
  `apply_if_finite`, `accumulate_gradients`, and `flatten` (its packed state read and
  written at each leaf's offset, nothing concatenated). The pass is traced from
  the parts themselves and compiled once per machine; it needs float32, bfloat16 or float16
  leaves (state in those or `state_dtype="int8"`) and a C++ compiler (`gx.kernel_status()`
  says whether it is available). Elsewhere the step is the two calls above. Under `jax.jit`
  with sharded arrays each device runs the pass on its own shards, and every result keeps the
  sharding the two calls give it; `vmap`, `pmap` and `shard_map` work too; gradients through
  it do not. With `state_dtype="int8"`, a traced `update` runs the same pass as well (giving
  the updates, with the parts' own derivatives), so the two calls are fast there too. The
  fused pass computes the same operations in the same order (a 16-bit one in float32,
  rounded once, as XLA does), equal to rounding (BUILD_NOTES: Performance design).

  Example:
    >>> tx = gx.adam(1e-3)
    >>> new_params, state = gx.update_and_apply(tx, grads, tx.init(params), params)
    >>> new_params["b"]                       # θ − η · g/|g| on the first step, up to ε
    Array([ 0.099, -0.101], dtype=float32)

  References:
    torch.optim's `Optimizer.step` (fused=True), which likewise updates parameters and
    state in one pass; Optax's `apply_updates` for the two-call form.
  """
  through = meta(tx, "update_and_apply")  # a wrapper's own route (partition, zero1, ...)
  if through:
    return through(grads, state, params)
  flat = meta(tx, "flat_chain")
  if not any(jnp.iscomplexobj(x) for x in jax.tree.leaves((grads, params))):
    if isinstance(flat, _Chain):
      return flat.update_and_apply(grads, state, params)
    if fusable(tx):  # one part: a chain of it, whose state is `(state,)`
      params, (state,) = _Chain("update_and_apply", [tx], None).update_and_apply(
          grads, (state,), params)
      return params, state
  updates, state = tx.update(grads, state, params)
  return apply_updates(params, updates), state


def fused_packed(tx: GradientTransformation, grads: Updates, state: OptState, params: Params,
                 unpack: Callable[[Any], Any]) -> tuple[Params, OptState] | None:
  """`update_and_apply(tx, ...)` over a tree holding `_fused.calls.Packed` leaves (a
  flatten's packed buffers, never concatenated), or None where `tx`'s fused tail cannot run
  over them (then what was traced is unused). The parts before the tail run on `unpack(grads)`
  and `unpack(params)` (the buffers concatenated); the checks see only shapes and dtypes."""
  from gradxform._fused import program  # local: the fused kernels build on this module
  if not program.ready():
    return None
  flat = meta(tx, "flat_chain")
  one = not isinstance(flat, _Chain)
  if one:
    if not fusable(tx):
      return None
    flat, state = _Chain("update_and_apply", [tx], None), (state,)
  if flat.tail is None:
    return None

  def spec(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), tree)

  start = flat.tail
  states, extra, grad, count = flat._start(spec(grads), state, spec(params), {})
  updates = grads
  if start:
    updates, grad = flat._run(range(start), unpack(grads), states, unpack(params), extra, grad,
                              count)
  fused = program.apply(flat, start, updates, states[start:], params, extra, grad, count)
  if fused is None:
    return None
  params, states[start:] = fused
  new_state = _nest(flat.layout, states)
  return params, (new_state[0] if one else new_state)


def kernel_status() -> str:
  """`"available"` when `update_and_apply`'s fused CPU kernels are built, else why not.

  The first call builds them (a few seconds, once per machine; see `update_and_apply`).

  Example:
    >>> gx.kernel_status() != ""              # "available", or the reason it is not
    True

  References:
    XLA's FFI custom calls (`jax.ffi`), through which the kernels run.
  """
  from gradxform._fused import build
  return build.status()


@transform
def identity() -> GradientTransformation:
  """Passes updates through unchanged; no state.

  `u ← u`.

  Example:
    >>> tx = gx.identity()
    >>> tx.update(grads, tx.init(params))[0]["b"]
    Array([0.5, 0.5], dtype=float32)

  References:
    Optax's `identity` (https://github.com/google-deepmind/optax).
  """

  def init(params):
    del params
    return EmptyState()

  def update(updates, state, params=None, **extra):
    del params, extra
    return updates, state

  return GradientTransformation(init, update)


def trees_checked(extra: dict[str, Any]) -> bool:
  """Whether the enclosing chain has already checked this part's state against the updates
  (structure and shapes, as its init() makes them): then the part need not check again.

  Example:
    >>> gx.trees_checked({})                          # alone: nothing has been checked
    False

  References:
    The chain protocol in BUILD_NOTES.md.
  """
  return bool(extra.get(CHECKED_KEY, False))


def raw_gradient(updates: Updates, extra: dict[str, Any]) -> Updates:
  """The gradient a second-moment transform squares: `extra['grad']` in a chain, else `updates`.

  Example:
    >>> gx.raw_gradient(grads, {})["b"]                   # alone: the incoming updates
    Array([0.5, 0.5], dtype=float32)
    >>> gx.raw_gradient(grads, {"grad": params})["b"]     # in a chain: the gradient it passes
    Array([ 0.1, -0.1], dtype=float32)

  References:
    The chain protocol in BUILD_NOTES.md; docs/guide/composing.md uses it in a transform.
  """
  grad = extra.get(GRAD_KEY)
  return updates if grad is None else grad
