"""How a fused program runs over the leaves: its XLA FFI calls and the layouts they run on.

`program.apply` hands over a registered program and the leaves of one dtype group; `call`
runs it by `gx_elementwise` calls of `_LEAVES_PER_CALL` leaves (each leaf's arrays are
operands of their own, the results aliased to them) or, for `gx.flatten`'s packed buffers
(`Packed`), by `gx_elementwise_packed` calls at each piece's offset (with int8 state, over
ranges of the packed space's blocks: `_block_ranges`). Where each device's part comes from:

* the trace holds every array whole (`local`: one device in the process, or inside `pmap`
  / `shard_map`): the plain calls;
* a `jax.jit` with several devices and automatic axes: the calls inside a sharding rule
  (`_sharded`, by `partitioned`), each device on its own shards, int8 leaves on their rows in
  whole blocks (`codec.rows`);
* a mesh with explicit axes: each leaf resharded to the layout the two calls give it
  (`_explicit_shardings`); int8 leaves by a `shard_map` of the calls (`_explicit_rows`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gradxform import _quantize
from gradxform._parallel.sharding import explicit_mesh, mesh_of

#: Leaves per kernel call. XLA's compile time grows faster than linearly in the aliased
#: operands of one custom call (500 leaves: 4.8 s in one call, 0.5 s in calls of 64; its
#: fusion pass alone, on 2,000 leaves, 0.74 s in calls of 64 and 0.08 s in calls of 8, but
#: smaller calls slowed ResNet-50's step: RESULTS, session 16).
_LEAVES_PER_CALL = 64
_BLOCK = _quantize.BLOCK_SIZE


class Packed:
  """A 1-D buffer that is `pieces` (arrays of any shapes) raveled and concatenated, never
  materialized.

  `gx.flatten`'s step hands its packed leaves to `apply` this way: the fused pass reads and
  writes each piece of the parameter where it is, and the state's slots (which are stored
  packed) at the piece's offset, so no concatenation or slicing runs (`gx_elementwise_packed`).
  Not a pytree node: one leaf of the tree it is in.
  """

  def __init__(self, pieces: list[jax.Array]):
    self.pieces = list(pieces)
    self.dtype = jnp.dtype(self.pieces[0].dtype)
    self.size = sum(int(np.size(x)) for x in self.pieces)
    self.shape, self.ndim = (self.size,), 1

  def sizes(self) -> list[int]:
    return [int(np.size(x)) for x in self.pieces]


#: XLA:CPU runs a program whose estimated cost is under 1,000 flops inline, in the calling
#: thread, instead of dispatching it asynchronously; a custom call counts as no flops.
_ASYNC_FLOPS = 1024


def call(name: str, scalars: jax.Array, params: list[jax.Array], g: list[jax.Array],
         raw: list[jax.Array] | None, slots: list[list[jax.Array]],
         asynchronous: bool = False, writes: int = 1) -> list[list[jax.Array]]:
  """Runs program `name` over every leaf: the new parameters, then each slot's new leaves.

  `writes`: the leaf operand the first result is written over, the parameter (1) or, for a
  program that returns the update, the update (0); a `Packed` leaf takes 1 only.

  With `asynchronous`, the scalars operand carries `_ASYNC_FLOPS` multiplications of its own
  (after the scalars, which are all the loop reads), so that XLA:CPU does not take the step
  for a cheap one and run it inline: the caller's Python thread would wait for the whole pass
  instead of dispatching the next step (measured: the call returned after 20 ms instead of
  0.25 on 20M parameters, and 2,000 small leaves were 1.2-1.3x slower than the two calls).
  """
  if asynchronous:
    one = jax.lax.optimization_barrier(jnp.ones((), jnp.float32))  # a 1 XLA cannot fold away
    scalars = jnp.concatenate([scalars, jnp.arange(_ASYNC_FLOPS, dtype=jnp.float32) * one])
  out: list[list[Any]] = [[None] * len(params) for _ in range(1 + len(slots))]
  arrays = [i for i, p in enumerate(params) if not isinstance(p, Packed)]
  for i in (i for i, p in enumerate(params) if isinstance(p, Packed)):
    for column, new in zip(out, _packed_kernel(name, scalars, params[i], g[i],
                                               [s[i] for s in slots])):
      column[i] = new
  if arrays:
    pick = lambda xs: [xs[i] for i in arrays]  # noqa: E731
    got = _leaf_calls(name, scalars, pick(params), pick(g), None if raw is None else pick(raw),
                      [pick(s) for s in slots], writes)
    for column, values in zip(out, got):
      for i, v in zip(arrays, values):
        column[i] = v
  return out


def _leaf_calls(name: str, scalars: jax.Array, params: list[jax.Array], g: list[jax.Array],
                raw: list[jax.Array] | None, slots: list[list[Any]], writes: int = 1
                ) -> list[list[Any]]:
  """`call` over leaves that are arrays: each leaf's arrays are operands of their own (a
  quantized slot's two: its codes, then its block scales)."""
  per_leaf = [[gi, pi] + ([raw[i]] if raw is not None else []) +
              [x for s in slots for x in (s[i] if _quantize.is_quantized(s[i]) else [s[i]])]
              for i, (gi, pi) in enumerate(zip(g, params))]
  k = len(per_leaf[0])
  r = 1 + k - (3 if raw is not None else 2)
  # Per leaf: the parameter (input 1; the update, input 0, where `writes` is 0) is result 0,
  # slot array j (input k - r + 1 + j) result 1 + j; the bits of `per_block` mark the block
  # scales among the inputs.
  written = [writes] + [k - r + 1 + j for j in range(r - 1)]
  widths = [2 if _quantize.is_quantized(s[0]) else 1 for s in slots]
  per_block = _scales_bits([w == 2 for w in widths], k - r + 1)
  if per_block:
    operands = [scalars, *(x for leaf in per_leaf for x in leaf)]
    if all(map(local, operands[1:])):
      got = _kernel(name, k, r, written, tuple(operands), _BLOCK, per_block)
    elif any(map(explicit, operands[1:])):  # all explicit (`program._quantized_like`)
      got = _explicit_rows(name, k, r, written, scalars, per_leaf, per_block)
    else:
      got = _sharded(name, k, r, written, operands, _BLOCK, per_block)
    columns = [got[j::r] for j in range(r)]
    it = iter(columns[1:])
    return [columns[0]] + [[_quantize.QuantizedArray(*q) for q in zip(c, next(it))]
                           if w == 2 else c for w, c in zip(widths, it)]
  targets = _explicit_shardings(per_leaf)
  per_leaf = [leaf if t is None else [_reshard(x, t) for x in leaf]
              for leaf, t in zip(per_leaf, targets)]
  got = _sharded(name, k, r, written, [scalars] + [x for leaf in per_leaf for x in leaf])
  return [[x if t is None else _reshard(x, t) for x, t in zip(got[j::r], targets)]
          for j in range(r)]


