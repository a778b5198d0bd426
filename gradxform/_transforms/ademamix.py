"""AdEMAMix's directions: Adam's with a slow second momentum mixed in, and its simplified form."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, ScalarOrSchedule, elementwise, next_count,
                             step_count, transform, trees_checked)


def _is_zero(x: Any) -> bool:
  return isinstance(x, float) and x == 0.0


def _at(value: Any, count: jax.Array) -> Any:
  """A hyperparameter given as a number or a schedule, at the step `count`."""
  return value(count) if callable(value) else value


class AdemamixState(NamedTuple):
  """State of `scale_by_ademamix`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                  # fast EMA m1 of the gradients (decay β1), like params
  mu_slow: Any             # slow EMA m2 of the gradients (decay β3), like params
  nu: Any                  # EMA of the squared gradients (decay β2), like params


@transform(shares_count=True, accumulates=True,
           hyperparams=("b1", "b2", "b3", "alpha", "eps", "eps_root"))
def scale_by_ademamix(b1: float = 0.9, b2: float = 0.999, b3: ScalarOrSchedule = 0.9999,
                      alpha: ScalarOrSchedule = 6.0, eps: float = 1e-8, eps_root: float = 0.0,
                      *, state_dtype: Any = None) -> GradientTransformation:
  """AdEMAMix's direction: `(m̂1 + α m2) / (√(v̂ + ε_root) + ε)`.

  `m1 ← β1 m1 + (1 − β1) g` (fast, bias-corrected `m̂1 = m1/(1 − β1^t)`),
  `m2 ← β3 m2 + (1 − β3) g` (slow, not corrected), `v ← β2 v + (1 − β2) g²`,
  `v̂ = v/(1 − β2^t)`. `b3` and `alpha` may be schedules of the step (0 on the first update):
  the paper warms both up (`α` linearly, `β3` through its half-life) over its `T_α,β3`
  steps. The default `alpha` is 6, Optax's for this primitive (`ademamix` uses 5). Equal to
  Optax's `optax.contrib.scale_by_ademamix`.

  Args:
    b1: β1 in [0, 1), decay of the fast EMA.
    b2: β2 in [0, 1), decay of the second moment.
    b3: β3 in [0, 1), decay of the slow EMA, or a schedule of it.
    alpha: α ≥ 0, the weight of the slow EMA, or a schedule of it.
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 inside it.
    state_dtype: dtype of the three moments (None: each parameter's dtype).

  State: `AdemamixState(count, mu, mu_slow, nu)`.

  Example:
    >>> tx = gx.scale_by_ademamix(alpha=6.0, eps=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> jnp.round(updates["b"], 4)            # (g + 6 · 0.0001 g)/|g| = 1.0006
    Array([1.0006, 1.0006], dtype=float32)

  References:
    Pagliardini, Ablin & Grangier, "The AdEMAMix optimizer: better, faster, older", ICLR 2025
    (https://arxiv.org/abs/2409.03137).
  """
  where = "scale_by_ademamix"
  b1 = _check.unit_interval(where, "b1", b1)
  b2 = _check.unit_interval(where, "b2", b2)
  if not callable(b3):
    b3 = _check.unit_interval(where, "b3", b3)
  alpha = _check.non_negative_or_schedule(where, "alpha", alpha)
  eps = _check.non_negative(where, "eps", eps)
  eps_root = _check.non_negative(where, "eps_root", eps_root)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return AdemamixState(count=_numerics.zero_count(),
                         mu=_numerics.state_zeros(params, state_dtype),
                         mu_slow=_numerics.state_zeros(params, state_dtype),
                         nu=_numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.mu, updates)
    count = step_count(state, extra)
    b3_t, alpha_t = _at(b3, count), _at(alpha, count)
    corr1 = _numerics.one_minus_decay_power(b1, count + 1)
    corr2 = _numerics.one_minus_decay_power(b2, count + 1)

    def leaf(g, m1, m2, v):
      cd = _numerics.compute_dtype(g, m1, m2, v)
      g32 = _numerics.cast(g, cd)
      new_m1 = _numerics.ema(m1, g32, b1)
      new_m2 = _numerics.ema(m2, g32, b3_t)
      new_v = _numerics.ema(v, g32, b2, squared=True)
      v_hat = new_v / corr2
      if not _is_zero(eps_root):
        v_hat = v_hat + eps_root
      out = (new_m1 / corr1 + alpha_t * new_m2) / (jnp.sqrt(v_hat) + eps)
      return (_numerics.cast(out, g.dtype), _numerics.cast(new_m1, m1.dtype),
              _numerics.cast(new_m2, m2.dtype), _numerics.cast(new_v, v.dtype))

    out, mu, mu_slow, nu = _tree.map_unzip(leaf, 4, updates, state.mu, state.mu_slow,
                                           state.nu)
    return out, AdemamixState(count=next_count(state, count), mu=mu, mu_slow=mu_slow, nu=nu)

  return elementwise(GradientTransformation(init, update))


