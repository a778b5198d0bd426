"""`gx.update_and_apply` and its fused CPU kernel (issue 19).

The reference is the per-leaf chain run eagerly (op by op, as its equations read) followed by
`apply_updates`; the fused pass, which runs the same operations in the same order, must equal
it to float32 rounding (here: to 1e-6, it is bit-equal on the machines we ran), and a NumPy
float64 Adam/AdamW written from the papers checks both. Where the kernel does not apply (other
dtypes, a masked part with slots of its own at the end, complex parameters, a
part that only claims to be elementwise) the step must be exactly update-then-apply, with no
kernel in the program.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import subprocess
import sys
from typing import Any, NamedTuple
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx
from gradxform import _quantize
from gradxform._fused import build, calls
from gradxform._fused import program as program_module

from cpu_kernels import COMPILER, KERNELS_ON

TARGET = "gx_elementwise"


def _float16_compiles() -> bool:
  """Whether this machine's compiler has `_Float16` (GCC 12, Clang 15 on x86-64 do): without
  it, a step with float16 leaves is the two calls, by design."""
  return KERNELS_ON and build.program(
      '#include <stdint.h>\nextern "C" void gx_run(const float* s, void* const* b, int64_t lo, '
      'int64_t hi) { static_cast<_Float16*>(b[0])[lo] = static_cast<_Float16>(s[0]); }\n'
  ) is not None


def tree(dtype=jnp.float32, seed: int = 0) -> dict:
  """Mixed shapes: a matrix, a vector, a scalar, a 3-D leaf, an empty leaf and a None."""
  rng = np.random.default_rng(seed)

  def leaf(*shape):
    return jnp.asarray(rng.normal(size=shape), dtype)

  return {"w": leaf(37, 29), "b": leaf(29), "s": leaf(), "deep": {"k": leaf(3, 4, 5),
          "empty": leaf(0, 3), "none": None}}


def grads_at(step: int, params: dict) -> dict:
  return jax.tree.map(lambda p: jnp.sin(p * (step + 1.0) + 0.5) * (2.0 if step % 2 else 0.3),
                      params)


def reference(tx, params, steps: int):
  """The per-leaf chain, eagerly, then `apply_updates`. The gradients are a fixed sequence
  (from the first parameters), so that rounding differences are not amplified from step to
  step."""
  state, first = tx.init(params), params
  for t in range(steps):
    updates, state = tx.update(grads_at(t, first), state, params)
    params = gx.apply_updates(params, updates)
  return params, state


def two_calls(tx):
  """The step as `update` then `apply_updates`, jitted: what `update_and_apply` falls back to."""
  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return gx.apply_updates(p, updates), s

  return jax.jit(step)


def jitted_two_calls(tx, params, steps: int):
  """`two_calls(tx)` for `steps` steps, with the gradients of `reference`."""
  step, state, first = two_calls(tx), tx.init(params), params
  for t in range(steps):
    params, state = step(params, state, grads_at(t, first))
  return params, state


def fused(tx, params, steps: int, jit: bool = True):
  step = lambda p, s, g: gx.update_and_apply(tx, g, s, p)
  if jit:
    step = jax.jit(step, donate_argnums=(0, 1))
  state, first = tx.init(params), params
  params = jax.tree.map(jnp.copy, params)  # donated
  for t in range(steps):
    params, state = step(params, state, grads_at(t, first))
  return params, state


def program(tx, params) -> str:
  state = tx.init(params)
  return jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p)).lower(
      params, state, params).as_text()


FUSABLE = {
    "adam": lambda: gx.adam(1e-2),
    "adamw": lambda: gx.adamw(1e-2, weight_decay=0.1),
    "adam_schedule_eps_root": lambda: gx.adam(gx.cosine_decay_schedule(1e-2, 10), b1=0.8,
                                              b2=0.99, eps_root=1e-6),
    "clip_then_adamw": lambda: gx.chain(gx.clip_by_global_norm(1.0),
                                        gx.adamw(1e-2, weight_decay=0.05)),
    "composed_by_hand": lambda: gx.chain(gx.scale_by_momentum(0.9, ema=True),
                                         gx.bias_correction(0.9),
                                         gx.scale_by_rms(0.999, 1e-8, eps_in_sqrt=False,
                                                         bias_correction=True),
                                         gx.scale_by_learning_rate(3e-3)),
    "sgd_momentum": lambda: gx.sgd(1e-2, momentum=0.9),
    "sgd_nesterov": lambda: gx.sgd(1e-2, momentum=0.9, nesterov=True),
    "sgd_dampening_first_step": lambda: gx.sgd(1e-2, momentum=0.9, dampening=0.5),
    "sgdw_scheduled_decay": lambda: gx.sgdw(1e-2, weight_decay=gx.linear_schedule(0.1, 0.0, 4)),
    "rmsprop_centered_momentum": lambda: gx.rmsprop(1e-2, centered=True, momentum=0.9),
    "adagrad": lambda: gx.adagrad(1e-1),
    "adadelta": lambda: gx.adadelta(1.0),
    "adamax": lambda: gx.adamax(1e-2),
    "nadam": lambda: gx.nadam(1e-2),
    "amsgrad": lambda: gx.amsgrad(1e-2),
    "lion": lambda: gx.lion(1e-3, weight_decay=0.1),
    "powersign": lambda: gx.powersign(1e-2),
    "addsign": lambda: gx.addsign(1e-2),
    "yogi": lambda: gx.yogi(1e-2),
    "adabelief": lambda: gx.adabelief(1e-2),
    "clip_by_value_then_l2_sgd": lambda: gx.chain(gx.clip(0.5), gx.add_l2_penalty(0.1),
                                                  gx.sgd(1e-2, momentum=0.9)),
    "radam": lambda: gx.radam(1e-2),
    "noisy_sgd_noise_head": lambda: gx.noisy_sgd(1e-2),
    # masks: leaves with and without the decay get a program each
    "adamw_masked_decay": lambda: gx.adamw(1e-2, mask=lambda p: jax.tree.map(
        lambda x: x.ndim > 1, p)),
    "masked_l2_penalty_sgd": lambda: gx.chain(
        gx.add_l2_penalty(0.1, mask={"w": True, "b": False, "s": True, "deep": False}),
        gx.sgd(1e-2, momentum=0.9)),
    "masked_stateless_part": lambda: gx.chain(
        gx.scale_by_rms(0.99), gx.masked(gx.clip(0.05), {"w": False, "b": True, "s": True,
                                                         "deep": False}),
        gx.scale_by_learning_rate(1e-2)),
    # a masked part with slots runs as its own part; the parts after it fuse
    "masked_momentum_then_adam": lambda: gx.chain(
        gx.masked(gx.scale_by_momentum(0.9), {"w": True, "b": False, "s": True, "deep": False}),
        gx.adamw(1e-2, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))),
    # wrappers around an optimizer with a mask: one program per decay variant
    "inject_hyperparams_masked_adamw": lambda: gx.inject_hyperparams(gx.adamw)(
        learning_rate=gx.cosine_decay_schedule(1e-2, 10), weight_decay=0.1,
        mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    "schedule_free_masked_adamw": lambda: gx.schedule_free(gx.adamw(
        1e-2, b1=0.0, weight_decay=0.1, mask={"w": True, "b": False, "s": False, "deep": True}),
        1e-2),
    "lookahead_masked_lion": lambda: gx.lookahead(gx.lion(1e-3, weight_decay=0.1, mask={
        "w": True, "b": False, "s": True, "deep": False}), 2, 0.5),
    "ademamix": lambda: gx.ademamix(1e-2, weight_decay=0.01),
    "simplified_ademamix": lambda: gx.simplified_ademamix(1e-2, alpha=2.0),
    "madgrad": lambda: gx.madgrad(1e-2, weight_decay=0.01),
    "optimistic_gradient_descent": lambda: gx.optimistic_gradient_descent(1e-2),
    "optimistic_adam": lambda: gx.optimistic_adam(1e-2, 1e-2),
    "cocob": lambda: gx.cocob(weight_decay=0.01),
    "asgd": lambda: gx.asgd(1e-2, t0=2.0, weight_decay=0.01),
    "clip_then_schedule_free_adamw": lambda: gx.chain(
        gx.clip_by_global_norm(1.0), gx.schedule_free_adamw(1e-2, weight_decay=0.01)),
    "clip_then_schedule_free_sgd": lambda: gx.chain(gx.clip(1.0),
                                                    gx.schedule_free_sgd(1e-2, warmup_steps=3)),
    "clip_then_lookahead_adam": lambda: gx.chain(gx.clip(1.0),
                                                 gx.lookahead(gx.adam(1e-2), 2, 0.5)),
    "sgd_then_keep_params_nonnegative": lambda: gx.chain(gx.sgd(1e-1, momentum=0.9),
                                                         gx.keep_params_nonnegative()),
    "adam_then_ema_params": lambda: gx.chain(gx.adam(1e-2), gx.ema_params(0.9)),
    "schedule_free_adamw_alone": lambda: gx.schedule_free_adamw(1e-2, weight_decay=0.01),
    "adopt": lambda: gx.adopt(1e-2),
    "adopt_nesterov_unclipped": lambda: gx.adopt(1e-2, nesterov=True, use_clipping=False),
    "adan": lambda: gx.adan(1e-2, weight_decay=0.02),
    "rprop": lambda: gx.rprop(1e-2),
    "rprop_torch": lambda: gx.rprop(1e-2, always_clip=True),
    "rprop_optax_028": lambda: gx.rprop(1e-2, stale_output=True),
    "lamb_rate_after_the_trust_ratio": lambda: gx.lamb(1e-2, weight_decay=0.01),
    "inject_hyperparams_adamw": lambda: gx.inject_hyperparams(gx.adamw)(
        learning_rate=gx.cosine_decay_schedule(1e-2, 10), b1=0.8, weight_decay=0.1),
    # flatten: the inner step's fused pass over the packed buffers and the large leaves
    "flatten_adamw": lambda: gx.flatten(gx.adamw(1e-2, weight_decay=0.1)),
    "flatten_small_leaves_lion": lambda: gx.flatten(gx.lion(1e-3, weight_decay=0.1),
                                                    max_leaf_size=30),
    "flatten_clip_then_adamw": lambda: gx.flatten(gx.chain(
        gx.clip_by_global_norm(1.0), gx.adamw(1e-2, weight_decay=0.1)), max_leaf_size=100),
    "partition_of_flattened_groups": lambda: gx.partition(
        {"decay": gx.flatten(gx.adamw(1e-2, weight_decay=0.1)),
         "plain": gx.flatten(gx.sgd(1e-2, momentum=0.9), max_leaf_size=20)},
        lambda p: jax.tree.map(lambda x: "decay" if x.ndim > 1 else "plain", p)),
    "clip_then_flatten_sgd_momentum": lambda: gx.chain(
        gx.clip_by_global_norm(1.0), gx.flatten(gx.sgd(1e-2, momentum=0.9))),
    # parameter groups: each group's own step (the decay only on matrices, as usual)
    "partition_decay_on_matrices": lambda: gx.partition(
        {"decay": gx.adamw(1e-2, weight_decay=0.1), "plain": gx.adam(3e-3, b1=0.8)},
        lambda p: jax.tree.map(lambda x: "decay" if x.ndim > 1 else "plain", p)),
    "clip_then_partition_with_a_frozen_group": lambda: gx.chain(
        gx.clip_by_global_norm(1.0),
        gx.partition({"train": gx.sgd(1e-2, momentum=0.9), "frozen": gx.set_to_zero()},
                     lambda p: jax.tree.map(lambda x: "frozen" if x.ndim == 0 else "train", p))),
}


def test_the_kernel_is_built_where_a_compiler_is():
  status = gx.kernel_status()
  if KERNELS_ON:
    assert status == "available"
  elif COMPILER is None:
    assert status.startswith("no C++ compiler")
  else:
    assert status == "disabled by GRADXFORM_KERNELS=0"


@pytest.mark.parametrize("name", sorted(FUSABLE))
def test_fused_step_equals_the_per_leaf_chain(name):
  tx, params = FUSABLE[name](), tree()
  assert (TARGET in program(tx, params)) == KERNELS_ON
  got_p, got_s = fused(tx, params, 6)
  if not KERNELS_ON:  # no compiler here: the step is exactly the jitted two calls
    chex.assert_trees_all_equal((got_p, got_s), jitted_two_calls(tx, params, 6))
    return
  want_p, want_s = reference(tx, params, 6)
  assert jax.tree.structure(got_s) == jax.tree.structure(want_s)
  atol = JITTED_HEAD_ATOL.get(name, 1e-7)
  chex.assert_trees_all_close(got_p, want_p, rtol=1e-6, atol=atol)
  chex.assert_trees_all_close(got_s, want_s, rtol=1e-6, atol=atol)
  chex.assert_trees_all_equal_dtypes(got_s, want_s)


#: Configurations whose head accumulates across steps in a jitted XLA loop, which at XLA's
#: default optimization level may contract `β·m + g` into one fused multiply-add (one rounding
#: where the eager chain makes two): a few ulps of the O(1) state after 6 steps, not the
#: kernel's doing (its tail is checked at the default 1e-7 in every other configuration).
JITTED_HEAD_ATOL = {"masked_momentum_then_adam": 1e-6}


def numpy_adamw(params: dict, steps: int, lr: float, b1: float, b2: float, eps: float,
                wd: float) -> dict:
  """Kingma & Ba's Adam with Loshchilov & Hutter's decoupled decay, in float64."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  first = dict(p)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t in range(1, steps + 1):
    g = {k: np.sin(x * t + 0.5) * (2.0 if (t - 1) % 2 else 0.3) for k, x in first.items()}
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      mh, vh = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
      p[k] = p[k] - lr * (mh / (np.sqrt(vh) + eps) + wd * p[k])
  return p


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_fused_step_equals_numpy_adamw_from_the_papers(wd):
  params = {"w": tree()["w"], "b": tree()["b"]}
  tx = gx.adamw(1e-2, weight_decay=wd)
  got, _ = fused(tx, params, 8)
  # The gradients are taken at the first parameters, as `fused` does.
  want = numpy_adamw({k: np.asarray(x) for k, x in params.items()}, 8, 1e-2, 0.9, 0.999,
                     1e-8, wd)
  chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-6)


