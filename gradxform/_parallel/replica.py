"""Synchronous data parallelism: the mean of the updates over a named axis."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics
from gradxform._base import EmptyState, GradientTransformation, transform

_ALREADY_REDUCED = ("error", "mean", "sum")

_INVARIANT_MESSAGE = (
    "cross_replica_mean: the update leaf {path} does not vary over the axis {axis!r}: it is "
    "already reduced. This happens under jax.shard_map with check_vma=True (the default) when "
    "the parameters enter replicated (in_specs P()): autodiff then returns the SUM over the "
    "axis of the per-shard gradients, identical on every shard, and a pmean of it is a no-op "
    "(so the result is off by the axis size). Either\n"
    "  * make the parameters per-shard before differentiating, "
    "jax.lax.pcast(params, {axis!r}, to='varying'), so the gradients are per-shard and this "
    "transform averages them (as under pmap); or\n"
    "  * say what the reduced gradient is: cross_replica_mean({axis!r}, already_reduced='sum') "
    "divides by the axis size (gradient of the per-shard loss), "
    "already_reduced='mean' passes it through (gradient of a loss already averaged with "
    "jax.lax.pmean).")


def _tracks_variance(axis_name: Any) -> bool:
  """Whether the enclosing map tracks which values vary over `axis_name` (shard_map with
  check_vma=True). Under pmap and shard_map(check_vma=False) `pcast` is a no-op."""
  try:
    probe = jax.lax.pcast(jnp.zeros([], jnp.float32), axis_name, to="varying")
    return _varies(probe, axis_name)
  except Exception:  # noqa: BLE001 - older/newer jax without this API: fall back to pmean
    return False


def _varies(x: Any, axis_name: Any) -> bool:
  axes = axis_name if isinstance(axis_name, tuple) else (axis_name,)
  varying = jax.typeof(x).manual_axis_type.varying
  return all(a in varying for a in axes)


@transform
def cross_replica_mean(axis_name: Any, *, already_reduced: str = "error") -> GradientTransformation:
  """Averages the updates over a named axis: `u ← (1/p) Σ_i u_i` (`jax.lax.pmean`).

  The first part of a synchronous data-parallel optimizer, before anything stateful, so every
  replica sees the same gradient and the replicas' parameters and states stay bit-identical:
  `gx.chain(gx.cross_replica_mean("batch"), gx.adam(1e-3))`.

  It expects per-replica gradients, which is what `jax.pmap` and `jax.shard_map(...,
  check_vma=False)` give. Under `jax.shard_map` with JAX's default `check_vma=True` (jax
  0.10), differentiating with respect to parameters that enter replicated (`in_specs=P()`)
  already sums the per-shard gradients over the axis: the gradient arrives axis-invariant and
  equals `p` times the global-batch mean gradient when the loss is a per-shard mean. A pmean
  of it changes nothing and a psum would multiply by `p` again. Such leaves are detected from
  their type (`jax.typeof(x).manual_axis_type.varying`) and handled by `already_reduced`.
  Leaves that vary over the axis (e.g. after `jax.lax.pcast(params, axis, to='varying')`
  before `jax.grad`) are averaged as under pmap.

  Args:
    axis_name: the `pmap` / `shard_map` axis name (or a tuple of names) to average over.
    already_reduced: what to do with axis-invariant leaves under `check_vma=True`:
      `"error"` (default) raises a ValueError that explains the convention; `"sum"` treats
      them as the sum of per-shard gradients and divides by the axis size; `"mean"` treats
      them as already averaged and passes them through.

  State: `EmptyState()`.

  Example:
    >>> tx = gx.chain(gx.cross_replica_mean("batch"), gx.sgd(0.1))
    >>> n = jax.local_device_count()
    >>> g = {"w": jnp.arange(n, dtype=jnp.float32)}           # one gradient per device
    >>> out, _ = jax.pmap(lambda g: tx.update(g, tx.init(g)), axis_name="batch")(g)
    >>> bool(jnp.allclose(out["w"], -0.1 * (n - 1) / 2))      # every replica: −η · the mean
    True

  References:
    Dean et al., "Large scale distributed deep networks", NeurIPS 2012 (synchronous
    data-parallel SGD); Goyal et al., "Accurate, large minibatch SGD", 2017.
  """
  _check.one_of("cross_replica_mean", "already_reduced", already_reduced, _ALREADY_REDUCED)

  def init(params):
    del params
    return EmptyState()

  def update(updates, state, params=None, **extra):
    del params, extra
    if not _tracks_variance(axis_name):
      return jax.lax.pmean(updates, axis_name), state
    size = jax.lax.psum(1, axis_name)

    def leaf(path, u):
      if _varies(u, axis_name):
        return jax.lax.pmean(u, axis_name)
      if already_reduced == "error":
        raise ValueError(_INVARIANT_MESSAGE.format(path=jax.tree_util.keystr(path) or "<root>",
                                                   axis=axis_name))
      if already_reduced == "sum":
        return _numerics.cast(u / size, u.dtype)
      return u

    return jax.tree_util.tree_map_with_path(leaf, updates), state

  return GradientTransformation(init, update)
