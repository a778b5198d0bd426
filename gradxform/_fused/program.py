"""A chain's elementwise tail as one program, run over every leaf by one C++ kernel.

The parts at the end of a chain that declare themselves elementwise (`gradxform._base.
elementwise`: the same float arithmetic for every element of every leaf, given a few scalars
such as step counts and hyperparameters) form its *tail*. `apply` runs the tail and the
parameter step `θ ← θ + u` as one pass of `elementwise.cc`, which reads the incoming update,
each parameter and each state slot once and writes the parameter and each slot once, in place.

The program is not written by hand per optimizer. `apply` traces the tail itself on a *probe*:
the same parts on a one-leaf tree of shape (7,), with the real step counts and other scalar
state as inputs. The trace (a jaxpr) then splits in two:

* the *prelude*, the equations on scalars only (bias corrections, schedules, `count + 1`): they
  run as ordinary JAX operations on the real values, in the caller's program;
* the *body*, the equations on per-element values: each becomes one instruction of the
  kernel's program, in the trace's order, so the kernel computes the numbers the per-leaf
  chain computes (XLA may contract or reassociate nothing here; it can turn a division by a
  scalar into a multiplication, a difference of an ulp).

Leaves are float32, bfloat16 or float16 (parameter, update and each slot alike or not): the
leaves of one dtype signature share a program, traced on a probe of those dtypes. A slot kept
in int8 (`state_dtype="int8"`, `gradxform._quantize`) is float32 on the probe, which is too
small to be quantized; its leaves get a program of their own that steps a block of 256 at a
time: dequantize the block, run the same instructions, quantize the block, each as
`_quantize` computes it. Anything the kernel cannot do exactly (other dtypes, a primitive
outside its small instruction set, a reduction, state that is not one slot per parameter)
makes `apply` return None, and the chain runs its parts one by one: the per-leaf path stays
the reference. How a program is then called over the leaves, and on which part of them each
device runs it, is `calls.py`'s.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

from gradxform import _quantize
from gradxform._base import CHECKED_KEY, apply_updates, fusable, meta
from gradxform._fused.calls import Packed, all_explicit, automatic, call, explicit, local

#: The probe leaf's shape: a size no scalar state of a transform has.
_PROBE = (7,)

# Opcodes of elementwise.cc (keep in step with its `enum Op`).
_BINARY = {"add": 0, "sub": 1, "mul": 2, "div": 3, "max": 4, "min": 5, "pow": 6, "atan2": 7,
           "gt": 40, "ge": 41, "lt": 42, "le": 43, "eq": 44, "ne": 45, "and": 46, "or": 47}
_UNARY = {"neg": 16, "sqrt": 17, "rsqrt": 18, "abs": 19, "sign": 20, "exp": 21, "log": 22,
          "log1p": 23, "expm1": 24, "tanh": 25, "copy": 26, "copy_p": 26, "square": 27,
          "floor": 28, "ceil": 29, "is_finite": 30, "not": 31, "cbrt": 32}
_SELECT = 60
_CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr"}


def tail_start(parts: list[Any]) -> int | None:
  """Where the chain's elementwise tail starts, or None when its last part is not elementwise."""
  start = len(parts)
  while start > 0 and fusable(parts[start - 1]):
    start -= 1
  return None if start == len(parts) else start


class _Unsupported(Exception):
  """The tail's trace holds something the kernel cannot compute exactly."""


class _Elem(NamedTuple):
  """A per-element value: the register that holds it."""
  reg: int


class _Uniform(NamedTuple):
  """A probe-shaped value equal in every element: the scalar it repeats."""
  value: Any


_TEMP = 1 << 20  # temporaries are numbered from here until `program` assigns registers


