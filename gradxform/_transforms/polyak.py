"""Polyak's step size: the update scaled by the loss gap over the squared gradient norm.

The first of the transforms that need the loss: their `update` takes it as `value=`
(`update(grads, state, params, value=loss)`); a chain passes `value` on to every part.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _check, _numerics
from gradxform._base import GradientTransformation, EmptyState, transform

#: Below this a squared norm counts as zero and no step is taken (float64's ε, as Optax).
TINY = float(np.finfo(np.float64).eps)


def loss_value(where: str, extra: dict[str, Any]) -> jax.Array:
  """The loss passed as `update(..., value=loss)`, with a clear error when it is missing."""
  value = extra.get("value")
  if value is None:
    raise ValueError(
        f"{where}.update needs the loss: call update(grads, state, params, value=loss), e.g. "
        "with `loss, grads = jax.value_and_grad(loss_fn)(params)` (a chain passes value= on "
        "to its parts).")
  return jnp.asarray(value)


def tree_vdot(a: Any, b: Any, dtype: Any) -> jax.Array:
  """`Σ_leaves Σ a·b` in `dtype` (0 for an empty tree)."""
  total = jnp.zeros([], dtype)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    total = total + jnp.sum(_numerics.cast(x, dtype) * _numerics.cast(y, dtype))
  return total


def tree_dtype(tree: Any) -> Any:
  """The dtype of the loss-side scalars: the leaves' promotion, at least float32."""
  return _numerics.compute_dtype(*[jnp.asarray(x) for x in jax.tree.leaves(tree)])


@transform(hyperparams=("f_min", "max_learning_rate", "eps"))
def scale_by_polyak(f_min: float = 0.0, max_learning_rate: float = 1.0, eps: float = 0.0,
                    variant: str = "sps") -> GradientTransformation:
  """Polyak's step size: `u ← min((f − f*) / (‖u‖² + ε), γ_max) · u`. No state.

  `f` is the loss passed as `update(updates, state, params, value=f)`, `‖u‖` the global norm
  of the incoming updates (all leaves together). Where `‖u‖² + ε` is at most float64's
  machine ε the step is 0. `variant="sps+"` uses the positive part `max(f − f*, 0)` of the
  gap (Garrigos et al.), so a loss below `f*` never turns the step into an ascent. Equal to
  Optax's `scale_by_polyak`.

  Args:
    f_min: f*, a lower bound on (a guess at) the minimum of the loss.
    max_learning_rate: γ_max ≥ 0, the largest step.
    eps: ε ≥ 0 added to the squared norm.
    variant: `"sps"` or `"sps+"`.

  State: `EmptyState()`.

  Example:
    >>> tx = gx.scale_by_polyak()
    >>> updates, _ = tx.update(grads, tx.init(params), value=0.3)
    >>> updates["b"]                          # ‖g‖² = 6 · 0.25: 0.5 · 0.3/1.5
    Array([0.1, 0.1], dtype=float32)

  References:
    Loizou, Vaswani, Laradji & Lacoste-Julien, "Stochastic Polyak step-size for SGD: an
    adaptive learning rate for fast convergence", AISTATS 2021
    (https://arxiv.org/abs/2002.10542); Garrigos, Gower & Schaipp, "Function value learning:
    adaptive learning rates based on the Polyak stepsize and function splitting in ERM", 2023
    (https://arxiv.org/abs/2307.14528).
  """
  where = "scale_by_polyak"
  f_min = _check.at_least(where, "f_min", f_min, -math.inf)
  max_learning_rate = _check.non_negative(where, "max_learning_rate", max_learning_rate)
  eps = _check.non_negative(where, "eps", eps)
  _check.one_of(where, "variant", variant, ("sps", "sps+"))

  def init(params):
    del params
    return EmptyState()

  def update(updates, state, params=None, **extra):
    del params
    value = loss_value(where, extra)
    dtype = tree_dtype(updates)
    denom = tree_vdot(updates, updates, dtype) + eps
    gap = value.astype(dtype) - f_min
    if variant == "sps+":
      gap = jnp.maximum(gap, 0.0)
    small = denom <= TINY
    step = jnp.where(small, 0.0,
                     jnp.minimum(gap / jnp.where(small, 1.0, denom), max_learning_rate))
    return jax.tree.map(lambda u: _numerics.cast(step * u, u.dtype), updates), state

  return GradientTransformation(init, update)
