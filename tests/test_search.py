"""gradxform.search: the rule DSL, vmapped population scoring, and the search strategies.

Trajectory comparisons run in float64 (`jax.enable_x64`): the rules include sign and
near-singular updates, which turn one-ulp float32 differences (another CPU's code generation,
another summation order) into different trajectories. The float32 program, the one searches
run, is checked against float64 single runs at a tolerance far above float32 rounding.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import gradxform as gx
from gradxform import search
from gradxform.search import _dsl as dsl
from gradxform.search._dsl import _sign_decays

STEPS = 50
K = search.KNOWN
_UNARY = [name for name, _ in dsl.UNARY]
_BINARY = [name for name, _ in dsl.BINARY]


def _f64(task):
  """`task` with float64 parameters (call under `jax.enable_x64(True)`): the same start, float64
  arithmetic (its data stay the float32 values they were built as)."""
  return task._replace(params=jnp.asarray(task.params, jnp.float64))


def _singular(rules):
  """Rules with a pole: `x / (y + 1e-8)`, `log|x|` or `x ^ y` (an exp of a log). Where the
  argument passes near zero, any rounding difference grows without bound, in float64 too."""
  rules = np.asarray(rules)
  uses_u2 = rules[:, 4] != _BINARY.index("left")
  log = _UNARY.index("log")
  return (np.isin(rules[:, 4], (_BINARY.index("div"), _BINARY.index("pow")))
          | (rules[:, 1] == log) | (uses_u2 & (rules[:, 3] == log)))


def _random_bits(rules):
  """Rules that read the noise operand or drop: their random bits depend on the float dtype."""
  rules = np.asarray(rules)
  uses_u2 = rules[:, 4] != _BINARY.index("left")
  noise, drop = dsl.OPERANDS.index("noise"), _UNARY.index("drop")
  return ((rules[:, 0] == noise) | (rules[:, 1] == drop)
          | (uses_u2 & ((rules[:, 2] == noise) | (rules[:, 3] == drop))))


PARAMS = {"w": np.array([1.0, -2.0, 3.0, 0.5]), "b": np.array([[0.3, -0.7], [2.0, -1.5]])}


def _run(tx, steps=STEPS):
  """`steps` jitted steps on a two-leaf tree with a drifting, mixed-sign gradient."""

  def body(t, carry):
    p, s = carry
    g = jax.tree.map(lambda x: x - 0.5 + 0.2 * jnp.cos(t.astype(x.dtype)), p)
    u, s = tx.update(g, s, p)
    return gx.apply_updates(p, u), s

  params = jax.tree.map(jnp.asarray, PARAMS)       # float64 under jax.enable_x64
  return jax.jit(lambda p: jax.lax.fori_loop(0, steps, body, (p, tx.init(p)))[0])(params)


def _run_reference(ref, steps=STEPS):
  """`_run` with a float64 NumPy reference of tests/reference.py."""
  theta = reference.flatten(PARAMS)
  for t in range(steps):
    theta = ref.step(theta, theta - 0.5 + 0.2 * np.cos(t))
  return reference.unflatten(PARAMS, theta)


class _EmaMomentum:
  """m ← βm + (1 − β)g (m₀ = 0), θ ← θ − ηm: the DSL's `m` operand as a whole rule."""

  def __init__(self, lr, beta=0.9):
    self.lr, self.beta, self.m = lr, beta, 0.0

  def step(self, theta, g):
    self.m = self.beta * self.m + (1 - self.beta) * g
    return theta - self.lr * self.m


def _float32_linear_decay(step):
  """docs/ALGORITHMS.md's linear f(t), T = STEPS, rounded to float32 (schedules return
  float32)."""
  return float(np.float32(reference.linear_sign_decay(STEPS)(step)))


#: Float64 NumPy references (tests/reference.py, from docs/ALGORITHMS.md) of the known rules.
REFERENCES = {
    "sgd": reference.SGD,
    "momentum_ema": _EmaMomentum,
    "rmsprop": reference.RMSprop,
    "adam": reference.Adam,
    "powersign": reference.PowerSign,
    "addsign": reference.AddSign,
    "powersign_ld": lambda lr: reference.PowerSign(lr, decay_fn=_float32_linear_decay),
    "addsign_ld": lambda lr: reference.AddSign(lr, decay_fn=_float32_linear_decay),
}


