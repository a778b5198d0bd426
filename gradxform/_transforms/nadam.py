"""Nesterov-accelerated first moments for Nadam, in Dozat's form and in torch's."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, next_count, step_count, transform,
                             trees_checked)


class NadamMomentumState(NamedTuple):
  """State of `scale_by_nadam_momentum`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                  # EMA of gradients m, like params
  mu_product: jax.Array    # Π_t = ∏ μ_i (torch form; 1 in Dozat's), scalar_dtype() scalar


@transform(shares_count=True, accumulates=True, hyperparams=("b1", "momentum_decay"))
def scale_by_nadam_momentum(b1: float = 0.9, *, momentum_decay: float | None = None,
                            state_dtype: Any = None) -> GradientTransformation:
  """Nadam's bias-corrected Nesterov look-ahead of the first moment.

  `m ← β1 m + (1 − β1) g`. Dozat's form (`momentum_decay=None`):
  output `β1 m / (1 − β1^{t+1}) + (1 − β1) g / (1 − β1^t)`.
  torch.optim.NAdam's form (`momentum_decay=ψ`): `μ_t = β1 (1 − ½·0.96^{tψ})`,
  `Π_t = ∏_{i≤t} μ_i`; output `(1 − μ_t)/(1 − Π_t) · g + μ_{t+1}/(1 − Π_t μ_{t+1}) · m`.
  Follow with `scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True)`.

  State: `NadamMomentumState(count, mu, mu_product)`.

  Example:
    >>> tx = gx.scale_by_nadam_momentum(0.9)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> jnp.round(updates["b"], 5)            # 0.9 · 0.05 / (1 − 0.9²) + 0.1 · 0.5 / (1 − 0.9)
    Array([0.73684, 0.73684], dtype=float32)

  References:
    Dozat, "Incorporating Nesterov momentum into Adam", ICLR workshop 2016.
  """
  where = "scale_by_nadam_momentum"
  b1 = _check.unit_interval(where, "b1", b1)
  if momentum_decay is not None:
    momentum_decay = _check.non_negative(where, "momentum_decay", momentum_decay)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return NadamMomentumState(count=_numerics.zero_count(),
                              mu=_numerics.state_zeros(params, state_dtype),
                              mu_product=jnp.ones([], _numerics.scalar_dtype()))

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.mu, updates)
    count = step_count(state, extra)
    t = (count + 1).astype(_numerics.scalar_dtype())
    mu_product = state.mu_product
    if momentum_decay is None:
      coef_g = (1.0 - b1) / _numerics.one_minus_decay_power(b1, t)
      coef_m = b1 / _numerics.one_minus_decay_power(b1, t + 1)
    else:
      mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
      mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * momentum_decay))
      mu_product = _numerics.cast(state.mu_product * mu_t, _numerics.scalar_dtype())
      coef_g = (1.0 - mu_t) / (1.0 - mu_product)
      coef_m = mu_next / (1.0 - mu_product * mu_next)

    def leaf(g, m):
      cd = _numerics.compute_dtype(g, m)
      g = _numerics.cast(g, cd)
      new_m = _numerics.ema(m, g, b1)
      out = coef_g * g + coef_m * new_m
      return out, _numerics.cast(new_m, m.dtype)

    out, mu = _tree.map_unzip(leaf, 2, updates, state.mu)
    out = _numerics.cast_like(out, updates)
    return out, NadamMomentumState(count=next_count(state, count), mu=mu, mu_product=mu_product)

  return elementwise(GradientTransformation(init, update))
