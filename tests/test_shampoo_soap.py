"""Shampoo and SOAP (issue 17): `gx.shampoo`, `gx.soap`, `gx.scale_by_shampoo`, `gx.scale_by_soap`.

Oracle: NumPy float64 loops written from the papers' algorithms (Gupta et al. 2018 with Anil et
al.'s blocking and grafting; Vyas et al. 2024 as the authors' PyTorch code steps), one leaf and
one block at a time with plain slicing (no padding, no batching), in closed loop on a tree with
equal-shape matrices, a 3-D leaf, a leaf with size-1 axis, a matrix larger than the block size
(Shampoo) or than `max_precond_dim` on one axis (SOAP), a vector and a scalar; the refreshes
at steps k, 2k are inside the run. Then: the refresh happens under `lax.cond` only every k-th
step, statistics stay float32 for bfloat16 parameters, one `eigh` per matrix size in the
compiled HLO, one matrix per LAPACK call on CPU (the former deadlock), the contract
(`gradxform.testing`, wrappers, equality by value, validation, checkpoints), and a small real
task (an MLP on sklearn's digits) against Adam.
"""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

import gradxform as gx
import gradxform.testing as gxt

STEPS = 12
RTOL = 1e-8

# --- NumPy references ---------------------------------------------------------------------


def _grad_np(theta, a, c):
  return {k: a[k] * (theta[k] - c[k]) + 0.3 * np.cos(theta[k]) for k in theta}


def _problem(shapes, seed=17):
  rng = np.random.default_rng(seed)
  theta = {k: rng.uniform(-2.0, 2.0, s) for k, s in shapes.items()}
  a = {k: rng.uniform(0.2, 3.0, s) for k, s in shapes.items()}
  c = {k: rng.uniform(-1.0, 1.0, s) for k, s in shapes.items()}
  return theta, a, c


def _unfold(x, axis):
  return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def _mode_product(x, m, axis):
  """`Σ_l M[a, l] x[…, l, …]` on `axis`: M applied to that axis."""
  return np.moveaxis(np.tensordot(m, x, axes=([1], [axis])), 0, axis)


def _np_shampoo(theta0, a, c, steps, lr, b1=0.9, b2=0.999, eps=1e-6, block_size=256,
                every=10, grafting="adam", graft_eps=1e-8, weight_decay=0.0):
  theta = {k: v.copy() for k, v in theta0.items()}
  w2 = 1.0 if b2 == 1.0 else 1.0 - b2
  v = {k: np.zeros_like(x) for k, x in theta.items()}
  m = {k: np.zeros_like(x) for k, x in theta.items()}
  stats, roots = {}, {}
  history = []
  for t in range(steps):
    g = _grad_np(theta, a, c)
    corr2 = 1.0 if b2 == 1.0 else 1.0 - b2 ** (t + 1)
    for k in theta:
      v[k] = b2 * v[k] + w2 * g[k] ** 2
      graft = g[k] if grafting == "sgd" else g[k] / (np.sqrt(v[k] / corr2) + graft_eps)
      sq = tuple(d for d in g[k].shape if d != 1)
      if len(sq) < 2:
        d_leaf = graft
      else:
        gg, aa, out = g[k].reshape(sq), graft.reshape(sq), np.zeros(sq)
        starts = [range(0, d, block_size) for d in sq]
        for corner in itertools.product(*starts):
          sl = tuple(slice(s, s + block_size) for s in corner)
          blk, key = gg[sl], (k, corner)
          if key not in stats:
            stats[key] = [np.zeros((n, n)) for n in blk.shape]
            roots[key] = [np.eye(n) for n in blk.shape]
          for i in range(blk.ndim):
            u = _unfold(blk, i)
            stats[key][i] = b2 * stats[key][i] + w2 * u @ u.T
            if t % every == 0:
              lam, q = np.linalg.eigh(stats[key][i])
              lam = np.maximum(lam, 0.0)
              base = lam + eps * lam.max()
              scale = np.where(base > 0, np.where(base > 0, base, 1.0) ** (-1 / (2 * blk.ndim)),
                               0.0)
              roots[key][i] = (q * scale) @ q.T
          d = blk
          for i in range(blk.ndim):
            d = _mode_product(d, roots[key][i], i)
          if grafting != "none":
            nd = np.linalg.norm(d)
            d = d * (np.linalg.norm(aa[sl]) / nd if nd > 0 else 0.0)
          out[sl] = d
        d_leaf = out.reshape(g[k].shape)
      m[k] = b1 * m[k] + (1 - b1) * d_leaf
      step = m[k] / (1 - b1 ** (t + 1))
      theta[k] = theta[k] - lr * (step + weight_decay * theta[k])
    history.append({k: x.copy() for k, x in theta.items()})
  return history


