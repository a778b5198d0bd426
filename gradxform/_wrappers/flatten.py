"""`flatten`: run a transform on one concatenated 1-D buffer per dtype."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _check, _tree
from gradxform._base import (GradientTransformation, _as_transform, fused_packed, transform,
                             update_and_apply)
from gradxform._equality import Fn
from gradxform._fused.calls import Packed
from gradxform._wrappers.masked import inner_extra


def _key(dtype: Any) -> str:
  return jnp.dtype(dtype).name


def _packed(x: Any, max_leaf_size: int | None) -> bool:
  return max_leaf_size is None or int(np.prod(np.shape(x))) <= max_leaf_size


def _leaf_key(path: Any) -> str:
  return "leaf" + jax.tree_util.keystr(path)


def flatten_tree(tree: Any, max_leaf_size: int | None = None) -> dict[str, jax.Array]:
  """All leaves of `tree`, raveled and concatenated in leaf order, one buffer per dtype.

  The result is a dict from dtype name (e.g. "float32") to a 1-D array. With `max_leaf_size`,
  only leaves of at most that many elements are packed; each larger leaf is its own entry,
  keyed `"leaf" + jax.tree_util.keystr(path)` (e.g. `"leaf['dense']['kernel']"`), unchanged.
  """
  return _concatenated(_pieces(tree, max_leaf_size))


def unflatten_tree(flat: dict[str, jax.Array], like: Any,
                   max_leaf_size: int | None = None) -> Any:
  """The inverse of `flatten_tree` (with the same `max_leaf_size`): `like`'s leaves back."""
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  offsets = {k: 0 for k in flat}
  out = []
  for path, x in paths_leaves:
    if not _packed(x, max_leaf_size):
      out.append(flat[_leaf_key(path)])
      continue
    k, shape = _key(jnp.result_type(x)), np.shape(x)
    size = int(np.prod(shape))
    out.append(jax.lax.slice_in_dim(flat[k], offsets[k], offsets[k] + size).reshape(shape))
    offsets[k] += size
  return treedef.unflatten(out)


def _pieces(tree: Any, max_leaf_size: int | None) -> dict[str, Any]:
  """`flatten_tree(tree)` with each packed buffer left as its pieces (`Packed`): the leaves
  in their own shapes (a reshape of a donated leaf would make XLA copy it, in and out)."""
  groups: dict[str, list[jax.Array]] = {}
  alone: dict[str, jax.Array] = {}
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    x = jnp.asarray(x)
    if _packed(x, max_leaf_size):
      groups.setdefault(_key(x.dtype), []).append(x)
    else:
      alone[_leaf_key(path)] = x
  return {**{k: Packed(v) for k, v in sorted(groups.items())}, **alone}


def _concatenated(flat: dict[str, Any]) -> dict[str, jax.Array]:
  """`flat` with each `Packed` entry made one 1-D array: what `flatten_tree` gives."""
  def one(v: Any) -> jax.Array:
    if not isinstance(v, Packed):
      return v
    raveled = [jnp.ravel(x) for x in v.pieces]
    return raveled[0] if len(raveled) == 1 else jnp.concatenate(raveled)

  return {k: one(v) for k, v in flat.items()}


def _unpieces(flat: dict[str, Any], like: Any, max_leaf_size: int | None) -> Any:
  """The inverse of `_pieces`: `like`'s leaves back from `flat`'s pieces and large leaves."""
  pieces = {k: iter(v.pieces) for k, v in flat.items() if isinstance(v, Packed)}
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  return treedef.unflatten([next(pieces[_key(jnp.result_type(x))])
                            if _packed(x, max_leaf_size) else flat[_leaf_key(path)]
                            for path, x in paths_leaves])


