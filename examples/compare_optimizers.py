"""Train the same Flax (nnx) network on the digits with fifteen optimizers; plot the loss curves.

Every run starts from the same initial weights and sees the same batches, so the curves differ
only by the optimizer. Each optimizer uses its learning rate in `COMPARE_LR` (a coarse
per-optimizer sweep for this MLP; override one with e.g. `--lr adam=3e-3`).

    python examples/compare_optimizers.py                 # writes compare_optimizers.png
    python examples/compare_optimizers.py --epochs 1 --limit 300 --optimizers sgd,adam

The loop is `flax.nnx`'s: `nnx.Optimizer(model, tx, wrt=nnx.Param)` takes a gradxform
optimizer as it takes an Optax one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import DEFAULT_LR, OPTIMIZERS, cross_entropy, load_digits_split  # noqa: E402

COMPARED = ("sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "adamw",
            "amsgrad", "powersign", "addsign", "lion", "lamb", "adabelief", "adopt")

# Learning rates for the MLP below, from a coarse sweep over {1, 3} × 10^k per optimizer.
COMPARE_LR = dict(DEFAULT_LR, sgd=0.3, momentum=0.05, nesterov=0.05, adagrad=0.1,
                  adadelta=1.0, rmsprop=3e-3, adam=1e-2, adamw=1e-2, amsgrad=1e-2,
                  powersign=0.1, addsign=0.1, lion=1e-3, lamb=1e-2,
                  adabelief=1e-2, adopt=1e-2)
STYLE = {"sgd": "-", "momentum": "-", "nesterov": "--", "adagrad": "-", "adadelta": "--",
         "rmsprop": ":", "adam": "-", "adamw": "--", "amsgrad": ":", "powersign": "-",
         "addsign": "--", "lion": "-.", "lamb": "-.", "adabelief": "-.", "adopt": "-."}


class MLP(nnx.Module):
  """64 → 128 → 10 with a ReLU: the digits flattened to 64 pixels."""

  def __init__(self, rngs: nnx.Rngs, hidden: int = 128):
    self.hidden = nnx.Linear(64, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
  """One step: gradients of the batch loss, then `optimizer.update(model, grads)`."""
  loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def accuracy(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(model(x), -1) == y)


def run(name: str, lr: float, data, *, epochs: int, batch_size: int, seed: int
        ) -> tuple[np.ndarray, float]:
  """Per-step training losses and the final test accuracy of one optimizer."""
  x_train, x_test, y_train, y_test = data
  model = MLP(nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, OPTIMIZERS[name](lr), wrt=nnx.Param)
  rng = np.random.default_rng(seed)  # the same batches for every optimizer
  steps = len(x_train) // batch_size
  losses = []
  for _ in range(epochs):
    order = rng.permutation(len(x_train))
    for i in range(steps):
      idx = order[i * batch_size:(i + 1) * batch_size]
      losses.append(train_step(model, optimizer, x_train[idx], y_train[idx]))
  return np.asarray(jax.device_get(losses)), float(accuracy(model, x_test, y_test))


def smooth(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average (the first points average what exists so far)."""
  csum = np.cumsum(np.insert(values, 0, 0.0))
  idx = np.arange(1, len(values) + 1)
  lo = np.maximum(0, idx - window)
  return (csum[idx] - csum[lo]) / (idx - lo)


def plot(results: dict[str, tuple[np.ndarray, float]], lrs: dict[str, float], out: str,
         window: int) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(9, 5.5))
  colors = list(plt.get_cmap("tab20").colors)
  for i, (name, (losses, acc)) in enumerate(results.items()):
    ax.plot(smooth(losses, window), color=colors[i % len(colors)], lw=1.6,
            ls=STYLE.get(name, "-"),
            label=f"{name} (lr {lrs[name]:g}): test acc {acc:.1%}")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel(f"training loss (moving average over {window} steps)")
  ax.set_title("gradxform optimizers on sklearn digits (MLP 64-128-10, flax.nnx)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8, loc="upper right")
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--optimizers", default=",".join(COMPARED),
                 help=f"comma-separated, from {sorted(OPTIMIZERS)}")
  p.add_argument("--lr", action="append", default=[], metavar="NAME=LR",
                 help="override one optimizer's learning rate (repeatable)")
  p.add_argument("--epochs", type=int, default=6)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--limit", type=int, default=None, help="use only the first N images")
  p.add_argument("--out", default="compare_optimizers.png", help="PNG path")
  p.add_argument("--quiet", action="store_true")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the comparison, writes the PNG, returns `{name: (final loss, test accuracy)}`."""
  args = parse_args(argv)
  names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
  unknown = sorted(set(names) - set(OPTIMIZERS))
  if unknown:
    raise SystemExit(f"unknown optimizers {unknown}; choose from {sorted(OPTIMIZERS)}")
  lrs = {n: COMPARE_LR[n] for n in names}
  for item in args.lr:
    name, _, value = item.partition("=")
    lrs[name] = float(value)
  data = load_digits_split(args.seed, limit=args.limit)
  results = {}
  for name in names:
    start = time.perf_counter()
    results[name] = run(name, lrs[name], data, epochs=args.epochs, batch_size=args.batch_size,
                        seed=args.seed)
    if not args.quiet:
      losses, acc = results[name]
      print(f"{name:10s} lr {lrs[name]:<7g} final loss {np.mean(losses[-10:]):.4f}  "
            f"test acc {acc:.2%}  ({time.perf_counter() - start:.1f} s)")
  window = max(1, min(20, len(next(iter(results.values()))[0]) // 10))
  plot(results, lrs, args.out, window)
  if not args.quiet:
    print(f"wrote {args.out}")
  return {n: (float(np.mean(losses[-10:])), acc) for n, (losses, acc) in results.items()}


if __name__ == "__main__":
  main(sys.argv[1:])
