"""The jax.jit + NamedSharding route and ZeRO-1 sharded state, on 8 fake CPU devices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gradxform as gx
from gradxform import parallel

from cpu_kernels import KERNELS_ON

BATCH, D_IN, HIDDEN, D_OUT = 32, 8, 16, 8


def _data(seed, steps):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(steps, BATCH, D_IN)).astype(np.float32)
  y = rng.normal(size=(steps, BATCH, D_OUT)).astype(np.float32)
  return x, y


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"w1": (rng.normal(size=(D_IN, HIDDEN)) * 0.3).astype(np.float32),
          "b1": np.zeros((HIDDEN,), np.float32),
          "w2": (rng.normal(size=(HIDDEN, D_OUT)) * 0.3).astype(np.float32),
          "b2": np.zeros((D_OUT,), np.float32)}


def _loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  if params["w2"].aval.sharding.spec[0] is not None:  # model-sharded hidden layer (explicit
    h = jax.sharding.reshard(h, P("data", None))      # axes): gather it before contracting
  return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def _step(tx, fused=False):
  """The jitted training step: `update` then `apply_updates`, or `gx.update_and_apply`."""
  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(_loss)(params, x, y)
    if fused:
      return gx.update_and_apply(tx, grads, state, params)
    updates, state = tx.update(grads, state, params)
    return gx.apply_updates(params, updates), state

  return step


def _train(tx, params, xs, ys, *, place_batch=lambda b: b, init=None, fused=False):
  step = _step(tx, fused)
  state = (init or jax.jit(tx.init))(params)
  for t in range(len(xs)):
    params, state = step(params, state, *place_batch((xs[t], ys[t])))
  return params, state


def _unsharded(tx, steps, seed=0):
  xs, ys = _data(seed, steps)
  params = jax.device_put(_params(), jax.devices()[0])
  return _train(tx, params, xs, ys)


def _close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_jit_state_carries_param_shardings_and_matches_unsharded():
  steps = 5
  mesh = jax.make_mesh((4, 2), ("data", "model"))
  layout = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}
  tx = gx.adam(1e-2)
  xs, ys = _data(0, steps)
  with jax.set_mesh(mesh):
    params = {k: jax.device_put(v, NamedSharding(mesh, layout[k])) for k, v in _params().items()}
    state0 = jax.jit(tx.init)(params)
    m0 = state0[0].trace
    assert parallel.specs(m0) == parallel.specs(params)
    params, state = _train(tx, params, xs, ys,
                           place_batch=lambda b: parallel.shard_batch(b, mesh, "data"))
  for k, v in params.items():  # the step keeps the parameters' layout
    assert v.sharding.is_equivalent_to(NamedSharding(mesh, layout[k]), v.ndim)
  for moments in (state[0].trace, state[2].nu):  # first and second moments
    assert parallel.specs(moments) == parallel.specs(params)
    for k in moments:
      assert moments[k].sharding.is_equivalent_to(params[k].sharding, moments[k].ndim)
  ref_params, ref_state = _unsharded(tx, steps)
  _close(params, ref_params)
  _close(state, ref_state, atol=1e-7)


def test_zero1_same_numerics_and_an_eighth_of_the_state_per_device():
  steps = 5
  mesh = jax.make_mesh((8,), ("data",))
  tx = gx.adam(1e-2)
  ztx = gx.zero1(tx, mesh, axis_name="data")
  xs, ys = _data(1, steps)
  with jax.set_mesh(mesh):
    params = parallel.replicate(_params(), mesh)
    rep_state = jax.jit(tx.init)(params)
    z_params, z_state = _train(ztx, params, xs, ys,
                               place_batch=lambda b: parallel.shard_batch(b, mesh, "data"))
    r_params, r_state = _train(tx, params, xs, ys,
                               place_batch=lambda b: parallel.shard_batch(b, mesh, "data"))
  # Same mesh, same gradients, element-wise the same arithmetic; XLA:CPU may still round the
  # final division differently on a 2-element slice than on the whole leaf (1 ulp).
  _close((z_params, z_state), (r_params, r_state), rtol=2e-6, atol=1e-8)
  ref_params, ref_state = _unsharded(tx, steps, seed=1)
  _close(z_params, ref_params)
  _close(z_state, ref_state, atol=1e-7)
  for leaf in jax.tree.leaves(z_params):  # parameters stay replicated
    assert leaf.sharding.is_fully_replicated
  for leaf in jax.tree.leaves(z_state):
    if leaf.ndim:
      assert "data" in leaf.sharding.spec
    else:
      assert leaf.sharding.is_fully_replicated

  def arrays(state):
    return [leaf for leaf in jax.tree.leaves(state) if leaf.ndim]

  rep_bytes = parallel.state_bytes_per_device(arrays(rep_state))
  z_bytes = parallel.state_bytes_per_device(arrays(z_state))
  assert len(z_bytes) == 8
  for device, nbytes in z_bytes.items():
    assert nbytes * 8 == rep_bytes[device]
  # With the scalar step counter included: at most one counter more than an eighth.
  total_rep = parallel.state_bytes_per_device(rep_state)
  total_z = parallel.state_bytes_per_device(z_state)
  for device in total_z:
    assert total_z[device] <= total_rep[device] / 8 + 4


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_zero1_through_update_and_apply_steps_each_slice_with_the_fused_kernel(axis_type):
  """`gx.update_and_apply(zero1(adam))`: each device steps its slice of the parameters (the
  fused kernel on the slices, where it is built), the parameters are gathered back; the same
  numbers and layouts as the two calls."""
  steps = 5
  mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
  tx = gx.adam(1e-2)
  ztx = gx.zero1(tx, mesh, axis_name="data")
  xs, ys = _data(1, steps)
  place = lambda b: parallel.shard_batch(b, mesh, "data")  # noqa: E731
  with jax.set_mesh(mesh):
    params = parallel.replicate(_params(), mesh)
    hlo = _step(ztx, fused=True).lower(params, jax.jit(ztx.init)(params),
                                       *place((xs[0], ys[0]))).compile().as_text()
    f_params, f_state = _train(ztx, params, xs, ys, place_batch=place, fused=True)
    z_params, z_state = _train(ztx, params, xs, ys, place_batch=place)
  _close((f_params, f_state), (z_params, z_state), rtol=2e-6, atol=1e-8)
  ref_params, _ = _unsharded(tx, steps, seed=1)
  _close(f_params, ref_params)
  assert parallel.specs(f_params) == parallel.specs(z_params)
  assert parallel.specs(f_state) == parallel.specs(z_state)
  for leaf in jax.tree.leaves(f_params):
    assert leaf.sharding.is_fully_replicated
  if gx.kernel_status() == "available":
    calls = " ".join(ln for ln in hlo.splitlines() if "gx_elementwise" in ln)
    # w1 (8, 16) and w2 (16, 8) split over 8 devices along their 16: slices of 8 x 2, 2 x 8
    assert "f32[8,2]" in calls and "f32[2,8]" in calls


def test_zero1_out_shardings_route():
  mesh = jax.make_mesh((8,), ("data",))
  tx = gx.sgd(0.1, momentum=0.9)
  with jax.set_mesh(mesh):
    params = parallel.replicate(_params(), mesh)
    shardings = gx.zero1_shardings(jax.eval_shape(tx.init, params), mesh)
    state = jax.jit(tx.init, out_shardings=shardings)(params)
  assert state[0].trace["w1"].sharding.spec == P("data", None) or (
      state[0].trace["w1"].sharding.spec == P(None, "data"))
  assert state[0].count.sharding.is_fully_replicated


def test_zero1_spec_rule():
  assert parallel.zero1_spec((), 8) == P()
  assert parallel.zero1_spec((3, 5), 8) == P()
  assert parallel.zero1_spec((8, 64), 8) == P(None, "data")
  assert parallel.zero1_spec((16, 12), 8, "d") == P("d", None)
  assert parallel.zero1_spec((16, 16), 8) == P("data", None)
  # The first axis longer than 1 when each device's part holds whole blocks of 256 entries
  # (int8 state's), even where another axis is longer
  assert parallel.zero1_spec((64, 128), 8) == P("data", None)
  assert parallel.zero1_spec((1, 1, 64, 64), 8) == P(None, None, "data", None)
  assert parallel.zero1_spec((12, 1024), 8) == P(None, "data")  # 12 rows: not divisible
  assert parallel.zero1_spec((8, 200), 8) == P(None, "data")  # rows of 200: no whole blocks
  assert parallel.zero1_spec((64, 128), 1) == P()
  with pytest.raises(ValueError, match="no axis"):
    gx.zero1(gx.sgd(0.1), jax.make_mesh((8,), ("data",)), axis_name="batch")


def test_zero1_transform_compares_by_value():
  mesh = jax.make_mesh((8,), ("data",))
  assert gx.zero1(gx.adam(1e-3), mesh) == gx.zero1(gx.adam(1e-3), mesh)


def test_zero1_on_a_mesh_with_auto_axes():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  tx = gx.adam(1e-2)
  xs, ys = _data(2, 2)
  params = parallel.replicate(_params(), mesh)
  z_params, z_state = _train(gx.zero1(tx, mesh), params, xs, ys,
                             place_batch=lambda b: parallel.shard_batch(b, mesh, "data"))
  ref_params, _ = _unsharded(tx, 2, seed=2)
  _close(z_params, ref_params)
  for leaf in jax.tree.leaves(z_state):
    assert leaf.sharding.is_fully_replicated == (leaf.ndim == 0)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_zero1_with_int8_state_keeps_an_eighth_on_each_device(axis_type):
  """ZeRO-1 with int8 state, fused and by the two calls: every state leaf stays split over the
  8 devices (codes and scales), as `init` placed it. A leaf of 64 rows of 128 is split by rows,
  8 to a device, 4 whole blocks: the kernels step each device's rows (on automatic axes by
  the sharding rule, on explicit ones by `shard_map`). A leaf of 12 rows of 4 blocks cannot
  give 8 devices whole rows: it is split along its columns, stepped whole on each device,
  and sliced again (before, such state came out of the step replicated; and Shardy's split of
  the mesh axis over rows and blocks failed to compile). Parameters: the two calls' within an
  ulp, and the unsharded chain's."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
  inner = gx.adam(1e-2, state_dtype="int8")
  tx = gx.zero1(inner, mesh, axis_name="data")
  rng = np.random.default_rng(4)
  raw = {"rows": rng.normal(size=(12, 1024)), "split": rng.normal(size=(64, 128))}

  def two_calls(p, s, g):
    u, s = tx.update(g, s, p)
    return gx.apply_updates(p, u), s

  with jax.set_mesh(mesh):
    params = parallel.replicate(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), raw), mesh)
    state = jax.jit(tx.init)(params)
    grads = jax.tree.map(jnp.sin, params)
    fused = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p))
    hlo = fused.lower(params, state, grads).compile().as_text()
    got = fused(params, state, grads)
    want = jax.jit(two_calls)(params, state, grads)
  assert parallel.specs(state)[0].trace == {"rows": (P(None, "data"), P("data")),
                                           "split": (P("data"), P("data"))}
  for new in (got, want):
    assert parallel.specs(new[1]) == parallel.specs(state)
    for x in jax.tree.leaves(new[1]):  # an eighth of each leaf on each device
      assert x.ndim == 0 or 8 * np.prod(x.sharding.shard_shape(x.shape)) == x.size
  _close(got[0], want[0], rtol=1e-6, atol=1e-7)
  host = jax.device_get(params)
  updates, _ = inner.update(jax.device_get(grads), inner.init(host), host)
  _close(got[0], gx.apply_updates(host, updates), rtol=1e-6, atol=1e-7)
  if KERNELS_ON:
    calls = " ".join(ln for ln in hlo.splitlines() if "gx_elementwise" in ln)
    assert "f32[8,128]" in calls and "f32[12,1024]" in calls  # rows; the whole leaf


