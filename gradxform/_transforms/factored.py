"""Adafactor's primitives: the factored second moment and the scaling by the parameters' rms."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, next_count, require_params, step_count,
                             transform, trees_checked)
from gradxform._transforms.stateless import stateless


def _decay_rate_pow(step: jax.Array, exponent: Any, dtype: Any) -> jax.Array:
  """Adafactor's second-moment decay `β̂_t = 1 − t^(−exponent)`, `t = step + 1`, in `dtype`."""
  t = jnp.asarray(step + 1).astype(dtype)
  return 1.0 - t ** (-exponent)


class FactoredState(NamedTuple):
  """State of `scale_by_factored_rms`.

  A factored leaf keeps `v_row` and `v_col`, each of the leaf's shape without one of its two
  factored axes (n + m numbers for an n × m matrix), and an empty `v`; any other leaf keeps a
  full `v` and empty `v_row`, `v_col`. Empty means shape `(0,)`: no memory, and a tree that
  does not depend on which leaves are factored.
  """
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  v_row: Any               # per leaf: EMA of g² averaged over the largest axis (torch: the last)
  v_col: Any               # per leaf: EMA of g² averaged over the 2nd largest (torch: the 2nd last)
  v: Any                   # per leaf: the EMA of g² where the leaf is not factored


def _factored_axes(shape: tuple[int, ...], factored: bool, min_dim: int,
                   torch_form: bool) -> tuple[int, int] | None:
  """`(d1, d0)`: `v_row` averages over axis `d0`, `v_col` over `d1`; None: not factored.

  Optax's form factors the two largest axes when the smaller of them has at least `min_dim`
  entries; torch's the last two axes (rows `-2`, columns `-1`) when both have.
  """
  if not factored or len(shape) < 2:
    return None
  if torch_form:
    n = len(shape)
    return (n - 2, n - 1) if min(shape[-2:]) >= min_dim else None
  order = np.argsort(shape)
  if shape[order[-2]] < min_dim:
    return None
  return int(order[-2]), int(order[-1])


def _empty(dtype: Any) -> jax.Array:
  return jnp.zeros((0,), dtype)