def _scales_bits(quantized: list[bool], first: int) -> int:
  """`per_block` (see `elementwise.cc`) for slots whose arrays start at buffer `first`, each
  one array, or, `quantized`, its codes and then its scales: the bits of the scales."""
  bits = 0
  for q in quantized:
    bits |= (1 << (first + 1)) if q else 0
    first += 2 if q else 1
  return bits


def _per_array(per_block: int, k: int, array: Any, blocks: Any) -> list[Any]:
  """Per buffer of a leaf's k: `blocks` for the block scales (`per_block`), else `array`."""
  return [blocks if (per_block >> i) & 1 else array for i in range(k)]

def _explicit_rows(name: str, k: int, r: int, written: list[int], scalars: jax.Array,
                   per_leaf: list[list[jax.Array]], per_block: int) -> list[jax.Array]:
  """The program over leaves with int8 slots on a mesh with explicit axes: a `shard_map`
  running it on each device's rows of each leaf in whole blocks, or on all of the leaf
  (`codec.rows` of the layout the two calls give it, `_explicit_shardings`), as int8's codec
  lays the state out there. The parameter then takes the two calls' layout again."""
  from gradxform._fused import codec
  mesh = next(mesh_of(x) for leaf in per_leaf for x in leaf if explicit(x))
  values = [[x for i, x in enumerate(leaf) if not (per_block >> i) & 1] for leaf in per_leaf]
  targets = [NamedSharding(mesh, PartitionSpec()) if t is None else t
             for t in _explicit_shardings(values)]
  layouts = [_per_array(per_block, k, array, blocks)
             for array, blocks in (codec.rows(mesh, t, leaf[1].shape)
                                   for t, leaf in zip(targets, per_leaf))]
  run = jax.shard_map(
      lambda s, *ops: tuple(_kernel(name, k, r, written, (s, *ops), _BLOCK, per_block)),
      mesh=mesh, in_specs=(PartitionSpec(), *(x.spec for leaf in layouts for x in leaf)),
      out_specs=tuple(leaf[i].spec for leaf in layouts for i in written))
  got = list(run(_reshard(scalars, NamedSharding(mesh, PartitionSpec())),
                 *(_reshard(x, s) for leaf, ss in zip(per_leaf, layouts)
                   for x, s in zip(leaf, ss))))
  got[::r] = [_reshard(x, t) for x, t in zip(got[::r], targets)]
  return got


