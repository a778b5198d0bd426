"""Wrappers against independent computations: sub-tree optimizers, NumPy replays, mean steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx


def _params():
  return {"w": jnp.arange(6.0).reshape(3, 2) / 7.0 - 0.3, "b": jnp.array([0.5, -1.0]),
          "emb": {"table": jnp.linspace(-1.0, 1.0, 4)}}


def _grads(i, params=None):
  params = _params() if params is None else params
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.RandomState(i)
  return treedef.unflatten([jnp.asarray(rng.randn(*np.shape(p)), jnp.result_type(p))
                            for p in leaves])


def _run(tx, steps=3, params=None, with_params=False, grads=None, jit=True):
  params = _params() if params is None else params
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  outs = []
  for i in range(steps):
    g = grads(i) if grads is not None else _grads(i, params)
    u, state = update(g, state, params if with_params else None)
    params = gx.apply_updates(params, u)
    outs.append(u)
  return params, state, outs


def _close(a, b, rtol=1e-6, atol=1e-7):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# masked


def test_masked_equals_inner_on_subset_identity_elsewhere():
  mask = {"w": True, "b": False, "emb": {"table": True}}
  tx = gx.masked(gx.adam(0.1), mask)
  params = _params()
  state = tx.init(params)
  # no state is kept for the unmasked leaf
  assert isinstance(state.inner_state[0].trace["b"], gx.MaskedNode)
  sub = lambda t: {"w": t["w"], "emb": t["emb"]}
  ref_tx, ref_state = gx.adam(0.1), gx.adam(0.1).init(sub(params))
  for i in range(3):
    g = _grads(i)
    u, state = tx.update(g, state)
    ru, ref_state = ref_tx.update(sub(g), ref_state)
    _close(sub(u), ru, 0, 0)
    np.testing.assert_array_equal(u["b"], g["b"])  # passes through unchanged


def test_masked_function_prefix_and_none_leaves():
  params = {"a": jnp.ones(3), "skip": None, "sub": [jnp.ones(2), jnp.ones((2, 2))]}
  grads = jax.tree.map(lambda p: 0.5 * p, params)
  by_fn = gx.masked(gx.sgd(1.0, 0.9), lambda p: {"a": False, "skip": None, "sub": True})
  by_tree = gx.masked(gx.sgd(1.0, 0.9), {"a": False, "skip": None, "sub": [True, True]})
  for tx in (by_fn, by_tree):
    state = tx.init(params)
    u, state = tx.update(grads, state, params)
    assert u["skip"] is None
    np.testing.assert_array_equal(u["a"], grads["a"])
    np.testing.assert_allclose(u["sub"][1], -0.5 * np.ones((2, 2)))
  f = lambda p: {"a": True}
  assert gx.masked(gx.adam(1e-3), f) == gx.masked(gx.adam(1e-3), f)
  assert hash(gx.masked(gx.adam(1e-3), f)) == hash(gx.masked(gx.adam(1e-3), f))


def test_masked_restricts_forwarded_raw_gradient():
  """Inside a chain, masked views `extra['grad']` like the updates (second-moment parts)."""
  params = _params()
  mask = {"w": True, "b": False, "emb": {"table": True}}
  rms = gx.scale_by_rms(0.99, 1e-8, eps_in_sqrt=False, bias_correction=True)
  tx = gx.chain(gx.scale_by_momentum(0.9, ema=True), gx.masked(rms, mask))
  ref = gx.chain(gx.scale_by_momentum(0.9, ema=True), rms)
  _, _, outs = _run(tx, params=params)
  _, _, ref_outs = _run(ref, params=params)
  for u, r in zip(outs, ref_outs):
    _close(u["w"], r["w"], 0, 0)
    _close(u["emb"], r["emb"], 0, 0)


# ---------------------------------------------------------------------------------------------
# partition


def test_partition_equals_two_optimizers_on_subtrees():
  labels = {"w": "adam", "b": "sgd", "emb": "adam"}
  tx = gx.partition({"adam": gx.adamw(0.05, weight_decay=0.1), "sgd": gx.sgd(0.1, 0.9)},
                    labels)
  final, state, _ = _run(tx, steps=4, with_params=True)
  pick = lambda t, keys: {k: t[k] for k in keys}
  a_final, _, _ = _run(gx.adamw(0.05, weight_decay=0.1), steps=4, with_params=True,
                       params=pick(_params(), ["w", "emb"]),
                       grads=lambda i: pick(_grads(i), ["w", "emb"]))
  s_final, _, _ = _run(gx.sgd(0.1, 0.9), steps=4, params=pick(_params(), ["b"]),
                       grads=lambda i: pick(_grads(i), ["b"]))
  _close(pick(final, ["w", "emb"]), a_final, 0, 0)
  _close(pick(final, ["b"]), s_final, 0, 0)
  assert int(gx.tree_get(state, "adam/count")) == 4


def test_partition_label_function_and_freezing():
  tx = gx.partition({"train": gx.sgd(0.1), "frozen": gx.set_to_zero()},
                    lambda p: {"w": "train", "b": "frozen", "emb": "frozen"})
  final, _, _ = _run(tx, steps=2)
  np.testing.assert_array_equal(final["b"], _params()["b"])
  np.testing.assert_array_equal(final["emb"]["table"], _params()["emb"]["table"])
  expected = _params()["w"] - 0.1 * (_grads(0)["w"] + _grads(1)["w"])
  np.testing.assert_allclose(final["w"], expected, rtol=1e-6)


def test_nested_masked_in_partition_in_chain():
  params = _params()
  inner = gx.masked(gx.scale_by_momentum(0.5), {"w": True, "b": True, "emb": False})
  tx = gx.chain(gx.clip_by_global_norm(10.0),
                gx.partition({"a": gx.chain(inner, gx.scale(-0.1)), "b": gx.sgd(0.2)},
                             {"w": "a", "b": "b", "emb": "a"}))
  final, state, _ = _run(tx, steps=3, params=params)
  # by hand: w gets momentum then -0.1; emb (masked off inside) gets -0.1*g; b gets sgd(0.2)
  w, trace = np.asarray(params["w"]), 0.0
  for i in range(3):
    g = np.asarray(_grads(i)["w"])
    trace = 0.5 * trace + g
    w = w - 0.1 * trace
  np.testing.assert_allclose(final["w"], w, rtol=1e-5)
  emb = np.asarray(params["emb"]["table"]) - 0.1 * sum(np.asarray(_grads(i)["emb"]["table"])
                                                        for i in range(3))
  np.testing.assert_allclose(final["emb"]["table"], emb, rtol=1e-5)
  assert int(gx.tree_get(state, "count")) == 3


def test_inject_inside_masked():
  tx = gx.masked(gx.inject_hyperparams(gx.sgd)(learning_rate=0.1),
                 {"w": True, "b": False, "emb": True})
  params = _params()
  state = tx.init(params)
  u, state = tx.update(_grads(0), state)
  np.testing.assert_allclose(u["w"], -0.1 * _grads(0)["w"], rtol=1e-6)
  np.testing.assert_array_equal(u["b"], _grads(0)["b"])
  np.testing.assert_allclose(gx.tree_get(state, "learning_rate"), 0.1)


# ---------------------------------------------------------------------------------------------
# clipping and noise


def test_clip_against_numpy():
  g = {"a": jnp.array([-3.0, 0.2, 5.0]), "b": jnp.array([[0.5, -0.7]])}
  u, _ = gx.clip(0.6).update(g, gx.clip(0.6).init(g))
  for k in g:
    np.testing.assert_array_equal(u[k], np.clip(np.asarray(g[k]), -0.6, 0.6))


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_by_global_norm_against_numpy(max_norm):
  g = {"a": jnp.array([-3.0, 0.2, 5.0]), "b": jnp.array([[0.5, -0.7]], jnp.bfloat16)}
  tx = gx.clip_by_global_norm(max_norm)
  u, _ = tx.update(g, tx.init(g))
  flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(g)])
  norm = np.linalg.norm(flat)
  scale = max_norm / norm if norm > max_norm else 1.0
  np.testing.assert_allclose(u["a"], np.asarray(g["a"]) * scale, rtol=1e-6)
  assert u["b"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(u["b"], np.float64),
                             np.asarray(g["b"], np.float64) * scale, rtol=1e-2)
  np.testing.assert_allclose(float(gx.global_norm(u)), min(norm, max_norm), rtol=1e-3)


def test_global_norm_of_many_leaves_against_numpy():
  # The norm sums per-leaf squares through one stacked vector behind an optimization barrier
  # (a compile-time fast path): check it jitted and vmapped on 300 leaves, differentiated on
  # 60 (the same code; compiling the gradient of 300 takes seconds).
  rng = np.random.default_rng(0)
  leaves = {f"w{i:03d}": rng.normal(size=(i % 7 + 1, 3)).astype(np.float32) for i in range(300)}
  flat = np.concatenate([x.astype(np.float64).ravel() for x in leaves.values()])
  norm = np.linalg.norm(flat)
  tree = jax.tree.map(jnp.asarray, leaves)
  np.testing.assert_allclose(float(jax.jit(gx.global_norm)(tree)), norm, rtol=1e-6)
  some = dict(list(leaves.items())[:60])
  some_norm = np.linalg.norm(np.concatenate([x.astype(np.float64).ravel()
                                             for x in some.values()]))
  grads = jax.jit(jax.grad(gx.global_norm))(jax.tree.map(jnp.asarray, some))
  for k, x in some.items():
    np.testing.assert_allclose(grads[k], x / some_norm, rtol=1e-5, atol=1e-7)
  batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), tree)
  np.testing.assert_allclose(jax.jit(jax.vmap(gx.global_norm))(batch), [norm, 2 * norm],
                             rtol=1e-6)


def test_gradient_noise_reproducible_and_annealed():
  g = {"a": jnp.zeros(3), "b": jnp.zeros((2,))}
  tx = gx.add_gradient_noise(eta=0.3, gamma=0.55, seed=7)
  state = tx.init(g)
  for t in range(3):
    u, state = tx.update(g, state)
    # The documented stream, from public jax.random calls: fold_in(PRNGKey(seed), t'), split
    # per leaf in jax.tree.leaves order; σ² = η / (1 + t')^γ with t' = 0 on the first step.
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(7), t), 2)
    std = np.sqrt(0.3 / (1.0 + t) ** 0.55)
    np.testing.assert_allclose(u["a"], std * jax.random.normal(keys[0], (3,)), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(u["b"], std * jax.random.normal(keys[1], (2,)), rtol=1e-5,
                               atol=1e-7)


# ---------------------------------------------------------------------------------------------
# apply_if_finite


def _adam_np(p, g, m, v, t, lr=0.1, b1=0.9, b2=0.999, eps=1e-8):
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
  return p - lr * mh / (np.sqrt(vh) + eps), m, v


def test_apply_if_finite_against_numpy_replay():
  bad = {1, 3, 4}  # step indices with a NaN / Inf gradient
  tx = gx.apply_if_finite(gx.adam(0.1), max_consecutive_errors=3)
  x = jnp.array([1.0, -2.0, 0.5])
  state, p = tx.init(x), x
  ref_p, m, v, t = np.asarray(x, np.float64), 0.0, 0.0, 0
  update = jax.jit(tx.update)
  for i in range(6):
    g = np.random.RandomState(i).randn(3).astype(np.float32)
    if i in bad:
      g[i % 3] = np.nan if i % 2 else np.inf
    u, state = update(jnp.asarray(g), state)
    p = gx.apply_updates(p, u)
    if i not in bad:
      t += 1
      ref_p, m, v = _adam_np(ref_p, g.astype(np.float64), m, v, t)
    else:
      assert not np.any(np.asarray(u))
    np.testing.assert_allclose(p, ref_p, rtol=1e-5)
    assert bool(state.last_finite) == (i not in bad)
  assert int(state.total_notfinite) == 3 and int(state.notfinite_count) == 0
  assert int(gx.tree_get(state, "count")) == 3


def test_apply_if_finite_gives_up_after_max_consecutive_errors():
  tx = gx.apply_if_finite(gx.sgd(1.0), max_consecutive_errors=1)
  x = jnp.ones(2)
  state = tx.init(x)
  nan = jnp.array([jnp.nan, 1.0])
  u, state = tx.update(nan, state)
  np.testing.assert_array_equal(u, [0.0, 0.0])
  u, state = tx.update(nan, state)  # second in a row > 1: applied
  assert np.isnan(np.asarray(u)[0]) and int(state.notfinite_count) == 2


# ---------------------------------------------------------------------------------------------
# accumulate_gradients


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_accumulation_equals_one_step_on_mean(opt):
  inner = gx.adam(0.1) if opt == "adam" else gx.sgd(0.1, 0.9)
  k = 3
  tx = gx.accumulate_gradients(inner, k)
  params = _params()
  state = tx.init(params)
  ref_state, ref_params, p = inner.init(params), params, params
  update = jax.jit(tx.update)
  for step in range(2):
    micro = [_grads(10 * step + j) for j in range(k)]
    for j, g in enumerate(micro):
      u, state = update(g, state)
      p = gx.apply_updates(p, u)
      if j < k - 1:
        assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(u))
    mean = jax.tree.map(lambda *xs: sum(xs) / k, *micro)
    ru, ref_state = inner.update(mean, ref_state)
    ref_params = gx.apply_updates(ref_params, ru)
    _close(p, ref_params, 1e-6, 1e-6)
  assert int(state.gradient_step) == 2 and int(state.micro_step) == 0


def test_accumulation_schedule_grows_batch():
  every_k = lambda step: jnp.where(step < 2, 1, 3)
  tx = gx.accumulate_gradients(gx.sgd(1.0), every_k)
  x = jnp.zeros(1)
  state, nonzero = tx.init(x), []
  update = jax.jit(tx.update)
  for i in range(8):
    u, state = update(jnp.ones(1) * (i + 1), state)
    nonzero.append(float(u[0]))
  # steps 1, 2 apply alone; then every 3rd applies the mean of the last 3
  assert nonzero == [-1.0, -2.0, 0.0, 0.0, -4.0, 0.0, 0.0, -7.0]


# ---------------------------------------------------------------------------------------------
# flatten


@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "adamw"])
def test_flatten_equals_plain(name):
  make = {"adam": lambda: gx.adam(0.05), "sgd_momentum": lambda: gx.sgd(0.1, 0.9, nesterov=True),
          "adamw": lambda: gx.adamw(0.05, weight_decay=0.1)}[name]
  params = dict(_params(), half=jnp.ones((2, 2), jnp.bfloat16), scalar=jnp.float32(2.0))
  flat_final, flat_state, _ = _run(gx.flatten(make()), params=params, with_params=True)
  plain_final, _, _ = _run(make(), params=params, with_params=True)
  _close(flat_final, plain_final, 1e-6, 1e-7)
  assert set(flat_state[0].trace) == {"bfloat16", "float32"}  # stored flat, one per dtype
  assert flat_state[0].trace["float32"].shape == (6 + 2 + 4 + 1,)


@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "adamw"])
def test_flatten_with_max_leaf_size_equals_plain_on_mixed_dtypes(name):
  """Issue 19's rule for a fast path: the per-leaf result to float32 rounding, here on a tree
  of float32 and bfloat16 leaves where some of each dtype are packed and some are not."""
  make = {"adam": lambda: gx.adam(0.05), "sgd_momentum": lambda: gx.sgd(0.1, 0.9, nesterov=True),
          "adamw": lambda: gx.adamw(0.05, weight_decay=0.1)}[name]
  params = dict(_params(), half=jnp.ones((2, 2), jnp.bfloat16), tiny=jnp.ones(2, jnp.bfloat16),
                scalar=jnp.float32(2.0))
  tx = gx.flatten(make(), max_leaf_size=3)
  flat_final, flat_state, _ = _run(tx, params=params, with_params=True)
  plain_final, _, _ = _run(make(), params=params, with_params=True)
  _close(flat_final, plain_final, 1e-6, 1e-7)
  # packed: b (2) and scalar (1) as float32, tiny (2) as bfloat16; w, emb/table, half whole
  assert set(flat_state[0].trace) == {"bfloat16", "float32", "leaf['w']", "leaf['half']",
                                      "leaf['emb']['table']"}
  assert flat_state[0].trace["float32"].shape == (3,)
  assert flat_state[0].trace["bfloat16"].shape == (2,)
  assert flat_state[0].trace["leaf['w']"].shape == (3, 2)


def test_flatten_forwards_flat_raw_gradient():
  params = _params()
  rms = gx.scale_by_rms(0.9, 1e-8, eps_in_sqrt=False)
  tx = gx.chain(gx.scale_by_momentum(0.9, ema=True), gx.flatten(rms))
  ref = gx.chain(gx.scale_by_momentum(0.9, ema=True), rms)
  _close(_run(tx, params=params)[0], _run(ref, params=params)[0], 1e-6, 1e-7)


# ---------------------------------------------------------------------------------------------
# reading state by name


def test_tree_get_across_wrappers():
  tx = gx.named_chain(("clip", gx.clip(1.0)),
                      ("opt", gx.apply_if_finite(gx.masked(gx.adam(0.1), lambda p: jax.tree.map(
                          lambda _: True, p)), 2)))
  _, state, _ = _run(tx, steps=2)
  assert int(gx.tree_get(state, "count")) == 2
  assert int(gx.tree_get(state, "opt/count")) == 2
  assert int(gx.tree_get(state, "total_notfinite")) == 0
  assert isinstance(gx.tree_get(state, "clip"), gx.EmptyState)
  assert gx.tree_get(state, "nope", default=None) is None
  assert set(gx.tree_find(state, "trace")) == {"['opt'].inner_state.inner_state[0].trace"}


def test_tree_get_errors():
  tx = gx.partition({"a": gx.adam(0.1), "b": gx.adam(0.2)}, {"w": "a", "b": "b", "emb": "a"})
  state = tx.init(_params())
  with pytest.raises(ValueError, match=r"2 state values are called 'trace'.*'a'\]\[0\]\.trace"):
    gx.tree_get(state, "trace")
  assert int(gx.tree_get(state, "b/count")) == 0
  assert int(gx.tree_get(state, "count")) == 0  # equal concrete counters are not ambiguous
  with pytest.raises(ValueError, match=r"2 state values are called 'count'"):
    jax.jit(lambda s: gx.tree_get(s, "count"))(state)  # traced: cannot be compared
  with pytest.raises(KeyError, match=r"no state value called 'lr'.*Names in this state: .*count"):
    gx.tree_get(state, "lr")


# ---------------------------------------------------------------------------------------------
# parameter averaging and training helpers


def test_ema_and_polyak_params_against_numpy():
  x = jnp.array([1.0, 2.0])
  for tx, kind in ((gx.chain(gx.sgd(0.1), gx.ema_params(0.9)), "ema"),
                   (gx.chain(gx.sgd(0.1), gx.polyak_params()), "polyak")):
    final, state, outs = _run(tx, steps=4, params=x, with_params=True,
                              grads=lambda i: jnp.array([i + 1.0, -1.0]))
    p, avg, seen = np.array([1.0, 2.0]), np.array([1.0, 2.0]), []
    for i in range(4):
      p = p - 0.1 * np.array([i + 1.0, -1.0])
      seen.append(p)
      avg = 0.9 * avg + 0.1 * p if kind == "ema" else np.mean(seen, axis=0)
    np.testing.assert_allclose(final, p, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gx.averaged_params(state), avg, rtol=1e-6, atol=1e-6)


def test_early_stopping():
  es = gx.early_stopping(patience=2, min_delta=0.01)
  assert es == gx.early_stopping(patience=2, min_delta=0.01)
  update = jax.jit(es.update)
  state = es.init({"w": jnp.zeros(2)})
  losses = [1.0, 0.5, 0.495, 0.6, 0.4, 0.3]  # 0.495 is within min_delta: no improvement
  stops = []
  for i, loss in enumerate(losses):
    state = update(state, loss, {"w": jnp.full(2, float(i))})
    stops.append(bool(state.should_stop))
  assert stops == [False, False, False, True, True, True]
  assert float(state.best_value) == 0.5 and int(state.bad_count) == 2
  np.testing.assert_array_equal(state.best_params["w"], [1.0, 1.0])
  es_max = gx.early_stopping(patience=1, mode="max")
  s = es_max.update(es_max.init(jnp.zeros(1)), 0.9, jnp.ones(1))
  s = es_max.update(s, 0.8, jnp.zeros(1))
  assert bool(s.should_stop) and float(s.best_value) == pytest.approx(0.9)


def test_snapshot_ensemble_cycles_and_prediction():
  tx = gx.chain(gx.sgd(1.0), gx.snapshot_ensemble(2, first_period=2, period_mult=2.0))
  x = jnp.zeros(1)
  state, p = tx.init(x), x
  update = jax.jit(tx.update)
  history = []
  for _ in range(14):
    u, state = update(-jnp.ones(1), state, p)  # p goes 1, 2, 3, ...
    p = gx.apply_updates(p, u)
    history.append(float(p[0]))
  snap = state[1]
  # cycles end after updates 2, 2+4=6, 6+8=14: snapshots p=2, 6, 14 into a buffer of 2
  assert int(snap.num_taken) == 3
  np.testing.assert_array_equal(np.sort(np.asarray(snap.snapshots)[:, 0]), [6.0, 14.0])
  pred = gx.ensemble_predict(lambda w, z: w * z, state, jnp.array([1.0, 2.0]))
  np.testing.assert_allclose(pred, [10.0, 20.0])
  fresh = gx.ensemble_predict(lambda w, z: w * z, tx.init(x), jnp.ones(1))
  assert np.isnan(np.asarray(fresh)).all()


@jax.tree_util.register_pytree_node_class
class _CallableModule:
  """A callable pytree (like an equinox Module): as a mask it is a tree, never called."""

  def __init__(self, tree):
    self.tree = tree

  def __call__(self, x):
    raise AssertionError("a callable pytree mask must not be called")

  def tree_flatten(self):
    return (self.tree,), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0])


def test_callable_pytree_mask_is_a_tree():
  params = _CallableModule({"w": jnp.ones(2), "b": jnp.ones(3)})
  tx = gx.masked(gx.sgd(0.1, 0.9), _CallableModule({"w": True, "b": False}))
  state = tx.init(params)
  g = jax.tree.map(jnp.ones_like, params)
  u, _ = tx.update(g, state)
  np.testing.assert_allclose(u.tree["w"], -0.1 * np.ones(2))
  np.testing.assert_array_equal(u.tree["b"], np.ones(3))
  tx = gx.partition({"x": gx.sgd(1.0), "y": gx.set_to_zero()},
                    _CallableModule({"w": "x", "b": "y"}))
  u, _ = tx.update(g, tx.init(params))
  np.testing.assert_array_equal(u.tree["b"], np.zeros(3))


def test_snapshot_cycles_match_sgdr_restarts():
  lr = gx.sgdr_schedule(1.0, 3, period_mult=2.0)
  tx = gx.snapshot_ensemble(8, first_period=3, period_mult=2.0)
  x = jnp.zeros(1)
  state, taken_at = tx.init(x), []
  for t in range(1, 25):
    _, state = tx.update(jnp.zeros(1), state, x)
    if int(state.num_taken) > len(taken_at):
      taken_at.append(t)
  assert taken_at == [3, 9, 21]
  for t in taken_at:  # the schedule restarts right after each snapshot
    assert float(lr(jnp.int32(t))) == pytest.approx(1.0)
    assert float(lr(jnp.int32(t - 1))) < float(lr(jnp.int32(t - 2)))
