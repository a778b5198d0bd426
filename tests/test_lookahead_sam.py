"""The wrappers `gx.lookahead` (Zhang et al. 2019) and `gx.sam` (Foret et al. 2021; ASAM).

Oracles, in float64 and closed loop on a small nonconvex problem:

* lookahead: a NumPy transcription of the paper's Algorithm 1 with fast SGD and fast Adam
  written in NumPy (with and without resetting the fast state), and `optax.lookahead`, whose
  `LookaheadParams(fast, slow)` line up with our (params, `lookahead_params(state, params)`).
* sam: NumPy from the paper's equations (`ε = ρ g/‖g‖`, `g_SAM = ∇L(θ + ε)`; ASAM's
  `ε = ρ θ² g/‖|θ| g‖`), base SGD with momentum and base Adam in NumPy; and
  `optax.contrib.sam` (alternating adversarial/outer steps), every second step of which is
  one of ours.

Then the contract: `gradxform.testing`, `inject_hyperparams`, wrapping, equality by value,
validation, checkpoint round trip.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from flax import serialization

import gradxform as gx
import gradxform.testing as gxt

STEPS = 24
RTOL = 1e-9


def _problem():
  """Start, curvature and centre of `f(θ) = Σ ½ a (θ − c)² + 0.5 Σ sin(3θ)` (nonconvex)."""
  rng = np.random.default_rng(7)

  def draw(shape):
    return (rng.uniform(-2.0, 2.0, shape), rng.uniform(0.2, 3.0, shape),
            rng.uniform(-1.0, 1.0, shape))

  parts = {"w": draw((13, 12)), "v": draw((17,)), "s": draw(())}
  return tuple({k: np.asarray(p[i], np.float64) for k, p in parts.items()} for i in range(3))


def _grad(theta, a, c, xp=jnp):
  return {k: a[k] * (theta[k] - c[k]) + 1.5 * xp.cos(3.0 * theta[k]) for k in theta}


def _loss(theta, a, c):
  return sum(jnp.sum(0.5 * a[k] * (theta[k] - c[k]) ** 2 + 0.5 * jnp.sin(3.0 * theta[k]))
             for k in theta)


# --- NumPy fast optimizers -----------------------------------------------------------------

def _np_sgd(lr, momentum=0.0):
  def init(theta):
    return {k: np.zeros_like(v) for k, v in theta.items()}

  def step(theta, g, buf):
    buf = {k: momentum * buf[k] + g[k] for k in g}          # Optax/torch: b ← μ b + g
    return {k: theta[k] - lr * buf[k] for k in theta}, buf
  return init, step


def _np_adam(lr, b1=0.9, b2=0.999, eps=1e-8):
  def init(theta):
    return (0, {k: np.zeros_like(v) for k, v in theta.items()},
            {k: np.zeros_like(v) for k, v in theta.items()})

  def step(theta, g, state):
    t, m, v = state
    t += 1
    m = {k: b1 * m[k] + (1 - b1) * g[k] for k in g}
    v = {k: b2 * v[k] + (1 - b2) * g[k] ** 2 for k in g}
    new = {k: theta[k] - lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
           for k in theta}
    return new, (t, m, v)
  return init, step


# --- lookahead -----------------------------------------------------------------------------

def _np_lookahead(theta0, a, c, fast, k, alpha, reset):
  """Algorithm 1 of Zhang et al., unrolled into single fast steps: (θ, φ) after each."""
  init, step = fast
  theta, phi, state = dict(theta0), dict(theta0), init(theta0)
  out = []
  for t in range(STEPS):
    theta, state = step(theta, _grad(theta, a, c, np), state)
    if (t + 1) % k == 0:                                       # one step back
      phi = {key: phi[key] + alpha * (theta[key] - phi[key]) for key in phi}
      theta = dict(phi)
      if reset:
        state = init(theta)
    out.append((theta, phi))
  return out


LOOKAHEAD = [
    # (ours, NumPy fast optimizer, Optax fast optimizer, k, α, reset_state)
    (lambda: gx.sgd(0.05), _np_sgd(0.05), lambda: optax.sgd(0.05), 5, 0.5, False),
    (lambda: gx.sgd(0.03, 0.9), _np_sgd(0.03, 0.9), lambda: optax.sgd(0.03, 0.9), 4, 0.8,
     False),
    (lambda: gx.adam(0.05), _np_adam(0.05), lambda: optax.adam(0.05), 3, 0.5, False),
    (lambda: gx.adam(0.05, 0.8, 0.99), _np_adam(0.05, 0.8, 0.99),
     lambda: optax.adam(0.05, 0.8, 0.99), 4, 0.6, True),
    (lambda: gx.adam(0.02), _np_adam(0.02), lambda: optax.adam(0.02), 1, 0.3, False),
]
LOOKAHEAD_IDS = ["sgd-k5", "momentum-k4", "adam-k3", "adam-k4-reset", "adam-k1"]


def _run_lookahead(theta0, a, c, tx):
  def step(carry, _):
    p, s = carry
    u, s = tx.update(_grad(p, a, c), s, p)
    p = gx.apply_updates(p, u)
    return (p, s), (p, gx.lookahead_params(s, p))

  _, out = jax.lax.scan(step, (theta0, tx.init(theta0)), None, length=STEPS)
  return out


def _run_optax_lookahead(theta0, a, c, tx):
  def step(carry, _):
    p, s = carry
    u, s = tx.update(_grad(p.fast, a, c), s, p)
    p = optax.apply_updates(p, u)
    return (p, s), (p.fast, p.slow)

  p0 = optax.LookaheadParams.init_synced(theta0)
  _, out = jax.lax.scan(step, (p0, tx.init(p0)), None, length=STEPS)
  return out


@pytest.mark.parametrize("case", LOOKAHEAD, ids=LOOKAHEAD_IDS)
def test_lookahead_equals_paper_in_numpy_and_optax(case):
  make, np_fast, make_optax, k, alpha, reset = case
  with jax.enable_x64(True):
    theta0, a, c = _problem()
    tx = gx.lookahead(make(), k, alpha, reset_state=reset)
    fast, slow = jax.device_get(jax.jit(lambda t: _run_lookahead(t, a, c, tx))(theta0))
    ofast, oslow = jax.device_get(jax.jit(lambda t: _run_optax_lookahead(
        t, a, c, optax.lookahead(make_optax(), k, alpha, reset_state=reset)))(theta0))
  reference = _np_lookahead(theta0, a, c, np_fast, k, alpha, reset)
  for key in theta0:
    assert fast[key].dtype == np.float64
    assert np.abs(fast[key][-1] - theta0[key]).max() > 1e-2
    for t, (theta, phi) in enumerate(reference):
      msg = f"leaf {key}, step {t + 1}"
      np.testing.assert_allclose(fast[key][t], theta[key], rtol=RTOL, atol=1e-12, err_msg=msg)
      np.testing.assert_allclose(slow[key][t], phi[key], rtol=RTOL, atol=1e-12, err_msg=msg)
      np.testing.assert_allclose(fast[key][t], ofast[key][t], rtol=RTOL, atol=1e-12,
                                 err_msg=msg)
      np.testing.assert_allclose(slow[key][t], oslow[key][t], rtol=RTOL, atol=1e-12,
                                 err_msg=msg)


def test_lookahead_sync_lands_on_the_slow_weights_by_hand():
  # k = 2, α = 0.5, SGD η = 1 on g = 1: θ 0 → −1 → (−2, then back to φ = ½(0 + −2) = −1)
  tx = gx.lookahead(gx.sgd(1.0), 2, 0.5)
  p = {"x": jnp.zeros(())}
  state = tx.init(p)
  seen = []
  for _ in range(4):
    u, state = tx.update({"x": jnp.ones(())}, state, p)
    p = gx.apply_updates(p, u)
    seen.append((float(p["x"]), float(gx.lookahead_params(state, p)["x"])))
  assert seen == [(-1.0, 0.0), (-1.0, -1.0), (-2.0, -1.0), (-2.0, -2.0)]


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.3, -0.2]),
          "s": jnp.asarray(0.7, jnp.float32)}


def _grads(k=0):
  return {"w": jnp.cos(jnp.arange(12.0) + k).reshape(3, 4), "b": jnp.array([-0.5, 0.25 + k]),
          "s": jnp.asarray(0.4 - 0.3 * k, jnp.float32)}


def _train(tx, params, steps, start=0, state=None, **extra):
  state = tx.init(params) if state is None else state
  for i in range(start, start + steps):
    grads = {key: g for key, g in _grads(i).items() if key in params}
    u, state = tx.update(grads, state, params, **extra)
    params = gx.apply_updates(params, u)
  return params, state


def test_lookahead_params_however_wrapped():
  params = _params()
  plain = gx.lookahead(gx.adam(0.1), 3, 0.5)
  p_ref, s_ref = _train(plain, params, 4)
  slow = gx.lookahead_params(s_ref, p_ref)
  assert not np.allclose(slow["w"], p_ref["w"])           # between syncs φ ≠ θ
  wrapped = {
      "inject": gx.inject_hyperparams(gx.lookahead)(gx.adam(0.1), 3, slow_step_size=0.5),
      "chain": gx.chain(gx.identity(), gx.lookahead(gx.adam(0.1), 3, 0.5)),
      "apply_if_finite": gx.apply_if_finite(gx.lookahead(gx.adam(0.1), 3, 0.5), 2),
  }
  for name, tx in wrapped.items():
    p, s = _train(tx, params, 4)
    got = gx.lookahead_params(s, p)
    for key in params:
      np.testing.assert_allclose(p[key], p_ref[key], rtol=1e-6, err_msg=name)
      np.testing.assert_allclose(got[key], slow[key], rtol=1e-6, err_msg=name)
  # under masked / partition: φ where a lookahead runs, the params elsewhere
  alone_p, alone_s = _train(plain, {"w": params["w"]}, 4)
  for tx in (gx.masked(plain, {"w": True, "b": False, "s": False}),
             gx.partition({"la": plain, "sgd": gx.sgd(0.1)}, {"w": "la", "b": "sgd", "s": "sgd"})):
    p, s = _train(tx, params, 4)
    got = gx.lookahead_params(s, p)
    np.testing.assert_allclose(got["w"], gx.lookahead_params(alone_s, alone_p)["w"], rtol=1e-6)
    np.testing.assert_array_equal(got["b"], p["b"])
  with pytest.raises(KeyError, match="holds no LookaheadState"):
    gx.lookahead_params(gx.adam(0.1).init(params), params)


def test_lookahead_on_complex_parameters():
  # SGD η = 1 on g = 1 + i, k = 2, α = 0.5: as the hand-checked real case, on both parts
  tx = gx.lookahead(gx.sgd(1.0), 2, 0.5)
  p = {"z": jnp.zeros((), jnp.complex64)}
  state = tx.init(p)
  for _ in range(3):
    u, state = tx.update({"z": jnp.asarray(1.0 + 1.0j, jnp.complex64)}, state, p)
    p = gx.apply_updates(p, u)
  slow = gx.lookahead_params(state, p)["z"]
  assert slow.dtype == jnp.complex64 and complex(slow) == -1.0 - 1.0j
  assert complex(p["z"]) == -2.0 - 2.0j


def test_lookahead_injected_step_size_is_used():
  tx = gx.inject_hyperparams(gx.lookahead)(gx.sgd(0.1), 2, slow_step_size=0.5)
  state = tx.init(_params())
  state = state.with_hyperparams(slow_step_size=1.0)       # α = 1: plain SGD
  p, _ = _train(tx, _params(), 4, state=state)
  q, _ = _train(gx.sgd(0.1), _params(), 4)
  for key in p:
    np.testing.assert_allclose(p[key], q[key], rtol=1e-6)


# --- SAM -----------------------------------------------------------------------------------

def _np_sam(theta0, a, c, base, rho, adaptive):
  init, step = base
  theta, state, out = dict(theta0), init(theta0), []
  for _ in range(STEPS):
    g = _grad(theta, a, c, np)
    t = {k: np.abs(theta[k]) if adaptive else np.ones_like(theta[k]) for k in theta}
    norm = np.sqrt(sum(np.sum((t[k] * g[k]) ** 2) for k in g))
    eps = {k: rho * t[k] ** 2 * g[k] / norm for k in g}
    g_sam = _grad({k: theta[k] + eps[k] for k in theta}, a, c, np)
    theta, state = step(theta, g_sam, state)
    out.append(theta)
  return out


SAM = [
    # (ours base, NumPy base, ρ, adaptive)
    (lambda: gx.sgd(0.05, 0.9), _np_sgd(0.05, 0.9), 0.05, False),
    (lambda: gx.sgd(0.05), _np_sgd(0.05), 0.3, False),
    (lambda: gx.adam(0.03), _np_adam(0.03), 0.1, False),
    (lambda: gx.sgd(0.05, 0.9), _np_sgd(0.05, 0.9), 0.5, True),
    (lambda: gx.adam(0.03, 0.8), _np_adam(0.03, 0.8), 1.0, True),
]
SAM_IDS = ["momentum", "sgd-rho0.3", "adam", "asam-momentum", "asam-adam"]


def _run_sam(theta0, a, c, tx):
  def step(carry, _):
    p, s = carry
    u, s = tx.update(_grad(p, a, c), s, p, grad_fn=lambda q: _grad(q, a, c))
    p = gx.apply_updates(p, u)
    return (p, s), p

  return jax.lax.scan(step, (theta0, tx.init(theta0)), None, length=STEPS)[1]


@pytest.mark.parametrize("case", SAM, ids=SAM_IDS)
def test_sam_equals_paper_in_numpy(case):
  make, np_base, rho, adaptive = case
  with jax.enable_x64(True):
    theta0, a, c = _problem()
    tx = gx.sam(make(), rho, adaptive=adaptive)
    ours = jax.device_get(jax.jit(lambda t: _run_sam(t, a, c, tx))(theta0))
  reference = _np_sam(theta0, a, c, np_base, rho, adaptive)
  for key in theta0:
    assert ours[key].dtype == np.float64
    for t, theta in enumerate(reference):
      np.testing.assert_allclose(ours[key][t], theta[key], rtol=RTOL, atol=1e-12,
                                 err_msg=f"leaf {key}, step {t + 1}")


def test_sam_equals_every_second_step_of_optax_contrib_sam():
  with jax.enable_x64(True):
    theta0, a, c = _problem()
    ours = gx.sam(gx.sgd(0.05, 0.9), 0.1)
    theirs = optax.contrib.sam(optax.sgd(0.05, 0.9),
                               optax.chain(optax.contrib.normalize(), optax.sgd(0.1)),
                               sync_period=2)

    def run_theirs(t):
      def step(carry, _):
        p, s = carry
        u, s = theirs.update(_grad(p, a, c), s, p)
        p = optax.apply_updates(p, u)
        return (p, s), p
      return jax.lax.scan(step, (t, theirs.init(t)), None, length=2 * STEPS)[1]

    mine = jax.device_get(jax.jit(lambda t: _run_sam(t, a, c, ours))(theta0))
    other = jax.device_get(jax.jit(run_theirs)(theta0))
  for key in theta0:
    np.testing.assert_allclose(mine[key], other[key][1::2], rtol=RTOL, atol=1e-12)


def test_sam_perturbation_by_hand():
  g = {"x": jnp.array([3.0, 4.0])}
  np.testing.assert_allclose(gx.sam_perturbation(g, rho=0.5)["x"], [0.3, 0.4], rtol=1e-6)
  # ASAM, θ = (2, 1): T g = (6, 4), ‖T g‖ = √52, ε = 0.5 · (4 · 3, 1 · 4)/√52
  eps = gx.sam_perturbation(g, {"x": jnp.array([2.0, -1.0])}, 0.5, adaptive=True)
  np.testing.assert_allclose(eps["x"], 0.5 * np.array([12.0, 4.0]) / np.sqrt(52.0), rtol=1e-6)
  zero = gx.sam_perturbation({"x": jnp.zeros(2)}, rho=0.5)           # no 0/0
  np.testing.assert_array_equal(zero["x"], [0.0, 0.0])


def _grad_fn(p):
  return jax.tree.map(lambda x: x ** 3 - 0.5 * x + 0.1, p)


def test_sam_needs_grad_fn_and_params():
  tx = gx.sam(gx.sgd(0.1))
  with pytest.raises(ValueError, match=r"sam.update needs the gradient function: call "
                     r"update\(grads, state, params, grad_fn="):
    tx.update(_grads(), tx.init(_params()), _params())
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(_grads(), tx.init(_params()), None, grad_fn=_grad_fn)


def test_sam_passes_other_arguments_to_the_base_optimizer():
  # a loss-aware base: value= reaches Polyak SGD, which steps with the SAM gradient
  tx = gx.sam(gx.polyak_sgd(), 0.1)
  params = _params()
  u, _ = tx.update(_grads(), tx.init(params), params, grad_fn=_grad_fn, value=2.0)
  eps = gx.sam_perturbation(_grads(), params, 0.1)
  sharp = _grad_fn(gx.apply_updates(params, eps))
  base = gx.polyak_sgd()
  expected, _ = base.update(sharp, base.init(params), params, value=2.0)
  for key in params:
    np.testing.assert_allclose(u[key], expected[key], rtol=1e-6)


# --- the contract --------------------------------------------------------------------------

WRAPPERS = {
    "lookahead": (lambda: gx.lookahead(gx.adam(0.1), 2, 0.5), {}),
    "lookahead_reset": (lambda: gx.lookahead(gx.sgd(0.1, 0.9), 2, 0.5, reset_state=True), {}),
    "sam": (lambda: gx.sam(gx.adam(0.1)), {"grad_fn": _grad_fn}),
    "asam": (lambda: gx.sam(gx.sgd(0.1, 0.9), 0.5, adaptive=True), {"grad_fn": _grad_fn}),
}


def _bound(tx, extra):
  """`tx` with its function arguments bound: jax.jit(tx.update) cannot take a function (in
  training, `grad_fn` is a closure inside the jitted step)."""
  if not extra:
    return tx
  return gx.GradientTransformation(
      tx.init, lambda g, s, p=None, **more: tx.update(g, s, p, **extra, **more))


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_check_transform(name):
  make, extra = WRAPPERS[name]
  gxt.check_transform(_bound(make(), extra), _params(), needs_params=True,
                      pmap=name in ("lookahead", "sam"))


def test_inject_hyperparams_sam():
  injected = gx.inject_hyperparams(gx.sam)(gx.sgd(0.1), rho=0.2)
  assert set(injected.init(_params()).hyperparams) == {"rho"}
  p, _ = _train(injected, _params(), 3, grad_fn=_grad_fn)
  q, _ = _train(gx.sam(gx.sgd(0.1), 0.2), _params(), 3, grad_fn=_grad_fn)
  for key in p:
    np.testing.assert_allclose(p[key], q[key], rtol=1e-6)


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_equal_by_value(name):
  make, _ = WRAPPERS[name]
  assert make() == make() and hash(make()) == hash(make())


def test_different_hyperparameters_differ():
  assert gx.lookahead(gx.sgd(0.1), 2, 0.5) != gx.lookahead(gx.sgd(0.1), 3, 0.5)
  assert gx.lookahead(gx.sgd(0.1), 2, 0.5) != gx.lookahead(gx.sgd(0.2), 2, 0.5)
  assert gx.lookahead(gx.sgd(0.1), 2, 0.5) != gx.lookahead(gx.sgd(0.1), 2, 0.5,
                                                           reset_state=True)
  assert gx.sam(gx.sgd(0.1)) != gx.sam(gx.sgd(0.1), adaptive=True)
  assert gx.sam(gx.sgd(0.1)) != gx.sam(gx.sgd(0.1), 0.1)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.lookahead(gx.sgd(0.1), 0, 0.5), "lookahead: sync_period must be a positive"),
    (lambda: gx.lookahead(gx.sgd(0.1), 2.5, 0.5), "lookahead: sync_period must be a positive"),
    (lambda: gx.lookahead(gx.sgd(0.1), 2, 1.5), "lookahead: slow_step_size must be in [0, 1]"),
    (lambda: gx.lookahead(gx.sgd(0.1), 2, -0.1), "lookahead: slow_step_size must be in"),
    (lambda: gx.sam(gx.sgd(0.1), -0.05), "sam: rho must be >= 0"),
    (lambda: gx.sam_perturbation(_grads(), rho=-1.0), "sam_perturbation: rho must be >= 0"),
    (lambda: gx.sam_perturbation(_grads(), None, adaptive=True),
     "sam_perturbation: adaptive=True needs params"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_not_a_transform_is_a_type_error():
  with pytest.raises(TypeError, match="lookahead: fast_optimizer"):
    gx.lookahead("sgd", 2, 0.5)
  with pytest.raises(TypeError, match="sam: base_optimizer"):
    gx.sam(0.1)


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_checkpoint_round_trip_and_exact_resume(name):
  make, extra = WRAPPERS[name]
  params0 = _params()
  full_params, full_state = _train(make(), params0, 5, **extra)
  tx = make()
  params, state = _train(tx, params0, 2, **extra)
  blob = serialization.to_bytes({"params": params, "opt": state})
  fresh = make()
  restored = serialization.from_bytes({"params": params0, "opt": fresh.init(params0)}, blob)
  params, state = _train(fresh, restored["params"], 3, start=2, state=restored["opt"], **extra)
  for x, y in zip(jax.tree.leaves((full_params, full_state)), jax.tree.leaves((params, state))):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
