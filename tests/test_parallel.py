"""Data-parallel transforms under pmap and shard_map, against single-device and NumPy runs.

Uses the 8 fake CPU devices from conftest.py.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gradxform as gx

N_DEV = 8
PER_DEV = 4
D_IN, D_OUT = 5, 3


def _data(seed=0, steps=1):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(steps, N_DEV * PER_DEV, D_IN)).astype(np.float32)
  w_true = rng.normal(size=(D_IN, D_OUT)).astype(np.float32)
  y = (x @ w_true + 0.1 * rng.normal(size=(steps, N_DEV * PER_DEV, D_OUT))).astype(np.float32)
  return x, y


def _params(seed=1):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(D_IN, D_OUT)).astype(np.float32) * 0.3),
          "b": jnp.zeros((D_OUT,), jnp.float32)}


def _loss(params, x, y):
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _replicate(tree):
  return jax.tree.map(lambda a: jnp.broadcast_to(a, (N_DEV,) + a.shape), tree)


def _by_device(a):
  return a.reshape((N_DEV, PER_DEV) + a.shape[1:])


# ------------------------------------------------------------------------------------------
# cross_replica_mean


def test_pmap_adam_replicas_identical_and_equal_single_device():
  steps = 50
  xs, ys = _data(0, steps)
  tx = gx.adam(1e-2)
  ptx = gx.chain(gx.cross_replica_mean("batch"), tx)

  @jax.jit
  def single_step(params, state, x, y):
    grads = jax.grad(_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return gx.apply_updates(params, updates), state

  @functools.partial(jax.pmap, axis_name="batch")
  def pmap_step(params, state, x, y):
    grads = jax.grad(_loss)(params, x, y)
    updates, state = ptx.update(grads, state, params)
    return gx.apply_updates(params, updates), state

  params = _params()
  state = tx.init(params)
  pparams = _replicate(params)
  pstate = jax.pmap(ptx.init)(pparams)
  for t in range(steps):
    params, state = single_step(params, state, xs[t], ys[t])
    pparams, pstate = pmap_step(pparams, pstate, _by_device(xs[t]), _by_device(ys[t]))

  for leaf in jax.tree.leaves((pparams, pstate)):
    leaf = np.asarray(leaf)
    for i in range(1, N_DEV):
      np.testing.assert_array_equal(leaf[i], leaf[0])  # bit-identical replicas
  for got, want in zip(jax.tree.leaves(pparams), jax.tree.leaves(params), strict=True):
    np.testing.assert_allclose(np.asarray(got)[0], np.asarray(want), rtol=1e-5, atol=1e-6)
  _, adam_state = pstate
  for got, want in zip(jax.tree.leaves(adam_state), jax.tree.leaves(state), strict=True):
    np.testing.assert_allclose(np.asarray(got)[0], np.asarray(want), rtol=1e-5, atol=1e-7)


def _mesh():
  return jax.make_mesh((N_DEV,), ("data",))


def _shard_map_grads(mesh, params, x, y, *, check_vma, varying=False, pmean_loss=False,
                     already_reduced="error"):
  """Per-replica gradient through cross_replica_mean inside shard_map; returns shard 0's."""
  tx = gx.cross_replica_mean("data", already_reduced=already_reduced)

  def body(params, x, y):
    if varying:
      params = jax.lax.pcast(params, "data", to="varying")
    loss = (lambda p: jax.lax.pmean(_loss(p, x, y), "data")) if pmean_loss else (
        lambda p: _loss(p, x, y))
    grads = jax.grad(loss)(params)
    out, _ = tx.update(grads, tx.init(params))
    return jax.tree.map(lambda g: g[None], out)

  f = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                    out_specs=P("data"), check_vma=check_vma)
  out = jax.jit(f)(params, x, y)
  return jax.tree.map(np.asarray, out)


def _placed(mesh):
  xs, ys = _data(3)
  params = jax.device_put(_params(), NamedSharding(mesh, P()))
  x = jax.device_put(xs[0], NamedSharding(mesh, P("data")))
  y = jax.device_put(ys[0], NamedSharding(mesh, P("data")))
  full = jax.tree.map(np.asarray, jax.jit(jax.grad(_loss))(params, x, y))
  return params, x, y, full


