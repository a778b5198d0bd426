"""The update-rule language: Bello et al.'s `Δθ = −η · b(u1(o1), u2(f(t) · o2))`.

A rule is six small integers, `Rule(operand1, unary1, operand2, unary2, binary, decay)`,
indexing the tables below. Every rule is an ordinary optimizer: `scale_by_rule(rule)` is a
`GradientTransformation` producing the direction `d = b(u1(o1), u2(f(t)·o2))`, and
`rule_optimizer(rule, learning_rate)` chains it with `scale_by_learning_rate`, so the step is
`θ ← θ − η d`. `Rule.formula()` prints it.

Operands (all moving averages are the library's own primitives, updated with the current
gradient before use; `m` is the β = 0.9 EMA of `g`, as PowerSign's):

  ========  ===========================================================================
  g         the gradient (the incoming update)
  g^2, g^3  its square and cube
  m, m_999  EMA of g, β = 0.9 / 0.999     (`scale_by_momentum(β, ema=True)`)
  v, v_999  EMA of g², β = 0.9 / 0.999
  c, c_999  EMA of g³, β = 0.9 / 0.999
  sign(g), sign(m)
  sign(g)*sign(m)    the sign agreement of PowerSign/AddSign (`sign_agreement`'s s)
  adam      m̂ / (√v̂ + 1e-8), β1 = 0.9, β2 = 0.999 (`adam_direction`, exactly `gx.adam`'s)
  rmsprop   g / √(v + 1e-8), ρ = 0.9 (`scale_by_rms`, exactly `gx.rmsprop`'s)
  1, 2      constants
  noise     N(0, 0.01²) per coordinate (`add_gradient_noise(1e-4, gamma=0)`)
  ========  ===========================================================================

Unary: `x, −x, exp(x), log|x|, √|x|, clip(x, 1)` (to [−1, 1]), `sign(x)`, `drop(x, 0.5)`
(each coordinate zeroed with probability ½, not rescaled; Bello's "drop"), and `1 + x`.
Binary: `x + y, x − y, x · y, x / (y + 1e-8), x ^ y` (plain power, computed as
`± exp(y · log|x|)` (`power`): NaN for a negative base and a fractional exponent, scored as a
failure), and `x` (keep left; `o2`, `u2`, `f` unused).
Decay `f(t)` (docs/ALGORITHMS.md, step t = 0 at the first update, `T = decay_steps`): `1`,
linear `ld`, cosine `cd` (half a period), restart `rd` (4 periods); it multiplies the second
operand, so PowerSign-ld is `g · exp(ld(t) · sign(g)·sign(m))`.

Deviations from Bello et al. (2017): one binary unit, not their stack of units; the agreement
`sign(g)·sign(m)` is an operand and `1 + x` a unary function, so PowerSign and AddSign (two
units in the paper) are single-unit rules; no weight-decay operands.

References:
  Bello, Zoph, Vasudevan & Le, "Neural optimizer search with reinforcement learning",
  ICML 2017. https://arxiv.org/abs/1709.07417
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _numerics, _tree
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._optimizers.adam import adam_direction
from gradxform._schedules.sign_decay import (cosine_sign_decay, linear_sign_decay,
                                            restart_sign_decay)
from gradxform._transforms.momentum import scale_by_momentum
from gradxform._transforms.noise import add_gradient_noise, noise_key
from gradxform._transforms.rms import scale_by_rms
from gradxform._transforms.scale import scale_by_learning_rate

# ---------------------------------------------------------------------------------------------
# The tables: the one definition of every operand and function, read by the rule transform
# below (`rule_transform`) and by the population program (`slots.py`) alike.

#: Hyperparameters of the operands' accumulators (β of the EMAs, Adam's and RMSprop's).
_EMA_DECAYS = (0.9, 0.999)
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
RMS_DECAY, RMS_EPS = 0.9, 1e-8
_DIV_DELTA = 1e-8
_NOISE_VARIANCE = 1e-4      # std 0.01, Bello et al.'s ε ~ N(0, 0.01)
_DROP_KEEP = 0.5
_RESTART_PERIODS = 4


class Operand(NamedTuple):
  """An operand: how it is computed from the gradient `g` and at most one EMA of a power of g.

  `kind` is one of `OPERAND_KINDS`:

  * `g^k`: `g ** power`;
  * `ema`, `sign(ema)`, `sign(g)*sign(ema)`: the EMA `a ← β a + (1 − β) g^power` (β = `beta`),
    its sign, the sign agreement of g and the EMA;
  * `adam`: Adam's direction, whose first moment is that EMA (β1 = `beta`, power 1);
  * `rmsprop`: RMSprop's direction, whose ν is that EMA (ρ = `beta`, power 2, computed as
    `ρ ν + ((1 − ρ) g) g`, `scale_by_rms`'s order of operations);
  * `sign(g)`, `const` (the number `value`), `noise` (N(0, `_NOISE_VARIANCE`) per coordinate).

  `beta` is None for the kinds that read no EMA.
  """
  name: str
  kind: str
  power: int = 1
  beta: float | None = None
  value: float = 0.0


OPERAND_TABLE: tuple[Operand, ...] = (
    Operand("g", "g^k", 1), Operand("g^2", "g^k", 2), Operand("g^3", "g^k", 3),
    *(Operand(name + suffix, "ema", k, beta)
      for k, name in ((1, "m"), (2, "v"), (3, "c"))
      for suffix, beta in zip(("", "_999"), _EMA_DECAYS)),
    Operand("sign(g)", "sign(g)"),
    Operand("sign(m)", "sign(ema)", 1, _EMA_DECAYS[0]),
    Operand("sign(g)*sign(m)", "sign(g)*sign(ema)", 1, _EMA_DECAYS[0]),
    Operand("adam", "adam", 1, ADAM_B1),
    Operand("rmsprop", "rmsprop", 2, RMS_DECAY),
    Operand("1", "const", value=1.0), Operand("2", "const", value=2.0),
    Operand("noise", "noise"),
)

#: The kinds of operand (see `Operand`), each computed one way by each program.
OPERAND_KINDS: tuple[str, ...] = tuple(dict.fromkeys(op.kind for op in OPERAND_TABLE))

#: The EMAs the operands read, as (power of g, β), in the order `RuleState.emas` keeps them.
EMA_SLOTS: tuple[tuple[int, float], ...] = tuple(
    (op.power, op.beta) for op in OPERAND_TABLE if op.kind == "ema" and op.beta is not None)


class Op(NamedTuple):
  """A unary or binary function of the DSL.

  `fn(x, keep)` (unary; `keep()` returns the drop mask, only `drop` calls it) or `fn(x, y)`
  (binary), elementwise. `costly`: a power branch (`exp`, `x ^ y`, two or three
  transcendentals an element where every other branch is one operation), which the
  population program computes only for the candidates that use it.
  """
  name: str
  template: str        # how it prints; `{}` is an argument
  fn: Callable[..., jax.Array]
  costly: bool = False


UNARY_OPS: tuple[Op, ...] = (
    Op("id", "{}", lambda x, keep: x),
    Op("neg", "-{}", lambda x, keep: -x),
    Op("exp", "exp({})", lambda x, keep: jnp.exp(x), costly=True),  # as `sign_agreement`'s e^s
    Op("log", "log|{}|", lambda x, keep: jnp.log(jnp.abs(x))),
    Op("sqrt", "sqrt|{}|", lambda x, keep: jnp.sqrt(jnp.abs(x))),
    Op("clip", "clip({}, 1)", lambda x, keep: jnp.clip(x, -1.0, 1.0)),
    Op("sign", "sign({})", lambda x, keep: jnp.sign(x)),
    Op("drop", "drop({}, 0.5)", lambda x, keep: jnp.where(keep(), x, 0.0)),
    Op("one_plus", "(1 + {})", lambda x, keep: 1.0 + x),
)

BINARY_OPS: tuple[Op, ...] = (
    Op("add", "{} + {}", lambda x, y: x + y),
    Op("sub", "{} - {}", lambda x, y: x - y),
    Op("mul", "{} * {}", lambda x, y: x * y),
    Op("div", "{} / ({} + 1e-8)", lambda x, y: x / (y + _DIV_DELTA)),
    Op("pow", "{} ^ {}", lambda x, y: power(x, y), costly=True),
    Op("left", "{}", lambda x, y: x),
)

#: Operand names, in index order.
OPERANDS: tuple[str, ...] = tuple(op.name for op in OPERAND_TABLE)

#: Unary function names and how each prints (`{}` is the argument).
UNARY: tuple[tuple[str, str], ...] = tuple((op.name, op.template) for op in UNARY_OPS)

#: Binary function names and how each prints.
BINARY: tuple[tuple[str, str], ...] = tuple((op.name, op.template) for op in BINARY_OPS)

#: Decay function names (`none` is f = 1).
DECAYS: tuple[str, ...] = ("none", "ld", "cd", "rd")

#: Fields of a rule and the size of the table each indexes.
FIELDS: tuple[str, ...] = ("operand1", "unary1", "operand2", "unary2", "binary", "decay")
SIZES: tuple[int, ...] = (len(OPERANDS), len(UNARY), len(OPERANDS), len(UNARY), len(BINARY),
                          len(DECAYS))
LEFT = [name for name, _ in BINARY].index("left")


def _names(table: Sequence[Any]) -> list[str]:
  return [t if isinstance(t, str) else t[0] for t in table]


_TABLES = (OPERANDS, UNARY, OPERANDS, UNARY, BINARY, DECAYS)


class Rule(NamedTuple):
  """An update rule `Δθ = −η · b(u1(o1), u2(f(t)·o2))` as six table indices.

  Build one from indices (`Rule(0, 0, 14, 0, 5, 0)`, or `Rule.validate(vector)`) or from names
  (`Rule.from_names("g", "id", "sign(g)*sign(m)", "exp", "mul")` is PowerSign).
  """
  operand1: int
  unary1: int
  operand2: int
  unary2: int
  binary: int
  decay: int = 0

  @classmethod
  def from_names(cls, operand1: str, unary1: str = "id", operand2: str = "1",
                 unary2: str = "id", binary: str = "left", decay: str = "none") -> Rule:
    """The rule with these table entries (see `OPERANDS`, `UNARY`, `BINARY`, `DECAYS`)."""
    out = []
    for field, table, name in zip(FIELDS, _TABLES, (operand1, unary1, operand2, unary2, binary,
                                                    decay)):
      names = _names(table)
      if name not in names:
        raise ValueError(f"Rule.from_names: unknown {field} {name!r}; choose from {names}")
      out.append(names.index(name))
    return cls(*out)

  @classmethod
  def validate(cls, vector: Any) -> Rule:
    """The rule encoded by `vector` (six integers); ValueError naming the first bad index."""
    return cls(*validate(vector))

  def canonical(self) -> Rule:
    """The same rule with unused fields zeroed (keep-left ignores o2, u2 and f)."""
    if self.binary == LEFT:
      return self._replace(operand2=0, unary2=0, decay=0)
    return self

  def names(self) -> tuple[str, ...]:
    return tuple(_names(t)[i] for t, i in zip(_TABLES, self))

  def formula(self) -> str:
    """The rule as a formula of the direction `d` (the step is `θ ← θ − η d`)."""
    a = UNARY[self.unary1][1].format(OPERANDS[self.operand1])
    if self.binary == LEFT:
      return a
    o2 = OPERANDS[self.operand2]
    if self.decay:
      o2 = f"{DECAYS[self.decay]}(t)*{o2}"
    b = UNARY[self.unary2][1].format(o2)
    template = BINARY[self.binary][1]
    return template.format(_group(a, template, left=True), _group(b, template, left=False))

  def __str__(self) -> str:
    return self.formula()


def _group(text: str, template: str, *, left: bool) -> str:
  """Parenthesizes a compound argument where precedence would otherwise misread it."""
  if template.startswith("{} / (") and not left:
    return text                      # already inside the denominator's parentheses
  depth, top = 0, set()
  for ch in text:
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0 and ch in " *":
      top.add(ch)
  compound = " " in top or ("*" in top and "^" in template) or (
      text.startswith("-") and not left)
  return f"({text})" if compound else text


def validate(vector: Any) -> tuple[int, ...]:
  """Checks a rule encoding: six integers, each within its table.

  Raises:
    ValueError: naming the first bad index, its field and the allowed range.
  """
  try:
    values = list(np.asarray(vector).reshape(-1)) if not isinstance(vector, (list, tuple)) else (
        list(vector))
  except Exception as e:  # noqa: BLE001 - any unreadable input is a bad encoding
    raise ValueError(f"rule encoding must be six integers, got {vector!r}") from e
  if len(values) != len(FIELDS):
    raise ValueError(f"rule encoding must have {len(FIELDS)} integers "
                     f"({', '.join(FIELDS)}), got {len(values)}: {vector!r}")
  out = []
  for i, (field, size, v) in enumerate(zip(FIELDS, SIZES, values)):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
      raise ValueError(f"rule index {i} ({field}) must be an integer, got {v!r}")
    if not 0 <= int(v) < size:
      raise ValueError(f"rule index {i} ({field}) is {int(v)}, outside 0..{size - 1}; "
                       f"choose from {_names(_TABLES[i])}")
    out.append(int(v))
  return tuple(out)


# ---------------------------------------------------------------------------------------------
# Decay functions f(t).


def _sign_decays(decay_steps: int) -> list[Callable[[jax.Array], jax.Array]]:
  """f(t) for each entry of `DECAYS`: the library's sign-decay schedules."""
  return [lambda t: 1.0, linear_sign_decay(decay_steps),
          cosine_sign_decay(decay_steps, num_periods=0.5),
          restart_sign_decay(decay_steps, num_periods=_RESTART_PERIODS)]


