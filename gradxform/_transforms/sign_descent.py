"""Sign descent: the sign of the update (signSGD, Signum) and Lion's interpolated sign."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, next_count, step_count, transform,
                             trees_checked)
from gradxform._transforms.stateless import stateless


@transform
def scale_by_sign() -> GradientTransformation:
  """Replaces each update by its sign: `u ← sign(u)` (0 where `u = 0`). No state.

  After `scale_by_momentum(β, ema=True)` this is Signum; alone, signSGD. A complex entry is
  two reals, so each of its parts gets its own sign (torch's `view_as_real` convention).

  State: `EmptyState()`.

  Example:
    >>> tx = gx.scale_by_sign()
    >>> updates, _ = tx.update({"w": jnp.array([2.0, -0.5, 0.0])}, tx.init(params))
    >>> updates["w"]
    Array([ 1., -1.,  0.], dtype=float32)

  References:
    Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: compressed optimisation for
    non-convex problems", ICML 2018.
  """
  return elementwise(stateless(lambda updates, params: jax.tree.map(jnp.sign, updates)))


class LionState(NamedTuple):
  """State of `scale_by_lion`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                  # EMA m of the updates (decay β2), like params


@transform(shares_count=True, hyperparams=("b1", "b2"))
def scale_by_lion(b1: float = 0.9, b2: float = 0.99, *,
                  state_dtype: Any = None) -> GradientTransformation:
  """Lion's direction: the sign of an interpolation between the update and its momentum.

  Output `sign((1 − β1) g + β1 m)` with the momentum *before* this step; then
  `m ← β2 m + (1 − β2) g`. Two decays: β1 interpolates the direction, β2 averages the
  momentum (β2 > β1 in the paper). Equal to Optax's `scale_by_lion` (mode "hard").

  Args:
    b1: β1 in [0, 1), the interpolation weight of the momentum.
    b2: β2 in [0, 1), the decay of the momentum.
    state_dtype: dtype of `mu` (None: each parameter's dtype).

  State: `LionState(count, mu)`; the count is kept for the chain's shared counter only.

  Example:
    >>> tx = gx.scale_by_lion()
    >>> updates, _ = tx.update({"w": jnp.array([2.0, -0.5])}, tx.init({"w": jnp.zeros(2)}))
    >>> updates["w"]                          # sign(0.1 · g + 0.9 · 0)
    Array([ 1., -1.], dtype=float32)

  References:
    Chen et al., "Symbolic discovery of optimization algorithms", NeurIPS 2023
    (https://arxiv.org/abs/2302.06675).
  """
  where = "scale_by_lion"
  b1 = _check.unit_interval(where, "b1", b1)
  b2 = _check.unit_interval(where, "b2", b2)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return LionState(count=_numerics.zero_count(),
                     mu=_numerics.state_zeros(params, state_dtype))

  def leaf(g, m):
    cd = _numerics.compute_dtype(g, m)
    g32, m32 = _numerics.cast(g, cd), _numerics.cast(m, cd)
    out = jnp.sign((1.0 - b1) * g32 + b1 * m32)
    return _numerics.cast(out, g.dtype), _numerics.cast(_numerics.ema(m32, g32, b2), m.dtype)

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.mu, updates)
    count = step_count(state, extra)
    out, mu = _tree.map_unzip(leaf, 2, updates, state.mu)
    return out, LionState(count=next_count(state, count), mu=mu)

  return elementwise(GradientTransformation(init, update))
