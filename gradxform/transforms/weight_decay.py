"""Weight decay: decoupled (Loshchilov & Hutter) and the coupled L2 penalty."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from gradxform import _check, _numerics, _tree
from gradxform._base import (EmptyState, GradientTransformation, ScalarOrSchedule, next_count,
                             require_params, step_count, transform)

Mask = Any  # a tree of bools like params, or a function params -> such a tree


class WeightDecayState(NamedTuple):
  """State of a weight decay whose rate is a schedule."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count


def resolve_mask(where: str, mask: Mask, params: Any) -> Any:
  """The bool tree of `mask` (calling it on params if it is a function), checked against params."""
  tree = mask(params) if callable(mask) else mask
  _tree.check_same_structure(where, params, tree, "params", "mask")
  return tree


def _add_scaled_params(where: str, rate: ScalarOrSchedule, mask: Mask | None) -> Any:
  """`u + rate · θ` (where `mask` is True), the body of both weight decays below."""
  def apply(updates, params, value):
    params = require_params(where, params)
    _tree.check_updates(where, params, updates, "params", "updates")
    if mask is None:
      return jax.tree.map(lambda u, p: _numerics.cast(u + value * p, u.dtype), updates, params)
    flags = resolve_mask(where, mask, params)
    return jax.tree.map(lambda u, p, m: _numerics.cast(u + value * p, u.dtype) if m else u,
                        updates, params, flags)

  if not callable(rate):
    def init(params):
      del params
      return EmptyState()

    def update(updates, state, params=None, **extra):
      del extra
      return apply(updates, params, rate), state
  else:
    def init(params):
      del params
      return WeightDecayState(count=_numerics.zero_count())

    def update(updates, state, params=None, **extra):
      count = step_count(state, extra)
      return apply(updates, params, rate(count)), WeightDecayState(next_count(state, count))

  return GradientTransformation(init, update)


@transform(shares_count=True)
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
    mask: a tree of bools like params (True: decay this leaf), or a function of params that
      returns one; None decays every leaf.

  State: `EmptyState()`, or `WeightDecayState(count)` for a scheduled rate.

  References:
    Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.
  """
  where = "decoupled_weight_decay"
  rate = rate if callable(rate) else _check.non_negative(where, "rate", rate)
  return _add_scaled_params(where, rate, mask)


@transform(shares_count=True)
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

  References:
    Krogh & Hertz, "A simple weight decay can improve generalization", NeurIPS 1991.
  """
  where = "add_l2_penalty"
  rate = weight_decay if callable(weight_decay) else _check.non_negative(
      where, "weight_decay", weight_decay)
  return _add_scaled_params(where, rate, mask)