def _assert_each_shard_equals(out, full, rtol=1e-5):
  for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(full), strict=True):
    for i in range(N_DEV):
      np.testing.assert_allclose(got[i], want, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("check_vma,varying", [(False, False), (True, True)])
def test_shard_map_per_shard_gradients_are_averaged(check_vma, varying):
  mesh = _mesh()
  params, x, y, full = _placed(mesh)
  out = _shard_map_grads(mesh, params, x, y, check_vma=check_vma, varying=varying)
  _assert_each_shard_equals(out, full)


def test_shard_map_check_vma_sums_gradients_of_replicated_params():
  """The jax 0.10 behaviour the documentation relies on, and the three ways to handle it."""
  mesh = _mesh()
  params, x, y, full = _placed(mesh)

  def raw(params, x, y):
    return jax.tree.map(lambda g: g[None], jax.grad(_loss)(params, x, y))

  summed = jax.jit(jax.shard_map(raw, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                 out_specs=P("data")))(params, x, y)
  # Autodiff of replicated params already psums over the axis: p times the mean gradient.
  _assert_each_shard_equals(jax.tree.map(lambda g: np.asarray(g) / N_DEV, summed), full)

  with pytest.raises(ValueError, match="already reduced"):
    _shard_map_grads(mesh, params, x, y, check_vma=True)
  _assert_each_shard_equals(
      _shard_map_grads(mesh, params, x, y, check_vma=True, already_reduced="sum"), full)
  _assert_each_shard_equals(
      _shard_map_grads(mesh, params, x, y, check_vma=True, pmean_loss=True,
                       already_reduced="mean"), full)


def test_cross_replica_mean_under_vmap_axis():
  tx = gx.cross_replica_mean("v")
  g = jnp.arange(8.0).reshape(4, 2)
  out = jax.vmap(lambda u: tx.update(u, tx.init(u))[0], axis_name="v")(g)
  np.testing.assert_array_equal(np.asarray(out), np.broadcast_to([3.0, 4.0], (4, 2)))


def test_cross_replica_mean_validates_and_compares_by_value():
  assert gx.cross_replica_mean("i") == gx.cross_replica_mean("i")
  assert gx.cross_replica_mean("i") != gx.cross_replica_mean("j")
  with pytest.raises(ValueError, match="already_reduced"):
    gx.cross_replica_mean("i", already_reduced="avg")


# ------------------------------------------------------------------------------------------
# EASGD and local SGD against NumPy simulations of p workers (least squares per worker).


def _worker_problem(seed=5):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(N_DEV, PER_DEV, D_IN))
  b = rng.normal(size=(N_DEV, PER_DEV))
  x0 = rng.normal(size=(D_IN,))
  return a, b, x0


def _np_grad(a, b, x):
  return 2.0 * a.T @ (a @ x - b) / len(b)


def _jax_grad(x, a, b):
  return jax.grad(lambda x: jnp.mean((a @ x - b) ** 2))(x)


def _run_pmap(tx, a, b, x0, steps):
  @functools.partial(jax.pmap, axis_name="w")
  def step(x, state, a, b):
    updates, state = tx.update(_jax_grad(x, a, b), state, x)
    return gx.apply_updates(x, updates), state

  x = jnp.broadcast_to(jnp.asarray(x0, jnp.float32), (N_DEV, D_IN))
  state = jax.pmap(tx.init)(x)
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  for _ in range(steps):
    x, state = step(x, state, a32, b32)
  return np.asarray(x), state


def test_elastic_averaging_matches_numpy_simulation():
  a, b, x0 = _worker_problem()
  lr, alpha, steps = 0.05, 0.04, 30
  x_jax, state = _run_pmap(gx.chain(gx.sgd(lr), gx.elastic_averaging("w", alpha)), a, b, x0,
                           steps)
  xs = np.repeat(x0[None], N_DEV, axis=0)
  center = x0.copy()
  for _ in range(steps):
    grads = np.stack([_np_grad(a[i], b[i], xs[i]) for i in range(N_DEV)])
    diff = xs - center
    xs = xs - lr * grads - alpha * diff
    center = center + alpha * diff.sum(axis=0)
  np.testing.assert_allclose(x_jax, xs, rtol=1e-5, atol=1e-6)
  centers = np.asarray(state[1].center)
  for i in range(N_DEV):
    np.testing.assert_array_equal(centers[i], centers[0])  # identical on every replica
  np.testing.assert_allclose(centers[0], center, rtol=1e-5, atol=1e-6)
  assert not np.allclose(xs[0], xs[1])  # the workers really differ


