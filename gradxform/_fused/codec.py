"""int8 state's codec as CPU kernels: one leaf's `quantize` and `dequantize`.

`gradxform._quantize` runs them wherever a kernel can (the CPU backend, the kernels built,
and the array whole in this trace, or under a `jax.jit`: `usable`), so the two calls
(`update`, then `apply_updates`) and `init` get them too, not only `update_and_apply`'s
fused pass. Under a sharded `jax.jit`, a sharding rule gives each device its own rows where
they are whole blocks, and all of the array otherwise (`_partitioned`); the fused pass uses
the same rule (`block_factors`, `rows`, `calls.partitioned`). On a mesh with explicit axes,
where the layout is in the array's type, a `shard_map` of the kernel does the same. XLA:CPU's
own form of `quantize` is bound by its table lookups, a scalar gather per entry: the two-call
int8 step took 8-14x Optax's float32 step on the large benchmark trees (RESULTS, session 13).

Each loop calls `program._INT8`'s `gx_quantize` / `gx_dequantize` on whole blocks, the
helpers the fused pass uses, which perform `_quantize`'s operations in its order: codes and
scales are bit-equal to XLA's form (tested on both). The threads of `elementwise.cc`'s
`gx_codec` handler each get whole blocks.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gradxform import _quantize
from gradxform._fused import build, calls, program

_BLOCK = _quantize.BLOCK_SIZE

# The loop of each direction over the blocks starting in [lo, hi) of one leaf, whose buffers
# are {values, codes, scales}.
_LOOPS = {
    True: f"""
extern "C" void gx_run(const float* s, void* const* b, int64_t lo, int64_t hi) {{
  const float* x = static_cast<const float*>(b[0]);
  int8_t* codes = static_cast<int8_t*>(b[1]);
  float* scales = static_cast<float*>(b[2]);
  for (int64_t at = lo; at < hi; at += {_BLOCK}) {{
    const int64_t n = hi < at + {_BLOCK} ? hi - at : {_BLOCK};
    gx_quantize(x + at, n, codes + at, scales + at / {_BLOCK});
  }}
}}
""",
    False: f"""
