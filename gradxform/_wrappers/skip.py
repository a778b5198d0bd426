"""`skip_large_updates`: skip steps whose gradient's squared global norm is too large."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics
from gradxform._base import GradientTransformation, _as_transform, transform
from gradxform._wrappers.finite import _select
from gradxform._wrappers.masked import inner_extra


class SkipLargeUpdatesState(NamedTuple):
  """State of `skip_large_updates`."""
  skipped_count: jax.Array  # int32: consecutive skipped steps up to now (0 after a taken one)
  last_skipped: jax.Array   # bool: whether the last step was skipped
  total_skipped: jax.Array  # int32: skipped steps since init
  norm_squared: jax.Array   # float: the last step's squared global norm (for logging)
  inner_state: Any          # the inner transform's state


def _squared_global_norm(tree: Any) -> jax.Array:
  """`Σ ‖x‖²` over all leaves, in at least float32 (NaN or Inf if any entry is)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros([], _numerics.scalar_dtype())
  sums = [jnp.sum(jnp.square(_numerics.cast(x, _numerics.compute_dtype(x)))) for x in leaves]
  return sum(sums[1:], sums[0])


@transform(hyperparams=("max_squared_norm",))
def skip_large_updates(inner: GradientTransformation, max_squared_norm: float, *,
                       max_consecutive_errors: int | None = None) -> GradientTransformation:
  """Runs `inner` only on steps whose incoming updates have `‖g‖² < max_squared_norm`.

  `‖g‖²` is the squared global norm (over all leaves) of the updates `inner` would receive.
  A step with `‖g‖² ≥ max_squared_norm`, or with a NaN or Inf anywhere (the norm is then not
  finite), is skipped: the output is zero (so `apply_updates` leaves the parameters as they
  were) and the inner state is kept unchanged. This is Optax's `skip_large_updates` rule
  (its `should_skip_update_fn` for `optax.MultiSteps`), as an `apply_if_finite`-style
  wrapper. With `max_consecutive_errors=n`, after more than `n` skipped steps in a row the
  update is applied anyway (as `apply_if_finite` does); None (default): never.

  Args:
    inner: the transform to protect.
    max_squared_norm: the threshold on `‖g‖²`, > 0.
    max_consecutive_errors: None, or how many steps in a row may be skipped (≥ 0).

  State: `SkipLargeUpdatesState(skipped_count, last_skipped, total_skipped, norm_squared,
  inner_state)`.

  Example:
    >>> tx = gx.skip_large_updates(gx.sgd(0.1), max_squared_norm=1.0)   # ‖grads‖² = 1.5
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> updates["b"], int(state.total_skipped)
    (Array([0., 0.], dtype=float32), 1)
    >>> small = jax.tree.map(lambda g: 0.1 * g, grads)
    >>> updates, state = tx.update(small, state, params)
    >>> updates["b"]
    Array([-0.005, -0.005], dtype=float32)

  References:
    Optax's `skip_large_updates` (https://github.com/google-deepmind/optax). Chowdhery et
    al., "PaLM: scaling language modeling with Pathways", 2022 (skipping batches around loss
    spikes).
  """
  where = "skip_large_updates"
  inner = _as_transform(inner, f"{where}: inner")
  max_squared_norm = _check.positive(where, "max_squared_norm", max_squared_norm)
  if max_consecutive_errors is not None:
    max_consecutive_errors = _check.integer(where, "max_consecutive_errors",
                                            max_consecutive_errors, minimum=0)

  def init(params):
    return SkipLargeUpdatesState(skipped_count=_numerics.zero_count(),
                                 last_skipped=jnp.asarray(False),
                                 total_skipped=_numerics.zero_count(),
                                 norm_squared=jnp.zeros([], _numerics.scalar_dtype()),
                                 inner_state=inner.init(params))

  def update(updates, state, params=None, **extra):
    if not isinstance(state, SkipLargeUpdatesState):
      raise ValueError(f"{where}.update: expected the SkipLargeUpdatesState made by this "
                       f"skip_large_updates's init(), got {type(state).__name__}.")
    norm_sq = _squared_global_norm(updates)
    skip = jnp.logical_not(norm_sq < max_squared_norm)     # True for NaN as well
    skipped = jnp.where(skip, _numerics.safe_increment(state.skipped_count), 0)
    total = jnp.where(skip, _numerics.safe_increment(state.total_skipped), state.total_skipped)
    apply = jnp.logical_not(skip)
    if max_consecutive_errors is not None:
      apply = apply | (skipped > max_consecutive_errors)
    out, inner_state = inner.update(updates, state.inner_state, params,
                                    **inner_extra(extra, None))
    out = jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), out)
    inner_state = _select(apply, inner_state, state.inner_state)
    return out, SkipLargeUpdatesState(
        skipped_count=skipped.astype(jnp.int32), last_skipped=skip,
        total_skipped=total.astype(jnp.int32),
        norm_squared=norm_sq.astype(state.norm_squared.dtype), inner_state=inner_state)

  return GradientTransformation(init, update)
