"""Parameter-free optimizers: DoG, DoWG and COCOB (Mechanic, a wrapper, is `gx.mechanize`).

Names, parameter names and defaults are those of Optax's `optax.contrib`; the default numerics
equal Optax's. The learning rate is a multiplier that defaults to 1 (a schedule's shape, not a
tuned step size).
"""

from __future__ import annotations

from typing import Any

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, identity, transform
from gradxform._transforms.cocob import scale_by_cocob
from gradxform._transforms.dog import check_init_step, scale_by_dog, scale_by_dowg
from gradxform._transforms.scale import scale_by_learning_rate
from gradxform._transforms.weight_decay import Mask, add_l2_penalty


def _l2(where: str, weight_decay: Any, mask: Mask | None) -> GradientTransformation:
  """The coupled L2 penalty, or nothing when `weight_decay` is None."""
  if weight_decay is None:
    return identity()
  _check.non_negative(where, "weight_decay", weight_decay)
  return add_l2_penalty(weight_decay, mask=mask)


@transform(hyperparams=("learning_rate", "eps", "weight_decay"))
def dog(learning_rate: ScalarOrSchedule = 1.0,
        init_step: tuple[str, Any] = ("heuristic", 1e-6), eps: float = 1e-8,
        weight_decay: float | None = None, mask: Mask | None = None) -> GradientTransformation:
  """DoG: `θ ← θ − η · r̄_t/√(Σ_{k≤t} ‖g_k‖² + ε) · g_t`, with `r̄_t = max_{k≤t} ‖θ_k − θ₀‖`.

  Chain: `add_l2_penalty(λ, mask)` (when `weight_decay` is given) → `scale_by_dog(init_step,
  eps)` → `scale_by_learning_rate(η)`. The default start `("heuristic", 1e-6)` is
  `r̄_0 = 10⁻⁶ (1 + ‖θ₀‖)`, the paper's (10⁻⁴ for models with batch normalization), so `init`
  must see the actual starting parameters. Equal to `optax.contrib.dog`. The authors
  recommend evaluating an average of the iterates (`gx.polyak_params`).

  Args:
    learning_rate: η ≥ 0 or a schedule, a multiplier of DoG's step (1: plain DoG).
    init_step: `(tag, value)`, see `scale_by_dog`: "distance" (r̄_0 = value), "heuristic"
      (r̄_0 = value · (1 + ‖θ₀‖)) or "learning_rate" (the first step's size).
    eps: ε ≥ 0 added to the sum of squared gradient norms.
    weight_decay: λ ≥ 0 of a coupled L2 penalty `g + λθ`, or None for none.
    mask: which leaves to decay, as `gx.add_l2_penalty`.

  Example:
    >>> tx = gx.dog(init_step=("distance", 0.1))
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 4)            # −r̄_0/‖g‖ · g = −0.1/√1.5 · 0.5
    Array([-0.0408, -0.0408], dtype=float32)

  References:
    Ivgi, Hinder & Carmon, "DoG is SGD's best friend: a parameter-free dynamic step size
    schedule", ICML 2023 (https://arxiv.org/abs/2302.12022).
  """
  _check.learning_rate("dog", learning_rate)
  check_init_step("dog", init_step)
  _check.non_negative("dog", "eps", eps)
  return chain(_l2("dog", weight_decay, mask),
               scale_by_dog(init_step, eps),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "init_estim_sq_dist", "eps", "weight_decay"))
