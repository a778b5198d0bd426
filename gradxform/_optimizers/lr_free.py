"""Optimizers that need no tuned schedule or learning rate: schedule-free SGD and AdamW,
Prodigy, D-Adaptation AdamW.

Names, parameter names and defaults are Optax's (`optax.contrib`); the default numerics equal
Optax's.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, Schedule, chain, transform
from gradxform._optimizers.sgd import is_zero
from gradxform._transforms.distance import scale_by_dadapt_adam, scale_by_prodigy
from gradxform._transforms.rms import scale_by_rms
from gradxform._transforms.scale import scale, scale_by_learning_rate
from gradxform._transforms.weight_decay import add_l2_penalty, decoupled_weight_decay
from gradxform._wrappers.schedule_free import schedule_free


def _linear_warmup(peak: Any, warmup_steps: int) -> Schedule:
  """`peak · min(t/T, 1)`: Optax's `warmup_constant_schedule(0, peak, T)`, for a `peak` that
  may be an injected array; computed as Optax's `linear_schedule` computes it (in its
  dtypes), so that the two agree to the last bit."""

  def schedule(step):
    frac = 1 - jnp.clip(step, 0, warmup_steps) / warmup_steps
    return (0.0 - peak) * frac + peak

  return schedule


def _warmed(where: str, learning_rate: Any, warmup_steps: int | None) -> Any:
  _check.learning_rate(where, learning_rate)
  if warmup_steps is None:
    return learning_rate
  steps = _check.integer(where, "warmup_steps", warmup_steps, minimum=1)
  _check.requires(where, not callable(learning_rate),
                  "learning_rate must be a number with warmup_steps (the warm-up is a schedule)")
  return _linear_warmup(learning_rate, steps)


@transform(hyperparams=("learning_rate", "b1", "weight_decay", "weight_lr_power"))
def schedule_free_sgd(learning_rate: float = 1.0, warmup_steps: int | None = None,
                      b1: float = 0.9, weight_decay: float | None = None,
                      weight_lr_power: float = 2.0, *,
                      state_dtype: Any = None) -> GradientTransformation:
  """Schedule-free SGD: `gx.schedule_free` over SGD, `z ← z − γ_t (g + λ y)`.

  Chain: `schedule_free(sgd(γ_t, weight_decay=λ), γ_t, b1, weight_lr_power)`, where
  `γ_t = η min(t/warmup_steps, 1)` (Optax's `warmup_constant_schedule(0, η, warmup_steps)`;
  constant η without warm-up). The weight decay is coupled (added to the gradient taken at
  `y`, and so scaled by γ). Equal to `optax.contrib.schedule_free_sgd`; evaluate at
  `gx.schedule_free_eval_params(state, params)`.

  Args:
    learning_rate: η ≥ 0.
    warmup_steps: T ≥ 1, the length of the linear warm-up from 0 (None: no warm-up).
    b1: β1 in (0, 1], the interpolation of `gx.schedule_free`.
    weight_decay: λ ≥ 0 (None: none).
    weight_lr_power: the power of the learning rate in the averaging weights, ≥ 0.
    state_dtype: dtype of the iterate `z`.

  Example:
    >>> tx = gx.schedule_free_sgd(0.1)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> gx.schedule_free_eval_params(state, gx.apply_updates(params, updates))["b"]
    Array([ 0.05, -0.15], dtype=float32)

  References:
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The road less scheduled", NeurIPS
    2024 (https://arxiv.org/abs/2405.15682).
  """
  where = "schedule_free_sgd"
  lr = _warmed(where, learning_rate, warmup_steps)
  parts = []
  if weight_decay is not None:
    weight_decay = _check.non_negative(where, "weight_decay", weight_decay)
    parts.append(add_l2_penalty(weight_decay))
  parts.append(scale_by_learning_rate(lr))
  return schedule_free(chain(*parts), lr, b1, weight_lr_power, state_dtype=state_dtype)


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "weight_decay", "weight_lr_power"))
def schedule_free_adamw(learning_rate: float = 0.0025, warmup_steps: int | None = None,
                        b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                        weight_decay: float = 0.0, weight_lr_power: float = 2.0, *,
                        state_dtype: Any = None) -> GradientTransformation:
  """Schedule-free AdamW: `gx.schedule_free` over AdamW without momentum.

  `z ← z − γ_t (g / (√v̂ + ε) + λ y)`, `v ← β2 v + (1 − β2) g²`, `v̂ = v/(1 − β2^t)`.
  Chain: `schedule_free(chain(scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True),
  decoupled_weight_decay(λ), scale_by_learning_rate(γ_t)), γ_t, b1, weight_lr_power)`, with
  `γ_t = η min(t/warmup_steps, 1)`. Equal to `optax.contrib.schedule_free_adamw`. The authors'
  PyTorch `AdamWScheduleFree` puts ε outside the bias correction (`√v + ε`, the step scaled
  by `√(1 − β2^t)`, which also enters the averaging weights); Optax's form is kept.

  Args:
    learning_rate: η ≥ 0.
    warmup_steps: T ≥ 1, the length of the linear warm-up from 0 (None: no warm-up).
    b1: β1 in (0, 1], the interpolation of `gx.schedule_free`.
    b2: β2 in [0, 1), the decay of the second moment.
    eps: ε ≥ 0 outside the root.
    weight_decay: λ ≥ 0, decoupled (scaled by γ only), applied at `y`.
    weight_lr_power: the power of the learning rate in the averaging weights, ≥ 0.
    state_dtype: dtype of the iterate `z`.

  Example:
    >>> tx = gx.schedule_free_adamw(0.1)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> p = gx.apply_updates(params, updates)        # x = z = θ − η g/|g| on the first step
    >>> [round(float(v), 4) for v in gx.schedule_free_eval_params(state, p)["b"]]
    [0.0, -0.2]

  References:
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The road less scheduled", NeurIPS
    2024 (https://arxiv.org/abs/2405.15682).
  """
  where = "schedule_free_adamw"
  lr = _warmed(where, learning_rate, warmup_steps)
  _check.unit_interval(where, "b2", b2)
  _check.non_negative(where, "eps", eps)
  weight_decay = _check.non_negative(where, "weight_decay", weight_decay)
  parts = [scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True)]
  if not is_zero(weight_decay):
    parts.append(decoupled_weight_decay(weight_decay))
  parts.append(scale_by_learning_rate(lr))
  return schedule_free(chain(*parts), lr, b1, weight_lr_power, state_dtype=state_dtype)


@transform(hyperparams=("learning_rate", "beta3", "eps", "estim_lr0", "estim_lr_coef",
                        "weight_decay"))
def prodigy(learning_rate: ScalarOrSchedule = 1.0, betas: tuple[float, float] = (0.9, 0.999),
            beta3: float | None = None, eps: float = 1e-8, estim_lr0: float = 1e-6,
            estim_lr_coef: float = 1.0, weight_decay: float = 0.0, *,
            safeguard_warmup: bool = False) -> GradientTransformation:
  """Prodigy: AdamW whose step size `d` estimates the distance to the solution.

  `θ ← θ − γ_t d ĉ (m / (√v + d ε) + λθ)`, with `m`, `v` the moments of `d·g` and `d` grown
  from `estim_lr0` as `scale_by_prodigy` says (ĉ: Adam's bias correction). γ is a schedule
  multiplier with base 1.0. Chain: `scale_by_prodigy(γ, betas, beta3, eps, estim_lr0,
  estim_lr_coef, λ, safeguard_warmup)` → `scale_by_learning_rate(γ)`. Equal to
  `optax.contrib.prodigy` (which always corrects the bias, as torch's `prodigyopt` does with
  `use_bias_correction=True`; its default is False). Where the estimate's denominator is 0
  (zero gradients so far) `d` is kept; Optax's becomes NaN. `params` are required.

  Args:
    learning_rate: γ ≥ 0 or a schedule (base value 1.0; e.g. a linear decay to 0 after a
      warm-up).
    betas: (β1, β2) in [0, 1).
    beta3: β3 in [0, 1), the decay of the estimate's sums (None: √β2).
    eps: ε ≥ 0, scaled by `d`.
    estim_lr0: d₀ > 0, the starting (under-)estimate of the distance.
    estim_lr_coef: coef > 0, the factor on every new estimate.
    weight_decay: λ ≥ 0, decoupled (scaled by the adapted step size).
    safeguard_warmup: leave γ out of the estimate's denominator.

  Example:
    >>> tx = gx.prodigy()
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"] / 1e-6, 3)     # −γ d₀ on the first step
    Array([-1., -1.], dtype=float32)

  References:
    Mishchenko & Defazio, "Prodigy: an expeditiously adaptive parameter-free learner", ICML
    2024 (https://arxiv.org/abs/2306.06101).
  """
  where = "prodigy"
  _check.learning_rate(where, learning_rate)
  _check.non_negative(where, "weight_decay", weight_decay)
  return chain(scale_by_prodigy(learning_rate, betas, beta3, eps, estim_lr0, estim_lr_coef,
                                weight_decay, safeguard_warmup=safeguard_warmup),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "eps", "estim_lr0", "weight_decay"))
def dadapt_adamw(learning_rate: ScalarOrSchedule = 1.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 estim_lr0: float = 1e-6, weight_decay: float = 0.0) -> GradientTransformation:
  """D-Adaptation AdamW: `θ ← θ − (m / (√v + ε) + λ d γ_t ĉ θ)`, `m` the EMA of `d γ_t ĉ g`.

  `d` estimates the distance to the solution in the infinity norm, grown from `estim_lr0` as
  `scale_by_dadapt_adam` says; γ is a schedule multiplier with base 1.0. Chain:
  `scale_by_dadapt_adam(γ, betas, eps, estim_lr0, λ)` → `scale(-1)` (the first moment holds
  the step sizes, so the step is computed whole). Equal to `optax.contrib.dadapt_adamw`
  (Adam's bias correction always on; the authors' `DAdaptAdam` has it off by default). Where
  the estimate's denominator is 0 (zero gradients so far) `d` is kept; Optax's becomes NaN.
  `params` are required.

  Args:
    learning_rate: γ ≥ 0 or a schedule (base value 1.0).
    betas: (β1, β2) in [0, 1).
    eps: ε ≥ 0 outside the root.
    estim_lr0: d₀ > 0, the starting (under-)estimate of the distance.
    weight_decay: λ ≥ 0, decoupled (scaled by the adapted step size).

  Example:
    >>> tx = gx.dadapt_adamw()
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"] / 1e-6, 3)     # −d₀ on the first step
    Array([-1., -1.], dtype=float32)

  References:
    Defazio & Mishchenko, "Learning-rate-free learning by D-Adaptation", ICML 2023
    (https://arxiv.org/abs/2301.07733).
  """
  where = "dadapt_adamw"
  _check.learning_rate(where, learning_rate)
  _check.non_negative(where, "weight_decay", weight_decay)
  return chain(scale_by_dadapt_adam(learning_rate, betas, eps, estim_lr0, weight_decay),
               scale(-1.0))
