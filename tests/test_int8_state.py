"""`state_dtype="int8"`: blockwise 8-bit quantized optimizer state (Dettmers et al. 2022).

The quantizer is checked against a NumPy decoding of the dynamic tree map written from the
paper's bit layout (sign, zero bits for the decimal exponent, an indicator bit, linear fraction
bits), the optimizers against their float32 selves with tolerances set by the quantization
error, and the digits demo against float32 AdamW's accuracy.
"""

import math
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

import gradxform as gx
import gradxform.testing
from gradxform import _quantize
from gradxform._fused import program

from cpu_kernels import KERNELS_ON

BLOCK = 256


@pytest.fixture(params=["kernel", "xla"])
def codec(request, monkeypatch):
  """Runs a test on both forms of `quantize` / `dequantize`: the CPU kernel (where the trace
  holds whole arrays: one device, as a user's process usually has; this suite fakes 8) and
  XLA's operations."""
  if request.param == "kernel":
    monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  else:
    monkeypatch.setattr(_quantize, "_codec_usable", lambda x: False)
  assert _uses_kernel(jnp.ones(5000)) == (KERNELS_ON and request.param == "kernel")
  return request.param


def _jit(f):
  """`jax.jit` of a new function: jit's trace cache does not see the form monkeypatched."""
  return jax.jit(lambda *args: f(*args))


def _uses_kernel(x):
  return "gx_codec" in _jit(_quantize.quantize).lower(x).as_text()


def _paper_map(signed):
  """Decodes all 256 bit patterns of the dynamic tree map (Dettmers et al. 2022, §2.3)."""
  values = []
  for code in range(256):
    bits = [(code >> (7 - i)) & 1 for i in range(8)]
    sign = -1.0 if signed and bits[0] else 1.0
    rest = bits[1:] if signed else bits
    if not any(rest):               # all zero bits: 0 (the duplicate −0 is replaced by 1)
      values.append(1.0 if signed and bits[0] else 0.0)
      continue
    if not signed and rest[0] == 0 and sum(rest) == 1 and rest[-1] == 1:
      values.append(1.0)            # unsigned: the exponent-7 pattern is replaced by 1
      continue
    e = rest.index(1)               # leading zeros: the exponent 10^-e
    frac = rest[e + 1:]
    n = len(frac)
    k = int("".join(map(str, frac)), 2) if n else 0
    lo = 0.1 + 0.9 * k / 2 ** n     # the k-th of 2^n equal steps of [0.1, 1], its midpoint
    values.append(sign * 10.0 ** -e * (lo + 0.45 / 2 ** n))
  return np.sort(np.array(values))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_maps_match_the_paper(signed):
  ours = _quantize.SIGNED_MAP if signed else _quantize.UNSIGNED_MAP
  np.testing.assert_allclose(ours, _paper_map(signed), rtol=1e-6, atol=0)
  assert len(set(ours.tolist())) == 256


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_rounding_is_to_the_nearest_code(signed):
  """The table lookup equals NumPy's count of midpoints below, on every midpoint, its float32
  neighbours, the map's values, 0, ±1, subnormals and a log-uniform spread; and that code's
  value is a nearest one (float64 brute force, ties within a float32 ulp)."""
  table = _quantize.SIGNED_MAP if signed else _quantize.UNSIGNED_MAP
  mids = ((table[1:].astype(np.float64) + table[:-1]) / 2).astype(np.float32)
  rng = np.random.default_rng(0)
  spread = np.exp(rng.uniform(-45.0, 0.0, 20_000))
  x = np.concatenate([mids, np.nextafter(mids, np.float32(2)), np.nextafter(mids, np.float32(-2)),
                      table, [0.0, 1.0, 1e-45, 1e-40, 1.2e-38], spread, rng.uniform(0, 1, 20_000)])
  if signed:
    x = np.concatenate([x, -x])
  x = np.clip(x, -1.0 if signed else 0.0, 1.0).astype(np.float32)
  got = np.asarray(_quantize._nearest_code(jnp.asarray(x), jnp.asarray(signed)))
  np.testing.assert_array_equal(got, np.searchsorted(mids, x))
  dist = np.abs(table.astype(np.float64)[None, :] - x.astype(np.float64)[:, None])
  chosen = dist[np.arange(x.size), got]
  assert np.all(chosen <= dist.min(axis=1) + np.spacing(np.abs(x)).astype(np.float64))


