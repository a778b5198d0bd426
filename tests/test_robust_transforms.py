"""The robustness transforms of issue 16: `zero_nans`, `clip_by_norm`, `clip_by_block_rms`,
`adaptive_grad_clip`, `centralize`, `normalize_by_update_norm`, `keep_params_nonnegative`, and
the state utility `tree_set`.

Oracles: Optax itself in float64 for every transform Optax has (the same names and defaults),
on several random draws over a tree with a 160 × 130 matrix, a convolution kernel, a vector and
a scalar, plus edge cases (zero norms, NaNs, negative parameters); hand-derived values in the
comments; a NumPy form of Keras' `clipnorm` for `clip_by_norm`, which Optax lacks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

RTOL = 1e-7

# name -> (gradxform transform, Optax transform, needs params)
PAIRS = {
    "zero_nans": (lambda: gx.zero_nans(), lambda: optax.zero_nans(), False),
    "clip_by_block_rms": (lambda: gx.clip_by_block_rms(0.3),
                          lambda: optax.clip_by_block_rms(0.3), False),
    "adaptive_grad_clip": (lambda: gx.adaptive_grad_clip(0.05),
                           lambda: optax.adaptive_grad_clip(0.05), True),
    "adaptive_grad_clip_eps": (lambda: gx.adaptive_grad_clip(0.5, eps=0.2),
                               lambda: optax.adaptive_grad_clip(0.5, eps=0.2), True),
    "adaptive_grad_clip_axis": (lambda: gx.adaptive_grad_clip(0.1, 1e-3, axis=-1),
                                lambda: optax.adaptive_grad_clip(0.1, 1e-3, axis=-1), True),
    "centralize": (lambda: gx.centralize(), lambda: optax.centralize(), False),
    "normalize_by_update_norm": (lambda: gx.normalize_by_update_norm(),
                                 lambda: optax.normalize_by_update_norm(), False),
    "normalize_by_update_norm_neg": (lambda: gx.normalize_by_update_norm(-2.5, 1e-3),
                                     lambda: optax.normalize_by_update_norm(-2.5, 1e-3), False),
    "keep_params_nonnegative": (lambda: gx.keep_params_nonnegative(),
                                lambda: optax.keep_params_nonnegative(), True),
}


def _tree(rng, scale):
  return {"big": scale * rng.standard_normal((160, 130)),
          "conv": scale * rng.standard_normal((3, 3, 4, 5)),
          "vec": scale * rng.standard_normal(7),
          "scalar": np.asarray(scale * rng.standard_normal())}


def _draws():
  """(grads, params) pairs in float64 NumPy: several scales, so each clip both acts and not,
  then the edge cases: zero leaves, zero params, NaNs, negative params."""
  rng = np.random.default_rng(16)
  out = [(_tree(rng, s), _tree(rng, p)) for s, p in ((1e-3, 1.0), (0.1, 1.0), (1.0, 0.5),
                                                      (10.0, 2.0), (0.05, 0.01))]
  zero_grads, params = _tree(rng, 1.0), _tree(rng, 1.0)
  zero_grads["big"][:] = 0.0
  zero_grads["vec"][:] = 0.0
  zero_grads["big"][:, 3] = 0.0
  out.append((zero_grads, params))
  grads, zero_params = _tree(rng, 1.0), _tree(rng, 1.0)
  zero_params["big"][:, :5] = 0.0             # zero units: AGC's eps floor
  zero_params["conv"][:] = 0.0
  zero_params["scalar"] = np.asarray(0.0)
  out.append((grads, zero_params))
  everything_zero = jax.tree.map(np.zeros_like, _tree(rng, 1.0))
  out.append((everything_zero, _tree(rng, 1.0)))
  nan_grads = _tree(rng, 1.0)
  nan_grads["big"][4, 7] = np.nan
  nan_grads["scalar"] = np.asarray(np.nan)
  out.append((nan_grads, _tree(rng, 1.0)))
  negative = _tree(rng, 1.0)                  # half the parameters negative
  out.append((_tree(rng, 0.5), negative))
  return out


def _has_nan(tree):
  return any(np.isnan(x).any() for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_equal_to_optax_in_float64(name):
  make_gx, make_optax, needs_params = PAIRS[name]
  with jax.enable_x64(True):
    ours, theirs = make_gx(), make_optax()
    draws = _draws()
    if name.endswith("_axis"):                # axis=-1 has no meaning on the scalar leaf
      draws = [tuple({k: v for k, v in t.items() if k != "scalar"} for t in d) for d in draws]
    ours_state = ours.init(jax.tree.map(jnp.asarray, draws[0][1]))
    theirs_state = theirs.init(jax.tree.map(jnp.asarray, draws[0][1]))
    for i, (grads, params) in enumerate(draws):
      if _has_nan(grads) and name != "zero_nans":
        continue                              # NaNs are zero_nans' business
      g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), grads)
      p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
      ours_out, ours_state = jax.jit(ours.update)(g, ours_state, p if needs_params else None)
      theirs_out, theirs_state = theirs.update(g, theirs_state, p)
      for key in g:
        assert ours_out[key].dtype == jnp.float64
        np.testing.assert_allclose(ours_out[key], theirs_out[key], rtol=RTOL, atol=0,
                                   err_msg=f"{name}, draw {i}, leaf {key}")
      if name == "zero_nans":                 # Optax's state, leaf for leaf
        assert ours_state.found_nan == jax.tree.map(bool, theirs_state.found_nan)
        assert ours_state.found_nan["big"] == ours_state.found_nan["scalar"] == _has_nan(grads)
        assert not ours_state.found_nan["vec"]


def test_zero_nans_hand_values_and_state():
  tx = gx.zero_nans()
  params = {"a": jnp.zeros(3), "b": jnp.zeros(())}
  state = tx.init(params)
  assert state.found_nan == {"a": False, "b": False}
  grads = {"a": jnp.array([1.0, jnp.nan, jnp.inf]), "b": jnp.array(2.0)}
  updates, state = tx.update(grads, state)
  np.testing.assert_array_equal(updates["a"], [1.0, 0.0, np.inf])   # inf is not a NaN
  assert float(updates["b"]) == 2.0
  assert state.found_nan == {"a": True, "b": False}
  updates, state = tx.update(jax.tree.map(jnp.ones_like, grads), state)
  assert state.found_nan == {"a": False, "b": False}     # the last update only
  assert bool(gx.tree_get(state, "found_nan")["a"]) is False


def _keras_clipnorm(u, c):
  """Keras' `clip_by_norm`: `u · c / max(‖u‖, c)` (0 for a zero leaf)."""
  norm = np.sqrt(np.sum(np.square(u)))
  return u * c / max(norm, c)


