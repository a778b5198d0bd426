"""The algorithms as compositions of named primitives, noisy SGD's noise, value equality and
hyperparameter validation.

* Chains assembled by hand from the primitives (`scale_by_momentum`, `bias_correction`,
  `scale_by_rms`, `decoupled_weight_decay`, `sign_agreement`, `scale_by_learning_rate`) against
  the float64 NumPy references of tests/reference.py: Adam (constant and scheduled learning
  rate), AdamW with a mask, PowerSign / AddSign with a decay, centered RMSprop with momentum,
  and Loshchilov & Hutter's Algorithm 2 (schedule multiplier η_t apart from Adam's α). Run in
  float64, so the tolerance is far below any convention difference and any CPU's rounding.
* noisy_sgd: the noise equals `σ_t · normal(key_i)` with the keys rebuilt here from public
  `jax.random` calls (the documented scheme), and its variance is right on a large leaf.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as R
from test_algorithms import (
  MASK,
  MASK_FLAT,
  at,
  lr_schedule_jnp,
  lr_schedule_np,
  make_problem,
  reference_run,
  run_gx,
)

import gradxform as gx

# float64 runs of 100 steps: observed agreement with the references is ~1e-15 relative; 1e-10
# leaves five orders of magnitude for other CPUs and still sits far below the smallest
# convention difference these tests pin (eps placement with eps = 1e-3: ~1e-3 relative).
X64_RTOL, X64_ATOL = 1e-10, 1e-12


@pytest.fixture(scope="module")
def problem():
  return make_problem()


def _x64_against_reference(tx, ref):
  """`tx` (jit of a 100-step scan) in float64 vs the NumPy reference on the same data."""
  with jax.enable_x64(True):
    params, grads = make_problem(dtype=np.float64)
    got = jax.device_get(run_gx(tx, params, grads))
    assert all(x.dtype == np.float64 for x in jax.tree.leaves(got))
  return got, reference_run(ref, params, grads)


def _assert_matches_reference(tx, ref):
  got, expected = _x64_against_reference(tx, ref)
  chex.assert_trees_all_close(got, expected, rtol=X64_RTOL, atol=X64_ATOL)


def adam_by_hand(lr, b1=0.9, b2=0.999, eps=1e-8):
  return [gx.scale_by_momentum(b1, ema=True), gx.bias_correction(b1),
          gx.scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True),
          gx.scale_by_learning_rate(lr)]


@pytest.mark.parametrize("lr,lr_np", [(1e-2, 1e-2), (lr_schedule_jnp, lr_schedule_np)],
                         ids=["constant", "schedule"])
def test_adam_by_hand_matches_reference(lr, lr_np):
  # eps = 1e-3 next to gradients of size 1: eps inside the root would miss by ~2e-3 relative.
  _assert_matches_reference(gx.chain(*adam_by_hand(lr, 0.8, 0.99, 1e-3)),
                            R.Adam(lr_np, 0.8, 0.99, 1e-3))


def test_adam_by_hand_holds_one_counter(problem):
  params, _ = problem
  state = gx.chain(*adam_by_hand(lr_schedule_jnp)).init(params)
  counts = [s.count for s in state if "count" in getattr(type(s), "_fields", ())]
  assert sum(c is not None for c in counts) == 1


def test_adamw_by_hand_matches_reference():
  """Adam's parts + `decoupled_weight_decay` (kernels only) before the learning rate."""
  parts = adam_by_hand(1e-2, 0.85, 0.995, 1e-3)
  by_hand = gx.chain(*parts[:-1], gx.decoupled_weight_decay(0.1, mask=MASK), parts[-1])
  _assert_matches_reference(by_hand, R.Adam(1e-2, 0.85, 0.995, 1e-3, weight_decay=0.1,
                                            mask=MASK_FLAT))


def _decay_jnp(step):
  return jnp.maximum(0.0, 1.0 - step / 50.0)


def _decay_np(step):
  return max(0.0, 1.0 - step / 50.0)


@pytest.mark.parametrize("mode", ["power", "add"])
def test_sign_agreement_by_hand_matches_reference(mode):
  """`sign_agreement` then the learning rate: PowerSign / AddSign of Bello et al."""
  if mode == "power":
    agree = gx.sign_agreement(mode="power", base=2.0, beta=0.8, decay_fn=_decay_jnp)
    ref = R.PowerSign(1e-2, base=2.0, beta=0.8, decay_fn=_decay_np)
  else:
    agree = gx.sign_agreement(mode="add", alpha=0.5, beta=0.8, decay_fn=_decay_jnp)
    ref = R.AddSign(1e-2, alpha=0.5, beta=0.8, decay_fn=_decay_np)
  _assert_matches_reference(gx.chain(agree, gx.scale_by_learning_rate(1e-2)), ref)


