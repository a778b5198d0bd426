"""Training without tuning: four learning-rate-free optimizers against a tuned AdamW.

The digits CNN of `train_digits.py` (its model, data, loss and training loop, imported) is
trained with `gx.schedule_free_adamw`, `gx.prodigy`, `gx.dog` and `gx.yellowfin` at their
defaults, and with AdamW at the demo's tuned learning rate under a warm-up cosine schedule.
Every run uses the same seed (same initial parameters), the same batches and the same number
of epochs. Schedule-free AdamW is evaluated at `gx.schedule_free_eval_params` (its averaged
point), not at the point where it takes gradients.

    python examples/no_tuning.py                      # full size, writes no_tuning.png
    python examples/no_tuning.py --epochs 2 --limit 600 --out /tmp/quick.png
    python examples/no_tuning.py --optimizers dog yellowfin
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gradxform as gx  # noqa: E402
import train_digits  # noqa: E402


BASELINE = "adamw"
TUNING_FREE = ("schedule_free_adamw", "prodigy", "dog", "yellowfin")


def make_optimizers(total_steps: int) -> dict[str, gx.GradientTransformation]:
  """The tuned baseline first, then the tuning-free optimizers at their defaults."""
  lr = train_digits.DEFAULT_LR["adamw"]
  schedule = gx.warmup_cosine_decay_schedule(0.0, lr, max(1, total_steps // 10), total_steps)
  return {BASELINE: gx.adamw(schedule, weight_decay=1e-2),
          **{name: getattr(gx, name)() for name in TUNING_FREE}}


def final_metrics(name: str, state: Any, data) -> tuple[float, float]:
  """Test loss and accuracy at the point to evaluate (schedule-free: its averaged point)."""
  _, x_test, _, y_test = data
  if name == "schedule_free_adamw":
    state = state.replace(params=gx.schedule_free_eval_params(state.opt_state, state.params))
  loss, acc = train_digits.evaluate(state, x_test, y_test)
  return float(loss), float(acc)


def plot(curves: dict[str, list[float]], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for name, losses in curves.items():
    ax.plot(np.arange(1, len(losses) + 1), losses, marker="o", ms=3, label=name)
  ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.set_ylabel("mean training loss of the epoch")
  ax.set_title("digits CNN: tuning-free optimizers at their defaults vs tuned AdamW")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--epochs", type=int, default=15, help="passes over the training set")
  p.add_argument("--batch-size", type=int, default=32, help="images per step")
  p.add_argument("--seed", type=int, default=0, help="seed of the split, init and shuffling")
  p.add_argument("--limit", type=int, default=None,
                 help="use only the first N images (quick runs)")
  p.add_argument("--out", default="no_tuning.png", help="where to save the loss curves")
  p.add_argument("--optimizers", nargs="+", choices=TUNING_FREE, default=list(TUNING_FREE),
                 help="the tuning-free optimizers to run (tuned AdamW always runs)")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
  """Runs every optimizer; prints the table, saves the PNG and returns the results by name."""
  args = parse_args(argv)
  data = train_digits.load_digits_split(args.seed, limit=args.limit)
  steps_per_epoch = len(data[0]) // args.batch_size
  optimizers = {name: tx for name, tx in make_optimizers(args.epochs * steps_per_epoch).items()
                if name == BASELINE or name in args.optimizers}
  lr = train_digits.DEFAULT_LR[BASELINE]
  print(f"{args.epochs} epochs of {steps_per_epoch} steps, batch {args.batch_size}, "
        f"{len(data[0])} train / {len(data[1])} test images, seed {args.seed}")
  results: dict[str, dict[str, Any]] = {}
  for name, tx in optimizers.items():
    start = time.perf_counter()
    state, history = train_digits.train(tx, data, epochs=args.epochs,
                                        batch_size=args.batch_size, seed=args.seed,
                                        progress=False)
    test_loss, test_acc = final_metrics(name, state, data)
    results[name] = {"train_loss": history[-1]["train_loss"], "test_loss": test_loss,
                     "test_acc": test_acc, "seconds": time.perf_counter() - start,
                     "curve": [row["train_loss"] for row in history]}
  baseline = results[BASELINE]["test_acc"]
  labels = {name: name for name in results}
  labels[BASELINE] = f"adamw (tuned: lr {lr:g}, warm-up cosine)"
  print(f"{'optimizer':42s} {'train loss':>10s} {'test acc':>9s} {'gap (pp)':>9s} "
        f"{'time':>6s}")
  for name, r in results.items():
    r["gap_pp"] = 100.0 * (r["test_acc"] - baseline)
    print(f"{labels[name]:42s} {r['train_loss']:10.4f} {r['test_acc']:9.2%} "
          f"{r['gap_pp']:+9.2f} {r['seconds']:5.1f}s")
  plot({labels[name]: r["curve"] for name, r in results.items()}, args.out)
  print(f"loss curves saved to {args.out}")
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
