"""`dynamic_loss_scale` and `loss_scale` against torch's `torch.amp.GradScaler`.

Oracle: tests/data/torch_modern.json (written by tests/data/make_torch_modern.py; torch is not
a test dependency), section `loss_scale`: float64 parameters, the loss `½ Σ c (θ − target)²`
scaled by `scaler.scale(loss)` and differentiated, an Inf or NaN written into one gradient
entry at scripted steps, then `scaler.step(opt)` and `scaler.update()` around SGD with
momentum (torch's default factors, growth_interval 3) and Adam (all factors moved). gradxform
must use the same scale at every step (exactly: they are powers of two), skip the same steps
and land on the same parameters (1e-10 relative). Then hand-derived rules (growth stops at
float32's largest finite scale), a float16 run, the contract and a checkpoint round trip.
"""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

import gradxform as gx
import gradxform.testing as gxt

DATA_FILE = Path(__file__).parent / "data" / "torch_modern.json"
if not DATA_FILE.is_file():
  raise FileNotFoundError(f"{DATA_FILE} is missing; regenerate it with "
                          "`python tests/data/make_torch_modern.py` in a venv with torch")
DATA = json.loads(DATA_FILE.read_text())
CASES = DATA["loss_scale"]
GX = {
    "sgd": gx.dynamic_loss_scale(gx.sgd(0.05, 0.9), init_scale=2.0 ** 10, growth_interval=3),
    "adam_moved": gx.dynamic_loss_scale(gx.adam(0.05), init_scale=2.0 ** 20, growth_factor=4.0,
                                        backoff_factor=0.25, growth_interval=2),
}


@functools.partial(jax.jit, static_argnums=0)
def _replay(tx, theta0, c, target, inf_at, nan_at):
  """Per step: the scale used, whether skipped, the scale after, θ after."""

  def body(carry, bad):
    p, s = carry
    scale = gx.loss_scale(s)
    loss = lambda p: sum(jnp.sum(0.5 * c[k] * (p[k] - target[k]) ** 2) for k in p)
    g = jax.grad(lambda p: loss(p) * scale.astype(jnp.float64))(p)
    inf_here, nan_here = bad                            # the scripted overflow
    g = {**g, "w": jnp.where(inf_here, g["w"].at[1, 2].set(jnp.inf), g["w"]),
         "b": jnp.where(nan_here, g["b"].at[3].set(jnp.nan), g["b"])}
    u, s = tx.update(g, s, p)
    p = gx.apply_updates(p, u)
    return (p, s), (scale, ~s.last_finite, gx.loss_scale(s), p)

  return jax.lax.scan(body, (theta0, tx.init(theta0)), (inf_at, nan_at))[1]


def _scripted(case):
  """Per step: whether w[1, 2] gets an Inf, whether b[3] gets a NaN."""
  steps = np.arange(1, DATA["steps"] + 1)
  return np.isin(steps, case["inf_steps"]), np.isin(steps, case["nan_steps"])


def test_data_file_is_complete():
  assert sorted(GX) == sorted(CASES)
  for name, case in CASES.items():
    assert eval(case["gradxform"], {"gx": gx}) == GX[name], name
    assert any(case["skipped"]) and not all(case["skipped"])
    assert len(set(case["scale_after"])) > 3          # the scale both grows and backs off


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_grad_scaler(name):
  case = CASES[name]
  p = DATA["problem"]
  arr = lambda tree: {k: np.asarray(v, np.float64) for k, v in tree.items()}
  with jax.enable_x64(True):
    used, skipped, after, theta = jax.device_get(
        _replay(GX[name], arr(p["theta0"]), arr(p["c"]), arr(p["target"]), *_scripted(case)))
  assert used.dtype == np.float32
  np.testing.assert_array_equal(used, np.asarray(case["scale_used"], np.float32))
  np.testing.assert_array_equal(skipped, case["skipped"])
  np.testing.assert_array_equal(after, np.asarray(case["scale_after"], np.float32))
  for k, expected in case["theta"].items():
    np.testing.assert_allclose(theta[k], np.asarray(expected), rtol=1e-10, atol=1e-12,
                               err_msg=f"{name}: θ[{k}]")


def test_update_rule_by_hand():
  """Interval 2, factors 2 and 0.5: finite, finite (grow), inf (back off, tracker reset),
  finite, finite (grow). The inner Adam skips the bad step: its count stays at 4."""
  params = {"x": jnp.array([1.0, -1.0])}
  tx = gx.dynamic_loss_scale(gx.adam(0.1), init_scale=8.0, growth_interval=2)
  state = tx.init(params)
  scales, trackers = [], []
  for g in [1.0, 1.0, jnp.inf, 1.0, 1.0]:
    u, state = tx.update({"x": jnp.array([g, 2.0]) * gx.loss_scale(state)}, state, params)
    scales.append(float(state.loss_scale))
    trackers.append(int(state.growth_tracker))
  assert scales == [8.0, 16.0, 8.0, 8.0, 16.0]
  assert trackers == [1, 0, 0, 1, 0]
  assert int(gx.tree_get(state, "count")) == 4


