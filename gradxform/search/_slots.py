"""The population program: a whole population of rules trained in one jitted program.

`Evaluator.population` trains every (rule, learning rate) candidate of a population together.
The reference form of a rule, `dsl.rule_transform`, keeps every operand's accumulator (six
EMAs, Adam's two moments, RMSprop's one) whatever the rule reads, because one state structure
must serve every rule; `vmap` of it (the former population program) updates nine
parameter-sized buffers per candidate and computes every DSL branch. This module is written
for a population instead, from the same tables (`dsl.OPERAND_TABLE`, `dsl.UNARY_OPS`,
`dsl.BINARY_OPS`: one definition of each operand and function, so the two programs cannot
drift apart):

* Choices and layout: each choice of a rule is a per-candidate vector looked up once before
  training (`Choices`); looked up inside the step, the gather ended up in every elementwise
  loop (one per element) and XLA:CPU did not vectorize it. Parameters, gradients and slots
  are `[C, N]`, the layout XLA returns the batched gradient in; below 8 parameters
  (Rosenbrock) they are `[N, C]`, candidates last (see `population_losses`).
* State: a candidate reads at most two operands, and every stateful operand is one EMA of
  `g`, `g²` or `g³` (`m, v, c` and their `_999` forms, `sign(m)`, `sign(g)*sign(m)`,
  RMSprop's `ν`, Adam's `m`) plus, for Adam only, its second moment. So each candidate
  carries slot `a1` / `a2`, the EMA its first / second operand needs, with that candidate's
  `β`, power `g^k` and form: `a ← β a + ((1 − β) x) y`, where `x = g^k, y = 1` is
  `scale_by_momentum(β, ema=True)`'s `β a + (1 − β) g^k` and `x = y = g` is `scale_by_rms`'s
  `β ν + (1 − β) g g` (the same operations in the same order; multiplying by 1 is exact);
  and slot `b`, Adam's second moment, shared by both operands because it is the same for
  both. Three buffers instead of nine.
* Shared values: the noise operand, `drop`'s masks, the decay factors and Adam's bias
  corrections depend on the step only; they are computed for every step before the loop
  (`shared_values`, the same calls `rule_transform` makes) and indexed inside it.
* Power branches: the `exp` unary and the binary `x ^ y` (`dsl.power`, an `exp` of a `log`),
  marked `costly` in the tables, are the costliest branches, two or three transcendentals an
  element where every other branch is one operation. `Evaluator` sorts the candidates that
  use one first and `tail_prefix` runs the power branches only on that prefix (rounded up to
  one of `buckets` sizes, one `lax.switch` branch each); the others get the same values
  without them, because `select_n` never reads a branch that is not chosen.

Every branch a candidate uses is computed by the same operations as in `rule_transform`. XLA
compiles the two programs differently (LLVM fuses a multiply and an add into an FMA, or
`x / sqrt(y)` into `x * rsqrt(y)`, depending on the surrounding fusion), so results agree to
rounding, not always bit for bit: on Rosenbrock (elementwise) the population equals the
single runs to about 1e-6 (bit-equal on most rules); on the tasks with matrix products, a
batched GEMM sums in another order than the single run's GEMV, as it did in the former
program too (see tests/test_search.py, and benchmarks/RESULTS.md for the measurements).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _numerics
from gradxform.search._dsl import (_DROP_KEEP, _NOISE_VARIANCE, ADAM_B1, ADAM_B2, ADAM_EPS,
                                  BINARY_OPS, LEFT, OPERAND_KINDS, OPERAND_TABLE, RMS_EPS,
                                  UNARY_OPS, _sign_decays)
from gradxform._transforms.noise import add_gradient_noise, noise_key


def _operand_table() -> dict[str, np.ndarray]:
  """Per operand index (from `dsl.OPERAND_TABLE`): its kind, and its slot's decay β, 1 − β (as
  Python computes it), power of g, rms form; and the value of a constant.

  An operand without an EMA gets β = 1 − β = 0 (its slot stays 0 and is never read). β and
  1 − β are kept in float64; `choices` converts them to `scalar_dtype()`: the float32 values of
  the Python constants, as the library's transforms use them, or under `jax_enable_x64` the
  float64 ones (not float32-rounded β in a float64 run).
  """
  beta = [0.0 if op.beta is None else op.beta for op in OPERAND_TABLE]
  rms_form = [op.kind == "rmsprop" for op in OPERAND_TABLE]
  return {
      "case": np.array([OPERAND_KINDS.index(op.kind) for op in OPERAND_TABLE], np.int32),
      "beta": np.array(beta, np.float64),
      "one_minus": np.array([0.0 if op.beta is None else 1.0 - b
                             for op, b in zip(OPERAND_TABLE, beta)], np.float64),
      # x = (g, g², g³)[power]; the rms form computes ν's (1 − ρ) g² as ((1 − ρ) g) g.
      "power": np.array([0 if r else op.power - 1 for op, r in zip(OPERAND_TABLE, rms_form)],
                        np.int32),
      "rms_form": np.array(rms_form, bool),
      "const": np.array([op.value for op in OPERAND_TABLE], np.float64),
  }


_OPERAND_ARRAYS = _operand_table()
_COSTLY_UNARY = np.array([op.costly for op in UNARY_OPS])
_COSTLY_BINARY = np.array([op.costly for op in BINARY_OPS])
_LAST_BELOW = 8       # candidates last below this many parameters (see population_losses)


def uses_power(rules: np.ndarray) -> np.ndarray:
  """`[P, 3]` booleans: does each rule evaluate a costly branch (`Op.costly`: `exp`, `x ^ y`)
  at `u1`, at `u2`, at `b`."""
  rules = np.asarray(rules)
  bi = rules[:, 4]
  return np.stack([_COSTLY_UNARY[rules[:, 1]], (bi != LEFT) & _COSTLY_UNARY[rules[:, 3]],
                   _COSTLY_BINARY[bi]], -1)


class SlotState(NamedTuple):
  """Per candidate: the EMA slots of its two operands and Adam's second moment."""
  a1: jax.Array
  a2: jax.Array
  b: jax.Array


