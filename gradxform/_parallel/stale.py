"""Stale gradients: a simulation of asynchronous training on one (or each) replica."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import GradientTransformation, next_count, step_count, transform


class StaleState(NamedTuple):
  """State of `stale_gradients`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  key: jax.Array           # uint32[2] PRNG key drawing the random delays (unused when fixed)
  buffer: Any              # like params with a leading axis of max(delay, max_delay) slots


@transform(shares_count=True)
def stale_gradients(delay: int, *, max_delay: int | None = None,
                    seed: int = 0) -> GradientTransformation:
  """Delays updates: the output at step `t` is the incoming update of step `t − τ_t`.

  `u_t^out = u_{t−τ_t}` when `t − τ_t ≥ 1`, else `0` (t counts from 1), so with a fixed delay
  the first `τ` outputs are zero. Fixed delay: `τ_t = delay`. With `max_delay`: `τ_t` is drawn
  uniformly from `{delay, …, max_delay}` each step with a PRNG key kept in the state (the same
  draws on every replica). `τ = 0` is the plain optimizer.

  This is a *simulation* of the asynchronous regime of Hogwild! and Downpour SGD, with a
  deterministic, reproducible staleness: nothing here is asynchronous. Real asynchronous
  workers see staleness that depends on timing and may read parameters mid-update; here every
  step applies exactly one whole past update. Put it first in a chain so the optimizer
  consumes stale gradients (`gx.chain(gx.stale_gradients(4), gx.sgd(η))`, the parameter-server
  picture), or last to delay whole parameter updates.

  Args:
    delay: τ ≥ 0, the fixed delay, or the smallest delay when `max_delay` is given.
    max_delay: None (fixed delay) or the largest delay, ≥ `delay`.
    seed: integer seed of the delay draws.

  State: `StaleState(count, key, buffer)`: a ring buffer of the last `max(delay, max_delay)`
  incoming updates (update of step `s` in slot `(s − 1) mod L`), and the key of the next draw.

  Example:
    >>> tx = gx.stale_gradients(1)
    >>> state = tx.init(params)
    >>> first, state = tx.update(grads, state)
    >>> second, state = tx.update(jax.tree.map(lambda g: 2 * g, grads), state)
    >>> first["b"], second["b"]               # zero, then the first step's update
    (Array([0., 0.], dtype=float32), Array([0.5, 0.5], dtype=float32))

  References:
    Recht et al., "Hogwild!: A lock-free approach to parallelizing stochastic gradient
    descent", NeurIPS 2011; Dean et al., "Large scale distributed deep networks", NeurIPS 2012;
    Lian et al., "Asynchronous parallel stochastic gradient for nonconvex optimization",
    NeurIPS 2015 (the bounded-delay model).
  """
  where = "stale_gradients"
  delay = _check.integer(where, "delay", delay, minimum=0)
  if max_delay is not None:
    max_delay = _check.integer(where, "max_delay", max_delay, minimum=0)
    _check.ordered(where, ("delay", delay), ("max_delay", max_delay))
  seed = _check.integer(where, "seed", seed)
  slots = max(delay, max_delay or 0)
  random = max_delay is not None and max_delay > delay

  def init(params):
    buffer = jax.tree.map(
        lambda p: jnp.broadcast_to(jnp.zeros_like(p, dtype=jnp.result_type(p)),
                                   (slots,) + jnp.shape(p)), params)
    return StaleState(count=_numerics.zero_count(), key=jax.random.PRNGKey(seed), buffer=buffer)

  def update(updates, state, params=None, **extra):
    del params
    _tree.check_same_structure(where, state.buffer, updates, "state", "updates")
    count = step_count(state, extra)
    new_count = next_count(state, count)
    if slots == 0:
      return updates, state._replace(count=new_count)
    t = count + 1
    key = state.key
    if random:
      key, sub = jax.random.split(key)
      tau = jax.random.randint(sub, [], delay, max_delay + 1, dtype=jnp.int32)
    else:
      tau = jnp.asarray(delay, jnp.int32)
    source = t - tau
    read_slot = (source - 1) % slots
    write_slot = (t - 1) % slots

    def leaf(u, buf):
      past = _numerics.cast(jax.lax.dynamic_index_in_dim(buf, read_slot, keepdims=False),
                            u.dtype)
      out = jnp.where(tau == 0, u, jnp.where(source >= 1, past, jnp.zeros_like(u)))
      new_buf = jax.lax.dynamic_update_index_in_dim(buf, _numerics.cast(u, buf.dtype),
                                                    write_slot, 0)
      return out, new_buf

    out, buffer = _tree.map_unzip(leaf, 2, updates, state.buffer)
    return out, StaleState(count=new_count, key=key, buffer=buffer)

  return GradientTransformation(init, update)
