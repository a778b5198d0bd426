"""MADGRAD: momentumised, adaptive, dual-averaged steps from the initial parameters."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, ScalarOrSchedule, elementwise, next_count,
                             require_params, step_count, transform, trees_checked)


class MadgradState(NamedTuple):
  """State of `scale_by_madgrad`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  grad_sum_sq: Any         # weighted sum ν of squared gradients, Σ λ_i g_i², like params
  grad_sum: Any            # weighted sum s of gradients, Σ λ_i g_i, like params
  x0: Any                  # the parameters given to init (the dual-averaging origin)


@transform(shares_count=True, hyperparams=("learning_rate", "momentum", "eps"))
def scale_by_madgrad(learning_rate: ScalarOrSchedule, momentum: float = 0.9, eps: float = 1e-6,
                     *, state_dtype: Any = None) -> GradientTransformation:
  """MADGRAD's step, learning rate included: `u = (1 − c)(z − θ)`, `c` the momentum.

  With `λ_t = (η_t + ε) √(t + 1)` (`t` = 0 on the first update): `s ← s + λ_t g`,
  `ν ← ν + λ_t g²`, `z = x0 − s / (∛ν + ε)`, and the parameters move to
  `(1 − c) z + c θ`. `x0` is the parameters given to `init`. The learning rate sits inside
  (it weighs the gradients of the dual average), so no `scale_by_learning_rate` follows; ε is
  added to η as in the authors' code. Equal to Optax's `optax.contrib.scale_by_madgrad`
  (under `jax_enable_x64`, λ_t is computed in float64, where Optax rounds it to float32).

  Args:
    learning_rate: η ≥ 0 or a schedule of the step.
    momentum: c in [0, 1): the weight of the current parameters in the averaged iterate.
    eps: ε ≥ 0, added to η and to the cube root.
    state_dtype: dtype of the two sums (None: each parameter's dtype); `x0` keeps the
      parameters' dtype.

  State: `MadgradState(count, grad_sum_sq, grad_sum, x0)`.

  Example:
    >>> tx = gx.scale_by_madgrad(0.01)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 5)            # −0.1 · λ g / ∛(λ g²), λ = η + ε
    Array([-0.00368, -0.00368], dtype=float32)

  References:
    Defazio & Jelassi, "Adaptivity without compromise: a momentumized, adaptive, dual
    averaged gradient method for stochastic optimization", JMLR 2022
    (https://arxiv.org/abs/2101.11075).
  """
  where = "scale_by_madgrad"
  learning_rate = _check.learning_rate(where, learning_rate)
  momentum = _check.unit_interval(where, "momentum", momentum)
  eps = _check.non_negative(where, "eps", eps)
  state_dtype = _check.state_dtype(where, state_dtype, int8=False)

  def init(params):
    return MadgradState(count=_numerics.zero_count(),
                        grad_sum_sq=_numerics.state_zeros(params, state_dtype),
                        grad_sum=_numerics.state_zeros(params, state_dtype),
                        # a copy: x0 and the params are distinct buffers (both may be donated)
                        x0=jax.tree.map(lambda p: jnp.array(p, copy=True), params))

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not trees_checked(extra):
      _tree.check_updates(where, state.grad_sum, updates)
    count = step_count(state, extra)
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    t = jnp.asarray(count).astype(_numerics.scalar_dtype())
    lamb = (lr + eps) * jnp.sqrt(t + 1.0)

    def leaf(g, nu, s, x0, p):
      cd = _numerics.compute_dtype(g, nu, s, x0, p)
      g32 = _numerics.cast(g, cd)
      scaled = lamb * g32
      new_nu = _numerics.cast(nu, cd) + scaled * g32
      new_s = _numerics.cast(s, cd) + scaled
      z = _numerics.cast(x0, cd) - new_s / (jnp.cbrt(new_nu) + eps)
      p32 = _numerics.cast(p, cd)
      out = ((1.0 - momentum) * z + momentum * p32) - p32
      return (_numerics.cast(out, g.dtype), _numerics.cast(new_nu, nu.dtype),
              _numerics.cast(new_s, s.dtype))

    out, nu, s = _tree.map_unzip(leaf, 3, updates, state.grad_sum_sq, state.grad_sum,
                                 state.x0, params)
    return out, MadgradState(count=next_count(state, count), grad_sum_sq=nu, grad_sum=s,
                             x0=state.x0)

  return elementwise(GradientTransformation(init, update))