def _blockwise(x):
  flat = np.asarray(x, np.float64).ravel()
  nb = -(-flat.size // BLOCK)
  return [flat[i * BLOCK:(i + 1) * BLOCK] for i in range(nb)]


def test_signed_blocks_error_bound_zeros_and_signs(codec):
  rng = np.random.default_rng(0)
  x = rng.standard_t(2, size=(97, 101)).astype(np.float32)   # heavy tails, a ragged last block
  x[3, :50] = 0.0
  x.ravel()[-7:] = 0.0
  q = _quantize.quantize(jnp.asarray(x))
  assert q.codes.dtype == jnp.int8 and q.codes.shape == x.shape
  assert q.scales.shape == (-(-x.size // BLOCK),)
  y = np.asarray(_quantize.dequantize(q))
  m = _paper_map(True)
  half_gap = np.max(np.diff(m)) / 2
  for xb, yb in zip(_blockwise(x), _blockwise(y)):
    absmax = np.max(np.abs(xb))
    assert np.max(np.abs(xb - yb)) <= half_gap * absmax * (1 + 1e-5)  # float32 rounding
    # nearest code: no other code of the block is closer
    cand = m[None, :] * absmax
    best = np.min(np.abs(xb[:, None] - cand), axis=1)
    np.testing.assert_allclose(np.abs(xb - yb), best, rtol=1e-5, atol=1e-7 * absmax)
    if np.max(xb) == absmax:   # +1 is a code (−1 is not, as in bitsandbytes): stored exactly
      assert np.max(yb) == pytest.approx(absmax, rel=1e-7)
  assert np.all(y[x == 0] == 0)
  assert np.all(np.sign(y[x != 0]) * np.sign(x[x != 0]) >= 0)
  assert np.all(np.sign(y[np.abs(x) > 1e-3 * np.max(np.abs(x))]) ==
                np.sign(x[np.abs(x) > 1e-3 * np.max(np.abs(x))]))


def test_unsigned_blocks_store_the_root(codec):
  # Non-negative blocks (second moments) use the unsigned map on √x: the error of √x is bounded
  # by the map's, zeros stay zero, and values 1e-10 of the block's largest are not lost.
  rng = np.random.default_rng(1)
  x = (rng.standard_normal(5000) ** 2 * 10.0 ** rng.uniform(-10, 0, 5000)).astype(np.float32)
  x[:10] = 0.0
  y = np.asarray(_quantize.dequantize(_quantize.quantize(jnp.asarray(x))))
  half_gap = np.max(np.diff(_paper_map(False))) / 2
  for xb, yb in zip(_blockwise(x), _blockwise(y)):
    root_max = np.sqrt(np.max(xb))
    assert np.max(np.abs(np.sqrt(xb) - np.sqrt(yb))) <= half_gap * root_max * (1 + 1e-5)
  assert np.all(y[:10] == 0) and np.all(y >= 0)
  tiny = (x > 0) & (x > 1e-10 * np.max(x))
  assert np.all(y[tiny] > 0)


def test_zero_and_constant_blocks_are_exact(codec):
  z = _quantize.quantize(jnp.zeros(3000))
  assert np.all(np.asarray(_quantize.dequantize(z)) == 0)
  for v in (0.1, 2.5):
    q = _quantize.quantize(jnp.full(3000, v))
    np.testing.assert_array_equal(_quantize.dequantize(q), np.float32(v))
  q = _quantize.quantize(jnp.full(3000, -2.5))   # −1 is not a code: the nearest is 1 − 0.45/64
  np.testing.assert_allclose(_quantize.dequantize(q), -2.5 * (1 - 0.45 / 64), rtol=1e-6)


def _big_tree():
  # 1,048,576 + 3,000 parameters: two large leaves and one small one (kept float32).
  return {"w": jnp.zeros((1024, 768)), "v": jnp.zeros((512, 512)), "b": jnp.zeros(3000)}


def test_adam_state_bytes_per_parameter():
  params = _big_tree()
  n = sum(x.size for x in jax.tree.leaves(params))
  state = gx.adam(1e-3, state_dtype="int8").init(params)
  nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
  assert nbytes / n <= 2.1, nbytes / n
  float_bytes = sum(x.nbytes for x in jax.tree.leaves(gx.adam(1e-3).init(params)))
  assert float_bytes / n > 7.9   # the same count over float32 state: 8 bytes per parameter


def test_small_leaves_stay_float32_and_tree_paths():
  params = {"w": jnp.ones((64, 64)), "b": jnp.ones(4095)}
  state = gx.adam(1e-3, state_dtype="int8").init(params)
  mu = state[0].trace
  assert isinstance(mu["w"], _quantize.QuantizedArray) and mu["b"].dtype == jnp.float32
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(mu)[0]]
  assert paths == ["['b']", "['w'].codes", "['w'].scales"]


def _problem():
  w = jax.random.normal(jax.random.PRNGKey(0), (130, 129)) * 0.1
  params = {"w": w, "b": jnp.ones(5)}
  c = jnp.linspace(0.1, 2.0, 129)

  def loss(p):
    return jnp.sum((p["w"] - 0.3) ** 2 * c) + jnp.sum(p["b"] ** 2)
  return params, loss


def _run(tx, params, loss, steps=40):
  def body(carry, _):
    p, s = carry
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return (gx.apply_updates(p, u), s), loss(p)
  (p, s), losses = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, steps))(params)
  return p, s, np.asarray(losses)


