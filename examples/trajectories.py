"""Optimizer paths on two classic 2-D test functions, drawn over their contours.

* Rosenbrock's long, narrow, curved valley `f(x, y) = (1 − x)² + 100 (y − x²)²` (minimum at
  (1, 1)), started at (−1.2, 1) as in Rosenbrock (1960): plain gradient descent crawls along
  the valley floor, momentum overshoots across it, adaptive methods rescale the two axes.
* The saddle `f(x, y) = x² − y²`, started almost on the ridge at (1, 10⁻³): the gradient along
  y is tiny, so SGD stays near the saddle point while per-coordinate methods (Adagrad, RMSprop,
  Adam, sign-based methods) escape at once.

Each optimizer is a gradxform transform run under `jax.lax.scan` on the 2-vector `(x, y)`.

    python examples/trajectories.py                  # writes trajectories.png
    python examples/trajectories.py --steps 50 --optimizers sgd,adam --out /tmp/t.png
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gradxform as gx


def rosenbrock(p: jax.Array) -> jax.Array:
  """`(1 − x)² + 100 (y − x²)²`."""
  return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def saddle(p: jax.Array) -> jax.Array:
  """`x² − y²`."""
  return p[0] ** 2 - p[1] ** 2


# name -> (optimizer factory, learning rate on Rosenbrock, learning rate on the saddle); the
# Rosenbrock rates come from a sweep over {1, 3} × 10^k (the largest that does not diverge or
# the best after 1500 steps).
OPTIMIZERS: dict[str, tuple[Callable[[float], gx.GradientTransformation], float, float]] = {
    "sgd": (lambda lr: gx.sgd(lr), 1e-3, 0.05),
    "momentum": (lambda lr: gx.sgd(lr, momentum=0.9), 3e-4, 0.02),
    "nesterov": (lambda lr: gx.sgd(lr, momentum=0.9, nesterov=True), 3e-4, 0.02),
    "adagrad": (lambda lr: gx.adagrad(lr), 0.3, 0.1),
    "adadelta": (lambda lr: gx.adadelta(lr, rho=0.95), 0.3, 1.0),
    "rmsprop": (lambda lr: gx.rmsprop(lr), 3e-3, 0.01),
    "adam": (lambda lr: gx.adam(lr), 0.03, 0.02),
    "powersign": (lambda lr: gx.powersign(lr), 1e-3, 0.02),
    "addsign": (lambda lr: gx.addsign(lr), 1e-3, 0.02),
}

PROBLEMS: dict[str, dict[str, Any]] = {
    "rosenbrock": {"fn": rosenbrock, "start": (-1.2, 1.0), "lr_index": 1,
                   "box": ((-2.0, 2.0), (-1.0, 3.0)), "optimum": (1.0, 1.0), "log": True},
    "saddle": {"fn": saddle, "start": (1.0, 1e-3), "lr_index": 2,
               "box": ((-1.5, 1.5), (-1.5, 1.5)), "optimum": None, "log": False},
}


def path(tx: gx.GradientTransformation, fn: Callable[[jax.Array], jax.Array],
         start: Sequence[float], steps: int) -> np.ndarray:
  """The `(steps + 1, 2)` sequence of points visited by `tx` minimizing `fn` from `start`."""
  p0 = jnp.asarray(start, jnp.float32)

  def step(carry, _):
    p, state = carry
    updates, state = tx.update(jax.grad(fn)(p), state, p)
    p = gx.apply_updates(p, updates)
    return (p, state), p

  _, points = jax.lax.scan(step, (p0, tx.init(p0)), None, length=steps)
  return np.concatenate([np.asarray(p0)[None], np.asarray(points)])


def plot(paths: dict[str, dict[str, np.ndarray]], out: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.colors import LogNorm
  fig, axes = plt.subplots(1, len(paths), figsize=(7 * len(paths), 6))
  axes = np.atleast_1d(axes)
  colors = plt.get_cmap("tab10").colors
  for ax, (problem, runs) in zip(axes, paths.items(), strict=True):
    spec = PROBLEMS[problem]
    (x0, x1), (y0, y1) = spec["box"]
    xs, ys = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    zs = np.asarray(jax.vmap(jax.vmap(spec["fn"]))(jnp.stack([xs, ys], -1)))
    if spec["log"]:
      ax.contourf(xs, ys, zs + 1e-3, levels=np.logspace(-3, 3.5, 30), norm=LogNorm(),
                  cmap="Greys_r", alpha=0.6)
    else:
      ax.contourf(xs, ys, zs, levels=30, cmap="Greys_r", alpha=0.6)
    for i, (name, pts) in enumerate(runs.items()):
      ax.plot(pts[:, 0], pts[:, 1], "-", color=colors[i % 10], lw=1.5, label=name)
      ax.plot(pts[-1, 0], pts[-1, 1], "o", color=colors[i % 10], ms=4)
    ax.plot(*spec["start"], "k^", ms=8, label="start")
    if spec["optimum"] is not None:
      ax.plot(*spec["optimum"], "r*", ms=14, label="minimum")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_title(f"{problem}: {len(next(iter(runs.values()))) - 1} steps")
    ax.legend(fontsize=8, loc="lower left" if problem == "rosenbrock" else "upper left")
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                 help=f"comma-separated, from {list(OPTIMIZERS)}")
  p.add_argument("--steps", type=int, default=1500, help="steps on Rosenbrock")
  p.add_argument("--saddle-steps", type=int, default=None,
                 help="steps on the saddle (default: steps // 25)")
  p.add_argument("--out", default="trajectories.png")
  p.add_argument("--quiet", action="store_true")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, tuple[float, float]]]:
  """Draws the paths; returns each optimizer's final point per problem."""
  args = parse_args(argv)
  names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
  unknown = sorted(set(names) - set(OPTIMIZERS))
  if unknown:
    raise SystemExit(f"unknown optimizers {unknown}; choose from {list(OPTIMIZERS)}")
  steps = {"rosenbrock": args.steps,
           "saddle": args.saddle_steps if args.saddle_steps is not None else
           max(1, args.steps // 25)}
  paths: dict[str, dict[str, np.ndarray]] = {}
  for problem, spec in PROBLEMS.items():
    paths[problem] = {}
    for name in names:
      factory = OPTIMIZERS[name][0]
      lr = OPTIMIZERS[name][spec["lr_index"]]
      pts = path(factory(lr), spec["fn"], spec["start"], steps[problem])
      paths[problem][name] = pts
      if not args.quiet:
        print(f"{problem:10s} {name:9s} lr {lr:<7g} end ({pts[-1, 0]: .3f}, {pts[-1, 1]: .3f})"
              f"  f = {float(spec['fn'](jnp.asarray(pts[-1]))):.4g}")
  plot(paths, args.out)
  if not args.quiet:
    print(f"wrote {args.out}")
  return {problem: {n: (float(p[-1, 0]), float(p[-1, 1])) for n, p in runs.items()}
          for problem, runs in paths.items()}


if __name__ == "__main__":
  main(sys.argv[1:])
