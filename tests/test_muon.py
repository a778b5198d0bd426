"""Muon (issue 17): `gx.muon`, its primitives `gx.orthogonalize` and `gx.scale_by_shape`.

Oracles. (1) `optax.contrib.muon` in float64, in closed loop (each step's gradient is that of a
fixed function at the current parameters), 30 steps over a tree with three 130 × 129 matrices
(one batch for Newton–Schulz), a 64 × 200 one, a vector and a scalar (Optax's AdamW
fallback), with the defaults and with the options moved; the parameters must agree to 1e-7
relative after every step. (2) torch.optim.Muon's float64 trajectories in
tests/data/torch_muon.json (see tests/data/make_torch_muon.py), to 1e-10. (3) Optax's per-leaf
`orthogonalize_via_newton_schulz` and the SVD (the iteration acts on singular values only),
for the batched primitive, and the count of matrix products in its lowered program. Then the
contract: `gradxform.testing`, `inject_hyperparams`, equality by value, validation, a
checkpoint round trip.
"""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization
from optax.contrib import _muon as optax_muon

import gradxform as gx
import gradxform.testing as gxt

STEPS = 30
RTOL = 1e-7
DATA = pathlib.Path(__file__).parent / "data" / "torch_muon.json"
SHAPES = {"a": (130, 129), "b": (130, 129), "c": (130, 129), "d": (64, 200), "v": (17,),
          "s": ()}
MASK = {"a": True, "b": False, "c": True, "d": False, "v": False, "s": False}
ODN = optax.contrib.MuonDimensionNumbers


def _dims(dn):
  """A dimension-number tree: a 3-D leaf with a batch axis, the matrices plain, AdamW rest."""
  return {"a": dn(), "b": dn(), "c": dn(), "d": dn(), "h": dn(1, 2), "v": None, "s": None}


def _both_same(kw):
  return (lambda: gx.muon(0.02, **kw), lambda: optax.contrib.muon(0.02, **kw))


CASES = {
    "default": _both_same({}),
    "moved": (lambda: gx.muon(0.01, ns_steps=4, beta=0.8, eps=1e-4, weight_decay=0.1,
                              adam_b1=0.8, adam_b2=0.99, adam_eps_root=1e-6,
                              adam_weight_decay=0.05, adam_learning_rate=0.03),
              lambda: optax.contrib.muon(0.01, ns_steps=4, beta=0.8, eps=1e-4, weight_decay=0.1,
                                         adam_b1=0.8, adam_b2=0.99, adam_eps_root=1e-6,
                                         adam_weight_decay=0.05, adam_learning_rate=0.03)),
    "no_nesterov_consistent_rms_dion": _both_same(dict(nesterov=False, consistent_rms=0.2,
                                                        ns_coeffs="dion")),
    "aol_weight_decay_mask": _both_same(dict(preconditioning="aol", weight_decay=0.2,
                                             weight_decay_mask=MASK)),
    "schatten_adaptive": (
        lambda: gx.muon(1e-4, ns_steps=3, adaptive=True, preconditioning="schatten"),
        lambda: optax.contrib.muon(1e-4, ns_steps=3, adaptive=True, preconditioning="schatten")),
    "dimension_numbers": (
        lambda: gx.muon(0.02, weight_decay=0.1,
                        muon_weight_dimension_numbers=_dims(gx.MuonDimensionNumbers)),
        lambda: optax.contrib.muon(0.02, weight_decay=0.1,
                                   muon_weight_dimension_numbers=_dims(ODN))),
}


def _problem(with_3d=False):
  """Start, curvature and centre of `f(θ) = Σ ½ a (θ − c)² + 0.3 Σ sin θ` (float64)."""
  rng = np.random.default_rng(17)
  shapes = {**SHAPES, "h": (3, 20, 24)} if with_3d else SHAPES

  def draw(shape):
    return (rng.uniform(-2.0, 2.0, shape), rng.uniform(0.2, 3.0, shape),
            rng.uniform(-1.0, 1.0, shape))

  parts = {k: draw(s) for k, s in shapes.items()}
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
    theta0, a, c = _problem(with_3d=name == "dimension_numbers")
    ours, theirs = jax.device_get(_both(theta0, a, c, CASES[name]))
  for key in theta0:
    assert ours[key].dtype == np.float64
    moved = np.abs(ours[key][-1] - theta0[key]).max()
    assert moved > 1e-3, f"{key} barely moved ({moved}): the comparison would be weak"
    for t in range(STEPS):
      np.testing.assert_allclose(ours[key][t], theirs[key][t], rtol=RTOL, atol=1e-12,
                                 err_msg=f"leaf {key}, step {t + 1}")


# --- torch.optim.Muon --------------------------------------------------------------------

