"""Mechanic (Cutkosky, Defazio & Mehta 2023): learns the scale of any optimizer's updates.

The wrapper keeps the starting point θ₀ and a few scalars per β of a bank of coin-betting
learners (`_tune`, the scalar part of the algorithm, kept apart from the tree arithmetic). The
parameters are always `θ₀ − s · Δ`, where −Δ sums the inner optimizer's updates and
`s = Σ s_i` is the learned scale; Δ is recomputed from θ each step (the paper's memory-light
form).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics
from gradxform._base import GradientTransformation, _as_transform, require_params, transform
from gradxform._transforms.clip import global_norm
from gradxform._transforms.dog import scalar_dtype_of
from gradxform._wrappers.masked import inner_extra


class MechanicState(NamedTuple):
  """State of `mechanize`."""
  base_optimizer_state: Any  # the inner optimizer's state
  count: jax.Array           # int32 scalar: updates so far
  r: jax.Array               # (num_betas,): each learner's reward (β-discounted)
  m: jax.Array               # (num_betas,): each learner's running max of |h| (+ ε)
  v: jax.Array               # (num_betas,): each learner's β²-discounted Σ h²
  s: jax.Array               # (num_betas,): each learner's scale; their sum scales the steps
  x0: Any                    # the starting point θ₀ (the params of the first update)


def _tune(state: MechanicState, h: jax.Array, s_init: Any, eps: Any
          ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """One step of the bank of scalar learners, given `h = ⟨g, Δ⟩`: the new `(r, m, v, s)`."""
  n = state.s.shape[0]
  betas = jnp.asarray([1.0 - 0.1 ** i for i in range(1, n + 1)], state.s.dtype)
  clipped = jnp.clip(h, -state.m, state.m)   # not in the paper: added by its authors later
  m = jnp.maximum(betas * state.m, jnp.abs(h) + eps)
  v = jnp.square(betas) * state.v + jnp.square(h)
  r = betas * state.r + clipped * state.s
  wealth = (s_init / n) * m + jnp.maximum(r, 0.0)
  return r, m, v, wealth / (jnp.sqrt(v) + eps)


@transform(hyperparams=("weight_decay", "eps", "s_init"))
def mechanize(base_optimizer: GradientTransformation, weight_decay: float = 1e-2,
              eps: float = 1e-8, s_init: float = 1e-6,
              num_betas: int = 6) -> GradientTransformation:
  """Mechanic: `θ ← θ₀ − s_t Δ_t`, where −Δ sums the inner updates and the scale s is learned.

  With `u_t` the inner optimizer's update and `s = Σ_i s_i`: `Δ_{t−1} = (θ₀ − θ_t)/(s + ε)`,
  `g' = g + λ s ‖g‖/(‖θ‖ + ε) · θ`, `h = ⟨g', Δ_{t−1}⟩`; each learner `i` with
  `β_i = 1 − 10⁻ⁱ` updates `m_i ← max(β_i m_i, |h| + ε)`, `v_i ← β_i² v_i + h²`,
  `r_i ← β_i r_i + clip(h, ±m_i) s_i` (the old `m_i`, `s_i`) and
  `s_i ← (s_init/n · m_i + max(r_i, 0))/(√v_i + ε)`; the parameters move to
  `θ₀ − s_new (Δ_{t−1} − u_t)`, and the output is the step there from θ. θ₀ is the params of
  the first update (not of `init`), so a run that loads pretrained weights after `init` starts
  from them. Equal to `optax.contrib.mechanize`.

  The output is a step to a point, as `gx.lookahead`'s: put `mechanize` last in a chain.
  Give the inner optimizer its usual learning rate (or 1.0, with any schedule): Mechanic
  learns the factor. `params` are required.

  Args:
    base_optimizer: the inner optimizer (any transform; gets the `**extra` arguments).
    weight_decay: λ ≥ 0, Mechanic's own decay of `g'` (not the inner optimizer's).
    eps: ε ≥ 0.
    s_init: the starting scale, > 0 (shared among the learners).
    num_betas: n ≥ 1 learners, β_i = 0.9, 0.99, ….

  State: `MechanicState(base_optimizer_state, count, r, m, v, s, x0)`.

  Example:
    >>> tx = gx.mechanize(gx.sgd(1.0))
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"] / 1e-6, 2)     # −s g: s = s_init = 10⁻⁶ after the first step
    Array([-0.5, -0.5], dtype=float32)

  References:
    Cutkosky, Defazio & Mehta, "Mechanic: a learning rate tuner", NeurIPS 2023
    (https://arxiv.org/abs/2306.00144).
  """
  where = "mechanize"
  inner = _as_transform(base_optimizer, f"{where}: base_optimizer")
  weight_decay = _check.non_negative(where, "weight_decay", weight_decay)
  eps = _check.non_negative(where, "eps", eps)
  s_init = _check.positive(where, "s_init", s_init)
  n = _check.integer(where, "num_betas", num_betas, minimum=1)

  def init(params):
    dtype = scalar_dtype_of(params)
    zeros = jnp.zeros([n], dtype)
    return MechanicState(base_optimizer_state=inner.init(params),
                         count=_numerics.zero_count(), r=zeros, m=zeros, v=zeros,
                         s=jnp.full([n], s_init, dtype),
                         x0=jax.tree.map(jnp.asarray, params))

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not isinstance(state, MechanicState):
      raise ValueError(f"{where}.update: expected the MechanicState made by this mechanize's "
                       f"init(), got {type(state).__name__}.")
    inner_updates, inner_state = inner.update(updates, state.base_optimizer_state, params,
                                              **inner_extra(extra, None))
    first = state.count == 0
    x0 = jax.tree.map(lambda p, p0: jnp.where(first, p, p0).astype(p0.dtype), params,
                      state.x0)
    dtype = state.s.dtype
    s_sum = jnp.sum(state.s)
    decay = (weight_decay * s_sum * global_norm(updates).astype(dtype)
             / (global_norm(params).astype(dtype) + eps))
    cd = lambda x: _numerics.cast(x, _numerics.compute_dtype(x, s_sum))
    grads = jax.tree.map(lambda g, p: cd(g) + decay * cd(p), updates, params)
    delta_prev = jax.tree.map(lambda p, p0: (cd(p0) - cd(p)) / (s_sum + eps), params, x0)
    # ⟨g', Δ⟩ with Optax's sign convention for Δ (its updates are negated steps).
    h = _vdot(grads, delta_prev, dtype)
    r, m, v, s = _tune(state, h, s_init, eps)
    s_new = jnp.sum(s)

    def step(p, p0, d, u):
      target = cd(p0) - s_new * (d - cd(u))
      return _numerics.cast(target - cd(p), u.dtype)

    out = jax.tree.map(step, params, x0, delta_prev, inner_updates)
    return out, MechanicState(base_optimizer_state=inner_state,
                              count=_numerics.safe_increment(state.count), r=r, m=m, v=v, s=s,
                              x0=x0)

  return GradientTransformation(init, update)


def _vdot(a: Any, b: Any, dtype: Any) -> jax.Array:
  """`Σ_leaves Σ a·b` in `dtype`."""
  leaves = [jnp.sum(_numerics.cast(x, dtype) * _numerics.cast(y, dtype))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  if not leaves:
    return jnp.zeros([], dtype)
  return jnp.sum(jax.lax.optimization_barrier(jnp.stack(leaves)))