# ---------------------------------------------------------------------------------------------
# The transform.


class RuleState(NamedTuple):
  """State of `scale_by_rule`: the operands' accumulators (the same for every rule)."""
  count: jax.Array   # int32 scalar: updates so far
  emas: tuple        # MomentumState of EMA(g), EMA(g²), EMA(g³), each at β = 0.9 and 0.999
  adam: tuple        # the state of Adam's direction (a chain of three parts)
  rms: Any           # RmsState of RMSprop's direction
  noise: Any         # NoiseState of the noise operand


def _unary(x: jax.Array, keep: Callable[[], jax.Array]) -> list[Callable[[], jax.Array]]:
  """The branches of `UNARY_OPS` on `x`, not yet computed."""
  return [functools.partial(op.fn, x, keep) for op in UNARY_OPS]


def power(x: jax.Array, y: jax.Array) -> jax.Array:
  """`x ^ y`, computed as `± exp(y · log|x|)`, the DSL's power.

  XLA:CPU lowers `pow` to a scalar library call (about 3.4 ns an element, eight times an
  `exp`); this form vectorizes. Signs and special values follow `pow`: a negative base gives
  `−|x|^y` for odd integer `y`, `|x|^y` for even, NaN for a fractional `y`; `x ^ 0 = 1`;
  `0 ^ y` is 0 for `y > 0` and +inf for `y < 0`. Within a few ulps of `pow` for moderate
  `|y · log|x||` (relative error grows like that product times float32's epsilon).
  """
  magnitude = jnp.exp(y * jnp.log(jnp.abs(x)))
  integer = jnp.floor(y) == y
  odd = integer & (2.0 * jnp.floor(0.5 * y) != y)
  value = jnp.where((x < 0) & odd, -magnitude, magnitude)
  value = jnp.where((x < 0) & ~integer, jnp.nan, value)
  return jnp.where(y == 0, jnp.ones_like(value), value)