class _Builder:
  """Turns the body of a trace into the kernel's program, evaluating its prelude on the way.

  Every value of the program is held in a C++ `float`. A bfloat16 or float16 result is that
  float rounded to its dtype (exact: both are subsets of float32), as XLA computes a 16-bit
  operation: in float32, rounded once to the 16-bit result.
  """

  def __init__(self, in_dtypes: list[Any]):
    self.k = len(in_dtypes)
    self.in_dtypes = [jnp.dtype(d) for d in in_dtypes]
    self.scalars: list[jax.Array] = []
    self.scalar_regs: dict[int, int] = {}
    self.keep: list[Any] = []       # the scalars' original objects, so that their ids stay theirs
    self.code: list[tuple[int, int, tuple[int, ...], str]] = []

  def scalar(self, x: Any) -> int:
    """The register broadcasting the real scalar `x` (a value of the caller's program)."""
    if id(x) not in self.scalar_regs:
      v = jnp.asarray(x)
      if v.shape != () or not (v.dtype in _STORAGE or v.dtype == jnp.bool_):
        raise _Unsupported(f"scalar operand of shape {v.shape} and dtype {v.dtype}")
      self.keep.append(x)
      self.scalar_regs[id(x)] = len(self.scalars)
      self.scalars.append(v.astype(jnp.float32))
    return self.k + self.scalar_regs[id(x)]

  def reg(self, v: Any) -> int:
    if isinstance(v, _Elem):
      return v.reg
    return self.scalar(v.value if isinstance(v, _Uniform) else v)

  def emit(self, op: int, *operands: int, dtype: Any = jnp.float32) -> _Elem:
    """Appends `op` on `operands`, its result rounded to `dtype` (a float dtype, or bool)."""
    dst = _TEMP + len(self.code)
    dtype = jnp.dtype(dtype)
    self.code.append((op, dst, operands, "" if dtype in (jnp.float32, jnp.bool_)
                      else _STORAGE[dtype][1]))
    return _Elem(dst)

  def source(self, outputs: list[tuple[int, int]], quantized: list[bool] | None = None
             ) -> tuple[str, jax.Array]:
    """The C++ loop of the program (`elementwise.cc`'s `Loop`) and its scalars operand.

    `outputs`: (register, input) pairs, stored in that order. Every element loads its k
    inputs, runs the instructions in the trace's order (one float operation each, no
    contraction, 16-bit results rounded) and stores the outputs; parameter and slots are
    updated in place. An input marked in `quantized` (a slot kept in int8) is two buffers,
    codes and block scales: the loop then steps a block at a time, dequantizing the block
    into a local buffer, stepping it there and quantizing it back, as `gradxform._quantize`
    does.
    """
    def ref(r: int) -> str:
      return f"x{r}" if r < self.k else (f"s{r - self.k}" if r < _TEMP else f"t{r - _TEMP}")

    quantized = quantized or [False] * self.k
    buf, n_buf = [], 0  # each input's first buffer (a quantized one's codes; scales follow)
    for q in quantized:
      buf.append(n_buf)
      n_buf += 2 if q else 1
    body = []
    for op, dst, regs, rounding in self.code:
      expr = _C[op](*[ref(r) for r in regs])
      body.append(f"{ref(dst)} = {rounding}({expr});" if rounding else f"{ref(dst)} = {expr};")
    ctype = [_STORAGE[d][0] for d in self.in_dtypes]
    blocked = any(quantized)
    lines = [_PRELUDE + (_F16 if jnp.dtype(jnp.float16) in self.in_dtypes or any(
        c[3] == "gx_f16" for c in self.code) else "") + (_INT8 if blocked else ""),
             'extern "C" void gx_run(const float* s, void* const* b, int64_t lo, int64_t hi) {']
    for i, q in enumerate(quantized):
      lines += ([f"  int8_t* __restrict b{buf[i]} = static_cast<int8_t*>(b[{buf[i]}]);",
                 f"  float* __restrict b{buf[i] + 1} = static_cast<float*>(b[{buf[i] + 1}]);"]
                if q else [f"  {ctype[i]}* __restrict b{buf[i]} = "
                           f"static_cast<{ctype[i]}*>(b[{buf[i]}]);"])
    lines += [f"  const float s{i} = s[{i}];" for i in range(len(self.scalars))]
    loads = [f"x{i} = w{i}[i - at];" if q else
             f"x{i} = {_LOAD[ctype[i]].format(f'b{buf[i]}[i]')};" for i, q in enumerate(quantized)]
    # Registers whose value is already bfloat16: its bits are stored without a second rounding.
    exact_bf16 = {i for i, d in enumerate(self.in_dtypes) if d == jnp.bfloat16} | {
        dst for _, dst, _, rounding in self.code if rounding == "gx_bf16"}
    stores = [f"w{i}[i - at] = {ref(r)};" if quantized[i] else
              f"b{buf[i]}[i] = gx_bf16_upper({ref(r)});" if ctype[i] == "uint16_t"
              and r in exact_bf16 else
              f"b{buf[i]}[i] = {_STORE[ctype[i]].format(ref(r))};" for r, i in outputs]
    step = ["const float " + line for line in loads + body] + stores
    if not blocked:
      lines += ["  for (int64_t i = lo; i < hi; ++i) {"] + ["    " + x for x in step] + ["  }"]
    else:  # `lo` is a block's start (elementwise.cc's `Span`)
      q_in = [i for i, q in enumerate(quantized) if q]
      lines += [f"  for (int64_t at = lo; at < hi; at += {_BLOCK}) {{",
                f"    const int64_t end = hi < at + {_BLOCK} ? hi : at + {_BLOCK};"]
      lines += [f"    float w{i}[{_BLOCK}];" for i in q_in]
      lines += [f"    gx_dequantize(b{buf[i]} + at, b{buf[i] + 1}[at / {_BLOCK}], end - at, w{i});"
                for i in q_in]
      lines += ["    for (int64_t i = at; i < end; ++i) {"] + ["      " + x for x in step]
      lines += ["    }"] + [f"    gx_quantize(w{i}, end - at, b{buf[i]} + at, "
                             f"b{buf[i] + 1} + at / {_BLOCK});" for i in q_in] + ["  }"]
    lines += ["}", ""]
    scalars = jnp.stack(self.scalars) if self.scalars else jnp.zeros((1,), jnp.float32)
    return "\n".join(lines), scalars