def test_clip_by_norm_against_keras_formula():
  with jax.enable_x64(True):
    tx = gx.clip_by_norm(1.5)
    state = tx.init(jax.tree.map(jnp.asarray, _draws()[0][1]))
    for grads, _ in _draws():
      if _has_nan(grads):
        continue
      out, state = jax.jit(tx.update)(jax.tree.map(jnp.asarray, grads), state)
      for key in grads:
        np.testing.assert_allclose(out[key], _keras_clipnorm(grads[key], 1.5), rtol=1e-12,
                                   atol=0, err_msg=key)
        assert np.sqrt(np.sum(np.square(out[key]))) <= 1.5 * (1 + 1e-12)


def test_clip_by_norm_hand_values():
  tx = gx.clip_by_norm(2.5)
  grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.6, 0.8]), "z": jnp.zeros(2)}
  out, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(out["a"], [1.5, 2.0], rtol=1e-7)   # ‖a‖ = 5 → × 1/2
  np.testing.assert_array_equal(out["b"], grads["b"])         # ‖b‖ = 1 ≤ 2.5: unchanged
  np.testing.assert_array_equal(out["z"], [0.0, 0.0])           # zero norm: no NaN


def test_clip_by_block_rms_hand_values():
  tx = gx.clip_by_block_rms(1.0)
  grads = {"a": jnp.array([[3.0, -3.0], [3.0, 3.0]]), "b": jnp.array([0.5, -0.5]),
           "z": jnp.zeros(3)}
  out, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(out["a"], [[1.0, -1.0], [1.0, 1.0]], rtol=1e-7)  # rms 3 → / 3
  np.testing.assert_array_equal(out["b"], [0.5, -0.5])                       # rms 0.5 ≤ 1
  np.testing.assert_array_equal(out["z"], np.zeros(3))


