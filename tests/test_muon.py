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

import functools
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import _muon as optax_muon

import closed_loop as cl
import gradxform as gx
import gradxform.testing as gxt

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


@pytest.mark.parametrize("name", list(CASES))
def test_equals_optax_float64_every_step(name):
  shapes = {**SHAPES, "h": (3, 20, 24)} if name == "dimension_numbers" else SHAPES
  theta0, (ours, theirs) = cl.closed_loop(CASES[name], seed=17, shapes=shapes)
  cl.assert_trajectories_close(theta0, ours, theirs)


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
    ps = cl.replay(TORCH_CALLS[name](), torch_data)
  for i, step in enumerate(torch_data["recorded_steps"]):
    for key, ref in torch_data["configs"][name]["theta"][i].items():
      np.testing.assert_allclose(ps[key][step - 1], np.asarray(ref), rtol=1e-10, atol=1e-12,
                                 err_msg=f"{name}: leaf {key}, step {step}")


def test_torch_form_differs_from_optax_form_and_bf16_is_close(torch_data):
  with jax.enable_x64(True):
    optax_form = cl.replay(gx.muon(0.02, eps=1e-7, weight_decay=0.1), torch_data)
    torch_form = cl.replay(TORCH_CALLS["default"](), torch_data)
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

# updates of the small tree, the parameters moving
_run = functools.partial(cl.run, move=True)


def test_check_transform():
  gxt.check_transform(gx.muon(1e-2, weight_decay=0.1), cl.params(), needs_params=True,
                      pmap=False)
  tx = gx.muon(1e-2, state_dtype=jnp.bfloat16)      # moments in bfloat16: jit and stable state
  gxt.check_jit(tx, cl.params(), needs_params=True)
  gxt.check_state_stable(tx, cl.params(), needs_params=True)
  moments = [x for x in jax.tree.leaves(tx.init(cl.params())) if x.ndim > 0]
  assert {x.dtype for x in moments} == {jnp.dtype(jnp.bfloat16)}
  matrices = {"w": cl.params()["w"], "u": jnp.ones((4, 3))}
  gxt.check_transform(gx.orthogonalize(), matrices, pmap=False)
  gxt.check_transform(gx.scale_by_shape(), matrices, pmap=False)


def test_inject_hyperparams_equals_plain_and_injects():
  kwargs = dict(learning_rate=0.01, beta=0.9, eps=1e-6, weight_decay=0.1)
  # Newton-Schulz's five float32 matrix iterations: the two programs (hyperparameters as
  # arrays or as constants) round apart by up to 1.2e-7 on updates of ~1e-2 (LLVM -O0)
  cl.assert_inject_equals_plain(gx.muon, kwargs, run_fn=_run, atol=3e-7)


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
  u, _, _ = _run(gx.muon(0.1, muon_weight_dimension_numbers=dims), cl.params(), steps=1)
  np.testing.assert_allclose(u[0]["w"], -0.1 * (1 + 0.9 / 1.9) * np.sign(cl.grads()["w"]),
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
  run = cl.checkpoint_round_trip(lambda: gx.muon(0.05, weight_decay=0.1), cl.params())
  cl.assert_identical(run.restored[1], run.saved[1])
  cl.assert_identical(run.resumed[0], run.full[0])             # the parameters
  cl.assert_identical(run.resumed[2][-1], run.full[2][-1])     # the last update
