"""The chain protocol: grouping never matters, users' transforms take part like the library's.

- Associativity: for random groupings of real algorithms' parts, the nested chain gives the
  updates of the flat chain and of the float64 NumPy reference, and holds as many step
  counters as the flat chain (one).
- A momentum written by a user with the public `gx.transform(accumulates=True,
  shares_count=True)` makes `scale_by_rms` after it square the raw gradient (Adam from a user's
  part equals the Adam reference) and borrows the chain's counter through `gx.step_count`.
- A foreign (Optax) transform in a chain is opaque: it is called without gradxform's context,
  is never a running average, and counts nothing (its documented behaviour).
"""

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as R
from hypothesis import given, settings
from hypothesis import strategies as st

import gradxform as gx

STEPS = 4
SHAPES = {"w": (3, 2), "b": (2,)}


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  grads = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(STEPS)]
  return params, grads


def _run(tx, params, grads):
  state = tx.init(params)
  for g in grads:
    u, state = tx.update(g, state, params)
    params = gx.apply_updates(params, u)
  return params, state


def _reference(ref, params, grads):
  flat = R.run(ref, R.flatten(params), np.stack([R.flatten(g) for g in grads]))
  return R.unflatten(params, flat)


def _counters(state):
  return [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.integer)]


#: name -> (the algorithm's parts, its float64 reference)
ALGORITHMS = {
    "adam": (lambda: [gx.scale_by_momentum(0.8, ema=True), gx.bias_correction(0.8),
                      gx.scale_by_rms(0.99, 1e-3, eps_in_sqrt=False, bias_correction=True),
                      gx.scale_by_learning_rate(0.1)],
             lambda: R.Adam(0.1, 0.8, 0.99, 1e-3)),
    "adamw": (lambda: [gx.scale_by_momentum(0.8, ema=True), gx.bias_correction(0.8),
                       gx.scale_by_rms(0.99, 1e-3, eps_in_sqrt=False, bias_correction=True),
                       gx.decoupled_weight_decay(0.1), gx.scale_by_learning_rate(0.1)],
              lambda: R.Adam(0.1, 0.8, 0.99, 1e-3, weight_decay=0.1)),
    "amsgrad": (lambda: [gx.scale_by_momentum(0.8, ema=True), gx.bias_correction(0.8),
                         gx.scale_by_amsgrad(0.99, 1e-3), gx.scale_by_learning_rate(0.1)],
                lambda: R.AMSGrad(0.1, 0.8, 0.99, 1e-3)),
    "rmsprop_momentum": (
        lambda: [gx.scale_by_rms(0.9, 1e-3, eps_in_sqrt=False, centered=True),
                 gx.scale_by_momentum(0.7), gx.scale_by_learning_rate(0.1)],
        lambda: R.RMSprop(0.1, 0.9, 1e-3, eps_in_sqrt=False, centered=True, momentum=0.7)),
    "powersign": (lambda: [gx.sign_agreement(mode="power", base=2.0, beta=0.8),
                           gx.scale_by_learning_rate(0.1)],
                  lambda: R.PowerSign(0.1, 2.0, 0.8)),
}


def _group(parts, cuts):
  """Nests `parts` by the bracketing `cuts` picks (a list of booleans: where to split)."""
  if len(parts) <= 1:
    return parts
  split = 1 + (cuts[0] % (len(parts) - 1)) if cuts else len(parts) // 2
  rest = cuts[1:]
  left, right = parts[:split], parts[split:]
  left = gx.chain(*_group(left, rest)) if len(left) > 1 else left[0]
  right = gx.chain(*_group(right, rest[1:])) if len(right) > 1 else right[0]
  return [left, right]


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(ALGORITHMS)),
       cuts=st.lists(st.integers(0, 7), min_size=0, max_size=4),
       named=st.booleans())
def test_every_grouping_equals_the_flat_chain_and_the_reference(name, cuts, named):
  make_parts, make_ref = ALGORITHMS[name]
  params, grads = _problem()
  grouped = _group(make_parts(), cuts)
  tx = (gx.named_chain(*[(f"p{i}", t) for i, t in enumerate(grouped)]) if named
        else gx.chain(*grouped))
  with jax.enable_x64(True):
    got, state = _run(tx, params, grads)
    flat, flat_state = _run(gx.chain(*make_parts()), params, grads)
  expected = _reference(make_ref(), params, grads)
  for k in SHAPES:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got[k], flat[k], rtol=1e-14, atol=1e-15)
  assert len(_counters(state)) == len(_counters(flat_state)) == 1
  assert int(_counters(state)[0]) == STEPS