@transform(shares_count=True, hyperparams=("decay_rate", "epsilon"))
def scale_by_factored_rms(factored: bool = True, decay_rate: float = 0.8, step_offset: int = 0,
                          min_dim_size_to_factor: int = 128, epsilon: float | None = 1e-30,
                          decay_rate_fn: Callable[[jax.Array, Any], jax.Array] | None = None,
                          *, torch_form: bool = False) -> GradientTransformation:
  """Divides by a factored root mean square of the gradient, Adafactor's preconditioner.

  With `β̂_t = decay_rate_fn(t − step_offset, decay_rate)` (default `1 − (t + 1)^(−0.8)`, `t`
  the number of updates before this one, in float32 as Optax computes it) and `G = g² + ε`: a
  matrix leaf keeps two moving averages, `r ← β̂ r + (1 − β̂) mean G` over its largest axis
  (`v_row`) and `c ← β̂ c + (1 − β̂) mean G` over its second largest (`v_col`), and outputs
  `g / √V̂` with the rank-one estimate `V̂ = r cᵀ / mean(r)`: O(n + m) memory instead of O(nm).
  Leaves with fewer than two axes of at least `min_dim_size_to_factor` entries (all leaves,
  with `factored=False`) keep the full `v ← β̂ v + (1 − β̂) G` and output `g / √v`. A leaf of
  more than two axes is factored over its two largest, batched over the others. Equal to
  Optax's `scale_by_factored_rms`.

  `torch_form=True` is torch.optim.Adafactor's placement of the axes and of ε (its `eps1`):
  a leaf of two or more axes is factored over its last two axes (rows and columns; both at
  least `min_dim_size_to_factor` long, so pass 0 to factor every matrix as torch does), `G = g²`,
  `V̂ = r cᵀ / max(mean(r), ε)` and the output is `g / √max(V̂, ε²)` (unfactored:
  `g / √max(v, ε²)`); `epsilon=None` is the machine epsilon of the parameter's dtype, torch's
  default. torch refuses complex parameters; here a complex leaf is its real view (a trailing
  axis of 2), which the torch form would factor.

  Args:
    factored: factor the second moment of matrix leaves.
    decay_rate: the exponent of the default decay schedule (torch's `beta2_decay` is its
      negative), ≥ 0.
    step_offset: subtracted from the step before `decay_rate_fn` (to restart the schedule when
      fine-tuning).
    min_dim_size_to_factor: factor a leaf only when both factored axes have this many entries.
    epsilon: ε ≥ 0 (see above; None in the torch form only).
    decay_rate_fn: `(step, decay_rate) -> β̂`, e.g. one capped below 1 (Zhai et al. 2021);
      None: the power schedule above (in float32 as Optax; in the torch form in float64
      under `jax_enable_x64`, as torch).
    torch_form: torch.optim.Adafactor's axes and ε (see above).

  State: `FactoredState(count, v_row, v_col, v)`.

  Example:
    >>> tx = gx.scale_by_factored_rms(epsilon=0.0)
    >>> updates, state = tx.update(grads, tx.init(params))
    >>> updates["b"]                          # first step: β̂ = 0, so g/√(g²) = sign(g)
    Array([1., 1.], dtype=float32)

  References:
    Shazeer & Stern, "Adafactor: Adaptive learning rates with sublinear memory cost", ICML
    2018 (https://arxiv.org/abs/1804.04235). Zhai et al., "Scaling vision transformers", CVPR
    2022 (https://arxiv.org/abs/2106.04560), for a capped `decay_rate_fn`.
  """
  where = "scale_by_factored_rms"
  decay_rate = _check.non_negative(where, "decay_rate", decay_rate)
  step_offset = _check.integer(where, "step_offset", step_offset)
  min_dim = _check.integer(where, "min_dim_size_to_factor", min_dim_size_to_factor, minimum=0)
  _check.requires(where, epsilon is not None or torch_form,
                  "epsilon must be a number, got None (None means the machine epsilon in the "
                  "torch form only: torch_form=True)")
  if epsilon is not None:
    epsilon = _check.non_negative(where, "epsilon", epsilon)
  decay_rate_fn = _check.function(where, "decay_rate_fn", decay_rate_fn, optional=True)

  def axes(x):
    return _factored_axes(x.shape, factored, min_dim, torch_form)

  def init(params):
    _tree.check_floating(where, params, "params")

    def leaf(p):
      dtype = jnp.result_type(p)
      dims = axes(p)
      if dims is None:
        return _empty(dtype), _empty(dtype), jnp.zeros_like(p)
      d1, d0 = dims
      reduced = lambda axis: jnp.zeros_like(jax.eval_shape(lambda x: jnp.sum(x, axis), p))
      return reduced(d0), reduced(d1), _empty(dtype)

    v_row, v_col, v = _tree.map_unzip(leaf, 3, params)
    return FactoredState(count=_numerics.zero_count(), v_row=v_row, v_col=v_col, v=v)

  def check(state, updates):
    _tree.check_same_structure(where, state.v, updates)
    for path, u, r, c, v in zip(_tree.leaf_paths(updates), jax.tree.leaves(updates),
                                jax.tree.leaves(state.v_row), jax.tree.leaves(state.v_col),
                                jax.tree.leaves(state.v)):
      dims = axes(u)
      want = ((0,), (0,), u.shape) if dims is None else (
          tuple(np.delete(u.shape, dims[1])), tuple(np.delete(u.shape, dims[0])), (0,))
      if (r.shape, c.shape, v.shape) != want:
        raise ValueError(
            f"{where}.update: the state of leaf {path} has (v_row, v_col, v) shapes "
            f"{(r.shape, c.shape, v.shape)}, but updates of shape {u.shape} need {want}: pass "
            "the state that init() made for these parameters.")

  def leaf(g, v_row, v_col, v, decay):
    cd = _numerics.compute_dtype(g, v_row, v_col, v)
    g32 = _numerics.cast(g, cd)
    eps = jnp.finfo(g.dtype).eps if epsilon is None else epsilon
    g2 = g32 * g32 if torch_form else g32 * g32 + eps
    dims = axes(g)
    if dims is None:
      new_v = _numerics.ema(v, g2, decay)
      if torch_form:
        out = g32 * jax.lax.rsqrt(jnp.maximum(new_v, eps * eps))
      else:
        out = g32 * new_v ** -0.5
      return (_numerics.cast(out, g.dtype), v_row, v_col, _numerics.cast(new_v, v.dtype))
    d1, d0 = dims
    new_row = _numerics.ema(v_row, jnp.mean(g2, axis=d0), decay)
    new_col = _numerics.ema(v_col, jnp.mean(g2, axis=d1), decay)
    if torch_form:              # r: (..., n), c: (..., m); V̂ = r cᵀ / max(mean r, ε)
      row_mean = jnp.maximum(jnp.mean(new_row, axis=-1, keepdims=True), eps)
      estimate = new_row[..., :, None] * new_col[..., None, :] / row_mean[..., None]
      out = g32 * jax.lax.rsqrt(jnp.maximum(estimate, eps * eps))
    else:
      reduced_d1 = d1 - 1 if d1 > d0 else d1
      row_factor = (new_row / jnp.mean(new_row, axis=reduced_d1, keepdims=True)) ** -0.5
      col_factor = new_col ** -0.5
      out = g32 * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
    return (_numerics.cast(out, g.dtype), _numerics.cast(new_row, v_row.dtype),
            _numerics.cast(new_col, v_col.dtype), v)

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      check(state, updates)
    count = step_count(state, extra)
    if decay_rate_fn is None:
      # In float32 as Optax evaluates it (also under x64, where a float64 schedule would part
      # from Optax by 1e-7 per step); in the torch form in double under x64, as torch does.
      power_dtype = _numerics.scalar_dtype() if torch_form else jnp.float32
      decay = _decay_rate_pow(count - step_offset, decay_rate, power_dtype)
    else:
      decay = decay_rate_fn(count - step_offset, decay_rate)
    out, v_row, v_col, v = _tree.map_unzip(lambda g, r, c, v: leaf(g, r, c, v, decay), 4,
                                           updates, state.v_row, state.v_col, state.v)
    return out, FactoredState(count=next_count(state, count), v_row=v_row, v_col=v_col, v=v)

  return GradientTransformation(init, update)


