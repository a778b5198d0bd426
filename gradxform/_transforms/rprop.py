"""Rprop's direction: a per-coordinate step size adapted by the sign agreement of the gradient."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import GradientTransformation, elementwise, transform, trees_checked


class RpropState(NamedTuple):
  """State of `scale_by_rprop`."""
  step_sizes: Any    # per-coordinate step size Δ, like params (starts at learning_rate)
  prev_updates: Any  # the previous output Δ sign(g) (0 where the sign flipped), like params


def check_rprop(where: str, learning_rate: Any, eta_minus: Any, eta_plus: Any,
                min_step_size: Any, max_step_size: Any) -> tuple[Any, ...]:
  """Validates Rprop's hyperparameters (numbers as floats; arrays pass), naming `where`."""
  learning_rate = _check.constant(where, "learning_rate", learning_rate,
                                  instead="a number: Rprop adapts the step size itself")
  learning_rate = _check.positive(where, "learning_rate", learning_rate)
  eta_minus = _check.unit_interval(where, "eta_minus", eta_minus)
  eta_minus = _check.positive(where, "eta_minus", eta_minus)
  eta_plus = _check.at_least(where, "eta_plus", eta_plus, 1.0)
  min_step_size = _check.non_negative(where, "min_step_size", min_step_size)
  max_step_size = _check.non_negative(where, "max_step_size", max_step_size)
  if isinstance(min_step_size, float) and isinstance(max_step_size, float):
    _check.ordered(where, ("min_step_size", min_step_size), ("max_step_size", max_step_size))
  return learning_rate, eta_minus, eta_plus, min_step_size, max_step_size


@transform(hyperparams=("learning_rate", "eta_minus", "eta_plus", "min_step_size",
                        "max_step_size"))
def scale_by_rprop(learning_rate: float, eta_minus: float = 0.5, eta_plus: float = 1.2,
                   min_step_size: float = 1e-6, max_step_size: float = 50.0, *,
                   always_clip: bool = False, stale_output: bool = False,
                   state_dtype: Any = None) -> GradientTransformation:
  """Rprop's direction `Δ ⊙ sign(g)`, with a step size Δ per coordinate adapted by sign.

  With `s = g ⊙ u_prev` (the gradient times the previous output):
  `Δ ← clip(η₊ Δ, Δ_min, Δ_max)` where `s > 0` (same sign again), `Δ ← clip(η₋ Δ, ...)`
  where `s < 0` (the sign flipped), Δ unchanged where `s = 0`; the output is `u = Δ sign(g)`,
  except 0 where the sign flipped (that coordinate rests one step, and its stored `u_prev` is
  0, so the next step leaves its Δ alone: iRprop⁻ of Igel & Hüsken). Follow it with a
  negative scale (`gx.rprop` does). Optax's names, defaults and state layout.

  Two flags reproduce other implementations:

  * `always_clip=True` clips Δ to `[Δ_min, Δ_max]` at every step, also where it is not
    changed (the first step, after a flip, where `g = 0`): torch.optim.Rprop's form. The two
    differ only while some Δ lies outside the bounds, i.e. when `learning_rate` does.
  * `stale_output=True` outputs the *previous* step's `u` (0 on the first step, and 0 where
    the sign flipped), while the state evolves as above: `optax.scale_by_rprop` as of Optax
    0.2.8, whose update lags one step (google-deepmind/optax pull request 1725). The default
    outputs the current `u`, as the paper and torch do.

  Args:
    learning_rate: the initial step size Δ₀ > 0 (a number, not a schedule).
    eta_minus: η₋ in (0, 1), the factor applied where the sign flips.
    eta_plus: η₊ ≥ 1, the factor applied where the sign holds.
    min_step_size: Δ_min ≥ 0. max_step_size: Δ_max ≥ Δ_min.
    always_clip: clip Δ at every step (torch's form; see above).
    stale_output: output the previous step's update (Optax 0.2.8's form; see above).
    state_dtype: dtype of both state trees (None: each parameter's dtype).

  State: `RpropState(step_sizes, prev_updates)`.

  Example:
    >>> tx = gx.scale_by_rprop(0.1)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state)      # first step: Δ₀ sign(g)
    >>> updates["b"]
    Array([0.1, 0.1], dtype=float32)
    >>> updates, state = tx.update(grads, state)      # same sign: Δ = 1.2 · 0.1
    >>> updates["b"]
    Array([0.12, 0.12], dtype=float32)

  References:
    Riedmiller & Braun, "A direct adaptive method for faster backpropagation learning: the
    RPROP algorithm", IEEE ICNN 1993. Igel & Hüsken, "Empirical evaluation of the improved
    Rprop learning algorithms", Neurocomputing 2003.
  """
  where = "scale_by_rprop"
  learning_rate, eta_minus, eta_plus, min_step_size, max_step_size = check_rprop(
      where, learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)
  state_dtype = _check.state_dtype(where, state_dtype, int8=False)

  def init(params):
    zeros = _numerics.state_zeros(params, state_dtype)
    return RpropState(step_sizes=jax.tree.map(lambda z: jnp.full_like(z, learning_rate), zeros),
                      prev_updates=zeros)

  def leaf(g, step, prev):
    cd = _numerics.compute_dtype(g, step, prev)
    g32, step32, prev32 = (_numerics.cast(x, cd) for x in (g, step, prev))
    s = g32 * prev32
    factor = jnp.where(s > 0, eta_plus, eta_minus).astype(cd)
    changed = jnp.clip(step32 * factor, min_step_size, max_step_size)
    if always_clip:
      kept = jnp.clip(step32, min_step_size, max_step_size)
    else:
      kept = step32
    new_step = jnp.where(s == 0, kept, changed)
    current = jnp.where(s < 0, jnp.zeros_like(g32), new_step * jnp.sign(g32))
    out = jnp.where(s < 0, jnp.zeros_like(g32), prev32) if stale_output else current
    return (_numerics.cast(out, g.dtype), _numerics.cast(new_step, step.dtype),
            _numerics.cast(current, prev.dtype))

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.step_sizes, updates)
    out, steps, prev = _tree.map_unzip(leaf, 3, updates, state.step_sizes, state.prev_updates)
    return out, RpropState(step_sizes=steps, prev_updates=prev)

  return elementwise(GradientTransformation(init, update))
