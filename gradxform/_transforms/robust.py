"""Robustness transforms: NaNs zeroed, gradients centralized, updates normalized, parameters
kept non-negative."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (EmptyState, GradientTransformation, elementwise, require_params,
                             transform, trees_checked)
from gradxform._transforms.clip import global_norm
from gradxform._transforms.stateless import stateless


class ZeroNansState(NamedTuple):
  """State of `zero_nans`: Optax's layout."""
  # a tree like params of bool scalars: True where that leaf's last update held a NaN
  found_nan: Any


@transform
def zero_nans() -> GradientTransformation:
  """Replaces every NaN in the updates by 0, and records which leaves held one.

  `u ← 0 where u is NaN, else u`, element-wise (±inf pass unchanged). The state is Optax's:
  `found_nan`, one bool scalar per leaf, True when that leaf held a NaN at the last `update`
  (all False after `init`). The transform never reads it; it is there for logging
  (`gx.tree_get(state, "found_nan")`). A complex leaf is its real view, so a NaN real part
  zeroes the real part only (Optax zeroes the whole entry).

  State: `ZeroNansState(found_nan)`.

  Example:
    >>> tx = gx.zero_nans()
    >>> bad = {"w": grads["w"], "b": jnp.array([jnp.nan, 0.5])}
    >>> updates, state = tx.update(bad, tx.init(params))
    >>> updates["b"]
    Array([0. , 0.5], dtype=float32)
    >>> state.found_nan
    {'b': Array(True, dtype=bool), 'w': Array(False, dtype=bool)}

  References:
    Optax's `zero_nans` (https://github.com/google-deepmind/optax), the same state.
  """

  def init(params):
    return ZeroNansState(found_nan=jax.tree.map(lambda p: jnp.zeros([], jnp.bool_), params))

  def update(updates, state, params=None, **extra):
    del state, params, extra
    found = jax.tree.map(lambda u: jnp.any(jnp.isnan(u)), updates)
    zeroed = jax.tree.map(lambda u: jnp.where(jnp.isnan(u), jnp.zeros_like(u), u), updates)
    return zeroed, ZeroNansState(found_nan=found)

  return GradientTransformation(init, update)


def _subtract_mean(u: jax.Array) -> jax.Array:
  if u.ndim <= 1:
    return u
  x = _numerics.cast(u, _numerics.compute_dtype(u))
  return _numerics.cast(x - jnp.mean(x, axis=tuple(range(1, u.ndim)), keepdims=True), u.dtype)


@transform
def centralize() -> GradientTransformation:
  """Gradient centralization: subtracts from each leaf of rank ≥ 2 its mean over every axis but
  the first.

  `u[i, ...] ← u[i, ...] − mean(u[i, ...])` for each index `i` of the leading axis; scalars and
  vectors are unchanged (Optax's `centralize`; Yong et al. centralize each weight vector of a
  layer). No state. A complex leaf is its real view: the trailing axis of 2 counts as one more
  axis, so the mean is taken over real and imaginary parts together.

  State: `EmptyState()`.

  Example:
    >>> tx = gx.centralize()
    >>> tx.update(params, tx.init(params))[0]["w"]   # rows (1, −2), (0.5, 3) minus their means
    Array([[ 1.5 , -1.5 ],
           [-1.25,  1.25]], dtype=float32)

  References:
    Yong, Huang, Hua & Zhang, "Gradient centralization: a new optimization technique for deep
    neural networks", ECCV 2020 (https://arxiv.org/abs/2004.01461); Optax's `centralize`.
  """
  return stateless(lambda updates, params: jax.tree.map(_subtract_mean, updates))


@transform(hyperparams=("scale_factor", "eps"))
def normalize_by_update_norm(scale_factor: float = 1.0, eps: float = 1e-6
                             ) -> GradientTransformation:
  """Divides the updates by their global L2 norm (plus ε), times `scale_factor`.

  `u ← u / ((‖u‖ + ε) / scale_factor)`, `‖u‖` over all leaves, computed in this order as
  Optax's `normalize_by_update_norm` does. No state. A negative `scale_factor` turns a
  gradient into a descent step.

  Args:
    scale_factor: the norm of the result (up to ε), any non-zero number.
    eps: ε ≥ 0 added to the norm, so a zero update stays zero.

  State: `EmptyState()`.

  Example:
    >>> tx = gx.normalize_by_update_norm(scale_factor=-1.0)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> round(float(gx.global_norm(updates)), 5), float(updates["b"][0]) < 0
    (1.0, True)

  References:
    Optax's `normalize_by_update_norm` (https://github.com/google-deepmind/optax); normalized
    gradient descent: Nesterov, "Introductory lectures on convex optimization", 2004, §3.2.
  """
  where = "normalize_by_update_norm"
  scale_factor = _check.non_zero(where, "scale_factor", scale_factor)
  eps = _check.non_negative(where, "eps", eps)

  def apply(updates, params):
    del params
    denom = (global_norm(updates) + eps) / scale_factor
    return jax.tree.map(lambda u: _numerics.cast(u / denom, u.dtype), updates)

  return stateless(apply)


@transform
def keep_params_nonnegative() -> GradientTransformation:
  """Changes the updates so that no parameter becomes negative: place it last in a chain.

  `u ← −θ where θ + u < 0, else u`, element-wise, so the new parameter `θ + u` is `max(θ + u,
  0)`. Optax's `keep_params_nonnegative`. A parameter that is already negative is moved to 0
  by its next update. Needs `params`; no state.

  State: `EmptyState()`.

  Example:
    >>> tx = gx.chain(gx.sgd(1.0), gx.keep_params_nonnegative())
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> gx.apply_updates(params, updates)["w"]       # θ − 0.5, floored at 0
    Array([[0.5, 0. ],
           [0. , 2.5]], dtype=float32)

  References:
    Optax's `keep_params_nonnegative` (https://github.com/google-deepmind/optax); projected
    gradient descent onto the non-negative orthant (Bertsekas, "Nonlinear programming", 1999).
  """
  where = "keep_params_nonnegative"

  def init(params):
    del params
    return EmptyState()

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not trees_checked(extra):
      _tree.check_updates(where, params, updates, "params", "updates")
    out = jax.tree.map(lambda u, p: _numerics.cast(jnp.where(p + u < 0, -p, u), u.dtype),
                       updates, params)
    return out, state

  return elementwise(GradientTransformation(init, update))