@transform(hyperparams=("min_scale",))
def scale_by_param_block_rms(min_scale: float = 1e-3) -> GradientTransformation:
  """Multiplies each leaf's update by its parameter's root mean square, at least `min_scale`.

  `u ← u · max(rms(θ), min_scale)` with `rms(θ) = √(mean(θ²))` over the leaf (a block: a
  weight vector or matrix), Adafactor's relative step size. No state. Equal to Optax's
  `scale_by_param_block_rms`; torch.optim.Adafactor's `eps2` is `min_scale`. A complex leaf
  is its real view, so its rms is `√(Σ|z|²/(2n))`, not Optax's `√(Σ|z|²/n)`.

  Args:
    min_scale: the smallest factor, ≥ 0 (parameters at zero still move).

  State: `EmptyState()`.

  Example:
    >>> tx = gx.scale_by_param_block_rms()
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # 0.5 · rms(θ_b) = 0.5 · 0.1
    Array([0.05, 0.05], dtype=float32)

  References:
    Shazeer & Stern, "Adafactor: Adaptive learning rates with sublinear memory cost", ICML
    2018 (https://arxiv.org/abs/1804.04235), section 8 (relative step size).
  """
  where = "scale_by_param_block_rms"
  min_scale = _check.non_negative(where, "min_scale", min_scale)

  def one(u, p):
    cd = _numerics.compute_dtype(u, p)
    p32 = _numerics.cast(p, cd)
    factor = jnp.maximum(jnp.sqrt(jnp.mean(p32 * p32)), min_scale)
    return _numerics.cast(_numerics.cast(u, cd) * factor, u.dtype)

  def apply(updates, params):
    params = require_params(where, params)
    _tree.check_same_structure(where, params, updates, "params", "updates")
    return jax.tree.map(one, updates, params)

  return stateless(apply)
