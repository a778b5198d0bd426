"""MoMo's steps: momentum (or Adam) with a Polyak-type step from a model of the loss.

Both need the loss, passed as `update(grads, state, params, value=loss)`, and the parameters.
The learning rate is inside the adaptive step (`τ = min(η, model step)`), so these primitives
take it and return the update itself, sign included.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, ScalarOrSchedule, next_count,
                             require_params, step_count, transform, trees_checked)
from gradxform._transforms.polyak import TINY, loss_value, tree_dtype, tree_vdot


class MomoState(NamedTuple):
  """State of `scale_by_momo`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  exp_avg: Any             # momentum d: EMA of the gradients, like params
  barf: jax.Array          # f̄: EMA of the losses (scalar)
  gamma: jax.Array         # γ: EMA of ⟨g, θ⟩ (scalar)
  lb: jax.Array            # the lower bound of the loss in use (scalar)


class MomoAdamState(NamedTuple):
  """State of `scale_by_momo_adam`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  exp_avg: Any             # first moment d, like params
  exp_avg_sq: Any          # second moment v, like params
  barf: jax.Array          # f̄: EMA of the losses (scalar)
  gamma: jax.Array         # γ: EMA of ⟨g, θ⟩ (scalar)
  lb: jax.Array            # the lower bound of the loss in use (scalar)


def _check_common(where: str, learning_rate: Any, lower_bound: Any, weight_decay: Any) -> None:
  _check.learning_rate(where, learning_rate)
  _check.at_least(where, "lower_bound", lower_bound, -math.inf)
  _check.non_negative(where, "weight_decay", weight_decay)


def _scalars(params: Any, lower_bound: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  dtype = tree_dtype(params)
  zero = jnp.zeros([], dtype)
  return zero, zero, jnp.asarray(lower_bound, dtype)


def _inputs(where: str, learning_rate: Any, updates: Any, state: Any, params: Any,
            extra: dict[str, Any]) -> tuple[Any, jax.Array, jax.Array, Any, jax.Array]:
  """The parameters, loss value, step count, scalar dtype and learning rate of one step."""
  params = require_params(where, params)
  value = loss_value(where, extra)
  if not trees_checked(extra):
    _tree.check_updates(where, state.exp_avg, updates)
  count = step_count(state, extra)
  sd = state.barf.dtype
  alpha = jnp.asarray(learning_rate(count) if callable(learning_rate) else learning_rate, sd)
  return params, value, count, sd, alpha


def _step_size(barf: jax.Array, gamma: jax.Array, iprod: jax.Array, norm: jax.Array,
               state_lb: jax.Array, alpha: jax.Array, weight_decay: Any, lower_bound: Any,
               adapt_lower_bound: bool, bc1: Any = 1.0
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """MoMo's truncated Polyak step `τ`, the decay's shrink factor and the next lower bound
  (Algorithms 1-3 of the paper; `bc1` is MoMo-Adam's `1 − β₁^t`, 1 for MoMo)."""
  decay = 1.0 + alpha * weight_decay
  lb = state_lb
  if adapt_lower_bound:
    cap = decay * (barf - gamma) + iprod
    lb = jnp.where(cap < decay * bc1 * lb,
                   jnp.maximum(cap / (2.0 * bc1 * decay), lower_bound), lb)
  small = norm <= TINY
  t1 = (jnp.maximum(decay * (barf - bc1 * lb - gamma) + iprod, 0.0)
        / jnp.where(small, 1.0, norm))
  tau = jnp.minimum(alpha / bc1, jnp.where(small, 0.0, t1))
  shrink = alpha * weight_decay / decay
  new_lb = (jnp.maximum((barf + iprod - gamma - 0.5 * tau * norm) / bc1,
                        lower_bound).astype(state_lb.dtype) if adapt_lower_bound else state_lb)
  return tau, shrink, new_lb


@transform(shares_count=True, hyperparams=("learning_rate", "beta", "lower_bound",
                                           "weight_decay"))
def scale_by_momo(learning_rate: ScalarOrSchedule = 1.0, beta: float = 0.9,
                  lower_bound: float = 0.0, weight_decay: float = 0.0,
                  adapt_lower_bound: bool = False, *,
                  state_dtype: Any = None) -> GradientTransformation:
  """MoMo's update: SGD with momentum, its step the smaller of η and a Polyak-type step.

  With the loss `f` (`value=`), the gradient `g`, and β replaced by 0 on the first step:
  `d ← β d + (1 − β) g`, `f̄ ← β f̄ + (1 − β) f`, `γ ← β γ + (1 − β)⟨g, θ⟩`,
  `h = (1 + ηλ)(f̄ − f* − γ) + ⟨d, θ⟩`, `τ = min(η, max(h, 0)/‖d‖²)` (0 where
  `‖d‖² ≤` float64's ε); output `u = −ηλ/(1 + ηλ) θ − τ d`. With `adapt_lower_bound`, f* is
  re-estimated every step from the model (the paper's MoMo*), never below `lower_bound`.
  The output is the update itself (η is inside τ). Equal to Optax's `optax.contrib.momo`.

  Args:
    learning_rate: η ≥ 0 or a schedule, the largest step.
    beta: β in [0, 1), the momentum's decay (also of f̄ and γ).
    lower_bound: f*, a lower bound of the loss.
    weight_decay: λ ≥ 0, decoupled (AdamW-like, folded into the model).
    adapt_lower_bound: estimate f* on the fly, starting from `lower_bound`.
    state_dtype: dtype of `exp_avg` (None: each parameter's dtype).

  State: `MomoState(count, exp_avg, barf, gamma, lb)`; the scalars in the parameters'
  promoted dtype, at least float32.

  Example:
    >>> tx = gx.scale_by_momo()
    >>> updates, _ = tx.update(grads, tx.init(params), params, value=0.3)
    >>> updates["b"]          # step 1: h = f − f* = 0.3 (γ = ⟨d, θ⟩), τ = 0.3/‖g‖² = 0.2
    Array([-0.1, -0.1], dtype=float32)

  References:
    Schaipp, Ohana, Eickenberg, Defazio & Gower, "MoMo: momentum models for adaptive learning
    rates", ICML 2024 (https://arxiv.org/abs/2305.07583).
  """
  where = "scale_by_momo"
  _check_common(where, learning_rate, lower_bound, weight_decay)
  beta = _check.unit_interval(where, "beta", beta)
  state_dtype = _check.state_dtype(where, state_dtype, int8=False)

  def init(params):
    barf, gamma, lb = _scalars(params, lower_bound)
    return MomoState(count=_numerics.zero_count(),
                     exp_avg=_numerics.state_zeros(params, state_dtype),
                     barf=barf, gamma=gamma, lb=lb)

  def update(updates, state, params=None, **extra):
    params, value, count, sd, alpha = _inputs(where, learning_rate, updates, state, params,
                                              extra)
    bt = jnp.where(count == 0, 0.0, beta).astype(sd)
    barf = bt * state.barf + (1.0 - bt) * value.astype(sd)
    exp_avg = jax.tree.map(lambda m, g: _numerics.ema(m, g, bt), state.exp_avg, updates)
    gamma = bt * state.gamma + (1.0 - bt) * tree_vdot(updates, params, sd)
    norm = tree_vdot(exp_avg, exp_avg, sd)
    iprod = tree_vdot(exp_avg, params, sd)
    tau, shrink, new_lb = _step_size(barf, gamma, iprod, norm, state.lb, alpha, weight_decay,
                                     lower_bound, adapt_lower_bound)
    out = jax.tree.map(lambda m, p, g: _numerics.cast(-shrink * p - tau * m, g.dtype),
                       exp_avg, params, updates)
    return out, MomoState(count=next_count(state, count),
                          exp_avg=_numerics.cast_like(exp_avg, state.exp_avg),
                          barf=barf.astype(sd), gamma=gamma.astype(sd), lb=new_lb)

  return GradientTransformation(init, update)


@transform(shares_count=True, hyperparams=("learning_rate", "b1", "b2", "eps", "lower_bound",
                                           "weight_decay"))
def scale_by_momo_adam(learning_rate: ScalarOrSchedule = 1e-2, b1: float = 0.9,
                       b2: float = 0.999, eps: float = 1e-8, lower_bound: float = 0.0,
                       weight_decay: float = 0.0, adapt_lower_bound: bool = False, *,
                       state_dtype: Any = None) -> GradientTransformation:
  """MoMo-Adam's update: Adam's direction, its step the smaller of η and a Polyak-type step.

  With the loss `f` (`value=`): `d ← β1 d + (1 − β1) g`, `v ← β2 v + (1 − β2) g²`,
  `D = ε + √(v/(1 − β2^t))`, `f̄ ← β1 f̄ + (1 − β1) f`, `γ ← β1 γ + (1 − β1)⟨g, θ⟩`,
  `ρ = 1 − β1^t`, `h = (1 + ηλ)(f̄ − ρ f* − γ) + ⟨d, θ⟩`,
  `τ = min(η/ρ, max(h, 0)/⟨d, d/D⟩)` (0 where `⟨d, d/D⟩ ≤` float64's ε); output
  `u = −ηλ/(1 + ηλ) θ − τ d/D`. With `adapt_lower_bound`, f* is re-estimated every step,
  never below `lower_bound`. Equal to Optax's `optax.contrib.momo_adam`.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1, b2: decays in [0, 1) of the first and second moments (β1 also of f̄ and γ).
    eps: ε ≥ 0 outside the root.
    lower_bound: f*, a lower bound of the loss.
    weight_decay: λ ≥ 0, decoupled (AdamW-like, folded into the model).
    adapt_lower_bound: estimate f* on the fly, starting from `lower_bound`.
    state_dtype: dtype of `exp_avg` and `exp_avg_sq` (None: each parameter's dtype).

  State: `MomoAdamState(count, exp_avg, exp_avg_sq, barf, gamma, lb)`.

  Example:
    >>> tx = gx.scale_by_momo_adam()
    >>> updates, _ = tx.update(grads, tx.init(params), params, value=0.3)
    >>> jnp.round(updates["b"], 5)            # τ = min(η/ρ, ...) = 0.01/0.1; d/D ≈ 0.1
    Array([-0.01, -0.01], dtype=float32)

  References:
    Schaipp, Ohana, Eickenberg, Defazio & Gower, "MoMo: momentum models for adaptive learning
    rates", ICML 2024 (https://arxiv.org/abs/2305.07583).
  """
  where = "scale_by_momo_adam"
  _check_common(where, learning_rate, lower_bound, weight_decay)
  b1 = _check.unit_interval(where, "b1", b1)
  b2 = _check.unit_interval(where, "b2", b2)
  eps = _check.non_negative(where, "eps", eps)
  state_dtype = _check.state_dtype(where, state_dtype, int8=False)

  def init(params):
    barf, gamma, lb = _scalars(params, lower_bound)
    return MomoAdamState(count=_numerics.zero_count(),
                         exp_avg=_numerics.state_zeros(params, state_dtype),
                         exp_avg_sq=_numerics.state_zeros(params, state_dtype),
                         barf=barf, gamma=gamma, lb=lb)

  def update(updates, state, params=None, **extra):
    params, value, count, sd, alpha = _inputs(where, learning_rate, updates, state, params,
                                              extra)
    bc1 = _numerics.one_minus_decay_power(b1, count + 1).astype(sd)
    bc2 = _numerics.one_minus_decay_power(b2, count + 1).astype(sd)
    barf = b1 * state.barf + (1.0 - b1) * value.astype(sd)
    exp_avg = jax.tree.map(lambda m, g: _numerics.ema(m, g, b1), state.exp_avg, updates)
    exp_avg_sq = jax.tree.map(lambda v, g: _numerics.ema(v, g, b2, squared=True),
                              state.exp_avg_sq, updates)
    precond = jax.tree.map(lambda v: eps + jnp.sqrt(v / bc2), exp_avg_sq)
    direction = jax.tree.map(lambda m, d: m / d, exp_avg, precond)
    norm = tree_vdot(exp_avg, direction, sd)
    gamma = b1 * state.gamma + (1.0 - b1) * tree_vdot(updates, params, sd)
    iprod = tree_vdot(exp_avg, params, sd)
    tau, shrink, new_lb = _step_size(barf, gamma, iprod, norm, state.lb, alpha, weight_decay,
                                     lower_bound, adapt_lower_bound, bc1)
    out = jax.tree.map(lambda d, p, g: _numerics.cast(-shrink * p - tau * d, g.dtype),
                       direction, params, updates)
    return out, MomoAdamState(count=next_count(state, count),
                              exp_avg=_numerics.cast_like(exp_avg, state.exp_avg),
                              exp_avg_sq=_numerics.cast_like(exp_avg_sq, state.exp_avg_sq),
                              barf=barf.astype(sd), gamma=gamma.astype(sd), lb=new_lb)

  return GradientTransformation(init, update)
