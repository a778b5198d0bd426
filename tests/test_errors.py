"""Bad input gives clear errors (naming the transform and the leaf path) before state changes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx


def _params():
  return {"enc": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, "head": jnp.ones(2)}


def _all_true(p):
  return jax.tree.map(lambda _: True, p)


def _all_a(p):
  return jax.tree.map(lambda _: "a", p)


# Every optimizer and wrapper that keeps per-leaf state.
STATEFUL = {
    "adam": lambda: gx.adam(0.1),
    "adamw": lambda: gx.adamw(0.1),
    "sgd_momentum": lambda: gx.sgd(0.1, 0.9),
    "rmsprop": lambda: gx.rmsprop(0.1),
    "adagrad": lambda: gx.adagrad(0.1),
    "adadelta": lambda: gx.adadelta(),
    "adamax": lambda: gx.adamax(0.1),
    "nadam": lambda: gx.nadam(0.1),
    "amsgrad": lambda: gx.amsgrad(0.1),
    "radam": lambda: gx.radam(0.1),
    "powersign": lambda: gx.powersign(0.1),
    "masked": lambda: gx.masked(gx.adam(0.1), _all_true),
    "partition": lambda: gx.partition({"a": gx.adam(0.1)}, _all_a),
    "apply_if_finite": lambda: gx.apply_if_finite(gx.adam(0.1), 2),
    "accumulate": lambda: gx.accumulate_gradients(gx.adam(0.1), 2),
    "ema_params": lambda: gx.chain(gx.sgd(0.1), gx.ema_params(0.9)),
}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_structure_mismatch_names_paths(name):
  tx = STATEFUL[name]()
  state = tx.init(_params())
  bad = {"enc": {"w": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "head": jnp.ones(2)}
  with pytest.raises(ValueError) as e:
    tx.update(bad, state, _params())
  msg = str(e.value)
  assert "does not match" in msg
  assert "missing:    ['enc']['b']" in msg and "unexpected: ['enc']['bias']" in msg
  # without params the state is the reference
  with pytest.raises(ValueError, match=re.escape("missing:    ['enc']['b']")):
    tx.update(bad, state, None if name not in ("adamw", "ema_params") else _params())


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_shape_mismatch_names_path(name):
  tx = STATEFUL[name]()
  state = tx.init(_params())
  bad = {"enc": {"w": jnp.ones((3, 2)), "b": jnp.ones(3)}, "head": jnp.ones(2)}
  with pytest.raises(ValueError, match=re.escape(
      "shape mismatch at ['enc']['w']: state has (2, 3), updates has (3, 2)")):
    tx.update(bad, state, bad)


@pytest.mark.parametrize("name", sorted(STATEFUL))
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_or_bool_gradient_leaf(name, dtype):
  tx = STATEFUL[name]()
  state = tx.init(_params())
  bad = {"enc": {"w": jnp.ones((2, 3), dtype), "b": jnp.ones(3)}, "head": jnp.ones(2)}
  with pytest.raises(TypeError, match=re.escape("leaf ['enc']['w'] has dtype")) as e:
    tx.update(bad, state, _params())
  assert "floating-point" in str(e.value)


def test_integer_params_at_init():
  with pytest.raises(TypeError, match=re.escape("init: params leaf ['step'] has dtype int32")):
    gx.adam(0.1).init({"w": jnp.ones(2), "step": jnp.zeros([], jnp.int32)})


@pytest.mark.parametrize("tx", [gx.adamw(0.1), gx.sgdw(0.1),
                                gx.chain(gx.sgd(0.1), gx.ema_params(0.9)),
                                gx.chain(gx.sgd(0.1), gx.polyak_params()),
                                gx.snapshot_ensemble(2, 3),
                                gx.masked(gx.adamw(0.1), _all_true),
                                gx.partition({"a": gx.adamw(0.1)}, _all_a)],
                         ids=["adamw", "sgdw", "ema", "polyak", "snapshot", "masked", "partition"])
def test_missing_params(tx):
  state = tx.init(_params())
  with pytest.raises(ValueError, match=r"needs the current parameters: call update\(updates, "):
    tx.update(_params(), state)


def test_chain_with_state_of_another_optimizer():
  p = _params()
  with pytest.raises(ValueError, match=r"expected the state made by this chain's init\(\) "
                     r"\(tuple of 4 parts\), got tuple of length 2"):
    gx.adam(0.1).update(p, gx.sgd(0.1, 0.9).init(p))
  with pytest.raises(ValueError, match=r"part 2 \(scale_by_rms\) expected a RmsState state, "
                     r"got InfNormState\. The state was made by a different optimizer"):
    gx.adam(0.1).update(p, gx.adamax(0.1).init(p))
  tx = gx.adam(0.1)
  tx.init(p)   # init records its parts' state types; the check must not depend on that path
  with pytest.raises(ValueError, match=r"part 2 \(scale_by_rms\) expected a RmsState state, "
                     r"got InfNormState"):
    tx.update(p, gx.adamax(0.1).init(p))
  with pytest.raises(ValueError, match=r"named_chain.update: expected a state dict with keys"):
    gx.named_chain(("a", gx.adam(0.1))).update(p, gx.named_chain(("b", gx.adam(0.1))).init(p))


@pytest.mark.parametrize("tx,kind", [
    (gx.masked(gx.adam(0.1), _all_true), "MaskedState"),
    (gx.partition({"a": gx.adam(0.1)}, _all_a), "PartitionState"),
    (gx.apply_if_finite(gx.adam(0.1), 1), "ApplyIfFiniteState"),
    (gx.accumulate_gradients(gx.adam(0.1), 2), "AccumulateState")])
def test_wrapper_given_foreign_state(tx, kind):
  with pytest.raises(ValueError, match=f"expected the {kind} made by this"):
    tx.update(_params(), gx.adam(0.1).init(_params()))


def test_mask_errors():
  p = _params()
  with pytest.raises(ValueError, match=re.escape("masked: the mask tree does not match the "
                                                 "params tree.")) as e:
    gx.masked(gx.adam(0.1), {"enc": True, "tail": False}).init(p)
  assert "missing:    ['head']" in str(e.value) and "unexpected: ['tail']" in str(e.value)
  with pytest.raises(TypeError, match=re.escape("masked: the mask leaf at ['head'] must be a "
                                                "bool, got str 'yes'")):
    gx.masked(gx.adam(0.1), {"enc": True, "head": "yes"}).init(p)
  with pytest.raises(TypeError, match="mask must be a bool tree or a function"):
    gx.masked(gx.adam(0.1), None)
  tx = gx.masked(gx.sgd(0.1, 0.9), lambda q: {"enc": q["head"].sum() > 0, "head": True})
  state = tx.init(p)  # a concrete array bool is fine eagerly ...
  with pytest.raises(TypeError, match=r"mask leaf at \['enc'\]\['b'\] is a traced array"):
    jax.jit(tx.update)(p, state, p)  # ... but not once traced


def test_partition_errors():
  p = _params()
  with pytest.raises(ValueError, match=re.escape(
      "partition: the label 'c' at ['head'] has no transform; transforms has labels ['a', 'b']")):
    gx.partition({"a": gx.sgd(0.1), "b": gx.sgd(0.2)}, {"enc": "a", "head": "c"}).init(p)
  with pytest.raises(TypeError, match=re.escape("partition: the label at ['head'] must be a str")):
    gx.partition({"a": gx.sgd(0.1)}, {"enc": "a", "head": 1}).init(p)
  with pytest.raises(ValueError, match="the labels tree does not match the params tree"):
    gx.partition({"a": gx.sgd(0.1)}, {"enc": "a"}).init(p)
  with pytest.raises(TypeError, match="non-empty mapping from label to transform"):
    gx.partition([gx.sgd(0.1)], {"enc": "a"})
  with pytest.raises(TypeError, match="partition: transforms\\['a'\\]: expected a "
                     "GradientTransformation"):
    gx.partition({"a": 3}, _all_a)
  tx = gx.partition({"a": gx.sgd(0.1, 0.9), "b": gx.sgd(0.1)}, {"enc": "a", "head": "b"})
  state = tx.init(p)
  with pytest.raises(ValueError, match=r"expected the PartitionState made by this partition's "
                     r"init\(\) \(groups \['a', 'b'\]\), got \['a'\]"):
    tx.update(p, gx.partition({"a": gx.sgd(0.1, 0.9)}, _all_a).init(p))
  del state


def test_wrapper_argument_errors():
  with pytest.raises(ValueError, match=r"every_k must be a positive int or a schedule, got 0"):
    gx.accumulate_gradients(gx.sgd(0.1), 0)
  with pytest.raises(ValueError, match=r"max_consecutive_errors must be an int >= 0, got -1"):
    gx.apply_if_finite(gx.sgd(0.1), -1)
  with pytest.raises(TypeError, match=r"masked: inner: expected a GradientTransformation"):
    gx.masked("adam", _all_true)
  with pytest.raises(ValueError, match=r"ema_params: decay must be in \[0, 1\), got 1.5"):
    gx.ema_params(1.5)
  with pytest.raises(ValueError, match=r"early_stopping: patience must be a positive integer"):
    gx.early_stopping(0)
  with pytest.raises(ValueError, match=r"early_stopping: mode must be one of"):
    gx.early_stopping(3, mode="best")
  with pytest.raises(ValueError, match=r"snapshot_ensemble: period_mult must be a number >= 1"):
    gx.snapshot_ensemble(2, 3, period_mult=0.5)


def test_flatten_size_mismatch():
  tx = gx.flatten(gx.adam(0.1))
  state = tx.init(_params())
  bad = {"enc": {"w": jnp.ones((2, 2)), "b": jnp.ones(3)}, "head": jnp.ones(2)}
  with pytest.raises(ValueError, match=r"(?s)flatten: .*shape mismatch at \['float32'\].*"
                     r"inside gx.flatten the tree is one 1-D buffer per dtype"):
    tx.update(bad, state)
  with pytest.raises(TypeError, match=re.escape("flatten: updates leaf ['head'] has dtype int32")):
    tx.update({"enc": _params()["enc"], "head": jnp.ones(2, jnp.int32)}, state)


def test_borrowed_count_outside_chain():
  part = gx.adam(0.1).init(_params())[2]  # scale_by_rms's state, count borrowed from momentum
  rms = gx.scale_by_rms(0.999, bias_correction=True)
  with pytest.raises(ValueError, match="has count=None .* borrows its chain's step counter"):
    rms.update(_params(), part)


def test_errors_leave_state_untouched_and_happen_before_compute():
  tx = gx.adam(0.1)
  state = tx.init(_params())
  snapshot = jax.tree.map(np.asarray, state)
  with pytest.raises(ValueError):
    jax.jit(tx.update)({"enc": _params()["enc"]}, state)  # error at trace time, under jit too
  for a, b in zip(jax.tree.leaves(snapshot), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_nan_under_apply_if_finite_leaves_params_and_moments_unchanged():
  tx = gx.apply_if_finite(gx.adam(0.1), max_consecutive_errors=3)
  params = _params()
  state = tx.init(params)
  u, state = tx.update(jax.tree.map(jnp.ones_like, params), state)
  params = gx.apply_updates(params, u)
  before_p, before_s = params, state
  bad = jax.tree.map(jnp.ones_like, params)
  bad["enc"]["w"] = bad["enc"]["w"].at[0, 1].set(jnp.inf)
  bad["head"] = bad["head"].at[1].set(jnp.nan)
  u, state = jax.jit(tx.update)(bad, state)
  params = gx.apply_updates(params, u)
  for a, b in zip(jax.tree.leaves(before_p), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(before_s.inner_state), jax.tree.leaves(state.inner_state)):
    np.testing.assert_array_equal(a, b)
  assert int(state.total_notfinite) == 1 and int(state.notfinite_count) == 1
  assert not bool(state.last_finite)