_PRELUDE = """// Generated by gradxform/_fused/program.py from a chain's trace.
#include <math.h>
#include <stdint.h>
#include <string.h>
static inline float gx_max(float a, float b) { return (a != a || a > b) ? a : b; }
static inline float gx_min(float a, float b) { return (a != a || a < b) ? a : b; }
static inline float gx_sign(float a) { return a > 0.f ? 1.f : (a < 0.f ? -1.f : a); }
static inline float gx_bool(bool a) { return a ? 1.f : 0.f; }
// bfloat16: float32 rounded to its upper half, to nearest even (a NaN stays NaN, made quiet);
// branch-free, so that the loop vectorizes.
static inline uint32_t gx_bf16_round(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return (x != x ? (u | 0x400000u) : rounded) & 0xffff0000u;
}
static inline float gx_bf16(float x) {
  const uint32_t u = gx_bf16_round(x);
  float y;
  memcpy(&y, &u, 4);
  return y;
}
static inline uint16_t gx_bf16_bits(float x) {
  return static_cast<uint16_t>(gx_bf16_round(x) >> 16);
}
// The bits of a value already bfloat16 (rounded by the program, or loaded): no second rounding.
static inline uint16_t gx_bf16_upper(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return static_cast<uint16_t>(u >> 16);
}
static inline float gx_from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  memcpy(&x, &u, 4);
  return x;
}
"""
# Only in programs with float16 values: a compiler without `_Float16` fails only those.
_F16 = ("static inline float gx_f16(float x) {\n"
        "  return static_cast<float>(static_cast<_Float16>(x));\n}\n")

