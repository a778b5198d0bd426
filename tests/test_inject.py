"""inject_hyperparams: hyperparameters in the state, identical trajectories, replacement."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}


def grads(params, i):
  return jax.tree.map(lambda x: jnp.sin(x * (i + 1)) + 0.1 * x, params)


def run(tx, steps=8, params=PARAMS, jit=True, **extra):
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  for i in range(steps):
    u, state = update(grads(params, i), state, params, **extra)
    params = gx.apply_updates(params, u)
  return params, state


def assert_trees_close(a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-7)


CASES = [
    ("sgd", gx.sgd, dict(learning_rate=0.1, momentum=0.9), 0),
    ("sgd_nesterov_l2", gx.sgd, dict(learning_rate=0.1, momentum=0.9, nesterov=True,
                                     weight_decay=1e-2), 0),
    ("adam", gx.adam, dict(learning_rate=1e-2, b1=0.9, b2=0.999), 1e-5),
    ("adamw_schedule", gx.adamw, dict(learning_rate=gx.cosine_decay_schedule(1e-2, 10),
                                      weight_decay=1e-2), 1e-6),
    ("adamw_masked", gx.adamw, dict(learning_rate=1e-2, weight_decay=1e-1,
                                    mask=lambda p: {"w": True, "b": False}), 1e-6),
    ("nadam", gx.nadam, dict(learning_rate=1e-2, momentum_decay=0.004), 1e-5),
    ("radam", gx.radam, dict(learning_rate=1e-2, b2=0.99), 1e-5),
    ("rmsprop", gx.rmsprop, dict(learning_rate=1e-2, decay=0.9, momentum=0.5), 1e-5),
    ("powersign", gx.powersign, dict(learning_rate=1e-2, decay_fn=gx.linear_sign_decay(10)),
     1e-6),
    ("noisy_sgd", gx.noisy_sgd, dict(learning_rate=1e-2, eta=0.01, seed=3), 1e-6),
]


@pytest.mark.parametrize("name,factory,kwargs,rtol", CASES, ids=[c[0] for c in CASES])
def test_injected_equals_plain(name, factory, kwargs, rtol):
  plain, _ = run(factory(**kwargs))
  injected, state = run(gx.inject_hyperparams(factory)(**kwargs))
  assert_trees_close(injected, plain, rtol)
  assert isinstance(state, gx.InjectHyperparamsState)
  for key, value in kwargs.items():
    if isinstance(value, float):
      assert state.hyperparams[key].dtype == jnp.float32
      np.testing.assert_allclose(state.hyperparams[key], value, rtol=1e-7)
  assert int(state.count) == 8
  assert "mask" not in state.hyperparams and "decay_fn" not in state.hyperparams
  assert "seed" not in state.hyperparams                  # annotated int: static


def test_schedule_is_evaluated_each_step_and_logged():
  sched = gx.piecewise_constant_schedule(0.1, {2: 0.5})
  tx = gx.inject_hyperparams(gx.sgd)(learning_rate=sched)
  state = tx.init(PARAMS)
  np.testing.assert_allclose(state.hyperparams["learning_rate"], 0.1)
  g = {"w": jnp.ones(3), "b": jnp.array(1.0)}
  seen = []
  for _ in range(4):
    u, state = tx.update(g, state)
    seen.append(float(state.hyperparams["learning_rate"]))
    np.testing.assert_allclose(u["b"], -seen[-1], rtol=1e-7)
  np.testing.assert_allclose(seen, [0.1, 0.1, 0.05, 0.05], rtol=1e-7)


def test_replacing_hyperparams_changes_the_step():
  tx = gx.inject_hyperparams(gx.sgd)(learning_rate=0.1, momentum=0.0)
  state = tx.init(PARAMS)
  g = {"w": jnp.ones(3), "b": jnp.array(2.0)}
  u, state = tx.update(g, state)
  np.testing.assert_allclose(u["b"], -0.2, rtol=1e-6)
  state = state.with_hyperparams(learning_rate=0.01)
  assert state.hyperparams["learning_rate"].dtype == jnp.float32
  u, state = tx.update(g, state)
  np.testing.assert_allclose(u["b"], -0.02, rtol=1e-6)
  # momentum injected as 0 keeps its stage (an array is never skipped): turning it on works
  state = state.with_hyperparams(momentum=0.5)
  u, state = tx.update(g, state)
  np.testing.assert_allclose(u["b"], -0.01 * (2.0 + 0.5 * 2.0), rtol=1e-6)
  # the _replace route with a plain dict
  state = state._replace(hyperparams={**state.hyperparams, "learning_rate": jnp.float32(0.0)})
  u, state = tx.update(g, state)
  np.testing.assert_allclose(u["b"], 0.0)


def test_with_hyperparams_errors():
  state = gx.inject_hyperparams(gx.adam)(learning_rate=1e-3).init(PARAMS)
  with pytest.raises(KeyError, match="b1"):
    state.with_hyperparams(b1=0.8)               # a default not passed is not injected
  with pytest.raises(ValueError, match="shape"):
    state.with_hyperparams(learning_rate=jnp.ones(2))


def test_missing_key_error():
  tx = gx.inject_hyperparams(gx.adam)(learning_rate=1e-3)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match="learning_rate"):
    tx.update(PARAMS, state._replace(hyperparams={}))


def test_equality_and_chain():
  a = gx.inject_hyperparams(gx.sgd)(learning_rate=0.1, momentum=0.9)
  b = gx.inject_hyperparams(gx.sgd)(0.1, momentum=0.9)
  assert a == b and hash(a) == hash(b)
  assert a != gx.inject_hyperparams(gx.sgd)(learning_rate=0.2, momentum=0.9)
  s1 = gx.inject_hyperparams(gx.adamw)(learning_rate=gx.cosine_decay_schedule(1e-3, 10))
  s2 = gx.inject_hyperparams(gx.adamw)(learning_rate=gx.cosine_decay_schedule(1e-3, 10))
  assert s1 == s2 and hash(s1) == hash(s2)
  assert gx.inject_hyperparams(gx.sgd) == gx.inject_hyperparams(gx.sgd)
  # nests in chain; extras reach the inner optimizer; the chain's update is jit-safe
  tx = gx.chain(gx.clip_by_global_norm(1.0), a)
  p1, _ = run(tx)
  p2, _ = run(gx.chain(gx.clip_by_global_norm(1.0), gx.sgd(0.1, momentum=0.9)))
  assert_trees_close(p1, p2, 1e-6)
  # injected numeric hyperparameters of a primitive transform
  tx = gx.inject_hyperparams(gx.scale_by_momentum)(decay=0.9)
  p1, _ = run(gx.chain(tx, gx.scale_by_learning_rate(0.1)))
  p2, _ = run(gx.chain(gx.scale_by_momentum(0.9), gx.scale_by_learning_rate(0.1)))
  assert_trees_close(p1, p2, 1e-6)


def test_static_args_and_dtype():
  tx = gx.inject_hyperparams(gx.adam, static_args=("b1",))(learning_rate=1e-3, b1=0.9)
  state = tx.init(PARAMS)
  assert set(state.hyperparams) == {"learning_rate"}
  tx = gx.inject_hyperparams(gx.sgd, hyperparam_dtype=jnp.bfloat16)(learning_rate=0.5)
  assert tx.init(PARAMS).hyperparams["learning_rate"].dtype == jnp.bfloat16


def test_counter_story():
  """inject keeps its own int32 count (it drives scheduled hyperparameters); the wrapped Adam
  keeps its single chain counter; both advance together."""
  tx = gx.inject_hyperparams(gx.adam)(learning_rate=gx.cosine_decay_schedule(1e-2, 10))
  _, state = run(tx, steps=4)
  ints = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.integer)]
  assert len(ints) == 2 and all(int(x) == 4 and x.dtype == jnp.int32 for x in ints)


def test_bad_factory():
  with pytest.raises(TypeError, match="factory"):
    gx.inject_hyperparams(gx.adam(1e-3))


def test_foreign_factory_optax():
  sched = optax.cosine_decay_schedule(1e-2, 10)
  mask = lambda p: jax.tree.map(lambda x: x.ndim > 0, p)   # noqa: E731 - a mask function
  kwargs = dict(learning_rate=sched, b1=0.8, weight_decay=1e-2, mask=mask)
  injected, state = run(gx.inject_hyperparams(optax.adamw)(**kwargs))
  plain, _ = run(optax.adamw(**kwargs))
  assert_trees_close(injected, plain, 1e-5)
  assert set(state.hyperparams) == {"learning_rate", "b1", "weight_decay"}   # mask: static


def test_users_factory_declares_its_hyperparameters():
  """A factory decorated with gx.transform(hyperparams=...) gets exactly those injected; its
  other numeric arguments (here an int seed and an undeclared float) are passed as they are."""

  @gx.transform(hyperparams=("decay", "scale"))
  def scaled_momentum(decay: float = 0.9, scale: float = 1.0, *, offset: float = 0.0,
                      seed: int = 0):
    del seed
    inner = gx.scale_by_momentum(decay)

    def update(updates, state, params=None, **extra):
      u, state = inner.update(updates, state, params, **extra)
      return jax.tree.map(lambda x: scale * x + offset, u), state

    return gx.GradientTransformation(inner.init, update)

  tx = gx.inject_hyperparams(scaled_momentum)(decay=0.5, scale=2.0, offset=0.25, seed=3)
  state = tx.init(PARAMS)
  assert sorted(state.hyperparams) == ["decay", "scale"]
  g = {"w": jnp.ones(3), "b": jnp.array(2.0)}
  u, state = jax.jit(tx.update)(g, state)
  np.testing.assert_allclose(u["b"], 2.0 * 2.0 + 0.25)              # b = g on the first step
  state = state.with_hyperparams(scale=-1.0)
  u, state = jax.jit(tx.update)(g, state)
  np.testing.assert_allclose(u["b"], -(0.5 * 2.0 + 2.0) + 0.25)     # b = 0.5 b + g
  with pytest.raises(KeyError, match="declares as hyperparameters"):
    state.with_hyperparams(offset=0.0)
  # A declared hyperparameter may be a schedule: evaluated at each step, logged in the state.
  tx = gx.inject_hyperparams(scaled_momentum)(decay=0.0, scale=lambda t: 1.0 + t)
  state = tx.init(PARAMS)
  for step in range(3):
    u, state = tx.update(g, state)
    np.testing.assert_allclose(u["b"], 2.0 * (1.0 + step))
    np.testing.assert_allclose(state.hyperparams["scale"], 1.0 + step)


def test_declaration_names_real_parameters():
  with pytest.raises(TypeError, match=r"hyperparams \['lr'\] are not parameters"):
    @gx.transform(hyperparams=("lr",))
    def bad(learning_rate: float):
      return gx.scale(-learning_rate)


def test_undeclared_plain_factory_reads_its_annotations():
  """A plain function (no declaration): a float annotation takes a number, a callable one is
  passed as is, an int stays static, an unannotated parameter takes a number or a schedule."""
  seen = {}

  def plain(learning_rate, decay: float, fn: Callable[[Any], Any], steps: int):
    seen.update(decay=decay, fn=fn, steps=steps)
    return gx.chain(gx.scale_by_momentum(decay), gx.scale_by_learning_rate(learning_rate))

  ident = lambda x: x   # noqa: E731 - a function argument that is not a schedule
  tx = gx.inject_hyperparams(plain)(learning_rate=lambda t: 0.1, decay=0.9, fn=ident, steps=5)
  state = tx.init(PARAMS)
  assert sorted(state.hyperparams) == ["decay", "learning_rate"]
  assert seen["fn"] is ident and seen["steps"] == 5