def test_loshchilov_hutter_algorithm_2():
  """θ ← θ − η_t (α m̂/(√v̂+ε) + λθ): Adam's direction, scale(α), decay, schedule η_t."""
  alpha, lam = 0.05, 0.1
  tx = gx.chain(*adam_by_hand(1.0)[:-1], gx.scale(alpha), gx.decoupled_weight_decay(lam),
                gx.scale_by_learning_rate(lr_schedule_jnp))
  got, expected = _x64_against_reference(tx, R.Adam(lr_schedule_np, weight_decay=lam,
                                                    alpha=alpha))
  chex.assert_trees_all_close(got, expected, rtol=X64_RTOL, atol=X64_ATOL)
  # ... and it is not AdamW with η = α η_t: there the decay would be scaled by α as well.
  _, adamw = _x64_against_reference(tx, R.Adam(lambda s: alpha * lr_schedule_np(s),
                                               weight_decay=lam))
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(got, adamw, rtol=1e-6, atol=1e-8)


def test_rmsprop_momentum_by_hand_matches_reference():
  """Centered RMS (eps outside the root) → heavy-ball momentum → learning rate."""
  by_hand = gx.chain(gx.scale_by_rms(0.95, 1e-3, eps_in_sqrt=False, centered=True),
                     gx.scale_by_momentum(0.8), gx.scale_by_learning_rate(1e-2))
  _assert_matches_reference(by_hand, R.RMSprop(1e-2, 0.95, 1e-3, eps_in_sqrt=False,
                                               centered=True, momentum=0.8))


# ---------------------------------------------------------------------------------------------
# RAdam's rectification, step by step (the 100-step test sees the early steps only a little).


def test_radam_updates_step_by_step():
  # float32 updates vs float64: observed worst |error| is 1/3 of atol + rtol·|expected|, the
  # same bits with the default ISA and with --xla_cpu_max_isa=AVX2.
  rng = np.random.default_rng(3)
  grads = rng.normal(size=(30, 8)).astype(np.float32)
  theta = np.zeros(8, np.float32)
  tx = gx.radam(1.0)
  state = tx.init(theta)
  update = jax.jit(tx.update)
  ref = R.RAdam(1.0)
  ref_theta = np.zeros(8)
  for g in grads:
    u, state = update(g, state, theta)
    new_ref = ref.step(ref_theta, g.astype(np.float64))
    np.testing.assert_allclose(np.asarray(u, np.float64), new_ref - ref_theta, rtol=2e-6, atol=2e-8,
                               err_msg=f"t={ref.t} rho_t={R.RAdam.rho(0.999, ref.t):.3f}")
    ref_theta = new_ref


# ---------------------------------------------------------------------------------------------
# noisy_sgd.


def documented_normals(seed, t, grads_like):
  """The standard normal draws of step t (1 on the first update) as the noisy_sgd docstring
  documents them, from public `jax.random` calls only: key `fold_in(PRNGKey(seed), t − 1)`,
  split into one key per leaf (`jax.tree.leaves` order, `None` leaves are not leaves), a
  float32 standard normal per leaf; returned in float64, like `grads_like`."""
  leaves, treedef = jax.tree.flatten(grads_like)
  step_key = jax.random.fold_in(jax.random.PRNGKey(seed), t - 1)
  keys = jax.random.split(step_key, len(leaves))
  return treedef.unflatten([np.asarray(jax.random.normal(k, np.shape(x), jnp.float32),
                                       np.float64) for k, x in zip(keys, leaves)])


def documented_noise(seed, t, grads_like, eta, gamma):
  """`documented_normals` times σ_t = √(η / (1 + t')^γ), t' = t − 1 (in float64)."""
  sigma = math.sqrt(eta / (1.0 + (t - 1)) ** gamma)
  return jax.tree.map(lambda z: sigma * z, documented_normals(seed, t, grads_like))


def _noise_of(u, g, lr=0.1):
  """noisy_sgd's float32 update is u = −lr (g + noise): the noise, recovered in float64."""
  return np.asarray(u, np.float64) / -lr - np.asarray(g, np.float64)


def test_noisy_sgd_noise_follows_the_documented_key_scheme(problem):
  params, grads = problem
  eta, gamma, seed = 0.3, 0.55, 7
  tx = gx.noisy_sgd(0.1, eta=eta, gamma=gamma, seed=seed)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(1, 5):
    g = at(grads, t)
    u, state = update(g, state, params)
    noise = jax.tree.map(_noise_of, u, g)
    # |g| ≲ 4 and |noise| ≲ 2: float32 rounding of g + noise and of the product with lr leaves
    # ≲ 5e-7 absolute; atol 2e-6 keeps a 4x margin, and a wrong key or σ misses by ~σ ≳ 0.3.
    chex.assert_trees_all_close(noise, documented_noise(seed, t, g, eta, gamma), rtol=1e-5,
                                atol=2e-6)


