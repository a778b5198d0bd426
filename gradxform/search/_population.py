"""Scoring rules: train a task with each rule, vmapped over a population and a learning-rate grid.

A rule's score on a task is its final loss after `task.steps` full-batch steps from the task's
start, the minimum over the learning-rate grid; a non-finite loss (or parameters) scores +inf,
so a diverging rule is a failed candidate and never stops the search. All of a population's
rules × learning rates train in one jitted program written for a population (`slots.py`:
choices looked up once, two EMA slots per candidate, power branches only where used); one
rule alone trains with the reference form (`rule_transform`, each choice a `lax.switch`).

`Objective` combines tasks into one fitness (lower is better):
`mean_t log10(max((best_loss_t − floor_t) / (initial_loss_t − floor_t), 1e-8))`, the average
number of decades of suboptimality a rule removes (−2 is a hundredfold reduction on average;
each task counts at most 8 decades, so no single task can dominate by underflowing).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._base import GradientTransformation
from gradxform.search import _slots as slots
from gradxform.search._dsl import FIELDS, Rule, rule_transform, validate
from gradxform.search._tasks import Task

#: Learning rates swept for every rule and baseline (half decades, 1e-4 ... 3.16).
DEFAULT_LEARNING_RATES: tuple[float, ...] = tuple(float(10.0 ** (k / 2)) for k in range(-8, 2))
_MIN_RATIO = 1e-8


def _final_loss(task: Task, tx: GradientTransformation, lr: Any, steps: int) -> jax.Array:
  """Trains `task` with `θ ← θ − lr · d`, `d` from `tx`; the final loss, +inf if non-finite."""
  grad = jax.grad(task.loss)

  def body(_, carry):
    p, s = carry
    d, s = tx.update(grad(p), s)
    return p + (-lr) * d, s

  p, _ = jax.lax.fori_loop(0, steps, body, (task.params, tx.init(task.params)))
  loss = task.loss(p)
  ok = jnp.isfinite(loss) & jnp.all(jnp.isfinite(p))
  return jnp.where(ok, loss, jnp.inf)


def train_rule(task: Task, indices: Any, learning_rate: Any, *, seed: int = 0,
               every_branch: bool = False) -> jax.Array:
  """The final loss of `task` trained by one rule (indices may be traced).

  `every_branch`: compute every DSL branch and select (for `vmap`), see `rule_transform`.
  """
  indices = tuple(indices[i] for i in range(len(FIELDS)))
  tx = rule_transform(indices, decay_steps=task.steps, seed=seed, every_branch=every_branch)
  return _final_loss(task, tx, learning_rate, task.steps)


def train_optimizer(task: Task, direction: GradientTransformation,
                    learning_rate: Any) -> jax.Array:
  """The final loss of `task` trained by `θ ← θ − lr · direction(g)` (e.g. Adam's parts)."""
  return _final_loss(task, direction, learning_rate, task.steps)


class Evaluator:
  """Jitted scorers of rules on one task, over a grid of learning rates.

  `population(rules)` trains all `P × L` (rule, learning rate) pairs in one program and returns
  the `[P, L]` final losses; `single(rule, lr)` trains one pair with the reference form of the
  rule (`rule_transform`: `lax.switch`, only the chosen branches run).

  The population program (`slots.population_losses`) looks each rule's choices up once,
  keeps only the EMAs each candidate's operands need (two slots and Adam's second moment, not
  nine buffers), and runs the power branches (`exp`, `x ^ y`) only on the candidates that use
  them (sorted first, `buckets` prefix sizes).
  """

  def __init__(self, task: Task, learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES, *,
               seed: int = 0, buckets: int = 8):
    self.task = task
    self.learning_rates = jnp.asarray(learning_rates, jnp.float32)
    self.seed = seed

    def one(ix, lr):
      return train_rule(task, ix, lr, seed=seed)

    def population(rules, lrs, n_power):
      return slots.population_losses(task, rules, lrs, seed=seed, n_power=n_power,
                                     buckets=buckets)

    self._population = jax.jit(population)
    self._single = jax.jit(one)

  def population(self, rules: Any) -> np.ndarray:
    """`[P, L]` final losses of each rule (rows of six validated indices) at each rate."""
    rules = np.asarray(rules, np.int32).reshape(-1, len(FIELDS))
    lrs = np.asarray(self.learning_rates)
    cand_rules = np.repeat(rules, len(lrs), 0)           # candidate c = (rule c // L, lr c % L)
    cand_lrs = np.tile(lrs, len(rules))
    needs = slots.uses_power(cand_rules).any(1)
    order = np.argsort(~needs, kind="stable")             # power users first
    out = np.empty(len(cand_rules), np.float32)
    out[order] = np.asarray(self._population(jnp.asarray(cand_rules[order]),
                                             jnp.asarray(cand_lrs[order]),
                                             jnp.int32(needs.sum())))
    return out.reshape(len(rules), len(lrs))

  def single(self, rule: Any, learning_rate: float) -> float:
    return float(self._single(jnp.asarray(np.asarray(rule, np.int32)),
                              jnp.float32(learning_rate)))

  def optimizer(self, make_direction: Callable[[], GradientTransformation]) -> np.ndarray:
    """`[L]` final losses of a library transform (without its learning rate) at each rate."""
    return np.asarray(jax.jit(jax.vmap(
        lambda lr: train_optimizer(self.task, make_direction(), lr)))(self.learning_rates))


class Objective:
  """Fitness of rules over a suite of tasks (lower is better), with a cache by rule.

  Rules are evaluated in padded batches of `batch` so the population program compiles once.
  `evaluated` counts the distinct rules trained so far.
  """

  def __init__(self, tasks: Sequence[Task], learning_rates: Sequence[float] =
               DEFAULT_LEARNING_RATES, *, batch: int = 64, seed: int = 0):
    self.tasks = list(tasks)
    self.learning_rates = tuple(float(x) for x in learning_rates)
    self.batch = batch
    self.evaluators = [Evaluator(t, self.learning_rates, seed=seed) for t in self.tasks]
    self.initial = np.array([float(t.loss(t.params)) - t.floor for t in self.tasks])
    self._cache: dict[Rule, np.ndarray] = {}
    self.evaluated = 0

  def losses(self, rules: Sequence[Any]) -> np.ndarray:
    """`[P, T, L]` final losses (cached by canonical rule)."""
    rules = [Rule.validate(r).canonical() for r in rules]
    todo = list(dict.fromkeys(r for r in rules if r not in self._cache))
    for start in range(0, len(todo), self.batch):
      chunk = todo[start:start + self.batch]
      padded = np.array(chunk + [chunk[0]] * (self.batch - len(chunk)), np.int32)
      per_task = np.stack([e.population(padded) for e in self.evaluators], 1)
      for r, row in zip(chunk, per_task):
        self._cache[r] = row
      self.evaluated += len(chunk)
    return np.stack([self._cache[r] for r in rules]) if rules else np.zeros(
        (0, len(self.tasks), len(self.learning_rates)))

  def fitness_of_losses(self, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fitness `[P]`, best loss `[P, T]`, its learning rate `[P, T]`) from `[P, T, L]`."""
    best_ix = np.argmin(losses, -1)
    best = np.take_along_axis(losses, best_ix[..., None], -1)[..., 0]
    floors = np.array([t.floor for t in self.tasks])
    with np.errstate(invalid="ignore", divide="ignore"):
      rel = np.log10(np.maximum((best - floors) / self.initial, _MIN_RATIO))
    fitness = np.where(np.all(np.isfinite(best), -1), rel.mean(-1), np.inf)
    return fitness, best, np.asarray(self.learning_rates)[best_ix]

  def __call__(self, rules: Sequence[Any]) -> np.ndarray:
    """Fitness `[P]` of each rule (lower is better, +inf a failure)."""
    return self.fitness_of_losses(self.losses(rules))[0]

  def details(self, rules: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return self.fitness_of_losses(self.losses(rules))

  def baseline(self, make_direction: Callable[[], GradientTransformation]
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """Fitness, best losses and learning rates of a library optimizer tuned on the same grid.

    `make_direction()` builds the optimizer without its learning rate, e.g.
    `lambda: gx.chain(*adam_direction(0.9, 0.999, 1e-8))`; the step is `θ − lr·d`.
    """
    losses = np.stack([e.optimizer(make_direction) for e in self.evaluators])[None]
    fitness, best, lrs = self.fitness_of_losses(losses)
    return float(fitness[0]), best[0], lrs[0]


def benchmark(task: Task, rules: Sequence[Any], *, learning_rate: float = 1e-2, seed: int = 0,
              repeats: int = 3) -> dict[str, float]:
  """Candidate-steps per second: one vmapped program vs a Python loop of jitted single runs.

  The loop is timed two ways, and the faster one is the baseline. `loop_switch` calls the
  one-rule program (`Evaluator.single`, a `lax.switch` per choice). `loop_slots` calls the
  population program itself with one candidate at a time. All programs are compiled before
  timing. Each is timed `repeats` times, alternating between them so that a burst of load
  from another process hits all of them, and the best time of each is kept.
  """
  rules = np.array([validate(r) for r in rules], np.int32)  # type: ignore[assignment]
  ev = Evaluator(task, [learning_rate], seed=seed)
  ev.population(rules)                       # compile
  ev.single(rules[0], learning_rate)
  ev.population(rules[:1])                   # compile the one-candidate population program

  def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

  t_pop = t_switch = t_slots = np.inf
  for _ in range(repeats):
    t_pop = min(t_pop, timed(lambda: ev.population(rules)))
    t_switch = min(t_switch, timed(lambda: [ev.single(r, learning_rate) for r in rules]))
    t_slots = min(t_slots, timed(lambda: [ev.population(r[None]) for r in rules]))
  t_loop = min(t_switch, t_slots)
  work = len(rules) * task.steps
  return {"population": len(rules), "steps": task.steps, "vmapped_s": t_pop, "loop_s": t_loop,
          "loop_switch_s": t_switch, "loop_slots_s": t_slots,
          "vmapped_candidate_steps_per_s": work / t_pop,
          "loop_candidate_steps_per_s": work / t_loop, "speedup": t_loop / t_pop}
