"""COCOB-Backprop: coordinate-wise coin betting (Orabona & Tommasi 2017, Algorithm 2)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, require_params, transform,
                             trees_checked)


class COCOBState(NamedTuple):
  """State of `scale_by_cocob`."""
  init_particles: Any        # the starting point θ₀, like params (in the params' dtypes)
  cumulative_gradients: Any  # C = −Σ g, like params
  scale: Any                 # L: the largest |g| so far (ε at the start), like params
  subgradients: Any          # G = Σ |g|, like params
  reward: Any                # R: the wealth won so far, max(R − g (θ − θ₀), 0), like params


@transform(hyperparams=("alpha", "eps"))
def scale_by_cocob(alpha: float = 100.0, eps: float = 1e-8, *,
                   state_dtype: Any = None) -> GradientTransformation:
  """COCOB's step: bet a fraction of the wealth won so far, coordinate by coordinate.

  Per coordinate, with `g` the incoming update: `L ← max(L, |g|)`, `G ← G + |g|`,
  `R ← max(R − g (θ − θ₀), 0)`, `C ← C − g`; the new point is
  `θ₀ + C (L + R) / (L · max(G + L, α L))` and the output is the step to it from θ
  (`apply_updates` lands there). The output already points downhill: do not follow it with
  `scale_by_learning_rate` (put a learning rate *before* it, unflipped, as `gx.cocob` does).
  Equal to Optax's `scale_by_cocob`. `params` are required.

  Args:
    alpha: α ≥ 0, which caps the fraction bet in the first steps (100 in the paper).
    eps: ε > 0, the starting value of `L` (so an all-zero gradient does not divide by 0).
    state_dtype: dtype of `C`, `L`, `G` and `R` (None: each parameter's dtype); the starting
      point is kept in the parameters' dtypes.

  State: `COCOBState(init_particles, cumulative_gradients, scale, subgradients, reward)`.

  Example:
    >>> tx = gx.scale_by_cocob()
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # C (L + R)/(L · α L) = −0.5 · 0.5/(0.5 · 50)
    Array([-0.01, -0.01], dtype=float32)

  References:
    Orabona & Tommasi, "Training deep networks without learning rates through coin betting",
    NeurIPS 2017 (https://arxiv.org/abs/1705.07795), Algorithm 2.
  """
  where = "scale_by_cocob"
  alpha = _check.non_negative(where, "alpha", alpha)
  eps = _check.positive(where, "eps", eps)
  state_dtype = _check.state_dtype(where, state_dtype, int8=False)

  def init(params):
    def zeros():  # each tree its own buffers, so that the state may be donated to a jitted step
      return _numerics.state_zeros(params, state_dtype)

    return COCOBState(init_particles=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
                      cumulative_gradients=zeros(),
                      scale=jax.tree.map(lambda z: jnp.full_like(z, eps), zeros()),
                      subgradients=zeros(), reward=zeros())

  def leaf(g, p, p0, c, big_l, big_g, r):
    cd = _numerics.compute_dtype(g, p, p0, c, big_l, big_g, r)
    g, p, p0, c, big_l, big_g, r = (_numerics.cast(x, cd) for x in (g, p, p0, c, big_l,
                                                                      big_g, r))
    new_l = jnp.maximum(big_l, jnp.abs(g))
    new_g = big_g + jnp.abs(g)
    new_r = jnp.maximum(r - g * (p - p0), 0.0)
    new_c = c - g
    bet = new_c / (new_l * jnp.maximum(new_g + new_l, alpha * new_l)) * (new_l + new_r)
    return -p + (p0 + bet), new_c, new_l, new_g, new_r

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not trees_checked(extra):
      _tree.check_updates(where, state.init_particles, updates)
      _tree.check_updates(where, state.scale, updates)
    out, c, big_l, big_g, r = _tree.map_unzip(
        leaf, 5, updates, params, state.init_particles, state.cumulative_gradients,
        state.scale, state.subgradients, state.reward)
    like = _numerics.cast_like
    return like(out, updates), COCOBState(
        init_particles=state.init_particles,
        cumulative_gradients=like(c, state.cumulative_gradients),
        scale=like(big_l, state.scale), subgradients=like(big_g, state.subgradients),
        reward=like(r, state.reward))

  return elementwise(GradientTransformation(init, update))