class StepShared(NamedTuple):
  """Values of one step that every candidate shares (computed once, not per candidate)."""
  decay: jax.Array     # [4] f(t) of each decay function
  corr1: jax.Array     # 1 − 0.9^(t+1)
  corr2: jax.Array     # 1 − 0.999^(t+1)
  noise: jax.Array     # the noise operand, like params
  keep1: jax.Array     # drop's keep mask of u1, like params
  keep2: jax.Array     # drop's keep mask of u2


def shared_values(params: jax.Array, count: jax.Array, *, decay_steps: int,
                  seed: int) -> StepShared:
  """The step's unbatched values, by the same calls as `rule_transform` makes."""
  dtype = _numerics.scalar_dtype()
  decay = jnp.stack([jnp.asarray(fn(count), dtype) for fn in _sign_decays(decay_steps)])
  noise_tx = add_gradient_noise(_NOISE_VARIANCE, 0.0, seed)
  noise_state = noise_tx.init(params)._replace(count=count)
  noise, _ = noise_tx.update(jnp.zeros_like(params), noise_state)
  keys = jax.random.split(jax.random.fold_in(noise_key(seed, count), 1), 2)
  shape = jnp.shape(params)
  return StepShared(decay=decay,
                    corr1=_numerics.one_minus_decay_power(ADAM_B1, count + 1),
                    corr2=_numerics.one_minus_decay_power(ADAM_B2, count + 1),
                    noise=noise,
                    keep1=jax.random.bernoulli(keys[0], _DROP_KEEP, shape),
                    keep2=jax.random.bernoulli(keys[1], _DROP_KEEP, shape))


def _select(index: jax.Array, cases: list[jax.Array]) -> jax.Array:
  """`cases[index]` elementwise, broadcasting the index and the cases to one shape."""
  index, *cases = jnp.broadcast_arrays(index, *cases)
  return jax.lax.select_n(index, *cases)


class Choices(NamedTuple):
  """A population's rules as per-candidate vectors `[C]`, looked up once before training.

  Looking the tables up inside the step would put a gather in every elementwise loop (one per
  element, which keeps XLA:CPU from vectorizing it); these are plain loop-invariant vectors.
  """
  case1: jax.Array      # which of `dsl.OPERAND_KINDS` operand 1 is
  case2: jax.Array
  const1: jax.Array     # its value if a constant
  const2: jax.Array
  beta1: jax.Array      # slot a1: β, 1 − β, power of g, rms form
  one_minus1: jax.Array
  power1: jax.Array
  rms1: jax.Array
  beta2: jax.Array
  one_minus2: jax.Array
  power2: jax.Array
  rms2: jax.Array
  unary1: jax.Array
  unary2: jax.Array
  binary: jax.Array
  decay: jax.Array