def _np_soap(theta0, a, c, steps, lr, b1=0.95, b2=0.95, eps=1e-8, weight_decay=0.01,
             shampoo_beta=None, frequency=10, max_dim=10000, correct_bias=True,
             precondition_1d=False):
  theta = {k: x.copy() for k, x in theta0.items()}
  bs = b2 if shampoo_beta is None else shampoo_beta
  m = {k: np.zeros_like(x) for k, x in theta.items()}
  v = {k: np.zeros_like(x) for k, x in theta.items()}
  stats, bases = {}, {}
  history = []

  def axes_of(shape):
    if len(shape) == 0 or (len(shape) == 1 and not precondition_1d):
      return []
    return [i for i, d in enumerate(shape) if 1 < d <= max_dim]

  def rotate(x, qs, back=False):
    for i, q in qs.items():
      x = _mode_product(x, q if back else q.T, i)
    return x

  for t in range(steps):
    g = _grad_np(theta, a, c)
    for k in theta:
      axes = axes_of(g[k].shape)
      if t == 0:
        stats[k] = {i: (1 - bs) * _unfold(g[k], i) @ _unfold(g[k], i).T for i in axes}
        bases[k] = {i: np.linalg.eigh(s)[1][:, ::-1] for i, s in stats[k].items()}
        n = np.zeros_like(g[k])
      else:
        m[k] = b1 * m[k] + (1 - b1) * g[k]
        v[k] = b2 * v[k] + (1 - b2) * rotate(g[k], bases[k]) ** 2
        n = rotate(rotate(m[k], bases[k]) / (np.sqrt(v[k]) + eps), bases[k], back=True)
        if correct_bias:
          n = n * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for i in axes:
          u = _unfold(g[k], i)
          stats[k][i] = bs * stats[k][i] + (1 - bs) * u @ u.T
        if t % frequency == 0:
          for i in axes:
            q, s = bases[k][i], stats[k][i]
            order = np.argsort(-np.diag(q.T @ s @ q), kind="stable")
            v[k] = np.take(v[k], order, axis=i)
            bases[k][i] = np.linalg.qr(s @ q[:, order])[0]
      theta[k] = theta[k] - lr * (n + weight_decay * theta[k])
    history.append({k: x.copy() for k, x in theta.items()})
  return history


# --- gradxform against the references -----------------------------------------------------

# Every statistic is of full rank from the first step (or one short of it, SOAP), where ε is
# small: an eigenvalue that is 0 in exact arithmetic comes out of `eigh` as ±10⁻¹⁶ ‖L‖, and
# (that + ε)^{-1/4} then differs between any two correct implementations when ε is as small;
# and SOAP's eigenbasis of a multiple eigenvalue is any basis of its eigenspace.
SHAMPOO_SHAPES = {"w": (6, 6), "w2": (6, 6), "t": (3, 4, 2), "c": (4, 1, 4), "big": (9, 9),
                  "v": (5,), "s": ()}
SOAP_SHAPES = {"w": (6, 5), "w2": (6, 5), "t": (3, 4, 2), "c": (3, 1, 4), "big": (8, 9),
               "v": (2,), "s": ()}                # v: g gᵀ of rank 1 in 2-D has simple eigenvalues
MASK = lambda p: {k: k != "v" for k in p}

