"""The numerics every transform shares: moving averages, bias correction, counters, dtypes.

Each function works on one leaf (an array); transforms lift them over trees with `jax.tree.map`
(which passes `None` leaves through). Arithmetic happens in `compute_dtype` (at least float32,
so bf16/f16 moments are accumulated without extra rounding) and results are cast back to the
dtype of the state or update they replace.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _quantize

_INT32_MAX = np.iinfo(np.int32).max


def zero_count() -> jax.Array:
  """A fresh step counter: an int32 scalar 0."""
  return jnp.zeros([], jnp.int32)


def safe_increment(count: jax.Array) -> jax.Array:
  """`count + 1`, saturating at the int32 maximum instead of wrapping to negative."""
  count = jnp.asarray(count, jnp.int32)
  return jnp.where(count < _INT32_MAX, count + 1, _INT32_MAX).astype(jnp.int32)


def compute_dtype(*xs: Any) -> Any:
  """The dtype arithmetic on these arrays happens in: their promotion, at least float32 (a
  quantized int8 state leaf counts as float32)."""
  return jnp.result_type(jnp.float32, *[x.dtype for x in xs if not _quantize.is_quantized(x)])


def cast(x: Any, dtype: Any) -> Any:
  """`x` in `dtype`, adding no traced operation when it already is one (on trees of thousands
  of leaves every no-op conversion is tracing time).

  The int8 state (`state_dtype="int8"`) goes through here too: a `QuantizedArray` cast to a
  float dtype is dequantized, and a float array cast to the `INT8` marker (a quantized leaf's
  `dtype`) is quantized, see `gradxform._quantize`.
  """
  if _quantize.is_quantized(x):
    return x if _quantize.is_int8(dtype) else _quantize.dequantize(x, dtype)
  if _quantize.is_int8(dtype):
    return _quantize.quantize(x)
  return x if x.dtype == dtype else x.astype(dtype)


def branch(pred: Any, yes: Any, no: Any) -> Any:
  """`yes()` where `pred` holds, else `no()`: a `lax.cond` under a trace, a Python branch on a
  concrete `pred` (an eager `lax.cond` of fresh closures would compile at every call)."""
  if isinstance(pred, jax.core.Tracer):
    return jax.lax.cond(pred, yes, no)
  return yes() if bool(pred) else no()


def ema(old: jax.Array, new: jax.Array, decay: Any, *, squared: bool = False) -> jax.Array:
  """One step of an exponential moving average: `decay · old + (1 − decay) · new`.

  With `squared`, the average of `new²` (a second moment), rounded as the equation reads:
  `decay · old + ((1 − decay) · new) · new`. The arithmetic is in the compute dtype of `old`
  and `new`, and so is the result: a transform uses the unrounded average within the step and
  casts it to its state's dtype only to store it. `decay` is a float or a (traced) scalar.
  """
  cd = compute_dtype(old, new)
  old, new = cast(old, cd), cast(new, cd)
  scaled = (1.0 - decay) * new
  return decay * old + (scaled * new if squared else scaled)


def scalar_dtype() -> Any:
  """float64 under `jax_enable_x64`, else float32: the dtype of step-dependent scalars."""
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def decay_power(decay: Any, t: jax.Array) -> jax.Array:
  """`decay**t` for an integer step array `t` (see `one_minus_decay_power` on accuracy)."""
  dtype = scalar_dtype()
  t = jnp.asarray(t).astype(dtype)
  if _is_number(decay):
    if decay == 0.0:
      return jnp.where(t == 0, 1.0, 0.0).astype(dtype)
    return jnp.exp(t * math.log(decay))
  return jnp.asarray(decay, dtype) ** t


def one_minus_decay_power(decay: Any, t: jax.Array) -> jax.Array:
  """`1 - decay**t`, the denominator of Kingma & Ba's bias correction.

  For a Python `decay` this is `-expm1(t * log(decay))` with the log taken in float64: plain
  float32 `1 - 0.999**1` is off by 1.3e-5 relative (0.999 is not a float32), which would
  show at the first Adam step against references that compute it in double.
  """
  dtype = scalar_dtype()
  t = jnp.asarray(t).astype(dtype)
  if _is_number(decay):
    if decay == 0.0:
      return jnp.where(t == 0, 0.0, 1.0).astype(dtype)
    return -jnp.expm1(t * math.log(decay))
  return 1.0 - jnp.asarray(decay, dtype) ** t


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def cast_like(tree: Any, like: Any) -> Any:
  """Casts each leaf of `tree` to the dtype of the matching leaf of `like`."""
  return jax.tree.map(lambda x, y: cast(x, y.dtype), tree, like, is_leaf=_quantize.is_quantized)


def state_zeros(params: Any, state_dtype: Any = None) -> Any:
  """Zeros shaped like `params`, in `state_dtype` or (None) each parameter's own dtype.

  Built with `zeros_like`, so each leaf carries its parameter's sharding (eagerly, and under
  `jax.jit` on a mesh with explicit axes): the state of sharded parameters is sharded alike.
  With the `INT8` marker (`state_dtype="int8"`), a `QuantizedArray` per leaf of at least
  `_quantize.MIN_QUANTIZED_SIZE` entries and float32 zeros for smaller leaves.
  """
  if _quantize.is_int8(state_dtype):
    return jax.tree.map(_quantize.zeros_like, params)
  _floating_params(params, state_dtype)
  return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=state_dtype or jnp.result_type(p)),
                      params)


def state_full(params: Any, value: float, state_dtype: Any = None) -> Any:
  """`value` everywhere, shaped like `params`, in `state_dtype` or each parameter's dtype."""
  if _quantize.is_int8(state_dtype):
    return jax.tree.map(lambda p: _quantize.full_like(p, value), params)
  _floating_params(params, state_dtype)
  return jax.tree.map(
      lambda p: jnp.full_like(p, value, dtype=state_dtype or jnp.result_type(p)), params)


def _floating_params(params: Any, state_dtype: Any) -> None:
  """State in each parameter's dtype needs floating parameters (TypeError naming the leaf)."""
  if state_dtype is None:
    from gradxform._tree import check_floating
    check_floating("init", params, "params")