def test_adaptive_grad_clip_hand_values():
  # w: columns are the units (norm over axis 0). Column 0 of θ: (3, 4), norm 5 → bound
  # 0.1 · 5 = 0.5; its gradient (0, 2) has norm 2 → × 0.5/2 = (0, 0.5). Column 1 of θ is zero
  # → bound 0.1 · max(0, 1e-3) = 1e-4; its gradient (0.00003, 0.00004) has norm 5e-5 < 1e-4:
  # unchanged.
  params = {"w": jnp.array([[3.0, 0.0], [4.0, 0.0]])}
  grads = {"w": jnp.array([[0.0, 3e-5], [2.0, 4e-5]])}
  tx = gx.adaptive_grad_clip(0.1)
  out, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(out["w"], [[0.0, 3e-5], [0.5, 4e-5]], rtol=1e-6)


def test_adaptive_grad_clip_rank_without_default_unit():
  params = {"x": jnp.ones((1, 2, 2, 2, 2, 2))}
  tx = gx.adaptive_grad_clip(0.1)
  with pytest.raises(ValueError, match="adaptive_grad_clip: no default unit .* pass axis="):
    tx.update(params, tx.init(params), params)
  out, _ = gx.adaptive_grad_clip(0.1, axis=(0, 1)).update(params, tx.init(params), params)
  assert out["x"].shape == (1, 2, 2, 2, 2, 2)


def test_centralize_hand_values():
  tx = gx.centralize()
  grads = {"m": jnp.array([[1.0, 2.0, 3.0], [4.0, 6.0, 8.0]]), "v": jnp.array([1.0, 5.0]),
           "k": jnp.arange(8.0).reshape(2, 2, 2)}
  out, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(out["m"], [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0]], rtol=1e-7)
  np.testing.assert_array_equal(out["v"], [1.0, 5.0])               # vectors unchanged
  # k[0] = 0..3 (mean 1.5), k[1] = 4..7 (mean 5.5): both become −1.5, −0.5, 0.5, 1.5
  np.testing.assert_allclose(out["k"].reshape(2, 4), [[-1.5, -0.5, 0.5, 1.5]] * 2, rtol=1e-7)


def test_normalize_by_update_norm_hand_values():
  tx = gx.normalize_by_update_norm(scale_factor=2.0, eps=0.0)
  grads = {"a": jnp.array([3.0]), "b": jnp.array([[4.0]])}          # global norm 5
  out, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(out["a"], [1.2], rtol=1e-7)            # 3 / (5 / 2)
  np.testing.assert_allclose(out["b"], [[1.6]], rtol=1e-7)
  zero = jax.tree.map(jnp.zeros_like, grads)
  out, _ = gx.normalize_by_update_norm().update(zero, tx.init(grads))   # eps keeps 0 at 0
  assert all(not np.any(x) for x in jax.tree.leaves(out))


def test_keep_params_nonnegative_hand_values():
  tx = gx.keep_params_nonnegative()
  params = {"p": jnp.array([1.0, 1.0, 0.0, -2.0, -2.0])}
  updates = {"p": jnp.array([-0.5, -3.0, 0.5, 1.0, 5.0])}
  out, _ = tx.update(updates, tx.init(params), params)
  # θ + u = (0.5, −2, 0.5, −1, 3): the negatives become −θ (1 → 0, −2 → 0).
  np.testing.assert_array_equal(out["p"], [-0.5, -1.0, 0.5, 2.0, 5.0])
  np.testing.assert_array_equal(gx.apply_updates(params, out)["p"], [0.5, 0.0, 0.5, 0.0, 3.0])


# ---------------------------------------------------------------------------------------------
# Composition, equality, errors.

FACTORIES = {
    "zero_nans": (gx.zero_nans, (), False),
    "clip_by_norm": (gx.clip_by_norm, (0.5,), False),
    "clip_by_block_rms": (gx.clip_by_block_rms, (0.2,), False),
    "adaptive_grad_clip": (gx.adaptive_grad_clip, (0.01,), True),
    "centralize": (gx.centralize, (), False),
    "normalize_by_update_norm": (gx.normalize_by_update_norm, (0.5,), False),
    "keep_params_nonnegative": (gx.keep_params_nonnegative, (), True),
}