def test_zero1_state_saved_in_the_old_layout_restores_into_the_new_one():
  """Session 16 changed `zero1_spec` for leaves whose first axis splits into whole blocks of
  256: (64, 128) was split along its 128 columns, now along its 64 rows. A checkpoint holds
  values, not layouts: a state saved from the old layout (Flax's msgpack) restores with
  `zero1_shardings` into the new one, and the next step is the same, bit for bit."""
  from flax import serialization
  mesh = jax.make_mesh((8,), ("data",))
  tx = gx.zero1(gx.adam(1e-2), mesh)
  step = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p))
  raw = {"w": np.random.default_rng(9).normal(size=(64, 128)).astype(np.float32)}
  with jax.set_mesh(mesh):
    params = parallel.replicate(raw, mesh)
    grads = jax.tree.map(jnp.cos, params)
    state = step(params, jax.jit(tx.init)(params), grads)[1]
    old = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P(
        *[None, "data"][:x.ndim]) if x.ndim == 2 else x.sharding.spec)), state)
    saved = serialization.to_bytes(old)
    target = jax.tree.map(np.zeros_like, jax.device_get(old))
    restored = jax.device_put(serialization.from_bytes(target, saved),
                              gx.zero1_shardings(target, mesh))
    assert parallel.specs(old)[0].trace["w"] == P(None, "data")
    assert parallel.specs(restored) == parallel.specs(state)
    assert parallel.specs(state)[0].trace["w"] == P("data")
    np.testing.assert_array_equal(jax.device_get(step(params, restored, grads)[0]["w"]),
                                  jax.device_get(step(params, state, grads)[0]["w"]))
