"""Adafactor (issue 17): `gx.adafactor`, its primitives `scale_by_factored_rms` and
`scale_by_param_block_rms`, and its torch form.

Oracles: Optax itself in float64, in closed loop (each step's gradient is that of a fixed
function at the current parameters), 30 steps over a tree with a 130 × 129 matrix (factored at
Optax's `min_dim_size_to_factor=128`), a vector and a scalar, with Optax's defaults and with
every hyperparameter moved; the parameters must agree to 1e-7 relative after every step.
torch.optim.Adafactor's float64 trajectories stored in tests/data/torch_adafactor.json (made by
tests/data/make_torch_adafactor.py), to 1e-10. NumPy for the first factored step and for the
size of the state. Then the contract: `gradxform.testing`, the wrappers, equality by value,
validation, a checkpoint round trip.
"""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import gradxform as gx
import gradxform.testing as gxt

STEPS = 30
RTOL = 1e-7
MASK = {"w": True, "v": False, "s": True}

# (gradxform optimizer, Optax optimizer): the defaults first, then moved values. Optax's
# momentum is an EMA whose float32 state it multiplies by μ in float32 (a weakly typed Python
# μ times a float32 array), gradxform in the wider dtype of the update: the same numbers
# rounded differently, which a closed loop carries to 1e-2 over 30 steps. So the momentum cases
# keep the momentum in float64 on both sides (state_dtype = Optax's dtype_momentum).
CASES = {
    "default": (lambda: gx.adafactor(), lambda: optax.adafactor()),
    "learning_rate": (lambda: gx.adafactor(0.05), lambda: optax.adafactor(0.05)),
    "moved": (
        lambda: gx.adafactor(0.03, 64, 0.6, -3, True, 0.5, 0.8, jnp.float64, 0.02, 1e-6, True,
                             MASK),
        lambda: optax.adafactor(0.03, 64, 0.6, -3, True, 0.5, 0.8, jnp.float64, 0.02, 1e-6, True,
                                MASK)),
    "unfactored_momentum": (
        lambda: gx.adafactor(0.05, momentum=0.9, state_dtype=jnp.float64, factored=False,
                             clipping_threshold=None, weight_decay_rate=1e-3),
        lambda: optax.adafactor(0.05, momentum=0.9, dtype_momentum=jnp.float64, factored=False,
                                clipping_threshold=None, weight_decay_rate=1e-3)),
    "schedule_no_param_scale": (
        lambda: gx.adafactor(_schedule, multiply_by_parameter_scale=False,
                             min_dim_size_to_factor=200),
        lambda: optax.adafactor(_schedule, multiply_by_parameter_scale=False,
                                min_dim_size_to_factor=200)),
}


def _schedule(count):
  """η_t = 0.1 / (1 + 0.2 t), the same function on both sides (gradxform's own schedules
  return float32 under x64, Optax's float64)."""
  return 0.1 / (1.0 + 0.2 * count)


def _problem():
  """Start, curvature and centre of `f(θ) = Σ ½ a (θ − c)² + 0.3 Σ sin θ` (float64)."""
  rng = np.random.default_rng(17)

  def draw(shape):
    return (rng.uniform(-2.0, 2.0, shape), rng.uniform(0.2, 3.0, shape),
            rng.uniform(-1.0, 1.0, shape))

  parts = {"w": draw((130, 129)), "v": draw((17,)), "s": draw(())}
  return tuple({k: np.asarray(p[i]) for k, p in parts.items()} for i in range(3))


def _grad(theta, a, c):
  return jax.tree.map(lambda t, a_, c_: a_ * (t - c_) + 0.3 * jnp.cos(t), theta, a, c)


def _both(theta0, a, c, pair):
  """Both optimizers in closed loop; each one's parameters after every step."""
  ours, theirs = pair[0](), pair[1]()

  def step(carry, _):
    (p1, s1), (p2, s2) = carry
    u1, s1 = ours.update(_grad(p1, a, c), s1, p1)
    u2, s2 = theirs.update(_grad(p2, a, c), s2, p2)
    p1, p2 = gx.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    return ((p1, s1), (p2, s2)), (p1, p2)

  carry = ((theta0, ours.init(theta0)), (theta0, theirs.init(theta0)))
  _, trajectories = jax.lax.scan(step, carry, None, length=STEPS)
  return trajectories