class SimplifiedAdemamixState(NamedTuple):
  """State of `scale_by_simplified_ademamix`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                  # the undamped sum m ← β1 m + g, like params
  nu: Any                  # EMA of the squared gradients (decay β2), like params


@transform(shares_count=True, accumulates=True,
           hyperparams=("b1", "b2", "alpha", "eps", "eps_root"))
def scale_by_simplified_ademamix(b1: float = 0.99, b2: float = 0.95,
                                 alpha: ScalarOrSchedule = 0.0, eps: float = 1e-8,
                                 eps_root: float = 0.0, *,
                                 state_dtype: Any = None) -> GradientTransformation:
  """Simplified AdEMAMix's direction: `(m + α g) / (√(v̂ + ε_root) + ε)`.

  `m ← β1 m + g` (a discounted sum, no `1 − β1` factor and no bias correction),
  `v ← β2 v + (1 − β2) g²`, `v̂ = v/(1 − β2^t)`. One momentum instead of AdEMAMix's two: the
  current gradient gets the extra weight α (a number or a schedule of the step). With α = 0
  it is Adam without the first moment's bias correction, at the learning rate η/(1 − β1).
  Equal to Optax's
  `optax.contrib.scale_by_simplified_ademamix`.

  Args:
    b1: β1 in [0, 1), discount of the momentum sum.
    b2: β2 in [0, 1), decay of the second moment.
    alpha: α ≥ 0, the extra weight of the current gradient, or a schedule of it.
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 inside it.
    state_dtype: dtype of both moments (None: each parameter's dtype).

  State: `SimplifiedAdemamixState(count, mu, nu)`.

  Example:
    >>> tx = gx.scale_by_simplified_ademamix(alpha=2.0, eps=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> updates["b"]                          # (g + 2 g)/|g|
    Array([3., 3.], dtype=float32)

  References:
    Morwani, Vyas, Kwun, Shapira, Kakade & Brandfonbrener, "Connections between
    schedule-free optimizers, AdEMAMix, and accelerated SGD variants", 2025
    (https://arxiv.org/abs/2502.02431).
  """
  where = "scale_by_simplified_ademamix"
  b1 = _check.unit_interval(where, "b1", b1)
  b2 = _check.unit_interval(where, "b2", b2)
  alpha = _check.non_negative_or_schedule(where, "alpha", alpha)
  eps = _check.non_negative(where, "eps", eps)
  eps_root = _check.non_negative(where, "eps_root", eps_root)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return SimplifiedAdemamixState(count=_numerics.zero_count(),
                                   mu=_numerics.state_zeros(params, state_dtype),
                                   nu=_numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.mu, updates)
    count = step_count(state, extra)
    alpha_t = _at(alpha, count)
    corr2 = _numerics.one_minus_decay_power(b2, count + 1)

    def leaf(g, m, v):
      cd = _numerics.compute_dtype(g, m, v)
      g32 = _numerics.cast(g, cd)
      new_m = g32 + b1 * _numerics.cast(m, cd)
      new_v = _numerics.ema(v, g32, b2, squared=True)
      v_hat = new_v / corr2
      if not _is_zero(eps_root):
        v_hat = v_hat + eps_root
      out = (new_m + alpha_t * g32) / (jnp.sqrt(v_hat) + eps)
      return (_numerics.cast(out, g.dtype), _numerics.cast(new_m, m.dtype),
              _numerics.cast(new_v, v.dtype))

    out, mu, nu = _tree.map_unzip(leaf, 3, updates, state.mu, state.nu)
    return out, SimplifiedAdemamixState(count=next_count(state, count), mu=mu, nu=nu)

  return elementwise(GradientTransformation(init, update))
