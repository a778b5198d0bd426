"""Tree checks with messages that name the offending leaf path."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

_MAX_LISTED = 5


def _paths(tree: Any) -> list[str]:
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
  return [jax.tree_util.keystr(p) for p, _ in leaves]


def _listing(paths: list[str]) -> str:
  shown = paths[:_MAX_LISTED]
  more = f" (+{len(paths) - _MAX_LISTED} more)" if len(paths) > _MAX_LISTED else ""
  return ", ".join(p or "<root>" for p in shown) + more


def check_same_structure(name: str, expected: Any, got: Any, expected_what: str = "state",
                         got_what: str = "updates") -> None:
  """Raises ValueError naming the first differing paths when two trees differ in structure."""
  if jax.tree.structure(expected) == jax.tree.structure(got):
    return
  exp, have = _paths(expected), _paths(got)
  missing = [p for p in exp if p not in set(have)]
  unexpected = [p for p in have if p not in set(exp)]
  lines = [f"{name}: the {got_what} tree does not match the {expected_what} tree."]
  if missing:
    lines.append(f"  missing:    {_listing(missing)}")
  if unexpected:
    lines.append(f"  unexpected: {_listing(unexpected)}")
  if not missing and not unexpected:
    lines.append(f"  same paths, different node types: {expected_what} is "
                 f"{jax.tree.structure(expected)}, {got_what} is {jax.tree.structure(got)}")
  lines.append("Did init() see a different tree (e.g. one with non-trainable leaves)?")
  raise ValueError("\n".join(lines))


def check_shapes(name: str, expected: Any, got: Any, expected_what: str = "state",
                 got_what: str = "updates") -> None:
  """Raises ValueError naming the first leaf whose shape differs (structures must agree)."""
  flat_e = jax.tree_util.tree_flatten_with_path(expected)[0]
  flat_g = jax.tree.leaves(got)
  for (path, e), g in zip(flat_e, flat_g):
    if jnp.shape(e) != jnp.shape(g):
      raise ValueError(f"{name}: shape mismatch at {jax.tree_util.keystr(path) or '<root>'}: "
                       f"{expected_what} has {jnp.shape(e)}, {got_what} has {jnp.shape(g)}.")


def check_floating(name: str, tree: Any, what: str = "updates") -> None:
  """Raises TypeError naming the first leaf that is not a floating-point (or complex) array."""
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(f"{name}: {what} leaf {jax.tree_util.keystr(path) or '<root>'} has dtype "
                      f"{dtype}; optimizers need floating-point leaves (keep integer or "
                      "boolean leaves out of the optimized tree, or mask them with gx.masked).")


def check_updates(name: str, expected: Any, got: Any, expected_what: str = "state",
               got_what: str = "updates") -> None:
  """Structure, then shapes, then floating dtypes of `got` against `expected`."""
  check_same_structure(name, expected, got, expected_what, got_what)
  check_shapes(name, expected, got, expected_what, got_what)
  check_floating(name, got, got_what)


def map_unzip(fn: Any, n: int, like: Any, *rest: Any) -> tuple[Any, ...]:
  """`jax.tree.map(fn, like, *rest)` for an `fn` returning an n-tuple, split into n trees."""
  treedef = jax.tree.structure(like)
  flat = treedef.flatten_up_to(jax.tree.map(fn, like, *rest))
  return tuple(treedef.unflatten([t[i] for t in flat]) for i in range(n))
