"""Rprop, ASGD and `skip_large_updates` (issue 16, torch forms and guards).

Oracles:
* torch.optim.Rprop and torch.optim.ASGD, stored by tests/data/make_torch_modern.py (torch is
  not a test dependency) as float64 closed-loop trajectories (and ASGD's averaged `ax`);
  gradxform replays the same inputs in float64 and must agree to 1e-10 relative every step.
* Optax 0.2.8 in float64, in closed loop over a tree with a 130 × 129 matrix (as
  tests/test_modern.py): `gx.rprop(..., stale_output=True)` against `optax.rprop`, and
  `gx.skip_large_updates` against `optax.MultiSteps(..., should_skip_update_fn=
  optax.skip_large_updates)`.
* Hand-derived numbers (the Rprop sequence of Optax pull request 1725, ASGD's step sizes under
  a schedule, the skipping counters).
Then the contract: `gradxform.testing`, inject_hyperparams, equality by value, validation, and
a checkpoint round trip.
"""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import closed_loop as cl
import gradxform as gx
import gradxform.testing as gxt

DATA_FILE = Path(__file__).parent / "data" / "torch_modern.json"
if not DATA_FILE.is_file():  # loud, at collection: this file is the oracle
  raise FileNotFoundError(f"{DATA_FILE} is missing; regenerate it with "
                          "`python tests/data/make_torch_modern.py` in a venv with torch")
DATA = json.loads(DATA_FILE.read_text())
OPTIM = DATA["optim"]
# Float64 on both sides; the orders of operations differ (torch in place), so a few ulps per
# step. Observed: Rprop bit for bit, ASGD ≤ 3e-14 relative over 30 steps.
RTOL, ATOL = 1e-10, 1e-12

# name -> the gradxform optimizer documented as equal to the torch configuration.
GX = {
    "rprop": gx.rprop(0.01, always_clip=True),
    "rprop_moved": gx.rprop(0.2, 0.3, 1.5, 1e-3, 0.1, always_clip=True),
    "rprop_small_lr": gx.rprop(1e-4, 0.6, 1.1, 1e-3, 1.0, always_clip=True),
    "asgd": gx.asgd(0.01),
    "asgd_moved": gx.asgd(0.05, lambd=0.01, alpha=0.6, t0=5.0, weight_decay=0.1),
    "asgd_fractional_t0": gx.asgd(0.1, lambd=0.05, alpha=0.9, t0=2.5),
}


def _averaged(params, state):
  """torch's `ax` for ASGD (gx.asgd_average), the parameters themselves otherwise."""
  return gx.asgd_average(state, params) if gx.tree_find(state, "averaged") else params


def _replay_torch(tx):
  """θ and the averaged parameters after every step on the stored problem."""
  return cl.replay(tx, DATA["problem"], record=_averaged)


def test_data_file_is_complete():
  assert DATA["torch_version"].startswith("2."), DATA["torch_version"]
  assert sorted(GX) == sorted(OPTIM)
  for name, config in OPTIM.items():
    assert eval(config["gradxform"], {"gx": gx}) == GX[name], name
    for v in config["trajectory"].values():
      assert np.shape(v)[0] == DATA["steps"] == 30


@pytest.mark.parametrize("name", sorted(OPTIM))
def test_matches_torch_every_step(name):
  with jax.enable_x64(True):
    traj, avg = _replay_torch(GX[name])
  for k, expected in OPTIM[name]["trajectory"].items():
    assert traj[k].dtype == np.float64
    np.testing.assert_allclose(traj[k], np.asarray(expected), rtol=RTOL, atol=ATOL,
                               err_msg=f"{name}: θ[{k}]")
    if "ax" in OPTIM[name]:       # torch's averaged parameters
      np.testing.assert_allclose(avg[k], np.asarray(OPTIM[name]["ax"][k]), rtol=RTOL,
                                 atol=ATOL, err_msg=f"{name}: ax[{k}]")


def test_asgd_average_starts_after_t0():
  """With t0 = 5 torch's ax is θ up to step 7 (μ_t = 1/max(1, t − 1 − t0)), then the mean of
  θ_7 ... θ_t: the comparison above covers a real average."""
  moved = OPTIM["asgd_moved"]
  for k in moved["trajectory"]:
    theta, ax = np.asarray(moved["trajectory"][k]), np.asarray(moved["ax"][k])
    np.testing.assert_array_equal(theta[:7], ax[:7])
    assert np.max(np.abs(theta[7:] - ax[7:])) > 1e-3
    np.testing.assert_allclose(ax[-1], theta[6:].mean(0), rtol=1e-12)   # mean of θ_7..θ_30


