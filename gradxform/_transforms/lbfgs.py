"""The L-BFGS direction: the gradient times a limited-memory inverse-Hessian estimate."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, next_count, require_params, step_count,
                             transform, trees_checked)


def _vdot(x: Any, y: Any) -> jax.Array:
  """`⟨x, y⟩` over two trees of real arrays, summed at the highest precision."""
  parts = jax.tree.leaves(jax.tree.map(
      lambda a, b: jnp.vdot(a, b, precision=jax.lax.Precision.HIGHEST), x, y))
  return sum(parts[1:], parts[0]) if parts else jnp.asarray(0.0)


def _sq_norm(x: Any) -> jax.Array:
  parts = [jnp.sum(jnp.square(a)) for a in jax.tree.leaves(x)]
  return sum(parts[1:], parts[0]) if parts else jnp.asarray(0.0)


def _axpy(a: jax.Array, x: Any, y: Any) -> Any:
  """`y + a x`, each leaf in y's dtype."""
  return jax.tree.map(lambda xi, yi: _numerics.cast(yi + a * xi, yi.dtype), x, y)


class ScaleByLBFGSState(NamedTuple):
  """State of `scale_by_lbfgs` (Optax's field names)."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  params: Any               # θ_k of the last update, like params
  updates: Any              # g_k of the last update, like params
  diff_params_memory: Any   # s_i = θ_{i+1} − θ_i, ring buffer: each leaf (memory_size, *shape)
  diff_updates_memory: Any  # y_i = g_{i+1} − g_i, the same layout
  weights_memory: jax.Array  # ρ_i = 1/⟨y_i, s_i⟩ (0 where ⟨y_i, s_i⟩ = 0), (memory_size,)


def _precondition_by_lbfgs(updates: Any, diff_params_memory: Any, diff_updates_memory: Any,
                          weights_memory: jax.Array, identity_scale: jax.Array,
                          memory_idx: jax.Array) -> Any:
  """`H g` by the two-loop recursion, oldest pair at `memory_idx` of the ring buffers."""
  size = weights_memory.shape[0]
  order = (memory_idx + jnp.arange(size)) % size       # oldest to newest

  def pair(i):
    return (jax.tree.map(lambda m: m[i], diff_params_memory),
            jax.tree.map(lambda m: m[i], diff_updates_memory))

  def backward(q, i):                                  # newest to oldest
    s, y = pair(i)
    alpha = weights_memory[i] * _vdot(s, q)
    return _axpy(-alpha, y, q), alpha

  q, alphas = jax.lax.scan(backward, updates, order, reverse=True)
  r = jax.tree.map(lambda x: _numerics.cast(identity_scale * x, x.dtype), q)

  def forward(r, i_alpha):                             # oldest to newest
    i, alpha = i_alpha
    s, y = pair(i)
    beta = weights_memory[i] * _vdot(y, r)
    return _axpy(alpha - beta, s, r), None

  r, _ = jax.lax.scan(forward, r, (order, alphas))
  return r


@transform(shares_count=True, accumulates=True)
def scale_by_lbfgs(memory_size: int = 10, scale_init_precond: bool = True
                   ) -> GradientTransformation:
  """The L-BFGS direction `H_k g_k`, with `H_k` built from the last `memory_size` steps.

  With `s_i = θ_{i+1} − θ_i`, `y_i = g_{i+1} − g_i` and `ρ_i = 1/⟨y_i, s_i⟩`,
  `H_k = V_{k−1}ᵀ … V_{k−m}ᵀ (γ_k I) V_{k−m} … V_{k−1} + Σ ρ_i (…) s_i s_iᵀ (…)` with
  `V_i = I − ρ_i y_i s_iᵀ`, applied to `g_k` by the two-loop recursion. The initial scale is
  `γ_k = ⟨s_{k−1}, y_{k−1}⟩/‖y_{k−1}‖²` (`scale_init_precond`, else 1), and on the first step
  `γ_0 = min(1, 1/‖g_0‖)`, so that the first step has length at most 1 (Optax's heuristic).
  The memory is updated before the direction is computed, so a line search after this part
  sees the pair of the step it accepted. The output is a descent direction to be negated
  (`gx.lbfgs` chains `scale(−1)` and a line search). Equal to `optax.scale_by_lbfgs`.

  Declared `accumulates`: a part after it in a chain receives as `grad` the gradient this part
  received, not its output (a line search needs `∇f(θ)`, see `gx.scale_by_zoom_linesearch`).

  Args:
    memory_size: m ≥ 1, the number of `(s, y)` pairs kept.
    scale_init_precond: use `γ_k` above rather than 1.

  State: `ScaleByLBFGSState(count, params, updates, diff_params_memory, diff_updates_memory,
  weights_memory)`; the memories hold `memory_size` copies of the parameters each.

  Example:
    >>> tx = gx.scale_by_lbfgs()
    >>> direction, state = tx.update(grads, tx.init(params), params)
    >>> direction["b"]                    # first step: γ_0 g = g/‖g‖, ‖g‖ = √(6 · 0.5²)
    Array([0.40824828, 0.40824828], dtype=float32)

  References:
    Liu & Nocedal, "On the limited memory BFGS method for large scale optimization",
    Mathematical Programming 1989; Nocedal & Wright, "Numerical optimization", Springer 1999,
    Algorithms 7.4 and 7.5.
  """
  where = "scale_by_lbfgs"
  memory_size = _check.integer(where, "memory_size", memory_size, minimum=1)

  def init(params):
    leaves = jax.tree.leaves(params)
    dt = _numerics.compute_dtype(*leaves) if leaves else _numerics.scalar_dtype()
    stacked = jax.tree.map(lambda p: jnp.zeros((memory_size,) + jnp.shape(p), jnp.result_type(p)),
                           params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    return ScaleByLBFGSState(count=_numerics.zero_count(), params=zeros, updates=zeros,
                             diff_params_memory=stacked, diff_updates_memory=stacked,
                             weights_memory=jnp.zeros((memory_size,), dt))

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not trees_checked(extra):
      _tree.check_updates(where, state.params, updates)
    count = step_count(state, extra)
    started = count > 0
    dt = state.weights_memory.dtype

    # 1. The newest pair (s, y, ρ), zero on the first step, into the ring buffers.
    s = jax.tree.map(lambda p, q: jnp.where(started, p - q, jnp.zeros_like(p)),
                     params, state.params)
    y = jax.tree.map(lambda g, h: jnp.where(started, g - h, jnp.zeros_like(g)),
                     updates, state.updates)
    curvature = _numerics.cast(_vdot(y, s), dt)
    rho = jnp.where(curvature == 0.0, 0.0, 1.0 / jnp.where(curvature == 0.0, 1.0, curvature))
    newest = (count - 1) % memory_size
    put = lambda m, x: m.at[newest].set(_numerics.cast(x, m.dtype))  # noqa: E731
    s_mem = jax.tree.map(put, state.diff_params_memory, s)
    y_mem = jax.tree.map(put, state.diff_updates_memory, y)
    rho_mem = put(state.weights_memory, rho)

    # 2. The scale γ of the initial inverse Hessian.
    if scale_init_precond:
      y_sq = _numerics.cast(_sq_norm(y), dt)
      gamma = jnp.where(y_sq > 0.0, curvature / jnp.where(y_sq > 0.0, y_sq, 1.0), 1.0)
      g_norm = jnp.sqrt(_numerics.cast(_sq_norm(jax.lax.stop_gradient(updates)), dt))
      gamma = jnp.where(started, gamma, jnp.minimum(1.0, 1.0 / g_norm))
    else:
      gamma = jnp.asarray(1.0, dt)

    # 3. H g by the two-loop recursion.
    out = _precondition_by_lbfgs(updates, s_mem, y_mem, rho_mem, gamma, count % memory_size)
    return out, ScaleByLBFGSState(count=next_count(state, count), params=params,
                                  updates=updates, diff_params_memory=s_mem,
                                  diff_updates_memory=y_mem, weights_memory=rho_mem)

  return GradientTransformation(init, update)