def test_issue_example_nested_adam_is_adam():
  """The case from the issue: momentum and its bias correction grouped, RMS outside."""
  params, grads = _problem(1)
  tx = gx.chain(gx.chain(gx.scale_by_momentum(0.9, ema=True), gx.bias_correction(0.9)),
                gx.scale_by_rms(0.999, 1e-8, eps_in_sqrt=False, bias_correction=True),
                gx.scale_by_learning_rate(0.01))
  with jax.enable_x64(True):
    got, state = _run(tx, params, grads)
  expected = _reference(R.Adam(0.01), params, grads)
  for k in SHAPES:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-12)
  # the state keeps the grouping: ((momentum, bias correction), rms, lr)
  assert isinstance(state[0], tuple) and len(state) == 3
  assert len(_counters(state)) == 1


def test_named_algorithms_inside_chains_share_one_counter():
  """A named algorithm nested in a bigger chain borrows that chain's counter: Adam followed by
  a scheduled scale used to hold two counters (Adam's and the schedule's)."""
  params, grads = _problem(2)
  sched = gx.linear_schedule(1.0, 0.5, 10)
  tx = gx.chain(gx.clip_by_global_norm(1e6), gx.adam(0.01),
                gx.scale_by_learning_rate(sched, flip_sign=False))
  with jax.enable_x64(True):
    got, state = _run(tx, params, grads)
  assert [int(c) for c in _counters(state)] == [STEPS]
  expected = _reference(R.Adam(lambda t: 0.01 * (1.0 - 0.05 * t)), params, grads)
  for k in SHAPES:  # schedules return float32 values, even under x64
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# A user's own transforms, declared with the public decorator.


class UserMomentumState(NamedTuple):
  count: Any
  m: Any


@gx.transform(accumulates=True, shares_count=True)
def user_ema_momentum(decay: float) -> gx.GradientTransformation:
  """A user's EMA momentum, bias-corrected in place, declared as accumulating and counting."""

  def init(params):
    return UserMomentumState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None, **extra):
    t = gx.step_count(state, extra) + 1
    m = jax.tree.map(lambda m, g: decay * m + (1 - decay) * g, state.m, updates)
    out = jax.tree.map(lambda m: m / (1 - decay**t), m)
    return out, UserMomentumState(gx.next_count(state, t - 1), m)

  return gx.GradientTransformation(init, update)


def test_user_momentum_declared_accumulating_makes_rms_square_the_raw_gradient():
  params, grads = _problem(3)
  tx = gx.chain(user_ema_momentum(0.9),
                gx.scale_by_rms(0.999, 1e-8, eps_in_sqrt=False, bias_correction=True),
                gx.scale_by_learning_rate(0.01))
  with jax.enable_x64(True):
    got, state = _run(tx, params, grads)
  expected = _reference(R.Adam(0.01), params, grads)
  for k in SHAPES:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-12)
  # one counter: the user's part owns it, scale_by_rms and the learning rate borrow it
  assert [int(c) for c in _counters(state)] == [STEPS]
  assert state[1].count is None and state[0].count is not None


def test_undeclared_user_momentum_is_squared_as_documented():
  """Without `accumulates=True` a part is not a running average: RMS squares its output."""
  params, grads = _problem(4)

  def plain_trace(decay):
    def init(params):
      return jax.tree.map(jnp.zeros_like, params)

    def update(updates, state, params=None):
      new = jax.tree.map(lambda b, g: decay * b + g, state, updates)
      return new, new
    return gx.GradientTransformation(init, update)

  for foreign in (plain_trace(0.5), optax.trace(0.5)):
    tx = gx.chain(foreign, gx.scale_by_rms(0.9, 1e-3, eps_in_sqrt=False),
                  gx.scale_by_learning_rate(0.1))
    with jax.enable_x64(True):
      got, _ = _run(tx, params, grads)
    theta, b, v = R.flatten(params), 0.0, 0.0
    for g in grads:
      b = 0.5 * b + R.flatten(g)
      v = 0.9 * v + 0.1 * b * b
      theta = theta - 0.1 * b / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(R.flatten(got), theta, rtol=1e-12)


