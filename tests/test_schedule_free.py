"""Schedule-free training (issue 18): `schedule_free` over any base optimizer,
`schedule_free_sgd`, `schedule_free_adamw` and `schedule_free_eval_params`.

Oracle: Optax's `optax.contrib` in float64, in closed loop (each step's gradient is that of a
fixed function at the current parameters `y`), 30 steps over a tree with a 130 × 129 matrix, a
vector and a scalar, with Optax's defaults and with every hyperparameter moved; the parameters
and the evaluation parameters `x` must agree to 1e-7 relative after every step. Then the
wrappers it must compose with (each against Optax), the contract, equality by value,
validation and a checkpoint round trip.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import closed_loop as cl
import gradxform as gx
import gradxform.testing as gxt

SF = optax.contrib


def _warm(step):
  """A warm-up to 0.15 over 8 steps: one function, given to both libraries (their own linear
  schedules round differently in the last bit)."""
  return 0.15 * jnp.minimum(step / 8.0, 1.0)


# name -> (gradxform optimizer, Optax optimizer): the defaults first, then moved values.
CASES = {
    "sgd-default": (lambda: gx.schedule_free(gx.sgd(0.1), 0.1),
                    lambda: SF.schedule_free(optax.sgd(0.1), 0.1)),
    "adam-moved": (lambda: gx.schedule_free(gx.adam(0.05, b1=0.0), 0.05, b1=0.7,
                                            weight_lr_power=1.0),
                   lambda: SF.schedule_free(optax.adam(0.05, b1=0.0), 0.05, b1=0.7,
                                            weight_lr_power=1.0)),
    "schedule-moved": (lambda: gx.schedule_free(gx.sgd(_warm), _warm, b1=0.95,
                                                weight_lr_power=3.0),
                       lambda: SF.schedule_free(optax.sgd(_warm), _warm, b1=0.95,
                                                weight_lr_power=3.0)),
    "foreign-base": (lambda: gx.schedule_free(optax.sgd(0.1), 0.1, b1=0.5),
                     lambda: SF.schedule_free(optax.sgd(0.1), 0.1, b1=0.5)),
    "sf_sgd-default": (lambda: gx.schedule_free_sgd(0.1),
                       lambda: SF.schedule_free_sgd(0.1)),
    "sf_sgd-moved": (lambda: gx.schedule_free_sgd(0.2, 5, 0.8, 0.05, 1.5),
                     lambda: SF.schedule_free_sgd(0.2, 5, 0.8, 0.05, 1.5)),
    "sf_adamw-default": (lambda: gx.schedule_free_adamw(),
                         lambda: SF.schedule_free_adamw()),
    "sf_adamw-moved": (lambda: gx.schedule_free_adamw(0.05, 4, 0.8, 0.99, 1e-6, 0.1, 1.0),
                       lambda: SF.schedule_free_adamw(0.05, 4, 0.8, 0.99, 1e-6, 0.1, 1.0)),
}


def _eval_params(p1, s1, p2, s2):
  """Each side's evaluation parameters `x`, kept after every step."""
  return gx.schedule_free_eval_params(s1, p1), SF.schedule_free_eval_params(s2, p2)


@pytest.mark.parametrize("pair", list(CASES.values()), ids=list(CASES))
def test_equals_optax_float64_every_step(pair):
  theta0, (ours, theirs, ours_x, theirs_x) = cl.closed_loop(pair, seed=18, record=_eval_params)
  for key in theta0:
    assert np.abs(ours_x[key][-1] - ours[key][-1]).max() > 1e-6    # x ≠ y: a real test
  cl.assert_trajectories_close(theta0, ours, theirs)
  cl.assert_trajectories_close(theta0, ours_x, theirs_x, min_move=None, what="eval params, ")


def test_first_steps_by_hand():
  # SGD η = 0.1 on a constant g = 0.5 from θ = 0.1, β1 = 0.9: c1 = 1 (x = y = z = 0.05);
  # then z = 0, c2 = η²/(2η²) = ½, x = (0.05 + 0)/2, y = 0.9 x + 0.1 z
  tx = gx.schedule_free(gx.sgd(0.1), 0.1)
  p = {"b": jnp.asarray(0.1)}
  state = tx.init(p)
  seen = []
  for _ in range(2):
    u, state = tx.update({"b": jnp.asarray(0.5)}, state, p)
    p = gx.apply_updates(p, u)
    seen.append((float(p["b"]), float(gx.schedule_free_eval_params(state, p)["b"])))
  np.testing.assert_allclose(seen, [(0.05, 0.05), (0.0225, 0.025)], rtol=1e-6)