def mixed_tree() -> dict:
  """`tree()` with its matrix in bfloat16 and its 3-D leaf in float16: three dtypes."""
  t = tree()
  t["w"] = t["w"].astype(jnp.bfloat16)
  t["deep"]["k"] = t["deep"]["k"].astype(jnp.float16)
  return t


# Configurations whose whole chain is the fused tail, so that the eager chain is the reference;
# and, below, those with a head of other parts, which run jitted, as in the two-call step.
SIXTEEN_BIT = ["adam", "adamw", "sgd_momentum", "sgd_nesterov", "lion", "nadam", "adagrad",
               "rmsprop_centered_momentum", "yogi", "clip_by_value_then_l2_sgd",
               "adamw_masked_decay", "flatten_adamw"]
SIXTEEN_BIT_STATE = {
    "adam_bfloat16_state": lambda: gx.adam(1e-2, state_dtype=jnp.bfloat16),
    "sgd_float16_state": lambda: gx.sgd(1e-2, momentum=0.9, state_dtype=jnp.float16),
}
WITH_HEAD = ["clip_then_adamw"]


def assert_within_ulps(got, want, ulps: int = 1):
  """Each leaf equal to `want` within `ulps` units in the last place of its own dtype."""
  chex.assert_trees_all_equal_dtypes(got, want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    if jnp.issubdtype(w.dtype, jnp.floating):
      eps = float(jnp.finfo(w.dtype).eps)
      np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                 rtol=ulps * eps, atol=ulps * eps * 1e-3)
    else:
      np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("name", SIXTEEN_BIT + sorted(SIXTEEN_BIT_STATE) + WITH_HEAD)
def test_leaves_of_16_bit_dtypes_get_a_program_each(name):
  """bfloat16 and float16 leaves (and 16-bit state) are fused too: each dtype signature gets
  its own loop, every 16-bit result rounded once, as XLA computes it in float32."""
  tx = {**FUSABLE, **SIXTEEN_BIT_STATE}[name]()
  params = mixed_tree()
  text = program(tx, params)
  # One call per dtype signature and decay variant (the empty float32 matrix, decayed where
  # the other float32 leaves are not, takes none: it has nothing to compute); without float16
  # in the compiler, none (all or nothing), and the step is exactly the jitted two calls.
  fuses = _float16_compiles()
  assert text.count(TARGET) == (3 if fuses else 0)
  # Two steps only against the jitted two calls: their own loops round about an ulp
  # differently at each step, and the difference would grow with the steps.
  steps = 2 if name in WITH_HEAD else 6
  if name in WITH_HEAD or not fuses:
    want_p, want_s = jitted_two_calls(tx, params, steps)
  else:
    want_p, want_s = reference(tx, params, steps)
  got_p, got_s = fused(tx, params, steps)
  assert_within_ulps((got_p, got_s), (want_p, want_s),
                     0 if not fuses else 4 if name in WITH_HEAD else 1)


