"""The modern optimizers of issue 16, first increment: Lion, signSGD, Signum, AdaBelief, Yogi,
AdaMaxW, NAdamW, and their primitives `scale_by_sign`, `scale_by_lion`, `scale_by_belief`,
`scale_by_yogi`.

Oracle: Optax itself in float64, in closed loop (each step's gradient is that of a fixed
function at the current parameters), 30 steps over a tree with a 130 × 129 matrix, a vector
and a scalar, with Optax's defaults and with every hyperparameter moved; the parameters must
agree to 1e-7 relative after every step. Then the contract: `gradxform.testing`, the wrappers,
equality by value, validation.
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


# name -> [(gradxform optimizer, Optax optimizer)]: the defaults first, then moved values.
CASES = {
    "lion": [
        (lambda: gx.lion(3e-3), lambda: optax.lion(3e-3)),
        (lambda: gx.lion(1e-2, 0.8, 0.95, weight_decay=0.3, mask=MASK),
         lambda: optax.lion(1e-2, 0.8, 0.95, weight_decay=0.3, mask=MASK)),
    ],
    "sign_sgd": [
        (lambda: gx.sign_sgd(3e-3), lambda: optax.sign_sgd(3e-3)),
        (lambda: gx.sign_sgd(0.05), lambda: optax.sign_sgd(0.05)),
    ],
    "signum": [
        (lambda: gx.signum(3e-3), lambda: optax.signum(3e-3)),
        (lambda: gx.signum(0.02, 0.5), lambda: optax.signum(0.02, 0.5)),
    ],
    "adabelief": [
        (lambda: gx.adabelief(1e-2), lambda: optax.adabelief(1e-2)),
        (lambda: gx.adabelief(0.03, 0.8, 0.99, 1e-3, 1e-4, nesterov=True),
         lambda: optax.adabelief(0.03, 0.8, 0.99, 1e-3, 1e-4, nesterov=True)),
    ],
    "yogi": [
        (lambda: gx.yogi(1e-2), lambda: optax.yogi(1e-2)),
        (lambda: gx.yogi(0.05, 0.7, 0.9, 1e-1), lambda: optax.yogi(0.05, 0.7, 0.9, 1e-1)),
    ],
    "adamaxw": [
        (lambda: gx.adamaxw(1e-2), lambda: optax.adamaxw(1e-2)),
        (lambda: gx.adamaxw(0.03, 0.8, 0.99, 1e-2, weight_decay=0.2, mask=MASK),
         lambda: optax.adamaxw(0.03, 0.8, 0.99, 1e-2, weight_decay=0.2, mask=MASK)),
    ],
    "nadamw": [
        (lambda: gx.nadamw(1e-2), lambda: optax.nadamw(1e-2)),
        (lambda: gx.nadamw(0.03, 0.8, 0.99, 1e-3, eps_root=1e-4, weight_decay=0.2, mask=MASK),
         lambda: optax.nadamw(0.03, 0.8, 0.99, 1e-3, eps_root=1e-4, weight_decay=0.2,
                              mask=MASK)),
    ],
}
IDS = [f"{name}-{'default' if i == 0 else 'moved'}" for name, cases in CASES.items()
       for i in range(len(cases))]
FLAT = [pair for cases in CASES.values() for pair in cases]


@pytest.mark.parametrize("pair", FLAT, ids=IDS)
def test_equals_optax_float64_every_step(pair):
  theta0, (ours, theirs) = cl.closed_loop(pair)
  cl.assert_trajectories_close(theta0, ours, theirs)


# --- the contract ------------------------------------------------------------------------

OPTIMIZERS = {
    "lion": lambda **kw: gx.lion(1e-3, **kw),
    "sign_sgd": lambda **kw: gx.sign_sgd(1e-2),
    "signum": lambda **kw: gx.signum(1e-2, **kw),
    "adabelief": lambda **kw: gx.adabelief(1e-2, **kw),
    "yogi": lambda **kw: gx.yogi(1e-2, **kw),
    "adamaxw": lambda **kw: gx.adamaxw(1e-2, **kw),
    "nadamw": lambda **kw: gx.nadamw(1e-2, **kw),
}
PRIMITIVES = {
    "scale_by_sign": lambda **kw: gx.scale_by_sign(),
    "scale_by_lion": lambda **kw: gx.scale_by_lion(**kw),
    "scale_by_belief": lambda **kw: gx.scale_by_belief(**kw),
    "scale_by_yogi": lambda **kw: gx.scale_by_yogi(**kw),
}
STATEFUL = {"lion", "signum", "adabelief", "yogi", "adamaxw", "nadamw", "scale_by_lion",
            "scale_by_belief", "scale_by_yogi"}


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_check_transform(name):
  factory = {**OPTIMIZERS, **PRIMITIVES}[name]
  # pmap on the primitives, which carry the state; the optimizers chain them
  gxt.check_transform(factory(), cl.params(), needs_params=True, pmap=name in PRIMITIVES)
  if name in STATEFUL:                      # moments in bfloat16 for float32 parameters
    tx = factory(state_dtype=jnp.bfloat16)
    gxt.check_transform(tx, cl.params(), needs_params=True, pmap=False)
    state = tx.init(cl.params())
    assert {x.dtype for x in jax.tree.leaves(state) if x.ndim > 0} == {jnp.dtype(jnp.bfloat16)}


INJECTED = {
    "lion": dict(learning_rate=1e-3, b1=0.8, b2=0.95, weight_decay=0.1),
    "sign_sgd": dict(learning_rate=0.01),
    "signum": dict(learning_rate=0.01, beta=0.7),
    "adabelief": dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10),
    "yogi": dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-2),
    "adamaxw": dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1),
    "nadamw": dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_inject_hyperparams_equals_plain_and_injects(name):
  cl.assert_inject_equals_plain(getattr(gx, name), INJECTED[name])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_masked_and_partition_equal_the_optimizer_on_its_leaves(name):
  cl.assert_masked_and_partition_match(OPTIMIZERS[name]())


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(PRIMITIVES))
def test_equal_by_value(name):
  cl.assert_equal_by_value({**OPTIMIZERS, **PRIMITIVES}[name], state_dtype=name in STATEFUL)


def test_different_hyperparameters_differ():
  assert gx.lion(1e-3) != gx.lion(2e-3)
  assert gx.sign_sgd(1e-3) != gx.sign_sgd(2e-3)
  assert gx.signum(1e-3, 0.9) != gx.signum(1e-3, 0.8)
  assert gx.adabelief(1e-3) != gx.adabelief(1e-3, nesterov=True)
  assert gx.yogi(1e-3) != gx.yogi(1e-3, eps=1e-4)
  assert gx.adamaxw(1e-3) != gx.adamaxw(1e-3, eps_in_max=False)
  assert gx.nadamw(1e-3) != gx.nadamw(1e-3, weight_decay=0.0)
  assert gx.nadamw(1e-3, 0.9) == gx.nadamw(learning_rate=1e-3, b1=0.9)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.lion(-1.0), "lion: learning_rate"),
    (lambda: gx.lion(1e-3, b1=1.0), "lion: b1 must be in [0, 1), got 1.0"),
    (lambda: gx.lion(1e-3, b2=-0.1), "lion: b2 must be in [0, 1), got -0.1"),
    (lambda: gx.lion(1e-3, weight_decay=-1.0), "lion: weight_decay"),
    (lambda: gx.sign_sgd(-0.1), "sign_sgd: learning_rate"),
    (lambda: gx.signum(0.1, beta=1.5), "signum: beta must be in [0, 1), got 1.5"),
    (lambda: gx.adabelief(0.1, b1=2.0), "adabelief: b1 must be in [0, 1), got 2.0"),
    (lambda: gx.adabelief(0.1, eps=-1.0), "adabelief: eps must be"),
    (lambda: gx.adabelief(0.1, eps_root=-1.0), "adabelief: eps_root must be"),
    (lambda: gx.yogi(0.1, b2=1.0), "yogi: b2 must be in [0, 1), got 1.0"),
    (lambda: gx.yogi(0.1, eps=-1e-3), "yogi: eps must be"),
    (lambda: gx.yogi(0.1, initial_accumulator_value=-1.0),
     "scale_by_yogi: initial_accumulator_value must be"),
    (lambda: gx.adamaxw(0.1, weight_decay=-0.1), "adamaxw: weight_decay"),
    (lambda: gx.adamaxw(0.1, b1=-0.5), "adamaxw: b1 must be"),
    (lambda: gx.nadamw(0.1, eps_root=-1.0), "nadamw: eps_root must be"),
    (lambda: gx.nadamw(0.1, weight_decay=-1.0), "nadamw: weight_decay"),
    (lambda: gx.scale_by_lion(b1=1.2), "scale_by_lion: b1 must be"),
    (lambda: gx.scale_by_belief(b2=1.0), "scale_by_belief: b2 must be"),
    (lambda: gx.scale_by_yogi(eps=-1.0), "scale_by_yogi: eps must be"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


# --- hand-checked values and conventions ------------------------------------------------

def test_lion_first_steps_by_hand():
  tx = gx.scale_by_lion(0.5, 0.9)
  state = tx.init({"w": jnp.zeros(3)})
  u, state = tx.update({"w": jnp.array([1.0, -2.0, 0.0])}, state)
  np.testing.assert_array_equal(u["w"], [1.0, -1.0, 0.0])
  np.testing.assert_allclose(state.mu["w"], [0.1, -0.2, 0.0], rtol=1e-6)
  # sign(0.5 · g + 0.5 · m) with m = (0.1, −0.2, 0): the momentum decides where g is small
  u, _ = tx.update({"w": jnp.array([-0.05, 0.1, 0.3])}, state)
  np.testing.assert_array_equal(u["w"], [1.0, -1.0, 1.0])


def test_yogi_moves_v_by_at_most_its_step():
  tx = gx.scale_by_yogi(0.9, 0.9, eps=0.0, initial_accumulator_value=1.0)
  state = tx.init({"w": jnp.zeros(2)})
  _, state = tx.update({"w": jnp.array([3.0, 0.5])}, state)
  # v = 1 − 0.1 · sign(1 − g²) · g²: up by 0.9 where g² = 9 > v, down by 0.025 where g² < v
  np.testing.assert_allclose(state.nu["w"], [1.9, 0.975], rtol=1e-6)


def test_adamaxw_paper_form_is_adamax_plus_decay():
  params = {"w": jnp.zeros(3)}
  grads = [{"w": jnp.array([1.0, -2.0, 0.5])}, {"w": jnp.array([0.01, -0.02, 0.04])}]

  def run(tx):
    state, outs = tx.init(params), []
    for g in grads:
      u, state = tx.update(g, state, params)
      outs.append(u["w"])
    return outs

  paper = run(gx.adamaxw(0.01, b2=0.5, eps=0.1, weight_decay=0.0, eps_in_max=False))
  adamax = run(gx.adamax(0.01, b2=0.5, eps=0.1))
  torch_form = run(gx.adamaxw(0.01, b2=0.5, eps=0.1, weight_decay=0.0))
  np.testing.assert_allclose(paper[1], adamax[1], rtol=1e-6)
  # second step, β2 |g1| > |g2|: paper m̂/(β2 |g1| + ε), torch m̂/(β2 (|g1| + ε))
  assert np.abs(paper[1] / torch_form[1] - 1.0).min() > 0.04    # the other ε is far off


def test_signum_is_sign_of_the_ema():
  params = cl.params()
  ours = cl.run(gx.signum(0.1, 0.5), params)[0]
  m = jax.tree.map(jnp.zeros_like, params)
  for k in range(3):
    m = jax.tree.map(lambda m_, g: 0.5 * m_ + 0.5 * g, m, cl.grads(k))
    jax.tree.map(lambda u, m_: np.testing.assert_allclose(u, -0.1 * np.sign(m_)), ours[k], m)
