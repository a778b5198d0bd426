"""Search for update rules with regularized evolution, next to random search and tuned baselines.

Every candidate rule `Δθ = −η · b(u1(o1), u2(f(t)·o2))` (see `gradxform.search._dsl`) trains
three small tasks (logistic regression, 2-D Rosenbrock, a digits MLP) at each learning rate of
a grid, all candidates of a generation in one vmapped program; its fitness is the mean log10
of the final suboptimality relative to the start (lower is better). Adam and SGD with
heavy-ball momentum are tuned on the same grid. The best rules are then checked on held-out
tasks (other seeds, a 32-dimensional regression, 4-D Rosenbrock, a wider MLP on more data).

    python examples/optimizer_search.py                  # ~5 minutes on two CPU cores
    python examples/optimizer_search.py --quick          # a smoke test, well under a minute
    python examples/optimizer_search.py --budget 4096 --seed 1

Prints ranked tables of formulas and saves a plot of best fitness vs candidates evaluated.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _parse(argv: list[str] | None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--budget", type=int, default=1536,
                  help="candidates evaluated by evolution (and by random search)")
  ap.add_argument("--population", type=int, default=64, help="evolution's population size")
  ap.add_argument("--tournament", type=int, default=8, help="tournament sample size")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--top", type=int, default=10, help="rows of the ranked table")
  ap.add_argument("--no-random", action="store_true", help="skip the random-search comparison")
  ap.add_argument("--out", default=None,
                  help="PNG path ('' for none; default docs/search.png, none with --quick)")
  ap.add_argument("--benchmark", action="store_true",
                  help="only time the vmapped population against a loop of single runs")
  ap.add_argument("--quick", action="store_true",
                  help="tiny tasks and budget (for tests); implies a small population")
  args = ap.parse_args(argv)
  if args.out is None:
    args.out = "" if args.quick else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "docs", "search.png")
  return args


def main(argv: list[str] | None = None) -> dict:
  """Runs the search; returns the best rule, fitnesses and baselines (for tests)."""
  args = _parse(argv)
  import jax

  import gradxform as gx
  from gradxform import search
  from gradxform._optimizers.adam import adam_direction

  if args.benchmark:
    return {"benchmark": _benchmark(search, args.quick)}
  if args.quick:
    tasks = [search.logistic_regression(0, steps=30), search.rosenbrock(2, steps=50)]
    held = [search.rosenbrock(2, seed=1, steps=50)]     # one held-out task: a compile less
    lrs = tuple(10.0 ** np.arange(-4, 1))
    args.budget, args.population, args.tournament = min(args.budget, 64), 16, 4
  else:
    tasks = [search.logistic_regression(0), search.rosenbrock(2),
             search.mlp_digits(0, hidden=16, n_train=256)]
    held = search.held_out_tasks()
    lrs = search.DEFAULT_LEARNING_RATES
  names = [t.name for t in tasks]
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; tasks: {', '.join(names)}; "
        f"{len(lrs)} learning rates {lrs[0]:.0e}..{lrs[-1]:.0e}")

  objective = search.Objective(tasks, lrs, batch=args.population)
  t0 = time.perf_counter()
  objective(list(search.KNOWN.values()))        # compiles; the known rules are reference rows
  print(f"compiled in {time.perf_counter() - t0:.1f} s")

  t0 = time.perf_counter()
  evolution = search.regularized_evolution(objective, args.budget, population=args.population,
                                           tournament=args.tournament, seed=args.seed)
  t_evo = time.perf_counter() - t0
  print(f"evolution: {args.budget} candidates in {t_evo:.1f} s "
        f"({objective.evaluated} distinct rules trained so far)")
  random = None
  if not args.no_random:
    t0 = time.perf_counter()
    random = search.random_search(objective, args.budget, batch=args.population,
                                  seed=args.seed + 1)
    print(f"random search: {args.budget} candidates in {time.perf_counter() - t0:.1f} s")

  baselines = {
      "baseline: Adam (b1=0.9, b2=0.999)": lambda: gx.chain(*adam_direction(0.9, 0.999, 1e-8)),
      "baseline: SGD, heavy-ball momentum 0.9": lambda: gx.scale_by_momentum(0.9),
  }
  base_rows = [(name, *objective.baseline(make)) for name, make in baselines.items()]

  top = evolution.top(args.top)
  fit, best, best_lr = objective.details([r for r, _ in top])
  rows = [(r.formula(), f, b, l) for (r, _), f, b, l in zip(top, fit, best, best_lr)]
  print("\nTop rules found by regularized evolution (fitness: mean log10 of final/initial "
        "suboptimality; cells: best final loss @ its learning rate):\n")
  print(search.ranked_table(rows + base_rows, names))

  known = list(search.KNOWN.items())
  fit_k, best_k, lr_k = objective.details([r for _, r in known])
  print("\nKnown rules in the same DSL (same budget and grid):\n")
  print(search.ranked_table([(f"{k}: {r.formula()}", f, b, l) for (k, r), f, b, l in
                             zip(known, fit_k, best_k, lr_k)], names))
  if random is not None:
    print(f"\nbest fitness: evolution {evolution.fitness.min():.3f}, random search "
          f"{random.fitness.min():.3f} (best random rule: "
          f"{random.top(1)[0][0].formula()}); failures (non-finite at every rate): evolution "
          f"{np.isinf(evolution.fitness).mean():.0%}, random {np.isinf(random.fitness).mean():.0%}")

  # Held-out check: the three best rules against the baselines, re-tuned on the same grid.
  held_obj = search.Objective(held, lrs, batch=4)
  check = [r for r, _ in top[:3]]
  fit_h, best_h, lr_h = held_obj.details(check)
  held_rows = [(r.formula(), f, b, l) for r, f, b, l in zip(check, fit_h, best_h, lr_h)]
  held_rows += [(name, *held_obj.baseline(make)) for name, make in baselines.items()]
  print("\nHeld-out tasks (learning rate re-tuned on the same grid):\n")
  print(search.ranked_table(held_rows, [t.name for t in held]))

  if args.out:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = np.arange(1, args.budget + 1)
    ax.plot(x, evolution.best_so_far(), label="regularized evolution", lw=2)
    if random is not None:
      ax.plot(x, random.best_so_far(), label="random search", lw=2)
    for (name, f, _, _), style in zip(base_rows, ("--", ":")):
      ax.axhline(f, color="k", ls=style, lw=1, label=name.replace("baseline: ", "") + " (tuned)")
    ax.set_xlabel("candidates evaluated")
    ax.set_ylabel("best fitness (mean log10 suboptimality ratio)")
    ax.set_title("Optimizer search on logreg + Rosenbrock + digits MLP")
    finite = evolution.best_so_far()[np.isfinite(evolution.best_so_far())]
    if finite.size:
      ax.set_ylim(min(finite.min(), min(r[1] for r in base_rows)) - 0.3, finite.max() + 0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"\nsaved {os.path.normpath(args.out)}")
  return {"best": top[0][0], "best_formula": top[0][0].formula(), "best_fitness": top[0][1],
          "baselines": {name: f for name, f, _, _ in base_rows},
          "evolution": evolution, "random": random,
          "held_out": {formula: f for formula, f, _, _ in held_rows}}


def _benchmark(search, quick: bool) -> list[dict]:
  """Candidate-steps per second, vmapped population vs a Python loop of jitted single runs
  (the faster of the one-rule `lax.switch` program and the population program at size 1)."""
  import jax
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPUs visible, affinity {len(os.sched_getaffinity(0))}")
  tasks = [search.logistic_regression(0), search.rosenbrock(2),
           search.mlp_digits(0, hidden=16, n_train=256)]
  sizes = (64,) if quick else (64, 256, 640)
  print("| task | population | vmapped cand-steps/s | loop: switch / slots cand-steps/s "
        "| speedup over the faster loop |")
  print("|---|---:|---:|---:|---:|")
  out = []
  for task in tasks[:1] if quick else tasks:
    for p in sizes:
      rng = np.random.default_rng(p)
      rules = [search.random_rule(rng) for _ in range(p)]
      r = search.benchmark(task, rules, learning_rate=1e-2, repeats=5)
      work = r["population"] * r["steps"]
      print(f"| {task.name} | {p} | {r['vmapped_candidate_steps_per_s']:.3g} | "
            f"{work / r['loop_switch_s']:.3g} / {work / r['loop_slots_s']:.3g} | "
            f"{r['speedup']:.1f}x |", flush=True)
      out.append(dict(r, task=task.name))
  return out


if __name__ == "__main__":
  main()