#: Entries per block of a quantized slot (`gradxform._quantize.BLOCK_SIZE`).
_BLOCK = _quantize.BLOCK_SIZE
# Only in programs with a quantized slot: `gradxform._quantize`'s `dequantize` and `quantize`
# of one block, operation for operation (its maps and rounding table are copied in by
# `_init_tables` when the program is loaded).
_INT8 = """#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
// Per map and top 16 bits of a float32 (a range of 65,536 values), one int32 for SIMD
// gathers: bits 0-7 the number of midpoints below the range; bit 8 set when the next midpoint
// lies in the range itself (at most one does), bits 16-31 then its low 16 bits. Within a
// range, a value is above that midpoint when its low bits are larger (positive) or smaller
// (negative): one lookup instead of the rounding table's and the midpoint's.
static int32_t gx_rounding[131072];
static float gx_maps[512];        // the signed map, then the unsigned one
extern "C" void gx_tables(const uint8_t* below, const float* mids, const float* maps) {
  for (uint32_t i = 0; i < 131072; ++i) {
    const float next = mids[(i >> 16) * 256 + below[i]];  // +inf after the last
    uint32_t bits;
    memcpy(&bits, &next, 4);
    const bool here = (bits >> 16) == (i & 0xffffu) && bits != 0x7f800000u;
    gx_rounding[i] = static_cast<int32_t>(below[i] | (here ? 0x100u | (bits << 16) : 0u));
  }
  memcpy(gx_maps, maps, sizeof gx_maps);
}
// The code (less 128) of a value `u` (its float32 bits) from its range's entry `e`.
static inline int32_t gx_code(uint32_t u, uint32_t e) {
  const uint32_t low = u & 0xffffu, mid = e >> 16;
  const bool above = (e & 0x100u) && ((u >> 31) ? low < mid : low > mid);
  return static_cast<int32_t>(e & 0xffu) + (above ? 1 : 0) - 128;
}
// A block's n entries, from their codes and the block's scale.
static void gx_dequantize(const int8_t* codes, float scale, int64_t n, float* x) {
  const float* map = gx_maps + (scale < 0.f ? 0 : 256) + 128;  // the block's map, at code 0
  const float size = fabsf(scale);
  const bool root = !(scale < 0.f);  // an unsigned block holds square roots
  int64_t i = 0;
#ifdef __AVX512F__  // the same operations, 16 at a time, the map's lookups as gathers
  for (; i + 16 <= n; i += 16) {
    const __m512i code = _mm512_cvtepi8_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
    __m512 v = _mm512_mul_ps(_mm512_i32gather_ps(code, map, 4), _mm512_set1_ps(size));
    _mm512_storeu_ps(x + i, root ? _mm512_mul_ps(v, v) : v);
  }
#endif
#ifdef __AVX2__  // 8 at a time
  for (; i + 8 <= n; i += 8) {
    const __m256i code = _mm256_cvtepi8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i)));
    __m256 v = _mm256_mul_ps(_mm256_i32gather_ps(map, code, 4), _mm256_set1_ps(size));
    _mm256_storeu_ps(x + i, root ? _mm256_mul_ps(v, v) : v);
  }
#endif
  for (; i < n; ++i) {
    const float v = map[codes[i]] * size;
    x[i] = root ? v * v : v;
  }
}
static void gx_quantize(const float* x, int64_t n, int8_t* codes, float* scale) {
  // In one pass: whether a NaN is here, the smallest and the largest entry (exact in any
  // order).
  bool nan = false;
  float low = x[0], high = x[0], lanes[8];
  int64_t i = 0;
#ifdef __AVX2__
  __m256 nan8 = _mm256_setzero_ps(), low8 = _mm256_set1_ps(x[0]), high8 = low8;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    low8 = _mm256_min_ps(v, low8);  // v < low8 ? v : low8
    high8 = _mm256_max_ps(v, high8);
  }
  nan = _mm256_movemask_ps(nan8) != 0;
  _mm256_storeu_ps(lanes, low8);
  for (int j = 0; j < 8; ++j) low = lanes[j] < low ? lanes[j] : low;
  _mm256_storeu_ps(lanes, high8);
  for (int j = 0; j < 8; ++j) high = lanes[j] > high ? lanes[j] : high;
#endif
  for (; i < n; ++i) {
    nan |= x[i] != x[i];
    low = x[i] < low ? x[i] : low;
    high = x[i] > high ? x[i] : high;
  }
  if (nan) {  // the whole block NaN
    memset(codes, -128, n);
    *scale = __builtin_nanf("");
    return;
  }
  const bool sign = low < 0.f;  // else the unsigned map, of the square roots
  // The largest magnitude: of a signed block's entries, or of the square roots, whose largest
  // is the root of the largest entry (sqrtf is correctly rounded, so it keeps the order).
  const float absmax = sign ? (-low > high ? -low : high) : sqrtf(high > 0.f ? high : 0.f);
  // XLA turns the division by the block's (broadcast) absmax into this multiplication. An
  // unsigned block's roots are taken as its entries are loaded (no NaN here: max(v, 0) is
  // v > 0 ? v : 0).
  const float by = 1.f / (absmax > 0.f ? absmax : 1.f);
  const int32_t* table = gx_rounding + (sign ? 0 : 65536);
  i = 0;
#ifdef __AVX512F__  // gx_code, 16 at a time, the lookups as one gather
  const __m512 by16 = _mm512_set1_ps(by);
  const __m512i low16 = _mm512_set1_epi32(0xffff), one = _mm512_set1_epi32(1);
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    if (!sign) v = _mm512_sqrt_ps(_mm512_max_ps(v, _mm512_setzero_ps()));
    const __m512i u = _mm512_castps_si512(_mm512_mul_ps(v, by16));
    const __m512i e = _mm512_i32gather_epi32(_mm512_srli_epi32(u, 16), table, 4);
    const __m512i low = _mm512_and_si512(u, low16), mid = _mm512_srli_epi32(e, 16);
    const __mmask16 negative = _mm512_movepi32_mask(u);
    const __mmask16 above = _mm512_test_epi32_mask(e, _mm512_set1_epi32(0x100)) & (
        (negative & _mm512_cmplt_epi32_mask(low, mid)) |
        (~negative & _mm512_cmpgt_epi32_mask(low, mid)));
    const __m512i below = _mm512_and_si512(e, _mm512_set1_epi32(0xff));
    const __m512i code = _mm512_sub_epi32(_mm512_mask_add_epi32(below, above, below, one),
                                          _mm512_set1_epi32(128));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(code));
  }
#endif
#ifdef __AVX2__  // 8 at a time
  const __m256 by8 = _mm256_set1_ps(by);
  const __m256i low16_8 = _mm256_set1_epi32(0xffff);
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    if (!sign) v = _mm256_sqrt_ps(_mm256_max_ps(v, _mm256_setzero_ps()));
    const __m256i u = _mm256_castps_si256(_mm256_mul_ps(v, by8));
    const __m256i e = _mm256_i32gather_epi32(table, _mm256_srli_epi32(u, 16), 4);
    const __m256i low = _mm256_and_si256(u, low16_8), mid = _mm256_srli_epi32(e, 16);
    const __m256i negative = _mm256_srai_epi32(u, 31);  // all ones where negative
    const __m256i here = _mm256_cmpeq_epi32(
        _mm256_and_si256(e, _mm256_set1_epi32(0x100)), _mm256_set1_epi32(0x100));
    const __m256i above = _mm256_and_si256(here, _mm256_blendv_epi8(
        _mm256_cmpgt_epi32(low, mid), _mm256_cmpgt_epi32(mid, low), negative));
    // below + 1 where above (its mask is -1), less 128: in [-128, 127], packed to bytes
    const __m256i code = _mm256_sub_epi32(
        _mm256_sub_epi32(_mm256_and_si256(e, _mm256_set1_epi32(0xff)), above),
        _mm256_set1_epi32(128));
    const __m128i half = _mm_packs_epi32(_mm256_castsi256_si128(code),
                                         _mm256_extracti128_si256(code, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + i), _mm_packs_epi16(half, half));
  }
#endif
  for (; i < n; ++i) {
    const float normed = (sign ? x[i] : sqrtf(x[i] > 0.f ? x[i] : 0.f)) * by;
    uint32_t u;
    memcpy(&u, &normed, 4);
    codes[i] = static_cast<int8_t>(gx_code(u, static_cast<uint32_t>(table[u >> 16])));
  }
  *scale = sign ? -absmax : absmax;
}
"""


def _init_tables(loop: Any) -> None:
  """Copies the int8 maps and rounding table into a loaded program that has them."""
  if hasattr(loop, "gx_tables"):
    arrays = [np.ascontiguousarray(x, dtype) for x, dtype in (
        (_quantize._BELOW, np.uint8), (_quantize._MIDS, np.float32), (_quantize._MAPS, np.float32))]
    loop.gx_tables(*(a.ctypes.data_as(ctypes.c_void_p) for a in arrays))


#: The kernel's dtypes: their C++ storage type and the function rounding a float to them.
_STORAGE = {jnp.dtype(jnp.float32): ("float", ""), jnp.dtype(jnp.bfloat16): ("uint16_t", "gx_bf16"),
            jnp.dtype(jnp.float16): ("_Float16", "gx_f16")}
