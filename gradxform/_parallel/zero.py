"""ZeRO stage 1: the optimizer state partitioned over the data-parallel devices.

Parameters and gradients stay replicated; each optimizer-state leaf is split along one
dimension over the data axis, so each device stores (and updates) `1/p` of the state. Each
device updates its slice of the state from its slice of the (replicated) gradient, and the
slices of the update are all-gathered back to the parameters' layout. The arithmetic per
element is that of the unsharded optimizer, so results are identical.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradxform import _check
from gradxform._base import GradientTransformation, transform, update_and_apply
from gradxform._equality import Fn
from gradxform._parallel.sharding import explicit_mesh
from gradxform._quantize import BLOCK_SIZE


def _axis_size(mesh: Mesh, axis_name: str) -> int:
  _check.requires("zero1", axis_name in mesh.shape,
                  f"the mesh has no axis {axis_name!r} (axes: {tuple(mesh.shape)})")
  return int(mesh.shape[axis_name])


def zero1_spec(shape: tuple[int, ...], size: int, axis_name: str = "data") -> PartitionSpec:
  """The `PartitionSpec` of a state leaf of `shape` under ZeRO-1 over `size` devices.

  One dimension is split over `axis_name`: the first longer than 1 where each device's part
  of it holds whole blocks of int8 state (`BLOCK_SIZE` entries of the flattened leaf), so
  that such state is quantized on each device's own rows; else the largest dimension
  divisible by `size` (the first such on ties). Scalars and leaves with no divisible
  dimension stay replicated.
  """
  if size == 1:
    return PartitionSpec()
  lead = next((d for d, n in enumerate(shape) if n > 1), None)
  if lead is not None and shape[lead] % size == 0 and (
      shape[lead] // size * math.prod(shape[lead + 1:])) % BLOCK_SIZE == 0:
    best: int | None = lead
  else:  # `max` keeps the first of equals
    divisible = [d for d, n in enumerate(shape) if n > 0 and n % size == 0]
    best = max(divisible, key=lambda d: shape[d], default=None)
  if best is None:
    return PartitionSpec()
  spec: list[Any] = [None] * len(shape)
  spec[best] = axis_name
  return PartitionSpec(*spec)


def zero1_shardings(tree: Any, mesh: Mesh, axis_name: str = "data") -> Any:
  """A tree of `NamedSharding`, one per leaf of `tree` (arrays or `ShapeDtypeStruct` leaves).

  Use it as `out_shardings` of a jitted `init`/step, e.g. with
  `zero1_shardings(jax.eval_shape(tx.init, params), mesh)`.

  Example:
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
    >>> shapes = jax.eval_shape(gx.adam(1e-3).init, {"w": jnp.zeros((jax.device_count(), 4))})
    >>> gx.zero1_shardings(shapes, mesh)[0].trace["w"].spec   # rows split over "data"
    P('data', None)

  References:
    Rajbhandari et al., "ZeRO: Memory optimizations toward training trillion parameter
    models", SC 2020.
  """
  size = _axis_size(mesh, axis_name)
  return jax.tree.map(lambda x: NamedSharding(mesh, zero1_spec(np.shape(x), size, axis_name)),
                      tree)


def _place(x: Any, sharding: NamedSharding) -> Any:
  """Moves `x` to `sharding`: inside jit a resharding (a slice when `x` is replicated)."""
  if explicit_mesh(sharding.mesh):
    return jax.sharding.reshard(x, sharding)
  if isinstance(x, jax.core.Tracer):
    return jax.lax.with_sharding_constraint(x, sharding)
  return jax.device_put(x, sharding)


@transform
def zero1(inner: GradientTransformation, mesh: Mesh, *,
          axis_name: str = "data") -> GradientTransformation:
  """Keeps `inner`'s state partitioned over `axis_name` of `mesh` (ZeRO stage 1).

  `init` places each state leaf with `zero1_spec` (one dimension split over the data axis,
  scalars replicated). `update` slices the incoming updates and the parameters the same way
  (no communication when they are replicated), runs `inner.update` on the slices, gathers the
  emitted updates back to the layout they came in (replicated on a plain data-parallel mesh)
  and places the new state as `init` did (int8 state computed whole on each device is sliced
  again). `gx.update_and_apply` does the same with the whole step: each device
  steps its slice of the parameters (with `inner`'s fused CPU pass where it has one) and the
  new parameters are gathered. For element-wise optimizers (Adam, SGD, RMSprop, ...) every
  element sees the same arithmetic as without sharding, so the numerics are identical.

  Use under `jax.jit` with a mesh from `jax.make_mesh` (and `jax.set_mesh(mesh)` when its axes
  are explicit, the default in jax ≥ 0.7); parameters replicated over `axis_name`.

  Args:
    inner: the optimizer whose state is partitioned.
    mesh: the device mesh.
    axis_name: the data-parallel mesh axis.

  State: `inner`'s state, each leaf partitioned as above.

  Example:
    >>> from gradxform import parallel
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
    >>> big = {"w": jnp.zeros((jax.device_count(), 4))}
    >>> with jax.set_mesh(mesh):
    ...   state = jax.jit(gx.zero1(gx.adam(1e-3), mesh).init)(parallel.replicate(big, mesh))
    >>> max(parallel.state_bytes_per_device(state).values())   # one row of m and v, + count
    36

  References:
    Rajbhandari et al., "ZeRO: Memory optimizations toward training trillion parameter
    models", SC 2020 (stage 1: optimizer state partitioning).
  """
  size = _axis_size(mesh, axis_name)
  replicated = NamedSharding(mesh, PartitionSpec())

  def shard(tree):
    return jax.tree.map(
        lambda x: _place(x, NamedSharding(mesh, zero1_spec(np.shape(x), size, axis_name))),
        tree)

  def gathered(x, like):
    target = replicated
    if explicit_mesh(mesh) and isinstance(like, jax.core.Tracer):
      sharding = jax.typeof(like).sharding
      if isinstance(sharding, NamedSharding):
        target = NamedSharding(mesh, sharding.spec)
    return _place(x, target)

  def init(params):
    return shard(inner.init(params))

  def update(updates, state, params=None, **extra):
    sliced = shard(updates)
    sliced_params = None if params is None else shard(params)
    if extra.get("grad") is not None:
      extra = dict(extra, grad=shard(extra["grad"]))
    out, state = inner.update(sliced, state, sliced_params, **extra)
    return jax.tree.map(gathered, out, updates), shard(state)

  def step(grads, state, params):  # `update_and_apply` through this wrapper
    new_params, state = update_and_apply(inner, shard(grads), state, shard(params))
    return jax.tree.map(gathered, new_params, params), shard(state)

  return GradientTransformation(init, Fn(update, None, update_and_apply=step))


def state_bytes_per_device(tree: Any) -> dict[Any, int]:
  """Bytes of `tree`'s arrays held on each device, from the arrays' addressable shards."""
  total: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      total[shard.device] = total.get(shard.device, 0) + shard.data.nbytes
  return total
