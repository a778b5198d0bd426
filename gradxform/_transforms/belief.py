"""Adam-like preconditioners with another second moment: AdaBelief's belief, Yogi's additive one."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, next_count, step_count, transform,
                             trees_checked)


def _is_zero(x: Any) -> bool:
  return isinstance(x, float) and x == 0.0


class BeliefState(NamedTuple):
  """State of `scale_by_belief`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                  # EMA m of the updates, like params
  nu: Any                  # belief s: EMA of (g − m)² plus ε_root each step, like params


@transform(shares_count=True, hyperparams=("b1", "b2", "eps", "eps_root"))
def scale_by_belief(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16,
                    eps_root: float = 1e-16, *, nesterov: bool = False,
                    state_dtype: Any = None) -> GradientTransformation:
  """AdaBelief's direction: the first moment over the root of the belief in it.

  `m ← β1 m + (1 − β1) g`, `s ← β2 s + (1 − β2)(g − m)² + ε_root` (the new `m`; ε_root is
  stored in `s`, as in the paper's Algorithm 2 and Optax), `m̂ = m/(1 − β1^t)`,
  `ŝ = s/(1 − β2^t)`; output `m̂ / (√ŝ + ε)`. `nesterov=True` (Optax's flag) replaces `m̂` by
  `β1 m/(1 − β1^{t+1}) + (1 − β1) g/(1 − β1^t)`. Equal to Optax's `scale_by_belief`.

  Args:
    b1, b2: decays of the first moment and of the belief, in [0, 1).
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 added to `s` every step.
    nesterov: Dozat's look-ahead of the first moment.
    state_dtype: dtype of `mu` and `nu` (None: each parameter's dtype).

  State: `BeliefState(count, mu, nu)`.

  Example:
    >>> tx = gx.scale_by_belief(eps=0.0, eps_root=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> jnp.round(updates["b"], 4)            # m̂ = g = 0.5, ŝ = (g − m)² = 0.45²
    Array([1.1111, 1.1111], dtype=float32)

  References:
    Zhuang et al., "AdaBelief optimizer: adapting stepsizes by the belief in observed
    gradients", NeurIPS 2020 (https://arxiv.org/abs/2010.07468).
  """
  where = "scale_by_belief"
  b1 = _check.unit_interval(where, "b1", b1)
  b2 = _check.unit_interval(where, "b2", b2)
  eps = _check.non_negative(where, "eps", eps)
  eps_root = _check.non_negative(where, "eps_root", eps_root)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return BeliefState(count=_numerics.zero_count(),
                       mu=_numerics.state_zeros(params, state_dtype),
                       nu=_numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.mu, updates)
    count = step_count(state, extra)
    corr1 = _numerics.one_minus_decay_power(b1, count + 1)
    corr2 = _numerics.one_minus_decay_power(b2, count + 1)
    corr1_next = _numerics.one_minus_decay_power(b1, count + 2) if nesterov else None

    def leaf(g, m, s):
      cd = _numerics.compute_dtype(g, m, s)
      g32 = _numerics.cast(g, cd)
      new_m = _numerics.ema(m, g32, b1)
      new_s = _numerics.ema(s, g32 - new_m, b2, squared=True)
      if not _is_zero(eps_root):
        new_s = new_s + eps_root
      if nesterov:
        m_hat = b1 * new_m / corr1_next + (1.0 - b1) * g32 / corr1
      else:
        m_hat = new_m / corr1
      out = m_hat / (jnp.sqrt(new_s / corr2) + eps)
      return (_numerics.cast(out, g.dtype), _numerics.cast(new_m, m.dtype),
              _numerics.cast(new_s, s.dtype))

    out, mu, nu = _tree.map_unzip(leaf, 3, updates, state.mu, state.nu)
    return out, BeliefState(count=next_count(state, count), mu=mu, nu=nu)

  return elementwise(GradientTransformation(init, update))


class YogiState(NamedTuple):
  """State of `scale_by_yogi`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                  # first moment m, like params
  nu: Any                  # Yogi's second moment v, like params


@transform(shares_count=True, hyperparams=("b1", "b2", "eps", "eps_root",
                                           "initial_accumulator_value"))
def scale_by_yogi(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3, eps_root: float = 0.0,
                  initial_accumulator_value: float = 1e-6, *,
                  state_dtype: Any = None) -> GradientTransformation:
  """Yogi's direction: Adam's, with an additive second-moment update.

  `m ← β1 m + (1 − β1) g`, `v ← v − (1 − β2) sign(v − g²) g²` (v moves towards g² by at most
  `(1 − β2) g²`, where Adam moves by `(1 − β2)|v − g²|`), `m̂ = m/(1 − β1^t)`,
  `v̂ = v/(1 − β2^t)`; output `m̂ / (√(v̂ + ε_root) + ε)`. Both moments start at
  `initial_accumulator_value`, as in Optax (the paper starts at 0 and does not correct the
  bias); equal to Optax's `scale_by_yogi`.

  Args:
    b1, b2: decays in [0, 1).
    eps: ε ≥ 0 outside the root (10⁻³ in the paper). eps_root: ε_root ≥ 0 inside it.
    initial_accumulator_value: the starting value of `m` and `v`, ≥ 0.
    state_dtype: dtype of `mu` and `nu` (None: each parameter's dtype).

  State: `YogiState(count, mu, nu)`.

  Example:
    >>> tx = gx.scale_by_yogi(eps=0.0, initial_accumulator_value=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> jnp.round(updates["b"], 4)            # as Adam on the first step: m̂/√v̂ = 1
    Array([1., 1.], dtype=float32)

  References:
    Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive methods for nonconvex optimization",
    NeurIPS 2018.
  """
  where = "scale_by_yogi"
  b1 = _check.unit_interval(where, "b1", b1)
  b2 = _check.unit_interval(where, "b2", b2)
  eps = _check.non_negative(where, "eps", eps)
  eps_root = _check.non_negative(where, "eps_root", eps_root)
  initial = _check.non_negative(where, "initial_accumulator_value", initial_accumulator_value)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return YogiState(count=_numerics.zero_count(),
                     mu=_numerics.state_full(params, initial, state_dtype),
                     nu=_numerics.state_full(params, initial, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.mu, updates)
    count = step_count(state, extra)
    corr1 = _numerics.one_minus_decay_power(b1, count + 1)
    corr2 = _numerics.one_minus_decay_power(b2, count + 1)

    def leaf(g, m, v):
      cd = _numerics.compute_dtype(g, m, v)
      g32, v32 = _numerics.cast(g, cd), _numerics.cast(v, cd)
      new_m = _numerics.ema(m, g32, b1)
      g2 = jnp.square(g32)
      new_v = v32 - (1.0 - b2) * jnp.sign(v32 - g2) * g2
      v_hat = new_v / corr2
      if not _is_zero(eps_root):
        v_hat = v_hat + eps_root
      out = (new_m / corr1) / (jnp.sqrt(v_hat) + eps)
      return (_numerics.cast(out, g.dtype), _numerics.cast(new_m, m.dtype),
              _numerics.cast(new_v, v.dtype))

    out, mu, nu = _tree.map_unzip(leaf, 3, updates, state.mu, state.nu)
    return out, YogiState(count=next_count(state, count), mu=mu, nu=nu)

  return elementwise(GradientTransformation(init, update))