_LOAD = {"float": "{}", "uint16_t": "gx_from_bf16({})", "_Float16": "static_cast<float>({})"}
_STORE = {"float": "{}", "uint16_t": "gx_bf16_bits({})", "_Float16": "static_cast<_Float16>({})"}

# Each opcode as a C++ expression of its operands (float32; booleans are 0 or 1).
_C = {
    0: "({} + {})".format, 1: "({} - {})".format, 2: "({} * {})".format, 3: "({} / {})".format,
    4: "gx_max({}, {})".format, 5: "gx_min({}, {})".format, 6: "powf({}, {})".format,
    7: "atan2f({}, {})".format, 16: "(-{})".format, 17: "sqrtf({})".format,
    18: "(1.f / sqrtf({}))".format, 19: "fabsf({})".format, 20: "gx_sign({})".format,
    21: "expf({})".format, 22: "logf({})".format, 23: "log1pf({})".format,
    24: "expm1f({})".format, 25: "tanhf({})".format, 26: "{}".format,
    27: lambda a: f"({a} * {a})", 28: "floorf({})".format, 29: "ceilf({})".format,
    30: "gx_bool(isfinite({}))".format, 31: "gx_bool({} == 0.f)".format, 32: "cbrtf({})".format,
    40: "gx_bool({} > {})".format, 41: "gx_bool({} >= {})".format,
    42: "gx_bool({} < {})".format, 43: "gx_bool({} <= {})".format,
    44: "gx_bool({} == {})".format, 45: "gx_bool({} != {})".format,
    46: "gx_bool({} != 0.f && {} != 0.f)".format, 47: "gx_bool({} != 0.f || {} != 0.f)".format,
    _SELECT: "({0} != 0.f ? {2} : {1})".format,
}


def _walk(b: _Builder, jaxpr: Any, consts: list[Any], args: list[Any]) -> list[Any]:
  """Evaluates `jaxpr`: scalar equations run as JAX operations, the others become code."""
  env: dict[Any, Any] = {}

  def read(v: Any) -> Any:
    return v.val if isinstance(v, core.Literal) else env[v]

  for var, val in zip(jaxpr.constvars, consts):
    env[var] = val
  for var, val in zip(jaxpr.invars, args):
    env[var] = val
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    per_element = any(isinstance(x, (_Elem, _Uniform)) for x in ins)
    if not per_element:
      if name == "broadcast_in_dim" and tuple(eqn.outvars[0].aval.shape) == _PROBE:
        env[eqn.outvars[0]] = _Uniform(ins[0])  # a scalar repeated: zeros_like, where(c, 0, x)
        continue
      outs = eqn.primitive.bind(*_varying_alike(ins), **eqn.params)
      outs = outs if eqn.primitive.multiple_results else [outs]
      for var in eqn.outvars:
        if tuple(var.aval.shape) == _PROBE:
          raise _Unsupported(f"{name} makes a per-element value from scalars")
      env.update(zip(eqn.outvars, outs))
      continue
    if name in _CALLS:
      sub = eqn.params[_CALLS[name]]
      sub_jaxpr, sub_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, [])
      env.update(zip(eqn.outvars, _walk(b, sub_jaxpr, list(sub_consts), ins)))
      continue
    out = eqn.outvars[0]
    dtype = out.aval.dtype
    if len(eqn.outvars) != 1 or not (dtype in _STORAGE or dtype == jnp.bool_):
      raise _Unsupported(f"{name} with a result of dtype {dtype}")
    if any(isinstance(x, _Elem) for x in ins):
      env[out] = _instruction(b, eqn, ins)
    else:  # per-element but equal everywhere: compute it once, as a scalar
      scalars = [x.value if isinstance(x, _Uniform) else x for x in ins]
      env[out] = _Uniform(_scalar_op(eqn, scalars))
  return [read(v) for v in jaxpr.outvars]


def _scalar_op(eqn: Any, ins: list[Any]) -> Any:
  name = eqn.primitive.name
  if name == "broadcast_in_dim":
    return ins[0]
  if name not in _BINARY and name not in _UNARY and name not in (
      "select_n", "convert_element_type", "integer_pow", "clamp"):
    raise _Unsupported(f"{name} on a per-element value")
  params = {k: v for k, v in eqn.params.items() if k != "sharding"}
  if name == "convert_element_type":
    return jnp.asarray(ins[0], params["new_dtype"])
  return eqn.primitive.bind(*_varying_alike([jnp.asarray(x) for x in ins]), **{**params, **(
      {"sharding": None} if "sharding" in eqn.params else {})})


def _varying(x: Any) -> frozenset[str]:
  """The manual axes `x` varies over (inside `shard_map`)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "manual_axis_type", None)
  return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def _varying_alike(ins: list[Any]) -> list[Any]:
  """`ins`, each made varying over the manual axes (`shard_map`) any of them varies over. The
  probe's trace holds no such types; the real scalars it is evaluated on can (a step count
  inside `shard_map`), and a primitive's operands must agree."""
  vma = [_varying(x) for x in ins]
  union = frozenset().union(*vma)
  return [x if v == union else jax.lax.pcast(x, tuple(union - v), to="varying")
          for x, v in zip(ins, vma)]


