"""Per-coordinate adaptive methods before Adam: Adagrad, Adadelta, RMSprop."""

from __future__ import annotations

from typing import Any

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._optimizers.sgd import is_zero
from gradxform._transforms.accumulators import scale_by_adadelta, scale_by_adagrad
from gradxform._transforms.momentum import scale_by_momentum
from gradxform._transforms.rms import scale_by_rms
from gradxform._transforms.scale import scale_by_learning_rate


@transform(hyperparams=("learning_rate", "initial_accumulator_value", "eps"))
def adagrad(learning_rate: ScalarOrSchedule, *, initial_accumulator_value: float = 0.0,
            eps: float = 1e-10, eps_in_sqrt: bool = True,
            state_dtype: Any = None) -> GradientTransformation:
  """Adagrad: `G ← G + g²`, `θ ← θ − η g / √(G + ε)`.

  The default puts ε inside the root, the form of Ruder's overview. `eps_in_sqrt=False` gives
  `θ ← θ − η g / (√G + ε)`: the paper's own form (Duchi et al. write `δ + √G`) and
  torch.optim.Adagrad's. Chain: `scale_by_adagrad` → `scale_by_learning_rate`.

  Example:
    >>> tx = gx.adagrad(0.1, eps_in_sqrt=False)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 3)            # −0.1 · 0.5 / (√(0.5²) + ε)
    Array([-0.1, -0.1], dtype=float32)

  References:
    Duchi, Hazan & Singer, "Adaptive subgradient methods for online learning and stochastic
    optimization", JMLR 2011 (the `δ + √G` form).
    Ruder, "An overview of gradient descent optimization algorithms", arXiv:1609.04747, 2016
    (the `√(G + ε)` form).
  """
  _check.learning_rate("adagrad", learning_rate)
  return chain(scale_by_adagrad(initial_accumulator_value, eps, eps_in_sqrt=eps_in_sqrt,
                                state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "rho", "eps"))
def adadelta(learning_rate: ScalarOrSchedule = 1.0, *, rho: float = 0.9, eps: float = 1e-6,
             state_dtype: Any = None) -> GradientTransformation:
  """Adadelta: `θ ← θ − η Δ`, `Δ = √(E[Δ²] + ε) / √(E[g²] + ε) · g`.

  Chain: `scale_by_adadelta(rho, eps)` → `scale_by_learning_rate` (η = 1 by default, as
  Zeiler; torch scales by `lr` the same way).

  Example:
    >>> tx = gx.adadelta()                    # η = 1, ρ = 0.9, ε = 1e-6
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 5)            # −√ε / √(0.1 · 0.5² + ε) · 0.5
    Array([-0.00316, -0.00316], dtype=float32)

  References:
    Zeiler, "ADADELTA: an adaptive learning rate method", 2012.
  """
  _check.learning_rate("adadelta", learning_rate)
  return chain(scale_by_adadelta(rho, eps, state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "decay", "eps", "momentum"))
def rmsprop(learning_rate: ScalarOrSchedule, decay: float = 0.9, eps: float = 1e-8, *,
            eps_in_sqrt: bool = True, centered: bool = False, momentum: float = 0.0,
            nesterov: bool = False, state_dtype: Any = None) -> GradientTransformation:
  """RMSprop: `v ← ρ v + (1 − ρ) g²`, `θ ← θ − η g / √(v + ε)`.

  `eps_in_sqrt=False`: torch's `√v + ε`. `centered`: `v − ḡ²` in place of `v`.
  `momentum=μ`: `b ← μ b + g/denom`, `θ ← θ − η b` (torch form); `nesterov` steps along
  `g/denom + μ b`. torch's `alpha` is `decay` here.
  Chain: `scale_by_rms` → `scale_by_momentum(μ)` (if μ ≠ 0) → `scale_by_learning_rate`.

  Example:
    >>> tx = gx.rmsprop(0.01, decay=0.9)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 4)            # −0.01 · 0.5 / √(0.1 · 0.5² + ε)
    Array([-0.0316, -0.0316], dtype=float32)

  References:
    Hinton, Srivastava & Swersky, lecture 6e, 2012; Graves, 2013 (centered).
  """
  where = "rmsprop"
  _check.learning_rate(where, learning_rate)
  _check.unit_interval(where, "momentum", momentum)
  _check.nesterov(where, nesterov, momentum=momentum)
  parts = [scale_by_rms(decay, eps, eps_in_sqrt=eps_in_sqrt, centered=centered,
                        state_dtype=state_dtype)]
  if not is_zero(momentum):
    parts.append(scale_by_momentum(momentum, nesterov=nesterov, state_dtype=state_dtype))
  parts.append(scale_by_learning_rate(learning_rate))
  return chain(*parts)
