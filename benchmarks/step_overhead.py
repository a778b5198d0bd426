"""Where an optimizer step's time goes: the device's work, or the host's dispatch of it.

`run.py` times jitted steps called back to back, as training calls them. On a GPU a step of
many leaves can cost more than its kernels: the host hands JAX every parameter, gradient and
state array on every call. This script times, for each library and tree, Adam's step

* `calls`: `reps` jitted steps called back to back, ended by one `block_until_ready`
  (run.py's measure);
* `loop`: the same step `reps` times inside one jitted `lax.fori_loop` (one dispatch for all
  of them: the device's time a step, launches included);
* `one_leaf`: `loop` for one array holding as many parameters as the whole tree (the kernels'
  bandwidth without per-leaf launches);

and the device's triad bandwidth (run.py's `triad_bandwidth`). `calls - loop` is the host's
share; `loop - one_leaf` what the tree's many leaves cost on the device.

With `--grads-inside` the step makes its gradients itself (`0.1 p + 1e-3`, which XLA fuses
into the update), as a training step that differentiates its loss inside `jax.jit` does: it
is handed the parameters and the state, not the gradients. `--calls-only` times `calls`
alone.

    python benchmarks/step_overhead.py --trees gpt2_small,leaves2000x1000 --libs gx,optax
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import time
from typing import Any

import jax


def _load_run() -> Any:
  """benchmarks/run.py (its trees, optimizers, steps and triad), loaded from beside this file
  under a name of its own."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.py")
  spec = importlib.util.spec_from_file_location("gx_benchmark_run", path)
  module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
  spec.loader.exec_module(module)  # type: ignore[union-attr]
  return module


run = _load_run()


def _one(lib: str, tx: Any, grads_inside: bool) -> Any:
  """One step, `(params, state, grads) -> (params, state)`; `grads_inside`: it ignores its
  `grads` and makes them from the parameters."""
  import optax

  import gradxform as gx
  apply = optax.apply_updates if lib == "optax" else gx.apply_updates

  def one(params, state, grads):
    if grads_inside:
      grads = jax.tree.map(lambda p: 0.1 * p + 1e-3, params)
    if lib in run._FUSED_LIBS:
      return gx.update_and_apply(tx, grads, state, params)
    updates, state = tx.update(grads, state, params)
    return apply(params, updates), state

  return one


def _loop_step(lib: str, tx: Any, reps: int, grads_inside: bool) -> Any:
  """`reps` steps of `_one`'s step inside one jitted `fori_loop`."""
  one = _one(lib, tx, grads_inside)

  def many(params, state, grads):
    return jax.lax.fori_loop(0, reps, lambda _, ps: one(*ps, grads), (params, state))

  return jax.jit(many, donate_argnums=(0, 1))


def _time(fn: Any, params: Any, state: Any, grads: Any, steps: int, rounds: int = 3
          ) -> tuple[float, Any, Any]:
  """Median over `rounds` of the seconds a step, `fn` running `steps` steps a round."""
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    params, state = fn(params, state, grads)
    jax.block_until_ready((params, state))
    times.append((time.perf_counter() - t0) / steps)
  return statistics.median(times), params, state


def measure(lib: str, tree: str, shapes: list[Any], reps: int, seed: int,
            grads_inside: bool = False, calls_only: bool = False,
            state_dtype: Any = None) -> dict[str, Any]:
  params = run.make_tree(shapes, seed)
  grads = (None if grads_inside else
           jax.tree.map(lambda p: 0.1 * p + 1e-3, run.make_tree(shapes, seed + 1)))
  tx = run.build(lib, "adam", state_dtype)
  state = tx.init(params)
  step = (jax.jit(_one(lib, tx, True), donate_argnums=(0, 1)) if grads_inside
          else run.make_step(lib, tx))

  def calls(params, state, grads):
    for _ in range(reps):
      params, state = step(params, state, grads)
    return params, state

  params, state = calls(params, state, grads)  # compile and warm up
  calls_s, params, state = _time(calls, params, state, grads, reps)
  loop_s = math.nan
  if not calls_only:
    loop = _loop_step(lib, tx, reps, grads_inside)
    params, state = loop(params, state, grads)
    loop_s, params, state = _time(loop, params, state, grads, reps)
  del params, state, grads
  n = sum(math.prod(s) for _, s in shapes)
  return {"lib": lib, "tree": tree, "leaves": len(shapes), "params": n, "calls_s": calls_s,
          "loop_s": loop_s, "host_s": calls_s - loop_s,
          "bytes_per_step": run.words("adam", shapes) * 4}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--trees", default="gpt2_small,resnet50,leaves2000x1000")
  ap.add_argument("--libs", default="gx,optax,gx_flatten")
  ap.add_argument("--reps", type=int, default=20)
  ap.add_argument("--triad-size", type=int, default=1 << 25)
  ap.add_argument("--json", default=None, help="write JSON lines here as well")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--grads-inside", action="store_true",
                  help="the step makes its gradients from the parameters (a training step)")
  ap.add_argument("--calls-only", action="store_true", help="time back-to-back calls only")
  ap.add_argument("--state-dtype", default=None, help="gradxform's state_dtype, e.g. int8")
  args = ap.parse_args(argv)
  trees = {**run.TREES, **run.QUICK_TREES}
  rows: list[dict[str, Any]] = []
  triad = run.triad_bandwidth(args.triad_size, 5)["device_triad_bytes_per_s"]
  for tree in args.trees.split(","):
    shapes = trees[tree]()
    n = sum(math.prod(s) for _, s in shapes)
    whole = (None if args.calls_only else
             measure("gx", tree + "_one_leaf", [("w", (n,))], args.reps, args.seed))
    for lib in args.libs.split(","):
      row = measure(lib, tree, shapes, args.reps, args.seed, args.grads_inside,
                    args.calls_only, args.state_dtype)
      row["grads_inside"] = args.grads_inside
      row["one_leaf_s"] = math.nan if whole is None else whole["loop_s"]
      row["loop_bw_over_triad"] = row["bytes_per_step"] / row["loop_s"] / triad
      row["calls_bw_over_triad"] = row["bytes_per_step"] / row["calls_s"] / triad
      rows.append(row)
      print(json.dumps(row), flush=True)
  print(f"\ndevice: {jax.devices()[0].device_kind}, triad {triad / 1e9:.0f} GB/s\n")
  print("| tree | lib | calls ms | loop ms | host ms | one leaf ms | calls BW/triad | "
        "loop BW/triad |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['tree']} | {r['lib']} | {1e3 * r['calls_s']:.3f} | {1e3 * r['loop_s']:.3f} | "
          f"{1e3 * r['host_s']:.3f} | {1e3 * r['one_leaf_s']:.3f} | "
          f"{r['calls_bw_over_triad']:.2f} | {r['loop_bw_over_triad']:.2f} |")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return rows


if __name__ == "__main__":
  main()