def _binary(a: jax.Array, b: jax.Array) -> list[Callable[[], jax.Array]]:
  """The branches of `BINARY_OPS` on `(a, b)`, not yet computed."""
  return [functools.partial(op.fn, a, b) for op in BINARY_OPS]


def _choose(index: Any, branches: list[Callable[[], jax.Array]], every: bool) -> jax.Array:
  """`branches[index]()`.

  A Python int calls its branch alone. A traced index with `every=False` is a `lax.switch`
  (one branch runs); with `every=True` every branch is computed and `lax.select_n` picks one.
  Under `vmap` a batched switch would also run every branch, but with all its inputs
  broadcast to the batch (random bits included); computing the branches outside keeps
  unbatched inputs unbatched.
  """
  if isinstance(index, int):
    return branches[index]()
  if every:
    values = [f() for f in branches]
    return jax.lax.select_n(index, *jnp.broadcast_arrays(*values))
  return jax.lax.switch(index, [lambda _, f=f: f() for f in branches], None)


def _operand(index: Any, ops: list[jax.Array], every: bool) -> jax.Array:
  """`ops[index]`: all operands exist anyway, so a traced index only selects (see `_choose`)."""
  if isinstance(index, int):
    return ops[index]
  if every:
    return jax.lax.select_n(index, *ops)
  return jnp.stack(ops)[index]