SHAMPOO_CASES = {
    "default": (dict(learning_rate=0.01), dict(lr=0.01)),
    "blocked": (dict(learning_rate=0.02, b1=0.8, b2=0.99, eps=1e-6, block_size=4,
                     precondition_every=5, graft_eps=1e-6, weight_decay=0.1),
                dict(lr=0.02, b1=0.8, b2=0.99, eps=1e-6, block_size=4, every=5, graft_eps=1e-6,
                     weight_decay=0.1)),
    "sum-sgd-graft": (dict(learning_rate=0.05, b2=1.0, eps=1e-4, block_size=4,
                           precondition_every=3, grafting="sgd"),
                      dict(lr=0.05, b2=1.0, eps=1e-4, block_size=4, every=3, grafting="sgd")),
    "no-graft": (dict(learning_rate=1e-3, b1=0.0, b2=0.9, eps=1e-4, block_size=5,
                      precondition_every=4, grafting="none"),
                 dict(lr=1e-3, b1=0.0, b2=0.9, eps=1e-4, block_size=5, every=4,
                      grafting="none")),
}
SOAP_CASES = {
    "default": (dict(learning_rate=3e-3), dict(lr=3e-3)),
    "moved": (dict(learning_rate=0.01, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1,
                   shampoo_beta=0.8, precondition_frequency=4, max_precond_dim=8,
                   correct_bias=False, precondition_1d=True),
              dict(lr=0.01, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1, shampoo_beta=0.8,
                   frequency=4, max_dim=8, correct_bias=False, precondition_1d=True)),
}


def _grad(theta, a, c):
  return jax.tree.map(lambda t, a_, c_: a_ * (t - c_) + 0.3 * jnp.cos(t), theta, a, c)


def _run_closed_loop(tx, theta0, a, c, steps=STEPS):
  def step(carry, _):
    p, s = carry
    u, s = tx.update(_grad(p, a, c), s, p)
    p = gx.apply_updates(p, u)
    return (p, s), p

  _, trajectory = jax.lax.scan(step, (theta0, tx.init(theta0)), None, length=steps)
  return trajectory


_run_closed_loop = jax.jit(_run_closed_loop, static_argnums=(0, 4))   # one compile per config


def _compare(ours, ref, theta0):
  for key in theta0:
    assert ours[key].dtype == np.float64
    moved = np.abs(ours[key][-1] - theta0[key]).max()
    assert moved > 1e-4, f"{key} barely moved ({moved}): the comparison would be weak"
    for t in range(STEPS):
      np.testing.assert_allclose(ours[key][t], ref[t][key], rtol=RTOL, atol=1e-12,
                                 err_msg=f"leaf {key}, step {t + 1}")


@pytest.mark.parametrize("case", list(SHAMPOO_CASES))
def test_shampoo_equals_numpy_reference_float64(case):
  ours_kw, ref_kw = SHAMPOO_CASES[case]
  theta0, a, c = _problem(SHAMPOO_SHAPES)
  with jax.enable_x64(True):
    ours = jax.device_get(_run_closed_loop(gx.shampoo(**ours_kw), theta0, a, c))
  _compare(ours, _np_shampoo(theta0, a, c, STEPS, **ref_kw), theta0)


@pytest.mark.parametrize("case", list(SOAP_CASES))
def test_soap_equals_numpy_reference_float64(case):
  ours_kw, ref_kw = SOAP_CASES[case]
  theta0, a, c = _problem(SOAP_SHAPES)
  with jax.enable_x64(True):
    ours = jax.device_get(_run_closed_loop(gx.soap(**ours_kw), theta0, a, c))
  _compare(ours, _np_soap(theta0, a, c, STEPS, **ref_kw), theta0)


def test_soap_first_step_is_only_the_decay():
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  tx = gx.soap(0.1, weight_decay=0.5)
  u, _ = jax.jit(tx.update)(jax.tree.map(lambda p: 3.0 * p, params), tx.init(params),
                            params)
  for x in jax.tree.leaves(u):
    np.testing.assert_allclose(x, -0.05, rtol=1e-6)             # −η λ θ, no gradient step