TORCH_CALLS = {
    "default": lambda: gx.muon(0.02, beta=0.95, eps=1e-7, weight_decay=0.1,
                               adjust_lr="original", bias_correction=False, eps_in_max=True),
    "match_rms_adamw": lambda: gx.muon(0.01, beta=0.9, eps=1e-7, weight_decay=0.05,
                                       adjust_lr="match_rms_adamw", bias_correction=False,
                                       eps_in_max=True),
    "plain_momentum": lambda: gx.muon(0.03, (3.0, -3.2, 1.2), 3, beta=0.8, eps=1e-5,
                                      nesterov=False, adjust_lr="original",
                                      bias_correction=False, eps_in_max=True),
}


@pytest.fixture(scope="module")
def torch_data():
  return json.loads(DATA.read_text())


def _replay(tx, data):
  arr = lambda t: {k: np.asarray(v, np.float64) for k, v in t.items()}
  c, target, theta0, noise = (arr(data[k]) for k in ("c", "target", "theta0", "noise"))

  def body(carry, noise_t):
    p, s = carry
    g = jax.tree.map(lambda p_, c_, t_, n_: c_ * (p_ - t_) + n_, p, c, target, noise_t)
    u, s = tx.update(g, s, p)
    p = gx.apply_updates(p, u)
    return (p, s), p

  _, ps = jax.jit(lambda: jax.lax.scan(body, (theta0, tx.init(theta0)), noise))()
  return jax.device_get(ps)


def test_torch_data_is_complete(torch_data):
  assert set(torch_data["configs"]) == set(TORCH_CALLS)
  for name, cfg in torch_data["configs"].items():
    assert len(cfg["theta"]) == len(torch_data["recorded_steps"]), name
    assert cfg["gradxform"].startswith("gx.muon("), name


@pytest.mark.parametrize("name", list(TORCH_CALLS))
def test_matches_torch_muon_float64(name, torch_data):
  # float64 throughout, 30 steps of Newton-Schulz on O(1) matrices: observed agreement is
  # ~1e-15 relative; 1e-10 leaves room for BLAS summation order, not for any convention.
  with jax.enable_x64(True):
    ps = _replay(TORCH_CALLS[name](), torch_data)
  for i, step in enumerate(torch_data["recorded_steps"]):
    for key, ref in torch_data["configs"][name]["theta"][i].items():
      np.testing.assert_allclose(ps[key][step - 1], np.asarray(ref), rtol=1e-10, atol=1e-12,
                                 err_msg=f"{name}: leaf {key}, step {step}")


def test_torch_form_differs_from_optax_form_and_bf16_is_close(torch_data):
  with jax.enable_x64(True):
    optax_form = _replay(gx.muon(0.02, eps=1e-7, weight_decay=0.1), torch_data)
    torch_form = _replay(TORCH_CALLS["default"](), torch_data)
  last = torch_data["configs"]["default"]["theta"][-1]
  assert max(np.abs(optax_form[k][-1] - np.asarray(v)).max() for k, v in last.items()) > 1e-2
  bf16 = torch_data["bf16_reference"]["theta"][-1]           # torch's own bfloat16 iteration
  err = max(np.abs(torch_form[k][-1] - np.asarray(v)).max() for k, v in bf16.items())
  assert 1e-5 < err < 2e-2


# --- the primitive: batching and the iteration itself -------------------------------------

def _matrices():
  rng = np.random.default_rng(5)
  shapes = {"a": (40, 39), "b": (40, 39), "c": (40, 39), "t": (39, 40), "d": (24, 50)}
  return {k: rng.normal(size=s) for k, s in shapes.items()}


@pytest.mark.parametrize("preconditioning", ["frobenius", "spectral", "aol", "schatten"])
def test_batched_equals_optax_per_leaf(preconditioning):
  with jax.enable_x64(True):
    x = _matrices()
    tx = gx.orthogonalize(preconditioning=preconditioning)
    coeffs = jnp.asarray(optax_muon._DEFAULT_NS_COEFFS)

    @jax.jit
    def both(u):
      theirs = {k: optax_muon.orthogonalize_via_newton_schulz(m, coeffs, 5, preconditioning)
                for k, m in u.items()}
      return tx.update(u, tx.init(u))[0], theirs

    ours, theirs = both(x)
    for k in x:
      np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_one_batched_newton_schulz_per_shape():
  # (40, 39) leaves are transposed to (39, 40) and join the (39, 40) leaf: two groups,
  # three matrix products per step each, against three per step per leaf without batching.
  x = jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), _matrices())
  tx = gx.orthogonalize()
  text = jax.jit(lambda u: tx.update(u, tx.init(u))[0]).lower(x).as_text()
  assert text.count("dot_general") == 2 * 3 * 5
  compiled = jax.jit(lambda u: tx.update(u, tx.init(u))[0]).lower(x).compile().as_text()
  assert compiled.count(" dot(") + compiled.count("custom-call(") <= 2 * 3 * 5
  per_leaf = gx.orthogonalize(dimension_numbers={"a": gx.MuonDimensionNumbers(), "b": None,
                                                 "c": None, "t": None, "d": None})
  one = jax.jit(lambda u: per_leaf.update(u, per_leaf.init(u))[0]).lower(x).as_text()
  assert one.count("dot_general") == 3 * 5                   # only "a"; the others pass