def test_noisy_sgd_variance_on_a_large_leaf():
  n, lr, eta, gamma = 200_000, 1.0, 0.5, 0.55
  tx = gx.noisy_sgd(lr, eta=eta, gamma=gamma, seed=3)
  params = {"big": jnp.zeros([n]), "small": jnp.zeros([3])}
  zeros = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  update = jax.jit(tx.update)
  draws = []
  for t in range(1, 11):
    u, state = update(zeros, state, params)
    x = np.asarray(u["big"], np.float64) / -lr
    draws.append(x)
    var = R.noisy_sgd_sigma(eta, gamma, t) ** 2
    # sample variance of n normals: relative standard error sqrt(2/n) = 0.3%; allow 5 of them.
    assert abs(x.var() / var - 1) < 5 * math.sqrt(2 / n), (t, x.var(), var)
    assert abs(x.mean()) < 5 * math.sqrt(var / n)
  # a fresh draw every step, not the same noise rescaled
  corr = np.corrcoef(draws[0], draws[1])[0, 1]
  assert abs(corr) < 5 / math.sqrt(n)
  # annealed: σ_10² / σ_1² = (1 + 9)^-γ
  assert math.isclose(draws[9].var() / draws[0].var(), 10 ** -gamma, rel_tol=0.03)


# ---------------------------------------------------------------------------------------------
# Value equality.

FACTORIES = [
    (gx.sgd, dict(momentum=0.9)), (gx.sgdw, {}), (gx.adagrad, {}), (gx.adadelta, {}),
    (gx.rmsprop, {}), (gx.adam, {}), (gx.adamw, {}), (gx.adamax, {}), (gx.nadam, {}),
    (gx.amsgrad, {}), (gx.radam, {}), (gx.powersign, {}), (gx.addsign, {}),
    (gx.noisy_sgd, {}),
]


@pytest.mark.parametrize("factory,kwargs", FACTORIES, ids=[f.__name__ for f, _ in FACTORIES])
def test_value_equality(factory, kwargs):
  a, b = factory(1e-3, **kwargs), factory(1e-3, **kwargs)
  assert a == b and hash(a) == hash(b)
  assert a != factory(2e-3, **kwargs)


def test_value_equality_details():
  assert gx.adam(1e-3) == gx.adam(learning_rate=1e-3, b1=0.9)  # defaults and keywords bind
  assert hash(gx.adam(1e-3)) == hash(gx.adam(1e-3, 0.9, 0.999, 1e-8))
  assert gx.adam(1e-3) != gx.adam(1e-3, b2=0.99)
  assert gx.adam(1e-3) != gx.adamw(1e-3)
  assert gx.nadam(1e-3) != gx.nadam(1e-3, momentum_decay=0.004)
  assert gx.rmsprop(1e-3) != gx.rmsprop(1e-3, eps_in_sqrt=False)
  assert gx.adam(lr_schedule_jnp) == gx.adam(lr_schedule_jnp)
  assert gx.chain(*adam_by_hand(1e-3)) == gx.chain(*adam_by_hand(1e-3))
  assert gx.adam(1e-3) in {gx.adam(1e-3)}


def test_equal_optimizers_share_one_compile():
  traces = []

  def step(tx, g):
    traces.append(1)
    return tx.update(g, tx.init(g))[0]

  f = jax.jit(step, static_argnums=0)
  g = jnp.ones([3])
  f(gx.adam(1e-3), g)
  f(gx.adam(1e-3), g)
  assert len(traces) == 1
  f(gx.adam(2e-3), g)
  assert len(traces) == 2


# ---------------------------------------------------------------------------------------------
# Hyperparameter validation: ValueError naming the parameter and the value.