# --- refresh under lax.cond, float32 statistics, batching -----------------------------------


def _matrices():
  return {"a": jnp.ones((6, 5)), "b": jnp.ones((6, 5)), "c": jnp.ones((5, 6)),
          "d": jnp.ones((6, 5)), "v": jnp.ones(4)}


def _steps(tx, params, n):
  """The states after each of `n` steps of varying gradients (jitted update)."""
  update = jax.jit(tx.update)
  state, states = tx.init(params), []
  for k in range(n):
    g = jax.tree.map(lambda p, k=k: jnp.cos(jnp.arange(p.size) * (1.3 + 0.1 * k)).reshape(
        p.shape).astype(p.dtype), params)
    _, state = update(g, state, params)
    states.append(state)
  return states


def _changed(before, after):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before),
                                                    jax.tree.leaves(after)))


def _primitives(jaxpr, top_only=False):
  """Names of the primitives in a jaxpr and (unless `top_only`) all its sub-jaxprs."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    if top_only and eqn.primitive.name == "cond":
      continue
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          names |= _primitives(inner, top_only)
  return names


def _refresh_only_under_cond(tx, params, kernels):
  jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params)).jaxpr
  outside = _primitives(jaxpr, top_only=True)
  assert "cond" in outside and not outside & kernels, outside & kernels
  assert kernels <= _primitives(jaxpr)


def test_shampoo_roots_change_only_every_k_steps():
  tx = gx.scale_by_shampoo(precondition_every=3)
  states = _steps(tx, _matrices(), 8)
  prev = tx.init(_matrices()).roots
  for t, s in enumerate(states):
    assert _changed(prev, s.roots) == (t % 3 == 0), f"step {t}"
    assert _changed(states[t - 1].stats if t else tx.init(_matrices()).stats, s.stats)
    prev = s.roots
  _refresh_only_under_cond(tx, _matrices(), {"eigh"})


def test_soap_bases_change_at_the_first_step_and_every_k_steps():
  tx = gx.scale_by_soap(precondition_frequency=3)
  states = _steps(tx, _matrices(), 8)
  prev = tx.init(_matrices()).eigvecs
  for t, s in enumerate(states):
    assert _changed(prev, s.eigvecs) == (t == 0 or t % 3 == 0), f"step {t}"
    prev = s.eigvecs
  _refresh_only_under_cond(tx, _matrices(), {"eigh", "qr"})


@pytest.mark.parametrize("factory", [gx.scale_by_shampoo, gx.scale_by_soap])
def test_statistics_stay_float32_for_bfloat16_params(factory):
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _matrices())
  tx = factory()
  state = _steps(tx, params, 2)[-1]
  for x in jax.tree.leaves((state.nu, state.stats,
                            state.roots if hasattr(state, "roots") else state.eigvecs)):
    assert x.dtype == jnp.float32
  u, _ = jax.jit(tx.update)(params, state, params)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))


def _lapack_batches(hlo):
  """The leading (batch) dimension of each LAPACK custom call's first result in `hlo`."""
  return [int(b) for b in re.findall(
      r"= \(?[fc](?:32|64|128)\[(\d+),[^\n]*custom_call_target=\"lapack_", hlo)]


@pytest.mark.cpu_only
def test_one_eigh_per_matrix_size_one_matrix_per_lapack_call():
  # Shampoo: (6, 5) × 2, (5, 6) and (12, 10) in blocks of 6 × 5 (those join the (6, 5)
  # group): eleven statistics of two sizes, two eigh calls. On CPU each decomposes one matrix
  # at a time (`_batching.per_matrix`, in a loop): two batched LAPACK calls running together
  # on XLA's intra-op pool threads could deadlock (the former hang, benchmarks/shampoo_hang.py).
  params = {**_matrices(), "e": jnp.ones((12, 10))}
  tx = gx.scale_by_shampoo(block_size=6)
  hlo = jax.jit(tx.update).lower(params, tx.init(params)).compile().as_text()
  assert len(re.findall(r"custom_call_target=\"[^\"]*syev", hlo)) == 2
  assert _lapack_batches(hlo) == [1, 1]
  # SOAP (no blocks): sizes 5, 6, 10 and 12, one eigh and one QR (geqrf, orgqr) each, all
  # one matrix per call (the 5- and 6-size stacks hold four matrices each).
  tx = gx.scale_by_soap()
  hlo = jax.jit(tx.update).lower(params, tx.init(params)).compile().as_text()
  assert len(re.findall(r"custom_call_target=\"[^\"]*syev", hlo)) == 4
  assert len(re.findall(r"custom_call_target=\"[^\"]*geqrf", hlo)) == 4
  assert _lapack_batches(hlo) == [1] * 12


