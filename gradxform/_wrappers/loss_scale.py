"""Dynamic loss scaling for float16 training (torch's `GradScaler`), as a wrapper transform."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics
from gradxform._base import GradientTransformation, _as_transform, transform
from gradxform._wrappers.finite import _select, all_finite
from gradxform._wrappers.masked import inner_extra
from gradxform._wrappers.state_access import tree_get


class DynamicLossScaleState(NamedTuple):
  """State of `dynamic_loss_scale`."""
  loss_scale: jax.Array      # float32: the factor the loss is multiplied by before differentiating
  growth_tracker: jax.Array  # int32: consecutive finite steps since the scale last changed
  last_finite: jax.Array     # bool: whether the last step's scaled gradients were all finite
  inner_state: Any           # the inner transform's state


@transform
def dynamic_loss_scale(inner: GradientTransformation, *, init_scale: float = 2.0 ** 16,
                       growth_factor: float = 2.0, backoff_factor: float = 0.5,
                       growth_interval: int = 2000) -> GradientTransformation:
  """Dynamic loss scaling: unscales the gradients, skips steps that overflowed, adapts the scale.

  The training step multiplies the loss by `gx.loss_scale(state)` before differentiating (so
  small float16 gradients do not flush to zero) and passes the scaled gradients here. Then,
  as torch's `GradScaler` (`step` and `update`): if any scaled gradient is Inf or NaN, the step
  is skipped (zero output, inner state unchanged) and `scale ← backoff_factor · scale`, the
  growth tracker reset to 0; otherwise `inner` gets the gradients times `1/scale` (the
  reciprocal rounded to float32, as torch does) and the tracker grows by one, and when it
  reaches `growth_interval` the scale is multiplied by `growth_factor` (if the result is
  finite) and the tracker reset. Equal to `torch.amp.GradScaler` around a torch optimizer:
  same scales, same skipped steps, same parameters. Optax has no loss scaling (JMP's
  `DynamicLossScale` has the same rule with a period in place of the interval).

  Make it the outermost transform: what runs before it sees scaled gradients (put gradient
  clipping inside it, in `inner`). With `inject_hyperparams`, wrap the inner optimizer, not
  this wrapper.

  Args:
    inner: the transform that receives the unscaled gradients.
    init_scale: the first scale, > 0 (torch's default 2¹⁶).
    growth_factor: > 1, applied after `growth_interval` finite steps in a row.
    backoff_factor: in (0, 1), applied on every step that overflows.
    growth_interval: a positive int.

  State: `DynamicLossScaleState(loss_scale, growth_tracker, last_finite, inner_state)`.

  Example (float16 parameters; the first two scaled gradients overflow):
    >>> tx = gx.dynamic_loss_scale(gx.sgd(0.1), init_scale=2.0 ** 15)
    >>> p16 = jax.tree.map(lambda p: p.astype(jnp.float16), params)
    >>> state = tx.init(p16)
    >>> def scaled_grads(p, state):
    ...   scale = gx.loss_scale(state).astype(jnp.float16)
    ...   return jax.grad(lambda p: scale * sum(jnp.sum(x * x) for x in jax.tree.leaves(p)))(p)
    >>> for _ in range(3):
    ...   updates, state = tx.update(scaled_grads(p16, state), state, p16)
    ...   p16 = gx.apply_updates(p16, updates)
    ...   print(gx.loss_scale(state), p16["w"][1, 1])
    16384.0 3.0
    8192.0 3.0
    8192.0 2.4

  References:
    Micikevicius et al., "Mixed precision training", ICLR 2018 (loss scaling); torch's
    `torch.amp.GradScaler` (https://pytorch.org/docs/stable/amp.html).
  """
  where = "dynamic_loss_scale"
  inner = _as_transform(inner, f"{where}: inner")
  init_scale = _check.real(where, "init_scale", init_scale, gt=0.0)
  growth_factor = _check.real(where, "growth_factor", growth_factor, gt=1.0)
  backoff_factor = _check.real(where, "backoff_factor", backoff_factor, gt=0.0, lt=1.0)
  growth_interval = _check.integer(where, "growth_interval", growth_interval, minimum=1)

  def init(params):
    return DynamicLossScaleState(loss_scale=jnp.asarray(init_scale, jnp.float32),
                                 growth_tracker=_numerics.zero_count(),
                                 last_finite=jnp.asarray(True),
                                 inner_state=inner.init(params))

  def update(updates, state, params=None, **extra):
    if not isinstance(state, DynamicLossScaleState):
      raise ValueError(f"{where}.update: expected the DynamicLossScaleState made by this "
                       f"dynamic_loss_scale's init(), got {type(state).__name__}.")
    finite = all_finite(updates)
    scale = state.loss_scale.astype(jnp.float32)
    inv_scale = (1.0 / scale.astype(_numerics.scalar_dtype())).astype(jnp.float32)

    def unscale(g):
      cd = _numerics.compute_dtype(g)
      return _numerics.cast(_numerics.cast(g, cd) * inv_scale.astype(cd), g.dtype)

    unscaled = jax.tree.map(unscale, updates)
    out, inner_state = inner.update(unscaled, state.inner_state, params,
                                    **inner_extra(extra, None))
    out = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), out)
    inner_state = _select(finite, inner_state, state.inner_state)
    # torch's _amp_update_scale_.
    successful = state.growth_tracker + 1
    grow = finite & (successful >= growth_interval)
    grown = scale * jnp.float32(growth_factor)
    grown = jnp.where(jnp.isfinite(grown), grown, scale)
    new_scale = jnp.where(finite, jnp.where(grow, grown, scale),
                          scale * jnp.float32(backoff_factor))
    tracker = jnp.where(finite & ~grow, successful, 0)
    return out, DynamicLossScaleState(loss_scale=new_scale.astype(jnp.float32),
                                      growth_tracker=tracker.astype(jnp.int32),
                                      last_finite=finite, inner_state=inner_state)

  return GradientTransformation(init, update)


def loss_scale(state: Any) -> jax.Array:
  """The current loss scale of the `dynamic_loss_scale` in `state` (a float32 scalar).

  Multiply the loss by it before differentiating; `state` is the optimizer state, wherever
  `dynamic_loss_scale` sits in it (also inside `inject_hyperparams` or a chain).

  Example:
    >>> state = gx.dynamic_loss_scale(gx.adam(1e-3)).init(params)
    >>> gx.loss_scale(state)
    Array(65536., dtype=float32)

  References:
    Micikevicius et al., "Mixed precision training", ICLR 2018.
  """
  if isinstance(state, DynamicLossScaleState):
    return state.loss_scale
  return tree_get(state, "loss_scale")