def choices(rules: jax.Array) -> Choices:
  """The `Choices` of `[C, 6]` rule indices."""
  rules = jnp.asarray(rules)
  # An explicit dtype: jax 0.10 reuses a float32 conversion of the same NumPy array made
  # under jit with x64 off for a plain `jnp.asarray(v)` after x64 is turned on.
  t = {k: jnp.asarray(v, _numerics.scalar_dtype() if v.dtype.kind == "f" else v.dtype)
       for k, v in _OPERAND_ARRAYS.items()}
  o1, o2 = rules[:, 0], rules[:, 2]
  return Choices(case1=t["case"][o1], case2=t["case"][o2],
                 const1=t["const"][o1], const2=t["const"][o2],
                 beta1=t["beta"][o1], one_minus1=t["one_minus"][o1], power1=t["power"][o1],
                 rms1=t["rms_form"][o1],
                 beta2=t["beta"][o2], one_minus2=t["one_minus"][o2], power2=t["power"][o2],
                 rms2=t["rms_form"][o2],
                 unary1=rules[:, 1], unary2=rules[:, 3], binary=rules[:, 4], decay=rules[:, 5])


def head(g: jax.Array, state: SlotState, ch: Choices,
         shared: StepShared) -> tuple[jax.Array, jax.Array, SlotState]:
  """The operands `o1` and `f(t)·o2` of a population's candidates and their new slots.

  Elementwise and broadcasting: `g` and the slots are `[C, N]` with `ch`'s fields `[C, 1]`
  and `shared`'s arrays `[N]`, or `[N, C]` with `[C]` and `[N, 1]` (see `population_losses`).
  """
  g2, g3 = jnp.square(g), g * g * g
  sg = jnp.sign(g)
  b = ADAM_B2 * state.b + ((1.0 - ADAM_B2) * g) * g       # scale_by_rms(0.999)'s ν
  ones = jnp.ones_like(g)

  def operand(a, case, const, beta, one_minus, power, rms_form):
    x = _select(power, [g, g2, g3])
    a = beta * a + (one_minus * x) * jnp.where(rms_form, g, ones)
    sa = jnp.sign(a)
    kinds = {                                       # each kind of `dsl.Operand`
        "g^k": x,
        "ema": a,
        "sign(g)": sg,
        "sign(ema)": sa,
        "sign(g)*sign(ema)": sg * sa,
        "adam": (a / shared.corr1) / (jnp.sqrt(b / shared.corr2) + ADAM_EPS),  # m̂/(√v̂ + ε)
        "rmsprop": g / jnp.sqrt(a + RMS_EPS),                                # g / √(ν + ε)
        "const": const.astype(g.dtype),
        "noise": shared.noise,
    }
    return _select(case, [kinds[k] for k in OPERAND_KINDS]), a

  x1, a1 = operand(state.a1, ch.case1, ch.const1, ch.beta1, ch.one_minus1, ch.power1, ch.rms1)
  x2, a2 = operand(state.a2, ch.case2, ch.const2, ch.beta2, ch.one_minus2, ch.power2, ch.rms2)
  f = _select(ch.decay, list(shared.decay))
  return x1, f * x2, SlotState(a1=a1, a2=a2, b=b)


def _unary(x: jax.Array, keep: jax.Array, costly: bool) -> list[jax.Array]:
  """Every branch of `dsl.UNARY_OPS` on `x`; with `costly` False, `x` stands in for the costly
  ones."""
  return [op.fn(x, lambda: keep) if costly or not op.costly else x for op in UNARY_OPS]


def tail(x1: jax.Array, x2: jax.Array, ch: Choices, shared: StepShared,
         sites: tuple[bool, bool, bool] = (True, True, True)) -> jax.Array:
  """One candidate's direction `b(u1(x1), u2(x2))`; `sites[i]` False skips power site i.

  A skipped site's branch is replaced by a placeholder, so only candidates that do not use it
  may be computed with it off.
  """
  u1, u2, bi = ch.unary1, ch.unary2, ch.binary
  y1 = _select(u1, _unary(x1, shared.keep1, sites[0]))
  y2 = _select(u2, _unary(x2, shared.keep2, sites[1]))
  branches = [op.fn(y1, y2) if sites[2] or not op.costly else y1 for op in BINARY_OPS]
  return _select(bi, branches)