def test_equal_shape_leaves_equal_their_own_runs():
  # Batching is invisible: each leaf's update equals the update of that leaf alone. Random
  # full-rank gradients, so that no statistic has a repeated eigenvalue: SOAP's basis (hence
  # its update) is arbitrary inside a repeated eigenspace, and a batched `eigh` (e.g. cuSOLVER's
  # Jacobi on a GPU) may pick another one than a single `eigh` does.
  params = _matrices()
  rng = np.random.default_rng(7)
  grads = [{k: jnp.asarray(rng.normal(size=p.shape), jnp.float32) for k, p in params.items()}
           for _ in range(7)]

  def both(tx):
    def run(tree):
      state = tx.init(tree)
      for g in grads:
        u, state = tx.update({k: g[k] for k in tree}, state)
      return u
    return run(params), {k: run({k: params[k]})[k] for k in ("a", "c", "v")}

  for tx in (gx.scale_by_shampoo(block_size=4, precondition_every=3),
             gx.scale_by_soap(precondition_frequency=3)):
    together, alone = jax.jit(both, static_argnums=0)(tx)
    for key in alone:
      np.testing.assert_allclose(together[key], alone[key], rtol=1e-4, atol=1e-5,
                                 err_msg=f"{tx}: {key}")


# --- the contract ------------------------------------------------------------------------

FACTORIES = {
    "shampoo": lambda **kw: gx.shampoo(0.01, block_size=2, precondition_every=2, **kw),
    "soap": lambda **kw: gx.soap(0.01, precondition_frequency=2, **kw),
    "scale_by_shampoo": lambda **kw: gx.scale_by_shampoo(block_size=2, precondition_every=2,
                                                         **kw),
    "scale_by_soap": lambda **kw: gx.scale_by_soap(precondition_frequency=2, **kw),
}
OPTIMIZERS = ["shampoo", "soap"]   # check_transform of these runs the primitives too


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 16).reshape(4, 4), "b": jnp.array([0.3, -0.2]),
          "s": jnp.asarray(0.7, jnp.float32)}


def _grads(k=0):
  # Of full rank (cos(i + k) would be of rank 2): every statistic has simple eigenvalues.
  return {"w": jnp.cos(1.7 * jnp.arange(16.0) ** 1.3 + k).reshape(4, 4),
          "b": jnp.array([-0.5, 0.25 + k]), "s": jnp.asarray(0.4 - 0.3 * k, jnp.float32)}


def _run(tx, params, steps=3):
  def run(params):
    state, outs = tx.init(params), []
    for k in range(steps):
      grads = {key: g for key, g in _grads(k).items() if key in params}
      u, state = tx.update(grads, state, params)
      outs.append(u)
    return outs, state
  return jax.jit(run)(params)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_check_transform(name):
  tx = FACTORIES[name]()
  if "shampoo" in name:
    gxt.check_transform(tx, _params(), needs_params=True, pmap=False)
    return
  # check_transform's gradients are one direction scaled at each step; SOAP's eigenbasis,
  # taken from the first, then diagonalizes the next exactly, and the off-diagonal float32
  # rounding of G' divided by √V + ε ≈ ε is noise (different with and without jit). Noise
  # on the gradient makes the steps' gradients independent, as in training; eigh and QR in
  # float32 then agree with and without jit to 1e-5 on unit-sized updates.
  noisy = gx.chain(gx.add_gradient_noise(0.1, 0.0, seed=3), tx)
  params = _params()
  gxt.check_init_pure(tx, params)
  shared = gxt._SharedJit(noisy)  # one compile for the three checks, as check_transform does
  gxt.check_jit(noisy, params, needs_params=True, rtol=1e-5, atol=1e-5, _jit=shared)
  gxt.check_state_stable(noisy, params, needs_params=True, _jit=shared)
  gxt.check_zero_grads(tx, params, needs_params=True)
  gxt.check_vmap(noisy, params, needs_params=True, _jit=shared)