def dowg(learning_rate: ScalarOrSchedule = 1.0, init_estim_sq_dist: float | None = None,
         eps: float = 1e-4, weight_decay: float | None = None,
         mask: Mask | None = None) -> GradientTransformation:
  """DoWG: `θ ← θ − η · r̄_t²/(√v_t + ε) · g_t`, `v_t = Σ_{k≤t} r̄_k² ‖g_k‖²`.

  `r̄_t = max_{k≤t} ‖θ_k − θ₀‖` as in DoG (started at `√init_estim_sq_dist`); the gradients'
  norms are weighted by it. Chain: `add_l2_penalty(λ, mask)` (when `weight_decay` is given)
  → `scale_by_dowg(init_estim_sq_dist, eps)` → `scale_by_learning_rate(η)`. Equal to
  `optax.contrib.dowg`.

  Args:
    learning_rate: η ≥ 0 or a schedule, a multiplier of DoWG's step (1: plain DoWG).
    init_estim_sq_dist: r̄_0² ≥ 0, the initial guess of the squared distance to the
      solution; None: ε.
    eps: ε ≥ 0 in the denominator.
    weight_decay: λ ≥ 0 of a coupled L2 penalty `g + λθ`, or None for none.
    mask: which leaves to decay, as `gx.add_l2_penalty`.

  Example:
    >>> tx = gx.dowg(init_estim_sq_dist=0.01, eps=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 4)            # −r̄_0²/(r̄_0 ‖g‖) · g = −0.1/√1.5 · 0.5
    Array([-0.0408, -0.0408], dtype=float32)

  References:
    Khaled, Mishchenko & Jin, "DoWG unleashed: an efficient universal parameter-free
    gradient descent method", NeurIPS 2023 (https://arxiv.org/abs/2305.16284).
  """
  _check.learning_rate("dowg", learning_rate)
  _check.non_negative("dowg", "eps", eps)
  if init_estim_sq_dist is not None:
    _check.non_negative("dowg", "init_estim_sq_dist", init_estim_sq_dist)
  return chain(_l2("dowg", weight_decay, mask),
               scale_by_dowg(init_estim_sq_dist, eps),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "alpha", "eps", "weight_decay"))
def cocob(learning_rate: ScalarOrSchedule = 1.0, alpha: float = 100.0, eps: float = 1e-8,
          weight_decay: float = 0.0, mask: Mask | None = None, *,
          state_dtype: Any = None) -> GradientTransformation:
  """COCOB-Backprop: per coordinate, `θ = θ₀ + C (L + R)/(L · max(G + L, α L))`.

  With `g ← η (g + λθ)`: `C = −Σ g`, `G = Σ |g|`, `L` the largest `|g|` so far, and
  `R` the reward (wealth won) so far; see `scale_by_cocob`. Chain: `add_l2_penalty(λ, mask)` →
  `scale_by_learning_rate(η, flip_sign=False)` → `scale_by_cocob(α, ε)`: the learning rate
  scales the gradients *before* the bet, unflipped (the bet points downhill by itself), as in
  `optax.contrib.cocob`, to which this is equal.

  Args:
    learning_rate: η ≥ 0 or a schedule, a multiplier of the gradients (1: plain COCOB).
    alpha: α ≥ 0, which caps the fraction bet in the first steps.
    eps: ε > 0, the starting value of `L`.
    weight_decay: λ ≥ 0 of a coupled L2 penalty `g + λθ` (0: none).
    mask: which leaves to decay, as `gx.add_l2_penalty`.
    state_dtype: dtype of COCOB's accumulators (the starting point keeps the params' dtypes).

  Example:
    >>> tx = gx.cocob()
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # C (L + R)/(L · α L) = −0.5 · 0.5/(0.5 · 50)
    Array([-0.01, -0.01], dtype=float32)

  References:
    Orabona & Tommasi, "Training deep networks without learning rates through coin betting",
    NeurIPS 2017 (https://arxiv.org/abs/1705.07795), Algorithm 2.
  """
  _check.learning_rate("cocob", learning_rate)
  _check.non_negative("cocob", "alpha", alpha)
  _check.positive("cocob", "eps", eps)
  _check.non_negative("cocob", "weight_decay", weight_decay)
  return chain(add_l2_penalty(weight_decay, mask=mask),
               scale_by_learning_rate(learning_rate, flip_sign=False),
               scale_by_cocob(alpha, eps, state_dtype=state_dtype))