# The float32 runs are the reference. A quantized moment carries an error of up to 0.7 % of its
# block's largest entry at each step (half the map's widest gap), more than 10 % of a small
# entry's own value, so trajectories drift apart: tolerances are about twice what was observed
# (max relative loss difference over 40 steps / max parameter difference in learning rates:
# adam 0.12 / 3.0, adamw 0.13 / 2.9, sgd momentum 0.050 / 18, nesterov 0.044 / 15.5, lion 3.5e-6
# / 28 (a few entries whose momentum is near 0 take the other sign), muon 3.2e-4 / 2.1: the
# orthogonalization averages the errors out). A bug (a lost moment, a wrong dequantization)
# moves the loss by far more than these.
CASES = {
    "adam": (lambda sd: gx.adam(1e-2, state_dtype=sd), 1e-2, 0.25, 6),
    "adamw": (lambda sd: gx.adamw(1e-2, weight_decay=0.1, state_dtype=sd), 1e-2, 0.25, 6),
    "lion": (lambda sd: gx.lion(1e-3, state_dtype=sd), 1e-3, 1e-4, 60),
    "sgd_momentum": (lambda sd: gx.sgd(1e-3, momentum=0.9, state_dtype=sd), 1e-3, 0.1, 36),
    "sgd_nesterov": (lambda sd: gx.sgd(1e-3, momentum=0.9, nesterov=True, state_dtype=sd),
                     1e-3, 0.1, 32),
    "muon": (lambda sd: gx.muon(1e-2, state_dtype=sd), 1e-2, 1e-3, 5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_tracks_float32(name):
  make, lr, rtol, lr_steps = CASES[name]
  params, loss = _problem()
  p8, s8, l8 = _run(make("int8"), params, loss)
  p32, _, l32 = _run(make(None), params, loss)
  assert any(_quantize.is_quantized(x) for x in jax.tree.leaves(s8, is_leaf=_quantize.is_quantized))
  np.testing.assert_allclose(l8, l32, rtol=rtol)
  assert np.max(np.abs(p8["w"] - p32["w"])) <= lr_steps * lr
  assert l8[-1] < 0.95 * l8[0]   # and it optimizes


@pytest.mark.parametrize("name", ["adamw", "lion", "sgd_momentum"])
def test_check_transform(name):
  params = {"w": jnp.ones((64, 65)), "b": jnp.ones(3)}
  gx.testing.check_transform(CASES[name][0]("int8"), params, needs_params=True, pmap=False)


def test_checkpoint_round_trip_bit_identical():
  params, loss = _problem()
  tx = gx.adamw(1e-2, state_dtype="int8")
  _, state, _ = _run(tx, params, loss, steps=5)
  restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(state))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  g = jax.grad(loss)(params)
  u1, s1 = tx.update(g, state, params)
  u2, s2 = tx.update(g, restored, params)
  for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_state_dtype_spellings_and_refusals():
  params = {"w": jnp.ones((64, 64))}
  for sd in ("int8", jnp.int8, np.dtype("int8")):
    state = gx.adam(1e-3, state_dtype=sd).init(params)
    assert isinstance(state[0].trace["w"], _quantize.QuantizedArray)
  with pytest.raises(ValueError, match="state_dtype must be a floating dtype, 'int8'"):
    gx.adam(1e-3, state_dtype=jnp.int16)
  for factory in (gx.rprop, gx.cocob, gx.madgrad, gx.sm3, gx.novograd, gx.momo,
                  gx.schedule_free_adamw):
    with pytest.raises(ValueError, match="state_dtype='int8'"):
      factory(1e-3, state_dtype="int8")


def test_digits_adamw_int8_matches_float32():
  # Same seed and epochs; the test split has 360 images, so 0.5 pp is one image. Two epochs keep
  # both runs near 15 s on a shared CPU; the demo's default 15 epochs (about 25 s for both runs)
  # give 98.89 % for both, 8 epochs too; 2 epochs give 94.44 % (float32) and 94.72 % (int8).
  examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
  if examples not in sys.path:
    sys.path.insert(0, examples)
  import train_digits
  args = ["--optimizer", "adamw", "--epochs", "2", "--no-progress"]
  f32 = train_digits.main(args)
  i8 = train_digits.main(args + ["--state-dtype", "int8"])
  assert abs(i8["test_acc"] - f32["test_acc"]) <= 0.005 + 1e-6, (i8["test_acc"], f32["test_acc"])
  assert i8["test_acc"] > 0.9


@pytest.mark.parametrize("size", [512, 300_001])
def test_a_nan_makes_its_block_nan_whole(size, codec):
  """A NaN entry makes its block of 256 NaN (scale NaN), and leaves the other blocks as they
  would be, eagerly and under jit: XLA:CPU's min and max reductions skip a NaN for some shapes
  (the 300,001 entries here) and not for others, so `quantize` says it itself."""
  x = np.random.default_rng(2).normal(size=size).astype(np.float32)
  clean = x.copy()
  x[300] = np.nan
  for quantize in (_quantize.quantize, _jit(_quantize.quantize)):
    q, want = quantize(jnp.asarray(x)), quantize(jnp.asarray(clean))
    y = np.asarray(_quantize.dequantize(q))
    assert np.all(np.isnan(y[256:512])) and not np.any(np.isnan(np.delete(y, np.s_[256:512])))
    assert np.isnan(q.scales[1])
    np.testing.assert_array_equal(np.delete(np.asarray(q.scales), 1),
                                  np.delete(np.asarray(want.scales), 1))
    np.testing.assert_array_equal(np.delete(np.asarray(q.codes), np.s_[256:512]),
                                  np.delete(np.asarray(want.codes), np.s_[256:512]))


@pytest.mark.devices(8)
def test_on_a_mesh_with_explicit_axes_each_device_quantizes_its_own_rows(monkeypatch):
  """On a mesh with explicit axes the leaf's layout is in its type: where its leading axis is
  split into whole blocks, each device quantizes its own rows (a `shard_map` of the kernel;
  a split of another axis is gathered first) and the state keeps that split; otherwise the
  kernel runs on the whole leaf on each device, which XLA's form replicates too (JAX refuses
  to reshape the split array). The jitted `update` runs the fused pass and lays the state out
  so. Two eager steps (the codec kernel) give the unsplit array's updates, codes and scales,
  bit for bit; under `vmap` each problem's codes, scales and values are XLA's."""
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((4, 2), ("d", "m"), axis_types=(AxisType.Explicit,) * 2)
  x = np.random.default_rng(3).normal(size=(64, 80)).astype(np.float32)
  split = {"w": jax.device_put(x, NamedSharding(mesh, P("d", "m"))),
           "t": jax.device_put(x, NamedSharding(mesh, P(None, "d")))}
  tx = gx.adam(1e-2, state_dtype="int8")

  def run(params):
    state = tx.init(params)
    for t in (1.0, 2.0):
      updates, state = tx.update(jax.tree.map(lambda p, t=t: jnp.sin(p * t), params), state,
                                 params)
    return updates, state

  def spec(a):
    return tuple(a.sharding.spec) + (None,) * (a.ndim - len(a.sharding.spec))

  with jax.set_mesh(mesh):  # as explicit axes want; jitted, `update` is one fused pass
    step = _jit(tx.update)
    assert ("gx_elementwise" in step.lower(split, tx.init(split), split).as_text()) == KERNELS_ON
    m = step(split, tx.init(split), split)[1][0].trace
    got = run({"w": split["w"]})
  assert spec(m["w"].codes) == (("d", None) if KERNELS_ON else (None, None))
  assert spec(m["w"].scales) == (("d",) if KERNELS_ON else (None,))
  assert spec(m["t"].codes) == (None, None)  # its leading axis is whole
  assert spec(got[1][0].trace["w"].codes) == spec(m["w"].codes)
  with jax.set_mesh(mesh):  # a batch of a signed and an unsigned problem, rows split
    batch = jax.device_put(np.stack([x, np.abs(x)]), NamedSharding(mesh, P(None, "d", "m")))
    q, values = _jit(jax.vmap(lambda x: (q := _quantize.quantize(x), _quantize.dequantize(q))))(
        batch)
  assert spec(q.codes) == ((None, "d", None) if KERNELS_ON else (None, None, None))
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)  # unsplit: the plain kernel
  chex.assert_trees_all_equal(jax.device_get(got), run({"w": jnp.asarray(x)}))
  for i, one in enumerate([x, np.abs(x)]):
    want = _quantize._quantize_xla(jnp.asarray(one))
    chex.assert_trees_all_equal(jax.device_get(jax.tree.map(lambda a, i=i: a[i], q)), want)
    np.testing.assert_array_equal(values[i], _quantize._dequantize_xla(*want))


