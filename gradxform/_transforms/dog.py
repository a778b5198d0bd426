"""Distance over gradients: DoG's and DoWG's parameter-free step sizes.

Both scale the whole update by one scalar: an estimate of the distance from the starting point
to the solution over a running sum of gradient norms. The estimate is the same in both (the
largest distance from the starting point seen so far, `_distance_estimate` below, written once
and shared); DoG divides it by `√(Σ‖g‖²)`, DoWG weights each ‖g‖² by the squared estimate.

The scalars (the estimate and the sums) are kept in the promotion of the parameters' dtypes
with float32 (Optax keeps them in the parameters' lowest dtype, bfloat16 for bfloat16
parameters). The starting point is kept in each parameter's own dtype, as Optax does: it is
subtracted from the parameters, and a rounded copy would make the measured distance, which
starts from ~10⁻⁶ ‖θ₀‖, mostly rounding error.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import GradientTransformation, require_params, transform, trees_checked

INIT_STEP_TAGS = ("distance", "learning_rate", "heuristic")


def scalar_dtype_of(params: Any) -> Any:
  """The dtype of a tree's scalar statistics: its leaves' promotion with float32."""
  return _numerics.compute_dtype(*jax.tree.leaves(params))


def squared_norm(tree: Any, dtype: Any) -> jax.Array:
  """`Σ_leaves Σ x²` in `dtype` (a scalar; 0 for an empty tree)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros([], dtype)
  squares = jnp.stack([jnp.sum(jnp.square(_numerics.cast(x, dtype))) for x in leaves])
  # One stacked vector behind a barrier, as `gx.global_norm` does: a chain of scalar additions
  # compiles in time quadratic in the number of leaves on XLA:CPU.
  return jnp.sum(jax.lax.optimization_barrier(squares))


def _distance_estimate(previous: jax.Array, start: Any, params: Any, *,
                       squared: bool) -> jax.Array:
  """`max(previous, ‖θ − θ₀‖)` (`‖θ − θ₀‖²` when `squared`): the running estimate of the
  distance to the solution shared by DoG (`r̄_t`) and DoWG (`r̄_t²`)."""
  dtype = previous.dtype
  sq = squared_norm(jax.tree.map(lambda p, p0: _numerics.cast(p, dtype)
                                 - _numerics.cast(p0, dtype), params, start), dtype)
  return jnp.maximum(previous, sq if squared else jnp.sqrt(sq))


def _scaled(updates: Any, factor: jax.Array) -> Any:
  return jax.tree.map(lambda u: _numerics.cast(factor * _numerics.cast(u, factor.dtype),
                                               u.dtype), updates)


def check_init_step(where: str, init_step: Any) -> tuple[str, Any]:
  """`init_step` is a pair `(tag, value)` with a known tag and a value > 0."""
  if not (isinstance(init_step, tuple) and len(init_step) == 2):
    raise ValueError(f"{where}: init_step must be a pair (tag, value) with tag one of "
                     f"{INIT_STEP_TAGS}, got {init_step!r}")
  tag, value = init_step
  _check.one_of(where, "init_step tag", tag, INIT_STEP_TAGS)
  return tag, _check.positive(where, "init_step value", value)


class DoGState(NamedTuple):
  """State of `scale_by_dog`."""
  is_init_step: jax.Array   # bool scalar: True until the first update
  init_params: Any          # the starting point θ₀, like params (in the params' dtypes)
  max_dist: jax.Array       # scalar r̄: the largest ‖θ − θ₀‖ so far (r_ε at the start)
  sum_sq_norm_grads: jax.Array  # scalar G: Σ ‖g‖² over the updates so far