def _instruction(b: _Builder, eqn: Any, ins: list[Any]) -> Any:
  name = eqn.primitive.name
  dtype = eqn.outvars[0].aval.dtype
  if name == "div" and not isinstance(ins[1], _Elem) and dtype == jnp.float32:
    # XLA:CPU turns a division by a value equal in every element into a multiplication by its
    # reciprocal; the kernel does the same, so that the two round alike.
    d = ins[1].value if isinstance(ins[1], _Uniform) else ins[1]
    return b.emit(_BINARY["mul"], b.reg(ins[0]), b.scalar(1.0 / jnp.asarray(d, jnp.float32)))
  if name in _BINARY and len(ins) == 2:
    return b.emit(_BINARY[name], b.reg(ins[0]), b.reg(ins[1]), dtype=dtype)
  if name in _UNARY and len(ins) == 1:
    return b.emit(_UNARY[name], b.reg(ins[0]), dtype=dtype)
  if name == "integer_pow" and eqn.params["y"] == 2:
    return b.emit(_UNARY["square"], b.reg(ins[0]), dtype=dtype)
  if name == "convert_element_type":
    src = jnp.dtype(eqn.invars[0].aval.dtype)
    if src == dtype or (src in (jnp.bool_, *_STORAGE) and dtype == jnp.float32) or (
        src == jnp.bool_ and dtype in _STORAGE):  # exact: a widening, or 0 and 1
      return ins[0]
    if src in _STORAGE and dtype in _STORAGE:  # a narrowing: one rounding
      return b.emit(_UNARY["copy"], b.reg(ins[0]), dtype=dtype)
  if name == "broadcast_in_dim" and isinstance(ins[0], _Elem):
    return ins[0]
  if name == "select_n" and len(ins) == 3:
    # select_n(p, x0, x1): x1 where p else x0 (p a boolean)
    if eqn.invars[0].aval.dtype != jnp.bool_:
      raise _Unsupported("select_n on an integer predicate")
    return b.emit(_SELECT, b.reg(ins[0]), b.reg(ins[1]), b.reg(ins[2]))
  if name == "clamp":  # clamp(lo, x, hi) = min(max(x, lo), hi)
    low = b.emit(_BINARY["max"], b.reg(ins[1]), b.reg(ins[0]))
    return b.emit(_BINARY["min"], low.reg, b.reg(ins[2]))
  raise _Unsupported(f"{name} on a per-element value")


def _probe_states(parts: list[Any], real: list[Any], dtype: Any) -> list[Any]:
  """The tail's states for a one-leaf probe of `dtype`, with the real states' shared counters."""
  from gradxform._base import _shares
  probe = jax.ShapeDtypeStruct(_PROBE, dtype)
  out = []
  for tx, r in zip(parts, real):
    s = jax.eval_shape(tx.init, probe)
    if _shares(tx, s) and getattr(r, "count", 0) is None:
      s = s._replace(count=None)
    out.append(s)
  return out


class _Group(NamedTuple):
  """Leaves of one dtype signature and the same leafwise variants: one program runs over all
  of them."""
  positions: list[int]        # of its leaves among the parameters' leaves
  dtypes: tuple[Any, ...]     # of the parameter, the incoming update and the raw gradient
  instead: dict[int, Any]     # a leafwise part's index in the chain -> its variant here


def _leaf_variants(chain: Any, start: int, params: Any, n: int
                   ) -> list[tuple[tuple[Any, ...], dict[int, Any]]]:
  """Per leaf, the keys that the tail's leafwise parts (`gradxform._base.leafwise`) give it
  and the variant each part takes there: a masked weight decay is the decay on some leaves, a
  pass-through on others. Leaves of equal keys get the same variant objects."""
  lw = {i: meta(chain.parts[i], "leaf_variants") for i in range(start, len(chain.parts))}
  per_part = {i: v.keys(params) for i, v in lw.items() if v}
  made: dict[tuple[int, Any], Any] = {}
  out = []
  for leaf in range(n):
    keys = tuple((i, part_keys[leaf]) for i, part_keys in per_part.items())
    for i, key in keys:
      if (i, key) not in made:
        made[i, key] = lw[i].variant(key)
    out.append((keys, {i: made[i, key] for i, key in keys}))
  return out


def ready() -> bool:
  """Whether a fused pass can run in this trace at all: the CPU backend, x64 off, the kernels
  built (on first use; see `build.library`)."""
  from gradxform._fused import build
  return (not jax.config.jax_enable_x64 and jax.default_backend() == "cpu"
          and build.library() is not None)