@pytest.mark.parametrize("name, library", [
    ("sgd", lambda: gx.sgd(0.1)),
    ("momentum_ema", lambda: gx.chain(gx.scale_by_momentum(0.9, ema=True),
                                      gx.scale_by_learning_rate(0.1))),
    ("rmsprop", lambda: gx.rmsprop(0.01)),
    ("adam", lambda: gx.adam(0.01)),
    ("powersign", lambda: gx.powersign(0.01)),
    ("addsign", lambda: gx.addsign(0.01)),
    ("powersign_ld", lambda: gx.powersign(0.01, decay_fn=_sign_decays(STEPS)[1])),
    ("addsign_ld", lambda: gx.addsign(0.01, decay_fn=_sign_decays(STEPS)[1])),
])
def test_known_encodings_equal_library_optimizers(name, library):
  """In float64: the rule's optimizer equals the library's (the same primitives, to rounding)
  and both follow the float64 NumPy reference of the algorithm."""
  lr = 0.1 if name in ("sgd", "momentum_ema") else 0.01
  with jax.enable_x64(True):
    found = _run(search.rule_optimizer(K[name], lr, decay_steps=STEPS))
    lib = _run(library())
  want = _run_reference(REFERENCES[name](lr))
  chex.assert_trees_all_close(found, lib, rtol=1e-12, atol=0)
  chex.assert_trees_all_close(found, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_decay_functions_match_algorithms_md(x64):
  """The DSL's f(t) (the library's schedules, and the DSL's own fallback formulas) against
  docs/ALGORITHMS.md's: linear, cosine (half a period), restarts (4 periods), in float64
  Python.

  The library's schedules return float32 (computed in float64 under x64): within float32
  rounding (6e-8 at most for values ≤ 1); the fallback computes in float64 under x64.
  """
  T = 50
  def restart(n):
    return 0.5 * (1 + math.cos(math.pi * ((4 * min(n, T)) % T) / T))
  refs = [lambda n: 1.0, reference.linear_sign_decay(T), reference.cosine_sign_decay(T, 0.5),
          restart]
  t = np.arange(0, 130)
  want = np.array([[f(int(n)) for n in t] for f in refs])
  # By hand: f(25) is ½ linear and cosine, 1 with 4 restarts (100 mod 50 = 0); f(60) = 0
  # linear, 0 cosine.
  np.testing.assert_allclose(want[1:, [25, 60]], [[0.5, 0], [0.5, 0], [1, 1]], atol=1e-15)
  with jax.enable_x64(x64):
    got = np.array([np.broadcast_to(np.asarray(f(jnp.asarray(t))), t.shape)
                    for f in _sign_decays(T)])
    np.testing.assert_allclose(got, want, rtol=0, atol=6e-8 if x64 else 1e-6)


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_power_matches_numpy_pow(x64):
  """The DSL's `x ^ y` (exp/log form) against NumPy's float64 `pow`, signs and special values.

  `exp(z)` turns an absolute error δ of `z = y·log|x|` into a relative error δ, and δ is about
  `|z|` ulps, so the bound is a few ulps times `1 + |z|` (observed: at most 0.43 ulp · (1 + |z|)
  in float32 and float64, on AVX-512, AVX2 and SSE4.2 code alike).
  """
  bases = np.array([-3.0, -1.5, -1.0, -0.25, 0.0, 0.3, 1.0, 2.5, 7.0, np.inf], np.float32)
  exps = np.array([-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 2.7, -1.3, 7.0],
                  np.float32)
  x, y = (a.ravel().astype(np.float64 if x64 else np.float32) for a in np.meshgrid(bases, exps))
  with jax.enable_x64(x64):
    got = np.asarray(jax.jit(dsl.power)(jnp.asarray(x), jnp.asarray(y)))
  assert got.dtype == x.dtype
  with np.errstate(all="ignore"):
    want = np.power(x.astype(np.float64), y.astype(np.float64))
    z = np.nan_to_num(np.abs(y * np.log(np.abs(x))), nan=0.0, posinf=0.0)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  exact = ~np.isfinite(want) | (want == 0) | (y == 0)          # ±inf, 0, x ^ 0 = 1
  np.testing.assert_array_equal(got[exact], want[exact])
  rel = np.abs(got[~exact] - want[~exact]) / np.abs(want[~exact])
  bound = 4 * np.finfo(got.dtype).eps * (1 + z[~exact])
  assert np.all(rel <= bound), (rel / bound).max()


@pytest.mark.parametrize("make, where", [
    (lambda: search.logistic_regression(0), "start"),       # w = 0: every margin z is 0
    (lambda: search.logistic_regression(0), "random"),
    (lambda: search.rosenbrock(3), "random"),
    (lambda: search.mlp_digits(0, hidden=4, n_train=32), "start"),
])
def test_task_gradients_match_finite_differences(make, where):
  """jax.grad of each task's loss against central differences of the loss in float64."""
  task = make()
  p = np.asarray(task.params, np.float64)
  if where == "random":
    p = p + np.random.default_rng(0).normal(scale=0.3, size=p.shape)
  got = np.asarray(jax.jit(jax.grad(task.loss))(jnp.asarray(p, jnp.float32)))
  h = 1e-5
  with jax.enable_x64(True):
    shifts = np.eye(p.size) * h
    loss = jax.jit(jax.vmap(task.loss))
    want = (np.asarray(loss(p + shifts)) - np.asarray(loss(p - shifts))) / (2 * h)
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-5 * np.abs(want).max())