BAD = [
    (lambda: gx.adam(-1e-3), "learning_rate", "-0.001"),
    (lambda: gx.adam(1e-3, b1=1.0), "b1", "1.0"),
    (lambda: gx.adam(1e-3, b1=-0.1), "b1", "-0.1"),
    (lambda: gx.adam(1e-3, b2=1.5), "b2", "1.5"),
    (lambda: gx.adam(1e-3, eps=-1e-8), "eps", "-1e-08"),
    (lambda: gx.adam(1e-3, eps_root=-1.0), "eps_root", "-1.0"),
    (lambda: gx.adam(1e-3, b1=True), "b1", "True"),
    (lambda: gx.adamw(1e-3, weight_decay=-0.1), "weight_decay", "-0.1"),
    (lambda: gx.adamw(1e-3, b1=2.0), "b1", "2.0"),
    (lambda: gx.adamax(1e-3, b2=1.0), "b2", "1.0"),
    (lambda: gx.nadam(1e-3, momentum_decay=-0.004), "momentum_decay", "-0.004"),
    (lambda: gx.nadam(-1.0), "learning_rate", "-1.0"),
    (lambda: gx.amsgrad(1e-3, eps=-1.0), "eps", "-1.0"),
    (lambda: gx.radam(1e-3, threshold=3.0), "threshold", "3.0"),
    (lambda: gx.radam(1e-3, b1=1.0), "b1", "1.0"),
    (lambda: gx.sgd(-0.1), "learning_rate", "-0.1"),
    (lambda: gx.sgd(0.1, momentum=1.0), "momentum", "1.0"),
    (lambda: gx.sgd(0.1, momentum=-0.5), "momentum", "-0.5"),
    (lambda: gx.sgd(0.1, 0.9, nesterov=True, dampening=0.1), "dampening", "0.1"),
    (lambda: gx.sgd(0.1, nesterov=True), "momentum", "0"),
    (lambda: gx.sgd(0.1, 0.9, dampening=1.5), "dampening", "1.5"),
    (lambda: gx.sgd(0.1, weight_decay=-1e-4), "weight_decay", "-0.0001"),
    (lambda: gx.sgdw(0.1, weight_decay=-1e-4), "weight_decay", "-0.0001"),
    (lambda: gx.sgdw(0.1, momentum=1.5), "momentum", "1.5"),
    (lambda: gx.sgdw(0.1, 0.0, nesterov=True), "momentum", ""),
    (lambda: gx.adagrad(0.1, eps=-1.0), "eps", "-1.0"),
    (lambda: gx.adagrad(0.1, initial_accumulator_value=-0.1), "initial_accumulator_value",
     "-0.1"),
    (lambda: gx.adagrad(-0.1), "learning_rate", "-0.1"),
    (lambda: gx.adadelta(rho=1.0), "rho", "1.0"),
    (lambda: gx.adadelta(eps=-1e-6), "eps", "-1e-06"),
    (lambda: gx.rmsprop(0.1, decay=1.0), "decay", "1.0"),
    (lambda: gx.rmsprop(0.1, eps=-1e-8), "eps", "-1e-08"),
    (lambda: gx.rmsprop(0.1, momentum=-0.9), "momentum", "-0.9"),
    (lambda: gx.rmsprop(0.1, nesterov=True), "momentum", ""),
    (lambda: gx.powersign(0.1, base=0.0), "base", "0.0"),
    (lambda: gx.powersign(0.1, beta=1.0), "beta", "1.0"),
    (lambda: gx.addsign(0.1, alpha=-1.0), "alpha", "-1.0"),
    (lambda: gx.addsign(0.1, decay_fn=3.0), "decay_fn", "3.0"),
    (lambda: gx.noisy_sgd(0.1, eta=-0.01), "eta", "-0.01"),
    (lambda: gx.noisy_sgd(0.1, gamma=-0.55), "gamma", "-0.55"),
    (lambda: gx.noisy_sgd(-0.1), "learning_rate", "-0.1"),
    (lambda: gx.scale_by_momentum(0.9, ema=True, dampening=0.5), "dampening", ""),
    (lambda: gx.bias_correction(1.0), "decay", "1.0"),
    (lambda: gx.scale_by_rms(state_dtype=jnp.int32), "state_dtype", "int32"),
    (lambda: gx.decoupled_weight_decay(-1.0), "rate", "-1.0"),
]


@pytest.mark.parametrize("build,name,value", BAD, ids=[f"{n}={v}" for _, n, v in BAD])
def test_bad_hyperparameters_raise(build, name, value):
  with pytest.raises(ValueError) as info:
    build()
  message = str(info.value)
  assert name in message and value in message, message


NEEDS_PARAMS = {
    "adamw": gx.adamw(1e-3),
    "sgdw": gx.sgdw(1e-3),
    "sgd_weight_decay": gx.sgd(1e-3, weight_decay=1e-4),
    "add_l2_penalty": gx.add_l2_penalty(1e-4),
    "decoupled_weight_decay": gx.decoupled_weight_decay(1e-4),
}


@pytest.mark.parametrize("name", sorted(NEEDS_PARAMS))
def test_missing_params_is_a_clear_error(name):
  tx = NEEDS_PARAMS[name]
  params = {"w": jnp.ones([2])}
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(params, state)