@pytest.mark.parametrize("every_k", [1, 3])
def test_periodic_average_matches_numpy_local_sgd(every_k):
  a, b, x0 = _worker_problem(7)
  lr, mu, steps = 0.05, 0.9, 10
  tx = gx.chain(gx.sgd(lr, momentum=mu), gx.periodic_average("w", every_k))
  x_jax, _ = _run_pmap(tx, a, b, x0, steps)
  xs = np.repeat(x0[None], N_DEV, axis=0)
  bufs = np.zeros_like(xs)
  for t in range(1, steps + 1):
    grads = np.stack([_np_grad(a[i], b[i], xs[i]) for i in range(N_DEV)])
    bufs = mu * bufs + grads
    xs = xs - lr * bufs
    if t % every_k == 0:
      xs = np.repeat(xs.mean(axis=0, keepdims=True), N_DEV, axis=0)
  np.testing.assert_allclose(x_jax, xs, rtol=1e-5, atol=1e-6)
  if steps % every_k:
    assert not np.allclose(x_jax[0], x_jax[1])


@pytest.mark.parametrize("tx", [
    gx.chain(gx.sgd(0.05, momentum=0.9), gx.periodic_average("w", 3)),
    gx.chain(gx.sgd(0.05), gx.elastic_averaging("w", 0.04))], ids=["local_sgd", "easgd"])
def test_worker_transforms_under_shard_map_equal_pmap(tx):
  """Each shard holds one worker's parameters (in_specs P('w')); check_vma=True."""
  a, b, x0 = _worker_problem(12)
  steps = 7
  mesh = jax.make_mesh((N_DEV,), ("w",))

  def put(v):
    return jax.device_put(jnp.asarray(v, jnp.float32), NamedSharding(mesh, P("w")))

  def step(x, state, a, b):
    updates, state = tx.update(jax.vmap(_jax_grad)(x, a, b), state, x)
    return gx.apply_updates(x, updates), state

  shapes = jax.eval_shape(tx.init, jax.ShapeDtypeStruct((1, D_IN), jnp.float32))
  state_specs = jax.tree.map(lambda leaf: P() if leaf.ndim == 0 else P("w"), shapes)
  x = put(np.broadcast_to(x0, (N_DEV, D_IN)))
  state = jax.jit(jax.shard_map(tx.init, mesh=mesh, in_specs=P("w"), out_specs=state_specs))(x)
  f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P("w"), state_specs, P("w"), P("w")),
                            out_specs=(P("w"), state_specs)))
  for _ in range(steps):
    x, state = f(x, state, put(a), put(b))
  x_pmap, _ = _run_pmap(tx, a, b, x0, steps)
  np.testing.assert_allclose(np.asarray(x), x_pmap, rtol=1e-6, atol=1e-7)


def test_periodic_average_every_step_equals_synchronous_sgd():
  a, b, x0 = _worker_problem(8)
  x_local, _ = _run_pmap(gx.chain(gx.sgd(0.1), gx.periodic_average("w", 1)), a, b, x0, 5)
  x_sync, _ = _run_pmap(gx.chain(gx.cross_replica_mean("w"), gx.sgd(0.1)), a, b, x0, 5)
  np.testing.assert_allclose(x_local, x_sync, rtol=1e-5, atol=1e-6)


def test_parallel_transforms_need_params_and_validate():
  with pytest.raises(ValueError, match="alpha"):
    gx.elastic_averaging("w", 1.5)
  with pytest.raises(ValueError, match="every_k"):
    gx.periodic_average("w", 0)
  tx = gx.elastic_averaging("w", 0.1)
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update({"a": jnp.ones(2)}, tx.init({"a": jnp.ones(2)}))
  assert gx.periodic_average("w", 4) == gx.periodic_average("w", 4)


# ------------------------------------------------------------------------------------------
# Stale gradients against a NumPy replay.


def _replay(a, b, x0, lr, taus):
  x = x0.copy()
  history = []
  for t, tau in enumerate(taus, start=1):
    history.append(_np_grad(a, b, x))
    src = t - tau
    applied = history[src - 1] if src >= 1 else np.zeros_like(x)
    x = x - lr * applied
  return x