@transform(hyperparams=("eps",))
def scale_by_dog(init_step: tuple[str, Any], eps: float = 1e-8) -> GradientTransformation:
  """DoG's step: `u ← (r̄_t / √(G_t + ε)) · u`.

  `r̄_t = max(r̄_{t−1}, ‖θ_t − θ₀‖)` starting from `r̄_0 = r_ε`, and `G_t = G_{t−1} + ‖u_t‖²`
  (norms over the whole tree). `init_step` sets the start `(tag, value)`: `"distance"`:
  `r_ε = value`; `"heuristic"`: `r_ε = value · (1 + ‖θ₀‖)`, the paper's suggestion, so `init`
  must see the actual starting parameters; `"learning_rate"`: `r_ε = 0` and the first step is
  scaled by `value` instead. Equal to Optax's `scale_by_dog` (it keeps the scalars in the
  parameters' lowest dtype, here float32 or wider). No sign flip: follow it with
  `scale_by_learning_rate`. `params` are required.

  Args:
    init_step: `(tag, value)` with tag one of "distance", "learning_rate", "heuristic" and
      value > 0.
    eps: ε ≥ 0 added to `G_t`.

  State: `DoGState(is_init_step, init_params, max_dist, sum_sq_norm_grads)`.

  Example:
    >>> tx = gx.scale_by_dog(("distance", 0.1))
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 4)            # r_ε/‖g‖ · g = 0.1/√(6 · 0.25) · 0.5
    Array([0.0408, 0.0408], dtype=float32)

  References:
    Ivgi, Hinder & Carmon, "DoG is SGD's best friend: a parameter-free dynamic step size
    schedule", ICML 2023 (https://arxiv.org/abs/2302.12022).
  """
  where = "scale_by_dog"
  tag, value = check_init_step(where, init_step)
  eps = _check.non_negative(where, "eps", eps)

  def init(params):
    dtype = scalar_dtype_of(params)
    if tag == "distance":
      r_eps = jnp.asarray(value, dtype)
    elif tag == "heuristic":
      r_eps = value * (1.0 + jnp.sqrt(squared_norm(params, dtype)))
    else:
      r_eps = jnp.zeros([], dtype)
    return DoGState(is_init_step=jnp.asarray(True),
                    init_params=jax.tree.map(jnp.asarray, params),
                    max_dist=jnp.asarray(r_eps, dtype),
                    sum_sq_norm_grads=jnp.zeros([], dtype))

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not trees_checked(extra):
      _tree.check_updates(where, state.init_params, updates)
    max_dist = _distance_estimate(state.max_dist, state.init_params, params, squared=False)
    sum_sq = state.sum_sq_norm_grads + squared_norm(updates, state.sum_sq_norm_grads.dtype)
    step = max_dist / jnp.sqrt(sum_sq + eps)
    if tag == "learning_rate":
      step = jnp.where(state.is_init_step, jnp.asarray(value, step.dtype), step)
    return _scaled(updates, step), DoGState(is_init_step=jnp.asarray(False),
                                            init_params=state.init_params,
                                            max_dist=max_dist, sum_sq_norm_grads=sum_sq)

  return GradientTransformation(init, update)


class DoWGState(NamedTuple):
  """State of `scale_by_dowg`."""
  init_params: Any                # the starting point θ₀, like params (in the params' dtypes)
  weighted_sq_norm_grads: jax.Array  # scalar v: Σ r̄_k² ‖g_k‖² over the updates so far
  estim_sq_dist: jax.Array        # scalar r̄²: the largest ‖θ − θ₀‖² so far (its start value)


@transform(hyperparams=("init_estim_sq_dist", "eps"))
def scale_by_dowg(init_estim_sq_dist: float | None = None,
                  eps: float = 1e-4) -> GradientTransformation:
  """DoWG's step: `u ← (r̄_t² / (√v_t + ε)) · u`.

  `r̄_t² = max(r̄_{t−1}², ‖θ_t − θ₀‖²)` (the estimate DoG keeps, squared) and
  `v_t = v_{t−1} + r̄_t² ‖u_t‖²`: each gradient weighted by the current estimate. Equal to
  Optax's `scale_by_dowg`. No sign flip: follow it with `scale_by_learning_rate`. `params` are
  required.

  Args:
    init_estim_sq_dist: r̄_0² ≥ 0, the initial guess of the squared distance to the solution;
      None: ε.
    eps: ε ≥ 0 added to `√v_t` (and r̄_0² when `init_estim_sq_dist` is None).

  State: `DoWGState(init_params, weighted_sq_norm_grads, estim_sq_dist)`.

  Example:
    >>> tx = gx.scale_by_dowg(init_estim_sq_dist=0.01, eps=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 4)            # r̄²/(r̄ ‖g‖) · g = 0.1/√1.5 · 0.5
    Array([0.0408, 0.0408], dtype=float32)

  References:
    Khaled, Mishchenko & Jin, "DoWG unleashed: an efficient universal parameter-free
    gradient descent method", NeurIPS 2023 (https://arxiv.org/abs/2305.16284).
  """
  where = "scale_by_dowg"
  if init_estim_sq_dist is not None:
    init_estim_sq_dist = _check.non_negative(where, "init_estim_sq_dist", init_estim_sq_dist)
  eps = _check.non_negative(where, "eps", eps)
  start = eps if init_estim_sq_dist is None else init_estim_sq_dist

  def init(params):
    dtype = scalar_dtype_of(params)
    return DoWGState(init_params=jax.tree.map(jnp.asarray, params),
                     weighted_sq_norm_grads=jnp.zeros([], dtype),
                     estim_sq_dist=jnp.asarray(start, dtype))

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not trees_checked(extra):
      _tree.check_updates(where, state.init_params, updates)
    sq_dist = _distance_estimate(state.estim_sq_dist, state.init_params, params, squared=True)
    weighted = state.weighted_sq_norm_grads + sq_dist * squared_norm(updates, sq_dist.dtype)
    step = sq_dist / (jnp.sqrt(weighted) + eps)
    return _scaled(updates, step), DoWGState(init_params=state.init_params,
                                             weighted_sq_norm_grads=weighted,
                                             estim_sq_dist=sq_dist)

  return GradientTransformation(init, update)
