"""The gradient-descent family: SGD (momentum, Nesterov, L2), SGDW and noisy SGD."""

from __future__ import annotations

from typing import Any

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._transforms.momentum import scale_by_momentum
from gradxform._transforms.noise import add_gradient_noise
from gradxform._transforms.scale import scale_by_learning_rate
from gradxform._transforms.weight_decay import Mask, add_l2_penalty, decoupled_weight_decay


def is_zero(value: Any) -> bool:
  """True for a Python number equal to 0 (arrays and schedules are never skipped)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


@transform(hyperparams=("learning_rate", "momentum", "dampening", "weight_decay"))
def sgd(learning_rate: ScalarOrSchedule, momentum: float = 0.0, *, nesterov: bool = False,
        dampening: float = 0.0, weight_decay: float = 0.0,
        state_dtype: Any = None) -> GradientTransformation:
  """Stochastic gradient descent as torch.optim.SGD computes it.

  `g ← g + λθ` (coupled L2, `weight_decay`), `b ← μ b + (1 − d) g` (`b_1 = g_1`),
  `θ ← θ − η b`; Nesterov steps along `g + μ b`. With `momentum=0`: `θ ← θ − η g`.

  Chain: `add_l2_penalty(λ)` (if λ ≠ 0) → `scale_by_momentum(μ, nesterov, dampening)`
  (if μ ≠ 0) → `scale_by_learning_rate(η)`.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    momentum: μ in [0, 1).
    nesterov: Nesterov momentum (needs μ > 0 and no dampening).
    dampening: d in [0, 1].
    weight_decay: coupled L2 coefficient λ ≥ 0.
    state_dtype: dtype of the momentum buffer.

  Example:
    >>> tx = gx.sgd(0.1, momentum=0.9)
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(grads, state, params)
    >>> updates["b"]                          # −0.1 · (0.9 · 0.5 + 0.5)
    Array([-0.095, -0.095], dtype=float32)

  References:
    Robbins & Monro, 1951; Polyak, 1964; Sutskever et al., ICML 2013.
  """
  where = "sgd"
  _check.learning_rate(where, learning_rate)
  _check.unit_interval(where, "momentum", momentum)
  _check.non_negative(where, "weight_decay", weight_decay)
  _check.nesterov(where, nesterov, momentum=momentum, dampening=dampening)
  parts = []
  if not is_zero(weight_decay):
    parts.append(add_l2_penalty(weight_decay))
  if not is_zero(momentum):
    parts.append(scale_by_momentum(momentum, nesterov=nesterov, dampening=dampening,
                                   state_dtype=state_dtype))
  parts.append(scale_by_learning_rate(learning_rate))
  return chain(*parts)


@transform(hyperparams=("learning_rate", "momentum", "weight_decay"))
def sgdw(learning_rate: ScalarOrSchedule, momentum: float = 0.9, *, nesterov: bool = False,
         weight_decay: ScalarOrSchedule = 1e-4, mask: Mask | None = None,
         state_dtype: Any = None) -> GradientTransformation:
  """SGD with momentum and decoupled weight decay.

  `b ← μ b + g`, `θ ← θ − η b − η λ θ` (Nesterov: `η (g + μ b)` in place of `η b`).
  Chain: `scale_by_momentum(μ)` → `decoupled_weight_decay(λ, mask)` →
  `scale_by_learning_rate(η)`.

  Example:
    >>> tx = gx.sgdw(0.1, momentum=0.9, weight_decay=0.1)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # −0.1 · (0.5 + 0.1 · θ), θ = (0.1, −0.1)
    Array([-0.051, -0.049], dtype=float32)

  References:
    Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.
  """
  where = "sgdw"
  _check.learning_rate(where, learning_rate)
  _check.unit_interval(where, "momentum", momentum)
  _check.non_negative_or_schedule(where, "weight_decay", weight_decay)
  _check.nesterov(where, nesterov, momentum=momentum)
  parts = []
  if not is_zero(momentum):
    parts.append(scale_by_momentum(momentum, nesterov=nesterov, state_dtype=state_dtype))
  parts += [decoupled_weight_decay(weight_decay, mask=mask),
            scale_by_learning_rate(learning_rate)]
  return chain(*parts)


@transform(hyperparams=("learning_rate", "eta", "gamma"))
def noisy_sgd(learning_rate: ScalarOrSchedule, *, eta: float = 0.01, gamma: float = 0.55,
              seed: int = 0) -> GradientTransformation:
  """SGD on gradients with annealed Gaussian noise.

  `g ← g + N(0, σ_t²)`, `σ_t² = η_noise / (1 + t')^γ` (`t'` = 0 on the first step),
  `θ ← θ − η g`. Chain: `add_gradient_noise(eta, gamma, seed)` → `scale_by_learning_rate(η)`.

  Example:
    >>> tx = gx.noisy_sgd(0.1, eta=0.01, seed=0)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> bool(jnp.all(jnp.abs(updates["w"] + 0.05) < 0.1))   # −0.1 · (0.5 + N(0, 0.1²))
    True

  References:
    Neelakantan et al., "Adding gradient noise improves learning for very deep networks",
    2015.
  """
  _check.learning_rate("noisy_sgd", learning_rate)
  return chain(add_gradient_noise(eta, gamma, seed), scale_by_learning_rate(learning_rate))
