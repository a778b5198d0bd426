"""Sharpness-aware minimization (Foret et al. 2021) and its adaptive form, ASAM (Kwon et al.).

SAM steps with the gradient taken at the worst nearby point, `g_SAM = ∇L(θ + ε)` with
`ε = ρ g/‖g‖`, so every step needs a second gradient. Here `gx.sam(base_optimizer, rho)` is a
transform whose `update` takes the gradient function as `grad_fn=` and calls it once, at the
perturbed parameters; the base optimizer then steps from θ with `g_SAM`:

    grad_fn = lambda p: jax.grad(loss_fn)(p, batch)
    updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)

One `update` is one SAM step (Optax's `optax.contrib.sam` instead alternates an adversarial
and an outer step over two `update` calls). `gx.sam_perturbation` gives ε alone, for a
training step written by hand.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _complex, _numerics, _tree
from gradxform._base import (GRAD_KEY, GradientTransformation, _as_transform, apply_updates,
                             require_params, transform)
from gradxform._wrappers.masked import inner_extra


class SAMState(NamedTuple):
  """State of `sam`."""
  inner_state: Any   # the base optimizer's state


def sam_perturbation(grads: Any, params: Any = None, rho: Any = 0.05, *,
                     adaptive: bool = False) -> Any:
  """SAM's ascent step `ε = ρ g/‖g‖` (ASAM: `ε = ρ θ² g/‖|θ| g‖`), a tree like `grads`.

  `‖·‖` is the global 2-norm over all leaves (computed in at least float32); where it is 0
  the perturbation is 0. `adaptive=True` is ASAM's element-wise normalization `T = |θ|`
  (needs `params`; Kwon et al. add a small η to `|θ|` for biases, left out here as in the
  common PyTorch implementation). A complex entry counts as two reals. The gradient at
  `gx.apply_updates(params, ε)` is the SAM gradient.

  Args:
    grads: the gradient g at `params`.
    params: the parameters θ (needed only for `adaptive`).
    rho: ρ ≥ 0, the radius of the neighbourhood.
    adaptive: ASAM's scale-invariant neighbourhood.

  Example:
    >>> eps = gx.sam_perturbation(grads, params, rho=0.05)
    >>> jnp.round(eps["b"], 5)                # 0.05 · 0.5/√(6 · 0.25)
    Array([0.02041, 0.02041], dtype=float32)

  References:
    Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-aware minimization for efficiently
    improving generalization", ICLR 2021 (https://arxiv.org/abs/2010.01412); Kwon, Kim, Park
    & Choi, "ASAM: adaptive sharpness-aware minimization for scale-invariant learning of deep
    neural networks", ICML 2021 (https://arxiv.org/abs/2102.11600).
  """
  rho = _check.non_negative("sam_perturbation", "rho", rho)
  if adaptive and params is None:
    raise ValueError("sam_perturbation: adaptive=True needs params (ε scales with |θ|).")
  real = _complex.to_real(grads)
  leaves = jax.tree.leaves(real)
  dtype = _numerics.compute_dtype(*leaves)
  if adaptive:
    scaled = jax.tree.map(lambda g, p: _numerics.cast(jnp.abs(p), dtype) * g, real,
                          _complex.to_real(params))
  else:
    scaled = real
  sq = jnp.zeros([], dtype)
  for x in jax.tree.leaves(scaled):
    sq = sq + jnp.sum(jnp.square(_numerics.cast(x, dtype)))
  norm = jnp.sqrt(sq)
  factor = jnp.where(norm > 0.0, rho / jnp.where(norm > 0.0, norm, 1.0), 0.0)
  if adaptive:
    eps = jax.tree.map(lambda s, p, g: _numerics.cast(
        factor * _numerics.cast(jnp.abs(p), dtype) * s, g.dtype), scaled,
        _complex.to_real(params), real)
  else:
    eps = jax.tree.map(lambda g: _numerics.cast(factor * g, g.dtype), real)
  return _complex.from_real(eps, grads)


@transform(hyperparams=("rho",))
def sam(base_optimizer: GradientTransformation, rho: float = 0.05, *,
        adaptive: bool = False) -> GradientTransformation:
  """SAM: `θ ← base(θ, ∇L(θ + ε))`, `ε = ρ g/‖g‖` (ASAM, `adaptive=True`: `ρ θ² g/‖|θ| g‖`).

  `update(grads, state, params, grad_fn=grad_fn)`: `grads` is the gradient g at `params`,
  `grad_fn(p)` returns the gradient of the same loss (same batch) at any `p`. The update
  computes ε with `gx.sam_perturbation`, calls `grad_fn(params + ε)` once, and returns
  `base_optimizer`'s update for that gradient from `params` (its other keyword arguments,
  e.g. `value=`, are passed on). So each call is one SAM step: two gradient evaluations, the
  first being the usual one. Put `sam` outermost (its input must be the raw gradient at
  `params`). `optax.contrib.sam` spreads the same step over two `update` calls instead
  (an adversarial step, then the outer step); its default (`sync_period=2`, the adversarial
  optimizer `chain(normalize(), sgd(rho))`) gives every second step the same parameters.

  `grad_fn` is a function, not an array: call `update` inside the jitted training step (where
  `grad_fn` closes over the batch), not through `jax.jit(tx.update)`. With complex
  parameters, `grad_fn` is called with complex parameters and returns their complex gradient
  (torch's convention, real view = the gradient of the real pairs).

  Args:
    base_optimizer: the optimizer that takes the step (SGD with momentum in the paper).
    rho: ρ ≥ 0, the radius (0.05 in the paper; ASAM uses larger ones, e.g. 0.5–2).
    adaptive: ASAM's scale-invariant perturbation.

  State: `SAMState(inner_state)`.

  Example:
    >>> loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)    # ∇L = 2θ
    >>> tx = gx.sam(gx.sgd(0.1), rho=0.5)
    >>> updates, state = tx.update(jax.grad(loss)(params), tx.init(params), params,
    ...                            grad_fn=jax.grad(loss))
    >>> jnp.round(updates["b"], 4)      # −0.1 · 2(θ + ε), ε = 0.5 θ/‖θ‖, ‖θ‖ = √14.27
    Array([-0.0226,  0.0226], dtype=float32)

  References:
    Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-aware minimization for efficiently
    improving generalization", ICLR 2021 (https://arxiv.org/abs/2010.01412); Kwon, Kim, Park
    & Choi, "ASAM: adaptive sharpness-aware minimization for scale-invariant learning of deep
    neural networks", ICML 2021 (https://arxiv.org/abs/2102.11600).
  """
  where = "sam"
  base = _as_transform(base_optimizer, f"{where}: base_optimizer")
  rho = _check.non_negative(where, "rho", rho)

  def init(params):
    return SAMState(inner_state=base.init(params))

  def update(updates, state, params=None, **extra):
    params = require_params(where, params)
    if not isinstance(state, SAMState):
      raise ValueError(f"{where}.update: expected the SAMState made by this sam's init(), got "
                       f"{type(state).__name__}.")
    extra = dict(extra)
    grad_fn = extra.pop("grad_fn", None)
    extra.pop(GRAD_KEY, None)       # the base optimizer's raw gradient is the SAM gradient
    if grad_fn is None or not callable(grad_fn):
      raise ValueError(f"{where}.update needs the gradient function: call update(grads, state, "
                       "params, grad_fn=lambda p: jax.grad(loss_fn)(p, batch)); it is called "
                       f"at the perturbed parameters. Got grad_fn={grad_fn!r}.")
    eps = sam_perturbation(updates, params, rho, adaptive=adaptive)
    sharp = grad_fn(apply_updates(params, eps))
    _tree.check_same_structure(where, updates, sharp, "grads", "grad_fn(params + ε)")
    sharp = jax.tree.map(lambda s, g: _numerics.cast(jnp.asarray(s), g.dtype), sharp, updates)
    out, inner_state = base.update(sharp, state.inner_state, params, **inner_extra(extra, None))
    return out, SAMState(inner_state=inner_state)

  return GradientTransformation(init, update)
