"""YellowFin (`gx.yellowfin`, `gx.scale_by_yellowfin`).

Optax has no YellowFin, so the oracle is a NumPy float64 implementation of the paper's
Algorithms 1-4 written here from the equations (zero-debiased EMAs as in the authors' code; the
cubic solved by `np.roots` and Newton polishing, not by Vieta's formula), run in closed loop
for 30 steps on a tree with a 130 × 129 matrix: every estimate (h_min, h_max, C, D, μ_t, α_t,
μ, α) and the parameters must agree to 1e-10 relative after every step. Then the noiseless
quadratic (β = 0, so C = 0), whose tuned values are the closed form of the paper, and the
contract: `gradxform.testing`, the wrappers, equality by value, validation, checkpoints.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import closed_loop as cl
import gradxform as gx
import gradxform.testing as gxt
from closed_loop import STEPS

RTOL = 1e-10
ESTIMATES = ("h_min", "h_max", "variance", "distance", "mu_t", "alpha_t", "mu", "alpha")


# The loss is a mean over the 16 788 parameters, as a training loss is: YellowFin's curvature
# estimate ‖g‖² is not scale-free, and on the sum its first steps (α = 1/‖g‖²) barely move.
SCALE = 1.0 / (130 * 129 + 17 + 1)


def _np_grad(theta, a, c):
  return {k: SCALE * (a[k] * (theta[k] - c[k]) + 0.3 * np.cos(theta[k])) for k in theta}


def _jax_grad(theta, a, c):
  return jax.tree.map(lambda g: SCALE * g, cl.grad(theta, a, c))


def _np_root(p):
  """The x in [0, 1] with `p x = (1 − x)³`: companion-matrix roots, then Newton polishing."""
  if p == np.inf:
    return 0.0
  roots = np.roots([1.0, -3.0, 3.0 + p, -1.0])          # x³ − 3x² + (3 + p)x − 1 = 0
  x = float(min(roots, key=lambda r: abs(r.imag)).real)
  for _ in range(4):
    x -= ((1.0 - x) ** 3 - p * x) / (-3.0 * (1.0 - x) ** 2 - p)
  return x


def _np_yellowfin(theta, a, c, steps, *, beta=0.999, window=20, lr=1.0, mu_factor=1.0,
                  log_curvature=False):
  """The paper's YellowFin in float64: parameters and estimates after every step."""
  theta = {k: v.copy() for k, v in theta.items()}
  g_avg = {k: np.zeros_like(v) for k, v in theta.items()}
  trace = {k: np.zeros_like(v) for k, v in theta.items()}
  hs = []
  lo_avg = hi_avg = sq_avg = norm_avg = dist_avg = mu_avg = alpha_avg = 0.0
  thetas, estimates = [], []
  for t in range(1, steps + 1):
    g = _np_grad(theta, a, c)
    h = sum(float(np.sum(x * x)) for x in g.values())
    hs.append(h)
    recent = hs[-window:]                                 # Algorithm 2: curvature range
    lo, hi = min(recent), max(recent)
    if log_curvature:
      lo, hi = np.log(lo), np.log(hi)
    lo_avg = beta * lo_avg + (1 - beta) * lo
    hi_avg = beta * hi_avg + (1 - beta) * hi
    debias = 1.0 - beta ** t
    h_min, h_max = lo_avg / debias, hi_avg / debias
    if log_curvature:
      h_min, h_max = np.exp(h_min), np.exp(h_max)
    sq_avg = beta * sq_avg + (1 - beta) * h               # Algorithm 3: variance
    for k in g:
      g_avg[k] = beta * g_avg[k] + (1 - beta) * g[k]
    mean_sq = sum(float(np.sum(x * x)) for x in g_avg.values()) / debias ** 2
    variance = max(sq_avg / debias - mean_sq, 0.0)
    norm_avg = beta * norm_avg + (1 - beta) * np.sqrt(h)  # Algorithm 4: distance
    dist_avg = beta * dist_avg + (1 - beta) * norm_avg / sq_avg
    distance = dist_avg / debias
    p = (distance * h_min) ** 2 / (2 * variance) if variance > 0 else np.inf  # SingleStep
    kappa = h_max / h_min
    mu_t = max(_np_root(p) ** 2, ((np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)) ** 2)
    alpha_t = (1 - np.sqrt(mu_t)) ** 2 / h_min
    mu_avg = beta * mu_avg + (1 - beta) * mu_t
    alpha_avg = beta * alpha_avg + (1 - beta) * alpha_t
    mu, alpha = mu_avg / debias, alpha_avg / debias
    for k in theta:                                       # momentum SGD, torch's convention
      trace[k] = mu_factor * mu * trace[k] + g[k]
      theta[k] = theta[k] - lr * alpha * trace[k]
    thetas.append({k: v.copy() for k, v in theta.items()})
    estimates.append(dict(h_min=h_min, h_max=h_max, variance=variance, distance=distance,
                          mu_t=mu_t, alpha_t=alpha_t, mu=mu, alpha=alpha))
  return thetas, estimates


