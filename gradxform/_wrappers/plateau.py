"""`reduce_on_plateau`: shrink the updates when the loss stops improving (torch semantics)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics
from gradxform._base import GradientTransformation, transform

_MISSING_VALUE = (
    "reduce_on_plateau.update needs the current loss: call update(updates, state, params, "
    "value=loss) (in a chain, pass value=loss to the chain's update; it reaches every part).")


class ReduceOnPlateauState(NamedTuple):
  """State of `reduce_on_plateau`.

  Fields:
    scale: float32 scalar multiplying the updates (1 at the start).
    best_value: float32 scalar, the best loss so far (+inf at the start).
    plateau_count: int32 scalar, consecutive non-improving steps (torch's `num_bad_epochs`).
    cooldown_count: int32 scalar, steps of cooldown left (torch's `cooldown_counter`).

  Example:
    >>> gx.reduce_on_plateau().init(params)
    ReduceOnPlateauState(scale=Array(1., dtype=float32), best_value=Array(inf, dtype=float32),
      plateau_count=Array(0, dtype=int32), cooldown_count=Array(0, dtype=int32))

  References:
    torch's `ReduceLROnPlateau` attributes (`num_bad_epochs`, `cooldown_counter`); Optax's
    `contrib.ReduceLROnPlateauState`.
  """
  scale: jax.Array
  best_value: jax.Array
  plateau_count: jax.Array
  cooldown_count: jax.Array


@transform
def reduce_on_plateau(*, factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                      cooldown: int = 0, min_scale: float = 0.0,
                      eps: float = 0.0) -> GradientTransformation:
  """Scales the updates by `scale`, cut by `factor` whenever the loss plateaus.

  As torch `ReduceLROnPlateau(mode="min", threshold_mode="rel")` stepped once per update with
  the loss passed as `value=`; `scale` plays the role of `lr / initial_lr`. Each update:

  1. The loss `v` improves when `v < best · (1 − threshold)`: then `best ← v`, `bad ← 0`;
     otherwise `bad ← bad + 1`.
  2. During a cooldown (`cooldown_count > 0`): `cooldown_count ← cooldown_count − 1`, `bad ← 0`.
  3. If `bad > patience`: `scale ← max(scale · factor, min_scale)` (kept unchanged when that
     lowers it by `eps` or less), `cooldown_count ← cooldown`, `bad ← 0`.
  4. The output is `scale · u` with the scale just computed: the loss passed with this step's
     gradient (measured at the current parameters) decides this step's scale, as torch's
     `scheduler.step(loss)` decides the next epoch's learning rate.

  Place it after the learning-rate scaling (or anywhere in a linear chain: it only multiplies).

  Args:
    factor: the cut, in [0, 1).
    patience: non-improving steps tolerated (an integer ≥ 0); the cut happens at `patience + 1`.
    threshold: relative improvement that counts (≥ 0).
    cooldown: steps (≥ 0) after a cut during which the count of bad steps is held at 0.
    min_scale: lower bound of the scale (torch's `min_lr / lr`), in [0, 1].
    eps: smallest cut of the scale that is applied (torch's `eps / lr`; torch's default
      `eps=1e-8` is in learning-rate units, which this transform does not know, so the default
      here is 0: every cut above `min_scale` happens).

  State: `ReduceOnPlateauState(scale, best_value, plateau_count, cooldown_count)`.

  Example:
    >>> tx = gx.chain(gx.sgd(0.1), gx.reduce_on_plateau(factor=0.5, patience=1))
    >>> state = tx.init(params)
    >>> for loss in [3.0, 2.0, 2.0, 2.0]:                  # improves, then plateaus
    ...   updates, state = tx.update(grads, state, params, value=jnp.float32(loss))
    >>> state[1].scale                                      # cut after 2 bad steps
    Array(0.5, dtype=float32)

  References:
    PyTorch, `torch.optim.lr_scheduler.ReduceLROnPlateau`,
    https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.ReduceLROnPlateau.html
  """
  where = "reduce_on_plateau"
  factor = _check.real(where, "factor", factor, ge=0.0, lt=1.0)
  patience = _check.integer(where, "patience", patience, minimum=0)
  threshold = _check.real(where, "threshold", threshold, ge=0.0)
  cooldown = _check.integer(where, "cooldown", cooldown, minimum=0)
  min_scale = _check.real(where, "min_scale", min_scale, ge=0.0, le=1.0)
  eps = _check.real(where, "eps", eps, ge=0.0)

  def init(params):
    del params
    return ReduceOnPlateauState(scale=jnp.ones([], jnp.float32),
                                best_value=jnp.full([], jnp.inf, jnp.float32),
                                plateau_count=jnp.zeros([], jnp.int32),
                                cooldown_count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None, **extra):
    del params
    if extra.get("value") is None:
      raise ValueError(_MISSING_VALUE)
    value = jnp.asarray(extra["value"])
    if value.size != 1:
      raise ValueError(f"{where}.update: value must be a scalar loss, got shape {value.shape}")
    value = value.reshape(()).astype(jnp.float32)
    better = value < state.best_value * (1.0 - threshold)
    best = jnp.where(better, value, state.best_value)
    bad = jnp.where(better, 0, state.plateau_count + 1)
    in_cooldown = state.cooldown_count > 0
    cooldown_count = jnp.where(in_cooldown, state.cooldown_count - 1, state.cooldown_count)
    bad = jnp.where(in_cooldown, 0, bad)
    cut = bad > patience
    reduced = jnp.maximum(state.scale * factor, min_scale)
    scale = jnp.where(cut & (state.scale - reduced > eps), reduced, state.scale)
    cooldown_count = jnp.where(cut, cooldown, cooldown_count)
    bad = jnp.where(cut, 0, bad)
    out = jax.tree.map(lambda u: _numerics.cast(scale * u, u.dtype), updates)
    return out, ReduceOnPlateauState(scale=scale.astype(jnp.float32), best_value=best,
                                     plateau_count=bad.astype(jnp.int32),
                                     cooldown_count=cooldown_count.astype(jnp.int32))

  return GradientTransformation(init, update)
