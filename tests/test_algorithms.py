"""Every algorithm of API.md §3 against a float64 NumPy reference written from
docs/ALGORITHMS.md.

Each case runs the same 100 random gradients on a small multi-leaf tree (nested dicts, a
scalar leaf) through gradxform in float32 (one `jax.jit` of a `lax.scan` per configuration)
and through the reference in float64; the final parameters agree to |Δ| ≤ 2e-6 + 2e-6 |θ|.
Also here: Optax as an outside oracle where its convention is ours (and checks that the
documented differences are real), and jit / no-jit / pmap agreement with `chex.variants`.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as R
from absl.testing import parameterized

import gradxform as gx

STEPS = 100
# float32 gradxform vs the float64 reference after 100 steps, measured on all cases with XLA's
# default CPU ISA, `XLA_FLAGS=--xla_cpu_max_isa=AVX2` (identical numbers) and `=SSE4_2`: at most
# 4.8e-6 absolute, on runs whose |θ| reaches 11 (SGD with momentum), and never more than 8.6e-7
# of a case's largest |θ| — a few float32 ulps (1.2e-7 at 1) summed over 100 rounded updates.
# Relative to |θ|: median case 6.5e-7, at most 8.5e-6 where |θ| ≥ 0.1, but up to 6.6e-4 on a
# coordinate that ends at 7e-4, which keeps the absolute rounding of its larger past: no
# relative bound holds there, hence the atol. |Δ| ≤ 2e-6 + 2e-6 |θ| uses at most 39% of its
# allowance on any coordinate on the three ISAs (sgd_dampening; most cases under 20%), and 3%
# in the 3-step jit / no-jit / pmap variants. (It was rtol 1e-5: 5x looser than needed.)
RTOL, ATOL = 2e-6, 2e-6

SHAPES = {"dense": {"kernel": (3, 4), "bias": (4,)}, "gain": (), "conv": {"kernel": (2, 2, 3)}}
# Decay kernels only (the usual "no decay on biases and gains").
MASK = {"dense": {"kernel": True, "bias": False}, "gain": False, "conv": {"kernel": True}}


def mask_fn(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "kernel" in jax.tree_util.keystr(path), params)


def make_problem(steps=STEPS, seed=0, shapes=SHAPES, dtype=np.float32):
  """Initial parameters and `steps` stacked gradients (normal draws), in `dtype`."""
  rng = np.random.default_rng(seed)
  is_shape = lambda x: isinstance(x, tuple)
  params = jax.tree.map(lambda s: rng.normal(size=s).astype(dtype), shapes, is_leaf=is_shape)
  grads = jax.tree.map(lambda s: rng.normal(size=(steps,) + s).astype(dtype), shapes,
                       is_leaf=is_shape)
  return params, grads


def at(tree, i):
  """Row `i` of every leaf of a stacked tree."""
  return jax.tree.map(lambda x: x[i], tree)


def flat_grads(grads, steps):
  """The stacked gradient tree as a [steps, n] float64 array for the references."""
  return np.stack([R.flatten(at(grads, i)) for i in range(steps)])


def _run(tx, params, grads):
  def body(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p)
    return (gx.apply_updates(p, u), s), None

  (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), grads)
  return params


#: `run_gx(tx, params, grads)`: the final parameters after one update per gradient row.
#: `tx` is static: gradxform transforms hash by value, so equal configs share one compile.
run_gx = jax.jit(_run, static_argnums=0)


def reference_run(ref, params, grads):
  steps = jax.tree.leaves(grads)[0].shape[0]
  out = R.run(ref, R.flatten(params), flat_grads(grads, steps))
  return R.unflatten(params, out)


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
  for path, a in jax.tree_util.tree_flatten_with_path(actual)[0]:
    e = expected
    for k in path:
      e = e[k.key]
    np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


# --- schedules and sign-decay functions, written twice: jnp for gradxform, Python for NumPy --
def lr_schedule_jnp(step):
  return 0.02 * 0.98 ** step


def lr_schedule_np(step):
  return 0.02 * 0.98 ** step


def linear_decay_jnp(step, T=60.0):
  return jnp.maximum(0.0, (T - jnp.minimum(step, T)) / T)


def cosine_decay_jnp(step, T=80.0, periods=0.5):
  return 0.5 * (1 + jnp.cos(jnp.pi * 2 * periods * jnp.minimum(step, T) / T))


MASK_FLAT = R.flatten(jax.tree.map(lambda m, s: np.full(s, float(m)), MASK, SHAPES,
                                   is_leaf=lambda x: isinstance(x, tuple)))

# id -> (gradxform optimizer, NumPy reference factory). Every convention flag appears, with
# eps / eps_root large enough that the other convention misses the tolerance by 80x or more
# (eps = 1e-8 next to gradients of size 1 would let either form pass).
CASES = {
    # SGD family
    "sgd": (gx.sgd(0.05), lambda: R.SGD(0.05)),
    "sgd_momentum": (gx.sgd(0.05, 0.9), lambda: R.SGD(0.05, 0.9)),
    "sgd_dampening": (gx.sgd(0.05, 0.9, dampening=0.3), lambda: R.SGD(0.05, 0.9, dampening=0.3)),
    "sgd_nesterov": (gx.sgd(0.05, 0.8, nesterov=True), lambda: R.SGD(0.05, 0.8, nesterov=True)),
    "sgd_l2": (gx.sgd(0.05, 0.9, weight_decay=0.01),
               lambda: R.SGD(0.05, 0.9, weight_decay=0.01)),
    "sgd_l2_nomomentum": (gx.sgd(0.05, weight_decay=0.02), lambda: R.SGD(0.05, weight_decay=0.02)),
    "sgd_schedule": (gx.sgd(lr_schedule_jnp, 0.9), lambda: R.SGD(lr_schedule_np, 0.9)),
    "sgdw": (gx.sgdw(0.05), lambda: R.SGDW(0.05)),
    "sgdw_nesterov": (gx.sgdw(0.05, 0.8, nesterov=True, weight_decay=0.01),
                      lambda: R.SGDW(0.05, 0.8, nesterov=True, weight_decay=0.01)),
    "sgdw_nomomentum_mask": (gx.sgdw(0.05, 0.0, weight_decay=0.05, mask=MASK),
                             lambda: R.SGDW(0.05, 0.0, weight_decay=0.05, mask=MASK_FLAT)),
    # Adaptive family
    "adagrad": (gx.adagrad(0.1), lambda: R.Adagrad(0.1)),
    "adagrad_torch": (gx.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-3, eps_in_sqrt=False),
                      lambda: R.Adagrad(0.1, 0.1, 1e-3, eps_in_sqrt=False)),
    "adagrad_init_eps": (gx.adagrad(0.1, initial_accumulator_value=0.5, eps=1e-2),
                         lambda: R.Adagrad(0.1, 0.5, 1e-2)),
    "adadelta": (gx.adadelta(), lambda: R.Adadelta()),
    "adadelta_2": (gx.adadelta(0.5, rho=0.95, eps=1e-4), lambda: R.Adadelta(0.5, 0.95, 1e-4)),
    "rmsprop": (gx.rmsprop(0.01), lambda: R.RMSprop(0.01)),
    "rmsprop_torch": (gx.rmsprop(0.01, 0.99, 1e-3, eps_in_sqrt=False),
                      lambda: R.RMSprop(0.01, 0.99, 1e-3, eps_in_sqrt=False)),
    "rmsprop_centered": (gx.rmsprop(0.01, 0.9, 1e-4, centered=True),
                         lambda: R.RMSprop(0.01, 0.9, 1e-4, centered=True)),
    "rmsprop_centered_momentum_torch": (
        gx.rmsprop(0.01, 0.95, 1e-3, eps_in_sqrt=False, centered=True, momentum=0.8),
        lambda: R.RMSprop(0.01, 0.95, 1e-3, eps_in_sqrt=False, centered=True, momentum=0.8)),
    "rmsprop_nesterov": (gx.rmsprop(0.01, momentum=0.9, nesterov=True),
                         lambda: R.RMSprop(0.01, momentum=0.9, nesterov=True)),
    "rmsprop_nesterov_torch_eps": (
        gx.rmsprop(0.01, 0.99, 1e-3, eps_in_sqrt=False, momentum=0.7, nesterov=True),
        lambda: R.RMSprop(0.01, 0.99, 1e-3, eps_in_sqrt=False, momentum=0.7, nesterov=True)),
    # Adam family
    "adam": (gx.adam(0.01), lambda: R.Adam(0.01)),
    "adam_eps_root": (gx.adam(0.01, 0.8, 0.99, 1e-3, eps_root=1e-2),
                      lambda: R.Adam(0.01, 0.8, 0.99, 1e-3, eps_root=1e-2)),
    "adam_schedule": (gx.adam(lr_schedule_jnp), lambda: R.Adam(lr_schedule_np)),
    "adamw": (gx.adamw(0.01), lambda: R.Adam(0.01, weight_decay=1e-2)),
    "adamw_mask_tree": (gx.adamw(0.01, 0.85, 0.995, 1e-6, weight_decay=0.1, mask=MASK),
                        lambda: R.Adam(0.01, 0.85, 0.995, 1e-6, weight_decay=0.1,
                                       mask=MASK_FLAT)),
    "adamw_mask_fn": (gx.adamw(0.01, weight_decay=0.05, mask=mask_fn),
                      lambda: R.Adam(0.01, weight_decay=0.05, mask=MASK_FLAT)),
    "adamax": (gx.adamax(0.01), lambda: R.Adamax(0.01)),
    "adamax_2": (gx.adamax(0.01, 0.8, 0.99, 0.05), lambda: R.Adamax(0.01, 0.8, 0.99, 0.05)),
    "adamax_torch": (gx.adamax(0.01, 0.8, 0.99, 0.05, eps_in_max=True),
                     lambda: R.Adamax(0.01, 0.8, 0.99, 0.05, eps_in_max=True)),
    "nadam": (gx.nadam(0.01), lambda: R.Nadam(0.01)),
    "nadam_2": (gx.nadam(0.01, 0.8, 0.99, 1e-3), lambda: R.Nadam(0.01, 0.8, 0.99, 1e-3)),
    "nadam_torch": (gx.nadam(0.01, momentum_decay=0.004),
                    lambda: R.Nadam(0.01, momentum_decay=0.004)),
    "nadam_torch_2": (gx.nadam(0.01, 0.85, 0.995, 1e-4, momentum_decay=0.01),
                      lambda: R.Nadam(0.01, 0.85, 0.995, 1e-4, momentum_decay=0.01)),
    "amsgrad": (gx.amsgrad(0.01), lambda: R.AMSGrad(0.01)),
    "amsgrad_2": (gx.amsgrad(0.01, 0.8, 0.99, 1e-3), lambda: R.AMSGrad(0.01, 0.8, 0.99, 1e-3)),
    "amsgrad_paper": (gx.amsgrad(0.01, 0.8, 0.99, 1e-3, bias_correction=False),
                      lambda: R.AMSGrad(0.01, 0.8, 0.99, 1e-3, bias_correction=False)),
    "radam": (gx.radam(0.01), lambda: R.RAdam(0.01)),
    "radam_2": (gx.radam(0.01, 0.8, 0.99, 1e-3, threshold=4.5),
                lambda: R.RAdam(0.01, 0.8, 0.99, 1e-3, threshold=4.5)),
    # Sign agreement
    "powersign": (gx.powersign(0.01), lambda: R.PowerSign(0.01)),
    "powersign_decay": (gx.powersign(0.01, base=2.0, beta=0.8, decay_fn=linear_decay_jnp),
                        lambda: R.PowerSign(0.01, 2.0, 0.8, R.linear_sign_decay(60))),
    "addsign": (gx.addsign(0.01), lambda: R.AddSign(0.01)),
    "addsign_decay": (gx.addsign(0.01, alpha=0.5, beta=0.95, decay_fn=cosine_decay_jnp),
                      lambda: R.AddSign(0.01, 0.5, 0.95, R.cosine_sign_decay(80))),
}


@pytest.fixture(scope="module")
def problem():
  return make_problem()


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_numpy_reference(name, problem):
  params, grads = problem
  tx, make_ref = CASES[name]
  got = run_gx(tx, params, grads)
  assert_close(got, reference_run(make_ref(), params, grads))
  # The run moved the parameters (a no-op optimizer would pass trivially otherwise).
  moved = max(float(np.max(np.abs(np.asarray(a) - b)))
              for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True))
  assert moved > 1e-3


def test_every_algorithm_has_cases():
  algorithms = ["sgd", "sgdw", "adagrad", "adadelta", "rmsprop", "adam", "adamw", "adamax",
                "nadam", "amsgrad", "radam", "powersign", "addsign"]
  for a in algorithms:
    assert sum(1 for c in CASES if c == a or c.startswith(a + "_")) >= 2, a


# ---------------------------------------------------------------------------------------------
# Optax as an outside oracle, where its convention is ours.

OPTAX_SAME = {
    "adam": (gx.adam(0.01), optax.adam(0.01)),
    "adam_eps_root": (gx.adam(0.01, 0.8, 0.99, 1e-3, eps_root=1e-2),
                      optax.adam(0.01, 0.8, 0.99, 1e-3, eps_root=1e-2)),
    "adamw": (gx.adamw(0.01, weight_decay=0.1), optax.adamw(0.01, weight_decay=0.1)),
    "adamw_mask": (gx.adamw(0.01, weight_decay=0.1, mask=MASK),
                   optax.adamw(0.01, weight_decay=0.1, mask=MASK)),
    "sgd_momentum": (gx.sgd(0.05, 0.9), optax.sgd(0.05, 0.9)),
    "sgd_nesterov": (gx.sgd(0.05, 0.8, nesterov=True), optax.sgd(0.05, 0.8, nesterov=True)),
    "sgd_l2": (gx.sgd(0.05, 0.9, weight_decay=0.01),
               optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.05, 0.9))),
    # optax's rmsprop also puts eps inside the root by default.
    "rmsprop": (gx.rmsprop(0.01, 0.9, 1e-4), optax.rmsprop(0.01, 0.9, 1e-4)),
    "rmsprop_torch_centered_momentum": (
        gx.rmsprop(0.01, 0.95, 1e-3, eps_in_sqrt=False, centered=True, momentum=0.8),
        optax.rmsprop(0.01, 0.95, 1e-3, eps_in_sqrt=False, centered=True, momentum=0.8)),
    "rmsprop_nesterov": (gx.rmsprop(0.01, momentum=0.9, nesterov=True),
                         optax.rmsprop(0.01, momentum=0.9, nesterov=True)),
    # optax's adamax is torch's form (eps inside the max).
    "adamax": (gx.adamax(0.01, eps=1e-3, eps_in_max=True), optax.adamax(0.01, eps=1e-3)),
    "nadam": (gx.nadam(0.01), optax.nadam(0.01)),
    # optax's defaults bias-correct v before the max; with both corrections off it is Reddi's.
    "amsgrad_paper": (gx.amsgrad(0.01, eps=1e-3, bias_correction=False),
                      optax.amsgrad(0.01, eps=1e-3, bias_correction_mu=False,
                                    bias_correction_nu=False)),
    "adadelta": (gx.adadelta(1.0), optax.adadelta(1.0)),
    # optax's adagrad: eps inside the root; its defaults are G_0 = 0.1, eps = 1e-7.
    "adagrad": (gx.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-7),
                optax.adagrad(0.1)),
    "adagrad_paper_defaults": (gx.adagrad(0.1),
                               optax.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-10)),
    "sgdw": (gx.sgdw(0.05, 0.9, weight_decay=0.01),
             optax.chain(optax.trace(0.9), optax.add_decayed_weights(0.01),
                         optax.scale_by_learning_rate(0.05))),
    # optax's radam puts eps on √v̂ (ours on √v): the two agree exactly when eps = 0.
    "radam_eps0": (gx.radam(0.01, eps=0.0), optax.radam(0.01, eps=0.0)),
}

# Same-looking settings whose convention differs (BUILD_NOTES.md, "Conventions that differ").
OPTAX_DIFFERENT = {
    "adamax_eps": (gx.adamax(0.01, eps=1e-2), optax.adamax(0.01, eps=1e-2)),
    "radam_eps": (gx.radam(0.01, eps=1e-2), optax.radam(0.01, eps=1e-2)),
    "amsgrad_nu_correction": (gx.amsgrad(0.01, b2=0.9), optax.amsgrad(0.01, b2=0.9)),
    "adagrad_defaults": (gx.adagrad(0.1), optax.adagrad(0.1)),
    "rmsprop_torch_eps": (gx.rmsprop(0.01, 0.9, 1e-2, eps_in_sqrt=False),
                          optax.rmsprop(0.01, 0.9, 1e-2)),
}


def shapes_for(name):
  """The test tree where a mask needs it; else one leaf (the tree handling is checked against
  the references above, and one leaf compiles in a third of the time)."""
  return SHAPES if "mask" in name else {"x": (29,)}


@pytest.mark.parametrize("name", sorted(OPTAX_SAME))
def test_matches_optax(name):
  """Run both in float64, so that a convention difference cannot hide in float32 rounding.

  (In float32 Optax computes `1 − β^t` and RAdam's `ρ_t` with plain powers: its RAdam step
  is 1e-2 relative off the float64 value at t = 6; see BUILD_NOTES.md, "Adam family".)
  """
  ours, theirs = OPTAX_SAME[name]
  with jax.enable_x64(True):
    params, grads = make_problem(dtype=np.float64, shapes=shapes_for(name))
    got = run_gx(ours, params, grads)
    expected = jax.tree.map(np.asarray, run_gx(theirs, params, grads))
    assert jax.tree.leaves(got)[0].dtype == jnp.float64
  assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPTAX_DIFFERENT))
def test_documented_optax_differences_are_real(name):
  params, grads = make_problem(shapes=shapes_for(name))
  ours, theirs = OPTAX_DIFFERENT[name]
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(run_gx(ours, params, grads))])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(run_gx(theirs, params, grads))])
  assert np.max(np.abs(a - b) / (np.abs(b) + 1e-3)) > 1e-4


# ---------------------------------------------------------------------------------------------
# jit, no jit and pmap give the same result (chex variants). Short runs: the eager variant
# dispatches op by op.

VARIANT_STEPS = 3
VARIANT_CASES = ["sgd_nesterov", "sgd_dampening", "sgdw_nomomentum_mask", "adagrad_torch",
                 "adadelta", "rmsprop_centered_momentum_torch", "adam_schedule",
                 "adamw_mask_fn", "adamax_torch", "nadam", "nadam_torch", "amsgrad", "radam",
                 "powersign_decay", "addsign_decay"]


class VariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  @parameterized.parameters(*VARIANT_CASES)
  def test_same_result(self, name):
    tx, make_ref = CASES[name]
    params, grads = make_problem(VARIANT_STEPS, seed=1)

    def run(params, grads):
      state = tx.init(params)
      for i in range(VARIANT_STEPS):
        updates, state = tx.update(at(grads, i), state, params)
        params = gx.apply_updates(params, updates)
      return params

    got = self.variant(run, n_devices=2)(params, grads)
    assert_close(got, reference_run(make_ref(), params, grads))


@pytest.mark.devices(2)
def test_noisy_sgd_variants_agree():
  """noisy_sgd draws its noise from the step, so jit, eager and pmap draw the same."""
  tx = gx.noisy_sgd(0.1, eta=0.5)
  params, grads = make_problem(2, seed=2)

  def run(params, grads):
    state = tx.init(params)
    for i in range(2):
      u, state = tx.update(at(grads, i), state, params)
      params = gx.apply_updates(params, u)
    return params

  eager = run(params, grads)
  jitted = jax.jit(run)(params, grads)
  rep = lambda x: jnp.broadcast_to(x, (2,) + x.shape)
  pmapped = jax.pmap(run, devices=jax.devices()[:2])(jax.tree.map(rep, params),
                                                       jax.tree.map(rep, grads))
  for a, b, c in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), jax.tree.leaves(pmapped),
                     strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a, c[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(c[0], c[1])


def test_reference_sign_decays_match_api_formulas():
  """Sanity of the reference's own f(t): linear hits 0 at T, cosine is 1 then 0 at T."""
  lin, cos = R.linear_sign_decay(10), R.cosine_sign_decay(10)
  assert lin(0) == 1.0 and lin(10) == 0.0 and lin(20) == 0.0 and lin(5) == 0.5
  assert cos(0) == 1.0 and abs(cos(10)) < 1e-15 and math.isclose(cos(5), 0.5)
  for s in range(0, 90, 7):
    assert math.isclose(float(linear_decay_jnp(jnp.int32(s))), R.linear_sign_decay(60)(s),
                        rel_tol=1e-6, abs_tol=1e-7)
    assert math.isclose(float(cosine_decay_jnp(jnp.int32(s))), R.cosine_sign_decay(80)(s),
                        rel_tol=1e-6, abs_tol=1e-6)