def tail_prefix(x1: jax.Array, x2: jax.Array, ch: Choices, shared: StepShared,
                n_power: jax.Array, buckets: int, *, axis: int = -1) -> jax.Array:
  """`tail` over candidates (along `axis`) whose power users come first (`n_power` of them).

  The power branches run on the first `⌈n_power / q⌉ · q` candidates only (`q = ⌈C /
  buckets⌉`, one `lax.switch` branch per prefix length); every other candidate gets the same
  value from the tail without them, because `select_n` never reads a branch not chosen.
  """
  n = x1.shape[axis]
  q = -(-n // buckets)
  sizes = sorted({min(k * q, n) for k in range(buckets + 1)})
  off, on = (False, False, False), (True, True, True)

  def part(x, lo, hi):
    return jax.lax.slice_in_dim(x, lo, hi, axis=axis % x.ndim)

  def branch(m):
    def run(x1, x2):
      if m == 0:
        return tail(x1, x2, ch, shared, off)
      if m == n:
        return tail(x1, x2, ch, shared, on)
      first = tail(part(x1, 0, m), part(x2, 0, m), Choices(*(c[:m] for c in ch)), shared, on)
      rest = tail(part(x1, m, n), part(x2, m, n), Choices(*(c[m:] for c in ch)), shared, off)
      return jnp.concatenate([first, rest], axis)
    return run

  index = jnp.searchsorted(jnp.asarray(sizes), n_power)     # smallest prefix holding them all
  return jax.lax.switch(index, [branch(m) for m in sizes], x1, x2)


def population_losses(task: Any, rules: jax.Array, lrs: jax.Array, *, seed: int = 0,
                      n_power: jax.Array | None = None, buckets: int = 8,
                      candidates_last: bool | None = None) -> jax.Array:
  """`[C]` final losses of candidates `(rules[c], lrs[c])`, +inf where non-finite.

  Layout: `[C, N]` parameters and slots (candidates first), the layout in which XLA returns
  the batched gradient, with per-candidate choices as `[C, 1]` columns; or, with
  `candidates_last` (the default below `_LAST_BELOW` parameters), `[N, C]` with choices as
  `[C]` vectors. Candidates last was slower wherever the gradient has to be read transposed
  (logreg, P = 64: 306 vs 236 ns per candidate-step; MLP, P = 640: 45.8 vs 35.7 µs) and as
  fast on 2-D Rosenbrock, where it also reproduced the single runs bit for bit in the tests
  (candidates first differed on one exploding rule: LLVM contracts multiply-adds into FMAs
  differently in the two layouts).
  With `n_power` (the first `n_power` candidates are the only ones using a power branch,
  see `uses_power`), power branches run only on a prefix (see `tail_prefix`).
  """
  n = rules.shape[0]
  params0 = jnp.asarray(task.params)
  if params0.ndim != 1:
    raise ValueError(f"population_losses: task {task.name!r} must have flat (1-D) parameters, "
                     f"got shape {params0.shape}")
  last = params0.shape[0] < _LAST_BELOW if candidates_last is None else candidates_last
  axis = 1 if last else 0                      # the candidate axis of [N, C] / [C, N]
  grad = jax.vmap(jax.grad(task.loss), in_axes=axis, out_axes=axis)
  zeros = jnp.zeros((params0.shape[0], n) if last else (n, params0.shape[0]), params0.dtype)
  ch = choices(rules)
  if not last:
    ch = Choices(*(c[:, None] for c in ch))
    lrs = lrs[:, None]

  # Every step's shared values at once (random bits, decay factors): they depend on the step
  # only, and one batched computation replaces ~30 small kernels and 7 loops in every step.
  table = jax.vmap(lambda c: shared_values(params0, c, decay_steps=task.steps, seed=seed))(
      jnp.arange(task.steps))
  if last:
    table = table._replace(noise=table.noise[..., None], keep1=table.keep1[..., None],
                           keep2=table.keep2[..., None])

  def body(count, carry):
    p, s = carry
    g = grad(p)
    shared = StepShared(*(a[count] for a in table))
    x1, x2, s = head(g, s, ch, shared)
    if n_power is None:
      d = tail(x1, x2, ch, shared)
    else:
      d = tail_prefix(x1, x2, ch, shared, n_power, buckets, axis=axis)
    return p + (-lrs) * d, s

  p0 = jnp.broadcast_to(params0[:, None] if last else params0, zeros.shape)
  p, _ = jax.lax.fori_loop(0, task.steps, body, (p0, SlotState(zeros, zeros, zeros)))
  loss = jax.vmap(task.loss, in_axes=axis)(p)
  ok = jnp.isfinite(loss) & jnp.all(jnp.isfinite(p), 1 - axis)
  return jnp.where(ok, loss, jnp.inf)
