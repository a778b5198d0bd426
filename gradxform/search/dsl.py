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
Decay `f(t)` (ALGORITHMS.md, step t = 0 at the first update, `T = decay_steps`): `1`,
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

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _numerics, _tree
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform.optimizers.adam import adam_direction
from gradxform.transforms.momentum import scale_by_momentum
from gradxform.transforms.noise import add_gradient_noise, noise_key
from gradxform.transforms.rms import scale_by_rms
from gradxform.transforms.scale import scale_by_learning_rate

# ---------------------------------------------------------------------------------------------
# The tables.

#: Operand names, in index order.
OPERANDS: tuple[str, ...] = (
    "g", "g^2", "g^3", "m", "m_999", "v", "v_999", "c", "c_999", "sign(g)", "sign(m)",
    "sign(g)*sign(m)", "adam", "rmsprop", "1", "2", "noise")

#: Unary function names and how each prints (`{}` is the argument).
UNARY: tuple[tuple[str, str], ...] = (
    ("id", "{}"), ("neg", "-{}"), ("exp", "exp({})"), ("log", "log|{}|"), ("sqrt", "sqrt|{}|"),
    ("clip", "clip({}, 1)"), ("sign", "sign({})"), ("drop", "drop({}, 0.5)"),
    ("one_plus", "(1 + {})"))

#: Binary function names and how each prints.
BINARY: tuple[tuple[str, str], ...] = (
    ("add", "{} + {}"), ("sub", "{} - {}"), ("mul", "{} * {}"), ("div", "{} / ({} + 1e-8)"),
    ("pow", "{} ^ {}"), ("left", "{}"))

#: Decay function names (`none` is f = 1).
DECAYS: tuple[str, ...] = ("none", "ld", "cd", "rd")

#: Fields of a rule and the size of the table each indexes.
FIELDS: tuple[str, ...] = ("operand1", "unary1", "operand2", "unary2", "binary", "decay")
SIZES: tuple[int, ...] = (len(OPERANDS), len(UNARY), len(OPERANDS), len(UNARY), len(BINARY),
                          len(DECAYS))
LEFT = [name for name, _ in BINARY].index("left")

_EMA_DECAYS = (0.9, 0.999)
_DIV_DELTA = 1e-8
_NOISE_VARIANCE = 1e-4      # std 0.01, Bello et al.'s ε ~ N(0, 0.01)
_DROP_KEEP = 0.5
_RESTART_PERIODS = 4


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


def _sign_decays(decay_steps: int, *,
                 library: bool = True) -> list[Callable[[jax.Array], jax.Array]]:
  """f(t) for each entry of `DECAYS`: the library's when present, else ALGORITHMS.md's."""
  import gradxform as gx
  if library and hasattr(gx, "linear_sign_decay"):
    return [lambda t: 1.0, gx.linear_sign_decay(decay_steps),
            gx.cosine_sign_decay(decay_steps, num_periods=0.5),
            gx.restart_sign_decay(decay_steps, num_periods=_RESTART_PERIODS)]
  big_t = float(decay_steps)

  def frac(t):
    return jnp.minimum(jnp.asarray(t, _numerics.scalar_dtype()), big_t)

  def linear(t):
    return jnp.maximum(0.0, (big_t - frac(t)) / big_t)

  def cosine(t):
    return 0.5 * (1.0 + jnp.cos(math.pi * frac(t) / big_t))

  def restart(t):
    phase = jnp.mod(_RESTART_PERIODS * frac(t), big_t) / big_t
    return 0.5 * (1.0 + jnp.cos(math.pi * phase))

  return [lambda t: 1.0, linear, cosine, restart]


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
  return [
      lambda: x,
      lambda: -x,
      lambda: jnp.exp(x),      # as `sign_agreement` computes e^s: PowerSign stays bit-exact
      lambda: jnp.log(jnp.abs(x)),
      lambda: jnp.sqrt(jnp.abs(x)),
      lambda: jnp.clip(x, -1.0, 1.0),
      lambda: jnp.sign(x),
      lambda: jnp.where(keep(), x, 0.0),
      lambda: 1.0 + x,
  ]


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
  return [lambda: a + b, lambda: a - b, lambda: a * b, lambda: a / (b + _DIV_DELTA),
          lambda: power(a, b), lambda: a]


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
  emas = [scale_by_momentum(b, ema=True) for _ in range(3) for b in _EMA_DECAYS]
  adam = chain(*adam_direction(0.9, 0.999, 1e-8))
  rms = scale_by_rms(0.9, 1e-8)
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
    for i, (tx, s) in enumerate(zip(emas, state.emas)):
      out, s = tx.update(powers[i // 2], s)
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

    def leaf(i, *xs):
      gl, g2, g3, m, m_slow, v, v_slow, c, c_slow, a, r, n = xs   # slow: β = 0.999
      cd = _numerics.compute_dtype(gl)
      sg, sm = jnp.sign(gl), jnp.sign(m)
      ops = [gl, g2, g3, m, m_slow, v, v_slow, c, c_slow, sg, sm, sg * sm, a, r,
             jnp.ones_like(gl), jnp.full_like(gl, 2.0), n]           # in OPERANDS order
      ops = [x.astype(cd) for x in ops]
      x1, x2 = _operand(o1, ops, every_branch), _operand(o2, ops, every_branch)
      if not (isinstance(de, int) and de == 0):
        x2 = (f * x2).astype(cd)
      shape = jnp.shape(gl)
      y1 = _choose(u1, _unary(x1, lambda: jax.random.bernoulli(keys[2 * i], _DROP_KEEP, shape)),
                   every_branch)
      y2 = _choose(u2, _unary(x2, lambda: jax.random.bernoulli(keys[2 * i + 1], _DROP_KEEP,
                                                               shape)), every_branch)
      return _choose(bi, _binary(y1, y2), every_branch).astype(gl.dtype)

    trees = [g, powers[1], powers[2], *ema_out, adam_dir, rms_dir, noise_out]
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
    >>> print(rule.formula())     # g * exp(sign(g)*sign(m)), PowerSign
    >>> tx = search.scale_by_rule(rule)
  """
  rule = Rule.validate(rule)
  if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 1:
    raise ValueError(f"scale_by_rule: decay_steps must be a positive integer, got "
                     f"{decay_steps!r}")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"scale_by_rule: seed must be an int, got {seed!r}")
  return rule_transform(tuple(rule), decay_steps=decay_steps, seed=seed)


@transform
def rule_optimizer(rule: Rule | Sequence[int], learning_rate: ScalarOrSchedule, *,
                   decay_steps: int = 1000, seed: int = 0) -> GradientTransformation:
  """A searched rule as a complete optimizer: `θ ← θ − η · b(u1(o1), u2(f(t)·o2))`.

  Chain: `scale_by_rule(rule, decay_steps, seed)` → `scale_by_learning_rate(η)`.

  Example:
    >>> tx = search.rule_optimizer(search.Rule.from_names("adam"), 1e-3)   # == gx.adam(1e-3)
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