def test_task_losses_at_their_start_are_hand_derived_values():
  """logreg at w = 0: every margin is 0, so the loss is log 2; Rosenbrock at (−1.2, 1): 24.2."""
  logreg = search.logistic_regression(0)
  np.testing.assert_allclose(float(logreg.loss(logreg.params)), math.log(2.0), rtol=1e-6)
  assert logreg.floor < math.log(2.0)
  rosen = search.rosenbrock(2)
  a = float(np.float32(-1.2))                  # the start as the float32 task stores it
  want = (1 - a) ** 2 + 100 * (1 - a * a) ** 2
  assert abs(want - (2.2 ** 2 + 100 * 0.44 ** 2)) < 2e-5
  np.testing.assert_allclose(float(rosen.loss(rosen.params)), want, rtol=1e-6)


def test_heavy_ball_momentum_is_ema_momentum_with_scaled_lr():
  # b ← μb + g and m ← μm + (1−μ)g give m = (1−μ)b, so η·b = (η/(1−μ))·m (float64).
  with jax.enable_x64(True):
    found = _run(search.rule_optimizer(K["momentum_ema"], 0.1 / (1 - 0.9)))
    lib = _run(gx.sgd(0.1, momentum=0.9))
  chex.assert_trees_all_close(found, lib, rtol=1e-10, atol=1e-13)
  chex.assert_trees_all_close(found, _run_reference(reference.SGD(0.1, momentum=0.9)),
                              rtol=1e-10, atol=1e-13)


def test_formulas_and_names():
  assert K["powersign"].formula() == "g * exp(sign(g)*sign(m))"
  assert K["addsign_ld"].formula() == "g * (1 + ld(t)*sign(g)*sign(m))"
  assert K["adam"].formula() == "adam"
  rule = search.Rule.from_names("g", "neg", "v", "sqrt", "div", "cd")
  assert str(rule) == "-g / (sqrt|cd(t)*v| + 1e-8)"
  assert search.Rule.validate(np.array(tuple(rule))) == rule
  assert search.rule_optimizer(rule, 0.1) == search.rule_optimizer(search.Rule(*rule), 0.1)


@pytest.mark.parametrize("vector, index, field", [
    ([0, 0, 99, 0, 0, 0], 2, "operand2"),
    ([0, 9, 0, 0, 0, 0], 1, "unary1"),
    ([0, 0, 0, 0, -1, 0], 4, "binary"),
    ([0, 0, 0, 0, 0, 4], 5, "decay"),
    ([0, 0, 0, 0, 0, 0.5], 5, "decay"),
])
def test_invalid_encodings_name_the_bad_index(vector, index, field):
  with pytest.raises(ValueError, match=rf"rule index {index} \({field}\)"):
    search.Rule.validate(vector)
  with pytest.raises(ValueError, match=rf"rule index {index}"):
    search.scale_by_rule(vector)


def test_invalid_encoding_length_and_names():
  with pytest.raises(ValueError, match="6 integers"):
    search.Rule.validate([0, 0, 0])
  with pytest.raises(ValueError, match="unknown unary1 'cube'"):
    search.Rule.from_names("g", "cube")


# --- population scoring and search on a cheap toy problem ----------------------------------

LRS = (1e-3, 1e-2, 1e-1)


