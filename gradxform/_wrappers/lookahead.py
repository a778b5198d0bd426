"""Lookahead (Zhang et al. 2019): k fast steps forward, then one step back towards slow weights.

Optax keeps the pair of weights in the *parameters* (`LookaheadParams(fast, slow)`); here the
parameters are the fast weights as they are and the slow weights live in the **state**, so
`lookahead(...)` composes like any other transform and the training loop does not change.
`lookahead_params(state, params)` returns the slow weights, the ones to evaluate.

At a synchronization step the returned update moves the parameters from where they are to the
new slow weights: `u = φ_new − θ`, so `apply_updates` lands on `φ_new` (to rounding).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, _as_transform, apply_updates,
                             declare_around, require_params, substitute, transform)
from gradxform._wrappers.masked import inner_extra
from gradxform._wrappers.state_access import params_from_state


class LookaheadState(NamedTuple):
  """State of `lookahead`."""
  fast_state: Any               # the fast optimizer's state
  slow: Any                     # the slow weights φ, like params (in the params' dtypes)
  steps_since_sync: jax.Array   # int32 scalar: fast steps since the last sync, in [0, k)


@transform(hyperparams=("slow_step_size",))
def lookahead(fast_optimizer: GradientTransformation, sync_period: int, slow_step_size: float,
              *, reset_state: bool = False) -> GradientTransformation:
  """Lookahead: `k` steps of the fast optimizer, then `φ ← φ + α(θ − φ)` and `θ ← φ`.

  Each `update` is one step of `fast_optimizer` from the current parameters θ (the fast
  weights). Every `k`-th update also synchronizes: with `θ' = θ + u` the fast weights after
  that step, the slow weights move to `φ' = φ + α(θ' − φ)` and the returned update is
  `φ' − θ`, so that after `apply_updates` the parameters are `φ'` (the paper's `θ_{t+1,0} =
  φ_{t+1}`). φ starts at the initial parameters and is kept in the state; read it with
  `gx.lookahead_params(state, params)`. With `reset_state`, the fast optimizer's state is
  re-initialized (from `φ'`) at every synchronization; by default it carries on, as in the
  paper's experiments.

  The returned update must be applied as it is (put `lookahead` last, or alone, in a chain:
  a later part that scales the update would break the synchronization). `params` are required.

  Equal to `optax.lookahead` with Optax's `LookaheadParams(fast, slow)` read as our
  (`params`, `state.slow`); Optax keeps both in the parameters, gradxform keeps φ in the state.
  Optax re-initializes the fast state from the fast weights before the sync, here from `φ'`
  (the same for every optimizer whose `init` depends only on shapes).

  Args:
    fast_optimizer: the inner optimizer (any transform).
    sync_period: k ≥ 1, fast steps per synchronization.
    slow_step_size: α in [0, 1], the slow weights' step (α = 1: plain fast optimizer).
    reset_state: re-initialize the fast optimizer's state at every synchronization.

  State: `LookaheadState(fast_state, slow, steps_since_sync)`.

  Example:
    >>> tx = gx.lookahead(gx.sgd(0.1), sync_period=2, slow_step_size=0.5)
    >>> p, state = params, tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(grads, state, p)
    ...   p = gx.apply_updates(p, updates)
    >>> p["b"]                    # θ' = θ − 2 · 0.1 · 0.5, then φ' = (θ + θ')/2
    Array([ 0.05, -0.15], dtype=float32)
    >>> gx.lookahead_params(state, p)["b"]
    Array([ 0.05, -0.15], dtype=float32)

  References:
    Zhang, Lucas, Hinton & Ba, "Lookahead optimizer: k steps forward, 1 step back", NeurIPS
    2019 (https://arxiv.org/abs/1907.08610).
  """
  where = "lookahead"
  fast = _as_transform(fast_optimizer, f"{where}: fast_optimizer")
  k = _check.integer(where, "sync_period", sync_period, minimum=1)
  alpha = _check.unit_interval(where, "slow_step_size", slow_step_size, closed=True)

  def init(params):
    return LookaheadState(fast_state=fast.init(params),
                          # a copy: φ and the params are distinct buffers (both may be donated)
                          slow=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
                          steps_since_sync=_numerics.zero_count())

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not isinstance(state, LookaheadState):
      raise ValueError(f"{where}.update: expected the LookaheadState made by this lookahead's "
                       f"init(), got {type(state).__name__}.")
    fast_updates, fast_state = fast.update(updates, state.fast_state, params,
                                           **inner_extra(extra, None))
    sync = state.steps_since_sync >= k - 1

    def leaf(p, u, s):
      cd = _numerics.compute_dtype(p, u, s)
      p32, u32, s32 = (_numerics.cast(x, cd) for x in (p, u, s))
      new_slow = s32 + alpha * (p32 + u32 - s32)
      out = jnp.where(sync, new_slow - p32, u32)
      return _numerics.cast(out, u.dtype), _numerics.cast(jnp.where(sync, new_slow, s32),
                                                          s.dtype)

    out, slow = _tree.map_unzip(leaf, 2, params, fast_updates, state.slow)
    if reset_state:
      fresh = fast.init(apply_updates(params, out))
      fast_state = jax.tree.map(lambda f, c: jnp.where(sync, f, c), fresh, fast_state)
    steps = jnp.where(sync, 0, state.steps_since_sync + 1).astype(jnp.int32)
    return out, LookaheadState(fast_state=fast_state, slow=slow, steps_since_sync=steps)

  tx = GradientTransformation(init, update)
  return tx if reset_state else declare_around(tx, fast, lambda key: lookahead(
      substitute(fast, key), k, alpha))


def lookahead_params(state: Any, params: Any) -> Any:
  """The slow weights φ kept by `gx.lookahead` in `state`: the parameters to evaluate.

  `params` are the current parameters (the fast weights). The result has their structure
  and dtypes: each leaf that a lookahead in `state` keeps slow weights for is replaced by them,
  the others are `params`' own. So it works however the lookahead is wrapped: alone, in a
  chain, inside `inject_hyperparams`, `apply_if_finite`, or under `masked` / `partition`
  (several groups' lookaheads are merged). Right after a synchronization φ equals `params`.

  Raises:
    KeyError: `state` holds no lookahead state.
    ValueError: a lookahead's slow weights do not line up with `params` (e.g. under
      `gx.flatten`, whose inner optimizer sees other arrays).

  Example:
    >>> tx = gx.inject_hyperparams(gx.lookahead)(gx.adam(0.1), 5, slow_step_size=0.5)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> gx.lookahead_params(state, gx.apply_updates(params, updates))["b"]  # not yet synced
    Array([ 0.1, -0.1], dtype=float32)

  References:
    Zhang, Lucas, Hinton & Ba, "Lookahead optimizer: k steps forward, 1 step back", NeurIPS
    2019 (https://arxiv.org/abs/1907.08610).
  """
  return params_from_state("lookahead_params", state, LookaheadState, "slow", params,
                           lambda _, p, slow: slow.astype(p.dtype))