def _explicit_shardings(per_leaf: list[list[jax.Array]]) -> list[Any]:
  """Per leaf, the sharding of its step where its arrays live on a mesh with explicit axes,
  else None.

  What the two calls give: JAX's rule for an elementwise operation on all of the leaf's arrays
  (a dimension split in one of them is split in the result), found for every such leaf in
  one abstract evaluation."""
  avals = [[jax.typeof(x) for x in leaf] for leaf in per_leaf]
  on_explicit = [i for i, leaf in enumerate(avals) if any(
      explicit_mesh(a.sharding.mesh) for a in leaf)]
  targets: list[Any] = [None] * len(per_leaf)
  if on_explicit:
    steps = jax.eval_shape(lambda leaves: [sum(x.astype(jnp.float32) for x in leaf)
                                           for leaf in leaves], [avals[i] for i in on_explicit])
    for i, step in zip(on_explicit, steps):
      targets[i] = step.sharding
  return targets


def _reshard(x: jax.Array, sharding: Any) -> jax.Array:
  return x if jax.typeof(x).sharding.spec == sharding.spec else jax.sharding.reshard(
      x, sharding)


def _kernel(name: str, k: int, r: int, written: list[int], operands: tuple[jax.Array, ...],
            block: int = 1, per_block: int = 0) -> list[jax.Array]:
  """Program `name` over `operands` (the scalars, then k arrays a leaf), in `gx_elementwise`
  calls of `_LEAVES_PER_CALL` leaves: r results a leaf, each aliased to its operand
  (`written`). `block` and `per_block`: see `elementwise.cc`."""
  scalars, arrays, out = operands[0], operands[1:], []
  for lo in range(0, len(arrays), k * _LEAVES_PER_CALL):
    chunk = arrays[lo:lo + k * _LEAVES_PER_CALL]
    n = len(chunk) // k
    results = [jax.ShapeDtypeStruct(chunk[k * m + i].shape, chunk[k * m + i].dtype)
               for m in range(n) for i in written]
    aliases = {1 + k * m + i: r * m + j for m in range(n) for j, i in enumerate(written)}
    call = jax.ffi.ffi_call("gx_elementwise", results, input_output_aliases=aliases,
                            vmap_method="sequential")
    out += call(scalars, *chunk, program=name, k=np.int64(k), block=np.int64(block),
                per_block=np.int64(per_block), writes=np.int64(written[0]))
  return out


def _packed_kernel(name: str, scalars: jax.Array, p: Packed, g: Any,
                   slots: list[Any]) -> list[Any]:
  """Program `name` over packed buffers (a `Packed` parameter, slots stored packed, the update
  `Packed` or one packed array), in `gx_elementwise_packed` calls of `_LEAVES_PER_CALL`
  pieces: each piece of the parameter is written in place, the update and each slot read
  (and written) at the piece's offset; a call's slots are the next one's.

  A slot kept in int8 (one `QuantizedArray` over the packed space) is quantized in blocks of
  the packed space, which may hold the ends of several pieces: each call then steps the
  blocks from its first piece's first whole block on (`_block_ranges`), with every piece
  that overlaps them; a piece split between two calls is stepped by both, each writing its
  own blocks, the second on the first's result.

  No sharding rule: where the pieces are sharded under `jax.jit`, XLA gathers the operands
  (flatten's packed state is not laid out like the parameters to begin with)."""
  sizes = p.sizes()
  offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
  shared = not isinstance(g, Packed)
  quantized = [_quantize.is_quantized(x) for x in slots]
  arrays = [a for x, q in zip(slots, quantized) for a in (x if q else [x])]
  per_block = _scales_bits(quantized, 2)  # the slots' arrays follow the update, the parameter
  pieces = list(p.pieces)
  if per_block:
    calls = _block_ranges(offsets, _BLOCK)
  else:
    calls = [(list(range(lo, min(len(pieces), lo + _LEAVES_PER_CALL))), 0, int(offsets[-1]))
             for lo in range(0, len(pieces), _LEAVES_PER_CALL)]
  for chosen, first, end in calls:
    own = [pieces[j] for j in chosen] if shared else [
        x for j in chosen for x in (g.pieces[j], pieces[j])]
    packed = ([g] if shared else []) + arrays
    results = [jax.ShapeDtypeStruct(pieces[j].shape, p.dtype) for j in chosen] + [
        jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays]
    n, per = len(chosen), 1 if shared else 2
    first_array = 1 + n * per + (1 if shared else 0)
    aliases = {**{1 + per * m + per - 1: m for m in range(n)},
               **{first_array + j: n + j for j in range(len(arrays))}}
    call = jax.ffi.ffi_call("gx_elementwise_packed", results, input_output_aliases=aliases,
                            vmap_method="sequential")
    got = call(scalars, *own, *packed, program=name, k=np.int64(2 + len(arrays)),
               shared_update=np.int64(shared), offsets=offsets[np.asarray(chosen, np.int64)],
               block=np.int64(_BLOCK if per_block else 1), per_block=np.int64(per_block),
               first=np.int64(first), end=np.int64(end))
    for j, new in zip(chosen, got[:n]):
      pieces[j] = new
    arrays = got[n:]
  it = iter(arrays)
  return [Packed(pieces), *(_quantize.QuantizedArray(next(it), next(it)) if q else next(it)
                            for q in quantized)]