@pytest.mark.parametrize("injected", [False, True])
@pytest.mark.parametrize("decayed, calls", [("matrices", 2), ("all", 1), ("none", 1)])
def test_a_masked_decay_takes_one_program_per_variant(decayed, calls, injected):
  """`adamw(mask=...)` fuses whole, also inside `inject_hyperparams`: the decayed leaves run
  one program, the others one without the decay; the numbers are the NumPy AdamW's, decayed
  where the mask says."""
  params = {"w": tree()["w"], "b": tree()["b"], "k": tree()["deep"]["k"]}
  flags = {"matrices": {"w": True, "b": False, "k": True}, "all": True, "none": False}[decayed]
  tx = (gx.inject_hyperparams(gx.adamw) if injected else gx.adamw)(
      1e-2, weight_decay=0.1, mask=flags)
  assert program(tx, params).count(TARGET) == (calls if KERNELS_ON else 0)
  got, _ = fused(tx, params, 8)
  on = {k: flags if isinstance(flags, bool) else flags[k] for k in params}
  want = {k: numpy_adamw({k: np.asarray(x)}, 8, 1e-2, 0.9, 0.999, 1e-8, 0.1 if on[k] else 0.0)[k]
          for k, x in params.items()}
  chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", ["masked_momentum_then_adam", "inject_hyperparams_masked_adamw",
                                  "schedule_free_masked_adamw", "lookahead_masked_lion"])
def test_masks_inside_wrappers_and_after_a_masked_momentum_fuse_per_variant(name):
  """Each of these steps runs two programs over `tree()`: its masked and unmasked leaves.
  Inside `inject_hyperparams`, `schedule_free` and `lookahead` the wrapper's variant per leaf
  wraps the optimizer's; a masked momentum (its unmasked leaves keep no slot) runs as a part
  of its own, and the masked AdamW after it fuses. The numbers: `FUSABLE`'s test."""
  assert program(FUSABLE[name](), tree()).count(TARGET) == (2 if KERNELS_ON else 0)


@pytest.mark.parametrize("mask", [None, {"w": True, "b": False}])
def test_injected_hyperparameters_change_without_recompiling_the_fused_step(mask):
  """Hyperparameters in the state are scalars of the fused program: new values, same
  executable, and each step equals the eager chain with the values of that step."""
  chex.clear_trace_counter()  # the count is kept per source line, across parameters
  make = gx.inject_hyperparams(gx.adamw)
  tx = make(learning_rate=1e-2, b1=0.9, weight_decay=0.1, mask=mask)
  params = {"w": tree()["w"], "b": tree()["b"]}

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, s, g):
    return gx.update_and_apply(tx, g, s, p)

  assert (TARGET in step.lower(params, tx.init(params), params).as_text()) == KERNELS_ON
  got_p, got_s = params, tx.init(params)
  want_p, want_s = params, tx.init(params)
  for t, (lr, b1) in enumerate([(1e-2, 0.9), (3e-2, 0.5), (1e-3, 0.99)]):
    got_s = got_s.with_hyperparams(learning_rate=lr, b1=b1)
    want_s = want_s.with_hyperparams(learning_rate=lr, b1=b1)
    got_p, got_s = step(got_p, got_s, grads_at(t, params))
    updates, want_s = tx.update(grads_at(t, params), want_s, want_p)
    want_p = gx.apply_updates(want_p, updates)
  chex.assert_trees_all_close((got_p, got_s), (want_p, want_s), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_special_values_round_as_the_eager_chain_rounds(dtype):
  """NaN, ±inf, subnormals, values that overflow the dtype and ties of the 16-bit rounding go
  through the fused loop as through the eager chain."""
  info = jnp.finfo(dtype)
  tiny, big = float(info.smallest_subnormal), float(info.max)
  values = [np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -3 * tiny, big, -big, 1.0, 1.0 + float(
      info.eps) / 2, 1.0 + 1.5 * float(info.eps), 1e-3, -2.5]
  params = {"w": jnp.asarray(values, dtype)}
  grads = {"w": jnp.asarray(values[::-1], dtype)}
  tx = gx.sgd(0.5, momentum=0.9)
  step = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p))
  fuses = _float16_compiles() if dtype == jnp.float16 else KERNELS_ON
  assert (TARGET in step.lower(params, tx.init(params), grads).as_text()) == fuses
  want_p, want_s = params, tx.init(params)
  fallback = two_calls(tx)
  for _ in range(2):  # without the kernel, the step is the jitted two calls
    if fuses:
      updates, want_s = tx.update(grads, want_s, want_p)
      want_p = gx.apply_updates(want_p, updates)
    else:
      want_p, want_s = fallback(want_p, want_s, grads)
  got_p, got_s = params, tx.init(params)
  for _ in range(2):
    got_p, got_s = step(got_p, got_s, grads)
  # Bit for bit: NaN where NaN, the same infinities and signed zeros.
  for got, want in zip(jax.tree.leaves((got_p, got_s)), jax.tree.leaves((want_p, want_s))):
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    np.testing.assert_array_equal(np.signbit(np.asarray(got, np.float32)),
                                  np.signbit(np.asarray(want, np.float32)))


def test_bfloat16_momentum_equals_numpy_rounding_each_result():
  """Heavy-ball SGD on bfloat16 parameters against NumPy (ml_dtypes' bfloat16): the momentum
  `b ← μb + g` in float32, stored in bfloat16; the step `−η·b` and `θ + u` in bfloat16 (JAX's
  weak typing makes the Python float η a bfloat16), each result rounded once."""
  import ml_dtypes
  bf16, f32 = ml_dtypes.bfloat16, np.float32
  lr, mu = 0.1, 0.9
  first = np.random.default_rng(5).normal(size=(37, 29)).astype(bf16)
  tx = gx.sgd(lr, momentum=mu)
  step = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p))
  got, state = {"w": jnp.asarray(first)}, tx.init({"w": jnp.asarray(first)})
  assert (TARGET in step.lower(got, state, got).as_text()) == KERNELS_ON
  p, b = first.copy(), np.zeros_like(first)
  for t in range(5):
    g = np.sin(first.astype(f32) * (t + 1) + 0.5).astype(bf16)
    got, state = step(got, state, {"w": jnp.asarray(g)})
    b = (f32(mu) * b.astype(f32) + g.astype(f32)).astype(bf16)
    u = (f32(bf16(-lr)) * b.astype(f32)).astype(bf16)
    p = (p.astype(f32) + u.astype(f32)).astype(bf16)
  np.testing.assert_array_equal(np.asarray(got["w"]).astype(f32), p.astype(f32))
  np.testing.assert_array_equal(np.asarray(state[0].trace["w"]).astype(f32), b.astype(f32))


def _sum_claiming_elementwise():
  """A part that declares itself elementwise but reduces each leaf: the trace must show it."""
  return gx.elementwise(gx.stateless(lambda u, p: jax.tree.map(lambda x: x - jnp.mean(x), u)))


class AbsEmaState(NamedTuple):
  count: jax.Array
  a: Any


def scale_by_abs_ema(decay: float) -> gx.GradientTransformation:
  """A user's transform: `a ← βa + (1 − β)|g|`, `u = g / (a / (1 − βᵗ) + 10⁻⁸)`."""
  def init(params):
    return AbsEmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None, **extra):
    count = state.count + 1
    a = jax.tree.map(lambda a, g: decay * a + (1 - decay) * jnp.abs(g), state.a, updates)
    correction = 1 - decay ** count
    return jax.tree.map(lambda g, a: g / (a / correction + 1e-8), updates, a), AbsEmaState(
        count, a)

  return gx.GradientTransformation(init, update)