# --- composition, each against Optax ------------------------------------------------------

def _train(tx, params, steps, *, start=0, state=None, bad_step=None, optax_apply=False):
  """`steps` steps from `start`, the parameters moving and the gradient depending on them
  (`cl.grads_at`); at `bad_step` the gradient of `b` has a NaN. The parameters and state."""
  def grad_fn(k, p):
    g = cl.grads_at(k, p)
    return {**g, "b": g["b"].at[0].set(jnp.nan)} if k == bad_step else g

  _, state, params = cl.run(tx, params, steps, start=start, state=state, move=True,
                            grad_fn=grad_fn,
                            apply=optax.apply_updates if optax_apply else gx.apply_updates)
  return params, state


@pytest.fixture
def x64():
  """Float64 for the comparisons with Optax below: in float32 the two libraries' roundings
  (Adam's √v of small gradients, x recovered as (y − (1 − β1) z)/β1) differ by a few ulps."""
  with jax.enable_x64(True):
    yield


_close = functools.partial(cl.assert_trees_close, rtol=1e-7, atol=1e-10)


def test_inject_hyperparams_learning_rate_against_optax(x64):
  ours = gx.inject_hyperparams(gx.schedule_free)(gx.adam(0.1, b1=0.0), learning_rate=0.1)
  theirs = optax.inject_hyperparams(SF.schedule_free)(optax.adam(0.1, b1=0.0),
                                                      learning_rate=0.1)
  assert set(ours.init(cl.params64()).hyperparams) == {"learning_rate"}
  p, s = _train(ours, cl.params64(), 4)
  q, t = _train(theirs, cl.params64(), 4, optax_apply=True)
  _close(p, q)
  _close(gx.schedule_free_eval_params(s, p), SF.schedule_free_eval_params(t.inner_state, q))
  # the injected learning rate is the one used for the weights: a larger one after step 2
  # changes nothing while it stays the largest seen... until it does
  s2 = s.with_hyperparams(learning_rate=0.3)
  t2 = t._replace(hyperparams={**t.hyperparams, "learning_rate": jnp.asarray(0.3)})
  p, _ = _train(ours, p, 2, start=4, state=s2)
  q, _ = _train(theirs, q, 2, start=4, state=t2, optax_apply=True)
  _close(p, q)


def test_partition_against_optax_on_each_group(x64):
  labels = {"w": "sf", "b": "sgd", "s": "sf"}
  ours = gx.partition({"sf": gx.schedule_free(gx.adam(0.1, b1=0.0), 0.1), "sgd": gx.sgd(0.1)},
                      labels)
  p, s = _train(ours, cl.params64(), 4)
  sub = {"w": cl.params64()["w"], "s": cl.params64()["s"]}
  q, t = _train(SF.schedule_free(optax.adam(0.1, b1=0.0), 0.1), sub, 4, optax_apply=True)
  _close({"w": p["w"], "s": p["s"]}, q)
  x = gx.schedule_free_eval_params(s, p)
  _close({"w": x["w"], "s": x["s"]}, SF.schedule_free_eval_params(t, q))
  np.testing.assert_array_equal(x["b"], p["b"])              # no schedule-free state there
  b = cl.params64()["b"]
  for k in range(4):
    b = b - 0.1 * cl.grads_at(k, {"b": b})["b"]
  _close(p["b"], b)


def test_apply_if_finite_against_optax(x64):
  ours = gx.apply_if_finite(gx.schedule_free(gx.sgd(0.1), 0.1), 2)
  theirs = optax.apply_if_finite(SF.schedule_free(optax.sgd(0.1), 0.1), 2)
  p, s = _train(ours, cl.params64(), 5, bad_step=2)
  q, t = _train(theirs, cl.params64(), 5, bad_step=2, optax_apply=True)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(p))
  _close(p, q)
  _close(gx.schedule_free_eval_params(s, p), SF.schedule_free_eval_params(t.inner_state, q))