def _closed_loop(theta0, a, c, tx, steps):
  """gradxform in closed loop: the parameters and `scale_by_yellowfin`'s estimates per step."""

  def step(carry, _):
    p, s = carry
    u, s = tx.update(_jax_grad(p, a, c), s, p)
    p = gx.apply_updates(p, u)
    inner = s[0] if isinstance(s, tuple) and not hasattr(s, "estimates") else s
    return (p, s), (p, inner.estimates)

  _, out = jax.lax.scan(step, (theta0, tx.init(theta0)), None, length=steps)
  return out


_closed_loop = jax.jit(_closed_loop, static_argnums=(3, 4))

CONFIGS = {
    "default": {},
    "moved": dict(beta=0.9, window=5, lr=0.3, mu_factor=0.8),
    "log_curvature": dict(beta=0.95, window=7, log_curvature=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_equals_numpy_reference_float64_every_step(name):
  kw = CONFIGS[name]
  with jax.enable_x64(True):
    theta0, a, c = cl.problem(18)   # f(θ) = mean(½ a (θ − c)² + 0.3 sin θ): see SCALE
    tx = gx.yellowfin(kw.get("lr", 1.0), beta=kw.get("beta", 0.999),
                      window=kw.get("window", 20), mu_factor=kw.get("mu_factor", 1.0),
                      log_curvature=kw.get("log_curvature", False))
    ours, est = jax.device_get(_closed_loop(theta0, a, c, tx, STEPS))
  thetas, ref = _np_yellowfin(theta0, a, c, STEPS, **kw)
  mus = [r["mu_t"] for r in ref]
  assert max(mus) > 0.05, "the momentum was never tuned above 0: the comparison would be weak"
  for key in theta0:
    assert ours[key].dtype == np.float64
    moved = np.abs(ours[key][-1] - theta0[key]).max()
    assert moved > 1e-3, f"{key} barely moved ({moved})"
  for t in range(STEPS):
    # The reference's C = E‖g‖² − ‖Eg‖² carries cancellation noise of ~1e-16 E‖g‖² (it is
    # ~1e-19 instead of 0 at the first step); μ ∈ [0, 1] is compared to 1e-15 absolute too.
    atol = dict(variance=1e-12 * est.h_max[t], mu_t=1e-15, mu=1e-15)
    for field in ESTIMATES:
      np.testing.assert_allclose(getattr(est, field)[t], ref[t][field], rtol=RTOL,
                                 atol=atol.get(field, 0.0), err_msg=f"{field}, step {t + 1}")
    for key in theta0:
      np.testing.assert_allclose(ours[key][t], thetas[t][key], rtol=RTOL, atol=1e-13,
                                 err_msg=f"leaf {key}, step {t + 1}")


def test_noiseless_quadratic_follows_the_closed_form():
  # β = 0: no smoothing, so the measured variance of a deterministic gradient is C = 0, the
  # cubic's root is 0, and the tuned values are the paper's closed form for a quadratic with
  # curvatures in [h_min, h_max] = the extremes of ‖g‖² over the window:
  # μ = ((√κ − 1)/(√κ + 1))², α = (1 − √μ)²/h_min = 4/(√h_max + √h_min)². (Without smoothing
  # the tuned values jump from step to step and the run does not settle: this checks the
  # tuning rule, not convergence.)
  window, steps = 6, 40
  lam = np.array([0.5, 1.0, 4.0, 9.0])
  with jax.enable_x64(True):
    theta0 = {"x": np.array([1.0, -1.5, 0.7, 0.2])}
    tx = gx.scale_by_yellowfin(beta=0.0, window=window)

    def step(carry, _):
      p, s = carry
      u, s = tx.update({"x": lam * p["x"]}, s)
      return ({"x": p["x"] - u["x"]}, s), (p["x"], s.estimates)

    _, (xs, est) = jax.device_get(jax.jit(lambda p: jax.lax.scan(
        step, (p, tx.init(p)), None, length=steps))(theta0))
  hs = np.sum((lam * xs) ** 2, axis=1)                    # ‖g_t‖² along the trajectory
  np.testing.assert_array_equal(est.variance, 0.0)
  for t in range(window, steps):                          # the window is full from here
    lo, hi = hs[t - window + 1:t + 1].min(), hs[t - window + 1:t + 1].max()
    kappa = hi / lo
    mu = ((np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)) ** 2
    np.testing.assert_allclose(est.mu[t], mu, rtol=1e-10, err_msg=f"step {t + 1}")
    np.testing.assert_allclose(est.alpha[t], 4 / (np.sqrt(hi) + np.sqrt(lo)) ** 2, rtol=1e-10)
  assert est.mu[window:].max() > 0.1


def test_first_step_by_hand():
  # One step: h_min = h_max = ‖g‖², C = 0 (one sample), so μ = 0 and α = 1/‖g‖².
  tx = gx.scale_by_yellowfin()
  g = {"a": jnp.array([3.0, 4.0])}
  u, s = tx.update(g, tx.init(g))
  np.testing.assert_allclose(u["a"], np.array([3.0, 4.0]) / 25.0, rtol=1e-6)
  assert float(s.estimates.mu) == 0.0 and float(s.estimates.variance) == 0.0
  np.testing.assert_allclose(float(s.estimates.distance), 5.0 / 25.0, rtol=1e-6)


# --- the contract ------------------------------------------------------------------------

FACTORIES = {
    "yellowfin": lambda **kw: gx.yellowfin(**kw),
    "scale_by_yellowfin": lambda **kw: gx.scale_by_yellowfin(**kw),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_check_transform(name):
  factory = FACTORIES[name]
  gxt.check_transform(factory(), cl.params())
  tx = factory(state_dtype=jnp.bfloat16)                  # buffers in bfloat16
  if name == "scale_by_yellowfin":                        # (the chain adds nothing to check)
    gxt.check_transform(tx, cl.params(), pmap=False)
  state = tx.init(cl.params())
  inner = state[0] if name == "yellowfin" else state
  assert {x.dtype for x in jax.tree.leaves((inner.grad_mean, inner.trace))} == {
      jnp.dtype(jnp.bfloat16)}
  assert inner.window.dtype == jnp.float32                # the scalars stay float32


def test_inject_hyperparams_learning_rate_factor():
  kwargs = dict(learning_rate=0.5, beta=0.9, mu_factor=0.7)
  cl.assert_inject_equals_plain(gx.yellowfin, kwargs)
  got = cl.run(gx.inject_hyperparams(gx.yellowfin)(**kwargs), cl.params())[0]
  full = cl.run(gx.yellowfin(beta=0.9, mu_factor=0.7), cl.params())[0]
  for p, q in zip(full, got):                             # the factor scales the tuned step
    jax.tree.map(lambda x, y: np.testing.assert_allclose(0.5 * x, y, rtol=2e-6), p, q)


def test_masked_and_partition_equal_the_optimizer_on_its_leaves():
  cl.assert_masked_and_partition_match(gx.yellowfin(), passthrough=False)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_equal_by_value(name):
  factory = FACTORIES[name]
  assert factory() == factory() and hash(factory()) == hash(factory())
  assert factory() != factory(window=10)
  assert factory() != factory(log_curvature=True)
  assert factory() != factory(state_dtype=jnp.bfloat16)
  assert gx.yellowfin(0.5) != gx.yellowfin(1.0)
  assert gx.yellowfin(0.5, beta=0.99) == gx.yellowfin(learning_rate=0.5, beta=0.99)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.yellowfin(-1.0), "yellowfin: learning_rate"),
    (lambda: gx.yellowfin(beta=1.0), "scale_by_yellowfin: beta must be in [0, 1), got 1.0"),
    (lambda: gx.yellowfin(window=0), "scale_by_yellowfin: window must be a positive integer"),
    (lambda: gx.scale_by_yellowfin(window=2.5), "scale_by_yellowfin: window must be"),
    (lambda: gx.scale_by_yellowfin(beta=-0.1), "scale_by_yellowfin: beta must be"),
    (lambda: gx.scale_by_yellowfin(mu_factor=-1.0), "scale_by_yellowfin: mu_factor must be"),
    (lambda: gx.scale_by_yellowfin(state_dtype=jnp.int32), "scale_by_yellowfin: state_dtype"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_checkpoint_round_trip_and_exact_resume():
  tx = gx.yellowfin()
  params = cl.params()
  _, state, _ = cl.run(tx, params, steps=4)
  _, restored = cl.save_and_restore(params, state, params, tx.init(params))
  cl.assert_identical(restored, state)
  a = cl.run(tx, params, steps=3, state=state, start=4)[0]
  b = cl.run(tx, params, steps=3, state=restored, start=4)[0]
  for p, q in zip(a, b):
    jax.tree.map(np.testing.assert_array_equal, p, q)
