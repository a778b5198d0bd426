"""RAdam's variance rectification."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, next_count, raw_gradient, step_count,
                             transform)


class RectificationState(NamedTuple):
  """State of `scale_by_rectification`."""
  count: jax.Array | None  # int32 scalar: updates so far (None: the chain's counter is used)
  nu: Any                  # EMA of squared gradients, like params


@transform(shares_count=True)
def scale_by_rectification(decay: float = 0.999, eps: float = 1e-8, *,
                           threshold: float = 5.0,
                           state_dtype: Any = None) -> GradientTransformation:
  """RAdam's rectified adaptive step, applied to a bias-corrected first moment `u = m̂`.

  `v ← β2 v + (1 − β2) g²`, `ρ∞ = 2/(1 − β2) − 1`, `ρ_t = ρ∞ − 2 t β2^t / (1 − β2^t)`.
  If `ρ_t > threshold`: `r_t = √((ρ_t − 4)(ρ_t − 2) ρ∞ / ((ρ∞ − 4)(ρ∞ − 2) ρ_t))` and the
  output is `r_t √(1 − β2^t) u / (√v + ε)` (ε on the raw √v, as the authors' code and
  torch.optim.RAdam); otherwise the output is `u` (un-adapted momentum SGD).

  State: `RectificationState(count, nu)`.

  References:
    Liu et al., "On the variance of the adaptive learning rate and beyond", ICLR 2020.
  """
  where = "scale_by_rectification"
  decay = _check.unit_interval(where, "decay", decay)
  eps = _check.non_negative(where, "eps", eps)
  threshold = _check.non_negative(where, "threshold", threshold)
  state_dtype = _check.state_dtype(where, state_dtype)
  if not isinstance(decay, float):
    raise ValueError(f"{where}: decay must be a Python number (ρ∞ is derived from it)")
  rho_inf = 2.0 / (1.0 - decay) - 1.0

  def init(params):
    return RectificationState(count=_numerics.zero_count(),
                              nu=_numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    grad = raw_gradient(updates, extra)
    _tree.check_updates(where, state.nu, updates)
    count = step_count(state, extra)
    t = count + 1
    power = _numerics.decay_power(decay, t)
    corr = _numerics.one_minus_decay_power(decay, t)
    rho_t = rho_inf - 2.0 * t.astype(power.dtype) * power / corr
    safe_rho = jnp.maximum(rho_t, 5.0)  # keeps the unused branch finite
    rect = jnp.sqrt((safe_rho - 4.0) * (safe_rho - 2.0) * rho_inf
                    / ((rho_inf - 4.0) * (rho_inf - 2.0) * safe_rho))
    adapt = rho_t > threshold

    def leaf(u, g, nu):
      cd = _numerics.compute_dtype(u, nu)
      g = g.astype(cd)
      new_nu = decay * nu.astype(cd) + (1.0 - decay) * g * g
      step = rect * jnp.sqrt(corr) * u.astype(cd) / (jnp.sqrt(new_nu) + eps)
      out = jnp.where(adapt, step, u.astype(cd))
      return out.astype(u.dtype), new_nu.astype(nu.dtype)

    out, nu = _tree.map_unzip(leaf, 2, updates, grad, state.nu)
    return out, RectificationState(count=next_count(state, count), nu=nu)

  return GradientTransformation(init, update)