def test_foreign_transform_gets_no_context_and_keeps_its_state():
  """An Optax transform inside a gradxform chain: called as `update(u, s, params)` (a plain
  `optax.GradientTransformation` takes no extras), its state is Optax's own, unchanged."""
  seen = {}

  def init(params):
    return optax.EmptyState()

  def update(updates, state, params=None, *args):
    seen["args"] = args
    return jax.tree.map(lambda u: 2.0 * u, updates), state

  params, grads = _problem(5)
  tx = gx.chain(gx.adam(0.1), optax.GradientTransformation(init, update))
  with jax.enable_x64(True):
    got, state = _run(tx, params, grads)
  assert seen["args"] == () and isinstance(state[1], optax.EmptyState)
  expected = _reference(R.Adam(0.2), params, grads)
  for k in SHAPES:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-12)


def test_state_check_keeps_no_global_cache():
  """A state from another optimizer is refused, and the check lives with each chain."""
  import gradxform._base as base
  assert not [n for n in vars(base) if n.isupper() and isinstance(getattr(base, n), dict)]
  params, grads = _problem(6)
  with pytest.raises(ValueError, match=r"part 2 \(scale_by_rms\) expected a RmsState"):
    gx.adam(0.1).update(grads[0], gx.amsgrad(0.1).init(params), params)


# ---------------------------------------------------------------------------------------------
# State layouts against those recorded before the flat-chain change (checkpoint compatibility).


def test_state_layouts_unchanged_since_before_the_flat_chain():
  """Every named optimizer, and clip / EMA / named compositions, keeps the exact state layout
  recorded at commit 86327ea (tests/data/make_state_layouts.py), so their checkpoints restore.
  The one documented migration (CHANGELOG 2026-12-04): a counting part after a nested counting
  algorithm now borrows the counter, so its `count` is None instead of an int32 array."""
  import json
  import pathlib
  import sys
  data_dir = pathlib.Path(__file__).resolve().parent / "data"
  sys.path.insert(0, str(data_dir))
  try:
    import make_state_layouts as layouts
  finally:
    sys.path.remove(str(data_dir))
  before = json.loads((data_dir / "state_layouts_86327ea.json").read_text())["layouts"]
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
  now = {k: layouts.layout(tx.init(params)) for k, tx in layouts.optimizers().items()}
  assert set(now) == set(before)
  migrated = {"adam_then_schedule"}
  for name in sorted(set(now) - migrated):
    assert now[name] == before[name], name
  old, new = before["adam_then_schedule"], now["adam_then_schedule"]
  assert old["treedef"].endswith("CustomNode(namedtuple[ScheduleState], [*])))")
  assert new["treedef"].endswith("CustomNode(namedtuple[ScheduleState], [None])))")
  assert new["leaves"] == old["leaves"][:-1] and old["leaves"][-1] == [[], "int32"]


def test_tree_checks_run_once_per_chain_step(monkeypatch):
  """In a chain the parts do not check their trees again once the chain has verified every
  part's state against what its init() makes; alone, or with a wrong state, they do."""
  import gradxform._tree as tree_checks
  calls = []
  original = tree_checks.check_updates

  def counting(*args, **kwargs):
    calls.append(args[0])
    return original(*args, **kwargs)

  monkeypatch.setattr(tree_checks, "check_updates", counting)
  params, grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _problem(7))
  tx = gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(0.1), gx.ema_params(0.9))
  state = tx.init(params)
  tx.update(grads[0], state, params)
  assert calls == []
  rms = gx.scale_by_rms(0.9)
  rms.update(grads[0], rms.init(params), params)
  assert calls == ["scale_by_rms"]
  # a state for other shapes: the chain leaves the check to the parts, which name the leaf
  calls.clear()
  other = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(2)}
  with pytest.raises(ValueError, match=re.escape("shape mismatch at ['w']")):
    tx.update(grads[0], tx.init(other), None)
  assert calls and calls[0] == "scale_by_momentum"
