"""Blockwise 8-bit optimizer state: `state_dtype="int8"` (Dettmers et al. 2022).

A state leaf with `MIN_QUANTIZED_SIZE` entries or more is stored as a `QuantizedArray`: one
int8 code per entry (in the parameter's shape) and one float32 scale per block of
`BLOCK_SIZE` consecutive entries of the flattened array (the last block may be shorter). An
entry is `table[code] · |scale|`, `table` one of Dettmers' two dynamic (tree) quantization
maps of 256 values in [-1, 1]:

* signed: a sign bit, then E zero bits (E = 0 … 6, the decimal exponent 10^-E), a one bit
  and 6 − E linear fraction bits (midpoints of `2^(6−E)` equal steps of [0.1, 1]);
* unsigned: the sign bit is spent on one more fraction bit, 7 − E of them.

Both hold 0, and 1 takes the place of the duplicate −0 (signed) or of the exponent-7 pattern
(unsigned) so a block's largest magnitude is stored exactly. Each block picks its map when
it is quantized: the unsigned one when no entry is negative (second moments, always; a first
moment's block where every entry is positive), else the signed one. The choice is the sign of
the stored scale (negative: signed map), so no transform has to say which moment it keeps.
Rounding is to the nearest code: the number of the table's 255 midpoints below the value. It
is found without a search: the top 16 bits of the float32 value (sign, exponent, 7 fraction
bits) index a 65,536-entry table of that count at the bottom of the bit pattern's range, and
one comparison with the next midpoint finishes it (no range holds two midpoints; checked at
import). Equal to a `searchsorted` on the midpoints, 15-20x faster on CPU.

An unsigned block stores `√x` (and squares it back): the map's smallest non-zero value is
3e-7 of the block's largest, and a second moment spans more than that within a block (it is
a squared gradient), so stored directly the small ones round to 0 and Adam's next step there
is `m / (√((1 − β₂) g²) + ε)`, tens of times too large (the "zero-point problem" of Li et al.
2023, who drop 0 from the map instead). Quantizing `√v`, the number Adam divides by, keeps a
dynamic range of 1e13 for `v`, keeps exact zeros, and bounds the error of `√v` by the map's.

Blocks of 256 entries (the paper used 2048): a smaller block confines an outlier's loss of
resolution to fewer entries, and costs 4 bytes per 256 entries, 0.016 bytes per entry, so
Adam's two moments cost 2.03 bytes per parameter.

Inside a transform the leaf is read and written through `_numerics.cast`: a `QuantizedArray`'s
`dtype` is the `INT8` marker, casting it to a float dtype dequantizes it and casting a float
array to `INT8` quantizes it, so the pattern `cast(m, cd) … cast(new_m, m.dtype)` of every
transform works unchanged. Leaves smaller than `MIN_QUANTIZED_SIZE` stay float32.

References:
  Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit optimizers via block-wise quantization",
  ICLR 2022.
  Li, Chen & Zhu, "Memory efficient optimizers with 4-bit states", NeurIPS 2023.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._parallel.sharding import explicit_mesh, mesh_of

BLOCK_SIZE = 256
MIN_QUANTIZED_SIZE = 4096


class _Int8Marker:
  """The dtype of a quantized state leaf: what `state_dtype="int8"` turns into."""

  name = "int8 (blockwise quantized)"

  def __repr__(self) -> str:
    return "INT8"

  def __reduce__(self) -> str:
    return "INT8"


INT8: Any = _Int8Marker()


def is_int8(dtype: Any) -> bool:
  """Whether `dtype` is the quantized-state marker."""
  return dtype is INT8


class QuantizedArray(NamedTuple):
  """A blockwise 8-bit quantized float32 array (see the module docstring)."""
  codes: jax.Array   # int8, the array's shape: an index into the block's map, minus 128
  scales: jax.Array  # float32 (num_blocks,): block absmax (of √x if unsigned); < 0: signed

  @property
  def dtype(self) -> Any:
    return INT8

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.codes.shape)

  @property
  def ndim(self) -> int:
    return len(self.codes.shape)

  @property
  def size(self) -> int:
    return math.prod(self.codes.shape)


def is_quantized(x: Any) -> bool:
  return isinstance(x, QuantizedArray)


def _dynamic_map(signed: bool) -> np.ndarray:
  """The 256 values of Dettmers' dynamic tree map, sorted ascending (float32)."""
  bits = 6 if signed else 7
  magnitudes = []
  for e in range(7):
    steps = 2 ** (bits - e)
    edges = np.linspace(0.1, 1.0, steps + 1)
    magnitudes.append(10.0 ** -e * (edges[:-1] + edges[1:]) / 2)
  mags = np.concatenate(magnitudes)
  values = np.concatenate([mags, -mags] if signed else [mags])
  values = np.concatenate([values, [0.0, 1.0]])
  assert values.size == 256
  return np.sort(values).astype(np.float32)