def test_a_users_transform_declared_elementwise_is_fused():
  tx = gx.chain(gx.elementwise(scale_by_abs_ema(0.9)), gx.scale(-0.01))
  params = {"w": tree()["w"], "b": tree()["b"]}
  assert (TARGET in program(tx, params)) == KERNELS_ON
  got, state = fused(tx, params, 5)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  a = {k: np.zeros_like(v) for k, v in p.items()}
  for t in range(5):
    g = {k: np.asarray(v, np.float64) for k, v in grads_at(t, params).items()}
    for k in p:
      a[k] = 0.9 * a[k] + 0.1 * np.abs(g[k])
      p[k] = p[k] - 0.01 * g[k] / (a[k] / (1 - 0.9 ** (t + 1)) + 1e-8)
  chex.assert_trees_all_close(got, p, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(state[0].a, a, rtol=1e-5, atol=1e-7)
  assert int(state[0].count) == 5


def test_declaring_elementwise_checks_its_argument():
  with pytest.raises(TypeError, match="gx.elementwise: expected a GradientTransformation, got int"):
    gx.elementwise(3)
  with pytest.raises(ValueError, match="declares one transform, not a chain"):
    gx.elementwise(gx.adam(1e-3))
  assert gx.elementwise(gx.scale(2.0)) == gx.scale(2.0)


def test_a_partition_after_a_part_that_fixes_the_raw_gradient_takes_the_two_calls():
  """After momentum (which passes the raw gradient on to later parts), the groups would see
  another raw gradient than in `update`: no route, the step is the two calls."""
  tx = gx.chain(gx.scale_by_momentum(0.9),
                gx.partition({"a": gx.adam(1e-2), "b": gx.sgd(1e-2)},
                             lambda p: jax.tree.map(lambda x: "a" if x.ndim > 1 else "b", p)))
  params = tree()
  assert TARGET not in program(tx, params)
  chex.assert_trees_all_equal(fused(tx, params, 3), jitted_two_calls(tx, params, 3))


def test_an_empty_leaf_takes_no_program():
  """An empty leaf has nothing to compute: its dtype (here the tree's only float16) adds no
  program and no call; it comes back as it went in, the rest as the eager chain steps it."""
  params = {"w": tree()["w"], "e": jnp.zeros((0, 3), jnp.float16)}
  tx = gx.adamw(1e-2, weight_decay=0.1)
  assert program(tx, params).count(TARGET) == (1 if KERNELS_ON else 0)
  got_p, got_s = fused(tx, params, 3)
  want_p, want_s = reference(tx, params, 3)
  chex.assert_trees_all_close((got_p, got_s), (want_p, want_s), rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_equal_shapes_and_dtypes((got_p, got_s), (want_p, want_s))


INT8 = {
    "adam": lambda: gx.adam(1e-2, state_dtype="int8"),
    "adamw_masked": lambda: gx.adamw(1e-2, weight_decay=0.1, state_dtype="int8",
                                     mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    "lion": lambda: gx.lion(1e-3, state_dtype="int8"),
    "sgd_nesterov": lambda: gx.sgd(1e-2, momentum=0.9, nesterov=True, state_dtype="int8"),
}


def _int8_leaves() -> dict:
  """Leaves for the int8 tests: ragged last blocks ("w": 20.9 blocks), a leaf split over two
  threads ("big"), a bfloat16 one, and leaves too small to be quantized."""
  rng = np.random.default_rng(5)
  return {"w": jnp.asarray(rng.normal(size=(67, 80)), jnp.float32),
          "big": jnp.asarray(rng.normal(size=(140_001,)), jnp.float32),
          "h": jnp.asarray(rng.normal(size=(4_500,)), jnp.bfloat16),
          "b": jnp.asarray(rng.normal(size=(29,)), jnp.float32), "s": jnp.float32(0.5)}


@pytest.mark.parametrize("name", sorted(INT8))
def test_int8_state_is_stepped_in_the_kernel_bit_for_bit(name, monkeypatch):
  """`state_dtype="int8"`: leaves of 4,096 entries or more keep their moments quantized per
  block of 256, and the kernel dequantizes, steps and requantizes them in its one pass:
  codes, scales and parameters equal the eager chain's exactly, over ragged last blocks, a
  bfloat16 parameter, a leaf large enough to be split over threads (at block boundaries), the
  small float32-state leaves, and a NaN gradient (its block becomes NaN whole, as
  `quantize` says). In a process with one device, as most are (the suite has 8 fake ones)."""
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  params = _int8_leaves()
  tx = INT8[name]()
  state = tx.init(params)
  assert sum(map(_quantize.is_quantized, jax.tree.leaves(
      state, is_leaf=_quantize.is_quantized))) >= 3
  if KERNELS_ON:  # quantized float32, quantized bfloat16, small: a program each (the mask
    calls = program(tx, params).count(TARGET)  # decays only the quantized float32 "w")
    assert calls == (4 if name == "adamw_masked" else 3)
  step = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p), donate_argnums=(0, 1))
  # Without a compiler the step is exactly the jitted two calls, else the eager chain.
  reference_step = two_calls(tx) if not KERNELS_ON else lambda p, s, g: (
      lambda u, s: (gx.apply_updates(p, u), s))(*tx.update(g, s, p))
  got_p, got_s = jax.tree.map(jnp.copy, (params, state))  # donated
  want_p, want_s = params, state
  for t in range(5):
    g = grads_at(t, params)
    if t == 2:
      g["w"] = g["w"].at[3, 7].set(jnp.nan)
    got_p, got_s = step(got_p, got_s, g)
    want_p, want_s = reference_step(want_p, want_s, g)
  chex.assert_trees_all_equal(got_s, want_s)
  chex.assert_trees_all_equal(got_p, want_p)
  assert np.isnan(np.asarray(got_p["w"])).sum() == 256  # the NaN's block, whole


@pytest.mark.parametrize("name", sorted(INT8))
def test_jitted_int8_update_is_one_pass_bit_for_bit(name, monkeypatch):
  """Under `jax.jit`, `update` with int8 state runs its elementwise tail as one pass as well,
  written over the incoming updates (the parameters only read): updates, codes and scales
  equal the eager chain's (called eagerly, `update` runs its parts one operation at a time),
  bit for bit over 4 steps, a NaN gradient's block included. Without kernels the jitted update
  is XLA's operations, within an ulp of the eager chain."""
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  params = _int8_leaves()
  tx = INT8[name]()
  step = jax.jit(tx.update)
  text = step.lower(params, tx.init(params), params).as_text()
  assert (TARGET in text) == KERNELS_ON and "gx_codec" not in text
  got_s = want_s = tx.init(params)
  for t in range(4):
    g = grads_at(t, params)
    if t == 2:
      g["w"] = g["w"].at[3, 7].set(jnp.nan)
    got_u, got_s = step(g, got_s, params)
    want_u, want_s = tx.update(g, want_s, params)
    if KERNELS_ON:
      chex.assert_trees_all_equal((got_u, got_s), (want_u, want_s))
    elif t == 0:
      chex.assert_trees_all_close(got_u, want_u, rtol=1e-6, atol=1e-9)
  if KERNELS_ON:
    assert np.isnan(np.asarray(got_u["w"])).sum() == 256  # the NaN's block, whole


def test_jitted_int8_update_differentiates_and_vmaps_as_xlas_operations(monkeypatch):
  """The fused `update` has XLA's derivatives (a custom JVP on the parts' operations): the
  gradient of a loss through a step equals the one taken with the pass switched off (a JVP
  computes its primal by the parts' operations too). Under
  `vmap`, each problem's updates and state are its eager chain's, bit for bit."""
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  params = {"w": jnp.asarray(np.random.default_rng(9).normal(size=(40, 130)), jnp.float32)}
  tx = gx.adamw(1e-2, weight_decay=0.1, state_dtype="int8")
  state = tx.update(grads_at(0, params), tx.init(params), params)[1]  # moments not zero

  def loss(p):
    u, _ = tx.update(grads_at(1, p), state, p)
    return jnp.sum(gx.apply_updates(p, u)["w"] ** 2)

  assert (TARGET in jax.jit(loss).lower(params).as_text()) == KERNELS_ON  # the step: fused
  got = jax.jit(jax.grad(loss))(params)  # its derivative: the JVP of the parts
  monkeypatch.setattr(program_module, "ready", lambda: False)
  want = jax.jit(jax.grad(lambda p: loss(p)))(params)  # a new function: traced again
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-9)
  monkeypatch.undo()
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  batch = jax.tree.map(lambda x: jnp.stack([x, -2 * x]), params)
  grads = jax.tree.map(jnp.cos, batch)
  got_u, got_s = jax.jit(jax.vmap(tx.update))(grads, jax.vmap(tx.init)(batch), batch)
  for i in range(2):
    want_u, want_s = tx.update(pick(grads, i), tx.init(pick(batch, i)), pick(batch, i))
    same = chex.assert_trees_all_equal if KERNELS_ON else functools.partial(
        chex.assert_trees_all_close, rtol=1e-6, atol=1e-9)
    same(pick(got_u, i), want_u)
    if KERNELS_ON:
      same(pick(got_s, i), want_s)


def in_place_step(tx, params):
  """`update_and_apply(tx)` jitted with params and state donated. Where the kernel is built,
  checks that it is in the program, with no copy of `tree()`'s (37, 29) leaf."""
  step = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p), donate_argnums=(0, 1))
  hlo = step.lower(params, tx.init(params), params).compile().as_text()
  if KERNELS_ON:
    assert TARGET in hlo
    assert not [ln for ln in hlo.splitlines() if " copy(" in ln and "f32[37,29]" in ln]
  return step