def test_rprop_forms_differ_where_documented():
  """Out-of-bounds learning rate: only `always_clip=True` is torch's; in bounds both are."""
  with jax.enable_x64(True):
    plain, _ = _replay_torch(gx.rprop(0.2, 0.3, 1.5, 1e-3, 0.1))
    in_bounds, _ = _replay_torch(gx.rprop(0.01))
  torch_moved = np.asarray(OPTIM["rprop_moved"]["trajectory"]["w"])
  assert np.max(np.abs(plain["w"] - torch_moved)) > 1e-2
  for k, expected in OPTIM["rprop"]["trajectory"].items():
    np.testing.assert_allclose(in_bounds[k], np.asarray(expected), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("stale,expected", [
    (False, [0.1, 0.12, 0.144, 0.0, 0.072, 0.0864]),      # the paper's and torch's
    (True, [0.0, 0.1, 0.12, 0.0, 0.0, 0.072]),            # Optax 0.2.8's one-step lag
])
def test_rprop_hand_sequence(stale, expected):
  """Optax pull request 1725's sequence g = 1, 1, 1, −1, 1, 1 with Δ₀ = 0.1."""
  tx = gx.scale_by_rprop(0.1, stale_output=stale)
  state = tx.init(jnp.zeros(1))
  got = []
  for g in [1.0, 1.0, 1.0, -1.0, 1.0, 1.0]:
    u, state = tx.update(jnp.array([g]), state)
    got.append(float(u[0]))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  ref = optax.scale_by_rprop(0.1)
  if stale:                                 # and Optax itself
    s = ref.init(jnp.zeros(1))
    theirs = []
    for g in [1.0, 1.0, 1.0, -1.0, 1.0, 1.0]:
      u, s = ref.update(jnp.array([g]), s)
      theirs.append(float(u[0]))
    np.testing.assert_allclose(got, theirs, rtol=1e-7)


# --- Optax in float64, closed loop, 130 × 129 -----------------------------------------------

STEPS = 30


def _problem():
  rng = np.random.default_rng(16)

  def draw(shape):
    return (rng.uniform(-2.0, 2.0, shape), rng.uniform(0.2, 3.0, shape),
            rng.uniform(-1.0, 1.0, shape))

  parts = {"w": draw((130, 129)), "v": draw((17,)), "s": draw(())}
  return tuple({k: np.asarray(p[i]) for k, p in parts.items()} for i in range(3))


def _grad(theta, a, c, t):
  scale = jnp.where(t % 7 == 3, 50.0, 1.0)          # every 7th gradient is large
  return jax.tree.map(lambda th, a_, c_: scale * (a_ * (th - c_) + 0.3 * jnp.cos(th)),
                      theta, a, c)


@functools.partial(jax.jit, static_argnums=3)
def _both(theta0, a, c, pair):
  ours, theirs = pair[0](), pair[1]()

  def step(carry, t):
    (p1, s1), (p2, s2) = carry
    u1, s1 = ours.update(_grad(p1, a, c, t), s1, p1)
    u2, s2 = theirs.update(_grad(p2, a, c, t), s2, p2)
    p1, p2 = gx.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    return ((p1, s1), (p2, s2)), (p1, p2)

  carry = ((theta0, ours.init(theta0)), (theta0, theirs.init(theta0)))
  return jax.lax.scan(step, carry, jnp.arange(STEPS))[1]


def _multisteps_skip(opt, max_squared_norm):
  skip = functools.partial(optax.skip_large_updates, max_squared_norm=max_squared_norm)
  return optax.MultiSteps(opt, 1, should_skip_update_fn=skip).gradient_transformation()


PAIRS = {
    "rprop_optax_default": (lambda: gx.rprop(1e-3, stale_output=True),
                            lambda: optax.rprop(1e-3)),
    "rprop_optax_moved": (lambda: gx.rprop(0.05, 0.3, 1.5, 1e-2, 0.08, stale_output=True),
                          lambda: optax.rprop(0.05, 0.3, 1.5, 1e-2, 0.08)),
    # ‖g‖² is ~9e4 at θ_0 and ~2e8 on the large steps.
    "skip_large_updates_adam": (lambda: gx.skip_large_updates(gx.adam(0.05), 1e6),
                                lambda: _multisteps_skip(optax.adam(0.05), 1e6)),
    "skip_large_updates_sgd": (lambda: gx.skip_large_updates(gx.sgd(0.05, 0.9), 1e5),
                               lambda: _multisteps_skip(optax.sgd(0.05, 0.9), 1e5)),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_equals_optax_float64_every_step(name):
  with jax.enable_x64(True):
    theta0, a, c = _problem()
    ours, theirs = jax.device_get(_both(theta0, a, c, PAIRS[name]))
  for key in theta0:
    assert ours[key].dtype == np.float64
    assert np.abs(ours[key][-1] - theta0[key]).max() > 1e-3
    for t in range(STEPS):
      np.testing.assert_allclose(ours[key][t], theirs[key][t], rtol=1e-7, atol=1e-12,
                                 err_msg=f"{name}: leaf {key}, step {t + 1}")


def test_skip_large_updates_skips_some_and_takes_some():
  """The Optax comparison above is not vacuous: the SGD case skips the large steps and takes
  the others."""
  with jax.enable_x64(True):
    theta0, a, c = _problem()
    tx = gx.skip_large_updates(gx.sgd(0.05, 0.9), 1e5)
    state = tx.init(theta0)
    p, skipped = theta0, []
    for t in range(STEPS):
      u, state = tx.update(_grad(p, a, c, jnp.asarray(t)), state, p)
      p = gx.apply_updates(p, u)
      skipped.append(bool(state.last_skipped))
  assert all(skipped[t] for t in range(3, STEPS, 7))
  assert 4 <= sum(skipped) < STEPS // 2
  assert int(state.total_skipped) == sum(skipped)


def test_skip_large_updates_by_hand():
  """‖g‖² = 1.5 for the docs' grads: skipped at threshold 1.5 (not <), taken at 1.6; NaN and
  Inf skipped; max_consecutive_errors=1 applies the second skip in a row."""
  params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.1])}
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  tx = gx.skip_large_updates(gx.sgd(0.1), 1.5)
  u, s = tx.update(grads, tx.init(params), params)
  assert float(s.norm_squared) == 1.5 and bool(s.last_skipped) and int(s.total_skipped) == 1
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  u, _ = gx.skip_large_updates(gx.sgd(0.1), 1.6).update(grads, tx.init(params), params)
  np.testing.assert_allclose(u["b"], [-0.05, -0.05])
  for bad in (jnp.nan, jnp.inf):
    g = {"w": grads["w"].at[0, 0].set(bad), "b": grads["b"]}
    u, s = gx.skip_large_updates(gx.sgd(0.1), 1e30).update(g, tx.init(params), params)
    assert bool(s.last_skipped) and float(jnp.abs(u["b"]).sum()) == 0.0
  tx = gx.skip_large_updates(gx.adam(0.1), 1.0, max_consecutive_errors=1)
  s = tx.init(params)
  u1, s = tx.update(grads, s, params)
  u2, s = tx.update(grads, s, params)
  assert float(jnp.abs(u1["b"]).sum()) == 0.0
  np.testing.assert_allclose(u2["b"], [-0.1, -0.1], rtol=1e-5)   # Adam's first step: −η sign
  assert int(s.skipped_count) == 2 and int(gx.tree_get(s, "count")) == 1