_both = jax.jit(_both, static_argnums=3)              # one compile per configuration


@pytest.mark.parametrize("name", list(CASES))
def test_equals_optax_float64_every_step(name):
  with jax.enable_x64(True):
    theta0, a, c = _problem()
    ours, theirs = jax.device_get(_both(theta0, a, c, CASES[name]))
  for key in theta0:
    assert ours[key].dtype == np.float64
    moved = np.abs(ours[key][-1] - theta0[key]).max()
    assert moved > 1e-3, f"{key} barely moved ({moved}): the comparison would be weak"
    for t in range(STEPS):
      np.testing.assert_allclose(ours[key][t], theirs[key][t], rtol=RTOL, atol=1e-12,
                                 err_msg=f"leaf {key}, step {t + 1}")


def test_the_matrix_is_factored_and_optax_lays_out_the_state_alike():
  theta0 = {k: np.asarray(v, np.float32) for k, v in _problem()[0].items()}
  ours = gx.adafactor().init(theta0)[0]
  theirs = optax.adafactor().init(theta0)[0]
  for key, shape in (("w", (130, 129)),):
    # Optax averages over the largest axis for v_row (axis 0 here) and the other for v_col.
    assert ours.v_row[key].shape == theirs.v_row[key].shape == (shape[1],)
    assert ours.v_col[key].shape == theirs.v_col[key].shape == (shape[0],)
    assert ours.v[key].shape == (0,)          # Optax keeps a placeholder of shape (1,)
  assert ours.v["v"].shape == (17,) and ours.v_row["v"].shape == (0,)


def test_first_factored_step_by_hand():
  """NumPy from the paper: β̂_1 = 0, so V̂ = r cᵀ / mean(r) of the first G = g² + ε."""
  rng = np.random.default_rng(3)
  g = rng.normal(size=(4, 6)).astype(np.float32)
  tx = gx.scale_by_factored_rms(min_dim_size_to_factor=2, epsilon=1e-3)
  out, state = tx.update({"g": jnp.asarray(g)}, tx.init({"g": jnp.zeros((4, 6))}))
  G = g.astype(np.float64) ** 2 + 1e-3
  rows, cols = G.mean(axis=1), G.mean(axis=0)   # v_row: over the larger axis (6); v_col: the other
  v_hat = rows[:, None] * cols[None, :] / rows.mean()
  np.testing.assert_allclose(out["g"], g / np.sqrt(v_hat), rtol=1e-5)
  np.testing.assert_allclose(state.v_row["g"], rows, rtol=1e-6)
  np.testing.assert_allclose(state.v_col["g"], cols, rtol=1e-6)


# --- torch.optim.Adafactor ----------------------------------------------------------------

TORCH_FILE = Path(__file__).parent / "data" / "torch_adafactor.json"
if not TORCH_FILE.is_file():  # loud, at collection: this file is the oracle
  raise FileNotFoundError(f"{TORCH_FILE} is missing; regenerate it with "
                          "`python tests/data/make_torch_adafactor.py` in a venv with torch")
TORCH = json.loads(TORCH_FILE.read_text())
# float64 on both sides; torch works in place (lerp, norm², rsqrt) and XLA fuses differently,
# a few ulps per step that the closed loop carries: 1e-10 leaves a wide margin and still fails
# any convention difference (see test_torch_form_differs_from_optax_form).
TORCH_RTOL, TORCH_ATOL = 1e-10, 1e-12


def _from_torch(kwargs):
  """The documented translation of torch.optim.Adafactor's arguments, and its text."""
  lr = kwargs.get("lr", 1e-2)
  eps1, eps2 = kwargs.get("eps", (None, 1e-3))
  args = dict(min_dim_size_to_factor=0, decay_rate=-kwargs.get("beta2_decay", -0.8),
              clipping_threshold=float(kwargs.get("d", 1.0)))
  if kwargs.get("weight_decay", 0.0):
    args["weight_decay_rate"] = kwargs["weight_decay"]
  args.update(eps=eps1, min_scale=eps2, torch_form=True)
  text = f"gx.adafactor({lr!r}, " + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
  tx = gx.adafactor(lr, **args)
  if kwargs.get("maximize", False):
    return gx.chain(gx.scale(-1.0), tx), f"gx.chain(gx.scale(-1.0), {text})"
  return tx, text