@pytest.mark.parametrize("head", [False, True])
def test_flatten_steps_every_leaf_in_place_without_packing_it(head):
  """`flatten(tx, max_leaf_size)` under `update_and_apply`: the packed leaves (b, s, k and the
  empty one, 90 elements) take one `gx_elementwise_packed` call that reads and writes each
  parameter leaf where it is and the packed state at the leaf's offset, the large leaf w its
  own call, written in place. No parameter is packed or unpacked (no slice of a packed
  buffer); with a clipping head inside the flatten, the gradients are (the head sees them
  packed). The numbers and the state (stored packed, as `update` keeps it) are the eager
  chain's."""
  inner = gx.chain(gx.clip_by_global_norm(1.0), gx.adam(1e-2)) if head else gx.adam(1e-2)
  tx = gx.flatten(inner, max_leaf_size=100)
  params = tree()
  step = in_place_step(tx, params)
  text = step.lower(params, tx.init(params), params).as_text()
  assert (text.count("gx_elementwise_packed"), text.count(TARGET)) == (
      (1, 2) if KERNELS_ON else (0, 0))
  compiled = step.lower(params, tx.init(params), params).compile().as_text().splitlines()
  if KERNELS_ON:
    assert not [ln for ln in compiled if " slice(" in ln or "slice_fusion" in ln]
    assert bool([ln for ln in compiled if "= f32[90]" in ln and "concatenate" in ln]) == head
  p, s = jax.tree.map(jnp.copy, params), tx.init(params)
  for t in range(3):
    p, s = step(p, s, grads_at(t, params))
  chex.assert_trees_all_close((p, s), reference(tx, params, 3), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("head, dtype", [(False, jnp.float32), (True, jnp.bfloat16)])
def test_flatten_with_int8_state_steps_the_packed_blocks_in_place(monkeypatch, head, dtype):
  """`flatten` with int8 state under `update_and_apply`: the packed state is one quantized
  array whose blocks of 256 hold the ends of several leaves (7 entries, 1, none, leaves
  ending mid-block). With calls of 2 pieces (the code's hold 64) pieces are split between
  calls, each stepping its own blocks, and a call of 140,000 entries runs on two threads.
  The packed pass runs, no parameter is concatenated, and codes, scales and parameters are
  the eager chain's, bit for bit over 3 steps; float32, and bfloat16 parameters with a
  clipping head (the update then one packed array). Without kernels: the jitted two calls,
  whose parameters are within an ulp."""
  monkeypatch.setattr(calls, "_LEAVES_PER_CALL", 2)
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)  # the eager codec: the plain kernel
  rng = np.random.default_rng(12)
  shapes = {"a": (300,), "b": (7,), "c": (64, 33), "d": (1,), "e": (1000, 5), "f": (256,),
            "g": (0,), "h": (3, 3, 17), "big": (140_000,)}
  params = {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}
  inner = gx.adamw(1e-2, weight_decay=0.1, state_dtype="int8")
  tx = gx.flatten(gx.chain(gx.clip_by_global_norm(1.0), inner) if head else inner)
  step = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p))
  text = step.lower(params, tx.init(params), params).compile().as_text()
  total = sum(math.prod(x) for x in shapes.values())
  if KERNELS_ON:  # nothing packed, but the gradients for the clipping head
    assert "gx_elementwise_packed" in text
    packing = re.compile(rf"= (f32|bf16)\[{total}\]\S* concatenate\(")
    assert bool(packing.search(text)) == head
  p, s = params, tx.init(params)
  want_p, want_s = params, tx.init(params)
  for t in range(3):
    g = jax.tree.map(lambda x, t=t: jnp.sin((t + 2) * x.astype(jnp.float32)).astype(dtype),
                     params)
    p, s = step(p, s, g)
    updates, want_s = tx.update(g, want_s, want_p)
    want_p = gx.apply_updates(want_p, updates)
  quantized = [x for x in jax.tree.leaves(s, is_leaf=_quantize.is_quantized)
               if _quantize.is_quantized(x)]
  assert [x.shape for x in quantized] == [(total,)] * 2  # m and v, packed
  if KERNELS_ON:
    chex.assert_trees_all_equal((p, s), (want_p, want_s))
  else:
    chex.assert_trees_all_close(p, want_p, rtol=1e-2 if head else 1e-6, atol=1e-7)


def test_apply_if_finite_skips_bad_steps_inside_the_fused_step():
  """The inner step runs fused under a `lax.cond`: a step with a NaN gradient leaves the
  parameters and the inner state bit for bit as they were (no copy of them in the program),
  a good one equals the eager chain's; after `max_consecutive_errors` bad steps in a row the
  step is applied anyway, as in `update`."""
  tx = gx.apply_if_finite(gx.adamw(1e-2, weight_decay=0.1), max_consecutive_errors=2)
  params = tree()
  step = in_place_step(tx, params)
  bad_steps = {1, 3, 4, 5}
  p, s = jax.tree.map(jnp.copy, params), tx.init(params)
  want_p, want_s = params, tx.init(params)
  for t in range(7):
    g = grads_at(t, params)
    if t in bad_steps:
      g = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan) if x.size else x, g)
    before = jax.tree.map(np.asarray, (p, s.inner_state))
    p, s = step(p, s, g)
    updates, want_s = tx.update(g, want_s, want_p)   # eagerly, the two calls
    want_p = gx.apply_updates(want_p, updates)
    if t in (1, 3, 4):                                # skipped: nothing moved
      chex.assert_trees_all_equal((p, s.inner_state), before)
    if t < 5:
      chex.assert_trees_all_close((p, s), (want_p, want_s), rtol=1e-6, atol=1e-7)
  assert int(s.total_notfinite) == 4 and int(s.notfinite_count) == 0
  assert np.isnan(np.asarray(p["w"])).any()           # the third bad step in a row applied
  chex.assert_trees_all_equal(jnp.isnan(p["w"]), jnp.isnan(want_p["w"]))


def test_accumulate_gradients_takes_the_fused_step_every_k_micro_steps():
  """Micro steps only add to the sum (the parameters stay bit for bit); every third step
  runs the inner AdamW fused on the mean, as the eager two calls do."""
  tx = gx.accumulate_gradients(gx.adamw(1e-2, weight_decay=0.1), every_k=3)
  params = tree()
  step = in_place_step(tx, params)
  p, s = jax.tree.map(jnp.copy, params), tx.init(params)
  want_p, want_s = params, tx.init(params)
  for t in range(7):
    before = np.asarray(p["w"])
    p, s = step(p, s, grads_at(t, params))
    updates, want_s = tx.update(grads_at(t, params), want_s, want_p)
    want_p = gx.apply_updates(want_p, updates)
    assert np.array_equal(np.asarray(p["w"]), before) == (t % 3 != 2)
    chex.assert_trees_all_close((p, s), (want_p, want_s), rtol=1e-6, atol=1e-7)
  assert int(s.gradient_step) == 2 and int(s.micro_step) == 1


def _erf_claiming_elementwise():
  """An elementwise part whose primitive (erf) the kernel has no instruction for."""
  return gx.elementwise(gx.stateless(lambda u, p: jax.tree.map(jax.lax.erf, u)))


FALLBACK = {
    "a_primitive_without_an_instruction": (lambda: gx.chain(
        gx.scale_by_momentum(0.9), _erf_claiming_elementwise(), gx.scale(-0.1)), jnp.float32),
    "a_reduction_after_the_elementwise_parts": (lambda: gx.chain(
        gx.adam(1e-2), gx.clip_by_global_norm(1.0)), jnp.float32),
    "a_reduction_declared_elementwise": (lambda: gx.chain(
        gx.scale_by_momentum(0.9), _sum_claiming_elementwise(), gx.scale(-0.1)), jnp.float32),
    # masked and unmasked leaves would keep different slots, and nothing follows it
    "a_masked_part_with_slots_last": (lambda: gx.chain(gx.scale(-0.1), gx.masked(
        gx.scale_by_momentum(0.9), {"w": True, "b": False, "s": True, "deep": False})),
        jnp.float32),
}


@pytest.mark.parametrize("name", sorted(FALLBACK))
def test_elsewhere_the_step_is_update_then_apply(name):
  make, dtype = FALLBACK[name]
  tx, params = make(), tree(dtype)
  assert TARGET not in program(tx, params)
  step = two_calls(tx)
  one_call = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p))
  want_p, want_s = params, tx.init(params)
  got_p, got_s = params, tx.init(params)
  for t in range(4):
    want_p, want_s = step(want_p, want_s, grads_at(t, want_p))
    got_p, got_s = one_call(got_p, got_s, grads_at(t, got_p))
  chex.assert_trees_all_equal((got_p, got_s), (want_p, want_s))