def apply(chain: Any, start: int, updates: Any, states: list[Any], params: Any,
          extra: dict[str, Any], grad: Any, count: Any, write: str = "params"
          ) -> tuple[Any, list[Any]] | None:
  """New params and the tail's new states, or None where the kernel cannot run exactly.

  With `write="updates"` the pass returns the tail's updates instead of the new parameters
  (written over the incoming updates' buffers; the parameters are only read): `update`'s
  route for int8 state (`_base._Chain.update`). `gx.flatten`'s packed leaves take only the
  parameters' route.

  `chain` is the `_Chain` whose parts from `start` on form the tail; `updates` enter the tail,
  `states` are the tail's parts' states, `grad` the raw gradient an earlier part fixed (or None)
  and `count` the chain's shared step counter. Leaves of different dtypes (float32, bfloat16,
  float16, for the parameter, the update, the raw gradient and each slot) get a program each.
  """
  if (set(extra) - {CHECKED_KEY} or not extra.get(CHECKED_KEY) or not ready()
      or params is None):
    return None
  leaves, tree = jax.tree.flatten(params)
  g_leaves = jax.tree.leaves(updates)
  raw = None if grad is None else jax.tree.leaves(grad)
  columns = [leaves, g_leaves] + ([] if raw is None else [raw])
  if not leaves or any(len(c) != len(leaves) or not all(_stored(x) for x in c)
                       for c in columns):
    return None
  if any(isinstance(x, Packed) for c in columns for x in c) and (
      write != "params" or raw is not None or not all(
          _packs_alike(p, g) for p, g in zip(leaves, g_leaves))):
    return None
  groups: dict[tuple[Any, ...], _Group] = {}
  # Nothing to compute: kept as they are, except on explicit axes, where the step gives them
  # the sharding JAX's elementwise rule gives (`calls._explicit_shardings`).
  empty = [i for i, x in enumerate(leaves) if x.size == 0 and not any(
      map(explicit, x.pieces if isinstance(x, Packed) else [x]))]
  skip = set(empty)
  # With int8 state, the leaves large enough to have it quantized get programs of their own.
  quantizes = any(map(_quantize.is_quantized,
                      jax.tree.leaves(states, is_leaf=_quantize.is_quantized)))
  for i, (keys, instead) in enumerate(_leaf_variants(chain, start, params, len(leaves))):
    if i not in skip:
      dtypes = tuple(c[i].dtype for c in columns)
      big = quantizes and leaves[i].size >= _quantize.MIN_QUANTIZED_SIZE
      groups.setdefault(dtypes + keys + (big,), _Group([], dtypes, instead)).positions.append(i)
  if not groups:
    return None
  plans: list[tuple[Any, ...]] = []
  for group in groups.values():  # every program first: no kernel call unless all can run
    plan = _plan(chain, start, group, columns, tree, states, count, write)
    # Every group must keep the same state layout (leafwise variants could differ in slots).
    if plan is None or (plans and plan[2] != plans[0][2]):
      return None
    plans.append(plan)
  new_leaves: list[list[Any]] = []
  for n, (group, (run, _, _)) in enumerate(zip(groups.values(), plans)):
    outs = run(n == 0)
    new_leaves = new_leaves or [[None] * len(leaves) for _ in outs]
    for column, values in zip(new_leaves, outs):
      for i, v in zip(group.positions, values):
        column[i] = v
  _, new_scalars, (pair_tree, kinds) = plans[0]  # every group computes the same scalars
  if empty:  # an empty leaf's parameter (or update) and slots are returned as they came
    slots = [jax.tree.leaves(real, is_leaf=_quantize.is_quantized)
             for real, kind in zip(pair_tree.flatten_up_to(states), kinds) if kind == "slot"]
    for i in empty:
      for column, values in zip(new_leaves, [leaves if write == "params" else g_leaves] + slots):
        column[i] = values[i]
  it_slot, it_scalar = iter(new_leaves[1:]), iter(new_scalars)
  vals = [tree.unflatten(next(it_slot)) if k == "slot" else next(it_scalar) for k in kinds]
  return tree.unflatten(new_leaves[0]), list(jax.tree.unflatten(pair_tree, vals))