def test_asgd_schedule_by_hand():
  """η_t = η(k) / (1 + λ η(k) k)^α with k = t − 1, on a schedule; no decay term when λ = 0
  is checked separately against plain SGD."""
  lr = lambda count: 0.1 * 0.5 ** count
  lambd, alpha = 0.2, 0.5
  tx = gx.asgd(lr, lambd=lambd, alpha=alpha)
  params = {"x": jnp.array([1.0, -2.0])}
  grads = {"x": jnp.array([0.5, 0.25])}
  state = tx.init(params)
  p = np.array([1.0, -2.0])
  for k in range(4):
    u, state = tx.update(grads, state, {"x": jnp.asarray(p, jnp.float32)})
    eta = 0.1 * 0.5 ** k / (1 + lambd * 0.1 * 0.5 ** k * k) ** alpha
    expected = p * (1 - lambd * eta) - eta * np.array([0.5, 0.25])
    np.testing.assert_allclose(p + np.asarray(u["x"]), expected, rtol=1e-6)
    p = expected
  sgd_u, _ = gx.sgd(0.1).update(grads, gx.sgd(0.1).init(params), params)
  asgd_u, _ = gx.asgd(0.1, lambd=0.0).update(grads, gx.asgd(0.1, lambd=0.0).init(params),
                                             params)
  np.testing.assert_allclose(asgd_u["x"], sgd_u["x"], rtol=1e-7)


# --- the contract ------------------------------------------------------------------------