def test_complex_parameters_take_the_two_calls():
  params = {"z": jnp.asarray([1 + 2j, -0.5j], jnp.complex64)}
  grads = {"z": jnp.asarray([0.3 - 0.1j, 0.2 + 0.4j], jnp.complex64)}
  tx = gx.adam(1e-2)
  updates, want_s = tx.update(grads, tx.init(params), params)
  got_p, got_s = gx.update_and_apply(tx, grads, tx.init(params), params)
  chex.assert_trees_all_equal((got_p, got_s), (gx.apply_updates(params, updates), want_s))


class FusedVariants(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_variants_agree_with_the_reference(self):
    self._agree(gx.adamw(1e-2, weight_decay=0.1))

  @chex.variants(with_jit=True, without_jit=True)
  def test_variants_of_the_packed_step_agree_with_the_reference(self):
    self._agree(gx.flatten(gx.adamw(1e-2, weight_decay=0.1), max_leaf_size=100))

  def _agree(self, tx):
    params = tree()
    step = self.variant(lambda p, s, g: gx.update_and_apply(tx, g, s, p))
    p, s = params, tx.init(params)
    for t in range(3):
      p, s = step(p, s, grads_at(t, params))
    if not KERNELS_ON and "with_jit" in str(self.variant.type):
      # no compiler here: the jitted step is exactly the jitted two calls
      chex.assert_trees_all_equal((p, s), jitted_two_calls(tx, params, 3))
    else:
      chex.assert_trees_all_close((p, s), reference(tx, params, 3), rtol=1e-6, atol=1e-9)


def test_params_and_state_are_updated_in_place_when_donated():
  tx = gx.adam(1e-3)
  params = {"w": jnp.ones((256, 256)), "b": jnp.ones((256,))}
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p), donate_argnums=(0, 1))
  hlo = step.lower(params, state, params).compile().as_text()
  if KERNELS_ON:
    # No copy of a parameter-sized buffer: the kernel writes p, m and v where they are.
    assert TARGET in hlo
    assert not [ln for ln in hlo.splitlines() if " copy(" in ln and "f32[256" in ln]


def test_the_fused_step_is_dispatched_asynchronously():
  """XLA:CPU runs a program it estimates at under 1,000 flops inline, in the caller's thread
  (PjRt's `cheap_computation_`); the kernel's work is invisible to that estimate, so the
  program carries enough flops of its own that the step is dispatched like any other."""
  tx = gx.sgd(1e-2, momentum=0.9)
  params = {"w": jnp.ones((256, 256)), "b": jnp.ones((256,))}
  step = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p), donate_argnums=(0, 1))
  compiled = step.lower(params, tx.init(params), params).compile()
  if KERNELS_ON:
    assert TARGET in compiled.as_text()
    assert compiled.cost_analysis()["flops"] >= 1000


def pick(tree, i: int):
  """Problem `i` of a batched tree."""
  return jax.tree.map(lambda x: x[i], tree)


