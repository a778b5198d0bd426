"""Complex parameters: every optimizer treats a complex entry as two reals, as torch.optim does.

The oracle is the float64 NumPy reference (tests/reference.py) run on the real view of the
tree, built here with NumPy (`[z.real, z.imag]` on a trailing axis, torch's `view_as_real`):
so Adam's second moment of `z = a + ib` is `(E[a²], E[b²])`, not `E[z²]` (a complex square,
which is what a plain `g * g` computes and what gave wrong results silently before). The
stored torch trajectories of complex parameters are compared in test_torch_optim.py.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as R
from test_algorithms import run_gx

import gradxform as gx

STEPS = 30


def _problem(dtype=np.complex128, seed=0):
  """A tree with a complex matrix, a real vector and a complex scalar; `STEPS` gradients."""
  rng = np.random.default_rng(seed)
  cplx = lambda *s: (rng.normal(size=s) + 1j * rng.normal(size=s)).astype(dtype)
  real = np.float64 if dtype == np.complex128 else np.float32
  params = {"z": cplx(3, 4), "w": rng.normal(size=5).astype(real), "s": cplx()}
  grads = {"z": cplx(STEPS, 3, 4), "w": rng.normal(size=(STEPS, 5)).astype(real),
           "s": cplx(STEPS)}
  return params, grads


def _real_view(tree):
  """NumPy's view of each complex leaf as its (real, imaginary) pairs on a trailing axis."""
  return jax.tree.map(
      lambda x: np.stack([x.real, x.imag], -1) if np.iscomplexobj(x) else np.asarray(x), tree)


def _reference(ref, params, grads):
  """The reference run on the real view, returned as complex leaves again."""
  p_real, g_real = _real_view(params), _real_view(grads)
  rows = [jax.tree.map(lambda x, i=i: x[i], g_real) for i in range(STEPS)]
  flat_g = np.stack([R.flatten(row) for row in rows])
  out = R.unflatten(p_real, R.run(ref, R.flatten(p_real), flat_g))
  return jax.tree.map(
      lambda o, p: o[..., 0] + 1j * o[..., 1] if np.iscomplexobj(p) else o, out, params)


CASES = {
    "sgd_momentum": (gx.sgd(0.05, 0.9, weight_decay=0.01),
                     lambda: R.SGD(0.05, 0.9, weight_decay=0.01)),
    "sgd_nesterov": (gx.sgd(0.05, 0.8, nesterov=True), lambda: R.SGD(0.05, 0.8, nesterov=True)),
    "sgdw": (gx.sgdw(0.05, 0.9, weight_decay=0.1), lambda: R.SGDW(0.05, 0.9, weight_decay=0.1)),
    "adagrad": (gx.adagrad(0.1), lambda: R.Adagrad(0.1)),
    "adagrad_torch": (gx.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-3, eps_in_sqrt=False),
                      lambda: R.Adagrad(0.1, 0.1, 1e-3, eps_in_sqrt=False)),
    "adadelta": (gx.adadelta(0.5, rho=0.95, eps=1e-4), lambda: R.Adadelta(0.5, 0.95, 1e-4)),
    "rmsprop_centered_momentum": (
        gx.rmsprop(0.01, 0.95, 1e-3, eps_in_sqrt=False, centered=True, momentum=0.8),
        lambda: R.RMSprop(0.01, 0.95, 1e-3, eps_in_sqrt=False, centered=True, momentum=0.8)),
    "adam": (gx.adam(0.01, 0.8, 0.99, 1e-3, eps_root=1e-2),
             lambda: R.Adam(0.01, 0.8, 0.99, 1e-3, eps_root=1e-2)),
    "adamw": (gx.adamw(0.01, weight_decay=0.1), lambda: R.Adam(0.01, weight_decay=0.1)),
    "adamax": (gx.adamax(0.01, 0.8, 0.99, 0.05), lambda: R.Adamax(0.01, 0.8, 0.99, 0.05)),
    "nadam_torch": (gx.nadam(0.01, 0.85, 0.995, 1e-4, momentum_decay=0.01),
                    lambda: R.Nadam(0.01, 0.85, 0.995, 1e-4, momentum_decay=0.01)),
    "amsgrad": (gx.amsgrad(0.01, 0.8, 0.99, 1e-3), lambda: R.AMSGrad(0.01, 0.8, 0.99, 1e-3)),
    "radam": (gx.radam(0.01, 0.8, 0.99, 1e-3), lambda: R.RAdam(0.01, 0.8, 0.99, 1e-3)),
    "powersign": (gx.powersign(0.01, base=2.0, beta=0.8), lambda: R.PowerSign(0.01, 2.0, 0.8)),
    "addsign": (gx.addsign(0.01, alpha=0.5, beta=0.95), lambda: R.AddSign(0.01, 0.5, 0.95)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_complex_entry_is_two_reals(name):
  tx, ref = CASES[name]
  params, grads = _problem()
  with jax.enable_x64(True):
    got = run_gx(tx, jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, grads))
    assert got["z"].dtype == jnp.complex128 and got["w"].dtype == jnp.float64
  chex.assert_trees_all_close(jax.tree.map(np.asarray, got), _reference(ref(), params, grads),
                              rtol=1e-11, atol=1e-13)


