"""Why the digits MLP misses issue 9's 10× population speedup on CPU: the task's own cost.

For each MLP size, prints (µs per candidate-step unless said otherwise):

* `loop`: one candidate at a time, µs per step, the faster of `Evaluator.single` (`lax.switch`)
  and the population program at size 1 (as `search.benchmark` takes it).
* `population`: the vmapped population program (`Evaluator.population`).
* `task`: the batched gradient alone, `vmap(grad(loss))` with plain gradient descent
  (`d = g`), i.e. the population with a free rule. `loop / task` bounds the speedup.
* `rule`: the population program on a task whose gradient costs almost nothing (`½·10⁻³‖θ‖²`
  on the MLP's parameters): the rules' own arithmetic.
* `layer 1`: the first layer's two matrix products alone, forward `x @ W1` and backward
  `xᵀ @ dH`, as one GEMM over all candidates (`[n, 64] @ [64, C·h]`), the best layout there
  is for them. `loop / (layer 1 + rule)` bounds the speedup of a population program with
  this rule arithmetic whose layer 2, softmax, tanh and biases cost nothing.

Usage: `PYTHONPATH=. python benchmarks/search_mlp.py [--population 256] [--quick]` (the
table in benchmarks/RESULTS.md is the default run, about 2 minutes).
Timings are best of `--repeats`; nothing here is asserted (the machine is shared).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import search


def _best(fn, repeats: int) -> float:
  jax.block_until_ready(fn())                     # compile
  best = np.inf
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def measure(hidden: int, n_train: int, population: int, repeats: int = 3) -> dict[str, float]:
  """The row of one MLP size (see the module docstring)."""
  task = search.mlp_digits(0, hidden=hidden, n_train=n_train)
  rng = np.random.default_rng(population)
  rules = [search.random_rule(rng) for _ in range(population)]
  r = search.benchmark(task, rules, learning_rate=1e-2, repeats=repeats)
  work = population * task.steps
  us = 1e6 / work

  grad = jax.vmap(jax.grad(task.loss))
  p0 = jnp.broadcast_to(task.params, (population, task.params.shape[0]))
  descend = jax.jit(lambda p: jax.lax.fori_loop(
      0, task.steps, lambda _, p: p - 1e-2 * grad(p), p))
  t_task = _best(lambda: descend(p0), repeats)

  # The population program alone (as `search.benchmark` times it): its loops are not needed.
  cheap = search.Evaluator(task._replace(loss=lambda p: 0.5e-3 * jnp.sum(p * p)), [1e-2])
  t_rule = _best(lambda: cheap.population(rules), repeats)

  x = jnp.ones((n_train, 64), jnp.float32)
  w = jnp.full((64, population * hidden), 1e-3, jnp.float32)

  def gemms(_, w):                                # forward and weight gradient, chained
    h = x @ w
    return w - 1e-6 * (x.T @ h)
  layer1 = jax.jit(lambda w: jax.lax.fori_loop(0, task.steps, gemms, w))
  t_l1 = _best(lambda: layer1(w), repeats)
  flops = 2 * 2 * n_train * 64 * hidden * work
  return {"hidden": hidden, "samples": n_train, "params": int(task.params.shape[0]),
          "loop_us_per_step": r["loop_s"] * us, "rule_us": t_rule * us,
          "population_us": r["vmapped_s"] * us, "speedup": r["speedup"],
          "task_us": t_task * us, "layer1_us": t_l1 * us,
          "layer1_gflops": flops / t_l1 / 1e9}


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--population", type=int, default=256)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--quick", action="store_true", help="one small size (for tests)")
  args = ap.parse_args(argv)
  sizes = [(8, 16)] if args.quick else [(16, 256), (32, 512), (16, 32), (8, 16)]
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, population {args.population}")
  print("| hidden × samples | params | loop µs/step | population µs/cand-step | speedup "
        "| task alone | rule alone | layer-1 GEMMs (GFLOP/s) | bound loop / (layer 1 + rule) |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  rows = []
  for hidden, n_train in sizes:
    m = measure(hidden, n_train, args.population, args.repeats)
    loop = m["loop_us_per_step"]
    print(f"| {hidden} × {n_train} | {m['params']} | {loop:.1f} | {m['population_us']:.2f} | "
          f"{m['speedup']:.1f}x | {m['task_us']:.2f} | {m['rule_us']:.2f} | "
          f"{m['layer1_us']:.2f} ({m['layer1_gflops']:.0f}) | "
          f"{loop / (m['layer1_us'] + m['rule_us']):.1f}x |", flush=True)
    rows.append(m)
  return rows


if __name__ == "__main__":
  main()
