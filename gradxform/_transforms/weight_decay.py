"""Weight decay: decoupled (Loshchilov & Hutter) and the coupled L2 penalty."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from gradxform import _check, _numerics, _tree
from gradxform._base import (EmptyState, GradientTransformation, ScalarOrSchedule, elementwise,
                             next_count, require_params, step_count, transform,
                             trees_checked)
from gradxform._wrappers.masked import Mask, leafwise_by_mask, resolve_flags



class WeightDecayState(NamedTuple):
  """State of a weight decay whose rate is a schedule."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count


def _add_scaled_params(where: str, rate: ScalarOrSchedule, mask: Mask | None) -> Any:
  """`u + rate · θ` (where `mask` is True), the body of both weight decays below.

  `mask` follows `gx.masked`'s rules (`resolve_flags`): a bool tree or prefix, or a function of
  params (a callable pytree is a tree); it is checked against the params in `init` too.
  """
  def apply(updates, params, value, extra):
    params = require_params(where, params)
    if not trees_checked(extra):
      _tree.check_updates(where, params, updates, "params", "updates")
    if mask is None:
      return jax.tree.map(lambda u, p: _numerics.cast(u + value * p, u.dtype), updates, params)
    flags = resolve_flags(where, mask, params)
    leaves, treedef = jax.tree.flatten(updates)
    return treedef.unflatten([_numerics.cast(u + value * p, u.dtype) if f else u
                              for u, p, f in zip(leaves, treedef.flatten_up_to(params), flags)])

  def check_mask(params):
    if mask is not None:
      resolve_flags(where, mask, params)

  if not callable(rate):
    def init(params):
      check_mask(params)
      return EmptyState()

    def update(updates, state, params=None, **extra):
      return apply(updates, params, rate, extra), state
  else:
    def init(params):
      check_mask(params)
      return WeightDecayState(count=_numerics.zero_count())

    def update(updates, state, params=None, **extra):
      count = step_count(state, extra)
      return (apply(updates, params, rate(count), extra),
              WeightDecayState(next_count(state, count)))

  return GradientTransformation(init, update)


@transform(shares_count=True, hyperparams=("rate",))
def decoupled_weight_decay(rate: ScalarOrSchedule,
                           *, mask: Mask | Callable[[Any], Any] | None = None
                           ) -> GradientTransformation:
  """Decoupled weight decay: `u ← u + λ_t θ`, placed just before the learning-rate scaling.

  The parameter step then is `−η (u + λθ)`: the decay `η λ θ` never passes through a
  preconditioner (AdamW, SGDW). Place it before `scale_by_learning_rate`; after it, the decay
  would not be scaled by η (Loshchilov & Hutter's Algorithm 2 separates a schedule multiplier
  this way: see the README).

  Args:
    rate: λ ≥ 0, or a schedule of the step.
    mask: a tree of bools like params (True: decay this leaf; a prefix of it gives one bool
      for a whole subtree), or a function of params that returns one; None decays every
      leaf. The rules are `gx.masked`'s: a callable pytree (an equinox module) is a tree,
      never called, and the leaves must be concrete bools.

  State: `EmptyState()`, or `WeightDecayState(count)` for a scheduled rate.

  Example:
    >>> not_bias = {"w": True, "b": False}
    >>> tx = gx.decoupled_weight_decay(0.1, mask=not_bias)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["w"]                          # 0.5 + 0.1 · θ; the bias is not decayed
    Array([[0.6 , 0.3 ],
           [0.55, 0.8 ]], dtype=float32)

  References:
    Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.
  """
  where = "decoupled_weight_decay"
  rate = _check.non_negative_or_schedule(where, "rate", rate)
  tx = _add_scaled_params(where, rate, mask)
  if mask is None:
    return elementwise(tx)
  return leafwise_by_mask(tx, where, mask, lambda flag: decoupled_weight_decay(
      rate, mask=None if flag else False))


@transform(shares_count=True, hyperparams=("weight_decay",))
def add_l2_penalty(weight_decay: ScalarOrSchedule,
                   *, mask: Mask | Callable[[Any], Any] | None = None) -> GradientTransformation:
  """Coupled L2 regularization: `g ← g + λθ`, placed first, before any preconditioner.

  This is the gradient of `λ/2 ‖θ‖²` added to the loss (torch.optim's `weight_decay`
  argument). Unlike `decoupled_weight_decay` the term then goes through momentum and adaptive
  scaling.

  Args:
    weight_decay: λ ≥ 0, or a schedule of the step.
    mask: as `decoupled_weight_decay`.

  State: `EmptyState()`, or `WeightDecayState(count)` for a scheduled λ.

  Example:
    >>> tx = gx.add_l2_penalty(0.1)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # 0.5 + 0.1 · θ
    Array([0.51, 0.49], dtype=float32)

  References:
    Krogh & Hertz, "A simple weight decay can improve generalization", NeurIPS 1991.
  """
  where = "add_l2_penalty"
  rate = _check.non_negative_or_schedule(where, "weight_decay", weight_decay)
  tx = _add_scaled_params(where, rate, mask)
  if mask is None:
    return elementwise(tx)
  return leafwise_by_mask(tx, where, mask, lambda flag: add_l2_penalty(
      weight_decay, mask=None if flag else False))