def _replay(tx, problem):
  p = {k: np.asarray(v, np.float64) for k, v in problem["theta0"].items()}
  c = {k: np.asarray(v, np.float64) for k, v in problem["c"].items()}
  target = {k: np.asarray(v, np.float64) for k, v in problem["target"].items()}
  noise = {k: np.asarray(v, np.float64) for k, v in problem["noise"].items()}

  def step(carry, n):
    theta, state = carry
    g = jax.tree.map(lambda t, c_, y, e: c_ * (t - y) + e, theta, c, target, n)
    u, state = tx.update(g, state, theta)
    theta = gx.apply_updates(theta, u)
    return (theta, state), theta

  _, traj = jax.jit(lambda p0: jax.lax.scan(step, (p0, tx.init(p0)), noise))(p)
  return jax.device_get(traj)


@pytest.mark.parametrize("name", list(TORCH["configs"]))
def test_torch_form_equals_torch_optim_adafactor(name):
  config = TORCH["configs"][name]
  tx, text = _from_torch(config["torch_kwargs"])
  assert text == config["gradxform"]              # the documented call is the one replayed
  with jax.enable_x64(True):
    ours = _replay(tx, TORCH["problem"])
  for key, theirs in config["trajectory"].items():
    theirs = np.asarray(theirs)
    assert ours[key].shape == theirs.shape
    for t in range(TORCH["steps"]):
      np.testing.assert_allclose(ours[key][t], theirs[t], rtol=TORCH_RTOL, atol=TORCH_ATOL,
                                 err_msg=f"{name}: leaf {key}, step {t + 1}")


def test_torch_form_differs_from_optax_form():
  """The flag matters: Optax's form, on the same data, is far from torch's numbers."""
  config = TORCH["configs"]["eps"]
  with jax.enable_x64(True):
    optax_form = _replay(gx.adafactor(0.05, min_dim_size_to_factor=0, eps=0.4, min_scale=0.05),
                         TORCH["problem"])
  far = max(np.abs(optax_form[k][-1] - np.asarray(v)[-1]).max()
            for k, v in config["trajectory"].items())
  assert far > 1e-2


# --- the contract ------------------------------------------------------------------------

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
    grads = {key: g for key, g in _grads(k).items() if key in params}
    u, state = tx.update(grads, state, params)
    outs.append(u)
  return outs, state


TRANSFORMS = {
    "adafactor": lambda: gx.adafactor(0.1, min_dim_size_to_factor=2),
    "adafactor_momentum_wd": lambda: gx.adafactor(0.1, min_dim_size_to_factor=2, momentum=0.9,
                                                  weight_decay_rate=0.01),
    "adafactor_torch": lambda: gx.adafactor(0.1, min_dim_size_to_factor=0, eps=None,
                                            weight_decay_rate=0.1, torch_form=True),
    "scale_by_factored_rms": lambda: gx.scale_by_factored_rms(min_dim_size_to_factor=2),
    "scale_by_factored_rms_torch": lambda: gx.scale_by_factored_rms(
        min_dim_size_to_factor=0, epsilon=None, torch_form=True),
    "scale_by_param_block_rms": lambda: gx.scale_by_param_block_rms(),
}


@pytest.mark.parametrize("name", [n for n in TRANSFORMS if n != "adafactor"])   # a sub-case
def test_check_transform(name):
  # pmap once, on the chain with every kind of part (the others differ only inside a leaf)
  gxt.check_transform(TRANSFORMS[name](), _params(), needs_params=True,
                      pmap=name == "adafactor_momentum_wd")


