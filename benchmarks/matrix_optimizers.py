"""Matrix-aware and memory-light optimizers on the digits CNN: AdamW, Adafactor, Muon, Shampoo,
SOAP and 8-bit AdamW (issue 17).

The task is `examples/train_digits.py`'s CNN (two 3×3 convolutions, 2×2 average pooling, two
dense layers, 151k parameters) on scikit-learn's 8×8 digits. Every run starts from the same
initial weights and sees the same batches (same seed); each optimizer gets a constant learning
rate from its own small grid (`GRIDS`, three values) and its best value is the one that reaches
the target first (ties and misses: the lowest final loss). Per optimizer it reports:

* steps to reach `--target` training loss, smoothed (a debiased EMA of the batch losses,
  `--smoothing`, ~20 steps);
* the final test accuracy;
* the median step time: the jitted step (forward, backward, optimizer update), each step ended
  by `block_until_ready`, the first `WARMUP` steps left out (the median hides Shampoo's and
  SOAP's periodic eigendecompositions; the mean step, which counts them, is also reported);
* the optimizer state's bytes per parameter: the `nbytes` of `jax.tree.leaves(opt_state)`
  over the parameter count.

Which leaves each method treats as matrices (`MATRICES`):

* AdamW, 8-bit AdamW: none (elementwise).
* Adafactor: leaves whose two largest axes are both >= `min_dim_size_to_factor` (128) keep
  factored row/column second moments: here only the 1024×128 dense kernel (87 % of the
  parameters); every other leaf keeps a full second moment.
* Muon: both dense kernels, and the conv kernels read as `(3·3·c_in, c_out)` matrices (through
  `muon_weight_dimension_numbers`; Muon's default would send 4-D leaves to AdamW); the
  biases get its AdamW part at a fixed learning rate (`MUON_ADAM_LR`).
* Shampoo: every leaf of rank >= 2 after dropping size-1 axes, one statistic per axis (the
  conv kernels are 3-D / 4-D tensors), blocks of at most 256 per axis (the 1024×128 kernel is
  four 256×128 blocks); biases take the grafted Adam step.
* SOAP: every leaf of rank >= 2, one rotated basis per axis (no blocking, axes up to 10,000);
  biases get plain Adam.

    python benchmarks/matrix_optimizers.py --markdown table.md --out docs/matrix_optimizers.png
    python benchmarks/matrix_optimizers.py --quick                        # smoke run (seconds)
    python benchmarks/matrix_optimizers.py --optimizers adamw,muon --epochs 5

The default run takes about 2–3 minutes on 2 CPU cores. Results: benchmarks/RESULTS.md.
(Shampoo's jitted update used to hang now and then on jaxlib 0.10.2's CPU backend, a deadlock
of two batched LAPACK `eigh` calls; fixed, see benchmarks/shampoo_hang.py.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gradxform as gx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
from train_digits import CNN, cross_entropy, load_digits_split  # noqa: E402

DEFAULT_OPTIMIZERS = ("adamw", "adafactor", "muon", "shampoo", "soap", "adamw_int8")

# Constant learning rates tried per optimizer (three values, ×√10 apart around the usual one).
GRIDS: dict[str, tuple[float, ...]] = {
    "adamw": (1e-3, 3e-3, 1e-2),
    "adamw_int8": (1e-3, 3e-3, 1e-2),
    "adafactor": (3e-2, 1e-1, 3e-1),   # relative to each leaf's RMS (multiply_by_parameter_scale)
    "muon": (1e-2, 3e-2, 1e-1),
    "shampoo": (1e-3, 3e-3, 1e-2),    # grafted onto Adam's step size
    "soap": (1e-3, 3e-3, 1e-2),
}
MUON_ADAM_LR = 3e-3  # Muon's AdamW part (the biases), fixed: AdamW's usual rate on this task

MATRICES = {
    "adamw": "none (elementwise)",
    "adamw_int8": "none (elementwise)",
    "adafactor": "dense 1024×128 (factored); others full",
    "muon": "dense + conv as (9·c_in, c_out); biases AdamW",
    "shampoo": "dense + conv (per axis, blocks ≤ 256)",
    "soap": "dense + conv (per axis)",
}

WARMUP = 5  # steps left out of the step-time median (compilation, first refresh)


def _conv_as_matrix(params: Any) -> Any:
  """Muon's dimension numbers: conv kernels `(kh, kw, c_in, c_out)` as `(kh·kw·c_in, c_out)`
  matrices, dense kernels as `(in, out)`, biases to the AdamW part."""
  def spec(x: jax.Array) -> Any:
    if x.ndim == 4:
      return gx.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
    if x.ndim == 2:
      return gx.MuonDimensionNumbers()
    return None
  return jax.tree.map(spec, params)


def make_optimizer(name: str, lr: float) -> gx.GradientTransformation:
  """`name` at constant learning rate `lr`; every other hyperparameter at its default."""
  if name == "adamw":
    return gx.adamw(lr)
  if name == "adamw_int8":
    return gx.adamw(lr, state_dtype="int8")
  if name == "adafactor":
    return gx.adafactor(lr)
  if name == "muon":
    return gx.muon(lr, adam_learning_rate=MUON_ADAM_LR,
                   muon_weight_dimension_numbers=_conv_as_matrix)
  if name == "shampoo":
    return gx.shampoo(lr)
  if name == "soap":
    return gx.soap(lr)
  raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(GRIDS)}")


def state_bytes(opt_state: Any) -> int:
  """Bytes of every array in an optimizer state."""
  return sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(opt_state))


def smooth(losses: np.ndarray, decay: float) -> np.ndarray:
  """Debiased EMA of a loss sequence (Adam's bias correction: no bias towards 0 at the start)."""
  out = np.empty(len(losses))
  m = 0.0
  for t, x in enumerate(losses, start=1):
    m = decay * m + (1 - decay) * float(x)
    out[t - 1] = m / (1 - decay ** t)
  return out


def steps_to(curve: np.ndarray, target: float) -> int | None:
  """The first step (1-based) at which `curve` is at or below `target`; None if never."""
  hit = np.nonzero(curve <= target)[0]
  return int(hit[0]) + 1 if len(hit) else None


def batches(n_train: int, batch_size: int, epochs: int, seed: int) -> np.ndarray:
  """Indices of every batch of the run, `(steps, batch_size)`: the same for every optimizer."""
  rng = np.random.default_rng(seed)
  per_epoch = n_train // batch_size
  return np.concatenate([rng.permutation(n_train)[:per_epoch * batch_size].reshape(
      per_epoch, batch_size) for _ in range(epochs)])


def accuracy_fn(apply: Callable[..., Any]) -> Callable[..., jax.Array]:
  """The jitted test accuracy of `apply`'s model (one per run of the benchmark: every
  optimizer's parameters have the same structure, so it compiles once)."""
  @jax.jit
  def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(apply({"params": params}, x), -1) == y)
  return accuracy


