"""Local SGD: replicas step alone and average their parameters every `k` steps."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from gradxform import _check, _numerics, _tree
from gradxform._base import (
  GradientTransformation,
  next_count,
  require_params,
  step_count,
  transform,
)


class PeriodicAverageState(NamedTuple):
  """State of `periodic_average`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count


@transform(shares_count=True)
def periodic_average(axis_name: Any, every_k: int) -> GradientTransformation:
  """Local SGD: every `every_k` steps the parameters are replaced by their mean over the axis.

  Each replica applies its own update `u_i`; at steps `t = k, 2k, 3k, …` (t counts from 1)
  the parameters *after* that local step are averaged, so the emitted update is

    `u_i ← mean_j(x_j + u_j) − x_i`   at `t ≡ 0 (mod k)`,   `u_i` otherwise,

  with `x_i` replica `i`'s parameters before the step. Place it last in the chain (after the
  learning rate), e.g. `gx.chain(gx.sgd(η, momentum=0.9), gx.periodic_average("batch", 8))`.
  Communication happens only on averaging steps: the `pmean` sits inside a `lax.cond` whose
  predicate is the same on every replica. Optimizer states (e.g. momentum) stay local, as in
  the usual local-SGD formulation; `every_k=1` with plain SGD equals synchronous SGD.

  Args:
    axis_name: the `pmap` / `shard_map` axis of the replicas.
    every_k: k ≥ 1, the averaging period in steps.

  State: `PeriodicAverageState(count)`.

  Example:
    >>> n = jax.local_device_count()
    >>> tx = gx.chain(gx.sgd(0.1), gx.periodic_average("batch", every_k=2))
    >>> def two_steps(x, g):
    ...   state = tx.init(x)
    ...   for _ in range(2):
    ...     u, state = tx.update(g, state, x)
    ...     x = gx.apply_updates(x, u)
    ...   return x
    >>> x = jax.pmap(two_steps, axis_name="batch")(
    ...     {"w": jnp.zeros(n)}, {"w": jnp.arange(n, dtype=jnp.float32)})  # one gradient each
    >>> bool(jnp.allclose(x["w"], -0.2 * (n - 1) / 2))    # averaged after the second step
    True

  References:
    Stich, "Local SGD converges fast and communicates little", ICLR 2019;
    Lin et al., "Don't use large mini-batches, use local SGD", ICLR 2020;
    Dean et al., "Large scale distributed deep networks" (Downpour SGD), NeurIPS 2012.
  """
  where = "periodic_average"
  every_k = _check.integer(where, "every_k", every_k, minimum=1)

  def init(params):
    del params
    return PeriodicAverageState(count=_numerics.zero_count())

  def average(updates, params):
    def leaf(u, x):
      cd = _numerics.compute_dtype(u, x)
      new_x = _numerics.cast(x, cd) + _numerics.cast(u, cd)
      return _numerics.cast(jax.lax.pmean(new_x, axis_name) - _numerics.cast(x, cd), u.dtype)
    return jax.tree.map(leaf, updates, params)

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    _tree.check_same_structure(where, params, updates, "params", "updates")
    count = step_count(state, extra)
    t = _numerics.safe_increment(count)
    if every_k == 1:
      out = average(updates, params)
    else:
      out = jax.lax.cond(t % every_k == 0, average, lambda u, x: u, updates, params)
    return out, PeriodicAverageState(count=next_count(state, count))

  return GradientTransformation(init, update)