def rule_transform(indices: Sequence[Any], *, decay_steps: int = 1000, seed: int = 0,
                   every_branch: bool = False) -> GradientTransformation:
  """`scale_by_rule` for indices that may be traced (population search); no validation.

  With Python-int indices only the chosen branches are built. With traced indices each choice
  is a `lax.switch` (one branch runs: best for one rule at a time), or, with `every_branch`,
  all branches are computed and one selected (best under `vmap` over a population).
  """
  o1, u1, o2, u2, bi, de = indices
  emas = [scale_by_momentum(beta, ema=True) for _, beta in EMA_SLOTS]
  adam = chain(*adam_direction(ADAM_B1, ADAM_B2, ADAM_EPS))
  rms = scale_by_rms(RMS_DECAY, RMS_EPS)
  noise = add_gradient_noise(_NOISE_VARIANCE, 0.0, seed)
  decays = _sign_decays(decay_steps)

  def init(params):
    return RuleState(count=_numerics.zero_count(),
                     emas=tuple(t.init(params) for t in emas),
                     adam=adam.init(params), rms=rms.init(params), noise=noise.init(params))

  def update(updates, state, params=None, **extra):
    del params, extra
    _tree.check_updates("scale_by_rule", state.rms.nu, updates)
    g = updates
    powers = [g, jax.tree.map(jnp.square, g), jax.tree.map(lambda x: x * x * x, g)]
    ema_out, ema_states = [], []
    for (k, _), tx, s in zip(EMA_SLOTS, emas, state.emas):
      out, s = tx.update(powers[k - 1], s)
      ema_out.append(out)
      ema_states.append(s)
    adam_dir, adam_state = adam.update(g, state.adam)
    rms_dir, rms_state = rms.update(g, state.rms)
    zeros = jax.tree.map(jnp.zeros_like, g)
    noise_out, noise_state = noise.update(zeros, state.noise)
    count = state.count
    f = _choose(de, [lambda fn=fn: jnp.asarray(fn(count), _numerics.scalar_dtype())
                     for fn in decays], every_branch)
    leaves, treedef = jax.tree.flatten(g)
    keys = jax.random.split(jax.random.fold_in(noise_key(seed, count), 1),
                            2 * max(len(leaves), 1))

    def leaf(i, gl, g2, g3, a, r, n, *ema):
      cd = _numerics.compute_dtype(gl)
      sg = jnp.sign(gl)
      slot = dict(zip(EMA_SLOTS, ema))
      kinds = {                                     # each kind of `Operand`, computed once
          "g^k": lambda op: (gl, g2, g3)[op.power - 1],
          "ema": lambda op: slot[op.power, op.beta],
          "sign(g)": lambda op: sg,
          "sign(ema)": lambda op: jnp.sign(slot[op.power, op.beta]),
          "sign(g)*sign(ema)": lambda op: sg * jnp.sign(slot[op.power, op.beta]),
          "adam": lambda op: a,
          "rmsprop": lambda op: r,
          "const": lambda op: jnp.full_like(gl, op.value),
          "noise": lambda op: n,
      }
      ops = [kinds[op.kind](op).astype(cd) for op in OPERAND_TABLE]
      x1, x2 = _operand(o1, ops, every_branch), _operand(o2, ops, every_branch)
      if not (isinstance(de, int) and de == 0):
        x2 = (f * x2).astype(cd)
      shape = jnp.shape(gl)
      y1 = _choose(u1, _unary(x1, lambda: jax.random.bernoulli(keys[2 * i], _DROP_KEEP, shape)),
                   every_branch)
      y2 = _choose(u2, _unary(x2, lambda: jax.random.bernoulli(keys[2 * i + 1], _DROP_KEEP,
                                                               shape)), every_branch)
      return _choose(bi, _binary(y1, y2), every_branch).astype(gl.dtype)

    trees = [g, powers[1], powers[2], adam_dir, rms_dir, noise_out, *ema_out]
    flat = [treedef.flatten_up_to(t) for t in trees]
    out = [leaf(i, *xs) for i, xs in enumerate(zip(*flat))]
    new_state = RuleState(count=_numerics.safe_increment(count), emas=tuple(ema_states),
                          adam=adam_state, rms=rms_state, noise=noise_state)
    return treedef.unflatten(out), new_state

  return GradientTransformation(init, update)


