"""Training-loop helpers, pure and jit-friendly: early stopping and snapshot ensembles."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import GradientTransformation, require_params, transform
from gradxform._equality import by_value
from gradxform._wrappers.state_access import tree_get

# ---------------------------------------------------------------------------------------------
# Early stopping.


class EarlyStoppingState(NamedTuple):
  """State of `early_stopping`."""
  best_value: jax.Array   # float32: the best evaluation so far (+inf / -inf before any)
  best_params: Any        # the parameters that gave it
  bad_count: jax.Array    # int32: evaluations since the last improvement
  should_stop: jax.Array  # bool: patience ran out (stays True)
  num_evals: jax.Array    # int32: evaluations seen


class EarlyStopping(NamedTuple):
  """A pure pair: `init(params) -> state`, `update(state, value, params) -> state`."""
  init: Callable[[Any], EarlyStoppingState]
  update: Callable[[EarlyStoppingState, Any, Any], EarlyStoppingState]


@by_value
def early_stopping(patience: int, *, min_delta: float = 0.0, mode: str = "min") -> EarlyStopping:
  """Stops after `patience` evaluations without improvement and keeps the best parameters.

  An evaluation improves when `value < best − min_delta` (mode "min"; "max": `value > best +
  min_delta`). Improvement: `best ← value`, `best_params ← params`, `bad_count ← 0`; else
  `bad_count ← bad_count + 1`, and `should_stop` becomes True once `bad_count ≥ patience`.
  After that the state no longer changes. Jit-friendly: no Python branching on values.

  Args:
    patience: evaluations without improvement before stopping (int ≥ 1).
    min_delta: the smallest change that counts as an improvement (≥ 0).
    mode: "min" (a loss) or "max" (an accuracy).

  Returns:
    `EarlyStopping(init, update)`; equal arguments give equal objects.

  Example:
    >>> es = gx.early_stopping(patience=2)
    >>> es_state = es.init(params)
    >>> for val_loss in [0.5, 0.4, 0.45, 0.41]:            # once per evaluation
    ...   es_state = es.update(es_state, val_loss, params)
    >>> bool(es_state.should_stop), round(float(es_state.best_value), 4)
    (True, 0.4)
    >>> params = es_state.best_params

  References:
    Prechelt, "Early stopping — but when?", Neural Networks: Tricks of the Trade, 1998.
  """
  where = "early_stopping"
  patience = _check.integer(where, "patience", patience, minimum=1)
  min_delta = _check.non_negative(where, "min_delta", min_delta)
  _check.one_of(where, "mode", mode, ("min", "max"))
  sign = 1.0 if mode == "min" else -1.0

  def init(params):
    return EarlyStoppingState(best_value=jnp.asarray(sign * jnp.inf, jnp.float32),
                              best_params=jax.tree.map(jnp.asarray, params),
                              bad_count=_numerics.zero_count(),
                              should_stop=jnp.asarray(False),
                              num_evals=_numerics.zero_count())

  def update(state, value, params):
    _tree.check_same_structure(f"{where}.update", state.best_params, params, "state", "params")
    value = jnp.asarray(value, jnp.float32)
    better = sign * value < sign * state.best_value - min_delta
    live = jnp.logical_not(state.should_stop)
    take = better & live
    best_params = jax.tree.map(lambda p, b: jnp.where(take, p, b).astype(b.dtype), params,
                               state.best_params)
    bad = jnp.where(live, jnp.where(better, 0, state.bad_count + 1), state.bad_count)
    return EarlyStoppingState(best_value=jnp.where(take, value, state.best_value),
                              best_params=best_params, bad_count=bad.astype(jnp.int32),
                              should_stop=state.should_stop | (bad >= patience),
                              num_evals=_numerics.safe_increment(state.num_evals))

  return EarlyStopping(init, update)


# ---------------------------------------------------------------------------------------------
# Snapshot ensembles.


class SnapshotState(NamedTuple):
  """State of `snapshot_ensemble`."""
  num_updates: jax.Array  # int32: updates so far (not `count`: see ParamAverageState)
  cycle_end: jax.Array  # int32: the update count at which the current cycle ends
  period: jax.Array     # int32: the current cycle's length
  num_taken: jax.Array  # int32: snapshots taken so far (the buffer keeps the last n)
  snapshots: Any        # like params, each leaf with a leading axis of size n


@transform
def snapshot_ensemble(num_snapshots: int, first_period: int, *,
                      period_mult: float = 1.0) -> GradientTransformation:
  """Collects the parameters at the end of each SGDR cycle; passes updates through.

  Cycles as `sgdr_schedule(first_period, period_mult=...)`: `T_0 = first_period`,
  `T_i = ⌊T_{i−1} · period_mult⌋`. After the update that completes a cycle (update number
  `T_0`, `T_0 + T_1`, ...), the parameters `params + updates` go into slot
  `num_taken mod num_snapshots` of a fixed-size buffer (the last `num_snapshots` cycles are
  kept). Place it last in a chain whose learning rate is the matching SGDR schedule; predict
  with `ensemble_predict`.

  Args:
    num_snapshots: buffer size n ≥ 1 (the paper's M).
    first_period: length of the first cycle, in updates (≥ 1).
    period_mult: cycle length multiplier (≥ 1).

  State: `SnapshotState(num_updates, cycle_end, period, num_taken, snapshots)`.

  Example:
    >>> lr = gx.sgdr_schedule(0.1, first_period=2)
    >>> tx = gx.chain(gx.sgd(lr, 0.9), gx.snapshot_ensemble(5, first_period=2))
    >>> state = tx.init(params)
    >>> for _ in range(4):                                  # two cycles: two snapshots
    ...   updates, state = tx.update(grads, state, params)
    ...   params = gx.apply_updates(params, updates)
    >>> int(gx.tree_get(state, "num_taken"))
    2
    >>> gx.ensemble_predict(lambda p, x: x @ p["w"] + p["b"], state, jnp.ones((3, 2))).shape
    (3, 2)

  References:
    Huang et al., "Snapshot ensembles: train 1, get M for free", ICLR 2017.
    Loshchilov & Hutter, "SGDR: stochastic gradient descent with warm restarts", ICLR 2017.
  """
  where = "snapshot_ensemble"
  n = _check.integer(where, "num_snapshots", num_snapshots, minimum=1)
  first = _check.integer(where, "first_period", first_period, minimum=1)
  mult = _check.real(where, "period_mult", period_mult, ge=1.0)

  def init(params):
    snaps = jax.tree.map(lambda p: jnp.zeros((n,) + jnp.shape(p), jnp.result_type(p)), params)
    return SnapshotState(num_updates=_numerics.zero_count(),
                         cycle_end=jnp.asarray(first, jnp.int32),
                         period=jnp.asarray(first, jnp.int32), num_taken=_numerics.zero_count(),
                         snapshots=snaps)

  def update(updates, state, params=None, **extra):
    del extra
    params = require_params(where, params)
    _tree.check_same_structure(where, params, updates, "params", "updates")
    count = _numerics.safe_increment(state.num_updates)
    take = count == state.cycle_end
    slot = state.num_taken % n

    def leaf(buf, p, u):
      new = _numerics.cast(p + u, buf.dtype)
      buf = jnp.asarray(buf)  # a restored checkpoint may hold NumPy arrays
      return jnp.where(take, buf.at[slot].set(new), buf)

    snaps = jax.tree.map(leaf, state.snapshots, params, updates)
    next_period = jnp.maximum(jnp.floor(state.period.astype(jnp.float32) * mult), 1.0)
    next_period = next_period.astype(jnp.int32)
    return updates, SnapshotState(
        num_updates=count,
        cycle_end=jnp.where(take, state.cycle_end + next_period, state.cycle_end),
        period=jnp.where(take, next_period, state.period),
        num_taken=jnp.where(take, state.num_taken + 1, state.num_taken).astype(jnp.int32),
        snapshots=snaps)

  return GradientTransformation(init, update)


def ensemble_predict(apply_fn: Callable[..., Any], state: Any, *inputs: Any) -> Any:
  """The mean of `apply_fn(snapshot, *inputs)` over the snapshots taken so far.

  `state` is the `snapshot_ensemble` state or any optimizer state that contains one. Only the
  `min(num_taken, n)` filled slots count; before the first snapshot the result is NaN.
  Jit-friendly (the snapshots are evaluated with `jax.vmap`).

  Example:
    >>> tx = gx.snapshot_ensemble(2, first_period=1)    # a snapshot after every update
    >>> state = tx.init({"w": jnp.array(0.0)})
    >>> for w in (1.0, 3.0):                            # snapshots θ = 1, then θ = 3
    ...   _, state = tx.update({"w": jnp.array(0.0)}, state, {"w": jnp.array(w)})
    >>> gx.ensemble_predict(lambda p, x: p["w"] * x, state, 2.0)   # the mean of 2 and 6
    Array(4., dtype=float32)

  References:
    Huang et al., "Snapshot ensembles: train 1, get M for free", ICLR 2017.
  """
  snaps = tree_get(state, "snapshots")
  taken = tree_get(state, "num_taken")
  n = jax.tree.leaves(snaps)[0].shape[0]
  preds = jax.vmap(lambda p: apply_fn(p, *inputs))(snaps)
  filled = jnp.minimum(taken, n)
  valid = jnp.arange(n) < filled

  def mean(y):
    w = valid.reshape((n,) + (1,) * (y.ndim - 1)).astype(y.dtype)
    total = jnp.sum(y * w, axis=0) / jnp.maximum(filled, 1).astype(y.dtype)
    return jnp.where(filled > 0, total, jnp.nan).astype(y.dtype)

  return jax.tree.map(mean, preds)
