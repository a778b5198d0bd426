"""The layer-wise optimizers of issue 16: LAMB, LARS, NovoGrad, Fromage, SM3, and their
primitives `scale_by_trust_ratio`, `scale_by_novograd`, `scale_by_sm3`.

Oracle: Optax itself in float64, in closed loop (each step's gradient is that of a fixed
function at the current parameters), 30 steps over a tree with a 130 × 129 matrix, a vector
and a scalar, with Optax's defaults and with every hyperparameter moved; the parameters must
agree to 1e-7 relative after every step. (Optax's SM3 fails on scalar leaves, so its cases run
without the scalar; a scalar is checked by hand below.) Then the contract: `gradxform.testing`,
the wrappers, equality by value, validation, a checkpoint round trip, and hand-derived values.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import closed_loop as cl
import gradxform as gx
import gradxform.testing as gxt
from closed_loop import MASK


def _schedule(count):
  return 0.02 / (1.0 + 0.1 * count)


def _tr_chain(lib, *args):
  return lib.chain(lib.scale_by_trust_ratio(*args), lib.scale_by_learning_rate(0.01))


def _prim_chain(ours, theirs):
  return (lambda: gx.chain(ours(), gx.scale_by_learning_rate(0.01)),
          lambda: optax.chain(theirs(), optax.scale_by_learning_rate(0.01)))


# name -> [(gradxform optimizer, Optax optimizer)]: the defaults first, then moved values.
CASES = {
    "scale_by_trust_ratio": [
        (lambda: _tr_chain(gx), lambda: _tr_chain(optax)),
        (lambda: _tr_chain(gx, 0.5, 0.3, 1e-3), lambda: _tr_chain(optax, 0.5, 0.3, 1e-3)),
    ],
    "lamb": [
        (lambda: gx.lamb(1e-2), lambda: optax.lamb(1e-2)),
        (lambda: gx.lamb(0.03, 0.8, 0.99, 1e-4, eps_root=1e-5, weight_decay=0.1, mask=MASK),
         lambda: optax.lamb(0.03, 0.8, 0.99, 1e-4, eps_root=1e-5, weight_decay=0.1,
                            mask=MASK)),
        (lambda: gx.lamb(_schedule, weight_decay=_schedule),
         lambda: optax.lamb(_schedule, weight_decay=_schedule)),
    ],
    "lars": [
        (lambda: gx.lars(2.0), lambda: optax.lars(2.0)),
        (lambda: gx.lars(0.5, 1e-2, weight_decay_mask=MASK, trust_coefficient=0.02, eps=1e-3,
                         trust_ratio_mask={"w": True, "v": True, "s": False}, momentum=0.8,
                         nesterov=True),
         lambda: optax.lars(0.5, 1e-2, weight_decay_mask=MASK, trust_coefficient=0.02,
                            eps=1e-3, trust_ratio_mask={"w": True, "v": True, "s": False},
                            momentum=0.8, nesterov=True)),
        (lambda: gx.lars(_schedule, momentum=0.5, trust_coefficient=0.5),
         lambda: optax.lars(_schedule, momentum=0.5, trust_coefficient=0.5)),
    ],
    "scale_by_novograd": [
        _prim_chain(gx.scale_by_novograd, optax.scale_by_novograd),
    ],
    "novograd": [
        (lambda: gx.novograd(1e-2), lambda: optax.novograd(1e-2)),
        (lambda: gx.novograd(0.03, 0.8, 0.5, 1e-4, eps_root=1e-5, weight_decay=0.05),
         lambda: optax.novograd(0.03, 0.8, 0.5, 1e-4, eps_root=1e-5, weight_decay=0.05)),
    ],
    "fromage": [
        (lambda: gx.fromage(1e-2), lambda: optax.fromage(1e-2)),
        (lambda: gx.fromage(_schedule, min_norm=1.0),
         lambda: optax.fromage(_schedule, min_norm=1.0)),
    ],
    "scale_by_sm3": [
        _prim_chain(gx.scale_by_sm3, optax.scale_by_sm3),
        _prim_chain(lambda: gx.scale_by_sm3(0.5, 0.9, 1e-3),
                    lambda: optax.scale_by_sm3(0.5, 0.9, 1e-3)),
    ],
    "sm3": [
        (lambda: gx.sm3(0.1), lambda: optax.sm3(0.1)),
        (lambda: gx.sm3(0.05, 0.5), lambda: optax.sm3(0.05, 0.5)),
    ],
}
IDS = [f"{name}-{i}" for name, cases in CASES.items() for i in range(len(cases))]
FLAT = [(name, pair) for name, cases in CASES.items() for pair in cases]


@pytest.mark.parametrize("name,pair", FLAT, ids=IDS)
def test_equals_optax_float64_every_step(name, pair):
  keys = ("w", "v") if "sm3" in name else ("w", "v", "s")
  theta0, (ours, theirs) = cl.closed_loop(pair, keys=keys)
  cl.assert_trajectories_close(theta0, ours, theirs)


# --- the contract ------------------------------------------------------------------------

OPTIMIZERS = {
    "lamb": lambda **kw: gx.lamb(1e-2, **kw),
    "lars": lambda **kw: gx.lars(0.5, **kw),
    "novograd": lambda **kw: gx.novograd(1e-2, **kw),
    "fromage": lambda **kw: gx.fromage(1e-2),
    "sm3": lambda **kw: gx.sm3(0.1, **kw),
}
PRIMITIVES = {
    "scale_by_trust_ratio": lambda **kw: gx.scale_by_trust_ratio(),
    "scale_by_novograd": lambda **kw: gx.scale_by_novograd(**kw),
    "scale_by_sm3": lambda **kw: gx.scale_by_sm3(**kw),
}
STATEFUL = {"lamb", "lars", "novograd", "sm3", "scale_by_novograd", "scale_by_sm3"}


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_check_transform(name):
  factory = {**OPTIMIZERS, **PRIMITIVES}[name]
  # pmap on the primitives, which carry the state; the optimizers chain them
  gxt.check_transform(factory(), cl.params(), needs_params=True, pmap=name in PRIMITIVES)
  if name in STATEFUL:                      # moments in bfloat16 for float32 parameters
    tx = factory(state_dtype=jnp.bfloat16)
    if name in PRIMITIVES:                  # the optimizers pass state_dtype on to these
      gxt.check_transform(tx, cl.params(), needs_params=True, pmap=False)
    outs, state, _ = cl.run(tx, cl.params(), steps=2)
    assert {x.dtype for x in jax.tree.leaves(state) if x.ndim > 0} == {jnp.dtype(jnp.bfloat16)}
    assert all(u.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(u)))
               for u in jax.tree.leaves(outs))


INJECTED = {
    "lamb": dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-5, eps_root=1e-8,
                 weight_decay=0.1),
    "lars": dict(learning_rate=0.5, weight_decay=0.01, trust_coefficient=0.01, eps=1e-4,
                 momentum=0.8),
    "novograd": dict(learning_rate=0.01, b1=0.8, b2=0.5, eps=1e-5, eps_root=1e-8,
                     weight_decay=0.1),
    "fromage": dict(learning_rate=0.05, min_norm=0.3),
    "sm3": dict(learning_rate=0.1, momentum=0.7),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_inject_hyperparams_equals_plain_and_injects(name):
  cl.assert_inject_equals_plain(getattr(gx, name), INJECTED[name])


@pytest.mark.parametrize("name,kwargs", [
    ("scale_by_trust_ratio", dict(min_norm=0.2, trust_coefficient=0.5, eps=1e-3)),
    ("scale_by_novograd", dict(b1=0.8, b2=0.5, eps=1e-5, eps_root=1e-8, weight_decay=0.1)),
    ("scale_by_sm3", dict(b1=0.8, b2=0.9, eps=1e-6)),
    ("scale_by_sm3", dict(b1=0.8, b2=1.0, eps=1e-6)),
])
def test_inject_hyperparams_into_primitives(name, kwargs):
  factory = getattr(gx, name)
  plain_out = cl.run(factory(**kwargs), cl.params())[0]
  injected_out = cl.run(gx.inject_hyperparams(factory)(**kwargs), cl.params())[0]
  cl.assert_steps_close(plain_out, injected_out)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_masked_and_partition_equal_the_optimizer_on_its_leaves(name):
  cl.assert_masked_and_partition_match(OPTIMIZERS[name]())


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_equal_by_value(name):
  cl.assert_equal_by_value({**OPTIMIZERS, **PRIMITIVES}[name], state_dtype=name in STATEFUL)


def test_different_hyperparameters_differ():
  assert gx.lamb(1e-3) != gx.lamb(2e-3)
  assert gx.lamb(1e-3) != gx.lamb(1e-3, mask={"w": True, "b": False})
  assert gx.lars(1e-3) != gx.lars(1e-3, nesterov=True)
  assert gx.lars(1e-3, 0.1) == gx.lars(learning_rate=1e-3, weight_decay=0.1)
  assert gx.novograd(1e-3) != gx.novograd(1e-3, b2=0.5)
  assert gx.fromage(1e-3) != gx.fromage(1e-3, 1e-5)
  assert gx.sm3(1e-3) != gx.sm3(1e-3, 0.5)
  assert gx.scale_by_trust_ratio() != gx.scale_by_trust_ratio(0.1)
  assert gx.scale_by_sm3() != gx.scale_by_sm3(b2=0.9)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.scale_by_trust_ratio(-1.0), "scale_by_trust_ratio: min_norm must be"),
    (lambda: gx.scale_by_trust_ratio(trust_coefficient=-1.0),
     "scale_by_trust_ratio: trust_coefficient must be"),
    (lambda: gx.scale_by_trust_ratio(eps=-1.0), "scale_by_trust_ratio: eps must be"),
    (lambda: gx.lamb(-1.0), "lamb: learning_rate"),
    (lambda: gx.lamb(0.1, b1=1.0), "lamb: b1 must be in [0, 1), got 1.0"),
    (lambda: gx.lamb(0.1, b2=-0.1), "lamb: b2 must be in [0, 1), got -0.1"),
    (lambda: gx.lamb(0.1, eps=-1.0), "lamb: eps must be"),
    (lambda: gx.lamb(0.1, eps_root=-1.0), "lamb: eps_root must be"),
    (lambda: gx.lamb(0.1, weight_decay=-1.0), "lamb: weight_decay"),
    (lambda: gx.lars(-0.1), "lars: learning_rate"),
    (lambda: gx.lars(0.1, -1.0), "lars: weight_decay"),
    (lambda: gx.lars(0.1, trust_coefficient=-1.0), "lars: trust_coefficient must be"),
    (lambda: gx.lars(0.1, eps=-1.0), "lars: eps must be"),
    (lambda: gx.lars(0.1, momentum=1.0), "lars: momentum must be in [0, 1), got 1.0"),
    (lambda: gx.lars(0.1, momentum=0.0, nesterov=True), "lars: Nesterov momentum requires"),
    (lambda: gx.novograd(-0.1), "novograd: learning_rate"),
    (lambda: gx.novograd(0.1, b1=1.5), "novograd: b1 must be in [0, 1), got 1.5"),
    (lambda: gx.novograd(0.1, b2=1.0), "novograd: b2 must be in [0, 1), got 1.0"),
    (lambda: gx.novograd(0.1, eps=-1.0), "novograd: eps must be"),
    (lambda: gx.novograd(0.1, eps_root=-1.0), "novograd: eps_root must be"),
    (lambda: gx.novograd(0.1, weight_decay=-1.0), "novograd: weight_decay"),
    (lambda: gx.fromage(-0.1), "fromage: learning_rate"),
    (lambda: gx.fromage(0.1, -1.0), "fromage: min_norm must be"),
    (lambda: gx.sm3(-0.1), "sm3: learning_rate"),
    (lambda: gx.sm3(0.1, 1.0), "sm3: momentum must be in [0, 1), got 1.0"),
    (lambda: gx.scale_by_novograd(b1=-0.1), "scale_by_novograd: b1 must be"),
    (lambda: gx.scale_by_novograd(weight_decay=-1.0), "scale_by_novograd: weight_decay must"),
    (lambda: gx.scale_by_sm3(b1=1.0), "scale_by_sm3: b1 must be in [0, 1), got 1.0"),
    (lambda: gx.scale_by_sm3(b2=1.5), "scale_by_sm3: b2 must be in [0, 1], got 1.5"),
    (lambda: gx.scale_by_sm3(eps=-1.0), "scale_by_sm3: eps must be"),
    (lambda: gx.scale_by_sm3(state_dtype=jnp.int32), "scale_by_sm3: state_dtype"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_params_are_required_where_the_rule_reads_them():
  for tx in (gx.scale_by_trust_ratio(), gx.lamb(0.1), gx.lars(0.1), gx.fromage(0.1),
             gx.scale_by_novograd(weight_decay=0.1)):
    with pytest.raises(ValueError, match="needs the current parameters"):
      tx.update(cl.grads(), tx.init(cl.params()))
  tx = gx.novograd(0.1)                     # no decay: the parameters are not read
  u, _ = tx.update(cl.grads(), tx.init(cl.params()))
  assert set(u) == {"w", "b", "s"}


# --- checkpoints -------------------------------------------------------------------------

CHECKPOINTED = {
    "lamb": lambda: gx.lamb(gx.cosine_decay_schedule(0.1, 10), weight_decay=0.01),
    "lars": lambda: gx.lars(0.5, 1e-3, trust_ratio_mask={"w": True, "b": False, "s": True}),
    "novograd": lambda: gx.novograd(0.05, weight_decay=0.01),
    "fromage": lambda: gx.fromage(0.05),
    "sm3": lambda: gx.sm3(0.1),
}


@pytest.mark.parametrize("name", list(CHECKPOINTED))
def test_flax_serialization_round_trip_and_exact_resume(name):
  run = cl.checkpoint_round_trip(CHECKPOINTED[name], cl.params())
  cl.assert_identical(run.full[:2], run.resumed[:2])


# --- hand-derived values and conventions -------------------------------------------------

def test_trust_ratio_by_hand_and_zero_norms():
  tx = gx.scale_by_trust_ratio(trust_coefficient=0.5, eps=1.0)
  params = {"a": jnp.array([3.0, 4.0]), "zero": jnp.zeros(2), "b": jnp.array([1.0, 0.0])}
  updates = {"a": jnp.array([0.0, 2.0]), "zero": jnp.array([1.0, -1.0]), "b": jnp.zeros(2)}
  u, _ = tx.update(updates, tx.init(params), params)
  np.testing.assert_allclose(u["a"], [0.0, 2.0 * 0.5 * 5.0 / (2.0 + 1.0)], rtol=1e-6)
  np.testing.assert_array_equal(u["zero"], [1.0, -1.0])   # ‖θ‖ = 0: ratio 1
  np.testing.assert_array_equal(u["b"], [0.0, 0.0])       # ‖u‖ = 0: ratio 1
  floored = gx.scale_by_trust_ratio(min_norm=10.0)        # both norms raised to 10: ratio 1
  u, _ = floored.update(updates, floored.init(params), params)
  np.testing.assert_allclose(u["a"], updates["a"], rtol=1e-6)


def test_trust_ratio_is_differentiable_at_zero():
  def loss(p):
    u, _ = gx.scale_by_trust_ratio().update({"x": jnp.ones(3)}, gx.EmptyState(), p)
    return jnp.sum(u["x"])
  grad = jax.grad(loss)({"x": jnp.zeros(3)})
  assert np.all(np.isfinite(np.asarray(grad["x"])))


def test_trust_ratio_of_a_complex_leaf_uses_the_complex_norm():
  z = np.array([1.0 + 2.0j, -0.5 + 0.25j, 3.0j], np.complex64)
  g = np.array([0.3 - 0.1j, 2.0 + 0.0j, -1.0 + 1.0j], np.complex64)
  tx = gx.scale_by_trust_ratio()
  u, _ = tx.update({"z": jnp.asarray(g)}, tx.init({"z": jnp.asarray(z)}), {"z": jnp.asarray(z)})
  assert u["z"].dtype == jnp.complex64
  expected = g * np.linalg.norm(z) / np.linalg.norm(g)   # = the norm of the real view
  np.testing.assert_allclose(np.asarray(u["z"]), expected, rtol=1e-6)


def test_novograd_two_steps_by_hand():
  tx = gx.scale_by_novograd(b1=0.5, b2=0.25, eps=0.0, weight_decay=0.1)
  params = {"w": jnp.array([1.0, -1.0])}
  g1, g2 = jnp.array([3.0, 4.0]), jnp.array([0.0, 2.0])
  u, state = tx.update({"w": g1}, tx.init(params), params)
  np.testing.assert_allclose(state.nu["w"], 25.0)                  # v₁ = ‖g₁‖²
  m1 = np.array([3.0, 4.0]) / 5.0 + 0.1 * np.array([1.0, -1.0])
  np.testing.assert_allclose(u["w"], m1, rtol=1e-6)
  u, state = tx.update({"w": g2}, state, params)
  v2 = 0.25 * 25.0 + 0.75 * 4.0                                    # 9.25
  np.testing.assert_allclose(state.nu["w"], v2, rtol=1e-6)
  m2 = 0.5 * m1 + np.array([0.0, 2.0]) / np.sqrt(v2) + 0.1 * np.array([1.0, -1.0])
  np.testing.assert_allclose(u["w"], m2, rtol=1e-6)


def _sm3_reference(grads, b1, b2, eps):
  """SM3-II on one matrix from the paper (Anil et al. 2019, Algorithm SM3-II), with Optax's
  β2 decay (`c = 1` at β2 = 1) and the EMA of the output."""
  rows, cols = np.zeros(grads[0].shape[0]), np.zeros(grads[0].shape[1])
  m, outs = np.zeros_like(grads[0]), []
  c = 1.0 if b2 == 1.0 else 1.0 - b2
  for g in grads:
    nu = c * g**2 + b2 * np.minimum(rows[:, None], cols[None, :])
    scaled = np.where(nu > 0, g / np.sqrt(nu + eps), 0.0)
    m = b1 * m + (1 - b1) * scaled
    rows, cols = nu.max(axis=1), nu.max(axis=0)
    outs.append(m.copy())
  return outs, rows, cols


@pytest.mark.parametrize("b1,b2", [(0.9, 1.0), (0.0, 0.7)])
def test_sm3_matches_the_paper_per_axis(b1, b2):
  rng = np.random.default_rng(3)
  grads = [rng.normal(size=(4, 6)) for _ in range(4)]
  grads[1][2] = 0.0                                         # a zero row: 0/0 is 0
  expected, rows, cols = _sm3_reference(grads, b1, b2, 1e-8)
  tx = gx.scale_by_sm3(b1, b2)
  state = tx.init({"w": jnp.zeros((4, 6))})
  assert [a.shape for a in state.mu["w"]] == [(4,), (6,)]   # memory: 4 + 6, not 4 · 6
  for g, e in zip(grads, expected):
    u, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state)
    np.testing.assert_allclose(u["w"], e, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(state.mu["w"][0], rows, rtol=2e-5)
  np.testing.assert_allclose(state.mu["w"][1], cols, rtol=2e-5)


def test_sm3_scalar_leaf_is_adagrad():
  tx = gx.scale_by_sm3(b1=0.0, eps=0.0)                     # Optax fails on scalars
  state = tx.init({"s": jnp.asarray(0.0)})
  total = 0.0
  for g in (2.0, -1.0, 0.5):
    total += g * g
    u, state = tx.update({"s": jnp.asarray(g)}, state)
    np.testing.assert_allclose(u["s"], g / np.sqrt(total), rtol=1e-6)


def test_fromage_keeps_the_norm_bounded_by_hand():
  # θ ← (θ − η ‖θ‖/‖g‖ g)/√(1 + η²): with g ⟂ θ, ‖θ‖ stays exactly the same.
  theta = {"w": jnp.array([3.0, 4.0])}
  g = {"w": jnp.array([-4.0, 3.0])}
  tx = gx.fromage(0.5, min_norm=0.0)
  u, _ = tx.update(g, tx.init(theta), theta)
  new = gx.apply_updates(theta, u)["w"]
  np.testing.assert_allclose(new, (np.array([3.0, 4.0]) - 0.5 * np.array([-4.0, 3.0]))
                             / np.sqrt(1.25), rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(new), 5.0, rtol=1e-6)