@pytest.fixture(scope="module")
def objective():
  return search.Objective([search.rosenbrock(2, steps=40)], LRS, batch=16)


NAN_RULE = search.Rule.from_names("g", "id", "2", "sqrt", "pow")   # g ^ 1.41: NaN for g < 0


def test_float32_population_matches_float64_single_runs(objective):
  """The float32 population program (what a search runs, through `Objective`) against single
  runs of the reference form in float64, on Rosenbrock (40 steps).

  Compared: every rule without a pole (`_singular`) or random bits (drawn differently in
  float64), where the float64 run is finite; the failures must be the same. Observed: 1.3e-5
  at most on AVX-512, AVX2 and SSE4.2 code (float32 rounding, amplified by the dynamics);
  rtol 2e-4.
  """
  rng = np.random.default_rng(3)
  rules = [K["adam"], K["powersign"], K["momentum_ema"], NAN_RULE] + [
      search.random_rule(rng) for _ in range(12)]
  pop = objective.evaluators[0].population(np.array(rules))
  assert pop.dtype == np.float32
  with jax.enable_x64(True):
    ev = search.Evaluator(_f64(search.rosenbrock(2, steps=40)), LRS)
    single = np.array([[ev.single(r, lr) for lr in LRS] for r in rules])
  assert np.all(np.isinf(pop[3])) and np.all(np.isinf(single[3]))     # NAN_RULE
  compared = ~(_singular(rules) | _random_bits(rules))
  assert compared[:3].all() and compared.sum() >= 8
  np.testing.assert_array_equal(np.isfinite(pop[compared]), np.isfinite(single[compared]))
  ok = compared[:, None] & np.isfinite(single)
  assert ok.sum() >= 12
  np.testing.assert_allclose(pop[ok], single[ok], rtol=2e-4, atol=0)


# --- the population program (slots.py) against the reference form ---------------------------

SHORT = 20


def _short_task(which):
  """The default suite's tasks (same sizes as the search runs), 20 steps each."""
  return [lambda: search.logistic_regression(0, steps=SHORT),
          lambda: search.rosenbrock(2, steps=SHORT),
          lambda: search.mlp_digits(0, hidden=16, n_train=256, steps=SHORT)][which]()


def _mixed_rules(seed, n):
  rng = np.random.default_rng(seed)
  # Every operand, unary, binary and decay appears; random rules add combinations.
  cover = [search.Rule(o, o % 9, (o * 7) % 17, (o * 5) % 9, o % 6, o % 4) for o in range(17)]
  return list(K.values()) + [NAN_RULE] + cover + [search.random_rule(rng) for _ in range(n)]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["logreg", "rosenbrock", "mlp"])
def test_population_equals_single_on_every_task(which):
  """The population program against single runs of the reference form, in float64.

  In float32 the two differ by an ulp here and there: a batched GEMM sums in another order
  than a single run's GEMV, and XLA contracts multiply-adds into FMAs differently in the two
  programs (and differently on other CPUs). Sign and near-singular rules turn such ulps into
  other trajectories: 0.33 % for RMSprop at lr 0.1 on the MLP, on AVX-512 and AVX2 code but
  not on SSE4.2. In float64 the same differences stay ~1e-16 and the populations' losses
  (returned in float32) equal the single runs to their float32 rounding (≤ 5.6e-8 observed)
  on every rule without a pole; the MLP's rules with one (`x / (y + 1e-8)`, `log|x|`) still
  diverge from any perturbation (three of its 48 rules, by 180 % to 2800 % depending on the
  CPU code), so over all rules only the failures and the median agreement are asserted.
  """
  rules = np.array(_mixed_rules(which, 22))
  with jax.enable_x64(True):
    ev = search.Evaluator(_f64(_short_task(which)), LRS)
    pop = ev.population(rules)
    single = np.array([[ev.single(r, lr) for lr in LRS] for r in rules])
  finite = np.isfinite(single)
  assert 0 < finite.sum() < finite.size                     # both successes and failures
  np.testing.assert_array_equal(np.isfinite(pop), finite)
  regular = ~_singular(rules)
  assert regular[:len(K)].all() and regular.sum() >= 24
  ok = finite & regular[:, None]
  np.testing.assert_allclose(pop[ok], single[ok], rtol=1e-6, atol=0)
  rel = np.abs(pop[finite] - single[finite]) / np.abs(single[finite])
  assert np.median(rel) < 1e-7


