"""Adan's direction: Nesterov momentum estimated from gradient differences."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, next_count, step_count, transform,
                             trees_checked)


class AdanState(NamedTuple):
  """State of `scale_by_adan`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                  # EMA m of the gradients, like params
  delta: Any               # EMA v of the gradient differences g_t − g_{t−1}, like params
  nu: Any                  # EMA n of (g_t + (1 − β2)(g_t − g_{t−1}))², like params
  prev: Any                # the previous gradient g_{t−1}, like params


@transform(shares_count=True, accumulates=True,
           hyperparams=("b1", "b2", "b3", "eps", "eps_root"))
def scale_by_adan(b1: float = 0.98, b2: float = 0.92, b3: float = 0.99, eps: float = 1e-8,
                  eps_root: float = 0.0, *, state_dtype: Any = None) -> GradientTransformation:
  """Adan's direction: `(m̂ + (1 − β2) v̂) / (√(n̂ + ε_root) + ε)`.

  With `d = g_t − g_{t−1}` (0 on the first step): `m ← β1 m + (1 − β1) g`,
  `v ← β2 v + (1 − β2) d`, `n ← β3 n + (1 − β3)(g + (1 − β2) d)²`, each bias-corrected as
  Adam's (`m̂ = m/(1 − β1^t)`, ...), all three started at zero. Equal to Optax's
  `scale_by_adan`. The betas are decays (β = 0.98 keeps 98 % of the average). Note: the paper
  (written with 1 − β for these decays) and the authors' PyTorch code weight the difference
  terms by the decay β2 = 0.92 (`g + β2 d` and `m̂ + β2 v̂`), where Optax, and so this
  transform, weights them by 1 − β2 = 0.08; the paper also starts at `m = g_0`, `n = g_0²`
  without bias correction.

  Args:
    b1: β1 in [0, 1), decay of the gradient average.
    b2: β2 in [0, 1), decay of the average of gradient differences.
    b3: β3 in [0, 1), decay of the second moment.
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 inside it.
    state_dtype: dtype of the three averages and of the stored gradient (None: each
      parameter's dtype).

  State: `AdanState(count, mu, delta, nu, prev)`.

  Example:
    >>> tx = gx.scale_by_adan(eps=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> jnp.round(updates["b"], 4)            # m̂ = g, v̂ = 0, n̂ = g²: g/|g| = 1
    Array([1., 1.], dtype=float32)

  References:
    Xie, Zhou, Li, Lin & Yan, "Adan: adaptive Nesterov momentum algorithm for faster
    optimizing deep models", IEEE TPAMI 2024 (https://arxiv.org/abs/2208.06677).
  """
  where = "scale_by_adan"
  b1 = _check.unit_interval(where, "b1", b1)
  b2 = _check.unit_interval(where, "b2", b2)
  b3 = _check.unit_interval(where, "b3", b3)
  eps = _check.non_negative(where, "eps", eps)
  eps_root = _check.non_negative(where, "eps_root", eps_root)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return AdanState(count=_numerics.zero_count(),
                     mu=_numerics.state_zeros(params, state_dtype),
                     delta=_numerics.state_zeros(params, state_dtype),
                     nu=_numerics.state_zeros(params, state_dtype),
                     prev=_numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.mu, updates)
    count = step_count(state, extra)
    first = count == 0
    corr1 = _numerics.one_minus_decay_power(b1, count + 1)
    corr2 = _numerics.one_minus_decay_power(b2, count + 1)
    corr3 = _numerics.one_minus_decay_power(b3, count + 1)

    def leaf(g, m, v, n, prev):
      cd = _numerics.compute_dtype(g, m, v, n, prev)
      g32 = _numerics.cast(g, cd)
      diff = jnp.where(first, jnp.zeros_like(g32), g32 - _numerics.cast(prev, cd))
      new_m = _numerics.ema(m, g32, b1)
      new_v = _numerics.ema(v, diff, b2)
      new_n = _numerics.ema(n, g32 + (1.0 - b2) * diff, b3, squared=True)
      n_hat = new_n / corr3
      if not (isinstance(eps_root, float) and eps_root == 0.0):
        n_hat = n_hat + eps_root
      out = (new_m / corr1 + (1.0 - b2) * (new_v / corr2)) / (jnp.sqrt(n_hat) + eps)
      return (_numerics.cast(out, g.dtype), _numerics.cast(new_m, m.dtype),
              _numerics.cast(new_v, v.dtype), _numerics.cast(new_n, n.dtype),
              _numerics.cast(g32, prev.dtype))

    out, mu, delta, nu, prev = _tree.map_unzip(leaf, 5, updates, state.mu, state.delta,
                                               state.nu, state.prev)
    return out, AdanState(count=next_count(state, count), mu=mu, delta=delta, nu=nu, prev=prev)

  return elementwise(GradientTransformation(init, update))
