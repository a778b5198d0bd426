"""No needless recompiles: rebuilt optimizers hit the jit cache; injected values are state."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import pytest

import gradxform as gx

# explicit dtypes: `jnp.array(0.5)` would be weakly typed and retrace once after the first step
PARAMS = {"w": jnp.array([1.0, -2.0], jnp.float32), "b": jnp.array(0.5, jnp.float32)}


def make_step():
  @chex.assert_max_traces(n=1)
  def step(tx, params, state):
    grads = jax.tree.map(lambda p: 2.0 * p, params)
    loss = jnp.sum(params["w"] ** 2)   # for reduce_on_plateau; other transforms ignore it
    updates, state = tx.update(grads, state, params, value=loss)
    return gx.apply_updates(params, updates), state

  return jax.jit(step, static_argnums=0)


BUILDERS = {
    "adam_cosine": lambda: gx.adam(gx.cosine_decay_schedule(1e-3, 100)),
    "adamw_sgdr": lambda: gx.adamw(gx.sgdr_schedule(1e-3, 10, period_mult=2.0),
                                   weight_decay=gx.linear_schedule(0.0, 1e-2, 10)),
    "sgd_join": lambda: gx.sgd(gx.join_schedules([gx.linear_schedule(0.0, 0.1, 5),
                                                  gx.one_cycle_schedule(50, 0.1)], [5]),
                               momentum=0.9),
    "powersign_decay": lambda: gx.powersign(1e-2, decay_fn=gx.restart_sign_decay(20, 2)),
    "inject_adamw": lambda: gx.inject_hyperparams(gx.adamw)(
        learning_rate=gx.warmup_cosine_decay_schedule(0.0, 1e-3, 5, 50), weight_decay=1e-2),
    "plateau_chain": lambda: gx.chain(gx.adam(1e-3), gx.reduce_on_plateau()),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_rebuilt_optimizer_as_static_argument_does_not_retrace(name):
  chex.clear_trace_counter()
  step = make_step()
  params = PARAMS
  state = BUILDERS[name]().init(params)
  for _ in range(3):
    params, state = step(BUILDERS[name](), params, state)   # fresh but equal every step


@pytest.mark.parametrize("factory,kwargs,changes", [
    (gx.sgd, dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-3),
     [dict(learning_rate=0.05), dict(momentum=0.5), dict(weight_decay=0.0),
      dict(learning_rate=1e-3, momentum=0.0)]),
    (gx.adamw, dict(learning_rate=1e-3, b1=0.9, weight_decay=1e-2),
     [dict(learning_rate=1e-4), dict(weight_decay=0.1), dict(b1=0.8)]),
    (gx.adam, dict(learning_rate=gx.cosine_decay_schedule(1e-3, 10), b2=0.99),
     [dict(b2=0.999), dict(b2=0.9)]),
])
def test_changing_injected_values_does_not_retrace(factory, kwargs, changes):
  chex.clear_trace_counter()
  step = make_step()
  tx = gx.inject_hyperparams(factory)(**kwargs)
  params = PARAMS
  state = tx.init(params)
  params, state = step(tx, params, state)
  for change in changes:
    state = state.with_hyperparams(**change)
    new_params, state = step(tx, params, state)
    for k, v in change.items():
      assert float(state.hyperparams[k]) == pytest.approx(v)
    params = new_params


def test_changed_learning_rate_takes_effect_without_retrace():
  chex.clear_trace_counter()
  step = make_step()
  tx = gx.inject_hyperparams(gx.sgd)(learning_rate=0.1)
  state = tx.init(PARAMS)
  p1, state = step(tx, PARAMS, state)
  state = state.with_hyperparams(learning_rate=0.0)
  p2, state = step(tx, p1, state)
  chex.assert_trees_all_close(p2, p1)     # a zero learning rate: no movement


def test_rebuilt_schedule_hits_cache_when_jitted_directly():
  chex.clear_trace_counter()

  @functools.partial(jax.jit, static_argnums=0)
  @chex.assert_max_traces(n=1)
  def evaluate(schedule, step):
    return schedule(step)

  for i in range(3):
    evaluate(gx.sgdr_schedule(0.1, 10, period_mult=2.0), jnp.int32(i))


def test_the_trace_counter_does_catch_retraces():
  """Guards the tests above: an optimizer holding a fresh lambda is not equal, so it retraces."""
  chex.clear_trace_counter()
  step = make_step()
  state = gx.adam(lambda t: 1e-3).init(PARAMS)
  params, state = step(gx.adam(lambda t: 1e-3), PARAMS, state)
  with pytest.raises(AssertionError, match="traced > 1"):
    step(gx.adam(lambda t: 1e-3), params, state)


def test_bare_python_float_in_hyperparams_costs_one_trace():
  """Documented caveat: a bare float in the dict is weakly typed (one more trace); the update
  returns it as float32, so the step after that hits the cache again."""
  chex.clear_trace_counter()
  traces = []

  @functools.partial(jax.jit, static_argnums=0)
  def step(tx, params, state):
    traces.append(1)
    updates, state = tx.update(jax.tree.map(lambda p: 2.0 * p, params), state, params)
    return gx.apply_updates(params, updates), state

  tx = gx.inject_hyperparams(gx.sgd)(learning_rate=0.1)
  params, state = step(tx, PARAMS, tx.init(PARAMS))
  state = state._replace(hyperparams={"learning_rate": 0.01})
  params, state = step(tx, params, state)
  assert state.hyperparams["learning_rate"].dtype == jnp.float32
  params, state = step(tx, params, state)
  assert len(traces) == 2