def _inputs():
  """Arrays of every kind of block: signed, non-negative (the unsigned map), zero, NaN, ±inf,
  a range of 1e17 in one block, ragged last blocks, the maps' midpoints; up to two threads'
  parts (≥ 128k)."""
  rng = np.random.default_rng(4)
  out = []
  for shape in [(4096,), (513, 77), (300_001,)]:
    x = rng.standard_normal(shape).astype(np.float32)
    wide = x * np.exp(rng.uniform(-20, 20, shape)).astype(np.float32)
    nan = x.copy()
    nan.reshape(-1)[[5, 700, x.size - 1]] = np.nan
    zeros = x.copy()
    zeros.reshape(-1)[256:1024] = 0.0
    inf = x.copy()
    inf.reshape(-1)[[3, 1000]] = [np.inf, -np.inf]
    inf.reshape(-1)[2000] = np.inf  # in a non-negative block
    inf.reshape(-1)[1792:2048] = np.abs(inf.reshape(-1)[1792:2048])
    kinds = [x, nan, inf] + ([np.abs(x) ** 3, wide, np.abs(wide), zeros, -np.abs(x)]
                             if x.size < 100_000 else [])
    out += kinds
  # Every midpoint of both maps and its neighbouring floats, 255 a block beside a 1 (the
  # block's absmax, so they are rounded as they are): ties and the values either side.
  mids = np.concatenate([_quantize._SIGNED_MIDS, _quantize._UNSIGNED_MIDS])
  ties = np.concatenate([mids, np.nextafter(mids, 2), np.nextafter(mids, -2)]).astype(np.float32)
  ties = np.concatenate([np.resize(ties, (6, 255)), np.ones((6, 1), np.float32)], axis=1)
  return out + [ties.reshape(-1), np.abs(ties).reshape(-1)]


