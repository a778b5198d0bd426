"""Data-parallel training of a small Flax MLP on 8 fake CPU devices, two ways.

    python examples/data_parallel.py                  # jax.pmap + gx.cross_replica_mean
    python examples/data_parallel.py --route jit      # jax.jit on a mesh, NamedSharding
    python examples/data_parallel.py --route jit --zero1   # ... with ZeRO-1 sharded state

The data are scikit-learn's 8×8 digits (shipped with scikit-learn, no download). The script
asks XLA for `--devices` CPU devices before jax is imported, so it runs on any laptop.

* `pmap`: each device holds a replica of the parameters and of the optimizer state and a
  slice of the batch; `gx.chain(gx.cross_replica_mean("batch"), gx.adam(lr))` averages the
  per-device gradients first, so the replicas stay bit-identical.
* `jit`: one program over a mesh from `jax.make_mesh`; the batch is sharded over the `data`
  axis, parameters replicated, and XLA inserts the all-reduce of the gradient itself, so the
  plain `gx.adam(lr)` is used. `--zero1` wraps it in `gx.zero1`, which keeps each device's
  1/p of the optimizer state (ZeRO stage 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--route", choices=("pmap", "jit"), default="pmap")
  parser.add_argument("--zero1", action="store_true", help="jit route: ZeRO-1 sharded state")
  parser.add_argument("--devices", type=int, default=8, help="fake CPU devices to use")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--hidden", type=int, default=64)
  parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


if __name__ == "__main__":  # must happen before jax is imported
  _devices = parse_args(sys.argv[1:]).devices
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_devices}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402

import gradxform as gx  # noqa: E402
from gradxform import parallel  # noqa: E402


class MLP(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.hidden)(x))
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(10)(x)


def load_digits(seed: int) -> tuple[np.ndarray, ...]:
  from sklearn.datasets import load_digits as sk_digits
  data = sk_digits()
  x = (data.data / 16.0).astype(np.float32)
  y = data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  x, y = x[order], y[order]
  n_test = len(x) // 5
  return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator):
  order = rng.permutation(len(x))
  for i in range(len(x) // batch_size):
    idx = order[i * batch_size:(i + 1) * batch_size]
    yield x[idx], y[idx]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  n_dev = jax.device_count()
  if n_dev < args.devices:
    raise SystemExit(f"asked for {args.devices} devices, jax sees {n_dev} (was jax imported "
                     "before XLA_FLAGS was set?)")
  n_dev = args.devices
  if args.batch_size % n_dev:
    raise SystemExit(f"--batch-size {args.batch_size} is not divisible by {n_dev} devices")
  x_train, y_train, x_test, y_test = load_digits(args.seed)
  model = MLP(args.hidden)
  params = model.init(jax.random.PRNGKey(args.seed), x_train[:1])["params"]

  def loss_fn(params, x, y):
    return cross_entropy(model.apply({"params": params}, x), y)

  @jax.jit
  def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y)

  devices = jax.devices()[:n_dev]
  if args.route == "pmap":
    tx = gx.chain(gx.cross_replica_mean("batch"), gx.adam(args.lr))

    def pmap_step(params, state, x, y):
      loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
      updates, state = tx.update(grads, state, params)
      return gx.apply_updates(params, updates), state, jax.lax.pmean(loss, "batch")

    step_fn = jax.pmap(pmap_step, axis_name="batch", devices=devices)
    params = jax.tree.map(lambda a: np.broadcast_to(a, (n_dev,) + a.shape), params)
    state = jax.pmap(tx.init, devices=devices)(params)

    def step(params, state, x, y):
      split = lambda a: a.reshape((n_dev, -1) + a.shape[1:])  # noqa: E731
      params, state, loss = step_fn(params, state, split(x), split(y))
      return params, state, loss[0]

    def host_params(params):
      return jax.tree.map(lambda a: a[0], params)

    context: Any = None
  else:
    mesh = jax.make_mesh((n_dev,), ("data",), devices=devices)
    tx = gx.adam(args.lr)
    if args.zero1:
      tx = gx.zero1(tx, mesh, axis_name="data")
    context = mesh

    @jax.jit
    def jit_step(params, state, x, y):
      loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
      updates, state = tx.update(grads, state, params)
      return gx.apply_updates(params, updates), state, loss

    with jax.set_mesh(mesh):
      params = parallel.replicate(params, mesh)
      state = jax.jit(tx.init)(params)

    def step(params, state, x, y):
      with jax.set_mesh(mesh):
        return jit_step(params, state, *parallel.shard_batch((x, y), mesh, "data"))

    def host_params(params):
      return jax.device_get(params)

  route = args.route + (" + zero1" if args.route == "jit" and args.zero1 else "")
  print(f"route={route} devices={n_dev} global_batch={args.batch_size} "
        f"per_device={args.batch_size // n_dev}")
  if context is not None:
    bytes_per_device = parallel.state_bytes_per_device(state)
    print(f"optimizer state on device 0: {bytes_per_device[devices[0]]} bytes")
  rng = np.random.default_rng(args.seed)
  steps, start, loss, acc = 0, time.perf_counter(), float("nan"), float("nan")
  for epoch in range(1, args.epochs + 1):
    for x, y in batches(x_train, y_train, args.batch_size, rng):
      params, state, loss = step(params, state, x, y)
      steps += 1
      if args.max_steps and steps >= args.max_steps:
        break
    acc = float(accuracy(host_params(params), x_test, y_test))
    print(f"epoch {epoch:2d}  step {steps:4d}  loss {float(loss):.4f}  test acc {acc:.3f}  "
          f"({time.perf_counter() - start:.1f}s)", flush=True)
    if args.max_steps and steps >= args.max_steps:
      break
  return {"steps": steps, "loss": float(loss), "accuracy": acc, "params": host_params(params)}


if __name__ == "__main__":
  main()
