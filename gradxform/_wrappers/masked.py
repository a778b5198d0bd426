"""`masked`: apply a transform to a subset of the leaves, pass the rest through untouched.

The inner transform sees a *view* of the tree in which every leaf outside the subset is
replaced by `MaskedNode()`, an empty NamedTuple. An empty NamedTuple is a pytree node with no
children, so `jax.tree.map` skips it, the inner's state keeps no array for it, and it
serializes as an empty record with `flax.serialization` and Orbax. The same views are how
`partition` gives each parameter group its own transform.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from gradxform import _tree
from gradxform._base import (COUNT_KEY, GRAD_KEY, GradientTransformation, Params, Updates,
                             _as_transform, all_elementwise, elementwise, leafwise, transform)

Mask = Any  # a tree (or prefix tree) of bools like params, or a function params -> such a tree


class MaskedNode(NamedTuple):
  """Stands in for a leaf that a `masked` / `partition` inner transform does not own.

  It has no children: tree maps skip it and no state is stored for it.

  Example:
    >>> tx = gx.masked(gx.scale_by_momentum(0.9), {"w": True, "b": False})
    >>> tx.init(params).inner_state.trace["b"]
    MaskedNode()

  References:
    Optax's `MaskedNode` (https://github.com/google-deepmind/optax).
  """


class MaskedState(NamedTuple):
  """State of `masked`."""
  inner_state: Any  # the inner transform's state over the masked view of params


def _as_flag(where: str, path: str, m: Any) -> bool:
  if isinstance(m, (bool, np.bool_)):
    return bool(m)
  if isinstance(m, jax.core.Tracer):
    raise TypeError(f"{where}: the mask leaf at {path} is a traced array; masks must be known "
                    "when the optimizer is traced (Python bools, or a function of params that "
                    "only looks at their structure, shapes and dtypes).")
  if isinstance(m, (np.ndarray, jax.Array)) and np.shape(m) == () and np.asarray(m).dtype == bool:
    return bool(m)
  raise TypeError(f"{where}: the mask leaf at {path} must be a bool, got "
                  f"{type(m).__name__} {m!r}.")


def is_function(spec: Any) -> bool:
  """True for a mask/label *function*: a callable that is a single pytree leaf.

  A callable object that is also a pytree container (e.g. a registered dataclass with
  `__call__`) is a tree, not a function: no guessing from `callable` alone.
  """
  return callable(spec) and jax.tree_util.treedef_is_leaf(jax.tree.structure(spec))


def evaluate(spec: Any, tree: Any) -> Any:
  """`spec(tree)` for a function (see `is_function`), else `spec` itself."""
  return spec(tree) if is_function(spec) else spec


def resolve_flags(where: str, mask: Mask, tree: Any) -> list[bool]:
  """One bool per leaf of `tree`: `mask` (a bool tree/prefix, or a function of `tree`)."""
  spec = evaluate(mask, tree)
  flags = _tree.broadcast_prefix(where, spec, tree, "mask", "params")
  paths = _tree.leaf_paths(tree)
  return [_as_flag(where, p, m) for p, m in zip(paths, flags)]


def view(tree: Any, flags: list[bool]) -> Any:
  """`tree` with every leaf whose flag is False replaced by `MaskedNode()`."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef.unflatten([x if f else MaskedNode() for x, f in zip(leaves, flags)])


def merge(base: Any, parts: list[tuple[list[bool], Any]]) -> Any:
  """`base` with its leaves replaced by those of each view in `parts` where its flags are True."""
  leaves, treedef = jax.tree.flatten(base)
  out = list(leaves)
  for flags, part in parts:
    part_leaves = treedef.flatten_up_to(part)
    for i, (f, x) in enumerate(zip(flags, part_leaves)):
      if f:
        out[i] = x
  return treedef.unflatten(out)


def leafwise_by_mask(tx: GradientTransformation, where: str, mask: Mask,
                     variant: Callable[[bool], GradientTransformation]) -> GradientTransformation:
  """`tx`, a part that acts where `mask` holds, declared leafwise (`gradxform._base.leafwise`):
  a leaf's key is its flag, and `variant(flag)` (the same state as `tx`) acts there as `tx`."""
  return leafwise(tx, lambda params: list(resolve_flags(where, mask, params)),
                  lambda flag: elementwise(variant(flag)))


def inner_extra(extra: dict[str, Any], flags: list[bool] | None) -> dict[str, Any]:
  """The `**extra` a wrapper forwards: no `count`, `grad` restricted to the same view."""
  extra = dict(extra)
  extra.pop(COUNT_KEY, None)
  grad = extra.pop(GRAD_KEY, None)
  if grad is not None:
    extra[GRAD_KEY] = grad if flags is None else view(grad, flags)
  return extra


def source_tree(params: Params | None, updates: Updates) -> Any:
  """What a mask or label function is called on in `update`: params, else the updates."""
  return updates if params is None else params


@transform
def masked(inner: GradientTransformation, mask: Mask | Callable[[Any], Any]
           ) -> GradientTransformation:
  """Applies `inner` where `mask` is True; other leaves pass through with no state kept.

  `u_i ← inner(u)_i` where `mask_i`, else `u_i` unchanged. The inner transform runs on a view
  of the tree whose unmasked leaves are `MaskedNode()` (no children), so its state holds no
  arrays for them.

  Args:
    inner: the transform to apply to the masked leaves.
    mask: a tree of bools with the structure of params (or a prefix of it: one bool for a
      whole subtree), or a function that takes params and returns such a tree. A callable
      that is a pytree leaf is a function; anything else (including a callable pytree
      container) is a tree, never guessed from `callable` alone. In `update`, a mask
      function is called on `params` when given, else on the updates (same structure), so it
      should depend only on the tree's structure, shapes and dtypes.

  State: `MaskedState(inner_state)`.

  Example:
    >>> not_bias = lambda p: {k: k != "b" for k in p}
    >>> tx = gx.masked(gx.decoupled_weight_decay(0.1), not_bias)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # masked out: passed through unchanged
    Array([0.5, 0.5], dtype=float32)

  Note: like Optax's `masked`, the pass-through leaves keep the *incoming* updates, so a
  masked `scale_by_learning_rate` leaves the others unscaled (they would be added to the
  parameters as raw gradients). To freeze leaves use `gx.partition` with `gx.set_to_zero()`
  for the frozen group, or mask the whole optimizer and zero the rest.

  References:
    Optax's `masked` (https://github.com/google-deepmind/optax).
  """
  where = "masked"
  inner = _as_transform(inner, f"{where}: inner")
  if mask is None:
    raise TypeError(f"{where}: mask must be a bool tree or a function of params, got None.")

  def init(params):
    flags = resolve_flags(where, mask, params)
    return MaskedState(inner_state=inner.init(view(params, flags)))

  def update(updates, state, params=None, **extra):
    if not isinstance(state, MaskedState):
      raise ValueError(f"{where}.update: expected the MaskedState made by this masked's init(), "
                       f"got {type(state).__name__}.")
    if params is not None:
      _tree.check_same_structure(where, params, updates, "params", "updates")
    flags = resolve_flags(where, mask, source_tree(params, updates))
    sub_params = None if params is None else view(params, flags)
    out, inner_state = inner.update(view(updates, flags), state.inner_state, sub_params,
                                    **inner_extra(extra, flags))
    return merge(updates, [(flags, out)]), MaskedState(inner_state=inner_state)

  tx = GradientTransformation(init, update)
  if not all_elementwise(inner):
    return tx
  return leafwise_by_mask(tx, where, mask, lambda flag: masked(inner, flag))