@pytest.mark.devices(3)  # its pmap maps three rows
def test_the_cpu_kernel_equals_xlas_operations_bit_for_bit(monkeypatch):
  """`quantize` / `dequantize` by the CPU kernel (`gradxform._fused.codec`) against the same
  in XLA's operations (the form other backends run, itself checked against NumPy above):
  codes, scales and values bit for bit, eagerly, under `jit`, `vmap` and `pmap`, and their
  derivatives (XLA's, by `custom_jvp`)."""
  from gradxform._fused import codec
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  assert _uses_kernel(jnp.ones(5000)) == KERNELS_ON
  q_xla = jax.jit(_quantize._quantize_xla)
  dq_xla = jax.jit(_quantize._dequantize_xla)
  forms = [(_quantize.quantize, _quantize.dequantize),
           (_jit(_quantize.quantize), _jit(_quantize.dequantize))]
  for x in _inputs():
    x = jnp.asarray(x)
    assert codec.usable(x) == KERNELS_ON
    want = q_xla(x)
    want_values = dq_xla(*want)
    for quantize, dequantize in forms:
      chex.assert_trees_all_equal(quantize(x), want)
      chex.assert_trees_all_equal(dequantize(want), want_values)
  # A batch of three leaves: each quantized on its own.
  xs = jnp.asarray(np.stack([x[:5000] for x in _inputs()[:3]]))
  chex.assert_trees_all_equal(jax.vmap(_quantize.quantize)(xs), jax.vmap(q_xla)(xs))
  chex.assert_trees_all_equal(jax.pmap(lambda x: _quantize.quantize(x))(xs),
                              jax.vmap(q_xla)(xs))
  q = jax.vmap(q_xla)(xs)
  chex.assert_trees_all_equal(jax.vmap(_quantize.dequantize)(q), jax.vmap(dq_xla)(*q))
  # Derivatives: of the scales by the input, of the values by the scales.
  x, t = xs[0], jnp.cos(xs[1])
  chex.assert_trees_all_equal(jax.jvp(_quantize.quantize, (x,), (t,))[1].scales,
                              jax.jvp(_quantize._quantize_xla, (x,), (t,))[1].scales)
  loss = lambda s, dq: jnp.sum(dq(_quantize.QuantizedArray(q.codes[0], s)) ** 2)  # noqa: E731
  chex.assert_trees_all_equal(
      jax.grad(loss)(q.scales[0], _quantize.dequantize),
      jax.grad(loss)(q.scales[0], lambda q: _quantize._dequantize_xla(*q)))