def test_momentum_state_dtype():
  params = _params()
  default = gx.adafactor(0.1, momentum=0.9).init(params)[-2]       # Optax: float32 momentum
  assert {x.dtype for x in jax.tree.leaves(default.trace)} == {jnp.dtype(jnp.float32)}
  tx = gx.adafactor(0.1, momentum=0.9, state_dtype=jnp.bfloat16, min_dim_size_to_factor=2)
  gxt.check_transform(tx, params, needs_params=True, pmap=False)
  state = tx.init(params)
  assert {x.dtype for x in jax.tree.leaves(state[-2].trace)} == {jnp.dtype(jnp.bfloat16)}
  # the factored statistics stay in the parameters' dtype, as Optax keeps them
  assert state[0].v_row["w"].dtype == jnp.float32


def test_state_bytes_per_parameter_of_a_large_matrix():
  """Factored: O(n + m) numbers for an n × m matrix, exactly (plus the int32 step counter)."""
  n, m = 4096, 1024
  params = {"w": jax.ShapeDtypeStruct((n, m), jnp.float32)}

  def nbytes(tx):
    state = jax.eval_shape(tx.init, params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))

  assert nbytes(gx.adafactor()) == 4 * (n + m) + 4
  assert nbytes(gx.adafactor(1e-2, torch_form=True, min_dim_size_to_factor=0)) == 4 * (n + m) + 4
  assert nbytes(gx.adafactor(factored=False)) == 4 * n * m + 4
  # the momentum borrows the chain's step counter: one count in all
  assert nbytes(gx.adafactor(momentum=0.9)) == 4 * (n + m) + 4 + 4 * n * m
  assert nbytes(gx.adafactor(momentum=0.9, state_dtype=jnp.bfloat16)) == (
      4 * (n + m) + 4 + 2 * n * m)
  assert nbytes(gx.adam(1e-3)) == 2 * 4 * n * m + 4      # what Adafactor saves


INJECTED = dict(learning_rate=0.1, decay_rate=0.7, clipping_threshold=0.8, momentum=0.5,
                weight_decay_rate=0.01, eps=1e-6, min_scale=1e-2)


@pytest.mark.parametrize("torch_form", [False, True])
def test_inject_hyperparams_equals_plain_and_injects(torch_form):
  kwargs = dict(INJECTED, min_dim_size_to_factor=2, torch_form=torch_form)
  injected = gx.inject_hyperparams(gx.adafactor)(**kwargs)
  assert set(injected.init(_params()).hyperparams) == set(INJECTED)
  plain_out, _ = _run(gx.adafactor(**kwargs), _params())
  injected_out, _ = _run(injected, _params())
  for p, q in zip(plain_out, injected_out):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-7), p, q)
  zero = dict(INJECTED, weight_decay_rate=0.0, learning_rate=0.0)
  state = injected.init(_params())
  state = state._replace(hyperparams={k: jnp.asarray(v) for k, v in zero.items()})
  u, _ = injected.update(_grads(), state, _params())     # η injected as 0: no step
  assert all(np.all(np.asarray(x) == 0.0) for x in jax.tree.leaves(u))


def test_masked_and_partition_equal_the_optimizer_on_its_leaves():
  opt = gx.adafactor(0.1, min_dim_size_to_factor=2, momentum=0.5)
  params = _params()
  alone, _ = _run(opt, {"w": params["w"], "s": params["s"]})
  masked, _ = _run(gx.masked(opt, {"w": True, "b": False, "s": True}), params)
  grouped, _ = _run(gx.partition({"opt": opt, "sgd": gx.sgd(0.1)},
                                 {"w": "opt", "b": "sgd", "s": "opt"}), params)
  for k in range(3):
    for key in ("w", "s"):
      np.testing.assert_allclose(masked[k][key], alone[k][key], rtol=1e-6)
      np.testing.assert_allclose(grouped[k][key], alone[k][key], rtol=1e-6)
    np.testing.assert_array_equal(masked[k]["b"], _grads(k)["b"])
    np.testing.assert_allclose(grouped[k]["b"], -0.1 * _grads(k)["b"], rtol=1e-6)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_equal_by_value(name):
  factory = TRANSFORMS[name]
  assert factory() == factory() and hash(factory()) == hash(factory())