SIGNED_MAP = _dynamic_map(True)
UNSIGNED_MAP = _dynamic_map(False)
_SIGNED_MIDS = ((SIGNED_MAP[1:].astype(np.float64) + SIGNED_MAP[:-1]) / 2).astype(np.float32)
_UNSIGNED_MIDS = ((UNSIGNED_MAP[1:].astype(np.float64) + UNSIGNED_MAP[:-1]) / 2).astype(
    np.float32)


#: Bits of a float32 dropped to index the rounding table (16: 65,536 ranges per map).
_SHIFT = 16


def _midpoints_below(mids: np.ndarray) -> np.ndarray:
  """For every top-16-bit pattern of a float32, the number of `mids` below the smallest value
  with that pattern (0 for NaN patterns), as uint8; asserts no pattern's range holds two."""
  top = np.arange(1 << (32 - _SHIFT), dtype=np.uint64)
  low_bits = np.uint64((1 << _SHIFT) - 1)
  negative = (top >> np.uint64(31 - _SHIFT)) == 1
  # The smallest value has the largest low bits when negative, the smallest when positive.
  lo = np.where(negative, (top << np.uint64(_SHIFT)) | low_bits, top << np.uint64(_SHIFT))
  hi = np.where(negative, top << np.uint64(_SHIFT), (top << np.uint64(_SHIFT)) | low_bits)
  lo, hi = lo.astype(np.uint32).view(np.float32), hi.astype(np.uint32).view(np.float32)
  below_lo, below_hi = np.searchsorted(mids, lo), np.searchsorted(mids, hi)
  valid = ~np.isnan(lo)
  assert np.max((below_hi - below_lo)[valid]) <= 1, "a rounding range holds two midpoints"
  return np.where(valid, below_lo, 0).astype(np.uint8)


#: The rounding tables of both maps, signed then unsigned, and their midpoints (each followed
#: by +inf, the 256th midpoint no value exceeds).
_BELOW = np.concatenate([_midpoints_below(_SIGNED_MIDS), _midpoints_below(_UNSIGNED_MIDS)])
_MIDS = np.concatenate([_SIGNED_MIDS, [np.inf], _UNSIGNED_MIDS, [np.inf]]).astype(np.float32)
#: Both maps, signed then unsigned: a code's value is one lookup.
_MAPS = np.concatenate([SIGNED_MAP, UNSIGNED_MAP])


def _nearest_code(normed: jax.Array, signed: jax.Array) -> jax.Array:
  """Index (0-255) of the table value nearest to each `normed` entry (in [-1, 1]): the number
  of midpoints below it in the signed map where `signed`, in the unsigned one elsewhere."""
  top = jax.lax.shift_right_logical(jax.lax.bitcast_convert_type(normed, jnp.uint32),
                                    jnp.uint32(_SHIFT)).astype(jnp.int32)
  unsigned = jnp.where(signed, 0, 1)
  below = jnp.asarray(_BELOW)[top + unsigned * (1 << (32 - _SHIFT))].astype(jnp.int32)
  above_next = normed > jnp.asarray(_MIDS)[below + unsigned * 256]
  return below + above_next.astype(jnp.int32)


