"""`accumulate_gradients`: one optimizer step per `k` micro-batches, on their mean gradient."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (_as_transform, GRAD_KEY, GradientTransformation, transform,
                             trees_checked, update_and_apply)
from gradxform._equality import Fn
from gradxform._wrappers.masked import inner_extra

EveryK = Union[int, Callable[[jax.Array], Any]]


class AccumulateState(NamedTuple):
  """State of `accumulate_gradients`."""
  micro_step: jax.Array     # int32: micro-batches accumulated since the last inner step
  gradient_step: jax.Array  # int32: inner steps taken so far
  acc: Any                  # sum of the accumulated gradients, like params (at least float32)
  inner_state: Any          # the inner transform's state


@transform
def accumulate_gradients(inner: GradientTransformation, every_k: EveryK) -> GradientTransformation:
  """Accumulates `k` micro-batch gradients, then applies `inner` once to their mean.

  With `s` the sum of the gradients since the last inner step: on micro steps 1..k−1 the
  output is zero (parameters do not move) and `s ← s + g`; on micro step k the inner
  transform gets `(s + g) / k`, its output is returned, and `s` is reset. So `k`
  micro-batches equal one step on their mean gradient (one batch `k` times larger, for a
  loss that averages over the batch).

  Args:
    inner: the optimizer to step every `k` micro-batches.
    every_k: an int ≥ 1, or a schedule `gradient_step -> k` (`gradient_step` = inner steps so
      far, from 0) so that the effective batch size can grow during training. A schedule's
      value is read when a new accumulation begins and rounded down to an int ≥ 1.

  State: `AccumulateState(micro_step, gradient_step, acc, inner_state)`. The sum `acc` is
  held in float32 or wider, so bf16 gradients do not lose their low bits while summing.

  Inside a chain, the inner transform treats the mean as its raw gradient (`extra['grad']`
  is not accumulated separately).

  Example:
    >>> tx = gx.accumulate_gradients(gx.sgd(0.1), every_k=2)
    >>> state = tx.init(params)
    >>> first, state = tx.update(grads, state, params)     # a micro step: no move
    >>> second, state = tx.update(grads, state, params)    # −0.1 · the mean gradient
    >>> first["b"], second["b"]
    (Array([0., 0.], dtype=float32), Array([-0.05, -0.05], dtype=float32))
    >>> tx = gx.accumulate_gradients(gx.sgd(0.1), lambda step: jnp.where(step < 100, 1, 4))

  References:
    Ott, Edunov, Grangier & Auli, "Scaling neural machine translation", WMT 2018
    (accumulating gradients over micro-batches); Smith, Kindermans, Ying & Le, "Don't decay
    the learning rate, increase the batch size", ICLR 2018 (growing the batch).
  """
  where = "accumulate_gradients"
  inner = _as_transform(inner, f"{where}: inner")
  every_k = _check.positive_int_or_schedule(where, "every_k", every_k)

  def k_at(step):
    k = every_k(step) if callable(every_k) else every_k
    return jnp.maximum(jnp.floor(jnp.asarray(k)).astype(jnp.int32), 1)

  def init(params):
    acc = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_numerics.compute_dtype(p)), params)
    return AccumulateState(micro_step=_numerics.zero_count(),
                           gradient_step=_numerics.zero_count(),
                           acc=acc, inner_state=inner.init(params))

  def begin(updates, state, extra):
    """The new sum, whether the inner step runs now, and the mean it would get."""
    if not isinstance(state, AccumulateState):
      raise ValueError(f"{where}.update: expected the AccumulateState made by this "
                       f"accumulate_gradients's init(), got {type(state).__name__}.")
    if not trees_checked(extra):
      _tree.check_updates(where, state.acc, updates)
    k = k_at(state.gradient_step)
    acc = jax.tree.map(lambda a, g: a + _numerics.cast(g, a.dtype), state.acc, updates)
    emit = state.micro_step + 1 >= k

    def mean():
      return jax.tree.map(lambda a, g: _numerics.cast(a / _numerics.cast(k, a.dtype), g.dtype),
                          acc, updates)

    return acc, emit, mean

  def end(state, acc, emit, inner_state):
    return AccumulateState(
        micro_step=jnp.where(emit, 0, state.micro_step + 1).astype(jnp.int32),
        gradient_step=jnp.where(emit, _numerics.safe_increment(state.gradient_step),
                                state.gradient_step).astype(jnp.int32),
        acc=jax.tree.map(lambda a: jnp.where(emit, jnp.zeros_like(a), a), acc),
        inner_state=inner_state)

  def update(updates, state, params=None, **extra):
    acc, emit, mean = begin(updates, state, extra)
    rest = inner_extra(extra, None)
    rest.pop(GRAD_KEY, None)

    def step():
      out, s = inner.update(mean(), state.inner_state, params, **rest)
      return _numerics.cast_like(out, updates), _numerics.cast_like(s, state.inner_state)

    def skip():
      return jax.tree.map(jnp.zeros_like, updates), state.inner_state

    out, inner_state = _numerics.branch(emit, step, skip)
    return out, end(state, acc, emit, inner_state)

  def fused_step(grads, state, params):  # `update_and_apply`: the inner step where it runs
    acc, emit, mean = begin(grads, state, {})

    def step():
      new_params, s = update_and_apply(inner, mean(), state.inner_state, params)
      return new_params, _numerics.cast_like(s, state.inner_state)

    params, inner_state = _numerics.branch(emit, step, lambda: (params, state.inner_state))
    return params, end(state, acc, emit, inner_state)

  return GradientTransformation(init, Fn(update, None, update_and_apply=fused_step))