@pytest.mark.devices(8)
@pytest.mark.parametrize("shape, spec, own", [
    ((1024, 64), ("d",), True), ((4096, 3), ("d",), True), ((12288,), (("d", "m"),), True),
    ((8, 512), ("d", "m"), False), ((300, 301), ("d",), False),
    ((1, 8, 32, 32), (None, "d"), True),  # the leading axis is 1: split along the next
    ((12, 1024), (None, ("d", "m")), False),  # ZeRO-1's split; 12 spans, 8 devices
    ((64, 4, 64), (None, "d"), False)])
def test_under_a_sharded_jit_each_device_quantizes_its_own_blocks(shape, spec, own):
  """With several devices, under `jax.jit` on a mesh with automatic axes: where a leaf is split
  along its first axis longer than 1 into whole blocks, each device runs the kernel on its
  own rows and nothing is gathered; any other split is gathered, as XLA's form gathers it
  (also where the leaf's spans of whole rows and blocks are not a multiple of the devices).
  Codes, scales and values bit-equal XLA's operations, laid out as XLA's form lays them out."""
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((4, 2), ("d", "m"), axis_types=(AxisType.Auto,) * 2)
  x = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
  x.reshape(-1)[[7, x.size - 300]] = np.nan
  x = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P(*spec)))
  runs = []
  for quantize, dequantize in [(_quantize.quantize, _quantize.dequantize),
                               (_quantize._quantize_xla,
                                lambda q: _quantize._dequantize_xla(*q))]:
    q_step, dq_step = _jit(quantize), _jit(dequantize)
    q = q_step(x)
    hlo = q_step.lower(x).compile().as_text() + dq_step.lower(q).compile().as_text()
    runs.append(((q, dq_step(q)), hlo))
  (got, hlo), (want, xla_hlo) = runs
  chex.assert_trees_all_equal(got, want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
  calls = [ln for ln in hlo.splitlines() if "gx_codec" in ln]
  assert len(calls) == (2 if KERNELS_ON else 0)
  if KERNELS_ON and own:  # each device's rows, where they are
    lead = len(spec) - 1
    local = list(shape)
    local[lead] //= math.prod(mesh.shape[a] for a in np.atleast_1d(spec[lead]))
    local = f"[{','.join(map(str, local))}]"
    assert all(local in ln for ln in calls) and "all-gather" not in hlo, calls
  assert hlo.count("all-gather(") <= xla_hlo.count("all-gather(")


@pytest.mark.devices(8)
def test_adams_two_calls_on_split_leaves_step_as_on_whole_ones(monkeypatch):
  """Adam's two calls on leaves split over 8 devices, `update` one fused pass over each
  device's blocks: 3 jitted steps equal the same steps on the leaves unsplit, bit for bit; the
  state is laid out as XLA's form lays it out and nothing is gathered. (That the kernel's
  codes are XLA's, split or not, is tested above; so are the two calls' steps against XLA's
  form on one device.) Batched (`jax.vmap`), each problem's rows are quantized in turn."""
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((4, 2), ("d", "m"), axis_types=(AxisType.Auto,) * 2)
  rng = np.random.default_rng(10)
  whole = {"w": jnp.asarray(rng.normal(size=(512, 40)), jnp.float32),
           "b": jnp.asarray(rng.normal(size=(8192,)), jnp.float32)}
  split = {"w": jax.device_put(whole["w"], NamedSharding(mesh, P("d"))),
           "b": jax.device_put(whole["b"], NamedSharding(mesh, P(("d", "m"))))}
  tx = gx.adam(1e-2, state_dtype="int8")

  def step(g, s, p):
    u, s = tx.update(g, s, p)
    return gx.apply_updates(p, u), s

  def run(params):
    jitted = _jit(step)
    p, s = params, tx.init(params)
    for t in (1.0, 2.0, 3.0):
      p, s = jitted(jax.tree.map(lambda x, t=t: jnp.sin(x * t), p), s, p)
    return (p, s), jitted.lower(p, s, p).compile().as_text()

  (got, hlo), (want, _) = run(split), run(whole)
  chex.assert_trees_all_equal(jax.device_get(got), jax.device_get(want))
  assert ("gx_elementwise" in hlo) == KERNELS_ON and "all-gather" not in hlo
  monkeypatch.setattr(_quantize, "_codec_usable", lambda x: False)  # XLA's form: no kernel
  monkeypatch.setattr(program, "ready", lambda: False)
  xla = _jit(step)(split, got[1], split)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(xla)):
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
  monkeypatch.undo()
  batch = jax.device_put(jnp.stack([whole["w"], -whole["w"]]), NamedSharding(mesh, P(None, "d")))
  batched = _jit(jax.vmap(_quantize.quantize))
  chex.assert_trees_all_equal(batched(batch), jax.vmap(_quantize._quantize_xla)(batch))
  assert ("f32[128,40]" in batched.lower(batch).compile().as_text()) == KERNELS_ON