def _plan(chain: Any, start: int, group: _Group, columns: list[list[Any]], tree: Any,
          states: list[Any], count: Any, write: str = "params") -> tuple[Any, ...] | None:
  """Traces the tail for `group`'s dtypes and variants and builds its program, or None where
  it cannot run.

  Returns a function running the program over the group's leaves (giving their new leaves:
  the parameter, or with `write="updates"` the update, then each slot), the new scalar
  state, and the state's layout."""
  from gradxform._fused import build
  leaves = columns[0]
  parts = [group.instead.get(i, chain.parts[i]) for i in range(start, len(chain.parts))]
  try:
    probes = _probe_states(parts, states, group.dtypes[0])
    # Per probe leaf: a slot (the real subtree holds one array per parameter) or a scalar
    # (the real leaf is the same array in every element's step).
    pairs = [jax.tree.map(lambda a, r: (a, r), pr, st) for pr, st in zip(probes, states)]
  except Exception:  # noqa: BLE001 - the state is not laid out per parameter
    return None
  flat, pair_tree = jax.tree.flatten(pairs, is_leaf=lambda x: isinstance(x, tuple) and len(
      x) == 2 and isinstance(x[0], jax.ShapeDtypeStruct))
  slots, slot_avals, scalars, kinds = [], [], [], []
  for aval, real in flat:
    if tuple(aval.shape) == _PROBE:
      real_leaves, real_tree = jax.tree.flatten(real, is_leaf=_quantize.is_quantized)
      if real_tree != tree or aval.dtype not in _STORAGE or not (all(
          _stored(real_leaves[i]) and real_leaves[i].dtype == aval.dtype
          and real_leaves[i].shape == leaves[i].shape for i in group.positions) or all(
          _quantized_like(real_leaves[i], leaves[i]) for i in group.positions)):
        return None
      kinds.append("slot")
      slots.append([real_leaves[i] for i in group.positions])
      slot_avals.append(aval)
    else:
      if not hasattr(real, "shape") or tuple(jnp.shape(real)) != tuple(aval.shape):
        return None
      kinds.append("scalar")
      scalars.append(real)
  p_dtype, u_dtype, *raw_dtype = group.dtypes
  n_in = 2 + len(raw_dtype) + len(slots)

  def step(u, p, g, slot_vals, scalar_vals, c):
    it_slot, it_scalar = iter(slot_vals), iter(scalar_vals)
    vals = [next(it_slot) if k == "slot" else next(it_scalar) for k in kinds]
    run_states = [None] * start + list(jax.tree.unflatten(pair_tree, vals))
    u, _ = chain._run(range(start, len(chain.parts)), u, run_states, p, {CHECKED_KEY: True},
                      g, c, group.instead)
    return (apply_updates(p, u) if write == "params" else u), run_states[start:]

  def spec(x: Any) -> Any:
    return None if x is None else jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))

  def probe(dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(_PROBE, dtype)

  try:
    closed = jax.make_jaxpr(step)(probe(u_dtype), probe(p_dtype),
                                  probe(raw_dtype[0]) if raw_dtype else None, slot_avals,
                                  [spec(s) for s in scalars], spec(count))
  except Exception:  # noqa: BLE001 - a part does not trace on the probe
    return None
  in_dtypes = [u_dtype, p_dtype, *raw_dtype] + [a.dtype for a in slot_avals]
  b = _Builder(in_dtypes)
  args: list[Any] = [_Elem(i) for i in range(n_in)]
  args += list(scalars) + ([] if count is None else [count])
  try:
    outs = _walk(b, closed.jaxpr, list(closed.consts), args)
    out_regs, new_scalars = [b.reg(outs[0])], []
    for kind, v in zip(kinds, outs[1:], strict=True):
      if kind == "slot":
        out_regs.append(b.reg(v))
      elif isinstance(v, (_Elem, _Uniform)):
        raise _Unsupported("a scalar state became per-element")
      else:
        new_scalars.append(v)
    # The new parameter over the parameter's buffer (input 1), or the update over the
    # incoming update's (input 0).
    outputs = [(out_regs[0], 1 if write == "params" else 0)] + [(r, n_in - len(slots) + j)
                                    for j, r in enumerate(out_regs[1:])]
    # A slot kept in int8 (`state_dtype="int8"`) is float32 on the probe, which is too small
    # to be quantized: the program loads and stores it quantized around the same arithmetic.
    quantized = [False] * (n_in - len(slots)) + [_quantize.is_quantized(s[0]) for s in slots]
    source, scalar_operand = b.source(outputs, quantized)
  except (_Unsupported, ValueError):
    return None
  name = build.program(source, init=_init_tables)
  if name is None:
    return None
  at = group.positions

  def run(first: bool) -> list[list[jax.Array]]:
    return call(name, scalar_operand, [leaves[i] for i in at], [columns[1][i] for i in at],
                 [columns[2][i] for i in at] if raw_dtype else None, slots, first,
                 writes=1 if write == "params" else 0)

  return run, new_scalars, (pair_tree, kinds)


def _stored(x: Any) -> bool:
  """Whether `x` is an array (or `Packed` arrays) of a dtype the kernel loads and stores."""
  if isinstance(x, Packed):
    return all(_stored(p) and p.dtype == x.dtype for p in x.pieces)
  return isinstance(x, jax.Array) and x.dtype in _STORAGE


def _quantized_like(x: Any, p: Any) -> bool:
  """Whether `x` is parameter `p`'s slot kept in int8, one the kernel can step.

  A leaf's: each array whole here (`local`), or under a `jax.jit` with automatic axes, where
  `calls._sharded`'s rule gives each device its rows in whole blocks (or the whole leaf), or
  on a mesh whose axes are all explicit, where `calls._explicit_rows` does the same by
  `shard_map`; a mesh of mixed axis types leaves it to the two calls. A `flatten`'s packed
  parameter's: one quantized array over the packed space, on no explicit mesh (as its
  update and pieces, `_packs_alike`)."""
  if not (_quantize.is_quantized(x) and x.codes.dtype == jnp.int8
          and x.scales.dtype == jnp.float32
          and x.scales.shape == (_quantize.num_blocks(x.size),)):
    return False
  if isinstance(p, Packed):
    return x.shape == (p.size,) and not any(map(explicit, (x.codes, x.scales, *p.pieces)))
  return x.shape == p.shape and all(local(a) or automatic(a) or all_explicit(a)
                                    for a in (p, x.codes, x.scales))


def _packs_alike(p: Any, g: Any) -> bool:
  """Whether parameter `p` and update `g` can be stepped together: two arrays; or `p` packed
  and `g` packed alike or one packed array of `p`'s size, none of them on an explicit mesh."""
  if not isinstance(p, Packed):
    return not isinstance(g, Packed)
  arrays = p.pieces + (g.pieces if isinstance(g, Packed) else [g])
  return (g.sizes() == p.sizes() if isinstance(g, Packed) else g.shape == p.shape) and not any(
      map(explicit, arrays))