def run_one(tx: gx.GradientTransformation, params0: Any, apply: Callable[..., Any], data: Any,
            order: np.ndarray, *, accuracy: Callable[..., jax.Array] | None = None,
            opt_state: Any = None) -> dict[str, Any]:
  """Trains from `params0` on the batches `order`; per-step losses and times, test accuracy.

  `accuracy`: a jitted `accuracy_fn(apply)` to reuse; `opt_state`: `tx.init(params0)` if the
  caller already has it (init is deterministic)."""
  x_train, x_test, y_train, y_test = data

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(lambda p: cross_entropy(apply({"params": p}, x), y))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return gx.apply_updates(params, updates), opt_state, loss

  accuracy = accuracy or accuracy_fn(apply)
  params = params0
  opt_state = tx.init(params) if opt_state is None else opt_state
  nbytes = state_bytes(opt_state)
  losses, times = [], []
  for idx in order:
    x, y = x_train[idx], y_train[idx]
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, x, y)
    jax.block_until_ready((params, opt_state, loss))
    times.append(time.perf_counter() - start)
    losses.append(loss)
  return {"losses": np.asarray(jax.device_get(losses), np.float64),
          "times": np.asarray(times), "state_bytes": nbytes,
          "test_acc": float(accuracy(params, x_test, y_test))}


