"""Helpers for the `jax.jit` + `NamedSharding` route to data parallelism.

With a mesh from `jax.make_mesh` and arrays placed with `NamedSharding`, `jax.jit` partitions
the step itself: the batch is split over the data axis, parameters are replicated (or sharded
over a model axis), and the gradient's mean over the batch becomes an all-reduce that XLA
inserts. No `cross_replica_mean` is needed on this route. Every gradxform state leaf shaped
like a parameter is built with `zeros_like`, so `jax.jit(tx.init)(params)` gives it that
parameter's sharding and the step keeps it.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on all devices of `mesh` (`PartitionSpec()`)."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(tree: Any, mesh: Mesh, axis_name: str = "data") -> Any:
  """Splits every leaf of `tree` along its leading (batch) dimension over `axis_name`."""
  size = int(mesh.shape[axis_name])

  def put(x):
    if not jax.numpy.ndim(x) or jax.numpy.shape(x)[0] % size:
      raise ValueError(f"shard_batch: leading dimension of shape {jax.numpy.shape(x)} is not "
                       f"divisible by the {size} devices of mesh axis {axis_name!r}")
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(axis_name)))

  return jax.tree.map(put, tree)


def shardings(tree: Any) -> Any:
  """The tree of each leaf's `.sharding` (e.g. to compare a state's layout with the params')."""
  return jax.tree.map(lambda x: x.sharding, tree)


def specs(tree: Any) -> Any:
  """The tree of each leaf's `PartitionSpec` (normalized: trailing `None` entries dropped)."""
  def spec(x):
    entries = list(x.sharding.spec)
    while entries and entries[-1] is None:
      entries.pop()
    return PartitionSpec(*entries)
  return jax.tree.map(spec, tree)


def explicit_mesh(mesh: Any) -> bool:
  """Whether `mesh` has an axis of type Explicit (JAX's shardings in types). Library-internal."""
  explicit = getattr(jax.sharding.AxisType, "Explicit", None)
  return explicit is not None and any(t == explicit for t in getattr(mesh, "axis_types", ()))


def mesh_of(x: Any) -> Any:
  """The (abstract) mesh array `x` lives on in the current trace; one without axes when
  nothing says (outside any mesh, or under `jax.jit` without explicit axes). Library-internal."""
  return jax.typeof(x).sharding.mesh
