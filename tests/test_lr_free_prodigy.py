"""Learning-rate-free Adam (issue 18): `prodigy`, `dadapt_adamw` and their primitives
`scale_by_prodigy`, `scale_by_dadapt_adam`.

Oracle: Optax's `optax.contrib` in float64, in closed loop (each step's gradient is that of a
fixed function at the current parameters), 30 steps over a tree with a 130 × 129 matrix, a
vector and a scalar, with Optax's defaults and with every hyperparameter moved (and a
schedule); the parameters and the distance estimate must agree to 1e-7 relative after every
step. Then the contract, the wrappers (against Optax), equality by value, validation and a
checkpoint round trip.
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
from closed_loop import RTOL

C = optax.contrib


def _decay(step):
  """γ_t: 1 for 5 steps, then a linear decay to 0.2 at step 30 (one function for both)."""
  return 1.0 - 0.8 * jnp.clip((step - 5) / 25.0, 0.0, 1.0)


# name -> (gradxform optimizer, Optax optimizer, estimate of d from each state)
CASES = {
    "prodigy-default": (lambda: gx.prodigy(), lambda: C.prodigy()),
    "prodigy-moved": (lambda: gx.prodigy(0.5, (0.8, 0.99), 0.95, 1e-6, 1e-4, 2.0, 0.05,
                                         safeguard_warmup=True),
                      lambda: C.prodigy(0.5, (0.8, 0.99), 0.95, 1e-6, 1e-4, 2.0, 0.05,
                                        safeguard_warmup=True)),
    "prodigy-schedule": (lambda: gx.prodigy(_decay, weight_decay=0.01),
                         lambda: C.prodigy(_decay, weight_decay=0.01)),
    "dadapt-default": (lambda: gx.dadapt_adamw(), lambda: C.dadapt_adamw()),
    "dadapt-moved": (lambda: gx.dadapt_adamw(0.5, (0.8, 0.99), 1e-6, 1e-4, 0.05),
                     lambda: C.dadapt_adamw(0.5, (0.8, 0.99), 1e-6, 1e-4, 0.05)),
    "dadapt-schedule": (lambda: gx.dadapt_adamw(_decay, weight_decay=0.01),
                        lambda: C.dadapt_adamw(_decay, weight_decay=0.01)),
}


def _estimates(p1, s1, p2, s2):
  """The distance estimate d of each side's state, kept after every step."""
  return s1[0].estim_lr, s2.estim_lr


@pytest.mark.parametrize("pair", list(CASES.values()), ids=list(CASES))
def test_equals_optax_float64_every_step(pair):
  theta0, (ours, theirs, our_d, their_d) = cl.closed_loop(pair, seed=181, record=_estimates)
  assert our_d.dtype == np.float64
  assert our_d[-1] > 10 * our_d[0], "d barely grew: the comparison would be weak"
  np.testing.assert_allclose(our_d, their_d, rtol=RTOL)
  cl.assert_trajectories_close(theta0, ours, theirs)


# --- hand-checked values ----------------------------------------------------------------

def test_first_step_is_minus_d0_and_d_grows_by_hand():
  # one step from θ = 0 with g = 1: ĉ = √0.001/0.1 and m/√v = 0.1/√0.001, so u = −γ d₀;
  # x₀ − x = 0, so the numerator and d stay; second step g = 1 at θ = −d₀ (γ = 1):
  # ⟨g, x₀ − x⟩ = d₀, r = (d₀/d₀) · d₀ĉ₂ · d₀ and s = β3 s₁ + d₀ĉ₂ d₀ g/d₀ ...
  tx = gx.prodigy(eps=0.0, estim_lr0=0.01)
  p = {"x": jnp.zeros(())}
  state = tx.init(p)
  u, state = tx.update({"x": jnp.ones(())}, state, p)
  np.testing.assert_allclose(u["x"], -0.01, rtol=1e-6)
  d0, b1, b2 = 0.01, 0.9, 0.999
  b3 = b2 ** 0.5
  c1 = np.sqrt(1 - b2) / (1 - b1)
  c2 = np.sqrt(1 - b2 ** 2) / (1 - b1 ** 2)
  s1 = d0 * c1 * d0 / d0
  p = gx.apply_updates(p, u)
  _, state = tx.update({"x": jnp.ones(())}, state, p)
  r2 = d0 * c2 * d0                       # β3 · 0 + (d₀/d₀) · d₀ĉ₂ · ⟨1, d₀⟩
  s2 = b3 * s1 + d0 * c2 * d0 / d0
  np.testing.assert_allclose(state[0].estim_lr, max(d0, r2 / s2), rtol=1e-5)


def test_dadapt_first_step_is_minus_d0_by_hand():
  tx = gx.dadapt_adamw(0.5, eps=0.0, estim_lr0=0.01)
  u, state = tx.update({"x": jnp.full((3,), 2.0)}, tx.init({"x": jnp.zeros(3)}),
                       {"x": jnp.zeros(3)})
  np.testing.assert_allclose(u["x"], -0.5 * 0.01 * np.ones(3), rtol=1e-6)   # −γ d₀


def test_zero_gradients_keep_d_where_optax_gives_nan():
  p = {"x": jnp.ones(3)}
  for ours, theirs in ((gx.prodigy(), C.prodigy()), (gx.dadapt_adamw(), C.dadapt_adamw())):
    _, s = ours.update({"x": jnp.zeros(3)}, ours.init(p), p)
    _, t = theirs.update({"x": jnp.zeros(3)}, theirs.init(p), p)
    assert float(s[0].estim_lr) == np.float32(1e-6)
    assert np.isnan(float(t.estim_lr))                       # 0/0 in Optax


# --- the wrappers, against Optax --------------------------------------------------------