@transform
def scale_by_rule(rule: Rule | Sequence[int], *, decay_steps: int = 1000,
                  seed: int = 0) -> GradientTransformation:
  """The direction `d = b(u1(o1), u2(f(t)·o2))` of a searched rule (no learning rate).

  Args:
    rule: a `Rule` or six integers (validated: ValueError names a bad index).
    decay_steps: `T` of the decay function f (unused when the rule has none).
    seed: seed of the `noise` operand and of `drop`.

  State: `RuleState`, the same fields for every rule (every operand's accumulator is kept,
  which costs nine parameter-sized buffers whichever operands the rule reads).

  Example:
    >>> from gradxform import search
    >>> rule = search.Rule.from_names("g", "id", "sign(g)*sign(m)", "exp", "mul")
    >>> print(rule.formula())     # PowerSign
    g * exp(sign(g)*sign(m))
    >>> tx = search.scale_by_rule(rule)
  """
  rule = Rule.validate(rule)
  if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 1:
    raise ValueError(f"scale_by_rule: decay_steps must be a positive integer, got "
                     f"{decay_steps!r}")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"scale_by_rule: seed must be an int, got {seed!r}")
  return rule_transform(tuple(rule), decay_steps=decay_steps, seed=seed)


@transform(hyperparams=("learning_rate",))
def rule_optimizer(rule: Rule | Sequence[int], learning_rate: ScalarOrSchedule, *,
                   decay_steps: int = 1000, seed: int = 0) -> GradientTransformation:
  """A searched rule as a complete optimizer: `θ ← θ − η · b(u1(o1), u2(f(t)·o2))`.

  Chain: `scale_by_rule(rule, decay_steps, seed)` → `scale_by_learning_rate(η)`.

  Example:
    >>> from gradxform import search
    >>> tx = search.rule_optimizer(search.Rule.from_names("adam"), 1e-3)   # steps as gx.adam
  """
  return chain(scale_by_rule(Rule.validate(rule), decay_steps=decay_steps, seed=seed),
               scale_by_learning_rate(learning_rate))


#: Encodings of known optimizers (with the library's default hyperparameters).
KNOWN: dict[str, Rule] = {
    "sgd": Rule.from_names("g"),
    "momentum_ema": Rule.from_names("m"),
    "rmsprop": Rule.from_names("rmsprop"),
    "adam": Rule.from_names("adam"),
    "powersign": Rule.from_names("g", "id", "sign(g)*sign(m)", "exp", "mul"),
    "addsign": Rule.from_names("g", "id", "sign(g)*sign(m)", "one_plus", "mul"),
    "powersign_ld": Rule.from_names("g", "id", "sign(g)*sign(m)", "exp", "mul", "ld"),
    "addsign_ld": Rule.from_names("g", "id", "sign(g)*sign(m)", "one_plus", "mul", "ld"),
}
