"""`apply_if_finite`: skip steps whose gradients hold NaN or Inf."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics
from gradxform._base import GradientTransformation, _as_transform, transform, update_and_apply
from gradxform._equality import Fn
from gradxform._wrappers.masked import inner_extra


class ApplyIfFiniteState(NamedTuple):
  """State of `apply_if_finite`."""
  notfinite_count: jax.Array  # int32: consecutive non-finite steps up to now (0 after a good one)
  last_finite: jax.Array      # bool: whether the last step's updates were all finite
  total_notfinite: jax.Array  # int32: non-finite steps since init
  inner_state: Any            # the inner transform's state


def all_finite(tree: Any) -> jax.Array:
  """A bool scalar: True when every element of every leaf is finite."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.asarray(True)
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]).all()


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b).astype(jnp.result_type(b)), new, old)


@transform
def apply_if_finite(inner: GradientTransformation,
                    max_consecutive_errors: int) -> GradientTransformation:
  """Runs `inner` only on steps whose incoming updates are all finite.

  On a step whose updates hold a NaN or Inf: the output is zero (in each update's dtype), so
  `apply_updates` leaves the parameters exactly as they were, and the inner state (moments,
  step counter) is kept unchanged; only the counters below move. After more than
  `max_consecutive_errors` bad steps in a row the update is applied anyway (the inner state
  then takes the non-finite values), as Optax's `apply_if_finite` does: a run that only
  produces NaN should fail visibly rather than stall silently.

  Args:
    inner: the transform to protect.
    max_consecutive_errors: how many non-finite steps in a row are skipped (≥ 0).

  State: `ApplyIfFiniteState(notfinite_count, last_finite, total_notfinite, inner_state)`.

  Example:
    >>> tx = gx.apply_if_finite(gx.adam(1e-3), max_consecutive_errors=5)
    >>> state = tx.init(params)
    >>> bad = jax.tree.map(lambda g: g * jnp.nan, grads)
    >>> updates, state = tx.update(bad, state, params)
    >>> updates["b"], int(state.total_notfinite)
    (Array([0., 0.], dtype=float32), 1)

  References:
    Micikevicius et al., "Mixed precision training", ICLR 2018 (skipping steps whose
    gradients overflow).
  """
  where = "apply_if_finite"
  inner = _as_transform(inner, f"{where}: inner")
  max_consecutive_errors = _check.integer(where, "max_consecutive_errors",
                                          max_consecutive_errors, minimum=0)

  def init(params):
    return ApplyIfFiniteState(notfinite_count=_numerics.zero_count(),
                              last_finite=jnp.asarray(True),
                              total_notfinite=_numerics.zero_count(),
                              inner_state=inner.init(params))

  def counters(updates, state):
    """Whether to apply this step, and the state without its inner state."""
    if not isinstance(state, ApplyIfFiniteState):
      raise ValueError(f"{where}.update: expected the ApplyIfFiniteState made by this "
                       f"apply_if_finite's init(), got {type(state).__name__}.")
    finite = all_finite(updates)
    notfinite = jnp.where(finite, 0, _numerics.safe_increment(state.notfinite_count))
    total = jnp.where(finite, state.total_notfinite,
                      _numerics.safe_increment(state.total_notfinite))
    apply = finite | (notfinite > max_consecutive_errors)
    return apply, state._replace(notfinite_count=notfinite.astype(jnp.int32),
                                 last_finite=finite, total_notfinite=total.astype(jnp.int32))

  def update(updates, state, params=None, **extra):
    apply, new_state = counters(updates, state)
    out, inner_state = inner.update(updates, state.inner_state, params,
                                    **inner_extra(extra, None))
    out = jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), out)
    return out, new_state._replace(inner_state=_select(apply, inner_state, state.inner_state))

  def step(grads, state, params):  # `update_and_apply`: the inner step only where it applies
    apply, new_state = counters(grads, state)

    def run():
      new_params, s = update_and_apply(inner, grads, state.inner_state, params)
      return new_params, _numerics.cast_like(s, state.inner_state)

    params, inner_state = _numerics.branch(apply, run, lambda: (params, state.inner_state))
    return params, new_state._replace(inner_state=inner_state)

  return GradientTransformation(init, Fn(update, None, update_and_apply=step))
