"""Parameter averaging for evaluation: an exponential moving average or Polyak's running mean.

Both are transforms placed at the *end* of a chain (they need the final updates): they pass
updates through unchanged and keep the averaged parameters in their state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, require_params, transform,
                             trees_checked)
from gradxform._wrappers.state_access import tree_get


class ParamAverageState(NamedTuple):
  """State of `ema_params` and `polyak_params`."""
  num_averaged: jax.Array  # int32: updates averaged so far (not `count`, so that
                           # `tree_get(state, "count")` still finds the optimizer's counter)
  averaged: Any     # the averaged parameters, like params


def _averaging(where: str, rate: Any, state_dtype: Any) -> GradientTransformation:
  """`rate(count) -> weight of the new parameters`; `avg ← avg + w (θ_new − avg)`."""

  def init(params):
    # a copy: the average and the params are distinct buffers (both may be donated)
    avg = jax.tree.map(lambda p: jnp.array(p, dtype=state_dtype or p.dtype, copy=True), params)
    return ParamAverageState(num_averaged=_numerics.zero_count(), averaged=avg)

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not trees_checked(extra):
      _tree.check_updates(where, state.averaged, updates)
      _tree.check_same_structure(where, state.averaged, params, "state", "params")
    w = rate(state.num_averaged)

    def leaf(avg, p, u):
      cd = _numerics.compute_dtype(avg, p, u)
      new = _numerics.cast(p, cd) + _numerics.cast(u, cd)
      old = _numerics.cast(avg, cd)
      return _numerics.cast(old + w * (new - old), avg.dtype)

    avg = jax.tree.map(leaf, state.averaged, params, updates)
    return updates, ParamAverageState(num_averaged=_numerics.safe_increment(state.num_averaged),
                                        averaged=avg)

  return elementwise(GradientTransformation(init, update))


@transform(hyperparams=("decay",))
def ema_params(decay: float, *, state_dtype: Any = None) -> GradientTransformation:
  """Keeps an exponential moving average of the parameters; passes updates through.

  `θ̄ ← β θ̄ + (1 − β) θ_t` with `θ_t = params + updates` (the parameters after this step) and
  `θ̄_0 = θ_0` (the parameters given to `init`, so no bias correction is needed). Place it
  last in the chain; evaluate with `averaged_params(state)`.

  Args:
    decay: β in [0, 1), e.g. 0.999.
    state_dtype: dtype of the average (None: each parameter's dtype; float32 is advisable
      for bf16 parameters, whose average would otherwise stop moving).

  State: `ParamAverageState(num_averaged, averaged)`.

  Example:
    >>> tx = gx.chain(gx.sgd(0.1), gx.ema_params(0.9))
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> jnp.round(gx.averaged_params(state)["b"], 4)   # 0.9 · θ_0 + 0.1 · (θ_0 − 0.05)
    Array([ 0.095, -0.105], dtype=float32)

  References:
    Polyak & Juditsky, "Acceleration of stochastic approximation by averaging", 1992;
    the EMA form is standard practice (e.g. Tan & Le, EfficientNet, 2019).
  """
  where = "ema_params"
  decay = _check.unit_interval(where, "decay", decay)
  state_dtype = _check.state_dtype(where, state_dtype, int8=False)
  return _averaging(where, lambda count: 1.0 - decay, state_dtype)


@transform
def polyak_params(*, state_dtype: Any = None) -> GradientTransformation:
  """Keeps the running mean of the parameters after each step; passes updates through.

  `θ̄_t = (1/t) Σ_{i=1..t} θ_i` (Polyak–Ruppert averaging), as `θ̄ ← θ̄ + (θ_t − θ̄)/t`,
  `θ_t = params + updates`. Before the first step the average is `θ_0`. Place it last in the
  chain; evaluate with `averaged_params(state)`.

  Args:
    state_dtype: dtype of the average (None: each parameter's dtype).

  State: `ParamAverageState(num_averaged, averaged)`.

  Example:
    >>> tx = gx.chain(gx.sgd(0.1), gx.polyak_params())
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(grads, state, params)
    ...   params = gx.apply_updates(params, updates)
    >>> jnp.round(gx.averaged_params(state)["b"], 4)   # the mean of θ_1 and θ_2
    Array([ 0.025, -0.175], dtype=float32)

  References:
    Polyak & Juditsky, "Acceleration of stochastic approximation by averaging", SIAM J.
    Control Optim. 1992. Ruppert, "Efficient estimations from a slowly convergent
    Robbins-Monro process", 1988.
  """
  state_dtype = _check.state_dtype("polyak_params", state_dtype, int8=False)
  return _averaging("polyak_params",
                    lambda count: 1.0 / (count + 1).astype(_numerics.scalar_dtype()),
                    state_dtype)


def averaged_params(state: Any) -> Any:
  """The averaged parameters kept by `ema_params` / `polyak_params` anywhere in `state`.

  Raises KeyError when the state holds none, ValueError when it holds several (use
  `gx.tree_get(state, "<group>/averaged")` then).

  Example:
    >>> state = gx.chain(gx.adam(1e-3), gx.ema_params(0.99)).init(params)
    >>> gx.averaged_params(state)["b"]          # θ̄_0 = θ_0
    Array([ 0.1, -0.1], dtype=float32)

  References:
    Polyak & Juditsky, "Acceleration of stochastic approximation by averaging", SIAM J.
    Control Optim. 1992.
  """
  return tree_get(state, "averaged")