def test_the_two_calls_with_the_kernel_equal_xlas_operations(monkeypatch):
  """Adam's two calls (`update`, `apply_updates`) run eagerly, where the codec kernel
  quantizes and dequantizes the moments, against the same steps with XLA's operations: the
  same codes, scales and parameters, bit for bit, over 3 steps. Eagerly: jitted, `update` is
  one fused pass instead (test_fused), and XLA's operations under `jax.jit` at XLA's default
  optimization level are rewritten by XLA (even a float32-state leaf then differs from the
  eager step by an ulp in places), so only eager steps compare bit for bit."""
  params = {"w": jnp.zeros((300, 301)), "v": jnp.zeros((300, 301)), "b": jnp.zeros(3000)}
  tx = gx.adam(1e-2, state_dtype="int8")
  runs = []
  for usable in (True, False):
    monkeypatch.setattr(jax, "device_count", lambda *a: 1)
    if not usable:
      monkeypatch.setattr(_quantize, "_codec_usable", lambda x: False)

    def step(g, s, p):
      u, s = tx.update(g, s, p)
      return gx.apply_updates(p, u), s
    p, s = params, tx.init(params)
    assert _uses_kernel(p["w"]) == (KERNELS_ON and usable)
    for t in (1.0, 2.0, 3.0):
      g = jax.tree.map(lambda x, t=t: jnp.sin(jnp.arange(x.size).reshape(x.shape) * t), p)
      p, s = step(g, s, p)
    runs.append((p, s))
  chex.assert_trees_all_equal(runs[0], runs[1])
