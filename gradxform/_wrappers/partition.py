"""`partition`: parameter groups, each leaf optimized by the transform of its label."""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _tree
from gradxform._base import GradientTransformation, _as_transform, transform, update_and_apply
from gradxform._equality import Fn
from gradxform._transforms.stateless import stateless
from gradxform._wrappers.masked import evaluate, inner_extra, merge, source_tree, view

Labels = Any  # a tree (or prefix tree) of str labels like params, or a function params -> one


class PartitionState(NamedTuple):
  """State of `partition`."""
  inner_states: dict[str, Any]  # label -> that group's state over its view of params


def _labels(where: str, labels: Labels, tree: Any, known: list[str]) -> list[str]:
  spec = evaluate(labels, tree)
  flat = _tree.broadcast_prefix(where, spec, tree, "labels", "params")
  paths = _tree.leaf_paths(tree)
  for path, label in zip(paths, flat):
    if not isinstance(label, str):
      raise TypeError(f"{where}: the label at {path} must be a str, got "
                      f"{type(label).__name__} {label!r}.")
    if label not in known:
      raise ValueError(f"{where}: the label {label!r} at {path} has no transform; "
                       f"transforms has labels {known}.")
  return flat


@transform
def partition(transforms: Mapping[str, GradientTransformation],
              labels: Labels | Callable[[Any], Any]) -> GradientTransformation:
  """Parameter groups: each leaf is transformed by `transforms[label of that leaf]`.

  Each group's transform runs on a view of the tree holding only its leaves (the others are
  `MaskedNode()`), so it keeps state only for them, and its step counter counts its own steps.
  Equivalent to running each transform separately on its sub-tree. `gx.update_and_apply`
  steps each group with its own transform, so a group whose transform is elementwise (Adam,
  AdamW, SGD, ...) takes the fused CPU pass.

  Args:
    transforms: a mapping from label (str) to transform.
    labels: a tree of str labels with the structure of params (or a prefix: one label for a
      whole subtree), or a function of params returning one (a callable that is a pytree
      leaf; a callable pytree container is a tree). In `update` a function is called on
      params when given, else on the updates.

  State: `PartitionState(inner_states)`, a dict from label to that group's state (labels with
  no leaves still get a state, over an empty view).

  Example:
    >>> labels = {"w": "train", "b": "frozen"}
    >>> tx = gx.partition({"train": gx.sgd(0.1), "frozen": gx.set_to_zero()}, labels)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"], updates["w"][0]
    (Array([0., 0.], dtype=float32), Array([-0.05, -0.05], dtype=float32))

  References:
    Optax's `partition` (formerly `multi_transform`), https://github.com/google-deepmind/optax.
  """
  where = "partition"
  if not isinstance(transforms, Mapping) or not transforms:
    raise TypeError(f"{where}: transforms must be a non-empty mapping from label to transform, "
                    f"got {type(transforms).__name__}.")
  for label in transforms:
    if not isinstance(label, str):
      raise TypeError(f"{where}: labels must be str, got {type(label).__name__} {label!r}.")
  names = sorted(transforms)
  parts = {k: _as_transform(transforms[k], f"{where}: transforms[{k!r}]") for k in names}

  def flags_of(tree):
    flat = _labels(where, labels, tree, names)
    return {k: [label == k for label in flat] for k in names}

  def init(params):
    flags = flags_of(params)
    return PartitionState(inner_states={k: parts[k].init(view(params, flags[k]))
                                        for k in names})

  def check(updates, state, params):
    if not isinstance(state, PartitionState) or sorted(state.inner_states) != names:
      got = (sorted(state.inner_states) if isinstance(state, PartitionState)
             else type(state).__name__)
      raise ValueError(f"{where}.update: expected the PartitionState made by this partition's "
                       f"init() (groups {names}), got {got}.")
    if params is not None:
      _tree.check_same_structure(where, params, updates, "params", "updates")
    return flags_of(source_tree(params, updates))

  def update(updates, state, params=None, **extra):
    flags = check(updates, state, params)
    outs, states = [], {}
    for k in names:
      sub_params = None if params is None else view(params, flags[k])
      out, states[k] = parts[k].update(view(updates, flags[k]), state.inner_states[k],
                                       sub_params, **inner_extra(extra, flags[k]))
      outs.append((flags[k], out))
    return merge(updates, outs), PartitionState(inner_states=states)

  def step(grads, state, params):  # `update_and_apply`: each group's own step, fused or not
    flags = check(grads, state, params)
    outs, states = [], {}
    for k in names:
      new_params, states[k] = update_and_apply(parts[k], view(grads, flags[k]),
                                               state.inner_states[k], view(params, flags[k]))
      outs.append((flags[k], new_params))
    return merge(params, outs), PartitionState(inner_states=states)

  return GradientTransformation(init, Fn(update, None, update_and_apply=step))


@transform
def set_to_zero() -> GradientTransformation:
  """Replaces every update by zeros (in its dtype): the transform of a frozen group. No state.

  Example:
    >>> tx = gx.set_to_zero()
    >>> tx.update(grads, tx.init(params))[0]["b"]
    Array([0., 0.], dtype=float32)
    >>> tx = gx.partition({"train": gx.adam(1e-3), "frozen": gx.set_to_zero()},
    ...                   {"w": "train", "b": "frozen"})

  References:
    Optax's `set_to_zero` (https://github.com/google-deepmind/optax).
  """
  return stateless(lambda updates, params: jax.tree.map(jnp.zeros_like, updates))