FACTORIES = {
    "rprop": lambda **kw: gx.rprop(1e-2, **kw),
    "scale_by_rprop": lambda **kw: gx.scale_by_rprop(1e-2, **kw),
    "asgd": lambda **kw: gx.asgd(1e-2, t0=1.0, weight_decay=0.1, **kw),
    "asgd_averaging": lambda **kw: gx.chain(gx.sgd(0.1), gx.asgd_averaging(0.0, **kw)),
    "skip_large_updates": lambda **kw: gx.skip_large_updates(gx.adam(1e-2, **kw), 2.0),
}
NEEDS_PARAMS = {"asgd", "asgd_averaging"}


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.3, -0.2]),
          "s": jnp.asarray(0.7, jnp.float32)}


def _grads(k=0):
  return {"w": jnp.cos(jnp.arange(12.0) + k).reshape(3, 4), "b": jnp.array([-0.5, 0.25 + k]),
          "s": jnp.asarray(0.4 - 0.3 * k, jnp.float32)}


def _run(tx, params, steps=3):
  state = tx.init(params)
  outs = []
  for k in range(steps):
    u, state = tx.update({key: g for key, g in _grads(k).items() if key in params}, state,
                         params)
    outs.append(u)
    params = gx.apply_updates(params, u)
  return outs, state


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_check_transform(name):
  factory = FACTORIES[name]
  gxt.check_transform(factory(), _params(), needs_params=name in NEEDS_PARAMS)
  tx = factory(state_dtype=jnp.bfloat16)
  gxt.check_transform(tx, _params(), needs_params=name in NEEDS_PARAMS, pmap=False)
  floats = {x.dtype for x in jax.tree.leaves(tx.init(_params()))
            if x.ndim > 0 and jnp.issubdtype(x.dtype, jnp.floating)}
  assert floats == {jnp.dtype(jnp.bfloat16)}


INJECTED = {
    "rprop": dict(learning_rate=0.01, eta_minus=0.4, eta_plus=1.3, min_step_size=1e-4,
                  max_step_size=0.5),
    "asgd": dict(learning_rate=0.05, lambd=0.01, alpha=0.6, weight_decay=0.1, t0=1.0),
}


@pytest.mark.parametrize("name", sorted(INJECTED))
def test_inject_hyperparams_equals_plain(name):
  factory, kwargs = getattr(gx, name), INJECTED[name]
  injected = gx.inject_hyperparams(factory)(**kwargs)
  assert set(injected.init(_params()).hyperparams) == set(kwargs) - {"t0"}
  plain_out, _ = _run(factory(**kwargs), _params())
  injected_out, _ = _run(injected, _params())
  for p, q in zip(plain_out, injected_out):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-7), p, q)


def test_skip_large_updates_threshold_injected():
  injected = gx.inject_hyperparams(gx.skip_large_updates)(gx.sgd(0.1), max_squared_norm=1e9)
  state = injected.init(_params())
  u, _ = injected.update(_grads(), state, _params())
  assert float(jnp.abs(u["b"]).sum()) > 0
  state = state._replace(hyperparams={"max_squared_norm": jnp.asarray(1e-3)})
  u, _ = injected.update(_grads(), state, _params())
  assert float(jnp.abs(u["b"]).sum()) == 0


@pytest.mark.parametrize("make", [lambda: gx.rprop(0.01), lambda: gx.asgd(0.05, t0=0.0)],
                         ids=["rprop", "asgd"])
