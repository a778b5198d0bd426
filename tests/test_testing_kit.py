"""gradxform.testing passes good transforms and catches deliberately broken ones."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx
import gradxform.testing as gxt


def _params():
  return {"w": jnp.ones((2, 3)), "b": jnp.array([0.5, -0.5])}


@pytest.mark.parametrize("tx,needs_params", [
    (gx.adam(0.1), False),
    (gx.masked(gx.adamw(0.1), lambda p: {"w": True, "b": False}), True),
    (gx.apply_if_finite(gx.sgd(0.1, 0.9), 2), False),
], ids=["adam", "masked_adamw", "apply_if_finite"])
def test_good_transforms_pass(tx, needs_params):
  gxt.check_transform(tx, _params(), needs_params=needs_params, steps=2)


def test_individual_checks_on_accumulate():
  tx = gx.accumulate_gradients(gx.sgd(0.1, 0.9), 2)
  gxt.check_jit(tx, _params(), steps=4)
  gxt.check_state_stable(tx, _params(), steps=4)
  gxt.check_zero_grads(tx, _params())


# --- deliberately broken transforms --------------------------------------------------------


def _stateless(update):
  return gx.GradientTransformation(lambda p: gx.EmptyState(), update)


def test_catches_init_with_hidden_state():
  counter = itertools.count()
  tx = gx.GradientTransformation(lambda p: {"seen": jnp.asarray(next(counter), jnp.int32)},
                                 lambda u, s, p=None, **e: (u, s))
  with pytest.raises(AssertionError, match="check_init_pure: state of a second init"):
    gxt.check_transform(tx, _params())


def test_catches_init_that_modifies_params():
  def init(params):
    params["w"][...] = 0.0  # in-place on a NumPy parameter
    return gx.EmptyState()
  tx = gx.GradientTransformation(init, lambda u, s, p=None, **e: (u, s))
  params = {"w": np.ones((2, 2), np.float32)}
  with pytest.raises(AssertionError, match=r"check_init_pure: params after init .* at \['w'\]"):
    gxt.check_init_pure(tx, params)


def test_catches_jit_mismatch():
  calls = itertools.count(1)
  tx = _stateless(lambda u, s, p=None, **e: (jax.tree.map(lambda x: x * next(calls), u), s))
  with pytest.raises(AssertionError, match=r"check_jit: updates of step \d \(jit vs no jit\) at"):
    gxt.check_jit(tx, _params())


def test_catches_state_dtype_change():
  tx = gx.GradientTransformation(
      lambda p: {"m": jax.tree.map(lambda x: jnp.zeros_like(x, jnp.bfloat16), p)},
      lambda u, s, p=None, **e: (u, {"m": jax.tree.map(lambda m, x: m + x, s["m"], u)}))
  with pytest.raises(AssertionError, match=r"check_state_stable: state leaf \['m'\]\['b'\] "
                     r"changed from bfloat16\[2\] to float32\[2\]"):
    gxt.check_state_stable(tx, _params())


def test_catches_update_dtype_change():
  tx = _stateless(lambda u, s, p=None, **e: (jax.tree.map(lambda x: x.astype(jnp.float16), u),
                                             s))
  with pytest.raises(AssertionError, match=r"update leaf \['b'\] is float16\[2\], the gradient "
                     r"is float32\[2\]"):
    gxt.check_state_stable(tx, _params())


def test_catches_retracing_state():
  tx = gx.GradientTransformation(lambda p: jnp.asarray(0.0),  # weakly typed
                                 lambda u, s, p=None, **e: (u, s.astype(jnp.float32) + 1))
  with pytest.raises(AssertionError, match="traced 2 times in 3 steps"):
    gxt.check_state_stable(tx, _params())


def test_catches_nan_from_zero_gradients():
  def normalize(u, s, p=None, **e):
    norm = gx.global_norm(u)
    return jax.tree.map(lambda x: x / norm, u), s
  with pytest.raises(AssertionError, match=r"check_zero_grads: update leaf \['b'\] is not "
                     r"finite after step 1"):
    gxt.check_transform(_stateless(normalize), _params())


def test_catches_failure_under_vmap_and_pmap():
  def host_sign(u, s, p=None, **e):
    f = lambda x: jax.pure_callback(np.sign, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    return jax.tree.map(f, u), s
  tx = _stateless(host_sign)
  gxt.check_jit(tx, _params())  # fine without mapping
  with pytest.raises(AssertionError, match="check_vmap: the transform failed under the mapping"):
    gxt.check_vmap(tx, _params())


@jax.custom_batching.custom_vmap
def _pooled_norm(tree):
  """The global norm of `tree`; under vmap (deliberately wrong) the members' mean norm."""
  return gx.global_norm(tree)


@_pooled_norm.def_vmap
def _pooled_norm_vmap(axis_size, in_batched, tree):
  del in_batched
  norms = jax.vmap(gx.global_norm)(tree)  # one norm per member ...
  return jnp.broadcast_to(jnp.mean(norms), (axis_size,)), True  # ... mixed over the batch


def _norm_accumulator(norm):
  """State `n` sums `norm(u)` over steps; updates pass through."""
  return gx.GradientTransformation(lambda p: {"n": jnp.zeros([], jnp.float32)},
                                   lambda u, s, p=None, **e: (u, {"n": s["n"] + norm(u)}))


def test_catches_cross_member_leak_under_vmap():
  params = _params()
  good, leaky = _norm_accumulator(gx.global_norm), _norm_accumulator(_pooled_norm)
  gxt.check_vmap(good, params)  # a correct per-member state passes
  gxt.check_pmap(good, params)
  # Unmapped the two are the same transform, so only the mapping can tell them apart.
  grads = gxt.default_grads(params)
  np.testing.assert_array_equal(leaky.update(grads, leaky.init(params))[1]["n"],
                                good.update(grads, good.init(params))[1]["n"])
  gxt.check_jit(leaky, params)
  # The kit's members are the parameters and gradients scaled by 1 and 1.25: pooled, member
  # 0's state is the mean norm, 1.125 times its own.
  with pytest.raises(AssertionError, match=r"check_vmap: state of member 0, step 1 at \['n'\] "
                     r"differs"):
    gxt.check_vmap(leaky, params)