def test_iteration_acts_on_singular_values_only():
  # NS(X) = U p(S/‖X‖_F) Vᵀ for X = U S Vᵀ, p the scalar quintic iterated: from NumPy's SVD.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 24))
  u, s, vt = np.linalg.svd(x, full_matrices=False)
  s = s / (np.sqrt(np.sum(x * x)) + 1e-8)
  a, b, c = 3.4445, -4.7750, 2.0315
  for _ in range(5):
    s = a * s + b * s ** 3 + c * s ** 5
  expected = (u * s) @ vt
  with jax.enable_x64(True):
    tx = gx.orthogonalize()
    got = tx.update({"x": jnp.asarray(x)}, tx.init({"x": jnp.asarray(x)}))[0]["x"]
  np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
  assert 0.6 < s.min() and s.max() < 1.25                   # "about orthogonal"


def test_scale_by_shape_factors_by_hand():
  tree = {"tall": jnp.ones((2, 8)), "wide": jnp.ones((8, 2)), "v": jnp.ones(3)}
  dims = {"tall": gx.MuonDimensionNumbers(), "wide": gx.MuonDimensionNumbers(), "v": None}
  for tx, tall, wide in [(gx.scale_by_shape(dims), 2.0, 1.0),
                         (gx.scale_by_shape(dims, torch_layout=True), 1.0, 2.0),
                         (gx.scale_by_shape(dims, 0.2), 0.2 * 8 ** 0.5, 0.2 * 8 ** 0.5)]:
    out = tx.update(tree, tx.init(tree))[0]
    np.testing.assert_allclose(out["tall"], tall, rtol=1e-6)
    np.testing.assert_allclose(out["wide"], wide, rtol=1e-6)
    np.testing.assert_array_equal(out["v"], 1.0)


# --- the contract ------------------------------------------------------------------------

def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.3, -0.2]),
          "s": jnp.asarray(0.7, jnp.float32)}


def _grads(k=0):
  return {"w": jnp.cos(jnp.arange(12.0) + k).reshape(3, 4), "b": jnp.array([-0.5, 0.25 + k]),
          "s": jnp.asarray(0.4 - 0.3 * k, jnp.float32)}


def _run(tx, params, steps=3, state=None, start=0):
  state = tx.init(params) if state is None else state
  outs = []
  for k in range(start, start + steps):
    u, state = tx.update(_grads(k), state, params)
    params = gx.apply_updates(params, u)
    outs.append(u)
  return outs, state, params


def test_check_transform():
  gxt.check_transform(gx.muon(1e-2, weight_decay=0.1), _params(), needs_params=True,
                      pmap=False)
  tx = gx.muon(1e-2, state_dtype=jnp.bfloat16)      # moments in bfloat16: jit and stable state
  gxt.check_jit(tx, _params(), needs_params=True)
  gxt.check_state_stable(tx, _params(), needs_params=True)
  moments = [x for x in jax.tree.leaves(tx.init(_params())) if x.ndim > 0]
  assert {x.dtype for x in moments} == {jnp.dtype(jnp.bfloat16)}
  matrices = {"w": _params()["w"], "u": jnp.ones((4, 3))}
  gxt.check_transform(gx.orthogonalize(), matrices, pmap=False)
  gxt.check_transform(gx.scale_by_shape(), matrices, pmap=False)


def test_inject_hyperparams_equals_plain_and_injects():
  kwargs = dict(learning_rate=0.01, beta=0.9, eps=1e-6, weight_decay=0.1)
  injected = gx.inject_hyperparams(gx.muon)(**kwargs)
  assert set(injected.init(_params()).hyperparams) == set(kwargs)
  plain_out = _run(gx.muon(**kwargs), _params())[0]
  injected_out = _run(injected, _params())[0]
  for p, q in zip(plain_out, injected_out):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-7), p, q)
  state = injected.init(_params())
  state = state._replace(hyperparams={**state.hyperparams, "learning_rate": jnp.asarray(0.0)})
  u, _ = injected.update(_grads(), state, _params())     # η injected as 0: no step
  assert all(np.all(np.asarray(x) == 0.0) for x in jax.tree.leaves(u))