def test_shampoo_momentum_in_bfloat16():
  tx = gx.shampoo(0.01, state_dtype=jnp.bfloat16)
  state = tx.init(_params())
  assert state[1].trace["w"].dtype == jnp.bfloat16
  assert state[0].stats["w"][0].dtype == jnp.float32


INJECTED = {
    "shampoo": dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-6, graft_eps=1e-7,
                    weight_decay=0.1),
    "soap": dict(learning_rate=0.01, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1,
                 shampoo_beta=0.9),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_inject_hyperparams_equals_plain_and_injects(name):
  factory, kwargs = getattr(gx, name), INJECTED[name]
  injected = gx.inject_hyperparams(factory)(**kwargs)
  assert set(injected.init(_params()).hyperparams) == set(kwargs)
  plain_out, _ = _run(factory(**kwargs), _params())
  injected_out, _ = _run(injected, _params())
  for p, q in zip(plain_out, injected_out):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-7), p, q)
  state = injected.init(_params())
  state = state._replace(hyperparams={**state.hyperparams, "learning_rate": jnp.asarray(0.0)})
  u, _ = jax.jit(injected.update)(_grads(), state, _params())     # η injected as 0: no step
  assert all(np.all(np.asarray(x) == 0.0) for x in jax.tree.leaves(u))


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_masked_and_partition_equal_the_optimizer_on_its_leaves(name):
  opt = FACTORIES[name]()
  params = _params()
  alone, _ = _run(opt, {"w": params["w"], "s": params["s"]})
  masked, _ = _run(gx.masked(opt, {"w": True, "b": False, "s": True}), params)
  grouped, _ = _run(gx.partition({"opt": opt, "sgd": gx.sgd(0.1)},
                                 {"w": "opt", "b": "sgd", "s": "opt"}), params)
  for k in range(3):
    for key in ("w", "s"):
      np.testing.assert_allclose(masked[k][key], alone[k][key], rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(grouped[k][key], alone[k][key], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(masked[k]["b"], _grads(k)["b"])
    np.testing.assert_allclose(grouped[k]["b"], -0.1 * _grads(k)["b"], rtol=1e-6)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_equal_by_value(name):
  factory = FACTORIES[name]
  assert factory() == factory() and hash(factory()) == hash(factory())


def test_different_hyperparameters_differ():
  assert gx.shampoo(1e-3) != gx.shampoo(2e-3)
  assert gx.shampoo(1e-3) != gx.shampoo(1e-3, block_size=128)
  assert gx.shampoo(1e-3) != gx.shampoo(1e-3, grafting="sgd")
  assert gx.soap(1e-3) != gx.soap(1e-3, precondition_frequency=5)
  assert gx.soap(1e-3) != gx.soap(1e-3, correct_bias=False)
  assert gx.scale_by_soap() != gx.scale_by_soap(max_precond_dim=64)
  assert gx.soap(1e-3, 0.9) == gx.soap(learning_rate=1e-3, b1=0.9)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.shampoo(-1.0), "shampoo: learning_rate"),
    (lambda: gx.shampoo(0.1, b1=1.0), "shampoo: b1 must be in [0, 1), got 1.0"),
    (lambda: gx.shampoo(0.1, b2=1.5), "shampoo: b2 must be in [0, 1], got 1.5"),
    (lambda: gx.shampoo(0.1, eps=-1.0), "shampoo: eps must be"),
    (lambda: gx.shampoo(0.1, graft_eps=-1.0), "shampoo: graft_eps must be"),
    (lambda: gx.shampoo(0.1, block_size=0), "shampoo: block_size must be a positive integer"),
    (lambda: gx.shampoo(0.1, block_size=2.5), "shampoo: block_size must be"),
    (lambda: gx.shampoo(0.1, precondition_every=0), "shampoo: precondition_every must be"),
    (lambda: gx.shampoo(0.1, grafting="adagrad"), "shampoo: grafting must be one of"),
    (lambda: gx.shampoo(0.1, weight_decay=-1.0), "shampoo: weight_decay"),
    (lambda: gx.scale_by_shampoo(b2=-0.1), "scale_by_shampoo: b2 must be"),
    (lambda: gx.scale_by_shampoo(grafting="x"), "scale_by_shampoo: grafting must be"),
    (lambda: gx.soap(-1.0), "soap: learning_rate"),
    (lambda: gx.soap(0.1, b1=1.0), "soap: b1 must be in [0, 1), got 1.0"),
    (lambda: gx.soap(0.1, b2=1.0), "soap: b2 must be in [0, 1), got 1.0"),
    (lambda: gx.soap(0.1, eps=-1e-8), "soap: eps must be"),
    (lambda: gx.soap(0.1, shampoo_beta=1.2), "soap: shampoo_beta must be"),
    (lambda: gx.soap(0.1, precondition_frequency=0), "soap: precondition_frequency must be"),
    (lambda: gx.soap(0.1, max_precond_dim=0), "soap: max_precond_dim must be"),
    (lambda: gx.soap(0.1, weight_decay=-0.1), "soap: weight_decay"),
    (lambda: gx.scale_by_soap(eps=-1.0), "scale_by_soap: eps must be"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_checkpoint_round_trip_and_exact_resume(name):
  tx = FACTORIES[name]()
  step = jax.jit(tx.update)
  params0 = _params()

  def train(params, state, start, stop):
    for k in range(start, stop):
      u, state = step(_grads(k), state, params)
      params = gx.apply_updates(params, u)
    return params, state

  full_params, full_state = train(params0, tx.init(params0), 0, 5)
  params, state = train(params0, tx.init(params0), 0, 2)
  blob = serialization.to_bytes({"params": params, "opt": state})
  fresh = FACTORIES[name]()                     # a new optimizer object, as after a restart
  restored = serialization.from_bytes({"params": params0, "opt": fresh.init(params0)}, blob)
  assert jax.tree.structure(state) == jax.tree.structure(restored["opt"])
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored["opt"])):
    np.testing.assert_array_equal(x, y)
  params, state = train(restored["params"], restored["opt"], 2, 5)
  for x, y in zip(jax.tree.leaves((full_params, full_state)), jax.tree.leaves((params, state))):
    np.testing.assert_array_equal(x, y)


