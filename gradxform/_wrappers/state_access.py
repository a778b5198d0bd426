"""Reading optimizer state by name, however deeply the optimizer is wrapped."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradxform._wrappers.masked import MaskedNode

_MISSING = object()


def _children(node: Any) -> list[tuple[str | None, str, Any]]:
  """(name, path piece, child) for the children of a state node; name None when unnamed."""
  fields = getattr(type(node), "_fields", None)
  if isinstance(node, tuple) and fields is not None:
    return [(f, f".{f}", getattr(node, f)) for f in fields]
  if isinstance(node, dict):
    return [(k if isinstance(k, str) else None, f"[{k!r}]", v) for k, v in node.items()]
  if isinstance(node, (list, tuple)):
    return [(None, f"[{i}]", v) for i, v in enumerate(node)]
  return []


def _matches(names: list[str | None], wanted: list[str]) -> bool:
  """True when the path ends with `wanted[-1]` and holds the other names, in order, above it."""
  named = [n for n in names if n is not None]
  if not named or named[-1] != wanted[-1]:
    return False
  it = iter(named[:-1])
  return all(any(n == w for n in it) for w in wanted[:-1])


def tree_find(state: Any, name: str) -> dict[str, Any]:
  """Every state value called `name`: a dict from its path (e.g. `"[0].count"`) to the value.

  A value is *called* `name` when it is a NamedTuple field or a dict key of that name (so
  `"learning_rate"` finds `inject_hyperparams`' `hyperparams["learning_rate"]`, and a
  `named_chain` part's name finds its whole state). `name` may be a `/`-separated path,
  e.g. `"head/count"`: a value called `count` somewhere below a node called `head` (a
  partition group, a named_chain part, a field); intermediate levels may be skipped.
  `None` values (a counter borrowed from the chain) are not reported. The search does not
  descend into a value once it matches.

  Example:
    >>> groups = gx.partition({"head": gx.sgd(0.1, 0.9), "body": gx.adam(1e-3)},
    ...                       {"w": "head", "b": "body"})
    >>> sorted(gx.tree_find(groups.init(params), "count"))
    [".inner_states['body'][0].count", ".inner_states['head'][0].count"]

  References:
    Optax's `tree_utils.tree_get_all_with_path` (https://github.com/google-deepmind/optax).
  """
  if not isinstance(name, str) or not name:
    raise TypeError(f"tree_find: name must be a non-empty str, got {name!r}")
  wanted = name.strip("/").split("/")
  found: dict[str, Any] = {}

  def walk(node: Any, names: list[str | None], path: str) -> None:
    for child_name, piece, child in _children(node):
      child_names = names + [child_name]
      if child_name == wanted[-1] and _matches(child_names, wanted):
        if child is not None:
          found[path + piece] = child
        continue
      walk(child, child_names, path + piece)

  walk(state, [], "")
  return found


def tree_get(state: Any, name: str, default: Any = _MISSING) -> Any:
  """The one state value called `name` (see `tree_find`), for logging.

  Examples:
    >>> tx = gx.apply_if_finite(gx.inject_hyperparams(gx.adam)(learning_rate=1e-3), 5)
    >>> state = tx.init(params)
    >>> gx.tree_get(state, "count")                 # Adam's step counter, however wrapped
    Array(0, dtype=int32)
    >>> gx.tree_get(state, "learning_rate")         # an injected hyperparameter
    Array(0.001, dtype=float32)
    >>> gx.tree_get(state, "total_notfinite")       # apply_if_finite's skipped steps
    Array(0, dtype=int32)
    >>> groups = gx.partition({"head": gx.sgd(0.1, 0.9), "body": gx.adam(1e-3)},
    ...                       {"w": "head", "b": "body"})
    >>> gx.tree_get(groups.init(params), "head/count")   # a partition group's count
    Array(0, dtype=int32)

  Raises:
    KeyError: no value has that name (and no `default` was given); the message lists the
      names that do exist.
    ValueError: several values have that name and they differ (or are traced, so cannot be
      compared); the message lists their paths, and a longer `a/b` name picks one. Several
      equal concrete arrays (e.g. the step counters of `inject_hyperparams` and of the
      optimizer inside it) are not ambiguous: the outermost is returned.

  References:
    Optax's `tree_utils.tree_get` (https://github.com/google-deepmind/optax).
  """
  found = tree_find(state, name)
  if len(found) == 1 or (len(found) > 1 and _all_equal(list(found.values()))):
    return found[min(found, key=len)]
  if not found:
    if default is not _MISSING:
      return default
    raise KeyError(f"tree_get: no state value called {name!r}. Names in this state: "
                   f"{sorted(state_names(state))}.")
  raise ValueError(f"tree_get: {len(found)} state values are called {name!r}, at "
                   f"{sorted(found)}. Use a longer name to pick one, e.g. "
                   f"'<group or part name>/{name.split('/')[-1]}', or tree_find for all.")


def tree_set(state: Any, /, **values: Any) -> Any:
  """A copy of `state` with every value called `name` (see `tree_find`) replaced, for each
  `name=value` given.

  Optax's `tree_utils.tree_set` has the same purpose; it is a function on state trees, not a
  transform. A `/`-separated name is passed as `**{"head/count": 0}`. Every match is replaced
  (both counters of `inject_hyperparams(adam)` for `count`); a borrowed counter (`None`) is
  not a match. An array replaced by a number or an array keeps its dtype and must keep its
  shape (a scalar is broadcast), so the state stays the layout `update` expects; a subtree
  (a moment tree, a part's whole state) given a scalar has every array in it set to that
  scalar, and given anything else is replaced as given. Names match NamedTuple fields and str dict
  keys, not class names (Optax also matches a NamedTuple's class name).

  Example:
    >>> tx = gx.inject_hyperparams(gx.adam)(learning_rate=1e-3)
    >>> state = gx.tree_set(tx.init(params), learning_rate=3e-4)
    >>> gx.tree_get(state, "learning_rate")
    Array(0.0003, dtype=float32)

  Raises:
    KeyError: some name matches no value; the message lists the names that do exist.
    ValueError: a replacement array's shape differs from the value it replaces.

  References:
    Optax's `tree_utils.tree_set` (https://github.com/google-deepmind/optax).
  """
  wanted = {}
  for name in values:
    if not name.strip("/"):
      raise TypeError(f"tree_set: names must be non-empty, got {name!r}")
    if not tree_find(state, name):
      raise KeyError(f"tree_set: no state value called {name!r}. Names in this state: "
                     f"{sorted(state_names(state))}.")
    wanted[name] = name.strip("/").split("/")

  def replacement(names: list[str | None], old: Any, path: str) -> Any:
    for name, parts in wanted.items():
      if names[-1] == parts[-1] and _matches(names, parts):
        return _like(values[name], old, path + f" ({name!r})")
    return _MISSING

  def rebuild(node: Any, names: list[str | None], path: str) -> Any:
    children = _children(node)
    if not children:
      return node
    new = []
    for child_name, piece, child in children:
      child_names = names + [child_name]
      value = _MISSING if child is None else replacement(child_names, child, path + piece)
      new.append(rebuild(child, child_names, path + piece) if value is _MISSING else value)
    if isinstance(node, dict):
      return type(node)(zip(node.keys(), new))
    if getattr(type(node), "_fields", None) is not None:
      return type(node)(*new)
    return type(node)(new)

  return rebuild(state, [], "")


def _like(value: Any, old: Any, where: str) -> Any:
  """`value` in `old`'s dtype and shape when `old` is an array; as given otherwise."""
  import jax
  import jax.numpy as jnp
  shape, dtype = getattr(old, "shape", None), getattr(old, "dtype", None)
  if shape is None or dtype is None:
    if isinstance(value, (int, float)) or getattr(value, "shape", None) == ():
      return jax.tree.map(lambda leaf: _like(value, leaf, where), old)
    return value
  new = jnp.asarray(value, dtype=dtype)
  if new.shape != tuple(shape):
    if new.ndim != 0:
      raise ValueError(f"tree_set: the value for {where} has shape {new.shape}; the value it "
                       f"replaces has shape {tuple(shape)}.")
    new = jnp.broadcast_to(new, shape)
  return new


def _all_equal(values: list[Any]) -> bool:
  """True when every value is the same concrete array (no tracers, same shape/dtype/value)."""
  import jax
  import numpy as np
  arrays = []
  for v in values:
    if isinstance(v, jax.core.Tracer) or not isinstance(v, (np.ndarray, np.generic, jax.Array)):
      return False
    arrays.append(np.asarray(v))
  first = arrays[0]
  return all(a.shape == first.shape and a.dtype == first.dtype and np.array_equal(a, first)
             for a in arrays[1:])


def state_names(state: Any) -> set[str]:
  """Every field and str dict-key name that occurs in the state (for error messages)."""
  names: set[str] = set()

  def walk(node: Any) -> None:
    for child_name, _, child in _children(node):
      if child_name is not None:
        names.add(child_name)
      walk(child)

  walk(state)
  return names


def states_of_type(state: Any, cls: type) -> list[Any]:
  """Every node of type `cls` in a state tree (NamedTuples, dicts, tuples and lists), in
  order; the search does not descend into a match."""
  if isinstance(state, cls):
    return [state]
  return [s for _, _, child in _children(state) for s in states_of_type(child, cls)]


def params_from_state(where: str, state: Any, cls: type, field: str, params: Any,
                      combine: Any) -> Any:
  """`params` with each leaf that a `cls` state in `state` keeps a copy of (its tree `field`,
  like params or with `MaskedNode`s) replaced by `combine(found_state, param, kept)`.

  Serves the readers of parameter-like state (`lookahead_params`,
  `schedule_free_eval_params`): they work however the transform is wrapped (alone, in a chain,
  in `inject_hyperparams`, `apply_if_finite`, `masked` or `partition`, whose groups' states are
  merged). A kept leaf that is the real view of a complex parameter (a trailing axis of 2) is
  made complex again first. KeyError when `state` holds no `cls`; ValueError naming `where`
  when the kept tree does not line up with `params` (e.g. under `gx.flatten`).
  """
  found = states_of_type(state, cls)
  if not found:
    raise KeyError(f"{where}: the state holds no {cls.__name__}.")
  leaves, treedef = jax.tree.flatten(params)
  out = list(leaves)
  for node in found:
    kept = jax.tree.leaves(getattr(node, field), is_leaf=lambda x: isinstance(x, MaskedNode))
    if len(kept) != len(leaves):
      raise ValueError(f"{where}: the state's {field} has {len(kept)} leaves, params "
                       f"{len(leaves)}; pass the parameters the optimizer updates.")
    for i, (k, p) in enumerate(zip(kept, leaves)):
      if isinstance(k, MaskedNode):
        continue
      p = jnp.asarray(p)
      if jnp.iscomplexobj(p) and jnp.shape(k) == p.shape + (2,):
        k = jax.lax.complex(k[..., 0], k[..., 1])
      if jnp.shape(k) != p.shape:
        raise ValueError(f"{where}: {field} of shape {jnp.shape(k)} for a parameter of shape "
                         f"{p.shape}; pass the parameters the optimizer updates.")
      out[i] = combine(node, p, k)
  return treedef.unflatten(out)