def test_masked_and_partition_equal_the_optimizer_on_its_leaves(make):
  params = _params()
  alone, _ = _run(make(), {"w": params["w"], "s": params["s"]})
  masked, _ = _run(gx.masked(make(), {"w": True, "b": False, "s": True}), params)
  grouped, _ = _run(gx.partition({"opt": make(), "sgd": gx.sgd(0.1)},
                                 {"w": "opt", "b": "sgd", "s": "opt"}), params)
  for k in range(3):
    for key in ("w", "s"):
      np.testing.assert_allclose(masked[k][key], alone[k][key], rtol=1e-6)
      np.testing.assert_allclose(grouped[k][key], alone[k][key], rtol=1e-6)
    np.testing.assert_allclose(grouped[k]["b"], -0.1 * _grads(k)["b"], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_equal_by_value(name):
  factory = FACTORIES[name]
  assert factory() == factory() and hash(factory()) == hash(factory())
  assert factory() != factory(state_dtype=jnp.bfloat16)


def test_different_hyperparameters_differ():
  assert gx.rprop(1e-2) != gx.rprop(1e-2, always_clip=True)
  assert gx.rprop(1e-2) != gx.rprop(1e-2, stale_output=True)
  assert gx.rprop(1e-2, 0.5) == gx.rprop(learning_rate=1e-2, eta_minus=0.5)
  assert gx.asgd(1e-2) != gx.asgd(1e-2, t0=10.0)
  assert gx.asgd(1e-2, lambd=1e-4) == gx.asgd(1e-2)
  assert gx.skip_large_updates(gx.sgd(0.1), 1.0) != gx.skip_large_updates(gx.sgd(0.1), 2.0)
  assert gx.skip_large_updates(gx.sgd(0.1), 1.0) == gx.skip_large_updates(gx.sgd(0.1), 1.0)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.rprop(0.0), "rprop: learning_rate must be > 0"),
    (lambda: gx.rprop(gx.constant_schedule(0.1)), "rprop: learning_rate must be a number"),
    (lambda: gx.rprop(0.1, eta_minus=1.0), "rprop: eta_minus must be in [0, 1)"),
    (lambda: gx.rprop(0.1, eta_minus=0.0), "rprop: eta_minus must be > 0"),
    (lambda: gx.rprop(0.1, eta_plus=0.9), "rprop: eta_plus must be >= 1"),
    (lambda: gx.rprop(0.1, min_step_size=-1.0), "rprop: min_step_size must be"),
    (lambda: gx.rprop(0.1, min_step_size=1.0, max_step_size=0.5), "rprop: max_step_size must"),
    (lambda: gx.scale_by_rprop(-0.1), "scale_by_rprop: learning_rate must be > 0"),
    (lambda: gx.asgd(-0.1), "asgd: learning_rate"),
    (lambda: gx.asgd(0.1, lambd=-1.0), "asgd: lambd must be"),
    (lambda: gx.asgd(0.1, alpha=-1.0), "asgd: alpha must be"),
    (lambda: gx.asgd(0.1, t0=-1.0), "asgd_averaging: t0 must be"),
    (lambda: gx.asgd(0.1, weight_decay=-0.1), "asgd: weight_decay must be"),
    (lambda: gx.asgd(0.1, weight_decay=gx.constant_schedule(0.1)), "asgd: weight_decay must"),
    (lambda: gx.asgd(0.1, state_dtype=jnp.int32), "asgd_averaging: state_dtype"),
    (lambda: gx.skip_large_updates(gx.sgd(0.1), 0.0), "skip_large_updates: max_squared_norm"),
    (lambda: gx.skip_large_updates(gx.sgd(0.1), 1.0, max_consecutive_errors=-1),
     "skip_large_updates: max_consecutive_errors"),
    (lambda: gx.skip_large_updates("sgd", 1.0), "skip_large_updates: inner"),
])
def test_bad_hyperparameters(call, message):
  with pytest.raises((ValueError, TypeError), match=re_escape(message)):
    call()


def re_escape(text):
  import re
  return re.escape(text)


CHECKPOINTED = {
    "rprop": (lambda: gx.rprop(0.01), False),
    "asgd": (lambda: gx.asgd(0.05, t0=1.0, weight_decay=0.1), True),
    "skip_large_updates": (lambda: gx.skip_large_updates(gx.adam(0.1), 20.0), False),
}


@pytest.mark.parametrize("name", sorted(CHECKPOINTED))
def test_flax_serialization_round_trip_and_exact_resume(name):
  make, needs = CHECKPOINTED[name]

  def train(tx, state, params, start, stop):
    for i in range(start, stop):
      u, state = tx.update(_grads(i), state, params if needs else None)
      params = gx.apply_updates(params, u)
    return params, state

  full_params, full_state = train(make(), make().init(_params()), _params(), 0, 5)
  params, state = train(make(), make().init(_params()), _params(), 0, 2)
  blob = serialization.to_bytes({"params": params, "opt": state})
  fresh = make()
  restored = serialization.from_bytes({"params": _params(), "opt": fresh.init(_params())}, blob)
  params, state = train(fresh, restored["opt"], restored["params"], 2, 5)
  for x, y in zip(jax.tree.leaves((full_params, full_state)), jax.tree.leaves((params, state))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_asgd_average_names_a_mismatched_tree():
  params = {"w": jnp.ones(3), "b": jnp.zeros(2)}
  state = gx.asgd(0.1).init(params)
  with pytest.raises(ValueError, match="asgd_average"):
    gx.asgd_average(state, {"w": jnp.ones(3)})
  with pytest.raises(KeyError):
    gx.asgd_average(gx.sgd(0.1).init(params), params)   # no average in an SGD state