def _block_ranges(offsets: np.ndarray, block: int) -> list[tuple[list[int], int, int]]:
  """The calls over pieces at `offsets` (their ends: `offsets[1:]`) with int8 slots: per
  call, its pieces and the range [first, end) of the packed space it steps, whole blocks
  (the last may end with the packed space). Calls of about `_LEAVES_PER_CALL` pieces, each
  starting at the block its first piece starts in; empty pieces are in no call."""
  total = int(offsets[-1])
  starts = sorted({int(offsets[lo]) // block * block
                   for lo in range(0, len(offsets) - 1, _LEAVES_PER_CALL)} | {0})
  bounds = [x for x in starts if x < total] + [total]
  calls = []
  for first, end in zip(bounds[:-1], bounds[1:]):
    lo = int(np.searchsorted(offsets[1:], first, side="right"))  # the first ending after
    hi = int(np.searchsorted(offsets[:-1], end, side="left"))  # past the last starting before
    calls.append(([j for j in range(lo, hi) if offsets[j] < offsets[j + 1]], first, end))
  return calls


def _sharded(name: str, k: int, r: int, written: list[int], operands: list[jax.Array],
             block: int = 1, per_block: int = 0) -> list[jax.Array]:
  """`_kernel`, with a sharding rule and a batching rule.

  Sharding: under `jax.jit` with sharded arrays each device runs the program on its own shards
  (a leaf's arrays take its parameter's sharding; the scalars are replicated); without a rule
  XLA's partitioner would gather every operand to every device. In `pmap` and `shard_map` it
  is the plain call. Batching (`jax.vmap`; `custom_partitioning` has no rule of its own): an
  elementwise program over a batch of leaves is the same program over larger leaves, so a
  batch with shared scalars is one call; per-element scalars (a batched step count or
  hyperparameter) take one call each. The two wrappers cost tracing and lowering time (0.4 s
  on 2,000 leaves), so a process with one device makes the plain call (`vmap` then runs it
  once per problem).

  A leaf with int8 slots (`per_block`) runs on each device's rows where its parameter's first
  axis longer than 1 is split into whole blocks (its block scales split alike), and whole on
  every device otherwise, by `codec`'s rule (`codec.block_factors`, `codec.rows`);
  a batch of such problems runs one after another (a problem's blocks are its own).
  """
  if jax.device_count() == 1:
    return _kernel(name, k, r, written, tuple(operands), block, per_block)
  from jax.experimental.custom_partitioning import ArrayMapping, SdyShardingRule
  from gradxform._fused import codec
  n = (len(operands) - 1) // k
  shapes = [operands[1 + k * m + 1].shape for m in range(n)]  # each leaf's parameter

  def run(*ops: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(_kernel(name, k, r, written, ops, block, per_block))

  def leaf_shardings(mesh: Any, arg_shapes: Any) -> list[list[Any]]:
    """Per leaf, the sharding of each of its k arrays."""
    out = []
    for m, shape in enumerate(shapes):
      s = arg_shapes[1 + k * m + 1].sharding  # the parameter's
      if per_block:  # its rows in whole blocks, or the whole leaf
        array, blocks = codec.rows(mesh, s, shape)
        out.append(_per_array(per_block, k, array, blocks))
      else:
        out.append([s] * k)
    return out

  def layouts(mesh: Any, arg_shapes: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    leaf = leaf_shardings(mesh, arg_shapes)
    return ((NamedSharding(mesh, PartitionSpec()),) + tuple(s for x in leaf for s in x),
            tuple(x[i] for x in leaf for i in written))

  sizes: dict[str, int] = {}
  replicated = ["s"]
  leaves = []
  for m, shape in enumerate(shapes):
    if per_block:  # the parameter's factors, the codes' and the scales'
      (values, codes, scales), leaf_sizes, whole = codec.block_factors(shape, f"l{m}")
      sizes.update(leaf_sizes)
      replicated += whole
      leaves.append([scales if (per_block >> i) & 1 else codes if (per_block >> (i + 1)) & 1
                     else values for i in range(k)])
    else:
      leaves.append([ArrayMapping(*(f"l{m}d{d}" for d in range(len(shape))))] * k)
  rule = SdyShardingRule(
      (ArrayMapping("s"),) + tuple(x for leaf in leaves for x in leaf),
      tuple(leaf[i] for leaf in leaves for i in written), **sizes,
      need_replication_factors=codec.in_order(replicated, [ArrayMapping("s")] + [
          x for leaf in leaves for x in leaf]))

  def batch(size: int, in_batched: list[bool], *ops: jax.Array) -> tuple[Any, tuple[bool, ...]]:
    if in_batched[0] or per_block:  # one problem after another

      def one(sliced: list[jax.Array]) -> tuple[jax.Array, ...]:
        it = iter(sliced)
        return tuple(_sharded(name, k, r, written,
                              [next(it) if b else x for x, b in zip(ops, in_batched)],
                              block, per_block))

      return jax.lax.map(one, [x for x, b in zip(ops, in_batched) if b]), (True,) * (n * r)
    wide = [x if b else jnp.broadcast_to(x, (size, *x.shape))
            for x, b in zip(ops[1:], in_batched[1:])]
    return tuple(_sharded(name, k, r, written, [ops[0], *wide])), (True,) * (n * r)

  return list(partitioned(run, layouts, rule, batch)(*operands))


def partitioned(run: Any, layouts: Any, rule: Any, batch: Any) -> Any:
  """`run` with a sharding rule and a batching rule: `custom_partitioning` under a `jax.jit`
  with several devices, each device running `run` on the operands laid out by
  `layouts(mesh, arg_shapes)` (their shardings, then the results'), `rule` the Shardy rule
  that propagates them; and `custom_vmap` with `batch` as its rule, which
  `custom_partitioning` lacks. The fused pass (`_sharded`) and int8's codec use it."""
  from jax.experimental.custom_partitioning import custom_partitioning

  def partition(mesh: Any, arg_shapes: Any, result_shape: Any) -> tuple[Any, ...]:
    args, results = layouts(mesh, arg_shapes)
    return mesh, run, results, args

  def infer(mesh: Any, arg_shapes: Any, result_shape: Any) -> Any:
    return layouts(mesh, arg_shapes)[1]

  rules = custom_partitioning(run)
  rules.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule)
  batched = jax.custom_batching.custom_vmap(rules)
  batched.def_vmap(batch)
  return batched


def local(x: Any) -> bool:
  """Whether the trace holds all of array `x`: in a process with one device, or inside
  `pmap` or `shard_map` (every axis of its mesh manual), not split by a `jax.jit` around."""
  types = mesh_of(x).axis_types
  return jax.device_count() == 1 or (bool(types) and all(
      t == jax.sharding.AxisType.Manual for t in types))


def automatic(x: Any) -> bool:
  """Whether every axis of the mesh `x` lives on in this trace (none under a plain `jax.jit`)
  is automatic: the partitioner, not the trace, then decides what each device holds."""
  return all(t == jax.sharding.AxisType.Auto for t in mesh_of(x).axis_types)


def all_explicit(x: Any) -> bool:
  """Whether every axis of the mesh `x` lives on is explicit (and it has one)."""
  types = mesh_of(x).axis_types
  return bool(types) and all(t == jax.sharding.AxisType.Explicit for t in types)


def explicit(x: jax.Array) -> bool:
  """Whether `x` lives on a mesh with explicit axes."""
  return explicit_mesh(mesh_of(x))
