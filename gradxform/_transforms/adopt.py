"""ADOPT's direction: the gradient normalised by the previous second moment, then averaged."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, next_count, step_count, transform,
                             trees_checked)


class AdoptState(NamedTuple):
  """State of `scale_by_adopt`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                  # EMA m of the normalised (clipped) gradients, like params
  nu: Any                  # EMA v of the squared gradients (g_0² after the first step)


def quarter_power(step: jax.Array) -> jax.Array:
  """ADOPT's default clipping bound `c_t = t^{1/4}` (`t` = the updates before this one)."""
  return step ** 0.25


@transform(shares_count=True, accumulates=True, hyperparams=("b1", "b2", "eps"))
def scale_by_adopt(b1: float = 0.9, b2: float = 0.9999, eps: float = 1e-6, *,
                   nesterov: bool = False, use_clipping: bool = True,
                   clip_value_fn: Callable[[jax.Array], jax.Array] = quarter_power,
                   state_dtype: Any = None) -> GradientTransformation:
  """ADOPT's direction: `m ← β1 m + (1 − β1) clip(g / max(√v_{t−1}, ε), c_t)`, output `m`.

  The second moment that normalises `g` is the one *before* this step, and it is updated
  after: `v ← β2 v + (1 − β2) g²`. On the first step (`t = 0`) the transform only sets
  `v = g_0²` and outputs zeros (the paper's `v_0 = g_0²`, `m_0 = 0`, no parameter step);
  from the next step on, `c_t = clip_value_fn(t)` with `t` = 1, 2, … (default `t^{1/4}`, the
  paper's clipped ADOPT; `use_clipping=False` is its unclipped form). `nesterov=True` outputs
  `β1 m + (1 − β1) ĝ` with the new `m` (Optax's flag; not in the paper). No bias correction.
  Equal to Optax's `optax.contrib.scale_by_adopt`.

  Args:
    b1: β1 in [0, 1), decay of the first moment.
    b2: β2 in [0, 1), decay of the second moment.
    eps: ε ≥ 0, the floor of `√v` in the normalisation.
    nesterov: output the look-ahead first moment.
    use_clipping: clip the normalised gradient to `[−c_t, c_t]`.
    clip_value_fn: `c_t` as a function of the int32 step `t` (0 on the first update).
    state_dtype: dtype of `mu` and `nu` (None: each parameter's dtype).

  State: `AdoptState(count, mu, nu)`.

  Example:
    >>> tx = gx.scale_by_adopt()
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state)
    >>> updates["b"]                          # first step: v = g², no direction yet
    Array([0., 0.], dtype=float32)
    >>> updates, state = tx.update(grads, state)
    >>> round(float(updates["b"][0]), 6)      # (1 − β1) · clip(g/|g|, 1)
    0.1

  References:
    Taniguchi et al., "ADOPT: modified Adam can converge with any β2 with the optimal rate",
    NeurIPS 2024 (https://arxiv.org/abs/2411.02853).
  """
  where = "scale_by_adopt"
  b1 = _check.unit_interval(where, "b1", b1)
  b2 = _check.unit_interval(where, "b2", b2)
  eps = _check.non_negative(where, "eps", eps)
  if use_clipping:
    _check.function(where, "clip_value_fn", clip_value_fn)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return AdoptState(count=_numerics.zero_count(),
                      mu=_numerics.state_zeros(params, state_dtype),
                      nu=_numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.mu, updates)
    count = step_count(state, extra)
    first = count == 0
    bound = clip_value_fn(count) if use_clipping else None

    def leaf(g, m, v):
      cd = _numerics.compute_dtype(g, m, v)
      g32, v32 = _numerics.cast(g, cd), _numerics.cast(v, cd)
      d1 = jnp.where(first, jnp.ones([], cd), jnp.asarray(b1, cd))   # m stays 0 at t = 0
      d2 = jnp.where(first, jnp.zeros([], cd), jnp.asarray(b2, cd))  # v = g² at t = 0
      new_v = _numerics.ema(v32, g32, d2, squared=True)
      normed = g32 / jnp.maximum(jnp.sqrt(v32), eps)
      if bound is not None:
        normed = jnp.clip(normed, -bound, bound)
      normed = jnp.where(first, jnp.zeros_like(normed), normed)     # g/ε unused at t = 0
      new_m = _numerics.ema(m, normed, d1)
      out = _numerics.ema(new_m, normed, d1) if nesterov else new_m
      return (_numerics.cast(out, g.dtype), _numerics.cast(new_m, m.dtype),
              _numerics.cast(new_v, v.dtype))

    out, mu, nu = _tree.map_unzip(leaf, 3, updates, state.mu, state.nu)
    return out, AdoptState(count=next_count(state, count), mu=mu, nu=nu)

  return elementwise(GradientTransformation(init, update))