# --- a real task --------------------------------------------------------------------------


def test_mlp_on_digits_reaches_adams_loss():
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  x = jnp.asarray(x / 16.0, jnp.float32)
  onehot = jax.nn.one_hot(y, 10)
  rng = np.random.default_rng(0)
  params = {"w1": jnp.asarray(rng.normal(0, 0.125, (64, 32)), jnp.float32),
            "b1": jnp.zeros(32), "w2": jnp.asarray(rng.normal(0, 0.18, (32, 10)), jnp.float32),
            "b2": jnp.zeros(10)}

  def loss(p):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(h @ p["w2"] + p["b2"]), -1))

  def train(tx, steps=200):
    def step(carry, _):
      p, s = carry
      value, g = jax.value_and_grad(loss)(p)
      u, s = tx.update(g, s, p)
      return (gx.apply_updates(p, u), s), value
    (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return loss(p)

  train = jax.jit(train, static_argnums=(0, 1))
  results = {name: float(train(tx)) for name, tx in (
      ("adam", gx.adam(1e-2)), ("shampoo", gx.shampoo(1e-2)),
      ("soap", gx.soap(1e-2, weight_decay=0.0)))}
  print(results)
  target = 0.05
  assert results["adam"] < target                       # the bar is one Adam clears
  assert results["shampoo"] < target and results["soap"] < target
