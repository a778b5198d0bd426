"""`stateless`: a transform from a function of the updates (and params), with no state."""

from __future__ import annotations

from typing import Any, Callable

from gradxform._base import EmptyState, GradientTransformation, Params, Updates, transform


@transform
def stateless(update_fn: Callable[[Updates, Params | None], Updates]) -> GradientTransformation:
  """A transform whose update is `update_fn(updates, params)` and whose state is `EmptyState()`.

  `u ← f(u, θ)`; `params` is None when the caller passes none. Extra keyword arguments
  (`value=`, the chain's context) are not passed to `update_fn`. Like every transform,
  `update_fn` sees a complex leaf as its real view (`(re, im)` on a trailing axis of 2), and
  its complex output is rebuilt from that.

  Inside a factory decorated with `gx.transform`, the result compares equal for equal
  arguments of that factory, although `update_fn` is a fresh closure each time. On its own,
  `stateless(f) == stateless(f)` holds for the same function object `f`.

  Args:
    update_fn: `(updates, params) -> updates`, a pure function of trees (it runs under
      `jax.jit`; it must return a tree of the updates' structure).

  State: `EmptyState()`.

  Example:
    >>> tx = gx.stateless(lambda u, p: jax.tree.map(lambda g, x: g + 0.5 * x, u, p))
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                               # 0.5 + 0.5 · θ, θ = (0.1, −0.1)
    Array([0.55, 0.45], dtype=float32)
    >>> state
    EmptyState()

  References:
    Optax's `stateless` (https://github.com/google-deepmind/optax), the same convention.
  """
  if not callable(update_fn):
    raise TypeError(f"stateless: update_fn must be a function (updates, params) -> updates, "
                    f"got {type(update_fn).__name__}: {update_fn!r}")

  def init(params: Any) -> EmptyState:
    del params
    return EmptyState()

  def update(updates, state, params=None, **extra):
    del extra
    return update_fn(updates, params), state

  return GradientTransformation(init, update)