@pytest.mark.parametrize("packed", [False, True])
def test_vmap_over_a_batch_of_problems(packed):
  tx = gx.flatten(gx.adam(1e-2)) if packed else gx.adam(1e-2)
  rng = np.random.default_rng(2)
  batch = {"w": jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32),
           "b": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
  grads = jax.tree.map(lambda x: jnp.cos(x), batch)
  state = jax.vmap(tx.init)(batch)
  got_p, got_s = jax.vmap(lambda p, s, g: gx.update_and_apply(tx, g, s, p))(
      batch, state, grads)
  for i in range(3):
    one = pick(batch, i)
    updates, s = tx.update(pick(grads, i), tx.init(one), one)
    chex.assert_trees_all_close(pick(got_p, i), gx.apply_updates(one, updates), rtol=1e-6,
                                atol=1e-9)
    chex.assert_trees_all_close(pick(got_s, i), s, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("packed", [False, True])
def test_vmap_over_problems_with_int8_state(monkeypatch, packed):
  """Each problem's quantized moments are its own blocks: the batch is stepped one problem
  after another, each equal to its eager step (one device, as above); so too over flatten's
  packed state, whose block 16 holds the ends of both leaves."""
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  tx = gx.adam(1e-2, state_dtype="int8")
  tx = gx.flatten(tx) if packed else tx
  rng = np.random.default_rng(6)
  batch = {"w": jnp.asarray(rng.normal(size=(2, 4_200)), jnp.float32)}
  if packed:
    batch["x"] = jnp.asarray(rng.normal(size=(2, 77)), jnp.float32)
  grads = jax.tree.map(jnp.cos, batch)
  state = jax.vmap(tx.init)(batch)
  step = jax.jit(jax.vmap(lambda p, s, g: gx.update_and_apply(tx, g, s, p)))
  target = "gx_elementwise_packed" if packed else TARGET
  assert (target in step.lower(batch, state, grads).as_text()) == KERNELS_ON
  got = step(batch, state, grads)
  if not KERNELS_ON:  # no compiler here: exactly the two calls
    chex.assert_trees_all_equal(got, jax.jit(jax.vmap(two_calls(tx)))(batch, state, grads))
    return
  for i in range(2):
    updates, s = tx.update(pick(grads, i), tx.init(pick(batch, i)), pick(batch, i))
    chex.assert_trees_all_equal(pick(got[1], i), s)
    chex.assert_trees_all_equal(pick(got[0], i), gx.apply_updates(pick(batch, i), updates))


def test_vmap_with_shared_scalars_is_one_call_over_the_batch():
  """Only the slots batched, the step count shared: the elementwise program runs once over
  the (3, 5, 4) leaves instead of once per problem."""
  tx = gx.adam(1e-2)
  batch = {"w": jnp.asarray(np.random.default_rng(4).normal(size=(3, 5, 4)), jnp.float32)}
  grads = jax.tree.map(jnp.cos, batch)
  one = tx.init(jax.tree.map(lambda x: x[0], batch))
  axes = jax.tree.map(lambda x: None if x.ndim == 0 else 0, one)
  state = jax.tree.map(lambda x, a: x if a is None else jnp.stack([x] * 3), one, axes)
  step = jax.jit(jax.vmap(lambda p, s, g: gx.update_and_apply(tx, g, s, p),
                          in_axes=(0, axes, 0), out_axes=(0, axes)))
  if KERNELS_ON:
    calls = [ln for ln in step.lower(batch, state, grads).compile().as_text().splitlines()
             if TARGET in ln]
    assert len(calls) == 1 and "f32[3,5,4]" in calls[0]
  got = step(batch, state, grads)
  for i in range(3):
    updates, s = tx.update(pick(grads, i), one, pick(batch, i))
    chex.assert_trees_all_close(pick(got[0], i), gx.apply_updates(pick(batch, i), updates),
                                rtol=1e-6, atol=1e-9)
  chex.assert_trees_all_close(got[1][0].count, s[0].count)


@pytest.mark.parametrize("devices", [1, 8])
def test_one_device_makes_the_plain_call(monkeypatch, devices):
  """The suite runs on 8 fake devices, where every fused step goes through the sharding and
  batching wrappers; a process with one device (most users) makes the plain calls: both
  give the eager chain's numbers, in float32 and on a mixed-dtype tree."""
  if devices == 1:
    monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  tx = gx.adamw(1e-2, weight_decay=0.1)
  for mixed, params in ((False, tree()), (True, mixed_tree())):
    jaxpr = str(jax.make_jaxpr(lambda p, s, g: gx.update_and_apply(tx, g, s, p))(
        params, tx.init(params), params))
    if KERNELS_ON and (not mixed or _float16_compiles()):
      assert TARGET in jaxpr and ("custom_partitioning" in jaxpr) == (devices > 1)
    got = fused(tx, params, 3)
    if not KERNELS_ON or (mixed and not _float16_compiles()):  # the two calls, exactly
      chex.assert_trees_all_equal(got, jitted_two_calls(tx, params, 3))
    else:
      assert_within_ulps(got, reference(tx, params, 3), 1)


@pytest.mark.parametrize("packed", [False, True])
def test_pmap_agrees_with_the_reference(packed):
  n = 8
  tx = gx.adamw(1e-2, weight_decay=0.1)
  tx = gx.flatten(tx) if packed else tx
  rng = np.random.default_rng(3)
  params = {"w": jnp.asarray(rng.normal(size=(n, 16)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)}
  grads = jax.tree.map(jnp.sin, params)
  per_device = jax.pmap(lambda p, s, g: gx.update_and_apply(tx, g, s, p))
  got_p, _ = per_device(params, jax.vmap(tx.init)(params), grads)
  updates, _ = tx.update(grads, tx.init(params), params)
  chex.assert_trees_all_close(got_p, gx.apply_updates(params, updates), rtol=1e-6, atol=1e-9)


def _mesh(axis_type: str):
  from jax.sharding import AxisType
  return jax.make_mesh((4, 2), ("d", "m"), axis_types=(getattr(AxisType, axis_type),) * 2)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_sharded_jit_runs_the_kernel_on_each_devices_shards(axis_type):
  """Leaves split over one or both mesh axes, replicated, indivisible, in bfloat16: no
  collective in the program, the kernel's operands are the local shards, every result keeps
  its input's sharding, and the numbers are the eager chain's."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = _mesh(axis_type)
  rng = np.random.default_rng(5)
  values = {"w": (rng.normal(size=(64, 6)), jnp.float32, P("d", "m")),
            "b": (rng.normal(size=(16,)), jnp.float32, P("d")),
            "s": (rng.normal(size=()), jnp.float32, P()),
            "odd": (rng.normal(size=(3, 5)), jnp.float32, P()),
            "h": (rng.normal(size=(8, 4)), jnp.bfloat16, P(None, "m"))}
  params = {k: jax.device_put(jnp.asarray(v, d), NamedSharding(mesh, spec))
            for k, (v, d, spec) in values.items()}
  grads = grads_at(0, params)
  tx = gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-2, weight_decay=0.1))
  state = tx.init(params)
  want = reference(tx, params, 1)
  step = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p), donate_argnums=(0, 1))
  hlo = step.lower(params, state, grads).compile().as_text()
  got = step(*jax.tree.map(jnp.copy, (params, state)), grads)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves((params, state))):
    assert x.ndim == 0 or x.sharding.is_equivalent_to(y.sharding, x.ndim), (x.sharding, y.sharding)
  if KERNELS_ON:
    calls = [ln for ln in hlo.splitlines() if TARGET in ln]
    assert calls and all(f in " ".join(calls) for f in ("f32[16,3]", "f32[4]", "bf16[8,2]"))
    # clipping's global norm is the one reduction across devices; nothing is gathered
    assert "all-gather" not in hlo and "all-to-all" not in hlo


@pytest.mark.parametrize("state_dtype", [None, "int8"])
@pytest.mark.parametrize("how", ["pmap", "shard_map"])
def test_fused_per_device_in_pmap_and_shard_map(how, state_dtype):
  """Inside `pmap` and `shard_map` each device holds its arrays whole: the program runs on
  each (int8 state too), and each device's step equals its eager one. In `shard_map` the
  step count varies over the manual axis while the probe's constants do not: the prelude
  makes them agree (this fell back to the two calls before)."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  tx = gx.adam(1e-2, state_dtype=state_dtype)
  params = {"w": jnp.asarray(np.random.default_rng(8).normal(size=(8, 4_200)), jnp.float32)}
  grads = jax.tree.map(jnp.sin, params)
  state = jax.vmap(tx.init)(params)
  step = lambda p, s, g: gx.update_and_apply(tx, g, s, p)  # noqa: E731
  if how == "pmap":
    run = jax.pmap(step)
  else:
    mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    params, state, grads = jax.device_put((params, state, grads), NamedSharding(mesh, P("d")))
    one = lambda p, s, g: jax.tree.map(lambda x: x[None], step(*pick((p, s, g), 0)))  # noqa: E731
    run = jax.jit(jax.shard_map(one, mesh=mesh, in_specs=P("d"), out_specs=P("d")))
  assert (TARGET in str(jax.make_jaxpr(run)(params, state, grads))) == KERNELS_ON
  got = run(params, state, grads)
  # Each device's eager step on host copies: on the split arrays each eager operation would be
  # a program over the 8 fake devices, and with int8 state such a run once hung for good
  # (every thread asleep: RESULTS, session 17).
  params, state, grads, got = jax.device_get((params, state, grads, got))
  for i in range(8):
    updates, s = tx.update(pick(grads, i), pick(state, i), pick(params, i))
    want = (gx.apply_updates(pick(params, i), updates), s)
    if KERNELS_ON and state_dtype == "int8":  # codes: no tolerance
      chex.assert_trees_all_equal(pick(got, i), want)
    else:  # float32 fused, or the jitted two calls: an ulp from the eager chain
      chex.assert_trees_all_close(pick(got, i)[0], want[0], rtol=1e-6)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_int8_state_under_sharded_jit_steps_each_devices_blocks(monkeypatch, axis_type):
  """With several devices, a leaf split along its leading axis into whole blocks is stepped
  on each device's rows, its block scales split alike: split over both mesh axes flattened;
  split over one, and over the other along its second axis, which is gathered as the two
  calls gather it; leading axes of 1, split along the next. A leaf whose rows make no whole
  blocks is stepped whole. Codes, scales and parameters are the eager chain's, bit for bit,
  laid out as the two calls lay them out. A batch of problems steps one after another.
  Without kernels, the same layouts from the two calls, and the chain's parameters."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = _mesh(axis_type)
  rng = np.random.default_rng(7)
  values = {"w": ((64, 80), P("d", "m")), "b": ((8192,), P(("d", "m"))),
            "odd": ((100, 41), P("d")), "conv": ((1, 1, 64, 64), P(None, None, "d"))}
  params = {k: jax.device_put(jnp.asarray(rng.normal(size=shape), jnp.float32),
                              NamedSharding(mesh, spec)) for k, (shape, spec) in values.items()}
  tx = gx.adam(1e-2, state_dtype="int8")
  explicit = jax.set_mesh(mesh) if axis_type == "Explicit" else contextlib.nullcontext()
  with explicit:
    state = two_calls(tx)(params, tx.init(params), grads_at(0, params))[1]  # laid out by a step
    step = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p))
    hlo = step.lower(params, state, grads_at(1, params)).compile().as_text()
    got = step(params, state, grads_at(1, params))
    batch = jax.tree.map(lambda x: jnp.stack([x, -x]), {"b": params["b"]})
    batched = jax.jit(jax.vmap(lambda p, s, g: gx.update_and_apply(tx, g, s, p)))
    got_batch = batched(batch, jax.vmap(tx.init)(batch), batch)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves((params, state))):  # the two calls'
    assert x.sharding.is_equivalent_to(y.sharding, x.ndim), (x.sharding, y.sharding)
  if KERNELS_ON:
    calls = " ".join(ln for ln in hlo.splitlines() if TARGET in ln)
    for local in ("f32[16,80]", "f32[1024]", "f32[100,41]", "f32[5]", "f32[4]", "f32[17]",
                  "f32[1,1,16,64]"):  # each device's rows and scales
      assert local in calls, local
  # The eager chain on one device (the kernel's codec there is XLA's, bit for bit: tested in
  # test_int8_state), which spares every eager operation a partitioned compile.
  # Without kernels the step is the jitted two calls: an ulp from the eager chain, so only the
  # parameters compare (their codes may round the other way).
  same = chex.assert_trees_all_equal if KERNELS_ON else (
      lambda a, b: chex.assert_trees_all_close(a[0], b[0], rtol=1e-6, atol=1e-7))
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  eager_p, eager_s = jax.device_get((params, state))
  updates, eager_s = tx.update(grads_at(1, eager_p), eager_s, eager_p)
  same(jax.device_get(got), (gx.apply_updates(eager_p, updates), eager_s))
  batch = jax.device_get(batch)
  for i in range(2):
    updates, s = tx.update(pick(batch, i), tx.init(pick(batch, i)), pick(batch, i))
    same(pick(got_batch, i), (gx.apply_updates(pick(batch, i), updates), s))


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_flatten_under_sharded_jit_equals_the_eager_chain(axis_type):
  """`flatten`'s packed pass has no sharding rule: on an auto mesh XLA gathers its pieces and
  it runs whole (`gx_elementwise_packed` in the program); on explicit axes the tree is packed
  and the inner step runs on the packed buffers (there, leaves split differently cannot be
  packed at all: `flatten`'s init concatenates them, so they are replicated here). The
  numbers are the eager chain's either way."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = _mesh(axis_type)
  rng = np.random.default_rng(6)
  split = axis_type == "Auto"
  params = {"w": jax.device_put(jnp.asarray(rng.normal(size=(16, 6)), jnp.float32),
                                NamedSharding(mesh, P("d", "m") if split else P())),
            "b": jax.device_put(jnp.asarray(rng.normal(size=(8,)), jnp.float32),
                                NamedSharding(mesh, P("d") if split else P()))}
  tx = gx.flatten(gx.adamw(1e-2, weight_decay=0.1))
  step = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p))
  text = step.lower(params, tx.init(params), grads_at(0, params)).as_text()
  assert ("gx_elementwise_packed" in text) == (KERNELS_ON and axis_type == "Auto")
  p, s = params, tx.init(params)
  for t in range(3):
    p, s = step(p, s, grads_at(t, params))
  chex.assert_trees_all_close((p, s), reference(tx, params, 3), rtol=1e-6, atol=1e-7)


def test_vmap_of_sharded_problems_steps_each_problems_shards():
  """A batch of problems, each split over the devices, each with its own step count: the
  kernel runs problem after problem on the local shards, nothing is gathered."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = _mesh("Auto")
  batch = {"w": jax.device_put(
      jnp.asarray(np.random.default_rng(6).normal(size=(3, 64, 6)), jnp.float32),
      NamedSharding(mesh, P(None, "d", "m")))}
  grads = jax.tree.map(jnp.cos, batch)
  tx = gx.adam(1e-2)
  state = jax.jit(jax.vmap(tx.init))(batch)
  step = jax.jit(jax.vmap(lambda p, s, g: gx.update_and_apply(tx, g, s, p)))
  hlo = step.lower(batch, state, grads).compile().as_text()
  got = step(batch, state, grads)
  if KERNELS_ON:
    calls = " ".join(ln for ln in hlo.splitlines() if TARGET in ln)
    assert "f32[16,3]" in calls and "all-gather" not in hlo
  assert got[0]["w"].sharding.is_equivalent_to(batch["w"].sharding, 3)
  batch, grads, got = jax.device_get((batch, grads, got))  # eager references off the mesh
  for i in range(3):
    updates, _ = tx.update(pick(grads, i), tx.init(pick(batch, i)), pick(batch, i))
    chex.assert_trees_all_close(pick(got[0], i), gx.apply_updates(pick(batch, i), updates),
                                rtol=1e-6, atol=1e-7)


def test_on_explicit_axes_a_leaf_takes_the_sharding_the_two_calls_give():
  """Replicated parameters with split state (ZeRO-1's layout, without `zero1`): JAX's rule
  for an elementwise operation splits the result; the fused step gives the same layout."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = _mesh("Explicit")
  params = jax.device_put(tree(), NamedSharding(mesh, P()))
  tx = gx.adam(1e-2)
  state = tx.init(params)
  state = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P(
      *["d" if x.ndim and x.shape[0] % 4 == 0 else None][:x.ndim]))), state)
  grads = grads_at(0, params)
  with jax.set_mesh(mesh):
    got = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p))(params, state, grads)
    want = two_calls(tx)(params, state, grads)
  assert jax.tree.map(lambda x: x.sharding.spec, got) == jax.tree.map(
      lambda x: x.sharding.spec, want)
  assert got[0]["deep"]["k"].sharding.spec == P(None, None, None)
  assert got[1][0].trace["w"].sharding.spec != P()  # not gathered
  chex.assert_trees_all_close(got, reference(tx, params, 1), rtol=1e-6, atol=1e-7)


