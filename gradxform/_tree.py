"""Tree checks with messages that name the offending leaf path."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradxform._quantize import is_quantized

_MAX_LISTED = 5


def _leaf(x: Any) -> bool:
  """Leaves of state trees: None, and a quantized int8 state leaf (a pytree of two arrays)."""
  return x is None or is_quantized(x)


def _paths(tree: Any) -> list[str]:
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_leaf)[0]
  return [jax.tree_util.keystr(p) for p, _ in leaves]


def _listing(paths: list[str]) -> str:
  shown = paths[:_MAX_LISTED]
  more = f" (+{len(paths) - _MAX_LISTED} more)" if len(paths) > _MAX_LISTED else ""
  return ", ".join(p or "<root>" for p in shown) + more


def check_same_structure(name: str, expected: Any, got: Any, expected_what: str = "state",
                         got_what: str = "updates") -> None:
  """Raises ValueError naming the first differing paths when two trees differ in structure."""
  if (jax.tree.structure(expected, is_leaf=is_quantized)
      == jax.tree.structure(got, is_leaf=is_quantized)):
    return
  exp, have = _paths(expected), _paths(got)
  missing = [p for p in exp if p not in set(have)]
  unexpected = [p for p in have if p not in set(exp)]
  _raise_mismatch(name, missing, unexpected, (expected_what, expected), (got_what, got),
                  "Did init() see a different tree (e.g. one with non-trainable leaves)?")


def _raise_mismatch(name: str, missing: list[str], unexpected: list[str],
                    reference: tuple[str, Any], other: tuple[str, Any], hint: str) -> None:
  """Raises the ValueError shared by the structure checks: what is missing, what is extra."""
  (ref_what, ref), (other_what, tree) = reference, other
  lines = [f"{name}: the {other_what} tree does not match the {ref_what} tree."]
  if missing:
    lines.append(f"  missing:    {_listing(missing)}")
  if unexpected:
    lines.append(f"  unexpected: {_listing(unexpected)}")
  if not missing and not unexpected:
    lines.append(f"  same paths, different node types: {ref_what} is "
                 f"{jax.tree.structure(ref)}, {other_what} is {jax.tree.structure(tree)}")
  lines.append(hint)
  raise ValueError("\n".join(lines))


def check_shapes(name: str, expected: Any, got: Any, expected_what: str = "state",
                 got_what: str = "updates") -> None:
  """Raises ValueError naming the first leaf whose shape differs (structures must agree)."""
  flat_e = jax.tree_util.tree_flatten_with_path(expected, is_leaf=is_quantized)[0]
  flat_g = jax.tree.leaves(got, is_leaf=is_quantized)
  shape = lambda x: x.shape if is_quantized(x) else jnp.shape(x)
  for (path, e), g in zip(flat_e, flat_g):
    if shape(e) != shape(g):
      raise ValueError(f"{name}: shape mismatch at {jax.tree_util.keystr(path) or '<root>'}: "
                       f"{expected_what} has {shape(e)}, {got_what} has {shape(g)}.")


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


def broadcast_prefix(name: str, prefix: Any, tree: Any, prefix_what: str = "mask",
                     tree_what: str = "params") -> list[Any]:
  """The leaves of `prefix` broadcast over `tree`: one entry per leaf of `tree`, in order.

  `prefix` is `tree`'s structure or a prefix of it (a leaf of `prefix` covers a whole subtree
  of `tree`). Raises ValueError naming the differing paths when it is neither.
  """
  leaves, treedef = jax.tree.flatten(tree)
  try:
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), prefix, tree)
    out = treedef.flatten_up_to(full)
  except (ValueError, TypeError):
    _prefix_error(name, prefix, tree, prefix_what, tree_what)
    raise  # pragma: no cover - _prefix_error always raises
  return out


def _prefix_error(name: str, prefix: Any, tree: Any, prefix_what: str, tree_what: str) -> None:
  """Raises ValueError listing the leaves of `tree` no prefix leaf covers, and vice versa."""
  flat = lambda t: [p for p, _ in jax.tree_util.tree_flatten_with_path(
      t, is_leaf=lambda x: x is None)[0]]
  have, want = flat(prefix), flat(tree)
  covers = lambda a, b: len(a) <= len(b) and tuple(b[:len(a)]) == tuple(a)
  missing = [jax.tree_util.keystr(w) for w in want if not any(covers(h, w) for h in have)]
  unexpected = [jax.tree_util.keystr(h) for h in have if not any(covers(h, w) for w in want)]
  _raise_mismatch(name, missing, unexpected, (tree_what, tree), (prefix_what, prefix),
                  f"The {prefix_what} must have the {tree_what}' structure, or a prefix of it "
                  "(one value for a whole subtree).")


def leaf_paths(tree: Any) -> list[str]:
  """`keystr` of every leaf path of `tree` (None leaves excluded), in flatten order."""
  return [jax.tree_util.keystr(p) or "<root>"
          for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
