"""Sign agreement between the gradient and its moving average: PowerSign and AddSign."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, Schedule, elementwise, next_count,
                             raw_gradient, step_count, transform, trees_checked)


class SignAgreementState(NamedTuple):
  """State of `sign_agreement`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                  # EMA m of gradients, like params


@transform(shares_count=True, hyperparams=("base", "alpha", "beta"))
def sign_agreement(*, mode: str = "power", base: float = math.e, alpha: float = 1.0,
                   beta: float = 0.9, decay_fn: Schedule | None = None,
                   state_dtype: Any = None) -> GradientTransformation:
  """Scales each update up where the gradient agrees in sign with its moving average.

  `m ← β m + (1 − β) g` (including the current `g`), `s = f(t) · sign(g) · sign(m)`;
  PowerSign (`mode="power"`): output `base^s · u`, computed as `exp(s · ln base)` (on CPU,
  XLA's `pow` is a scalar library call, `exp` a vectorized loop); AddSign (`mode="add"`):
  `(α + s) · u`.
  `f(t) = decay_fn(step)` with `step` = 0 on the first update (see `linear_sign_decay`,
  `cosine_sign_decay`, `restart_sign_decay`), or 1 when `decay_fn` is None.

  Args:
    mode: "power" or "add".
    base: PowerSign's base (> 0), e by default.
    alpha: AddSign's α ≥ 0, 1 by default.
    beta: β in [0, 1) of the moving average.
    decay_fn: the decay schedule f, or None.
    state_dtype: dtype of `mu`.

  State: `SignAgreementState(count, mu)`.

  Example:
    >>> tx = gx.sign_agreement(mode="add", alpha=1.0)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> updates["b"]                          # g and m agree: (1 + 1) · 0.5
    Array([1., 1.], dtype=float32)

  References:
    Bello, Zoph, Vasudevan & Le, "Neural optimizer search with reinforcement learning",
    ICML 2017.
  """
  where = "sign_agreement"
  _check.one_of(where, "mode", mode, ("power", "add"))
  base = _check.positive(where, "base", base)
  log_base = math.log(base) if isinstance(base, (int, float)) else jnp.log(base)  # or traced
  alpha = _check.non_negative(where, "alpha", alpha)
  beta = _check.unit_interval(where, "beta", beta)
  state_dtype = _check.state_dtype(where, state_dtype)
  _check.function(where, "decay_fn", decay_fn, optional=True)

  def init(params):
    return SignAgreementState(count=_numerics.zero_count(),
                              mu=_numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    grad = raw_gradient(updates, extra)
    if not trees_checked(extra):
      _tree.check_updates(where, state.mu, updates)
    count = step_count(state, extra)
    f = 1.0 if decay_fn is None else decay_fn(count)

    def leaf(u, g, m):
      cd = _numerics.compute_dtype(u, m)
      g = _numerics.cast(g, cd)
      new_m = _numerics.ema(m, g, beta)
      s = f * jnp.sign(g) * jnp.sign(new_m)
      factor = jnp.exp(log_base * s) if mode == "power" else alpha + s
      return (_numerics.cast(factor * _numerics.cast(u, cd), u.dtype),
              _numerics.cast(new_m, m.dtype))

    out, mu = _tree.map_unzip(leaf, 2, updates, grad, state.mu)
    return out, SignAgreementState(count=next_count(state, count), mu=mu)

  return elementwise(GradientTransformation(init, update))