extern "C" void gx_run(const float* s, void* const* b, int64_t lo, int64_t hi) {{
  float* x = static_cast<float*>(b[0]);
  const int8_t* codes = static_cast<const int8_t*>(b[1]);
  const float* scales = static_cast<const float*>(b[2]);
  for (int64_t at = lo; at < hi; at += {_BLOCK}) {{
    const int64_t n = hi < at + {_BLOCK} ? hi - at : {_BLOCK};
    gx_dequantize(codes + at, scales[at / {_BLOCK}], n, x + at);
  }}
}}
"""}


@functools.cache  # asked at every trace of every quantized leaf: hash and look up once
def _program(quantize: bool) -> str | None:
  """The registered name of one direction's loop (compiled once per machine), or None when
  the kernels are not available (`build.library`'s answer, fixed for the process)."""
  return build.program(program._PRELUDE + program._INT8 + _LOOPS[quantize],
                       init=program._init_tables)


def usable(x: jax.Array) -> bool:
  """Whether `x`'s blocks can go through the kernels here: the CPU backend, the kernels
  available, and either all of `x` in this trace (one device, or inside `pmap` / `shard_map`)
  or a `jax.jit` whose mesh axes are all automatic, where the partitioner hands each device
  its own shards (`_partitioned`), or a mesh whose axes are all explicit, where the layout is
  in `x`'s type (`_explicit_layouts`: a `shard_map` of the kernel). Elsewhere (a mesh of
  mixed axis types, a `shard_map` that leaves some axes automatic) XLA's form stays."""
  return (jax.default_backend() == "cpu" and math.prod(jnp.shape(x)) > 0
          and (calls.local(x) or calls.automatic(x) or calls.all_explicit(x))
          and _program(True) is not None and _program(False) is not None)


def _explicit_layouts(x: jax.Array) -> tuple[Any, Any] | None:
  """On a mesh whose axes are all explicit, the layouts of `x` and of its scales for the
  kernel's `shard_map` (`rows` of its type's sharding: each device's rows in whole blocks, or
  else all of `x`, gathered as XLA's form gathers it); None on other meshes."""
  if not calls.all_explicit(x):
    return None
  sharding = jax.typeof(x).sharding
  return rows(sharding.mesh, sharding, tuple(x.shape))


def quantize(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`x`'s int8 codes (in its shape) and float32 block scales (where `usable`)."""
  x = x.astype(jnp.float32)
  if calls.local(x):
    return _quantize_here(x)
  if (layouts := _explicit_layouts(x)) is not None:  # by `shard_map`
    array, blocks = layouts
    return jax.shard_map(_quantize_here, mesh=array.mesh, in_specs=array.spec,
                         out_specs=(array.spec, blocks.spec))(jax.sharding.reshard(x, array))
  return _partitioned(True, x.shape)(x)


def dequantize(codes: jax.Array, scales: jax.Array) -> jax.Array:
  """The float32 values of `codes` and `scales` (where `usable`)."""
  if calls.local(codes):
    return _dequantize_here(codes, scales)
  if (layouts := _explicit_layouts(codes)) is not None:
    array, blocks = layouts
    codes, scales = jax.sharding.reshard(codes, array), jax.sharding.reshard(scales, blocks)
    return jax.shard_map(_dequantize_here, mesh=array.mesh, in_specs=(array.spec, blocks.spec),
                         out_specs=array.spec)(codes, scales)
  return _partitioned(False, codes.shape)(codes, scales)


def _quantize_here(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The kernel over all of `x` as this trace holds it."""
  call = jax.ffi.ffi_call(
      "gx_codec", (jax.ShapeDtypeStruct(x.shape, jnp.int8),
                   jax.ShapeDtypeStruct((_quantize.num_blocks(x.size),), jnp.float32)),
      vmap_method="sequential")
  codes, scales = call(x, program=_program(True), block=np.int64(_BLOCK), quantize=np.int64(1))
  return codes, scales


def _dequantize_here(codes: jax.Array, scales: jax.Array) -> jax.Array:
  """The kernel over all of `codes` as this trace holds them."""
  call = jax.ffi.ffi_call("gx_codec", jax.ShapeDtypeStruct(codes.shape, jnp.float32),
                          vmap_method="sequential")
  return call(codes, scales, program=_program(False), block=np.int64(_BLOCK),
              quantize=np.int64(0))


def _lead(shape: tuple[int, ...]) -> int:
  """The first axis longer than 1 (the last if none): a split of it alone leaves each device
  a contiguous part of the flattened array, as a split of the leading axis does."""
  return next((i for i, n in enumerate(shape) if n > 1), max(len(shape) - 1, 0))


def leading_split(sharding: Any, shape: tuple[int, ...]) -> tuple[Any, Any] | None:
  """Where the first axis longer than 1 of an array of `shape` laid out by `sharding` is split
  so that each shard holds whole blocks (they are the array's blocks, in order): the layouts
  of the array and of its scales that give each device its own rows and their blocks; else
  None. Splits of other axes are left out: the kernel gets each device's rows whole, as XLA's
  form gathers them too."""
  spec, lead = tuple(getattr(sharding, "spec", ())), _lead(shape)
  if len(spec) <= lead or not spec[lead]:
    return None
  axes = spec[lead] if isinstance(spec[lead], tuple) else (spec[lead],)
  rows, rest = divmod(shape[lead], math.prod(sharding.mesh.shape[a] for a in axes))
  if rest or rows * math.prod(shape[lead + 1:]) % _BLOCK:
    return None
  return (NamedSharding(sharding.mesh, PartitionSpec(*[None] * lead, axes)),
          NamedSharding(sharding.mesh, PartitionSpec(axes)))


def block_factors(shape: tuple[int, ...],
                  prefix: str = "") -> tuple[Any, dict[str, int], list[str]]:
  """The Shardy factors (named from `prefix`) of an array of `shape`, of its codes and of its
  scales; their sizes that the shapes do not give; the factors to replicate.

  Where a whole number of rows (along the first axis longer than 1) holds a whole number of
  blocks (`lcm(row, block)` entries: `r` rows, `k` blocks), that axis is (`u`, `r`) and the
  scales (`u`, `k`): a split of `u` splits both alike, each device's rows being whole blocks.
  The other axes are replicated in the codes (their own factors `c`), as XLA's form lays them
  out. Where no whole number of rows makes whole blocks, everything is replicated, as XLA's
  form replicates it; so too where the number of spans `u` is not a multiple of the devices:
  Shardy would then split a mesh axis over `u` and `r` (or `k`), and such a split of a
  sub-axis has no `PartitionSpec` for `custom_partitioning` to hand the callbacks (with
  `zero1`'s split scales, compiling failed)."""
  from jax.experimental.custom_partitioning import ArrayMapping, CompoundFactor
  lead = _lead(shape)
  values = [f"{prefix}d{i}" for i in range(len(shape))]
  codes = [f"{prefix}c{i}" for i in range(len(shape))]
  row = math.prod(shape[lead + 1:])
  span = math.lcm(row, _BLOCK)
  spans, rest = divmod(shape[lead] * row, span) if shape else (0, 1)
  if rest or spans % jax.device_count():
    return ((ArrayMapping(*values), ArrayMapping(*codes), ArrayMapping(f"{prefix}b")), {},
            values + codes)
  u, r, k = f"{prefix}u", f"{prefix}r", f"{prefix}k"
  sizes = {name: n for name, n in ((r, span // row), (k, span // _BLOCK)) if n > 1}

  def axis(*factors: str) -> Any:
    present = [f for f in factors if f == u or f in sizes]
    return present[0] if len(present) == 1 else CompoundFactor(*present)

  if len(sizes) == 2:  # `u` is then no whole dimension: its size is not in the shapes
    sizes[u] = spans
  replicated = values[:lead] + values[lead + 1:] + codes[:lead] + codes[lead + 1:]
  values[lead] = codes[lead] = axis(u, r)
  return ((ArrayMapping(*values), ArrayMapping(*codes), ArrayMapping(axis(u, k))), sizes,
          replicated)


def in_order(factors: list[str], mappings: list[Any]) -> tuple[str, ...]:
  """`factors` in the order they first appear in `mappings`, as Shardy wants them."""
  seen = [f for a in mappings for d in a for f in getattr(d, "factors", (d,))]
  return tuple(sorted(factors, key=seen.index))


def rows(mesh: Any, sharding: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
  """The layouts of an array of `shape` laid out by `sharding` on `mesh` and of its scales as
  the kernel takes them: each device's own rows (`leading_split`), or else the whole array
  (gathered, as XLA's form gathers it)."""
  whole = NamedSharding(mesh, PartitionSpec())
  return leading_split(sharding, shape) or (whole, whole)


def _partitioned(quantize: bool, shape: tuple[int, ...]) -> Any:
  """One direction of the codec under a `jax.jit` with several devices.

  Sharding: where the array's first axis longer than 1 is split into whole blocks, each
  device runs the kernel on its own rows (a split of another axis is gathered first), and the
  scales are split like that axis; any other layout is gathered and every device runs the
  whole array. XLA's form gathers the same, to form blocks of the flattened array, and its
  results are laid out alike (`rows`, `block_factors`).
  Batching (`jax.vmap`, which `custom_partitioning` has no rule for): one array after
  another (each array's blocks are its own).
  """
  from jax.experimental.custom_partitioning import SdyShardingRule
  here = _quantize_here if quantize else _dequantize_here

  def layouts(mesh: Any, arg_shapes: Any) -> tuple[Any, Any]:
    array, blocks = rows(mesh, arg_shapes[0].sharding, shape)
    return ((array,), (array, blocks)) if quantize else ((array, blocks), array)

  def batch(size: int, in_batched: list[bool], *ops: jax.Array) -> tuple[Any, Any]:
    ops = tuple(x if b else jnp.broadcast_to(x, (size, *x.shape))
                for x, b in zip(ops, in_batched))
    one = _partitioned(quantize, shape)
    return jax.lax.map(lambda x: one(*x), ops), (True, True) if quantize else True

  (values, codes, blocks), sizes, whole = block_factors(shape)
  mappings = ((values,), (codes, blocks)) if quantize else ((codes, blocks), (values,))
  rule = SdyShardingRule(*mappings, **sizes, need_replication_factors=in_order(
      whole, [*mappings[0], *mappings[1]]))
  return calls.partitioned(here, layouts, rule, batch)