def test_power_gating_changes_nothing():
  # Evaluator sorts power users first and runs `pow` only on a prefix; every prefix size
  # (none, all, some) must give the losses of the ungated program. Float64: the gated and
  # ungated programs are compiled differently (FMA contraction may differ), which in float32
  # could move a chaotic rule; here that stays at ~1e-16 (the float32 outputs of
  # `Evaluator.population` are compared to ≤ 2 ulps).
  from gradxform.search import _slots as slots
  with jax.enable_x64(True):
    task = _f64(search.rosenbrock(2, steps=SHORT))
    ev = search.Evaluator(task, LRS, buckets=4)
    rng = np.random.default_rng(11)
    # 16 rules, and (from more draws) 16 without and 16 with a power branch: four populations
    # of one size, so that the gated and the ungated program are each compiled once.
    pool = np.array([search.random_rule(rng) for _ in range(96)])
    rules = pool[:16]
    uses = slots.uses_power(rules).any(1)
    assert 0 < uses.sum() < len(rules)
    pool_uses = slots.uses_power(pool).any(1)
    plain, powered = pool[~pool_uses][:16], pool[pool_uses][:16]
    assert len(plain) == len(powered) == 16
    ungated = jax.jit(lambda r, l: slots.population_losses(task, r, l))
    lrs32 = np.float32(LRS).astype(np.float64)               # Evaluator's float32 rates
    for chosen in (rules, plain, powered, rules[::-1]):
      pop = ev.population(chosen)
      cand = jnp.asarray(np.repeat(chosen, len(LRS), 0))
      want = np.asarray(ungated(cand, jnp.asarray(np.tile(lrs32, len(chosen)))))
      assert np.isfinite(want).any() and not np.isfinite(want).all()
      np.testing.assert_allclose(pop.reshape(-1), want, rtol=2.5e-7, atol=0)
    # The same in the candidates-first layout (the default from 8 parameters on).
    order = np.argsort(~uses, kind="stable")
    cand = jnp.asarray(rules[order])
    lrs = jnp.full((len(rules),), 1e-2, jnp.float64)
    run = jax.jit(lambda r, l, n: slots.population_losses(task, r, l, n_power=n, buckets=4,
                                                          candidates_last=False))
    gated = np.asarray(run(cand, lrs, jnp.int32(uses.sum())))
    ungated_first = np.asarray(jax.jit(lambda r, l: slots.population_losses(
        task, r, l, candidates_last=False))(cand, lrs))
  assert gated.dtype == np.float64 and np.isfinite(gated).sum() >= 4
  np.testing.assert_allclose(gated, ungated_first, rtol=1e-12, atol=0)


def _rosenbrock_reference(make_ref, start, learning_rates, steps):
  """Final losses of a float64 NumPy reference on 2-D Rosenbrock (hand-derived gradient)."""
  out = []
  for lr in learning_rates:
    ref, x = make_ref(float(lr)), np.array(start, np.float64)
    with np.errstate(all="ignore"):
      for _ in range(steps):
        a, b = x
        x = ref.step(x, np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)]))
      loss = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    out.append(loss if np.isfinite(loss) and np.all(np.isfinite(x)) else np.inf)
  return np.array(out)


@pytest.fixture(scope="module")
def rosenbrock64():
  """Float64 2-D Rosenbrock (50 steps), its Evaluator at three small rates and the ungated
  candidates-first program, jitted once for every case of the test below: the rule is an
  argument of the programs, not part of them."""
  from gradxform.search import _slots as slots
  with jax.enable_x64(True):
    task = _f64(search.rosenbrock(2, steps=STEPS))
    ev = search.Evaluator(task, (3e-4, 1e-3, 3e-3))
  first = jax.jit(lambda r, l: slots.population_losses(task, r, l, candidates_last=False))
  return task, ev, first