@transform
def flatten(inner: GradientTransformation, *,
            max_leaf_size: int | None = None) -> GradientTransformation:
  """Runs `inner` on all leaves concatenated into one 1-D buffer per dtype.

  `flatten(tx)` gives the inner transform `{dtype name: concat(ravel(leaf) ...)}` instead of
  the tree, so an element-wise optimizer launches a few large kernels instead of a few per
  leaf. Results equal the unflattened optimizer for transforms that act element-wise or on
  global quantities (Adam, SGD with momentum, AdamW with params, global-norm clipping up to
  summation order); transforms that look at individual leaves (per-leaf norms, per-leaf
  masks or labels) see a single leaf per dtype instead.

  When to use it: on CPU with `gx.update_and_apply` (below), where it is the fastest step
  on every tree measured in float32 (bfloat16 SGD with momentum on large leaves excepted), and
  compiles in a tenth of Optax's time on 2,000 leaves. With
  `update` and `apply_updates`: on a GPU, where a step's cost is dominated by the number of
  arrays it handles rather than by bytes (an H200, GPT-2-sized tree: Adam 1.6 ms flattened
  against 3.3–3.9 ms per leaf, and 1.5–3× shorter compiles), and on CPU for many small
  leaves (2,000 leaves of 1,000: 2.3× faster); not on CPU for trees of large leaves
  (ResNet-50, GPT-2 small: 4–6× slower, concatenating and splitting them costs more than
  the kernels saved), nor for tens of thousands of leaves anywhere: splitting the buffer
  back into the tree's leaves makes one distinct kernel per leaf, which XLA compiles one by
  one.

  `max_leaf_size` packs only the leaves of at most that many elements and hands each larger
  leaf to `inner` as it is (its own entry of the dict, keyed by its path). On CPU that is
  never slower than per leaf on the benchmark's trees: with `max_leaf_size=16384`, Adam on
  2,000 leaves of 1,000 takes 0.48–0.57× the per-leaf step, on ResNet-50, GPT-2 small and one
  50M array 0.97–1.0× (identical results there), with 1.3–1.9× longer compiles.
  `None` (the default) packs every leaf.

  With `gx.update_and_apply` on CPU, where `inner` ends in elementwise parts (Adam, AdamW,
  SGD, Lion, ... and their masks, after clipping or not), those parts and the parameter step
  are one fused pass that packs no parameter: it reads and writes each parameter leaf where
  it is and the packed state at that leaf's offset, so the state keeps flatten's few arrays
  without concatenating or splitting any parameter (see `update_and_apply`); int8 state
  (`state_dtype="int8"`) is one quantized array over each packed buffer, stepped in the same
  pass a block of 256 at a time (a block may hold the ends of several leaves). Parts before
  them (a global-norm clip) see the packed gradients as usual. Other inner transforms run on
  the packed tree, and the new parameters are unpacked. Measured on 2 CPU cores (Adam and
  AdamW; benchmarks/RESULTS.md, session 12): 0.31–0.39× Optax's step on 2,000 leaves of
  1,000 and 0.55× on 10,000 leaves of 10, compiles 0.10× and 0.05× Optax's; level with the
  per-leaf fused step on ResNet-50, GPT-2 small and one 50M array.

  Args:
    inner: the transform to run on the flat buffers.
    max_leaf_size: pack only leaves with at most this many elements (`None`: all).

  State: the inner transform's state over the flat buffers (stored flat), and over the large
  leaves as they are when `max_leaf_size` is set.

  Example:
    >>> tx = gx.flatten(gx.adam(1e-3))
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # as gx.adam(1e-3)
    Array([-0.001, -0.001], dtype=float32)

  References:
    Optax's `flatten` (https://github.com/google-deepmind/optax).
  """
  where = "flatten"
  inner = _as_transform(inner, f"{where}: inner")
  if max_leaf_size is not None:
    max_leaf_size = _check.integer(where, "max_leaf_size", max_leaf_size, minimum=0)

  def pack(tree):
    return flatten_tree(tree, max_leaf_size)

  def init(params):
    return inner.init(pack(params))

  def check(updates, params):
    _tree.check_floating(where, updates)
    if params is not None:
      _tree.check_same_structure(where, params, updates, "params", "updates")

  def explained(run, *args, **kwargs):
    try:
      return run(*args, **kwargs)
    except ValueError as e:
      raise ValueError(f"{where}: {e}\n(inside gx.flatten the tree is one 1-D buffer per dtype, "
                       "keyed by dtype name: the updates hold a different number of elements "
                       "of some dtype than the params given to init.)") from e

  def update(updates, state, params=None, **extra):
    check(updates, params)
    rest = inner_extra(extra, None)
    if "grad" in rest:
      rest["grad"] = pack(rest["grad"])
    flat_params = None if params is None else pack(params)
    out, state = explained(inner.update, pack(updates), state, flat_params, **rest)
    return unflatten_tree(out, updates, max_leaf_size), state

  def step(grads, state, params):
    # `update_and_apply` on the packed tree. Where `inner` ends in a fused tail, the tail's
    # pass reads and writes each parameter leaf where it is and the packed state at its
    # offset: no parameter is concatenated or sliced (the parts before the tail see the
    # packed gradients, concatenated). Otherwise the packed tree is made and the new
    # parameters unpacked.
    check(grads, params)
    fused = fused_packed(inner, _pieces(grads, max_leaf_size), state,
                         _pieces(params, max_leaf_size), _concatenated)
    if fused is not None:
      return _unpieces(fused[0], params, max_leaf_size), fused[1]
    new_params, state = explained(update_and_apply, inner, pack(grads), state, pack(params))
    return unflatten_tree(new_params, params, max_leaf_size), state

  return GradientTransformation(init, Fn(update, None, update_and_apply=step))