def test_inner_gets_unscaled_gradients():
  params = {"x": jnp.array([1.0, -1.0])}
  tx = gx.dynamic_loss_scale(gx.sgd(1.0), init_scale=2.0 ** 12)
  u, _ = tx.update({"x": jnp.array([0.5, -0.25]) * 2.0 ** 12}, tx.init(params), params)
  np.testing.assert_array_equal(u["x"], [-0.5, 0.25])


def test_growth_stops_at_float32_max():
  """torch keeps the scale when growing would overflow float32 (the tracker still resets)."""
  params = {"x": jnp.zeros(2)}
  tx = gx.dynamic_loss_scale(gx.sgd(0.1), init_scale=2.0 ** 127, growth_interval=1)
  state = tx.init(params)
  _, state = tx.update({"x": jnp.ones(2)}, state, params)
  assert float(state.loss_scale) == 2.0 ** 127 and int(state.growth_tracker) == 0


def test_float16_training_recovers_from_overflow():
  """float16 parameters and gradients: the first scaled gradients overflow (2 · 3 · 2¹⁵ >
  65504), the scale backs off until they fit, then SGD steps with the unscaled gradient."""
  params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]], jnp.float16)}
  tx = gx.dynamic_loss_scale(gx.sgd(0.1), init_scale=2.0 ** 15)
  state = tx.init(params)
  skipped = []
  for _ in range(3):
    scale = gx.loss_scale(state).astype(jnp.float16)
    g = jax.grad(lambda p, scale=scale: scale * jnp.sum(p["w"] * p["w"]))(params)
    assert g["w"].dtype == jnp.float16
    u, state = tx.update(g, state, params)
    params = gx.apply_updates(params, u)
    skipped.append(not bool(state.last_finite))
  assert skipped == [True, True, False]
  assert float(state.loss_scale) == 2.0 ** 13
  np.testing.assert_array_equal(params["w"], np.array([[0.8, -1.6], [0.4, 2.4]], np.float16))


def test_loss_scale_found_when_nested():
  tx = gx.inject_hyperparams(gx.sgd)(learning_rate=0.1)
  nested = gx.chain(gx.clip_by_global_norm(1e9), gx.dynamic_loss_scale(tx, init_scale=4.0))
  state = nested.init({"x": jnp.zeros(2)})
  assert float(gx.loss_scale(state)) == 4.0


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.3, -0.2]),
          "s": jnp.asarray(0.7, jnp.float32)}


def test_check_transform():
  gxt.check_transform(gx.dynamic_loss_scale(gx.adam(1e-2), init_scale=4.0, growth_interval=2),
                      _params())


def test_equal_by_value():
  make = lambda **kw: gx.dynamic_loss_scale(gx.adam(1e-3), **kw)
  assert make() == make() and hash(make()) == hash(make())
  assert make() != make(growth_interval=10)
  assert make(init_scale=2.0 ** 16) == make()


@pytest.mark.parametrize("kwargs,message", [
    (dict(init_scale=0.0), "dynamic_loss_scale: init_scale must be"),
    (dict(init_scale=float("inf")), "dynamic_loss_scale: init_scale must be"),
    (dict(growth_factor=1.0), "dynamic_loss_scale: growth_factor must be"),
    (dict(backoff_factor=1.0), "dynamic_loss_scale: backoff_factor must be"),
    (dict(backoff_factor=0.0), "dynamic_loss_scale: backoff_factor must be"),
    (dict(growth_interval=0), "dynamic_loss_scale: growth_interval must be"),
    (dict(growth_interval=1.5), "dynamic_loss_scale: growth_interval must be"),
])
def test_bad_hyperparameters(kwargs, message):
  with pytest.raises(ValueError, match=message):
    gx.dynamic_loss_scale(gx.sgd(0.1), **kwargs)


def test_flax_serialization_round_trip_and_exact_resume():
  make = lambda: gx.dynamic_loss_scale(gx.adam(0.1), init_scale=2.0 ** 4, growth_interval=2)
  grads = [{"w": jnp.full((3, 4), v), "b": jnp.full(2, v), "s": jnp.asarray(v)}
           for v in (1.0, 2.0, jnp.inf, 0.5, 1.5, 3.0)]

  def train(tx, state, params, start, stop):
    for i in range(start, stop):
      scale = gx.loss_scale(state)
      g = jax.tree.map(lambda x, scale=scale: x * scale, grads[i])
      u, state = tx.update(g, state, params)
      params = gx.apply_updates(params, u)
    return params, state

  full = train(make(), make().init(_params()), _params(), 0, 6)
  params, state = train(make(), make().init(_params()), _params(), 0, 3)
  blob = serialization.to_bytes({"params": params, "opt": state})
  fresh = make()
  restored = serialization.from_bytes({"params": _params(), "opt": fresh.init(_params())}, blob)
  resumed = train(fresh, restored["opt"], restored["params"], 3, 6)
  for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