@pytest.mark.parametrize("name", list(REFERENCES))
def test_population_slots_train_like_float64_references(name, rosenbrock64):
  # The population's slot state (per-candidate EMAs, Adam's moments) against the float64 NumPy
  # reference of each known rule (tests/reference.py), over 50 steps on Rosenbrock at three
  # learning rates, in float64; both layouts. Observed: ≤ 6e-8 (the float32 output rounding).
  task, ev, first_layout = rosenbrock64
  with jax.enable_x64(True):
    pop = ev.population(np.array([K[name]]))[0]                # candidates last (2 parameters)
    rules = jnp.asarray(np.repeat(np.array([K[name]], np.int32), 3, 0))
    first = np.asarray(first_layout(rules, ev.learning_rates))
  want = _rosenbrock_reference(REFERENCES[name], task.params, np.asarray(ev.learning_rates),
                               STEPS)
  ok = np.isfinite(want)
  assert ok.sum() >= 2
  for got, rtol in ((pop, 1e-6), (first, 1e-10)):
    np.testing.assert_array_equal(np.isfinite(got), ok)
    np.testing.assert_allclose(got[ok], want[ok], rtol=rtol, atol=0)


def test_non_finite_rules_score_as_failures(objective):
  assert np.all(np.isinf(objective.evaluators[0].population(np.array([NAN_RULE] * 16))))
  fitness = objective([NAN_RULE, K["adam"]])
  assert fitness[0] == np.inf and np.isfinite(fitness[1])


def test_fixed_seed_search_is_deterministic(objective):
  runs = []
  for _ in range(2):
    objective._cache.clear()
    runs.append((search.random_search(objective, 32, batch=16, seed=7),
                 search.regularized_evolution(objective, 48, population=16, tournament=4,
                                              seed=7)))
  for a, b in zip(*runs):
    assert a.rules == b.rules
    np.testing.assert_array_equal(a.fitness, b.fitness)
  other = search.regularized_evolution(objective, 48, population=16, tournament=4, seed=8)
  assert other.rules != runs[0][1].rules


def test_evolution_beats_its_initial_population(objective):
  result = search.regularized_evolution(objective, 160, population=16, tournament=4, seed=0)
  initial_best = np.min(result.fitness[:16])
  assert np.isfinite(initial_best)
  assert result.best_so_far()[-1] < initial_best - 0.1
  top = result.top(3)
  assert len(top) == 3 and top[0][1] == result.best_so_far()[-1]


def test_mutation_changes_exactly_one_used_index():
  rng = np.random.default_rng(0)
  for _ in range(200):
    rule = search.random_rule(rng)
    child = search.mutate(rule, rng)
    assert sum(a != b for a, b in zip(rule, child)) >= 1
    if rule.binary != dsl.LEFT and child.binary != dsl.LEFT:
      assert sum(a != b for a, b in zip(rule, child)) == 1


def test_baseline_and_table(objective):
  # Optax's Adam (an independent implementation) as the baseline direction, against the DSL's
  # Adam rule. Optax corrects the bias with float32 1 − β₂ᵗ (1.3e-5 off at t = 1), the library
  # in float64: the losses differ by 3.5e-6, the fitness by 1.9e-6 (relative).
  fit, best, lrs = objective.baseline(lambda: optax.scale_by_adam(0.9, 0.999, 1e-8))
  fit_rule, best_rule, lrs_rule = objective.details([K["adam"]])
  assert math.isclose(fit, fit_rule[0], rel_tol=1e-4)
  np.testing.assert_allclose(best, best_rule[0], rtol=1e-4)
  np.testing.assert_array_equal(lrs, lrs_rule[0])
  # The fitness is log10 of the remaining fraction of the start's loss (24.2; floor 0).
  assert math.isclose(fit, math.log10(best[0] / 24.2), rel_tol=1e-5)
  table = search.ranked_table([("adam", fit, best, lrs)], ["rosenbrock"])
  assert "`adam`" in table and "rosenbrock" in table


def test_importing_gradxform_does_not_import_sklearn_or_search():
  import subprocess
  import sys
  code = ("import sys, gradxform; assert 'sklearn' not in sys.modules; "
          "assert 'gradxform.search' not in sys.modules; "
          "from gradxform import search; assert 'sklearn' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_example_quick_mode_runs():
  import importlib
  import os
  import sys
  examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "examples")
  sys.path.insert(0, examples)
  try:
    result = importlib.import_module("optimizer_search").main(["--quick", "--no-random",
                                                               "--top", "3"])
  finally:
    sys.path.remove(examples)
  assert np.isfinite(result["best_fitness"])
  assert result["best_fitness"] == result["evolution"].fitness.min()
  assert set(result["baselines"]) == {"baseline: Adam (b1=0.9, b2=0.999)",
                                      "baseline: SGD, heavy-ball momentum 0.9"}
