"""Adam's later relatives: Adan, ADOPT, AdEMAMix (and its simplified form), MADGRAD, and the
optimistic methods.

Names, parameter names and defaults are Optax's (`adan`, `optimistic_gradient_descent` and
`optimistic_adam` from `optax`; the others from `optax.contrib`), with `state_dtype` for its
`mu_dtype`; the default numerics equal Optax's.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._optimizers.adam import adam_direction
from gradxform._transforms.adan import scale_by_adan
from gradxform._transforms.ademamix import scale_by_ademamix, scale_by_simplified_ademamix
from gradxform._transforms.adopt import quarter_power, scale_by_adopt
from gradxform._transforms.madgrad import scale_by_madgrad
from gradxform._transforms.nadam import scale_by_nadam_momentum
from gradxform._transforms.optimistic import scale_by_optimistic_gradient
from gradxform._transforms.rms import scale_by_rms
from gradxform._transforms.scale import scale_by_learning_rate
from gradxform._transforms.weight_decay import Mask, add_l2_penalty, decoupled_weight_decay


@transform(hyperparams=("learning_rate", "b1", "b2", "b3", "eps", "eps_root", "weight_decay"))
def adan(learning_rate: ScalarOrSchedule, b1: float = 0.98, b2: float = 0.92, b3: float = 0.99,
         eps: float = 1e-8, eps_root: float = 1e-8, *, weight_decay: ScalarOrSchedule = 0.0,
         mask: Mask | None = None, state_dtype: Any = None) -> GradientTransformation:
  """Adan: `θ ← θ − η ((m̂ + (1 − β2) v̂) / (√(n̂ + ε_root) + ε) + λθ)`.

  Adam-like steps on a Nesterov momentum estimated from gradient differences, without
  evaluating the gradient at an extrapolated point; see `scale_by_adan` for the moments and
  for how Optax's weights differ from the paper's. Chain: `scale_by_adan(b1, b2, b3, eps,
  eps_root)` → `decoupled_weight_decay(λ, mask)` → `scale_by_learning_rate(η)`. Equal to
  `optax.adan` (ε_root = 10⁻⁸ here, 0 in the primitive). The weight decay is AdamW's
  `−ηλθ`; the paper's proximal form divides by `1 + ηλ` instead (equal to first order).

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1, b2, b3: decays in [0, 1) of the gradient average, the difference average and the
      second moment.
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 inside it.
    weight_decay: λ ≥ 0 or a schedule, decoupled (multiplied by η).
    mask: which leaves to decay (a bool tree or a function of params), as `gx.adamw`.
    state_dtype: dtype of the moments and of the stored gradient.

  Example:
    >>> tx = gx.adan(1e-2)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # −η g/√(g² + ε_root) on the first step
    Array([-0.01, -0.01], dtype=float32)

  References:
    Xie, Zhou, Li, Lin & Yan, "Adan: adaptive Nesterov momentum algorithm for faster
    optimizing deep models", IEEE TPAMI 2024 (https://arxiv.org/abs/2208.06677).
  """
  _check.learning_rate("adan", learning_rate)
  _check.non_negative_or_schedule("adan", "weight_decay", weight_decay)
  return chain(scale_by_adan(b1, b2, b3, eps, eps_root, state_dtype=state_dtype),
               decoupled_weight_decay(weight_decay, mask=mask),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps"))
def adopt(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.9999,
          eps: float = 1e-6, *, nesterov: bool = False, use_clipping: bool = True,
          clip_value_fn: Callable[[jax.Array], jax.Array] = quarter_power,
          state_dtype: Any = None) -> GradientTransformation:
  """ADOPT: `θ ← θ − η m`, `m ← β1 m + (1 − β1) clip(g / max(√v_{t−1}, ε), c_t)`.

  Adam with the current gradient taken out of the second moment that normalises it, and the
  normalisation done before the momentum; it converges for any β2. The first update is zero
  (it only sets `v = g_0²`). Chain: `scale_by_adopt(b1, b2, eps, nesterov, use_clipping,
  clip_value_fn)` → `scale_by_learning_rate(η)`. Equal to `optax.contrib.adopt` (and to the
  paper's clipped algorithm, `c_t = t^{1/4}`).

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1, b2: decays in [0, 1) of the first and second moments.
    eps: ε ≥ 0, the floor of `√v`.
    nesterov: Optax's look-ahead first moment.
    use_clipping: clip the normalised gradient (the paper's default form).
    clip_value_fn: the bound `c_t` as a function of the step (default `t^{1/4}`).
    state_dtype: dtype of both moments.

  Example:
    >>> tx = gx.adopt(1e-3)
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(grads, state, params)
    >>> updates["b"]                          # −η (1 − β1) · 1 on the second step
    Array([-0.0001, -0.0001], dtype=float32)

  References:
    Taniguchi et al., "ADOPT: modified Adam can converge with any β2 with the optimal rate",
    NeurIPS 2024 (https://arxiv.org/abs/2411.02853).
  """
  _check.learning_rate("adopt", learning_rate)
  return chain(scale_by_adopt(b1, b2, eps, nesterov=nesterov, use_clipping=use_clipping,
                              clip_value_fn=clip_value_fn, state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "b3", "alpha", "eps", "eps_root",
                        "weight_decay"))
def ademamix(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
             b3: ScalarOrSchedule = 0.9999, alpha: ScalarOrSchedule = 5.0, eps: float = 1e-8,
             eps_root: float = 0.0, *, weight_decay: ScalarOrSchedule = 0.0,
             mask: Mask | None = None, state_dtype: Any = None) -> GradientTransformation:
  """AdEMAMix: `θ ← θ − η ((m̂1 + α m2) / (√(v̂ + ε_root) + ε) + λθ)`.

  AdamW with a second, slow momentum `m2` (decay β3 ≈ 0.9999) added with weight α, so that
  gradients thousands of steps old still count. `b3` and `alpha` may be schedules (the paper
  warms both up). Chain: `scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root)` →
  `decoupled_weight_decay(λ, mask)` → `scale_by_learning_rate(η)`. Equal to
  `optax.contrib.ademamix` (α = 5 by default, where the primitive has 6).

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1, b2: decays in [0, 1) of the fast EMA and of the second moment.
    b3: decay in [0, 1) of the slow EMA, or a schedule.
    alpha: α ≥ 0, the weight of the slow EMA, or a schedule.
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 inside it.
    weight_decay: λ ≥ 0 or a schedule, decoupled (multiplied by η).
    mask: which leaves to decay, as `gx.adamw`.
    state_dtype: dtype of the three moments.

  Example:
    >>> tx = gx.ademamix(1e-3)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 7)            # −η (1 + 5 · 10⁻⁴) on the first step
    Array([-0.0010005, -0.0010005], dtype=float32)

  References:
    Pagliardini, Ablin & Grangier, "The AdEMAMix optimizer: better, faster, older", ICLR 2025
    (https://arxiv.org/abs/2409.03137).
  """
  _check.learning_rate("ademamix", learning_rate)
  _check.non_negative_or_schedule("ademamix", "weight_decay", weight_decay)
  return chain(scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, state_dtype=state_dtype),
               decoupled_weight_decay(weight_decay, mask=mask),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "alpha", "eps", "eps_root",
                        "weight_decay"))
def simplified_ademamix(learning_rate: ScalarOrSchedule, b1: float = 0.99, b2: float = 0.95,
                        alpha: ScalarOrSchedule = 0.0, eps: float = 1e-8,
                        eps_root: float = 0.0, *, weight_decay: ScalarOrSchedule = 0.0,
                        mask: Mask | None = None,
                        state_dtype: Any = None) -> GradientTransformation:
  """Simplified AdEMAMix: `θ ← θ − η ((m + α g) / (√(v̂ + ε_root) + ε) + λθ)`, `m ← β1 m + g`.

  One undamped momentum sum plus an extra weight α on the current gradient, in place of
  AdEMAMix's two averages. Chain: `scale_by_simplified_ademamix(b1, b2, alpha, eps,
  eps_root)` → `decoupled_weight_decay(λ, mask)` → `scale_by_learning_rate(η)`. Equal to
  `optax.contrib.simplified_ademamix`.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1: discount in [0, 1) of the momentum sum. b2: decay in [0, 1) of the second moment.
    alpha: α ≥ 0, the extra weight of the current gradient, or a schedule.
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 inside it.
    weight_decay: λ ≥ 0 or a schedule, decoupled (multiplied by η).
    mask: which leaves to decay, as `gx.adamw`.
    state_dtype: dtype of both moments.

  Example:
    >>> tx = gx.simplified_ademamix(1e-3)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # −η g/|g| on the first step (α = 0)
    Array([-0.001, -0.001], dtype=float32)

  References:
    Morwani, Vyas, Kwun, Shapira, Kakade & Brandfonbrener, "Connections between
    schedule-free optimizers, AdEMAMix, and accelerated SGD variants", 2025
    (https://arxiv.org/abs/2502.02431).
  """
  _check.learning_rate("simplified_ademamix", learning_rate)
  _check.non_negative_or_schedule("simplified_ademamix", "weight_decay", weight_decay)
  return chain(scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root,
                                            state_dtype=state_dtype),
               decoupled_weight_decay(weight_decay, mask=mask),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "momentum", "weight_decay", "eps"))
def madgrad(learning_rate: ScalarOrSchedule, momentum: float = 0.9,
            weight_decay: ScalarOrSchedule = 0.0, eps: float = 1e-6, *,
            state_dtype: Any = None) -> GradientTransformation:
  """MADGRAD: `θ ← (1 − c) (x0 − s / (∛ν + ε)) + c θ`, `s`, `ν` sums of `λ_t g`, `λ_t g²`.

  Dual averaging from the initial parameters `x0`, with AdaGrad-like cube-root scaling and
  momentum by averaging the iterates; `λ_t = (η_t + ε) √(t + 1)`. Chain:
  `add_l2_penalty(weight_decay)` → `scale_by_madgrad(η, momentum, eps)` (the learning rate is
  inside the primitive). The weight decay is coupled, `g + λθ`, as Optax's and the authors'
  default (their `decouple_decay=True` is not offered). Equal to `optax.contrib.madgrad`.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    momentum: c in [0, 1).
    weight_decay: λ ≥ 0 or a schedule, an L2 penalty added to the gradient.
    eps: ε ≥ 0, added to η and to the cube root.
    state_dtype: dtype of the two gradient sums.

  Example:
    >>> tx = gx.madgrad(0.01)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 5)            # as gx.scale_by_madgrad(0.01)
    Array([-0.00368, -0.00368], dtype=float32)

  References:
    Defazio & Jelassi, "Adaptivity without compromise: a momentumized, adaptive, dual
    averaged gradient method for stochastic optimization", JMLR 2022
    (https://arxiv.org/abs/2101.11075).
  """
  _check.learning_rate("madgrad", learning_rate)
  _check.non_negative_or_schedule("madgrad", "weight_decay", weight_decay)
  return chain(add_l2_penalty(weight_decay),
               scale_by_madgrad(learning_rate, momentum, eps, state_dtype=state_dtype))


@transform(hyperparams=("learning_rate", "alpha", "beta"))
def optimistic_gradient_descent(learning_rate: ScalarOrSchedule, alpha: float = 1.0,
                                beta: float = 1.0, *,
                                state_dtype: Any = None) -> GradientTransformation:
  """Optimistic gradient descent: `θ ← θ − η ((α + β) g_t − β g_{t−1})`.

  A one-call approximation of the extra-gradient method, with last-iterate convergence on
  min-max games where plain gradient descent cycles. Chain:
  `scale_by_optimistic_gradient(α, β)` → `scale_by_learning_rate(η)`. The first step is
  `−η α g_0`. Equal to `optax.optimistic_gradient_descent` (whose α and β, typed as
  schedules there, work only as numbers; so here).

  Args:
    learning_rate: η ≥ 0 or a schedule.
    alpha: α ≥ 0. beta: β ≥ 0.
    state_dtype: dtype of the stored gradient.

  Example:
    >>> tx = gx.optimistic_gradient_descent(0.1)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # −η α g on the first step
    Array([-0.05, -0.05], dtype=float32)

  References:
    Mokhtari, Ozdaglar & Pattathil, "A unified analysis of extra-gradient and optimistic
    gradient methods for saddle point problems: proximal point approach", AISTATS 2020
    (https://arxiv.org/abs/1901.08511).
  """
  _check.learning_rate("optimistic_gradient_descent", learning_rate)
  return chain(scale_by_optimistic_gradient(alpha, beta, state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "optimism", "b1", "b2", "eps", "eps_root"))
def optimistic_adam(learning_rate: float, optimism: float | None = None, b1: float = 0.9,
                    b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0, *,
                    nesterov: bool = True, state_dtype: Any = None) -> GradientTransformation:
  """Optimistic Adam: `θ ← θ − η r_t − o (r_t − r_{t−1})`, `r` Adam's direction.

  `r_t = m̂ / (√(v̂ + ε_root) + ε)`, with Nesterov's look-ahead first moment by default (as
  `gx.nadamw`); `o` is the optimism (None: `o = η`, as in the paper). Chain: Adam's direction
  (`scale_by_nadam_momentum(b1)` → `scale_by_rms(b2, …, bias_correction=True)`, or
  `scale_by_momentum` → `bias_correction` → `scale_by_rms` with `nesterov=False`) →
  `scale_by_optimistic_gradient(α=η, β=o)` → `scale_by_learning_rate(1)`. The learning rate
  is the optimistic α, so it must be a number (a schedule raises `ValueError`). Equal to
  `optax.optimistic_adam`, which Optax 0.2.8 deprecates in favour of `optimistic_adam_v2`
  (the same chain, with α, β separate from a schedulable learning rate).

  Args:
    learning_rate: η ≥ 0, a number.
    optimism: o ≥ 0, or None for `o = η`.
    b1, b2: decays in [0, 1). eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 inside it.
    nesterov: Dozat's look-ahead first moment (Optax's default True).
    state_dtype: dtype of the moments and of the stored direction.

  Example:
    >>> tx = gx.optimistic_adam(1e-3, nesterov=False)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # −η r_0 (no previous direction)
    Array([-0.001, -0.001], dtype=float32)

  References:
    Daskalakis, Ilyas, Syrgkanis & Zeng, "Training GANs with optimism", ICLR 2018
    (https://arxiv.org/abs/1711.00141).
  """
  where = "optimistic_adam"
  if callable(learning_rate):
    raise ValueError(f"{where}: learning_rate must be a number (it is the optimistic α); for "
                     "a schedule chain scale_by_optimistic_gradient with "
                     "scale_by_learning_rate(schedule)")
  _check.non_negative(where, "learning_rate", learning_rate)
  if optimism is None:
    optimism = learning_rate
  _check.non_negative(where, "optimism", optimism)
  _check.unit_interval(where, "b1", b1)
  _check.unit_interval(where, "b2", b2)
  _check.non_negative(where, "eps", eps)
  _check.non_negative(where, "eps_root", eps_root)
  if nesterov:
    direction = [scale_by_nadam_momentum(b1, state_dtype=state_dtype),
                 scale_by_rms(b2, eps, eps_in_sqrt=False, eps_root=eps_root,
                              bias_correction=True, state_dtype=state_dtype)]
  else:
    direction = adam_direction(b1, b2, eps, eps_root, state_dtype)
  return chain(*direction,
               scale_by_optimistic_gradient(learning_rate, optimism, state_dtype=state_dtype),
               scale_by_learning_rate(1.0))
