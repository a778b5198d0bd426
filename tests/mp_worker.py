"""One process of the two-process data-parallel run that tests/test_multiprocess.py spawns.

Usage: python mp_worker.py COORDINATOR_PORT PROCESS_ID NUM_PROCESSES OUT_FILE

The parent sets JAX_PLATFORMS=cpu and XLA_FLAGS (local CPU devices per process). Every process
builds the same global data from a seed; each holds the shards of its own devices. Three routes
are trained: (a) jax.jit on a mesh over all processes' devices with the batch sharded (XLA
inserts the cross-process all-reduce), (b) shard_map with per-shard gradients averaged by
gx.cross_replica_mean (an explicit cross-process pmean), (c) as (a) with the step as
gx.update_and_apply (the fused kernel on each device). Process 0 writes the parameters.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gradxform as gx

STEPS, BATCH, D_IN, D_OUT, LR = 20, 16, 6, 3, 1e-2
INIT_TIMEOUT_S = 240   # generous: two processes start jax on a loaded machine


def problem():
  """The data and initial parameters, identical in every process and in the parent."""
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(STEPS, BATCH, D_IN)).astype(np.float32)
  ys = rng.normal(size=(STEPS, BATCH, D_OUT)).astype(np.float32)
  params = {"w": (0.3 * rng.normal(size=(D_IN, D_OUT))).astype(np.float32),
            "b": np.zeros((D_OUT,), np.float32)}
  return xs, ys, params


def loss(params, x, y):
  return jnp.mean((jnp.tanh(x @ params["w"]) + params["b"] - y) ** 2)


def global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def main() -> None:
  port, process_id, num_processes, out_file = sys.argv[1:5]
  # Public API only: gloo collectives for the CPU backend, the coordinator on loopback (the
  # parent holds the port for it, see tests/test_multiprocess.py). Gloo binds its own sockets to
  # the address the host name resolves to, on ports the OS picks.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             coordinator_bind_address=f"127.0.0.1:{port}",
                             num_processes=int(num_processes), process_id=int(process_id),
                             initialization_timeout=INIT_TIMEOUT_S)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  xs, ys, params0 = problem()
  tx = gx.adam(LR)

  with jax.set_mesh(mesh):
    # (a) jit + NamedSharding: the batch mean becomes a cross-process all-reduce.
    @jax.jit
    def jit_step(params, state, x, y):
      updates, state = tx.update(jax.grad(loss)(params, x, y), state, params)
      return gx.apply_updates(params, updates), state

    params = jax.tree.map(lambda v: global_array(v, replicated), params0)
    state = jax.jit(tx.init)(params)
    for t in range(STEPS):
      params, state = jit_step(params, state, global_array(xs[t], batched),
                               global_array(ys[t], batched))
    jit_params = params

    # (b) shard_map with per-shard gradients and an explicit pmean over both processes.
    ptx = gx.chain(gx.cross_replica_mean("data"), tx)

    def body(params, state, x, y):
      updates, state = ptx.update(jax.grad(loss)(params, x, y), state, params)
      return gx.apply_updates(params, updates), state

    params = jax.tree.map(lambda v: global_array(v, replicated), params0)
    state = jax.jit(ptx.init)(params)
    state_specs = jax.tree.map(lambda _: P(), state)
    sm_step = jax.jit(jax.shard_map(
        body, mesh=mesh, in_specs=(P(), state_specs, P("data"), P("data")),
        out_specs=(P(), state_specs), check_vma=False))
    for t in range(STEPS):
      params, state = sm_step(params, state, global_array(xs[t], batched),
                              global_array(ys[t], batched))
    sm_params = params

    # (c) as (a), with the step as `gx.update_and_apply`: where a C++ compiler is, its fused
    # kernel runs on each device inside the cross-process program.
    @jax.jit
    def fused_step(params, state, x, y):
      return gx.update_and_apply(tx, jax.grad(loss)(params, x, y), state, params)

    params = jax.tree.map(lambda v: global_array(v, replicated), params0)
    state = jax.jit(tx.init)(params)
    compiled = fused_step.lower(params, state, global_array(xs[0], batched),
                                global_array(ys[0], batched)).compile()
    fused_kernel = "gx_elementwise" in compiled.as_text()  # after partitioning
    for t in range(STEPS):
      params, state = fused_step(params, state, global_array(xs[t], batched),
                                 global_array(ys[t], batched))
    fused_params = params

  def local(tree):
    return {k: np.asarray(v.addressable_shards[0].data) for k, v in tree.items()}

  if jax.process_index() == 0:
    np.savez(out_file, **{f"jit_{k}": v for k, v in local(jit_params).items()},
             **{f"sm_{k}": v for k, v in local(sm_params).items()},
             **{f"fused_{k}": v for k, v in local(fused_params).items()},
             device_count=jax.device_count(), process_count=jax.process_count(),
             fused_kernel=fused_kernel, kernel_status=gx.kernel_status())
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