def test_different_hyperparameters_differ():
  assert gx.adafactor() != gx.adafactor(0.1)
  assert gx.adafactor() != gx.adafactor(torch_form=True)
  assert gx.adafactor(momentum=0.9) != gx.adafactor(momentum=0.9, state_dtype=jnp.bfloat16)
  assert gx.adafactor(0.1, 64) == gx.adafactor(learning_rate=0.1, min_dim_size_to_factor=64)
  assert gx.scale_by_factored_rms() != gx.scale_by_factored_rms(factored=False)
  assert gx.scale_by_param_block_rms() != gx.scale_by_param_block_rms(0.1)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.adafactor(-1.0), "adafactor: learning_rate"),
    (lambda: gx.adafactor(decay_rate=-0.8), "adafactor: decay_rate must be >= 0, got -0.8"),
    (lambda: gx.adafactor(min_dim_size_to_factor=-1), "adafactor: min_dim_size_to_factor"),
    (lambda: gx.adafactor(min_dim_size_to_factor=2.5), "adafactor: min_dim_size_to_factor"),
    (lambda: gx.adafactor(decay_offset=0.5), "adafactor: decay_offset"),
    (lambda: gx.adafactor(clipping_threshold=0.0), "adafactor: clipping_threshold must be > 0"),
    (lambda: gx.adafactor(momentum=1.0), "adafactor: momentum must be in [0, 1), got 1.0"),
    (lambda: gx.adafactor(state_dtype=jnp.int32), "adafactor: state_dtype"),
    (lambda: gx.adafactor(weight_decay_rate=-0.1), "adafactor: weight_decay_rate"),
    (lambda: gx.adafactor(eps=-1e-30), "adafactor: eps must be >= 0"),
    (lambda: gx.adafactor(eps=None), "adafactor: eps must be a number, got None"),
    (lambda: gx.adafactor(min_scale=-1.0), "adafactor: min_scale must be >= 0"),
    (lambda: gx.scale_by_factored_rms(decay_rate=-1.0), "scale_by_factored_rms: decay_rate"),
    (lambda: gx.scale_by_factored_rms(epsilon=-1.0), "scale_by_factored_rms: epsilon"),
    (lambda: gx.scale_by_factored_rms(epsilon=None), "scale_by_factored_rms: epsilon must be"),
    (lambda: gx.scale_by_factored_rms(step_offset=1.5), "scale_by_factored_rms: step_offset"),
    (lambda: gx.scale_by_factored_rms(decay_rate_fn=3), "scale_by_factored_rms: decay_rate_fn"),
    (lambda: gx.scale_by_param_block_rms(-1.0), "scale_by_param_block_rms: min_scale"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_wrong_state_names_the_leaf():
  tx = gx.scale_by_factored_rms(min_dim_size_to_factor=2)
  state = tx.init({"w": jnp.zeros((3, 4))})
  with pytest.raises(ValueError, match=re.escape("scale_by_factored_rms.update: the state of "
                                                 "leaf ['w']")):
    tx.update({"w": jnp.zeros((3, 5))}, state)
  with pytest.raises(ValueError, match="scale_by_param_block_rms.update needs the current"):
    gx.scale_by_param_block_rms().update(_grads(), gx.EmptyState())


# --- checkpoints ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["adafactor_momentum_wd", "adafactor_torch"])
def test_flax_serialization_round_trip_and_exact_resume(name):
  make = TRANSFORMS[name]

  def train(tx, params, state, start, stop):
    for k in range(start, stop):
      u, state = tx.update(_grads(k), state, params)
      params = gx.apply_updates(params, u)
    return params, state

  full_params, full_state = train(make(), _params(), make().init(_params()), 0, 5)
  tx = make()
  params, state = train(tx, _params(), tx.init(_params()), 0, 2)
  blob = serialization.to_bytes({"params": params, "opt": state})
  fresh = make()                                  # a new optimizer object, as after a restart
  restored = serialization.from_bytes({"params": _params(), "opt": fresh.init(_params())}, blob)
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored["opt"])):
    assert np.asarray(x).dtype == np.asarray(y).dtype and np.shape(x) == np.shape(y)
    np.testing.assert_array_equal(x, y)
  params, state = train(fresh, restored["params"], restored["opt"], 2, 5)
  for x, y in zip(jax.tree.leaves((full_params, full_state)), jax.tree.leaves((params, state))):
    np.testing.assert_array_equal(x, y)
