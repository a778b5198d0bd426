"""Search strategies over rules: random search and regularized evolution, seeded.

Both take a fitness function `rules -> [P] scores` (lower is better, +inf for failures; e.g.
an `Objective`) and a budget of candidates, propose candidates in batches (so a vmapped
objective trains a whole batch at once), and return a `SearchResult` holding every candidate
in the order evaluated. A fixed seed gives the same result: all randomness comes from one
`numpy.random.Generator(seed)`, and the objective is deterministic.

References:
  Real, Aggarwal, Huang & Le, "Regularized evolution for image classifier architecture search",
  AAAI 2019. https://arxiv.org/abs/1802.01548
"""

from __future__ import annotations

import collections
from typing import Callable, NamedTuple, Sequence

import numpy as np

from gradxform import _check
from gradxform.search._dsl import LEFT, SIZES, Rule

Fitness = Callable[[Sequence[Rule]], np.ndarray]


class SearchResult(NamedTuple):
  """Every candidate of a search in evaluation order, with its fitness (lower is better)."""
  rules: list[Rule]
  fitness: np.ndarray

  def best_so_far(self) -> np.ndarray:
    """Best fitness after each candidate (the curve of a search plot)."""
    return np.minimum.accumulate(self.fitness)

  def top(self, k: int = 10, *, distinct_scores: bool = True) -> list[tuple[Rule, float]]:
    """The `k` best rules, best first; ties keep search order.

    Rules are distinct by canonical encoding; with `distinct_scores`, also by fitness, so
    encodings that train identically (`sign(g^3)` and `sign(sign(g))` for `sign(g)`, say:
    bit-equal losses on every task and rate) appear once, as the first one found.
    """
    seen, scores, out = set(), set(), []
    for i in np.argsort(self.fitness, kind="stable"):
      rule, score = self.rules[i].canonical(), float(self.fitness[i])
      if rule in seen or (distinct_scores and score in scores):
        continue
      seen.add(rule)
      scores.add(score)
      out.append((rule, score))
      if len(out) == k:
        break
    return out


def random_rule(rng: np.random.Generator) -> Rule:
  """A rule with every index uniform over its table."""
  return Rule(*(int(rng.integers(n)) for n in SIZES)).canonical()


def mutate(rule: Rule, rng: np.random.Generator) -> Rule:
  """Changes one index of `rule` to a different value (only indices the rule uses)."""
  used = [0, 1, 4] if rule.binary == LEFT else list(range(len(SIZES)))
  i = int(rng.choice(used))
  new = int(rng.integers(SIZES[i] - 1))
  new += new >= rule[i]              # uniform over the other values
  values = list(rule)
  values[i] = new
  return Rule(*values).canonical()


def random_search(fitness: Fitness, budget: int, *, batch: int = 64,
                  seed: int = 0) -> SearchResult:
  """`budget` rules drawn uniformly at random, evaluated `batch` at a time."""
  budget = _check.integer("random_search", "budget", budget, minimum=1)
  batch = _check.integer("random_search", "batch", batch, minimum=1)
  rng = np.random.default_rng(seed)
  rules: list[Rule] = []
  scores: list[np.ndarray] = []
  while len(rules) < budget:
    proposals = [random_rule(rng) for _ in range(min(batch, budget - len(rules)))]
    scores.append(np.asarray(fitness(proposals), np.float64))
    rules += proposals
  return SearchResult(rules, np.concatenate(scores))


def regularized_evolution(fitness: Fitness, budget: int, *, population: int = 64,
                          tournament: int = 8, batch: int | None = None, seed: int = 0,
                          initial: Sequence[Rule] = ()) -> SearchResult:
  """Regularized ("ageing") evolution, Real et al. 2019, with batched children.

  Starts from `population` rules (`initial`, completed by random ones). Each generation makes
  `batch` children (default: `population`): for each, `tournament` members are sampled
  without replacement, the fittest is the parent, and the child is the parent with one index
  mutated. Children are evaluated together, join the population, and the same number of
  *oldest* members leave it (ageing, not the worst), until `budget` candidates in all,
  initial population included.
  """
  where = "regularized_evolution"
  budget = _check.integer(where, "budget", budget, minimum=1)
  population = _check.integer(where, "population", population, minimum=1)
  batch = population if batch is None else _check.integer(where, "batch", batch, minimum=1)
  tournament = _check.integer(where, "tournament", tournament, minimum=1)
  _check.ordered(where, ("tournament", tournament), ("population", population))
  rng = np.random.default_rng(seed)
  start = [Rule.validate(r).canonical() for r in initial][:population]
  start += [random_rule(rng) for _ in range(population - len(start))]
  start = start[:budget]
  rules = list(start)
  scores = [np.asarray(fitness(start), np.float64)]
  alive = collections.deque(zip(start, scores[0]))
  while len(rules) < budget:
    members = list(alive)
    children = []
    for _ in range(min(batch, budget - len(rules))):
      picks = rng.choice(len(members), size=tournament, replace=False)
      parent = min((members[i] for i in picks), key=lambda m: m[1])[0]
      children.append(mutate(parent, rng))
    child_scores = np.asarray(fitness(children), np.float64)
    rules += children
    scores.append(child_scores)
    for pair in zip(children, child_scores):
      alive.append(pair)
      alive.popleft()
  return SearchResult(rules, np.concatenate(scores))


def ranked_table(rows: Sequence[tuple[str, float, np.ndarray, np.ndarray]],
                 task_names: Sequence[str]) -> str:
  """A Markdown table: rank, formula, fitness, then best loss @ learning rate per task.

  `rows` are `(formula, fitness, best_losses[T], learning_rates[T])`, best first.
  """
  head = "| # | rule (step: θ ← θ − η·d, d =) | fitness | " + " | ".join(task_names) + " |"
  sep = "|---|---|---:|" + "---:|" * len(task_names)
  lines = [head, sep]
  for i, (formula, fit, losses, lrs) in enumerate(rows):
    cells = " | ".join(f"{l:.3g} @ {r:.0e}" if np.isfinite(l) else "diverged"
                       for l, r in zip(losses, lrs))
    rank = str(i + 1) if not formula.startswith("baseline") else "–"
    code = formula.replace("|", "\\|")      # a bare | would end the Markdown cell
    lines.append(f"| {rank} | `{code}` | {fit:.3f} | {cells} |")
  return "\n".join(lines)
