"""Optimizers that need the loss: Polyak SGD, MoMo, MoMo-Adam.

Their `update` takes the loss of the batch the gradient came from as `value=`:

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, value=loss)

Names, parameter names and defaults are Optax's (`optax.polyak_sgd`, `optax.contrib.momo`,
`optax.contrib.momo_adam`; `state_dtype` added); the numerics equal Optax's.
"""

from __future__ import annotations

from typing import Any

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._transforms.momo import scale_by_momo, scale_by_momo_adam
from gradxform._transforms.polyak import scale_by_polyak
from gradxform._transforms.scale import scale_by_learning_rate


@transform(hyperparams=("max_learning_rate", "scaling", "f_min", "eps"))
def polyak_sgd(max_learning_rate: float = 1.0, scaling: ScalarOrSchedule = 1.0,
               f_min: float = 0.0, eps: float = 0.0,
               variant: str = "sps") -> GradientTransformation:
  """SGD with Polyak's step size: `θ ← θ − s γ g`, `γ = min((f − f*)/(s²‖g‖² + ε), γ_max)`.

  Chain: `scale_by_learning_rate(s)` → `scale_by_polyak(f*, γ_max, ε, variant)`, so the
  Polyak step sees the already scaled gradient `−s g` (hence `s²` in the denominator, and a
  largest step of `s γ_max`); with the default `s = 1` it is the paper's SPS_max with `c = 1`.
  Needs the loss: `update(grads, state, params, value=f)`. Equal to `optax.polyak_sgd`.

  Args:
    max_learning_rate: γ_max ≥ 0.
    scaling: s ≥ 0 or a schedule, a global factor.
    f_min: f*, a lower bound on (a guess at) the minimum loss; 0 suits models that
      interpolate the data.
    eps: ε ≥ 0 added to the denominator.
    variant: `"sps"` or `"sps+"` (the gap's positive part only).

  Example:
    >>> tx = gx.polyak_sgd()
    >>> updates, _ = tx.update(grads, tx.init(params), params, value=0.3)
    >>> updates["b"]                          # −(0.3/1.5) · 0.5
    Array([-0.1, -0.1], dtype=float32)

  References:
    Loizou, Vaswani, Laradji & Lacoste-Julien, "Stochastic Polyak step-size for SGD: an
    adaptive learning rate for fast convergence", AISTATS 2021
    (https://arxiv.org/abs/2002.10542); Berrada, Zisserman & Kumar, "Training neural networks
    for and by interpolation", ICML 2020.
  """
  _check.non_negative_or_schedule("polyak_sgd", "scaling", scaling)
  _check.non_negative("polyak_sgd", "max_learning_rate", max_learning_rate)
  _check.non_negative("polyak_sgd", "eps", eps)
  _check.one_of("polyak_sgd", "variant", variant, ("sps", "sps+"))
  return chain(scale_by_learning_rate(scaling),
               scale_by_polyak(f_min, max_learning_rate, eps, variant))


@transform(hyperparams=("learning_rate", "beta", "lower_bound", "weight_decay"))
def momo(learning_rate: ScalarOrSchedule = 1.0, beta: float = 0.9, lower_bound: float = 0.0,
         weight_decay: float = 0.0, adapt_lower_bound: bool = False, *,
         state_dtype: Any = None) -> GradientTransformation:
  """MoMo: SGD with momentum, stepping `min(η, Polyak-type step of a model of the loss)`.

  `θ ← θ − ηλ/(1 + ηλ) θ − τ d` with `d` the momentum and `τ` as in `scale_by_momo`.
  Chain: `scale_by_momo(η, β, f*, λ, adapt_lower_bound)` (η is inside τ, so the primitive
  is the whole update). Needs the loss and the parameters:
  `update(grads, state, params, value=f)`. Equal to `optax.contrib.momo`.

  Args:
    learning_rate: η ≥ 0 or a schedule; MoMo is meant to be run with a large one (1.0).
    beta: β in [0, 1).
    lower_bound: f*, a lower bound of the loss (0 for most losses).
    weight_decay: λ ≥ 0.
    adapt_lower_bound: estimate f* on the fly (the paper's MoMo*).
    state_dtype: dtype of the momentum.

  Example:
    >>> tx = gx.momo()
    >>> updates, _ = tx.update(grads, tx.init(params), params, value=0.3)
    >>> updates["b"]                          # as Polyak SGD on the first step
    Array([-0.1, -0.1], dtype=float32)

  References:
    Schaipp, Ohana, Eickenberg, Defazio & Gower, "MoMo: momentum models for adaptive learning
    rates", ICML 2024 (https://arxiv.org/abs/2305.07583).
  """
  _check.learning_rate("momo", learning_rate)
  _check.unit_interval("momo", "beta", beta)
  _check.non_negative("momo", "weight_decay", weight_decay)
  return chain(scale_by_momo(learning_rate, beta, lower_bound, weight_decay, adapt_lower_bound,
                             state_dtype=state_dtype))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "lower_bound", "weight_decay"))
def momo_adam(learning_rate: ScalarOrSchedule = 1e-2, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-8, lower_bound: float = 0.0, weight_decay: float = 0.0,
              adapt_lower_bound: bool = False, *,
              state_dtype: Any = None) -> GradientTransformation:
  """MoMo-Adam: Adam(W)'s direction, stepping `min(η/(1 − β1^t), Polyak-type model step)`.

  `θ ← θ − ηλ/(1 + ηλ) θ − τ d/D` with Adam's moment `d`, preconditioner `D` and `τ` as in
  `scale_by_momo_adam`. Chain: `scale_by_momo_adam(η, β1, β2, ε, f*, λ, adapt_lower_bound)`.
  Needs the loss and the parameters: `update(grads, state, params, value=f)`. Equal to
  `optax.contrib.momo_adam`.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1, b2: decays in [0, 1).
    eps: ε ≥ 0 outside the root.
    lower_bound: f*, a lower bound of the loss.
    weight_decay: λ ≥ 0.
    adapt_lower_bound: estimate f* on the fly.
    state_dtype: dtype of both moments.

  Example:
    >>> tx = gx.momo_adam()
    >>> updates, _ = tx.update(grads, tx.init(params), params, value=0.3)
    >>> jnp.round(updates["b"], 5)            # −(η/0.1) · d/D with d/D ≈ 0.1
    Array([-0.01, -0.01], dtype=float32)

  References:
    Schaipp, Ohana, Eickenberg, Defazio & Gower, "MoMo: momentum models for adaptive learning
    rates", ICML 2024 (https://arxiv.org/abs/2305.07583).
  """
  _check.learning_rate("momo_adam", learning_rate)
  _check.unit_interval("momo_adam", "b1", b1)
  _check.unit_interval("momo_adam", "b2", b2)
  _check.non_negative("momo_adam", "eps", eps)
  _check.non_negative("momo_adam", "weight_decay", weight_decay)
  return chain(scale_by_momo_adam(learning_rate, b1, b2, eps, lower_bound, weight_decay,
                                  adapt_lower_bound, state_dtype=state_dtype))