@pytest.fixture
def x64():
  """Float64 for the comparisons with Optax (float32 roundings differ by a few ulps)."""
  with jax.enable_x64(True):
    yield


# the runs below: the parameters move, and the gradient depends on them (`cl.grads_at`)
_train = functools.partial(cl.train, grad_fn=cl.grads_at)
_train_optax = functools.partial(cl.train, grad_fn=cl.grads_at, apply=optax.apply_updates)
_close = functools.partial(cl.assert_trees_close, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw"])
def test_inject_hyperparams_against_optax(name, x64):
  kwargs = dict(learning_rate=0.5, eps=1e-6, weight_decay=0.1)
  ours = gx.inject_hyperparams(getattr(gx, name))(**kwargs)
  theirs = optax.inject_hyperparams(getattr(C, name))(**kwargs)
  assert set(ours.init(cl.params64()).hyperparams) == set(kwargs)
  p, s, _ = _train(ours, None, cl.params64(), 0, 4)
  q, t, _ = _train_optax(theirs, None, cl.params64(), 0, 4)
  _close(p, q)
  if name == "prodigy":                  # γ injected as 0: no step (D-Adaptation's momentum
    s = s.with_hyperparams(learning_rate=0.0)        # holds the earlier steps' sizes)
    u, _ = ours.update(cl.grads_at(4, p), s, p)
    cl.assert_all_zero(u)


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw"])
def test_partition_against_optax_on_its_leaves(name, x64):
  tx = gx.partition({"lr_free": getattr(gx, name)(), "sgd": gx.sgd(0.1)},
                    {"w": "lr_free", "b": "sgd", "s": "lr_free"})
  p, _, _ = _train(tx, None, cl.params64(), 0, 4)
  sub = {"w": cl.params64()["w"], "s": cl.params64()["s"]}
  q, _, _ = _train_optax(getattr(C, name)(), None, sub, 0, 4)
  _close({"w": p["w"], "s": p["s"]}, q)


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw"])
def test_checkpoint_round_trip_and_resume_against_optax(name, x64):
  make = lambda: getattr(gx, name)(0.8, weight_decay=0.01)
  params0 = cl.params64()
  run = cl.checkpoint_round_trip(make, params0, grad_fn=cl.grads_at)
  cl.assert_identical(run.full[:2], run.resumed[:2])
  p, s, _ = run.resumed
  q, t, _ = _train_optax(getattr(C, name)(0.8, weight_decay=0.01), None, params0, 0, 5)
  _close(p, q)
  _close(s[0].estim_lr, t.estim_lr)


# --- the contract ------------------------------------------------------------------------

FACTORIES = {
    "prodigy": lambda: gx.prodigy(weight_decay=0.1),
    "dadapt_adamw": lambda: gx.dadapt_adamw(weight_decay=0.1),
    "scale_by_prodigy": lambda: gx.scale_by_prodigy(),
    "scale_by_dadapt_adam": lambda: gx.scale_by_dadapt_adam(),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_check_transform(name):
  gxt.check_transform(FACTORIES[name](), cl.params(), needs_params=True, pmap=name == "prodigy")


@pytest.mark.parametrize("name", list(FACTORIES))
def test_equal_by_value(name):
  cl.assert_equal_by_value(FACTORIES[name])


def test_different_hyperparameters_differ():
  assert gx.prodigy() != gx.prodigy(safeguard_warmup=True)
  assert gx.prodigy() != gx.prodigy(betas=(0.9, 0.99))
  assert gx.prodigy(beta3=0.9) != gx.prodigy(beta3=0.95)
  assert gx.dadapt_adamw() != gx.dadapt_adamw(estim_lr0=1e-5)
  assert gx.dadapt_adamw(0.5) == gx.dadapt_adamw(learning_rate=0.5)
  assert gx.scale_by_prodigy() != gx.scale_by_prodigy(estim_lr_coef=2.0)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.prodigy(-1.0), "prodigy: learning_rate"),
    (lambda: gx.prodigy(weight_decay=-0.1), "prodigy: weight_decay must be >= 0"),
    (lambda: gx.prodigy(betas=(1.0, 0.999)), "scale_by_prodigy: betas[0] must be in [0, 1)"),
    (lambda: gx.prodigy(betas=0.9), "scale_by_prodigy: betas must be a pair"),
    (lambda: gx.prodigy(beta3=1.5), "scale_by_prodigy: beta3 must be in [0, 1)"),
    (lambda: gx.prodigy(eps=-1.0), "scale_by_prodigy: eps must be >= 0"),
    (lambda: gx.prodigy(estim_lr0=0.0), "scale_by_prodigy: estim_lr0 must be > 0"),
    (lambda: gx.prodigy(estim_lr_coef=-1.0), "scale_by_prodigy: estim_lr_coef must be > 0"),
    (lambda: gx.dadapt_adamw(-1.0), "dadapt_adamw: learning_rate"),
    (lambda: gx.dadapt_adamw(weight_decay=-1.0), "dadapt_adamw: weight_decay must be >= 0"),
    (lambda: gx.dadapt_adamw(betas=(0.9, 1.0)),
     "scale_by_dadapt_adam: betas[1] must be in [0, 1)"),
    (lambda: gx.dadapt_adamw(eps=-1.0), "scale_by_dadapt_adam: eps must be >= 0"),
    (lambda: gx.dadapt_adamw(estim_lr0=-1.0), "scale_by_dadapt_adam: estim_lr0 must be > 0"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_params_are_required():
  for tx in (gx.prodigy(), gx.dadapt_adamw()):
    with pytest.raises(ValueError, match="needs the current parameters"):
      tx.update(cl.params(), tx.init(cl.params()))