def test_chain_and_masked_find_the_state(x64):
  tx = gx.chain(gx.clip(10.0), gx.schedule_free(gx.sgd(0.1), 0.1, b1=0.5))
  p, s = _train(tx, cl.params64(), 3)
  q, t = _train(optax.chain(optax.clip(10.0), SF.schedule_free(optax.sgd(0.1), 0.1, b1=0.5)),
                cl.params64(), 3, optax_apply=True)
  _close(p, q)
  _close(gx.schedule_free_eval_params(s, p), SF.schedule_free_eval_params(t[1], q))
  masked = gx.masked(gx.schedule_free(gx.sgd(0.1), 0.1), {"w": True, "b": False, "s": False})
  p, s = _train(masked, cl.params64(), 3)
  q, t = _train(SF.schedule_free(optax.sgd(0.1), 0.1), {"w": cl.params64()["w"]}, 3,
                optax_apply=True)
  x = gx.schedule_free_eval_params(s, p)
  _close(x["w"], SF.schedule_free_eval_params(t, q)["w"])
  np.testing.assert_array_equal(x["b"], p["b"])


def test_checkpoint_round_trip_and_resume_against_optax(x64):
  make = lambda: gx.schedule_free_adamw(0.05, warmup_steps=3, weight_decay=0.01)
  params0 = cl.params64()
  run = cl.checkpoint_round_trip(make, params0, grad_fn=cl.grads_at)
  cl.assert_identical(run.full[:2], run.resumed[:2])
  p, s, _ = run.resumed
  q, t = _train(SF.schedule_free_adamw(0.05, warmup_steps=3, weight_decay=0.01), params0, 5,
                optax_apply=True)
  _close(p, q)
  _close(gx.schedule_free_eval_params(s, p), SF.schedule_free_eval_params(t, q))


def test_complex_parameters_as_pairs_of_reals_in_optax():
  tx = gx.schedule_free(gx.sgd(0.1), 0.1)
  theirs = SF.schedule_free(optax.sgd(0.1), 0.1)
  p = {"z": jnp.array([1.0 + 2.0j, -0.5 + 0.1j], jnp.complex64)}
  q = {"re": jnp.real(p["z"]), "im": jnp.imag(p["z"])}
  s, t = tx.init(p), theirs.init(q)
  for k in range(3):
    g = p["z"] * (1 + 0.3j) + k
    u, s = tx.update({"z": g}, s, p)
    p = gx.apply_updates(p, u)
    gq = (q["re"] + 1j * q["im"]) * (1 + 0.3j) + k
    v, t = theirs.update({"re": jnp.real(gq), "im": jnp.imag(gq)}, t, q)
    q = optax.apply_updates(q, v)
  x, xq = gx.schedule_free_eval_params(s, p)["z"], SF.schedule_free_eval_params(t, q)
  assert x.dtype == jnp.complex64
  np.testing.assert_allclose(p["z"], q["re"] + 1j * q["im"], rtol=1e-6)
  np.testing.assert_allclose(x, xq["re"] + 1j * xq["im"], rtol=1e-6)


def test_injected_b1_is_the_one_eval_params_uses(x64):
  tx = gx.inject_hyperparams(gx.schedule_free)(gx.sgd(0.1), learning_rate=0.1, b1=0.9)
  p, s = _train(tx, cl.params64(), 2)
  s = s.with_hyperparams(b1=0.5)
  p, s = _train(tx, p, 2, start=2, state=s)
  # Optax from the same point: its state's β1 set to the new one (Optax keeps init's)
  q, t = _train(SF.schedule_free(optax.sgd(0.1), 0.1, b1=0.9), cl.params64(), 2,
                optax_apply=True)
  other = SF.schedule_free(optax.sgd(0.1), 0.1, b1=0.5)
  q, t = _train(other, q, 2, start=2, state=t, optax_apply=True)
  _close(p, q)
  _close(gx.schedule_free_eval_params(s, p),
         SF.schedule_free_eval_params(t._replace(b1=jnp.asarray(0.5)), q))


# --- the contract ------------------------------------------------------------------------

FACTORIES = {
    "schedule_free": lambda **kw: gx.schedule_free(gx.sgd(0.1), 0.1, **kw),
    "schedule_free_adam": lambda **kw: gx.schedule_free(gx.adam(0.1, b1=0.0), 0.1, **kw),
    "schedule_free_sgd": lambda **kw: gx.schedule_free_sgd(0.1, **kw),
    "schedule_free_adamw": lambda **kw: gx.schedule_free_adamw(0.01, 2, weight_decay=0.1, **kw),
}


FULL = {"schedule_free"}                      # pmap, and the rest once: the others skip pmap
BF16 = {"schedule_free", "schedule_free_adamw"}


