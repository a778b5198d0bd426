"""AdamW with a weight-decay mask (leaves of rank >= 2 decayed) on ResNet-50: the step time of
`gx.update_and_apply` against the two calls and Optax's `adamw(mask=...)`, in one process,
three alternating rounds, median of 15 donated steps each (issue 19; RESULTS, session 11).

    PYTHONPATH=. python benchmarks/masked_adamw.py
"""

from __future__ import annotations

import importlib.util
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradxform as gx

_spec = importlib.util.spec_from_file_location(
    "gx_bench_run", pathlib.Path(__file__).with_name("run.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def two_calls(tx, apply):
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return apply(p, u), s

  return jax.jit(step, donate_argnums=(0, 1))


def main(rounds: int = 3, reps: int = 15) -> None:
  shapes = bench.resnet50_shapes()
  params, grads = bench.make_tree(shapes, 0), bench.make_tree(shapes, 1)
  mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
  ours = gx.adamw(1e-3, weight_decay=1e-2, mask=mask)
  theirs = optax.adamw(1e-3, weight_decay=1e-2, mask=mask)
  fused = jax.jit(lambda p, s, g: gx.update_and_apply(ours, g, s, p), donate_argnums=(0, 1))
  steps = {"update_and_apply": (fused, ours), "two calls": (two_calls(ours, gx.apply_updates),
                                                            ours),
           "optax": (two_calls(theirs, optax.apply_updates), theirs)}
  calls = fused.lower(params, ours.init(params), grads).as_text().count("gx_elementwise")
  print(f"kernel calls in the fused step: {calls}")
  state = {k: (jax.tree.map(jnp.copy, params), tx.init(params)) for k, (_, tx) in steps.items()}
  times: dict[str, list[float]] = {k: [] for k in steps}
  for _ in range(rounds):
    for k, (step, _) in steps.items():
      p, s = state[k]
      for _ in range(2):
        p, s = step(p, s, grads)
      jax.block_until_ready(p)
      ts = []
      for _ in range(reps):
        start = time.perf_counter()
        p, s = step(p, s, grads)
        jax.block_until_ready((p, s))
        ts.append(time.perf_counter() - start)
      state[k] = (p, s)
      times[k].append(float(np.median(ts)))
  for k, t in times.items():
    print(f"{k:>16}: " + " ".join(f"{1e3 * x:.1f}" for x in t) + " ms")
  print("fused / optax: " + " ".join(
      f"{a / b:.2f}" for a, b in zip(times["update_and_apply"], times["optax"])))


if __name__ == "__main__":
  main()
