"""Schedule-free training (Defazio et al. 2024): interpolation and averaging in place of momentum.

Three sequences: `z`, the base optimizer's own iterate (kept in the state); `x`, a weighted
average of the `z`s (the point to evaluate at); and `y = (1 − β1) z + β1 x`, where gradients
are taken. The **parameters** a training loop holds are `y`, exactly as in Optax; `x` is not
stored but recomputed from `y` and `z`, and `schedule_free_eval_params(state, params)` returns
it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, ScalarOrSchedule, _as_transform,
                             declare_around, require_params, substitute, transform)
from gradxform._wrappers.masked import inner_extra
from gradxform._wrappers.state_access import params_from_state


class ScheduleFreeState(NamedTuple):
  """State of `schedule_free`."""
  b1: jax.Array               # β1 of the last step (what `schedule_free_eval_params` reads)
  weight_sum: jax.Array       # Σ c_t: the averaging weights `max_lr^weight_lr_power` so far
  step_count: jax.Array       # int32 scalar: 1 + updates so far (the schedule sees 1 first)
  max_lr: jax.Array           # the largest learning rate seen so far
  base_optimizer_state: Any   # the base optimizer's state
  z: Any                      # the base optimizer's iterate z, like params (in state_dtype)


def _scalar_dtype(params: Any) -> Any:
  """The dtype of the state's scalars: the parameters' promotion, at least float32."""
  leaves = [x for x in jax.tree.leaves(params) if hasattr(x, "dtype")]
  return _numerics.compute_dtype(*leaves)


@transform(hyperparams=("learning_rate", "b1", "weight_lr_power"))
def schedule_free(base_optimizer: GradientTransformation, learning_rate: ScalarOrSchedule,
                  b1: float = 0.9, weight_lr_power: float = 2.0, *,
                  state_dtype: Any = None) -> GradientTransformation:
  """Schedule-free `base_optimizer`: `z ← z + u`, `x ← (1 − c) x + c z`, `y = (1 − β1) z + β1 x`.

  The base optimizer (without its own momentum: e.g. `gx.sgd(η)` or `gx.adam(η, b1=0)`)
  steps the iterate `z` from the gradient taken at the current parameters `y`. The
  evaluation point `x` averages the `z`s with weights `c_t = w_t / Σ_{s≤t} w_s`,
  `w_t = (max_{s≤t} η_s)^weight_lr_power`, which replaces a decaying schedule (η may still
  warm up). The update returned moves the parameters from `y` to the new `y`. `x` is not
  stored: it is recomputed from `y` and `z` (`x = (y − (1 − β1) z)/β1`), so the parameters
  may also be changed by a transform wrapped around this one. Read `x`, the parameters to
  evaluate, with `gx.schedule_free_eval_params(state, params)`.

  Equal to `optax.contrib.schedule_free`, including its step convention: the schedule
  `learning_rate` is evaluated at 1, 2, … for the weights (the base optimizer's own schedule
  runs from 0). `learning_rate` should be the base optimizer's (it only sets the weights).
  `params` are required. Two differences show only in low precision: with a `state_dtype`
  below the parameters' precision the step uses the unrounded new `z` (Optax: the rounded
  one), and the scalar state is at least float32 (Optax: the parameters' lowest dtype).

  Args:
    base_optimizer: the optimizer whose iterate is `z` (any transform).
    learning_rate: η ≥ 0 or a schedule: the base optimizer's learning rate.
    b1: β1 in (0, 1], the interpolation between `z` and `x` (`x` is recovered by dividing
      by β1).
    weight_lr_power: the power of the largest learning rate so far in the averaging
      weights, ≥ 0 (down-weights the warm-up steps).
    state_dtype: dtype of `z` (None: each parameter's dtype).

  State: `ScheduleFreeState(b1, weight_sum, step_count, max_lr, base_optimizer_state, z)`.

  Example:
    >>> tx = gx.schedule_free(gx.sgd(0.1), 0.1)
    >>> p, state = params, tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(grads, state, p)
    ...   p = gx.apply_updates(p, updates)
    >>> # x: the average of z₁ = θ − ηg and z₂ = θ − 2ηg; y = 0.9 x + 0.1 z₂
    >>> [round(float(v), 4) for v in gx.schedule_free_eval_params(state, p)["b"]]
    [0.025, -0.175]
    >>> [round(float(v), 4) for v in p["b"]]
    [0.0225, -0.1775]

  References:
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The road less scheduled", NeurIPS
    2024 (https://arxiv.org/abs/2405.15682).
  """
  where = "schedule_free"
  base = _as_transform(base_optimizer, f"{where}: base_optimizer")
  _check.learning_rate(where, learning_rate)
  b1 = _check.unit_interval(where, "b1", b1, closed=True)
  b1 = _check.positive(where, "b1", b1)
  weight_lr_power = _check.non_negative(where, "weight_lr_power", weight_lr_power)
  state_dtype = _check.state_dtype(where, state_dtype, int8=False)

  def init(params):
    if state_dtype is None:
      _tree.check_floating(f"{where}.init", params, "params")
    sdt = _scalar_dtype(params)
    # a copy: z and the params are distinct buffers (both may be donated to a jitted step)
    z = jax.tree.map(lambda p: jnp.array(p, dtype=state_dtype or jnp.result_type(p), copy=True),
                     params)
    return ScheduleFreeState(b1=jnp.asarray(b1, sdt), weight_sum=jnp.zeros([], sdt),
                             step_count=jnp.ones([], jnp.int32), max_lr=jnp.zeros([], sdt),
                             base_optimizer_state=base.init(params), z=z)

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not isinstance(state, ScheduleFreeState):
      raise ValueError(f"{where}.update: expected the ScheduleFreeState made by this "
                       f"schedule_free's init(), got {type(state).__name__}.")
    sdt = state.max_lr.dtype
    lr = learning_rate(state.step_count) if callable(learning_rate) else learning_rate
    max_lr = jnp.maximum(state.max_lr, jnp.asarray(lr, sdt))
    weight = max_lr ** weight_lr_power
    weight_sum = state.weight_sum + weight
    # c = w / Σw; 0/0 (no step yet at a zero learning rate) is 0, a NaN weight stays NaN
    c = jnp.where(jnp.isnan(weight) | jnp.isnan(weight_sum), jnp.nan,
                  jnp.nan_to_num(weight / weight_sum, nan=0.0, posinf=jnp.inf))
    base_updates, base_state = base.update(updates, state.base_optimizer_state, params,
                                           **inner_extra(extra, None))

    def leaf(y, z, u, g):
      y, z, u = jnp.asarray(y), jnp.asarray(z), jnp.asarray(u)
      # z + u unrounded within the step, in z's dtype only to store it (as `ema` does)
      cd = _numerics.compute_dtype(y, z, u)
      y32, z32 = _numerics.cast(y, cd), _numerics.cast(z, cd)
      new_z = z32 + _numerics.cast(u, cd)
      x = (y32 - (1.0 - b1) * z32) / b1         # the average before this step
      x = (1.0 - c) * x + c * new_z
      new_y = b1 * x + (1.0 - b1) * new_z
      return _numerics.cast(new_y - y32, g.dtype), _numerics.cast(new_z, z.dtype)

    out, z = _tree.map_unzip(leaf, 2, params, state.z, base_updates, updates)
    # β1 of this step (an injected β1 may change): the one that makes y from this x and z
    return out, ScheduleFreeState(b1=jnp.asarray(b1, sdt), weight_sum=weight_sum,
                                  step_count=_numerics.safe_increment(state.step_count),
                                  max_lr=max_lr, base_optimizer_state=base_state, z=z)

  tx = GradientTransformation(init, update)
  return declare_around(tx, base, lambda key: schedule_free(
      substitute(base, key), learning_rate, b1, weight_lr_power, state_dtype=state_dtype))


def schedule_free_eval_params(state: Any, params: Any) -> Any:
  """The evaluation point `x = (y − (1 − β1) z)/β1` of `gx.schedule_free`: the params to test.

  `params` are the current parameters `y` (where gradients are taken); `z` and β1 come from
  the `ScheduleFreeState` found in `state`, however it is wrapped: alone, in a chain, inside
  `inject_hyperparams`, `apply_if_finite`, or under `masked` / `partition` (each group's own
  schedule-free state gives `x` for its leaves; other leaves are `params`' own). The result
  has the structure and dtypes of `params`.

  Equal to `optax.contrib.schedule_free_eval_params` (which takes the schedule-free state
  itself; this one also searches a wrapped state).

  Raises:
    KeyError: `state` holds no schedule-free state.
    ValueError: its `z` does not line up with `params` (e.g. under `gx.flatten`, whose inner
      optimizer sees other arrays).

  Example:
    >>> tx = gx.chain(gx.clip(1.0), gx.schedule_free(gx.sgd(0.1), 0.1, b1=0.5))
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> p = gx.apply_updates(params, updates)
    >>> gx.schedule_free_eval_params(state, p)["b"]   # x = z = θ − η g after one step
    Array([ 0.05, -0.15], dtype=float32)

  References:
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The road less scheduled", NeurIPS
    2024 (https://arxiv.org/abs/2405.15682).
  """
  def evaluation_point(sf: ScheduleFreeState, y: jax.Array, z: jax.Array) -> jax.Array:
    cd = _numerics.compute_dtype(y, z)
    y32, z32, b1 = _numerics.cast(y, cd), _numerics.cast(z, cd), sf.b1.astype(cd)
    return _numerics.cast((y32 - (1.0 - b1) * z32) / b1, y.dtype)

  return params_from_state("schedule_free_eval_params", state, ScheduleFreeState, "z", params,
                           evaluation_point)