@pytest.mark.parametrize("name", ["schedule_free", "schedule_free_sgd", "schedule_free_adamw"])
def test_check_transform(name):
  factory = FACTORIES[name]
  gxt.check_transform(factory(), cl.params(), needs_params=True, pmap=name in FULL)
  if name in BF16:                                          # z in bfloat16
    tx = factory(state_dtype=jnp.bfloat16)
    gxt.check_transform(tx, cl.params(), needs_params=True, pmap=False)
    state = tx.init(cl.params())
    assert {x.dtype for x in jax.tree.leaves(state.z)} == {jnp.dtype(jnp.bfloat16)}


def test_bfloat16_z_stays_close_to_optax_in_float32():
  q, t = _train(FACTORIES["schedule_free_adamw"](state_dtype=jnp.bfloat16), cl.params(), 3)
  p, s = _train(SF.schedule_free_adamw(0.01, 2, weight_decay=0.1), cl.params(), 3,
                optax_apply=True)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(q))
  _close(q, p, rtol=1e-2, atol=1e-2)            # bfloat16 z: about 3 significant digits
  _close(gx.schedule_free_eval_params(t, q), SF.schedule_free_eval_params(s, p), rtol=2e-2,
         atol=2e-2)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_equal_by_value(name):
  cl.assert_equal_by_value(FACTORIES[name], state_dtype=True)


def test_different_hyperparameters_differ():
  assert gx.schedule_free(gx.sgd(0.1), 0.1) != gx.schedule_free(gx.sgd(0.2), 0.1)
  assert gx.schedule_free(gx.sgd(0.1), 0.1) != gx.schedule_free(gx.sgd(0.1), 0.1, b1=0.8)
  assert gx.schedule_free_sgd(0.1) != gx.schedule_free_sgd(0.1, weight_decay=0.1)
  assert gx.schedule_free_adamw(0.1) != gx.schedule_free_adamw(0.1, warmup_steps=10)
  assert gx.schedule_free_adamw(0.1, 5) == gx.schedule_free_adamw(learning_rate=0.1,
                                                                  warmup_steps=5)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.schedule_free(gx.sgd(0.1), -0.1), "schedule_free: learning_rate"),
    (lambda: gx.schedule_free(gx.sgd(0.1), 0.1, b1=0.0), "schedule_free: b1 must be > 0"),
    (lambda: gx.schedule_free(gx.sgd(0.1), 0.1, b1=1.5), "schedule_free: b1 must be in [0, 1]"),
    (lambda: gx.schedule_free(gx.sgd(0.1), 0.1, weight_lr_power=-1.0),
     "schedule_free: weight_lr_power must be >= 0"),
    (lambda: gx.schedule_free(gx.sgd(0.1), 0.1, state_dtype=jnp.int32),
     "schedule_free: state_dtype must be a floating dtype"),
    (lambda: gx.schedule_free_sgd(0.1, warmup_steps=0), "schedule_free_sgd: warmup_steps"),
    (lambda: gx.schedule_free_sgd(0.1, weight_decay=-1.0), "schedule_free_sgd: weight_decay"),
    (lambda: gx.schedule_free_sgd(gx.linear_schedule(0.0, 1.0, 5), warmup_steps=3),
     "schedule_free_sgd: learning_rate must be a number with warmup_steps"),
    (lambda: gx.schedule_free_adamw(0.1, b2=1.0), "schedule_free_adamw: b2 must be in [0, 1)"),
    (lambda: gx.schedule_free_adamw(0.1, eps=-1.0), "schedule_free_adamw: eps must be >= 0"),
    (lambda: gx.schedule_free_adamw(0.1, b1=0.0), "schedule_free: b1 must be > 0"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_eval_params_of_a_state_without_schedule_free_is_a_key_error():
  with pytest.raises(KeyError, match="schedule_free_eval_params: the state holds no "
                                     "ScheduleFreeState"):
    gx.schedule_free_eval_params(gx.adam(0.1).init(cl.params()), cl.params())


def test_not_a_transform_is_a_type_error_and_params_are_required():
  with pytest.raises(TypeError, match="schedule_free: base_optimizer"):
    gx.schedule_free("sgd", 0.1)
  tx = gx.schedule_free(gx.sgd(0.1), 0.1)
  with pytest.raises(ValueError, match="schedule_free.update needs the current parameters"):
    tx.update(cl.grads(), tx.init(cl.params()))