def test_a_foreign_state_gets_the_chains_error():
  params = tree()
  with pytest.raises(ValueError, match="expected the state made by this chain.s init"):
    gx.update_and_apply(gx.adam(1e-2), params, gx.sgd(0.1, momentum=0.9).init(params), params)


def test_without_kernels_the_results_are_the_same(tmp_path):
  """`GRADXFORM_KERNELS=0`, in a fresh process: the status says so and the step is the
  reference's."""
  code = (
      "import jax, jax.numpy as jnp, numpy as np, gradxform as gx\n"
      "p = {'w': jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32)}\n"
      "tx = gx.adamw(1e-2, weight_decay=0.1)\n"
      "out = jax.jit(lambda p, s, g: gx.update_and_apply(tx, g, s, p))\n"
      "q, _ = out(p, tx.init(p), jax.tree.map(jnp.cos, p))\n"
      "print(gx.kernel_status())\n"
      "print('gx_elementwise' in out.lower(p, tx.init(p), p).as_text())\n"
      "np.save(r'%s', np.asarray(q['w']))\n" % (tmp_path / "q.npy"))
  env = dict(os.environ, GRADXFORM_KERNELS="0", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                        timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split() == ["disabled", "by", "GRADXFORM_KERNELS=0", "False"]
  p = {"w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32)}
  tx = gx.adamw(1e-2, weight_decay=0.1)
  updates, _ = tx.update(jax.tree.map(jnp.cos, p), tx.init(p), p)
  np.testing.assert_allclose(np.load(tmp_path / "q.npy"),
                             np.asarray(gx.apply_updates(p, updates)["w"]), rtol=1e-6)


def test_the_build_is_cached(tmp_path, monkeypatch):
  if not KERNELS_ON:
    assert build.library() is None
    return
  monkeypatch.setenv("GRADXFORM_CACHE_DIR", str(tmp_path))
  first = build._compile(COMPILER, build._shipped(), "gradxform_kernels")
  stamp = os.stat(first).st_mtime_ns
  assert build._compile(COMPILER, build._shipped(), "gradxform_kernels") == first
  assert os.stat(first).st_mtime_ns == stamp
  assert os.listdir(tmp_path / "kernels") == [os.path.basename(first)]


def test_each_program_is_one_generated_loop_in_the_traces_order():
  """SGD with heavy-ball momentum: b ← μb + g, θ ← θ + (−η)b, as the loop's statements."""
  from gradxform._fused import program as fused_program
  sources = []
  real = build.program
  try:
    build.program = lambda src, **kw: sources.append(src) or real(src, **kw)
    program(gx.sgd(1e-2, momentum=0.9), {"w": jnp.ones((3,))})
    program(gx.sgd(1e-2, momentum=0.9), {"w": jnp.ones((3,), jnp.bfloat16)})
    with mock.patch.object(jax, "device_count", lambda *a: 1):  # see the int8 tests
      program(gx.sgd(1e-2, momentum=0.9, state_dtype="int8"), {"w": jnp.ones((5000,))})
  finally:
    build.program = real
  if not KERNELS_ON:
    return
  (src, src16, src8) = sources
  body = [ln.strip() for ln in src.splitlines() if ln.startswith("    ")]
  # x0 = g, x1 = θ, x2 = b; s0 = μ, s1 = −η: two products, two sums, two stores.
  step = ["const float t0 = (s0 * x2);", "const float t1 = (t0 + x0);",
          "const float t2 = (s1 * t1);", "const float t3 = (x1 + t2);", "b1[i] = t3;"]
  assert body == ["const float x0 = b0[i];", "const float x1 = b1[i];",
                  "const float x2 = b2[i];", *step, "b2[i] = t1;"], body
  # In bfloat16: each result rounded once (XLA's rounding; μb + g is one float32 expression
  # rounded as the slot's dtype, once for each use), and stored by its upper half, not rounded
  # a second time.
  loop16 = src16[src16.index('extern "C" void gx_run'):]
  body16 = [ln.strip() for ln in loop16.splitlines() if ln.startswith("    ")]
  assert body16 == [*[f"const float x{i} = gx_from_bf16(b{i}[i]);" for i in range(3)],
                    "const float t0 = (s0 * x2);", "const float t1 = (t0 + x0);",
                    "const float t2 = gx_bf16(t1);", "const float t3 = gx_bf16(t1);",
                    "const float t4 = gx_bf16((s1 * t2));",
                    "const float t5 = gx_bf16((x1 + t4));",
                    "b1[i] = gx_bf16_upper(t5);", "b2[i] = gx_bf16_upper(t3);"], body16
  # With b in int8 (codes b2, scales b3): a block at a time, b dequantized into w2, stepped
  # there, then quantized.
  loop8 = src8[src8.index('extern "C" void gx_run'):]
  body8 = [ln.strip() for ln in loop8.splitlines() if ln.startswith("    ")]
  assert body8 == ["const int64_t end = hi < at + 256 ? hi : at + 256;", "float w2[256];",
                   "gx_dequantize(b2 + at, b3[at / 256], end - at, w2);",
                   "for (int64_t i = at; i < end; ++i) {", "const float x0 = b0[i];",
                   "const float x1 = b1[i];", "const float x2 = w2[i - at];",
                   *step, "w2[i - at] = t1;", "}",
                   "gx_quantize(w2, end - at, b2 + at, b3 + at / 256);"], body8
  assert fused_program.tail_start(gx.sgd(1e-2, momentum=0.9).update.meta[
      "flat_chain"].parts) == 0
