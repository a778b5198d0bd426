"""Draw every gradxform schedule (and SGDR's restarts) into one PNG.

    python examples/plot_schedules.py                       # writes docs/schedules.png
    python examples/plot_schedules.py --out /tmp/s.png --steps 300

Each panel evaluates one schedule at steps 0 … steps−1 in a single vectorised call (a
schedule is a pure function of an int array of steps).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gradxform as gx

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                           "schedules.png")


def panels(steps: int) -> list[tuple[str, list[tuple[str, Callable[[Any], jax.Array]]]]]:
  """(title, [(label, schedule), ...]) for every panel; lengths scale with `steps`."""
  q = max(steps // 4, 2)
  return [
      ("constant / step / piecewise", [
          ("constant_schedule(1)", gx.constant_schedule(1.0)),
          (f"step_decay_schedule(1, {q}, 0.5)", gx.step_decay_schedule(1.0, q, 0.5)),
          ("piecewise_constant_schedule", gx.piecewise_constant_schedule(
              1.0, {q: 0.3, 3 * q: 0.3})),
      ]),
      ("exponential / inverse time", [
          ("exponential_decay(1, 0.5, k=q)", gx.exponential_decay(1.0, 0.5,
                                                                   transition_steps=q)),
          ("… staircase", gx.exponential_decay(1.0, 0.5, transition_steps=q, staircase=True)),
          ("inverse_time_decay(1, 1, k=q)", gx.inverse_time_decay(1.0, 1.0,
                                                                   transition_steps=q)),
      ]),
      ("polynomial / linear", [
          ("linear_schedule", gx.linear_schedule(1.0, 0.1, 3 * q, transition_begin=q // 2)),
          ("polynomial p=2", gx.polynomial_schedule(1.0, 0.0, 2.0, 3 * q)),
          ("polynomial p=0.5", gx.polynomial_schedule(1.0, 0.0, 0.5, 3 * q)),
      ]),
      ("cosine", [
          ("cosine_decay_schedule", gx.cosine_decay_schedule(1.0, 3 * q, end_value=0.1)),
          ("warmup_cosine_decay_schedule", gx.warmup_cosine_decay_schedule(
              0.0, 1.0, q // 2, 3 * q, end_value=0.05)),
      ]),
      ("SGDR (warm restarts)", [
          ("period_mult=1", gx.sgdr_schedule(1.0, q // 2, min_value=0.05)),
          ("period_mult=2", gx.sgdr_schedule(1.0, max(q // 4, 1), period_mult=2.0)),
          ("period_mult=1.5", gx.sgdr_schedule(0.8, max(q // 4, 1), period_mult=1.5)),
      ]),
      ("cyclical", [
          ("triangular", gx.cyclical_schedule(0.1, 1.0, max(q // 3, 1))),
          ("triangular2", gx.cyclical_schedule(0.1, 1.0, max(q // 3, 1), mode="triangular2")),
          ("exp_range", gx.cyclical_schedule(0.1, 1.0, max(q // 3, 1), mode="exp_range",
                                             gamma=0.99 ** (100 / steps))),
      ]),
      ("one cycle", [
          ("anneal='cos'", gx.one_cycle_schedule(steps, 1.0)),
          ("anneal='linear'", gx.one_cycle_schedule(steps, 1.0, anneal="linear")),
      ]),
      ("transformer (×√d·√warmup)", [
          ("transformer_schedule", _normalised_transformer(max(q // 2, 1))),
      ]),
      ("join_schedules", [
          ("warm-up ▸ constant ▸ cosine", gx.join_schedules(
              [gx.linear_schedule(0.0, 1.0, q // 2), gx.constant_schedule(1.0),
               gx.cosine_decay_schedule(1.0, 2 * q)], [q // 2, q])),
      ]),
      ("sign decays f(t)", [
          ("linear_sign_decay", gx.linear_sign_decay(3 * q)),
          ("cosine_sign_decay", gx.cosine_sign_decay(3 * q)),
          ("restart_sign_decay(3 periods)", gx.restart_sign_decay(3 * q, 3)),
      ]),
  ]


def _normalised_transformer(warmup: int) -> Callable[[Any], jax.Array]:
  sched = gx.transformer_schedule(512, warmup)
  peak = (512 * warmup) ** -0.5
  return lambda t: sched(t) / peak


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=DEFAULT_OUT, help="PNG path (default docs/schedules.png)")
  parser.add_argument("--steps", type=int, default=400, help="steps drawn per schedule")
  args = parser.parse_args(argv)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps = np.arange(args.steps, dtype=np.int32)
  grid = panels(args.steps)
  cols = 5
  rows = -(-len(grid) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
  for ax, (title, curves) in zip(axes.flat, grid, strict=False):
    for label, sched in curves:
      ax.plot(steps, np.asarray(jax.jit(sched)(jnp.asarray(steps))), label=label, lw=1.4)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, loc="best")
  for ax in list(axes.flat)[len(grid):]:
    ax.axis("off")
  fig.suptitle("gradxform schedules (step 0 = first update)", fontsize=12)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  fig.savefig(args.out, dpi=110)
  plt.close(fig)
  print(f"wrote {args.out}")
  return args.out


if __name__ == "__main__":
  main()
