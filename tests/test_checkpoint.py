"""Optimizer state round-trips through flax.serialization and Orbax; resumed runs are exact."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization

import gradxform as gx


def _params():
  return {"dense": {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.zeros(3)},
          "emb": jnp.ones((2, 2), jnp.bfloat16), "scale": jnp.float32(0.5)}


def _grads(i):
  leaves, treedef = jax.tree.flatten(_params())
  rng = np.random.RandomState(100 + i)
  return treedef.unflatten([jnp.asarray(rng.randn(*np.shape(p)), jnp.result_type(p))
                            for p in leaves])


def _labels(p):
  return {"dense": {"w": "decay", "b": "plain"}, "emb": "plain", "scale": "plain"}


def _mask(p):
  return {"dense": {"w": True, "b": False}, "emb": True, "scale": False}


def _inject(factory, **kw):
  return gx.inject_hyperparams(factory)(**kw)


# name -> (factory of a fresh optimizer, needs params)
OPTIMIZERS = {
    "sgd": (lambda: gx.sgd(0.1, 0.9, nesterov=True, weight_decay=1e-3), True),
    "sgdw": (lambda: gx.sgdw(0.1), True),
    "noisy_sgd": (lambda: gx.noisy_sgd(0.1), False),
    "adagrad": (lambda: gx.adagrad(0.1), False),
    "adadelta": (lambda: gx.adadelta(), False),
    "rmsprop": (lambda: gx.rmsprop(0.01, centered=True, momentum=0.9), False),
    "adam": (lambda: gx.adam(gx.cosine_decay_schedule(0.1, 10)), False),
    "adamw": (lambda: gx.adamw(0.1), True),
    "adamax": (lambda: gx.adamax(0.1), False),
    "nadam": (lambda: gx.nadam(0.1, momentum_decay=0.004), False),
    "amsgrad": (lambda: gx.amsgrad(0.1), False),
    "radam": (lambda: gx.radam(0.1), False),
    "powersign": (lambda: gx.powersign(0.1), False),
    "addsign": (lambda: gx.addsign(0.1), False),
    "lion": (lambda: gx.lion(0.1), True),
    "sign_sgd": (lambda: gx.sign_sgd(0.1), False),
    "signum": (lambda: gx.signum(0.1), False),
    "adabelief": (lambda: gx.adabelief(0.1), False),
    "yogi": (lambda: gx.yogi(0.1), False),
    "adamaxw": (lambda: gx.adamaxw(0.1), True),
    "nadamw": (lambda: gx.nadamw(0.1), True),
    "injected_adam": (lambda: _inject(gx.adam, learning_rate=0.1, b1=0.8), False),
    "injected_sgd_schedule": (lambda: _inject(gx.sgd, learning_rate=gx.linear_schedule(
        0.1, 0.01, 5), momentum=0.9), False),
    "masked": (lambda: gx.masked(gx.adam(0.1), _mask), False),
    "partitioned": (lambda: gx.partition({"decay": gx.adamw(0.1), "plain": gx.sgd(0.1, 0.9)},
                                         _labels), True),
    "nested": (lambda: gx.chain(gx.clip_by_global_norm(1.0), gx.partition(
        {"decay": gx.masked(gx.adam(0.1), lambda p: jax.tree.map(lambda _: True, p)),
         "plain": gx.set_to_zero()}, _labels)), False),
    "apply_if_finite": (lambda: gx.apply_if_finite(gx.adam(0.1), 2), False),
    "accumulate": (lambda: gx.accumulate_gradients(gx.adam(0.1), 2), False),
    "flatten": (lambda: gx.flatten(gx.adamw(0.1)), True),
    "ema_params": (lambda: gx.chain(gx.adam(0.1), gx.ema_params(0.9)), True),
    "snapshots": (lambda: gx.chain(gx.sgd(0.1), gx.snapshot_ensemble(2, 2)), True),
    "plateau": (lambda: gx.chain(gx.adam(0.1), gx.reduce_on_plateau(patience=1)), False),
}


def _extra_for(name, i):
  return {"value": jnp.float32(1.0 / (1 + i % 3))} if name == "plateau" else {}


def _train_named(name, tx, state, params, start, stop):
  needs = OPTIMIZERS[name][1]
  for i in range(start, stop):  # eagerly: tiny trees, and compiling 25 optimizers costs more
    u, state = tx.update(_grads(i), state, params if needs else None, **_extra_for(name, i))
    params = gx.apply_updates(params, u)
  return params, state


def _assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_flax_serialization_round_trip_and_exact_resume(name):
  make, _ = OPTIMIZERS[name]
  n, k = 5, 2
  full_params, full_state = _train_named(name, make(), make().init(_params()), _params(), 0, n)

  tx = make()
  params, state = _train_named(name, tx, tx.init(_params()), _params(), 0, k)
  blob = serialization.to_bytes({"params": params, "opt": state})
  fresh = make()  # a new optimizer object, as after a restart
  target = {"params": _params(), "opt": fresh.init(_params())}
  restored = serialization.from_bytes(target, blob)
  _assert_identical(state, restored["opt"])
  params, state = _train_named(name, fresh, restored["opt"], restored["params"], k, n)
  _assert_identical(full_params, params)
  _assert_identical(full_state, state)


def test_orbax_round_trip_of_every_state(tmp_path):
  states = {}
  for name, (make, _) in OPTIMIZERS.items():
    tx = make()
    states[name] = _train_named(name, tx, tx.init(_params()), _params(), 0, 3)[1]
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "std", states)
  ckpt.wait_until_finished()
  target = {name: make().init(_params()) for name, (make, _) in OPTIMIZERS.items()}
  restored = ckpt.restore(tmp_path / "std", target)
  for name in OPTIMIZERS:
    _assert_identical(states[name], restored[name])


@pytest.mark.parametrize("name", ["adam", "injected_adam", "masked", "partitioned",
                                  "apply_if_finite", "accumulate"])
def test_orbax_exact_resume(tmp_path, name):
  make, _ = OPTIMIZERS[name]
  n, k = 5, 3
  full_params, full_state = _train_named(name, make(), make().init(_params()), _params(), 0, n)
  tx = make()
  params, state = _train_named(name, tx, tx.init(_params()), _params(), 0, k)
  ckpt = ocp.PyTreeCheckpointer()
  ckpt.save(tmp_path / "ckpt", {"params": params, "opt": state})
  fresh = make()
  target = {"params": _params(), "opt": fresh.init(_params())}
  restored = ckpt.restore(tmp_path / "ckpt", item=target)
  params, state = _train_named(name, fresh, restored["opt"], restored["params"], k, n)
  _assert_identical(full_params, params)
  _assert_identical(full_state, state)


def test_masked_state_keeps_no_arrays_for_unmasked_leaves():
  tx = gx.masked(gx.adam(0.1), _mask)
  state = tx.init(_params())
  restored = serialization.from_bytes(tx.init(_params()), serialization.to_bytes(state))
  trace = restored.inner_state[0].trace
  assert isinstance(trace["dense"]["b"], gx.MaskedNode) and isinstance(trace["scale"],
                                                                        gx.MaskedNode)
  assert len(jax.tree.leaves(state)) == 1 + 2 * 2  # count + (w, emb) in both moments