def test_complex_differs_from_squaring_the_complex_gradient():
  """The check above can tell the conventions apart: Adam with `v ← β2 v + (1−β2)|g|²` (the
  magnitude convention) lands elsewhere than two-reals Adam."""
  params, grads = _problem()
  z, g = params["z"].copy(), grads["z"]
  m = np.zeros_like(z)
  v = np.zeros(z.shape)
  for t in range(1, STEPS + 1):
    m = 0.9 * m + 0.1 * g[t - 1]
    v = 0.999 * v + 0.001 * np.abs(g[t - 1]) ** 2
    z = z - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
  with jax.enable_x64(True):
    got = np.asarray(run_gx(gx.adam(0.01), jax.tree.map(jnp.asarray, params),
                            jax.tree.map(jnp.asarray, grads))["z"])
  expected = _reference(R.Adam(0.01), params, grads)["z"]
  np.testing.assert_allclose(got, expected, rtol=1e-11)
  assert np.max(np.abs(got - z)) > 1e-3


def test_complex64_in_float32():
  params, grads = _problem(np.complex64, seed=1)
  got = run_gx(gx.adam(0.01), params, grads)
  assert got["z"].dtype == jnp.complex64
  chex.assert_trees_all_close(jax.tree.map(np.asarray, got),
                              _reference(R.Adam(0.01), params, grads), rtol=1e-5, atol=2e-6)


def test_state_of_a_complex_leaf_is_its_real_view():
  """Moments of a complex leaf are stored as real arrays with a trailing axis of 2 (real and
  imaginary parts), like `torch.view_as_real` of torch's complex state."""
  params = {"z": jnp.ones((3, 4), jnp.complex64), "w": jnp.ones(5)}
  grads = {"z": jnp.full((3, 4), 3 - 4j, jnp.complex64), "w": jnp.full(5, 2.0)}
  tx = gx.adam(0.1)
  _, state = tx.update(grads, tx.init(params), params)
  moments = [x for x in jax.tree.leaves(state) if x.ndim > 0]
  shapes = sorted(x.shape for x in moments)
  assert shapes == [(3, 4, 2), (3, 4, 2), (5,), (5,)]
  # First step: m = (1−β1) g, v = (1−β2) g² per part: (0.3, −0.4) and (0.009, 0.016).
  m_z, v_z = [x for x in moments if x.shape == (3, 4, 2)]
  np.testing.assert_allclose(np.asarray(m_z)[0, 0], [0.3, -0.4], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(v_z)[0, 0], [0.009, 0.016], rtol=1e-6)


def test_complex_primitive_alone_and_in_wrappers():
  """A primitive used on its own, and optimizers inside masked / inject_hyperparams /
  apply_if_finite, treat complex leaves the same way."""
  params, grads = _problem()
  with jax.enable_x64(True):
    p, g = jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, grads)
    rms = gx.chain(gx.scale_by_rms(0.9, 1e-3, eps_in_sqrt=False), gx.scale(-0.01))
    got_rms = run_gx(rms, p, g)
    injected = gx.inject_hyperparams(gx.adam, hyperparam_dtype=jnp.float64)(learning_rate=0.01)
    got_inject = run_gx(injected, p, g)
    got_finite = run_gx(gx.apply_if_finite(gx.adam(0.01), max_consecutive_errors=3), p, g)
    got_masked = run_gx(gx.masked(gx.adam(0.01), {"z": True, "w": False, "s": True}), p, g)
  chex.assert_trees_all_close(
      jax.tree.map(np.asarray, got_rms),
      _reference(R.RMSprop(0.01, 0.9, 1e-3, eps_in_sqrt=False), params, grads), rtol=1e-11)
  adam_ref = _reference(R.Adam(0.01), params, grads)
  for got in (got_inject, got_finite):
    chex.assert_trees_all_close(jax.tree.map(np.asarray, got), adam_ref, rtol=1e-11)
  # masked: the masked-out leaf gets the raw gradient as its update (θ + Σ g).
  np.testing.assert_allclose(np.asarray(got_masked["z"]), adam_ref["z"], rtol=1e-11)
  np.testing.assert_allclose(np.asarray(got_masked["w"]), params["w"] + grads["w"].sum(0),
                             rtol=1e-11)


