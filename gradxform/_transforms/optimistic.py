"""Optimistic gradients: the current update extrapolated away from the previous one."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, next_count, step_count, transform,
                             trees_checked)


class OptimisticGradientState(NamedTuple):
  """State of `scale_by_optimistic_gradient`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  prev: Any                # the previous incoming update u_{t−1}, like params


@transform(shares_count=True, hyperparams=("alpha", "beta"))
def scale_by_optimistic_gradient(alpha: float = 1.0, beta: float = 1.0, *,
                                 state_dtype: Any = None) -> GradientTransformation:
  """Generalised optimistic gradient: `u_t ← (α + β) u_t − β u_{t−1}`.

  `u_{t−1}` is the previous *incoming* update (the raw gradient when this comes first, Adam's
  direction in `optimistic_adam`). On the first step there is none and the output is `α u_0`
  (Optax's convention since its issue 1082). `α = β = 1` is optimistic gradient descent,
  `2 g_t − g_{t−1}`. Equal to Optax's `scale_by_optimistic_gradient`.

  Args:
    alpha: α ≥ 0, the weight of the current update.
    beta: β ≥ 0, the weight of the change `u_t − u_{t−1}` (the "optimism").
    state_dtype: dtype of the stored update (None: each parameter's dtype).

  State: `OptimisticGradientState(count, prev)`.

  Example:
    >>> tx = gx.scale_by_optimistic_gradient()
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state)
    >>> updates, _ = tx.update(jax.tree.map(lambda g: 2 * g, grads), state)
    >>> updates["b"]                          # 2 · 1.0 − 0.5
    Array([1.5, 1.5], dtype=float32)

  References:
    Mokhtari, Ozdaglar & Pattathil, "A unified analysis of extra-gradient and optimistic
    gradient methods for saddle point problems: proximal point approach", AISTATS 2020
    (https://arxiv.org/abs/1901.08511); Daskalakis, Ilyas, Syrgkanis & Zeng, "Training GANs
    with optimism", ICLR 2018.
  """
  where = "scale_by_optimistic_gradient"
  alpha = _check.non_negative(where, "alpha", alpha)
  beta = _check.non_negative(where, "beta", beta)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return OptimisticGradientState(count=_numerics.zero_count(),
                                   prev=_numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.prev, updates)
    count = step_count(state, extra)
    first = count == 0

    def leaf(u, prev):
      cd = _numerics.compute_dtype(u, prev)
      u32 = _numerics.cast(u, cd)
      prev32 = jnp.where(first, u32, _numerics.cast(prev, cd))
      out = (alpha + beta) * u32 - beta * prev32
      return _numerics.cast(out, u.dtype), _numerics.cast(u32, prev.dtype)

    out, prev = _tree.map_unzip(leaf, 2, updates, state.prev)
    return out, OptimisticGradientState(count=next_count(state, count), prev=prev)

  return elementwise(GradientTransformation(init, update))
