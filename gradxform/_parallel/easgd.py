"""Elastic averaging SGD (EASGD), synchronous form."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import GradientTransformation, require_params, transform, trees_checked
from gradxform._tree import map_unzip


class ElasticState(NamedTuple):
  """State of `elastic_averaging`."""
  center: Any  # the centre variable x̃, like params, identical on every replica


@transform(hyperparams=("alpha",))
def elastic_averaging(axis_name: Any, alpha: float) -> GradientTransformation:
  """Elastic averaging: each replica is pulled towards a shared centre, the centre towards them.

  With `p` replicas, `u_i` the incoming (already learning-rate scaled) update of replica `i`
  and `x_i` its parameters before this step, both from the pre-step values:

    `u_i ← u_i − α (x_i − x̃)`        (so `x_i ← x_i − η g_i − α (x_i − x̃)`)
    `x̃  ← x̃ + α Σ_i (x_i − x̃)`       (a `psum` over `axis_name`)

  Place it after the learning-rate scaling, e.g. `gx.chain(gx.sgd(η),
  gx.elastic_averaging("batch", α))`: `α = ηρ` is the paper's elasticity and is not scaled
  again. The replicas differ between steps (each follows its own gradient); only the centre is
  shared. Evaluate with the centre (`state.center`) or with any replica.

  Args:
    axis_name: the `pmap` / `shard_map` axis over which the replicas live.
    alpha: α in [0, 1]; the paper's stability analysis needs `p α` small (`pα < 1`).

  State: `ElasticState(center)`, the centre variable, equal to the parameters given to
  `init` (replicas must start identical) and kept identical on every replica by the `psum`.

  Example:
    >>> n = jax.local_device_count()
    >>> tx = gx.chain(gx.sgd(0.1), gx.elastic_averaging("batch", 0.5 / n))
    >>> def two_steps(x, g):
    ...   state = tx.init(x)
    ...   for _ in range(2):
    ...     u, state = tx.update(g, state, x)
    ...     x = gx.apply_updates(x, u)
    ...   return x, state
    >>> x, state = jax.pmap(two_steps, axis_name="batch")(
    ...     {"w": jnp.zeros(n)}, {"w": jnp.arange(n, dtype=jnp.float32)})  # one gradient each
    >>> bool(jnp.all(state[1].center["w"] == state[1].center["w"][0]))  # one shared centre
    True

  References:
    Zhang, Choromanska & LeCun, "Deep learning with elastic averaging SGD", NeurIPS 2015,
    https://arxiv.org/abs/1412.6651 (equations 5–6, synchronous EASGD).
  """
  where = "elastic_averaging"
  alpha = _check.unit_interval(where, "alpha", alpha, closed=True)

  def init(params):
    return ElasticState(center=jax.tree.map(jnp.copy, params))

  def leaf(u, x, c):
    cd = _numerics.compute_dtype(u, x, c)
    diff = _numerics.cast(x, cd) - _numerics.cast(c, cd)
    out = _numerics.cast(u, cd) - alpha * diff
    new_c = _numerics.cast(c, cd) + alpha * jax.lax.psum(diff, axis_name)
    return _numerics.cast(out, u.dtype), _numerics.cast(new_c, c.dtype)

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not trees_checked(extra):
      _tree.check_updates(where, state.center, updates)
      _tree.check_same_structure(where, state.center, params, "state", "params")
    out, center = map_unzip(leaf, 2, updates, params, state.center)
    return out, ElasticState(center=center)

  return GradientTransformation(init, update)
