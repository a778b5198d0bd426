"""RAdam's variance rectification."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, next_count, raw_gradient,
                             step_count, transform, trees_checked)


class RectificationState(NamedTuple):
  """State of `scale_by_rectification`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  nu: Any                  # EMA of squared gradients, like params


def _bernoulli_tail(z: Any) -> Any:
  """`(z/(e^z − 1) − 1 + z/2) / z² = Σ_{n≥2 even} B_n z^{n−2} / n!`, to 1e-15 for |z| ≤ 1."""
  z2 = z * z
  coefs = [1 / 12, -1 / 720, 1 / 30240, -1 / 1209600, 1 / 47900160,
           -691 / 2730 / 479001600, 7 / 6 / 87178291200, -3617 / 510 / 20922789888000]
  out = coefs[-1]
  for c in reversed(coefs[:-1]):  # Horner in z²
    out = out * z2 + c
  return out


def _rho(decay: float, rho_inf: float, t: jax.Array) -> jax.Array:
  """`ρ_t = ρ∞ − 2tβ^t/(1 − β^t)` without the float32 cancellation of the direct form.

  For β = 0.999 the direct form subtracts two numbers near 2000 to get ρ_6 ≈ 6, which in
  float32 leaves r_t 1e-4 relative off at t = 6. With `x = −ln β`, `y = t x` and `B(z) =
  z/(e^z − 1)`, `ρ_t = 1 + 2 (B(x) − B(y)) / x = t + 2x C(x) − 2t y C(y)`, `C` the Bernoulli
  tail above: no cancellation while `y < 1`; past that the direct form is well conditioned.
  """
  dtype = _numerics.scalar_dtype()
  t = jnp.asarray(t).astype(dtype)
  direct = (rho_inf - 2.0 * t * _numerics.decay_power(decay, t)
            / _numerics.one_minus_decay_power(decay, t))
  if isinstance(decay, float):
    if decay == 0.0:
      return direct
    x = -math.log(decay)
  else:  # an injected hyperparameter; β = 0 gives x = inf, which selects `direct`
    x = -jnp.log(jnp.asarray(decay, dtype))
  y = jnp.minimum(t * x, 1.0)
  series = t + 2.0 * x * _bernoulli_tail(x) - 2.0 * t * y * _bernoulli_tail(y)
  return _numerics.cast(jnp.where(t * x < 1.0, series, direct), dtype)


@transform(shares_count=True, hyperparams=("decay", "eps", "threshold"))
def scale_by_rectification(decay: float = 0.999, eps: float = 1e-8, *,
                           threshold: float = 5.0,
                           state_dtype: Any = None) -> GradientTransformation:
  """RAdam's rectified adaptive step, applied to a bias-corrected first moment `u = m̂`.

  `v ← β2 v + (1 − β2) g²`, `ρ∞ = 2/(1 − β2) − 1`, `ρ_t = ρ∞ − 2 t β2^t / (1 − β2^t)`.
  If `ρ_t > threshold`: `r_t = √((ρ_t − 4)(ρ_t − 2) ρ∞ / ((ρ∞ − 4)(ρ∞ − 2) ρ_t))` and the
  output is `r_t √(1 − β2^t) u / (√v + ε)` (ε on the raw √v, as the authors' code and
  torch.optim.RAdam); otherwise the output is `u` (un-adapted momentum SGD).

  State: `RectificationState(count, nu)`.

  Example:
    >>> tx = gx.scale_by_rectification(0.999)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> updates["b"]                          # ρ_1 = 1 ≤ 5: the momentum passes unchanged
    Array([0.5, 0.5], dtype=float32)

  References:
    Liu et al., "On the variance of the adaptive learning rate and beyond", ICLR 2020.
  """
  where = "scale_by_rectification"
  decay = _check.unit_interval(where, "decay", decay)
  eps = _check.non_negative(where, "eps", eps)
  threshold = _check.at_least(where, "threshold", threshold, 4.0,
                              why=" (r_t is undefined for 2 < ρ_t < 4)")
  state_dtype = _check.state_dtype(where, state_dtype)
  rho_inf = 2.0 / (1.0 - decay) - 1.0  # an array when decay is injected (inject_hyperparams)

  def init(params):
    return RectificationState(count=_numerics.zero_count(),
                              nu=_numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    grad = raw_gradient(updates, extra)
    if not trees_checked(extra):
      _tree.check_updates(where, state.nu, updates)
    count = step_count(state, extra)
    t = count + 1
    corr = _numerics.one_minus_decay_power(decay, t)
    rho_t = _rho(decay, rho_inf, t)
    adapt = rho_t > threshold
    safe_rho = jnp.where(adapt, rho_t, 5.0)  # keeps the unused branch finite
    rect = jnp.sqrt((safe_rho - 4.0) * (safe_rho - 2.0) * rho_inf
                    / ((rho_inf - 4.0) * (rho_inf - 2.0) * safe_rho))

    def leaf(u, g, nu):
      cd = _numerics.compute_dtype(u, nu)
      g = _numerics.cast(g, cd)
      new_nu = _numerics.ema(nu, g, decay, squared=True)
      step = rect * jnp.sqrt(corr) * _numerics.cast(u, cd) / (jnp.sqrt(new_nu) + eps)
      out = jnp.where(adapt, step, _numerics.cast(u, cd))
      return _numerics.cast(out, u.dtype), _numerics.cast(new_nu, nu.dtype)

    out, nu = _tree.map_unzip(leaf, 2, updates, grad, state.nu)
    return out, RectificationState(count=next_count(state, count), nu=nu)

  return elementwise(GradientTransformation(init, update))