def machine() -> str:
  """One line about the machine: CPU or accelerator, core count, jax version."""
  dev = jax.devices()[0]
  kind = dev.device_kind if dev.platform != "cpu" else (platform.processor() or platform.machine())
  return (f"{dev.platform} ({kind}), {os.cpu_count()} cores visible, jax {jax.__version__}, "
          f"Python {platform.python_version()}")


def fmt_lr(lr: float) -> str:
  return f"{lr:.0e}".replace("e-0", "e-")


def markdown(results: dict[str, Any]) -> str:
  """The results table, with the grid, target and skipped optimizers noted under it."""
  cfg = results["config"]
  lines = [
      "| optimizer | matrices | lr (grid: steps to target) | steps to loss "
      f"{cfg['target']:g} | final loss | test acc | median step ms | mean step ms "
      "| state B/param |",
      "|---|---|---|---:|---:|---:|---:|---:|---:|"]
  for name, r in results["optimizers"].items():
    grid = ", ".join(
        (f"**{fmt_lr(g['lr'])}**" if g["lr"] == r["lr"] else fmt_lr(g["lr"]))
        + f": {g['steps_to_target'] if g['steps_to_target'] is not None else '—'}"
        for g in r["grid"])
    steps = r["steps_to_target"] if r["steps_to_target"] is not None else "—"
    lines.append(
        f"| {name} | {MATRICES[name]} | {grid} | {steps} | {r['final_loss']:.4f} | "
        f"{r['test_acc']:.2%} | {r['median_step_s'] * 1e3:.2f} | {r['mean_step_s'] * 1e3:.2f} "
        f"| {r['state_bytes_per_param']:.2f} |")
  lines.append("")
  lines.append(
      f"{cfg['params']:,} parameters; {cfg['n_train']} train / {cfg['n_test']} test images, "
      f"batch {cfg['batch_size']}, {cfg['epochs']} epochs ({cfg['steps']} steps), seed "
      f"{cfg['seed']}, constant learning rates; loss smoothed by a debiased EMA "
      f"(decay {cfg['smoothing']}). Bold: the grid value reported (first to the target; if "
      "none reaches it, the lowest final loss). Final loss: the smoothed training loss at "
      "the last step.")
  for name, why in results["skipped"].items():
    lines.append(f"\nNot run: {name} ({why}).")
  return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
  """Smoothed training loss against steps and against measured seconds, log scale."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  target = results["config"]["target"]
  for name, r in results["optimizers"].items():
    curve = np.asarray(r["curve"])
    label = f"{name} (lr {fmt_lr(r['lr'])})"
    axes[0].plot(np.arange(1, len(curve) + 1), curve, label=label)
    times = np.asarray(r["step_times"])
    times[:WARMUP] = r["median_step_s"]   # leave compilation out of the time axis
    axes[1].plot(np.cumsum(times), curve, label=label)
  xlabels = ("step", "seconds (measured step times, summed; compilation left out)")
  for ax, xlabel in zip(axes, xlabels):
    ax.axhline(target, color="gray", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training loss (smoothed)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  cfg = results["config"]
  fig.suptitle(f"Digits CNN ({cfg['params']:,} parameters), batch {cfg['batch_size']}, "
               f"best constant learning rate of each grid; dotted: target {target:g}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS),
                 help=f"comma list from {', '.join(GRIDS)}")
  p.add_argument("--epochs", type=int, default=10, help="passes over the training set")
  p.add_argument("--batch-size", type=int, default=32, help="images per step")
  p.add_argument("--target", type=float, default=0.05, help="smoothed training loss to reach")
  p.add_argument("--smoothing", type=float, default=0.95, help="EMA decay of the loss curve")
  p.add_argument("--seed", type=int, default=0, help="seed of the split, init and batches")
  p.add_argument("--quick", action="store_true",
                 help="smoke run: 400 images, 2 epochs, the middle learning rate only")
  p.add_argument("--markdown", default=None, help="write the results table here")
  p.add_argument("--out", default=None, help="write the PNG of the loss curves here")
  p.add_argument("--json", default=None, help="write every result (curves too) here as JSON")
  p.add_argument("--quiet", action="store_true", help="print nothing")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark; returns the config, per-optimizer results and the skipped names."""
  args = parse_args(argv)
  names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
  for n in names:
    if n not in GRIDS:
      raise SystemExit(f"unknown optimizer {n!r}; choose from {', '.join(GRIDS)}")
  say = (lambda *a: None) if args.quiet else print
  epochs = 2 if args.quick else args.epochs
  data = load_digits_split(args.seed, limit=400 if args.quick else None)
  x_train, x_test = data[0], data[1]
  model = CNN()
  params0 = model.init(jax.random.key(args.seed), x_train[:1])["params"]
  n_params = sum(x.size for x in jax.tree.leaves(params0))
  order = batches(len(x_train), args.batch_size, epochs, args.seed)
  config = {"params": int(n_params), "n_train": len(x_train), "n_test": len(x_test),
            "batch_size": args.batch_size, "epochs": epochs, "steps": len(order),
            "seed": args.seed, "target": args.target, "smoothing": args.smoothing,
            "quick": args.quick, "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
  say(f"{n_params:,} parameters, {len(order)} steps of batch {args.batch_size}; "
      f"{config['machine']}")
  results: dict[str, Any] = {"config": config, "optimizers": {}, "skipped": {}}
  accuracy = accuracy_fn(model.apply)
  start_all = time.perf_counter()
  for name in names:
    grid = GRIDS[name][1:2] if args.quick else GRIDS[name]
    try:
      state0 = make_optimizer(name, grid[0]).init(params0)   # the first run starts from it
    except (ValueError, TypeError, NotImplementedError) as e:  # e.g. int8 state not available
      results["skipped"][name] = f"{type(e).__name__}: {e}"
      say(f"{name}: skipped ({type(e).__name__}: {e})")
      continue
    runs = []
    for lr in grid:
      r = run_one(make_optimizer(name, lr), params0, model.apply, data, order,
                  accuracy=accuracy, opt_state=state0 if lr == grid[0] else None)
      curve = smooth(r["losses"], args.smoothing)
      r.update(lr=lr, curve=curve, steps_to_target=steps_to(curve, args.target),
               final_loss=float(curve[-1]) if np.isfinite(curve[-1]) else float("inf"))
      runs.append(r)
      say(f"  {name:11s} lr {fmt_lr(lr):5s}  steps to {args.target:g}: "
          f"{r['steps_to_target'] or '—':>5}  final loss {r['final_loss']:.4f}  "
          f"test acc {r['test_acc']:.2%}  "
          f"median step {np.median(r['times'][WARMUP:]) * 1e3:.2f} ms")
    best = min(runs, key=lambda r: (r["steps_to_target"] is None,
                                    r["steps_to_target"] or 0, r["final_loss"]))
    timed = best["times"][WARMUP:] if len(best["times"]) > 2 * WARMUP else best["times"]
    results["optimizers"][name] = {
        "lr": best["lr"], "steps_to_target": best["steps_to_target"],
        "final_loss": best["final_loss"], "first_loss": float(best["losses"][0]),
        "test_acc": best["test_acc"],
        "median_step_s": float(np.median(timed)), "mean_step_s": float(np.mean(timed)),
        "state_bytes": best["state_bytes"],
        "state_bytes_per_param": best["state_bytes"] / n_params,
        "curve": best["curve"].tolist(), "losses": best["losses"].tolist(),
        "step_times": best["times"].tolist(),
        "grid": [{"lr": r["lr"], "steps_to_target": r["steps_to_target"],
                  "final_loss": r["final_loss"], "test_acc": r["test_acc"]} for r in runs],
    }
  config["seconds"] = time.perf_counter() - start_all
  table = markdown(results)
  say("\n" + table + f"\n{config['seconds']:.0f} s in all")
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(table)
  if args.out:
    plot(results, args.out)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
