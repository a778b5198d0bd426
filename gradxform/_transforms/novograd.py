"""NovoGrad's direction: gradients normalized by a per-leaf (layer-wise) second moment."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, ScalarOrSchedule, next_count,
                             require_params, step_count, transform, trees_checked)


class NovogradState(NamedTuple):
  """State of `scale_by_novograd`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                  # momentum m of the normalized gradients, like params
  nu: Any                  # per-leaf EMA v of the squared norm ‖g‖², one scalar per leaf


def _is_zero(x: Any) -> bool:
  return isinstance(x, float) and x == 0.0


@transform(shares_count=True, accumulates=True,
           hyperparams=("b1", "b2", "eps", "eps_root", "weight_decay"))
def scale_by_novograd(b1: float = 0.9, b2: float = 0.25, eps: float = 1e-8,
                      eps_root: float = 0.0, weight_decay: ScalarOrSchedule = 0.0, *,
                      state_dtype: Any = None) -> GradientTransformation:
  """NovoGrad's direction: `m ← β1 m + (g / (√(v + ε_root) + ε) + λθ)`, output `m`.

  `v` is one number per leaf (per layer): `v ← ‖g‖²` on the first step, then
  `v ← β2 v + (1 − β2) ‖g‖²`. The momentum is a plain sum (no `1 − β1` factor, no bias
  correction) and the weight decay `λθ` is added to the normalized gradient, inside it. Equal
  to Optax's `scale_by_novograd` (whose `eps` default, 10⁻⁸, differs from `novograd`'s 10⁻⁶).
  A complex leaf's norm is that of its real view (the same number as its complex 2-norm).

  Args:
    b1: β1 in [0, 1), the momentum's decay.
    b2: β2 in [0, 1), the decay of the per-leaf second moment.
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 inside it.
    weight_decay: λ ≥ 0 or a schedule of the step; needs the parameters when not 0.
    state_dtype: dtype of `mu` and `nu` (Optax's `mu_dtype`, which sets `mu` only).

  State: `NovogradState(count, mu, nu)`; `nu` holds a scalar per leaf.

  Example:
    >>> tx = gx.scale_by_novograd()
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 4)            # g/‖g_b‖ = 0.5/√0.5 on the first step
    Array([0.7071, 0.7071], dtype=float32)

  References:
    Ginsburg et al., "Stochastic gradient methods with layer-wise adaptive moments for
    training of deep networks", 2019 (https://arxiv.org/abs/1905.11286).
  """
  where = "scale_by_novograd"
  b1 = _check.unit_interval(where, "b1", b1)
  b2 = _check.unit_interval(where, "b2", b2)
  eps = _check.non_negative(where, "eps", eps)
  eps_root = _check.non_negative(where, "eps_root", eps_root)
  weight_decay = _check.non_negative_or_schedule(where, "weight_decay", weight_decay)
  state_dtype = _check.state_dtype(where, state_dtype, int8=False)
  no_decay = _is_zero(weight_decay)

  def init(params):
    mu = _numerics.state_zeros(params, state_dtype)
    nu = jax.tree.map(lambda m: jnp.zeros([], m.dtype), mu)
    return NovogradState(count=_numerics.zero_count(), mu=mu, nu=nu)

  def update(updates, state, params=None, **extra):
    if not no_decay:
      params = require_params(where, params)
    if not trees_checked(extra):
      _tree.check_updates(where, state.mu, updates)
    count = step_count(state, extra)
    first = count == 0
    decay = weight_decay(count) if callable(weight_decay) else weight_decay

    def leaf(g, p, m, v):
      cd = _numerics.compute_dtype(g, m, v)
      g32 = _numerics.cast(g, cd)
      squared_norm = jnp.sum(jnp.square(g32))
      new_v = jnp.where(first, squared_norm, _numerics.ema(v, squared_norm, b2))
      root = jnp.sqrt(new_v if _is_zero(eps_root) else new_v + eps_root)
      step = g32 / (root + eps)
      if not no_decay:
        step = step + decay * _numerics.cast(p, cd)
      new_m = b1 * _numerics.cast(m, cd) + step
      return (_numerics.cast(new_m, g.dtype), _numerics.cast(new_m, m.dtype),
              _numerics.cast(new_v, v.dtype))

    like = updates if no_decay else params
    out, mu, nu = _tree.map_unzip(leaf, 3, updates, like, state.mu, state.nu)
    return out, NovogradState(count=next_count(state, count), mu=mu, nu=nu)

  return GradientTransformation(init, update)
