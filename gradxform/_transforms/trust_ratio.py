"""Layer-wise trust ratio: each leaf's update rescaled by `‖θ‖ / ‖u‖` (LARS, LAMB, Fromage)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (EmptyState, GradientTransformation, require_params, transform,
                             trees_checked)


def leaf_norm(x: jax.Array, min_norm: Any = 0.0) -> jax.Array:
  """`max(‖x‖₂, min_norm)` of one whole leaf (Frobenius for a matrix), in float32 or wider.

  `‖x‖ ≤ min_norm` gives `min_norm` (Optax's `safe_norm`); the root is never taken of 0, so
  the gradient of this function is finite everywhere (0 at x = 0).
  """
  x = _numerics.cast(x, _numerics.compute_dtype(x))
  squares = jnp.sum(jnp.square(x))
  positive = squares > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)
  return jnp.where(norm <= min_norm, min_norm, norm)


@transform(hyperparams=("min_norm", "trust_coefficient", "eps"))
def scale_by_trust_ratio(min_norm: float = 0.0, trust_coefficient: float = 1.0,
                         eps: float = 0.0) -> GradientTransformation:
  """Rescales each leaf by its trust ratio: `u ← u · c ‖θ‖ / (‖u‖ + ε)`.

  The norms are of the whole leaf (one "layer"), each first raised to at least `min_norm`;
  where either norm is 0 the ratio is 1 (a zero parameter, e.g. a bias at initialization, or a
  zero update is left as it is). No state; needs the parameters. Equal to Optax's
  `scale_by_trust_ratio`. A complex leaf's norm is that of its real view (torch's
  `view_as_real`), which is the same number as the complex 2-norm.

  Args:
    min_norm: the least value of both norms, ≥ 0 (0: no floor).
    trust_coefficient: c ≥ 0, a factor on the ratio (LARS's η, 10⁻³ in the paper).
    eps: ε ≥ 0 added to the update's norm.

  State: `EmptyState()`.

  Example:
    >>> tx = gx.scale_by_trust_ratio()
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # g · ‖θ_b‖/‖g_b‖ = 0.5 · √0.02/√0.5
    Array([0.1, 0.1], dtype=float32)

  References:
    You, Gitman & Ginsburg, "Large batch training of convolutional networks", 2017
    (https://arxiv.org/abs/1708.03888).
  """
  where = "scale_by_trust_ratio"
  min_norm = _check.non_negative(where, "min_norm", min_norm)
  trust_coefficient = _check.non_negative(where, "trust_coefficient", trust_coefficient)
  eps = _check.non_negative(where, "eps", eps)

  def leaf(u, p):
    param_norm, update_norm = leaf_norm(p, min_norm), leaf_norm(u, min_norm)
    ratio = trust_coefficient * param_norm / (update_norm + eps)
    ratio = jnp.where((param_norm == 0.0) | (update_norm == 0.0), 1.0, ratio)
    return _numerics.cast(_numerics.cast(u, ratio.dtype) * ratio, u.dtype)

  def init(params):
    del params
    return EmptyState()

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not trees_checked(extra):
      _tree.check_updates(where, params, updates, "params", "updates")
    return jax.tree.map(leaf, updates, params), state

  return GradientTransformation(init, update)
