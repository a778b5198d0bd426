"""int8 state's codec as CPU kernels: one leaf's `quantize` and `dequantize`.

`gradxform._quantize` runs them wherever a kernel can (the CPU backend, the kernels built,
the array whole in this trace: `usable`), so the two calls (`update`, then `apply_updates`)
and `init` get them too, not only `update_and_apply`'s fused pass. XLA:CPU's own form of
`quantize` is bound by its table lookups, a scalar gather per entry: the two-call int8 step
took 8-14x Optax's float32 step on the large benchmark trees (RESULTS, session 13).

Each loop calls `program._INT8`'s `gx_quantize` / `gx_dequantize` on whole blocks, the
helpers the fused pass uses, which perform `_quantize`'s operations in its order: codes and
scales are bit-equal to XLA's form (tested on both). The threads of `elementwise.cc`'s
`gx_codec` handler each get whole blocks.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _quantize
from gradxform._fused import build, program

_BLOCK = _quantize.BLOCK_SIZE

# The loop of each direction over the blocks starting in [lo, hi) of one leaf, whose buffers
# are {values, codes, scales}. `gx_quantize` takes the square roots of an unsigned block in
# place, so the block is copied first.
_LOOPS = {
    True: f"""
extern "C" void gx_run(const float* s, void* const* b, int64_t lo, int64_t hi) {{
  const float* x = static_cast<const float*>(b[0]);
  int8_t* codes = static_cast<int8_t*>(b[1]);
  float* scales = static_cast<float*>(b[2]);
  for (int64_t at = lo; at < hi; at += {_BLOCK}) {{
    const int64_t n = hi < at + {_BLOCK} ? hi - at : {_BLOCK};
    float w[{_BLOCK}];
    memcpy(w, x + at, n * sizeof(float));
    gx_quantize(w, n, codes + at, scales + at / {_BLOCK});
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
  available, and all of `x` in this trace (one device, or inside `pmap` / `shard_map`). Under
  a sharded `jax.jit` XLA's form stays: the kernel has no sharding rule (its blocks run over
  the flattened array)."""
  return (jax.default_backend() == "cpu" and math.prod(jnp.shape(x)) > 0
          and program._local(x) and _program(True) is not None and _program(False) is not None)


def quantize(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`x`'s int8 codes (in its shape) and float32 block scales (where `usable`)."""
  call = jax.ffi.ffi_call(
      "gx_codec", (jax.ShapeDtypeStruct(x.shape, jnp.int8),
                   jax.ShapeDtypeStruct((_quantize.num_blocks(x.size),), jnp.float32)),
      vmap_method="sequential")
  codes, scales = call(x.astype(jnp.float32), program=_program(True), block=np.int64(_BLOCK),
                       quantize=np.int64(1))
  return codes, scales


def dequantize(codes: jax.Array, scales: jax.Array) -> jax.Array:
  """The float32 values of `codes` and `scales` (where `usable`)."""
  call = jax.ffi.ffi_call("gx_codec", jax.ShapeDtypeStruct(codes.shape, jnp.float32),
                          vmap_method="sequential")
  return call(codes, scales, program=_program(False), block=np.int64(_BLOCK), quantize=np.int64(0))