@pytest.mark.parametrize("name", ["lion", "adabelief", "yogi", "adamaxw", "nadamw"])
def test_modern_optimizers_on_complex_equal_optax_on_the_real_view(name):
  """Optax run on NumPy's real view of the tree (torch's convention, built here) is the oracle
  for gradxform run on the complex tree."""
  import optax
  params, grads = _problem()
  p_real, g_real = _real_view(params), _real_view(grads)
  ours, theirs = getattr(gx, name)(0.01), getattr(optax, name)(0.01)
  with jax.enable_x64(True):
    got = run_gx(ours, jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, grads))
    p = jax.tree.map(jnp.asarray, p_real)
    state = theirs.init(p)
    for i in range(STEPS):
      u, state = theirs.update(jax.tree.map(lambda x, i=i: jnp.asarray(x[i]), g_real), state, p)
      p = optax.apply_updates(p, u)
  expected = jax.tree.map(
      lambda o, z: np.asarray(o)[..., 0] + 1j * np.asarray(o)[..., 1] if np.iscomplexobj(z)
      else np.asarray(o), p, params)
  chex.assert_trees_all_close(jax.tree.map(np.asarray, got), expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Functions of the parameters (SAM's grad_fn, a line search's value_fn) see complex params.

_A = np.linspace(0.5, 2.0, 12).reshape(3, 4)


def _f_real(x):
  """A smooth objective of the real view `x` (shape (3, 4, 2)): quadratic plus a sine."""
  return jnp.sum(0.5 * _A[..., None] * (x - 0.3) ** 2 + 0.2 * jnp.sin(2.0 * x))


def _to_real(z):
  return jnp.stack([z.real, z.imag], -1)


def _f_complex(z):
  """The same objective written for the complex parameters `z` (shape (3, 4))."""
  return _f_real(_to_real(z))


def _grad_complex(z):
  """The complex gradient in torch's convention: real view = ∇ of `_f_real`."""
  g = jax.grad(_f_real)(_to_real(z))
  return jax.lax.complex(g[..., 0], g[..., 1])


def test_lbfgs_line_search_value_fn_on_complex_equals_optax_on_the_real_view():
  """`value_fn` written for complex params: gx.lbfgs (zoom search) on `z` takes the steps
  optax.lbfgs takes on the real view, at every iterate (float64)."""
  import optax
  with jax.enable_x64(True):
    z0 = jnp.asarray((np.arange(12.0).reshape(3, 4) - 5.0) / 4.0 * (1 + 0.5j))
    tx, ox = gx.lbfgs(), optax.lbfgs()

    # Each side's step jitted once (eagerly, every iteration would recompile the line
    # search's loops).
    @jax.jit
    def gx_step(z, s):
      g = _grad_complex(z)
      u, s = tx.update(g, s, z, value=_f_complex(z), grad=g, value_fn=_f_complex)
      return gx.apply_updates(z, u), s

    @jax.jit
    def optax_step(x, os_):
      v, g = jax.value_and_grad(_f_real)(x)
      ou, os_ = ox.update(g, os_, x, value=v, grad=g, value_fn=_f_real)
      return optax.apply_updates(x, ou), os_

    z, s = z0, tx.init(z0)
    x, os_ = _to_real(z0), ox.init(_to_real(z0))
    for t in range(8):
      z, s = gx_step(z, s)
      x, os_ = optax_step(x, os_)
      np.testing.assert_allclose(np.asarray(_to_real(z)), np.asarray(x), rtol=1e-10,
                                 atol=1e-12, err_msg=f"step {t + 1}")
    assert float(_f_complex(z)) < 0.5 * float(_f_complex(z0))


def test_sam_grad_fn_on_complex_equals_the_paper_on_the_real_view():
  """`grad_fn` written for complex params: SAM over SGD on `z` equals a NumPy SAM step from
  Foret et al. on the real view (ε = ρ g/‖g‖, θ ← θ − η ∇f(θ + ε))."""
  lr, rho = 0.1, 0.05
  with jax.enable_x64(True):
    z = jnp.asarray((np.arange(12.0).reshape(3, 4) - 5.0) / 4.0 * (1 - 0.7j))
    x = np.asarray(_to_real(z))
    tx = gx.sam(gx.sgd(lr), rho=rho)
    s = tx.init(z)
    for t in range(5):
      u, s = tx.update(_grad_complex(z), s, z, grad_fn=_grad_complex)
      z = gx.apply_updates(z, u)
      g = np.asarray(jax.grad(_f_real)(jnp.asarray(x)))
      eps = rho * g / np.sqrt(np.sum(g * g))
      x = x - lr * np.asarray(jax.grad(_f_real)(jnp.asarray(x + eps)))
      np.testing.assert_allclose(np.asarray(_to_real(z)), x, rtol=1e-12, atol=1e-14,
                                 err_msg=f"step {t + 1}")
