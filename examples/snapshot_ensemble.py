"""Snapshot ensembling with SGDR: train once, keep M models, average their predictions.

SGD with momentum follows `gx.sgdr_schedule` (cosine annealing with warm restarts); at the end
of each cycle, where the learning rate reaches its minimum, `gx.snapshot_ensemble` stores the
parameters inside the optimizer state. `gx.ensemble_predict` averages the softmax outputs of the
stored snapshots. The script reports the single final model against the ensemble, and draws the
learning rate with the snapshot points.

    python examples/snapshot_ensemble.py                       # writes snapshot_ensemble.png
    python examples/snapshot_ensemble.py --cycles 2 --epochs-per-cycle 1 --limit 300

References:
  Huang et al., "Snapshot ensembles: train 1, get M for free", ICLR 2017.
  Loshchilov & Hutter, "SGDR: stochastic gradient descent with warm restarts", ICLR 2017.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gradxform as gx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import CNN, load_digits_split, train  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cycles", type=int, default=5, help="SGDR cycles = snapshots M")
  p.add_argument("--keep", type=int, default=None,
                 help="snapshots kept and averaged: the last K cycles (default: all)")
  p.add_argument("--epochs-per-cycle", type=int, default=6)
  p.add_argument("--lr", type=float, default=0.2, help="learning rate at each restart")
  p.add_argument("--momentum", type=float, default=0.9)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--hidden", type=int, default=32, help="width of the CNN's dense layer")
  p.add_argument("--train-fraction", type=float, default=0.3,
                 help="fraction of the data used for training (the rest is the test set); "
                      "a small training set leaves room for the ensemble to help")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--limit", type=int, default=None, help="use only the first N images")
  p.add_argument("--out", default="snapshot_ensemble.png", help="PNG path ('' for none)")
  p.add_argument("--quiet", action="store_true")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains with SGDR + snapshots; returns single-model, per-snapshot and ensemble accuracy."""
  args = parse_args(argv)
  data = load_digits_split(args.seed, test_fraction=1.0 - args.train_fraction, limit=args.limit)
  x_test, y_test = data[1], data[3]
  steps_per_epoch = len(data[0]) // args.batch_size
  period = args.epochs_per_cycle * steps_per_epoch
  lr = gx.sgdr_schedule(args.lr, period)
  keep = args.cycles if args.keep is None else args.keep
  tx = gx.chain(gx.sgd(lr, args.momentum),
                gx.snapshot_ensemble(keep, first_period=period))
  model = CNN(features=(16, 32), hidden=args.hidden)
  state, history = train(tx, data, epochs=args.cycles * args.epochs_per_cycle,
                         batch_size=args.batch_size, seed=args.seed, model=model,
                         progress=not args.quiet)

  @jax.jit
  def probs(params, x):
    return jax.nn.softmax(model.apply({"params": params}, x))

  ensemble = jax.jit(lambda opt_state, x: gx.ensemble_predict(probs, opt_state, x))

  def acc(p):
    return float(jnp.mean(jnp.argmax(p, -1) == y_test))

  snaps = gx.tree_get(state.opt_state, "snapshots")
  taken = int(gx.tree_get(state.opt_state, "num_taken"))
  per_snapshot = [acc(probs(jax.tree.map(lambda s, i=i: s[i], snaps), x_test))
                  for i in range(min(taken, keep))]
  result = {"single": acc(probs(state.params, x_test)),
            "ensemble": acc(ensemble(state.opt_state, x_test)),
            "snapshots": per_snapshot, "num_snapshots": taken, "history": history}
  if not args.quiet:
    print("snapshot test accuracies: " + ", ".join(f"{a:.2%}" for a in per_snapshot))
    print(f"single model (final): {result['single']:.2%}   "
          f"ensemble of the last {min(taken, keep)}: {result['ensemble']:.2%}")
  if args.out:
    plot(lr, period, args.cycles, history, result, args.out)
    if not args.quiet:
      print(f"wrote {args.out}")
  return result


def plot(lr: Any, period: int, cycles: int, history: list[dict[str, float]],
         result: dict[str, Any], out: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  steps = np.arange(period * cycles)
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
  ax1.plot(steps, np.asarray(jax.vmap(lr)(jnp.asarray(steps))), lw=1.5)
  ends = period * np.arange(1, cycles + 1) - 1
  ax1.plot(ends, np.asarray(jax.vmap(lr)(jnp.asarray(ends))), "r*", ms=12, label="snapshot")
  ax1.set_xlabel("step")
  ax1.set_ylabel("learning rate")
  ax1.set_title("gx.sgdr_schedule with snapshots at each cycle's end")
  ax1.legend()
  epochs = [h["epoch"] for h in history]
  ax2.plot(epochs, [h["test_acc"] for h in history], "o-", label="test accuracy per epoch")
  ax2.axhline(result["ensemble"], color="r", ls="--",
              label=f"ensemble of {result['num_snapshots']}: {result['ensemble']:.2%}")
  ax2.axhline(result["single"], color="k", ls=":",
              label=f"single final model: {result['single']:.2%}")
  ax2.set_xlabel("epoch")
  ax2.set_ylabel("test accuracy")
  ax2.set_title("snapshot ensemble vs single model (sklearn digits)")
  ax2.legend(loc="lower right")
  ax2.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  main(sys.argv[1:])