_PARAMS = {"w": jnp.array([[1.0, -2.0, 0.5], [0.5, 3.0, -1.0]]), "b": jnp.array([0.1, -0.1])}
_GRADS = {"w": jnp.array([[0.5, 2.0, -1.5], [1.5, -0.5, 0.25]]), "b": jnp.array([3.0, -0.2])}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_testing_kit(name):
  from gradxform.testing import check_transform
  factory, args, needs_params = FACTORIES[name]
  check_transform(factory(*args), _PARAMS, _GRADS, needs_params=needs_params, steps=2)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_low_precision_updates_keep_their_dtype(name):
  factory, args, _ = FACTORIES[name]
  tx = factory(*args)
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _PARAMS)
  grads = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _GRADS)
  out, _ = tx.update(grads, tx.init(params), params)
  expected, _ = tx.update(_GRADS, tx.init(_PARAMS), _PARAMS)
  for key in grads:
    assert out[key].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out[key], np.float32), expected[key], rtol=2e-2,
                               atol=2e-2)


def test_complex_leaves_are_pairs_of_reals():
  # A complex leaf is clipped by the norm of its real view, which is its complex norm:
  # ‖(3 + 4i, 0)‖ = 5 → × 1/2. zero_nans zeroes the NaN part only.
  z = {"z": jnp.array([3.0 + 4.0j, 0.0j], jnp.complex64)}
  out, _ = gx.clip_by_norm(2.5).update(z, gx.clip_by_norm(2.5).init(z))
  assert out["z"].dtype == jnp.complex64
  np.testing.assert_allclose(out["z"], [1.5 + 2.0j, 0.0], rtol=1e-6)
  bad = {"z": jnp.array([jax.lax.complex(jnp.float32(jnp.nan), jnp.float32(1.0)), 2.0j])}
  out, state = gx.zero_nans().update(bad, gx.zero_nans().init(bad))
  np.testing.assert_array_equal(out["z"], np.array([1.0j, 2.0j], np.complex64))
  assert bool(state.found_nan["z"])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_equal_by_value(name):
  factory, args, _ = FACTORIES[name]
  a, b = factory(*args), factory(*args)
  assert a == b and hash(a) == hash(b)
  if args:
    assert factory(*args) != factory(*(2 * x for x in args))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_in_chain(name):
  factory, args, _ = FACTORIES[name]
  alone = factory(*args)
  expected, _ = alone.update(_GRADS, alone.init(_PARAMS), _PARAMS)
  tx = gx.chain(factory(*args), gx.scale(-0.1))
  state = tx.init(_PARAMS)
  update = jax.jit(tx.update)
  for _ in range(2):
    out, state = update(_GRADS, state, _PARAMS)
    for key in _GRADS:
      np.testing.assert_allclose(out[key], -0.1 * expected[key], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_in_masked(name):
  factory, args, _ = FACTORIES[name]
  alone = factory(*args)
  only_w = {"w": _GRADS["w"]}
  expected, _ = alone.update(only_w, alone.init({"w": _PARAMS["w"]}), {"w": _PARAMS["w"]})
  tx = gx.masked(factory(*args), {"w": True, "b": False})
  state = tx.init(_PARAMS)
  out, state = jax.jit(tx.update)(_GRADS, state, _PARAMS)
  np.testing.assert_allclose(out["w"], expected["w"], rtol=1e-6)
  np.testing.assert_array_equal(out["b"], _GRADS["b"])        # not owned: passed through


def test_zero_nans_state_inside_masked_and_chain():
  tx = gx.chain(gx.zero_nans(), gx.masked(gx.zero_nans(), {"w": False, "b": True}))
  grads = {"w": _GRADS["w"].at[0, 0].set(jnp.nan), "b": _GRADS["b"]}
  out, state = tx.update(grads, tx.init(_PARAMS))
  assert not np.isnan(out["w"]).any()
  assert bool(state[0].found_nan["w"]) and not bool(state[0].found_nan["b"])


@pytest.mark.parametrize("name", ["adaptive_grad_clip", "keep_params_nonnegative"])
def test_needs_params(name):
  factory, args, _ = FACTORIES[name]
  tx = factory(*args)
  with pytest.raises(ValueError, match=f"{name}.update needs the current parameters"):
    tx.update(_GRADS, tx.init(_PARAMS))


@pytest.mark.parametrize("call, match", [
    (lambda: gx.clip_by_norm(0.0), "clip_by_norm: max_norm must be > 0"),
    (lambda: gx.clip_by_norm(-1.0), "clip_by_norm: max_norm must be > 0"),
    (lambda: gx.clip_by_norm("1"), "clip_by_norm: max_norm must be a number"),
    (lambda: gx.clip_by_block_rms(0.0), "clip_by_block_rms: threshold must be > 0"),
    (lambda: gx.adaptive_grad_clip(0.0), "adaptive_grad_clip: clipping must be > 0"),
    (lambda: gx.adaptive_grad_clip(0.1, eps=-1.0), "adaptive_grad_clip: eps must be >= 0"),
    (lambda: gx.adaptive_grad_clip(0.1, axis=1.5), "adaptive_grad_clip: axis must be"),
    (lambda: gx.normalize_by_update_norm(0.0),
     "normalize_by_update_norm: scale_factor must be a finite non-zero number"),
    (lambda: gx.normalize_by_update_norm(float("nan")),
     "normalize_by_update_norm: scale_factor must be a finite non-zero number"),
    (lambda: gx.normalize_by_update_norm(1.0, eps=-1e-3),
     "normalize_by_update_norm: eps must be >= 0"),
])
def test_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_injectable_hyperparameters():
  tx = gx.inject_hyperparams(gx.clip_by_norm)(max_norm=0.5)
  state = tx.init(_PARAMS)
  out, state = jax.jit(tx.update)(_GRADS, state, _PARAMS)
  expected, _ = gx.clip_by_norm(0.5).update(_GRADS, gx.EmptyState())
  for key in _GRADS:
    np.testing.assert_allclose(out[key], expected[key], rtol=1e-6)
  state = gx.tree_set(state, max_norm=2.0)
  out, _ = jax.jit(tx.update)(_GRADS, state, _PARAMS)
  for key in _GRADS:
    np.testing.assert_allclose(out[key], _keras_clipnorm(np.asarray(_GRADS[key]), 2.0),
                               rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# tree_set: a function on state trees (Optax's tree_utils.tree_set), not a transform.


def test_tree_set_replaces_every_match_keeping_dtype_and_shape():
  tx = gx.inject_hyperparams(gx.adam)(learning_rate=1e-3)
  state = tx.init(_PARAMS)
  new = gx.tree_set(state, learning_rate=0.5, count=3)
  assert float(gx.tree_get(new, "learning_rate")) == 0.5
  counts = gx.tree_find(new, "count")
  assert len(counts) == 2 and all(int(c) == 3 and c.dtype == jnp.int32
                                  for c in counts.values())
  assert jax.tree.structure(new) == jax.tree.structure(state)
  assert [x.shape for x in jax.tree.leaves(new)] == [x.shape for x in jax.tree.leaves(state)]
  assert float(gx.tree_get(state, "learning_rate")) == np.float32(1e-3)   # a copy
  # The new state runs: Adam's step at count 3 with lr 0.5.
  out, after = jax.jit(tx.update)(_GRADS, new, _PARAMS)
  assert int(gx.tree_get(after, "count")) == 4
  assert np.all(np.isfinite(out["w"]))


def test_tree_set_paths_subtrees_and_errors():
  groups = gx.partition({"head": gx.sgd(0.1, 0.9), "body": gx.adam(1e-3)},
                        {"w": "head", "b": "body"})
  state = groups.init(_PARAMS)
  new = gx.tree_set(state, **{"head/count": 7})
  assert int(gx.tree_get(new, "head/count")) == 7
  assert int(gx.tree_get(new, "body/count")) == 0
  # a whole named subtree replaced as given
  moments = gx.tree_get(state, "body")
  assert gx.tree_get(gx.tree_set(state, body=moments), "body") is moments
  with pytest.raises(KeyError, match="tree_set: no state value called 'lr'"):
    gx.tree_set(state, lr=0.1)
  with pytest.raises(ValueError, match=r"tree_set: the value for .* has shape \(3,\)"):
    gx.tree_set(state, **{"head/count": jnp.arange(3)})
  # a scalar for an array is broadcast to its shape, in its dtype
  zeroed = gx.tree_set(gx.adam(0.1).init(_PARAMS), nu=1)
  assert all(x.shape == _PARAMS[k].shape and x.dtype == jnp.float32 and np.all(x == 1.0)
             for k, x in gx.tree_get(zeroed, "nu").items())


def test_tree_set_skips_borrowed_counters():
  tx = gx.chain(gx.scale_by_momentum(0.9), gx.scale_by_momentum(0.5))
  state = gx.tree_set(tx.init(_PARAMS), count=2)
  assert int(state[0].count) == 2 and state[1].count is None