def test_equal_by_value():
  dims = {"w": gx.MuonDimensionNumbers(), "b": None, "s": None}
  for make in (lambda: gx.muon(1e-3), lambda: gx.orthogonalize(), lambda: gx.scale_by_shape(),
               lambda: gx.muon(1e-3, muon_weight_dimension_numbers=dims)):
    assert make() == make() and hash(make()) == hash(make())
  assert gx.muon(1e-3) != gx.muon(2e-3)
  assert gx.muon(1e-3) != gx.muon(1e-3, adjust_lr="original")
  assert gx.muon(1e-3) != gx.muon(1e-3, state_dtype=jnp.bfloat16)
  assert gx.orthogonalize() != gx.orthogonalize(ns_steps=4)
  assert gx.muon(1e-3, ns_steps=5) == gx.muon(learning_rate=1e-3)


def test_dimension_numbers_pick_the_muon_leaves():
  # A 2-D leaf given None goes to NAdamW: its first step is −η (1 + β1/(1 + β1)) sign(g).
  dims = {"w": None, "b": None, "s": None}
  u, _, _ = _run(gx.muon(0.1, muon_weight_dimension_numbers=dims), _params(), steps=1)
  np.testing.assert_allclose(u[0]["w"], -0.1 * (1 + 0.9 / 1.9) * np.sign(_grads()["w"]),
                             rtol=1e-5)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.muon(-1.0), "muon: learning_rate"),
    (lambda: gx.muon(0.1, ns_steps=0), "muon: ns_steps must be a positive integer, got 0"),
    (lambda: gx.muon(0.1, ns_steps=2.5), "muon: ns_steps must be a positive integer"),
    (lambda: gx.muon(0.1, ns_coeffs=(1.0, 2.0)), "muon: ns_coeffs must be three"),
    (lambda: gx.muon(0.1, ns_coeffs="polar"), "muon: ns_coeffs must be one of"),
    (lambda: gx.muon(0.1, ns_coeffs="dion", ns_steps=3), "muon: ns_coeffs has 5 rows"),
    (lambda: gx.muon(0.1, beta=1.0), "muon: beta must be in [0, 1), got 1.0"),
    (lambda: gx.muon(0.1, eps=-1.0), "muon: eps must be >= 0"),
    (lambda: gx.muon(0.1, weight_decay=-0.1), "muon: weight_decay"),
    (lambda: gx.muon(0.1, adam_b2=1.5), "muon: adam_b2 must be in [0, 1)"),
    (lambda: gx.muon(0.1, adam_learning_rate=-1.0), "muon: adam_learning_rate"),
    (lambda: gx.muon(0.1, preconditioning="polar"), "muon: preconditioning must be one of"),
    (lambda: gx.muon(0.1, adjust_lr="sqrt"), "muon: adjust_lr must be one of"),
    (lambda: gx.muon(0.1, adjust_lr="original", consistent_rms=0.2),
     "muon: give adjust_lr or consistent_rms"),
    (lambda: gx.orthogonalize(ns_steps=-1), "orthogonalize: ns_steps must be"),
    (lambda: gx.scale_by_shape(consistent_rms=-1.0), "scale_by_shape: consistent_rms"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_bad_leaves_raise_at_update():
  tx = gx.orthogonalize()
  with pytest.raises(ValueError, match=r"orthogonalize: a leaf of shape \(3,\) is not a matrix"):
    tx.update({"v": jnp.ones(3)}, tx.init({"v": jnp.ones(3)}))
  tx = gx.orthogonalize(dimension_numbers={"v": gx.MuonDimensionNumbers(0, 0)})
  with pytest.raises(ValueError, match="orthogonalize: the reduction and output axes"):
    tx.update({"v": jnp.ones((3, 3))}, tx.init({"v": jnp.ones((3, 3))}))


def test_checkpoint_round_trip_and_exact_resume():
  tx = gx.muon(0.05, weight_decay=0.1)
  full, _, full_params = _run(tx, _params(), steps=5)
  _, state, params = _run(tx, _params(), steps=2)
  blob = serialization.to_bytes({"params": params, "opt": state})
  fresh = gx.muon(0.05, weight_decay=0.1)
  restored = serialization.from_bytes({"params": _params(), "opt": fresh.init(_params())}, blob)
  jax.tree.map(np.testing.assert_array_equal, restored["opt"], state)
  resumed, _, resumed_params = _run(fresh, restored["params"], steps=3,
                                    state=restored["opt"], start=2)
  jax.tree.map(np.testing.assert_array_equal, resumed_params, full_params)
  jax.tree.map(np.testing.assert_array_equal, resumed[-1], full[-1])