def num_blocks(size: int) -> int:
  return -(-size // BLOCK_SIZE)


def _whole(x: jax.Array) -> jax.Array:
  """`x` replicated where it lives on a mesh with explicit axes (else as it is)."""
  mesh = mesh_of(x)
  if explicit_mesh(mesh):
    return jax.sharding.reshard(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return x


def _blocks(x: jax.Array) -> jax.Array:
  """`x` flattened, zero-padded to whole blocks, as (num_blocks, BLOCK_SIZE). On a mesh with
  explicit axes `x` is first replicated: blocks of the flattened array do not follow its
  split (JAX refuses the reshape)."""
  flat = jnp.ravel(_whole(x))
  nb = num_blocks(flat.size)
  return jnp.pad(flat, (0, nb * BLOCK_SIZE - flat.size)).reshape(nb, BLOCK_SIZE)


def quantize(x: jax.Array) -> QuantizedArray:
  """`x` (any float dtype) as a `QuantizedArray`: per block, absmax scaling and nearest code
  (of `x` in a signed block, of `√x` in an unsigned one).

  On CPU a kernel does it where it can (`gradxform._fused.codec`), bit-equal to `_quantize_xla`.
  """
  x = jnp.asarray(x)
  return _quantize_kernel(x) if _codec_usable(x) else _quantize_xla(x)


def _codec_usable(x: jax.Array) -> bool:
  from gradxform._fused import codec
  return codec.usable(x)


@jax.custom_jvp
def _quantize_kernel(x: jax.Array) -> QuantizedArray:
  from gradxform._fused import codec
  return QuantizedArray(*codec.quantize(x))


@_quantize_kernel.defjvp
def _quantize_kernel_jvp(primals: Any, tangents: Any) -> Any:
  return jax.jvp(_quantize_xla, primals, tangents)  # the same values; XLA's derivative


def _quantize_xla(x: jax.Array) -> QuantizedArray:
  """`quantize` in XLA operations (the reference, and the path on other backends)."""
  blocks = _blocks(x.astype(jnp.float32))
  # A block holding a NaN becomes NaN whole (scale NaN, code 0): said here, because XLA's
  # min and max reductions may or may not skip a NaN, depending on the array's shape.
  nan = jnp.any(jnp.isnan(blocks), axis=1)
  signed = jnp.min(blocks, axis=1) < 0
  blocks = jnp.where(signed[:, None], blocks, jnp.sqrt(jnp.maximum(blocks, 0.0)))
  absmax = jnp.max(jnp.abs(blocks), axis=1)
  normed = blocks / jnp.where(absmax > 0, absmax, 1.0)[:, None]
  idx = jnp.where(nan[:, None], 0, _nearest_code(normed, signed[:, None]))
  codes = (idx - 128).astype(jnp.int8).reshape(-1)[:x.size].reshape(x.shape)
  scales = jnp.where(nan, jnp.nan, jnp.where(signed, -absmax, absmax))
  return QuantizedArray(codes=codes, scales=scales)


def dequantize(q: QuantizedArray, dtype: Any = jnp.float32) -> jax.Array:
  """The float array `q` stands for, in `dtype` (on CPU by a kernel where it can)."""
  values = (_dequantize_kernel(q.codes, q.scales) if _codec_usable(q.codes)
            else _dequantize_xla(q.codes, q.scales))
  return values.astype(dtype)


@jax.custom_jvp
def _dequantize_kernel(codes: jax.Array, scales: jax.Array) -> jax.Array:
  from gradxform._fused import codec
  return codec.dequantize(codes, scales)


@_dequantize_kernel.defjvp
def _dequantize_kernel_jvp(primals: Any, tangents: Any) -> Any:
  return jax.jvp(_dequantize_xla, primals, tangents)


def _dequantize_xla(codes: jax.Array, scales: jax.Array) -> jax.Array:
  """`dequantize` in XLA operations, in float32."""
  idx = _blocks(codes.astype(jnp.int32) + 128)
  scales = _whole(scales)  # as the blocks (ZeRO-1 splits the scales on explicit axes)
  signed = (scales < 0)[:, None]
  values = jnp.asarray(_MAPS)[idx + jnp.where(signed, 0, 256)]
  values = values * jnp.abs(scales)[:, None]
  values = jnp.where(signed, values, jnp.square(values))
  return values.reshape(-1)[:codes.size].reshape(codes.shape)


def zeros_like(p: Any) -> Any:
  """Int8 state for parameter `p`: a zero `QuantizedArray`, or float32 zeros when small."""
  if math.prod(jnp.shape(p)) < MIN_QUANTIZED_SIZE:
    return jnp.zeros_like(p, dtype=jnp.float32)
  return QuantizedArray(codes=jnp.zeros_like(p, dtype=jnp.int8),
                        scales=jnp.zeros([num_blocks(math.prod(jnp.shape(p)))], jnp.float32))


def full_like(p: Any, value: float) -> Any:
  """Int8 state for parameter `p` filled with `value` (float32 when small)."""
  if math.prod(jnp.shape(p)) < MIN_QUANTIZED_SIZE:
    return jnp.full_like(p, value, dtype=jnp.float32)
  return quantize(jnp.full(jnp.shape(p), value, jnp.float32))