def _run_stale(tx, a, b, x0, steps):
  @jax.jit
  def step(x, state):
    updates, state = tx.update(_jax_grad(x, a, b), state, x)
    return gx.apply_updates(x, updates), state

  x = jnp.asarray(x0, jnp.float32)
  state = tx.init(x)
  for _ in range(steps):
    x, state = step(x, state)
  return np.asarray(x), state


def test_stale_fixed_delay_matches_replay():
  a, b, x0 = _worker_problem(9)
  a, b = a[0], b[0]
  lr, steps, delay = 0.05, 12, 3
  got, _ = _run_stale(gx.chain(gx.stale_gradients(delay), gx.sgd(lr)), a, b, x0, steps)
  np.testing.assert_allclose(got, _replay(a, b, x0, lr, [delay] * steps), rtol=1e-5, atol=1e-6)
  # The first `delay` outputs are zero: parameters do not move.
  early, _ = _run_stale(gx.chain(gx.stale_gradients(delay), gx.sgd(lr)), a, b, x0, delay)
  np.testing.assert_array_equal(early, np.asarray(jnp.asarray(x0, jnp.float32)))


def test_stale_random_delay_matches_replay():
  a, b, x0 = _worker_problem(10)
  a, b = a[0], b[0]
  lr, steps, delay, max_delay, seed = 0.05, 15, 1, 4, 3
  tx = gx.chain(gx.stale_gradients(delay, max_delay=max_delay, seed=seed), gx.sgd(lr))
  got, _ = _run_stale(tx, a, b, x0, steps)
  key, taus = jax.random.PRNGKey(seed), []  # the documented stream: split, then randint
  for _ in range(steps):
    key, sub = jax.random.split(key)
    taus.append(int(jax.random.randint(sub, [], delay, max_delay + 1, dtype=jnp.int32)))
  assert min(taus) >= delay and max(taus) <= max_delay and len(set(taus)) > 1
  np.testing.assert_allclose(got, _replay(a, b, x0, lr, taus), rtol=1e-5, atol=1e-6)


def test_stale_zero_delay_is_the_plain_optimizer():
  a, b, x0 = _worker_problem(11)
  a, b = a[0], b[0]
  plain, _ = _run_stale(gx.adam(0.05), a, b, x0, 10)
  for stale in (gx.stale_gradients(0), gx.stale_gradients(0, max_delay=0)):
    got, _ = _run_stale(gx.chain(stale, gx.adam(0.05)), a, b, x0, 10)
    np.testing.assert_array_equal(got, plain)


def test_stale_state_is_a_ring_buffer_and_validates():
  tx = gx.stale_gradients(2, max_delay=5)
  state = tx.init({"w": jnp.ones((3, 2))})
  assert state.buffer["w"].shape == (5, 3, 2)
  assert state.count.dtype == jnp.int32
  with pytest.raises(ValueError, match="max_delay"):
    gx.stale_gradients(3, max_delay=2)
  with pytest.raises(ValueError, match="delay"):
    gx.stale_gradients(-1)


# ------------------------------------------------------------------------------------------
# The example script, with tiny settings.


def _example():
  import importlib.util
  from pathlib import Path
  path = Path(__file__).resolve().parent.parent / "examples" / "data_parallel.py"
  spec = importlib.util.spec_from_file_location("data_parallel_example", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # flax dataclasses look their module up
  spec.loader.exec_module(module)
  return module


def test_data_parallel_example_routes_agree(capsys):
  example = _example()
  tiny = ["--epochs", "1", "--max-steps", "3", "--hidden", "16", "--batch-size", "64"]
  runs = [example.main(["--route", "pmap"] + tiny), example.main(["--route", "jit"] + tiny)]
  out = capsys.readouterr().out
  assert "route=pmap" in out and "route=jit" in out and "test acc" in out
  for run in runs:
    assert run["steps"] == 3 and np.isfinite(run["loss"])
  for run in runs[1:]:
    pairs = zip(jax.tree.leaves(runs[0]["params"]), jax.tree.leaves(run["params"]), strict=True)
    for a, b in pairs:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_stale_gradients_passes_the_transform_contract():
  import gradxform.testing as gxt
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,), jnp.bfloat16)}
  tx = gx.chain(gx.stale_gradients(1, max_delay=2), gx.sgd(0.1, momentum=0.9))
  gxt.check_jit(tx, params, steps=3)
  gxt.check_state_stable(tx, params, steps=3)
