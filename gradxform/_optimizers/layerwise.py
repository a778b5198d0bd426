"""Layer-wise optimizers: LAMB, LARS, NovoGrad, Fromage, SM3.

Each one adapts its step per leaf (per "layer"): by a trust ratio `‖θ‖ / ‖u‖` (LAMB, LARS,
Fromage), by a per-leaf second moment (NovoGrad) or by per-axis accumulators (SM3). Names,
parameter names and defaults are Optax's (`state_dtype` added where there is a state); the
default numerics equal Optax's.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._optimizers.adam import adam_direction
from gradxform._transforms.momentum import scale_by_momentum
from gradxform._transforms.novograd import scale_by_novograd
from gradxform._transforms.scale import scale_by_learning_rate
from gradxform._transforms.sm3 import scale_by_sm3
from gradxform._transforms.trust_ratio import scale_by_trust_ratio
from gradxform._transforms.weight_decay import Mask, decoupled_weight_decay
from gradxform._wrappers.masked import masked


def _betas(where: str, b1: Any, b2: Any, eps: Any) -> None:
  _check.unit_interval(where, "b1", b1)
  _check.unit_interval(where, "b2", b2)
  _check.non_negative(where, "eps", eps)


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay"))
def lamb(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-6, *, eps_root: float = 0.0, weight_decay: ScalarOrSchedule = 0.0,
         mask: Mask | None = None, state_dtype: Any = None) -> GradientTransformation:
  """LAMB: Adam's direction plus decay, rescaled per leaf by its trust ratio.

  `r = m̂ / (√(v̂ + ε_root) + ε) + λθ`, `θ ← θ − η (‖θ‖ / ‖r‖) r` (norms per leaf; ratio 1 where
  either is 0). Chain: `scale_by_momentum(b1, ema=True)` → `bias_correction(b1)` →
  `scale_by_rms(b2, eps, eps_in_sqrt=False, eps_root, bias_correction=True)` (Adam's
  direction, as `gx.adam`) → `decoupled_weight_decay(λ, mask)` → `scale_by_trust_ratio()` →
  `scale_by_learning_rate(η)`. Equal to `optax.lamb` (the paper's φ is the identity here).

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1, b2: decays of the first and second moments, in [0, 1).
    eps: ε ≥ 0 outside the root (Optax's default 10⁻⁶). eps_root: ε_root ≥ 0 inside it.
    weight_decay: λ ≥ 0 or a schedule, added to the direction before the trust ratio.
    mask: which leaves to decay (a bool tree or a function of params), as `gx.adamw`.
    state_dtype: dtype of both moments.

  Example:
    >>> tx = gx.lamb(1e-3)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # −η ‖θ_b‖/‖(1, 1)‖ · 1 = −η · 0.1
    Array([-0.0001, -0.0001], dtype=float32)

  References:
    You et al., "Large batch optimization for deep learning: training BERT in 76 minutes",
    ICLR 2020 (https://arxiv.org/abs/1904.00962).
  """
  where = "lamb"
  _check.learning_rate(where, learning_rate)
  _betas(where, b1, b2, eps)
  _check.non_negative(where, "eps_root", eps_root)
  _check.non_negative_or_schedule(where, "weight_decay", weight_decay)
  return chain(*adam_direction(b1, b2, eps, eps_root, state_dtype),
               decoupled_weight_decay(weight_decay, mask=mask),
               scale_by_trust_ratio(),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "weight_decay", "trust_coefficient", "eps",
                        "momentum"))
def lars(learning_rate: ScalarOrSchedule, weight_decay: ScalarOrSchedule = 0.0, *,
         weight_decay_mask: Mask = True, trust_coefficient: float = 0.001, eps: float = 0.0,
         trust_ratio_mask: Mask = True, momentum: float = 0.9, nesterov: bool = False,
         state_dtype: Any = None) -> GradientTransformation:
  """LARS: SGD with momentum whose step is rescaled per leaf by a trust ratio.

  `r = g + λθ`, `u = −η c ‖θ‖ / (‖r‖ + ε) · r` (norms per leaf; ratio 1 where either is 0),
  then heavy-ball momentum on `u`: `b ← μ b + u`, step `b` (`u + μ b` with `nesterov`).
  Chain: `decoupled_weight_decay(λ, weight_decay_mask)` →
  `masked(scale_by_trust_ratio(trust_coefficient=c, eps=ε), trust_ratio_mask)` →
  `scale_by_learning_rate(η)` → `scale_by_momentum(μ, nesterov)`. Equal to `optax.lars`: the
  momentum comes after the learning rate (so a schedule's η enters the buffer step by step,
  as in the paper's Algorithm 1); the paper's global rate is η, its local one `c‖θ‖/‖r‖`.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    weight_decay: λ ≥ 0 or a schedule, added to the gradient before the trust ratio.
    weight_decay_mask: which leaves to decay (a bool tree or prefix, or a function of params;
      True: all).
    trust_coefficient: c ≥ 0 (the paper's η, 10⁻³).
    eps: ε ≥ 0 added to the norm of `r`.
    trust_ratio_mask: which leaves get the trust ratio (the others take `r` as it is); the
      paper leaves biases and normalization parameters out.
    momentum: μ in [0, 1).
    nesterov: Sutskever's look-ahead `u + μ b`.
    state_dtype: dtype of the momentum buffer (Optax's `accumulator_dtype` of `trace`).

  Example:
    >>> tx = gx.lars(0.1)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # −η c (‖θ_b‖/‖g_b‖) g = −0.1 · 0.001 · 0.2 · 0.5
    Array([-1.e-05, -1.e-05], dtype=float32)

  References:
    You, Gitman & Ginsburg, "Large batch training of convolutional networks", 2017
    (https://arxiv.org/abs/1708.03888).
  """
  where = "lars"
  _check.learning_rate(where, learning_rate)
  _check.non_negative_or_schedule(where, "weight_decay", weight_decay)
  _check.non_negative(where, "trust_coefficient", trust_coefficient)
  _check.non_negative(where, "eps", eps)
  _check.unit_interval(where, "momentum", momentum)
  _check.nesterov(where, nesterov, momentum=momentum)
  decay_mask = None if weight_decay_mask is True else weight_decay_mask
  return chain(decoupled_weight_decay(weight_decay, mask=decay_mask),
               masked(scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
                      trust_ratio_mask),
               scale_by_learning_rate(learning_rate),
               scale_by_momentum(momentum, nesterov=nesterov, state_dtype=state_dtype))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay"))
def novograd(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.25,
             eps: float = 1e-6, *, eps_root: float = 0.0, weight_decay: ScalarOrSchedule = 0.0,
             state_dtype: Any = None) -> GradientTransformation:
  """NovoGrad: `m ← β1 m + (g / (√v + ε) + λθ)`, `θ ← θ − η m`, with `v` an EMA of `‖g‖²`.

  `v` is one number per leaf (`‖g‖²` on the first step, then `β2 v + (1 − β2) ‖g‖²`), so the
  state is about half Adam's. Chain: `scale_by_novograd(b1, b2, eps, eps_root, λ)` →
  `scale_by_learning_rate(η)`. Equal to `optax.novograd` and to the paper's Algorithm 1;
  NVIDIA Apex's `FusedNovoGrad` (`grad_averaging=True`) multiplies the bracket by `1 − β1`,
  which is this optimizer with η(1 − β1) in place of η.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1: β1 in [0, 1), the momentum's decay.
    b2: β2 in [0, 1), the decay of the per-leaf second moment.
    eps: ε ≥ 0 outside the root (Optax's default 10⁻⁶). eps_root: ε_root ≥ 0 inside it.
    weight_decay: λ ≥ 0 or a schedule, inside the momentum.
    state_dtype: dtype of the state.

  Example:
    >>> tx = gx.novograd(0.01)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 5)            # −η g/‖g_b‖ = −0.01 · 0.5/√0.5
    Array([-0.00707, -0.00707], dtype=float32)

  References:
    Ginsburg et al., "Stochastic gradient methods with layer-wise adaptive moments for
    training of deep networks", 2019 (https://arxiv.org/abs/1905.11286).
    Li et al., "Jasper: an end-to-end convolutional neural acoustic model", Interspeech 2019.
  """
  where = "novograd"
  _check.learning_rate(where, learning_rate)
  _betas(where, b1, b2, eps)
  _check.non_negative(where, "eps_root", eps_root)
  _check.non_negative_or_schedule(where, "weight_decay", weight_decay)
  return chain(scale_by_novograd(b1, b2, eps, eps_root, weight_decay, state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "min_norm"))
def fromage(learning_rate: ScalarOrSchedule, min_norm: float = 1e-6) -> GradientTransformation:
  """Fromage: `θ ← (θ − η (‖θ‖ / ‖g‖) g) / √(1 + η²)`, per leaf.

  The step is relative to each leaf's size, and the division by `√(1 + η²)` keeps the norms
  from growing. Chain: `scale_by_trust_ratio(min_norm)` →
  `scale_by_learning_rate(η / √(1 + η²))` → `decoupled_weight_decay(1/√(1 + η²) − 1)` (after
  the learning rate, so it is not multiplied by η; the rate is negative and enters as a
  function of the step). Equal to `optax.fromage`.

  Args:
    learning_rate: η ≥ 0 or a schedule (the paper suggests 0.01).
    min_norm: the least value of both norms, ≥ 0.

  Example:
    >>> tx = gx.fromage(0.01)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)     # −η′ (‖θ_b‖/‖g_b‖) g + (η′/η − 1) θ_b, η′ = η/√(1 + η²)
    Array([-0.001005, -0.000995], dtype=float32)

  References:
    Bernstein, Vahdat, Yue & Liu, "On the distance between two neural networks and the
    stability of learning", NeurIPS 2020 (https://arxiv.org/abs/2002.03432).
  """
  where = "fromage"
  lr = _check.learning_rate(where, learning_rate)
  min_norm = _check.non_negative(where, "min_norm", min_norm)
  if callable(lr):
    shrink = lambda count: 1 / (1 + lr(count)**2)**0.5
    step: Any = lambda count: shrink(count) * lr(count)
    decay: Any = lambda count: shrink(count) - 1
  else:
    factor = 1 / (1 + lr**2)**0.5 if isinstance(lr, float) else 1 / jnp.sqrt(1 + lr**2)
    step = lr * factor
    decay = lambda count: factor - 1
  return chain(scale_by_trust_ratio(min_norm),
               scale_by_learning_rate(step),
               decoupled_weight_decay(decay))


@transform(hyperparams=("learning_rate", "momentum"))
def sm3(learning_rate: ScalarOrSchedule, momentum: float = 0.9, *,
        state_dtype: Any = None) -> GradientTransformation:
  """SM3: `θ ← θ − η m`, `m ← μ m + (1 − μ) g / √ν`, ν from SM3-II's per-axis accumulators.

  `ν_i = g_i² + min_{r ∋ i} μ_r` over one accumulator vector per axis of each leaf (see
  `scale_by_sm3`): Adagrad's adaptivity with the memory of the axes, not of the entries.
  Chain: `scale_by_sm3(b1=μ, b2=1, eps=10⁻⁸)` → `scale_by_learning_rate(η)`. Equal to
  `optax.sm3` (whose `learning_rate` is a number; here a schedule works too).

  Args:
    learning_rate: η ≥ 0 or a schedule.
    momentum: μ in [0, 1), the decay of the EMA of the preconditioned gradient.
    state_dtype: dtype of the accumulators and the momentum.

  Example:
    >>> tx = gx.sm3(0.1)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 4)            # −η (1 − μ) g/|g| on the first step
    Array([-0.01, -0.01], dtype=float32)

  References:
    Anil, Gupta, Koren & Singer, "Memory-efficient adaptive optimization", NeurIPS 2019
    (https://arxiv.org/abs/1901.11150).
  """
  where = "sm3"
  _check.learning_rate(where, learning_rate)
  _check.unit_interval(where, "momentum", momentum)
  return chain(scale_by_sm3(momentum, state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))
