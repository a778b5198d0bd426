"""The Adam family: Adam, AdamW, AdaMax, Nadam, AMSGrad, RAdam."""

from __future__ import annotations

from typing import Any

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._transforms.accumulators import scale_by_inf_norm
from gradxform._transforms.bias import bias_correction
from gradxform._transforms.momentum import scale_by_momentum
from gradxform._transforms.nadam import scale_by_nadam_momentum
from gradxform._transforms.rectify import scale_by_rectification
from gradxform._transforms.rms import scale_by_amsgrad, scale_by_rms
from gradxform._transforms.scale import scale_by_learning_rate
from gradxform._transforms.weight_decay import Mask, decoupled_weight_decay


def _betas(where: str, b1: Any, b2: Any, eps: Any) -> None:
  _check.unit_interval(where, "b1", b1)
  _check.unit_interval(where, "b2", b2)
  _check.non_negative(where, "eps", eps)


def adam_direction(b1: float, b2: float, eps: float, eps_root: float = 0.0,
                   state_dtype: Any = None) -> list[GradientTransformation]:
  """The parts of Adam before the learning rate: `m̂ / (√(v̂ + ε_root) + ε)`."""
  return [scale_by_momentum(b1, ema=True, state_dtype=state_dtype),
          bias_correction(b1),
          scale_by_rms(b2, eps, eps_in_sqrt=False, eps_root=eps_root, bias_correction=True,
                       state_dtype=state_dtype)]


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "eps_root"))
def adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, *, eps_root: float = 0.0,
         state_dtype: Any = None) -> GradientTransformation:
  """Adam: `θ ← θ − η m̂ / (√(v̂ + ε_root) + ε)`, equal to torch.optim.Adam.

  `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`, `m̂ = m/(1−β1^t)`, `v̂ = v/(1−β2^t)`.
  Chain: `scale_by_momentum(b1, ema=True)` → `bias_correction(b1)` →
  `scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True)` →
  `scale_by_learning_rate(η)`. One step counter (the momentum stage's) serves the chain.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1, b2: decays of the first and second moments, in [0, 1).
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 inside it.
    state_dtype: dtype of both moments (e.g. float32 moments for bf16 parameters, or
      bfloat16 moments to halve the state).

  Example:
    >>> tx = gx.adam(1e-3)
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # the first step is −η · g/|g|, up to ε
    Array([-0.001, -0.001], dtype=float32)

  References:
    Kingma & Ba, "Adam: A method for stochastic optimization", ICLR 2015.
  """
  _check.learning_rate("adam", learning_rate)
  _betas("adam", b1, b2, eps)
  return chain(*adam_direction(b1, b2, eps, eps_root, state_dtype),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "weight_decay", "eps_root"))
def adamw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, *, weight_decay: ScalarOrSchedule = 1e-2,
          mask: Mask | None = None, eps_root: float = 0.0,
          state_dtype: Any = None) -> GradientTransformation:
  """AdamW: `θ ← θ − η (m̂ / (√v̂ + ε) + λθ)`, equal to torch.optim.AdamW.

  Chain: Adam's direction → `decoupled_weight_decay(λ, mask)` → `scale_by_learning_rate(η)`.
  `mask` (a bool tree or a function of params) selects the decayed leaves, e.g. not biases.

  Example:
    >>> tx = gx.adamw(1e-3, weight_decay=0.1)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # −η (1 + λθ), θ = (0.1, −0.1)
    Array([-0.00101, -0.00099], dtype=float32)

  References:
    Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.
  """
  _check.learning_rate("adamw", learning_rate)
  _betas("adamw", b1, b2, eps)
  _check.non_negative_or_schedule("adamw", "weight_decay", weight_decay)
  return chain(*adam_direction(b1, b2, eps, eps_root, state_dtype),
               decoupled_weight_decay(weight_decay, mask=mask),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps"))
def adamax(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
           eps: float = 1e-8, *, eps_in_max: bool = False,
           state_dtype: Any = None) -> GradientTransformation:
  """AdaMax: `u ← max(β2 u, |g|)`, `θ ← θ − (η / (1 − β1^t)) m / (u + ε)`.

  `eps_in_max=True` is torch's form: `u ← max(β2 u, |g| + ε)`, `θ ← θ − (η/(1−β1^t)) m/u`.
  Chain: `scale_by_momentum(b1, ema=True)` → `bias_correction(b1)` →
  `scale_by_inf_norm(b2, eps)` → `scale_by_learning_rate(η)`.

  Example:
    >>> tx = gx.adamax(2e-3)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # m̂ = g and u = |g| on the first step
    Array([-0.002, -0.002], dtype=float32)

  References:
    Kingma & Ba, ICLR 2015, section 7.1.
  """
  _check.learning_rate("adamax", learning_rate)
  _betas("adamax", b1, b2, eps)
  return chain(scale_by_momentum(b1, ema=True, state_dtype=state_dtype),
               bias_correction(b1),
               scale_by_inf_norm(b2, eps, eps_in_max=eps_in_max, state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "momentum_decay"))
def nadam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, *, momentum_decay: float | None = None,
          state_dtype: Any = None) -> GradientTransformation:
  """Nadam: Adam with a Nesterov look-ahead in the first moment.

  Dozat's form (`momentum_decay=None`):
  `θ ← θ − η/(√v̂ + ε) · (β1 m/(1−β1^{t+1}) + (1−β1) g/(1−β1^t))`.
  `momentum_decay=ψ` (torch.optim.NAdam, whose default is ψ = 0.004) uses the momentum
  schedule `μ_t = β1 (1 − ½·0.96^{tψ})` (see `scale_by_nadam_momentum`).
  Chain: `scale_by_nadam_momentum` → `scale_by_rms(b2, eps, eps_in_sqrt=False,
  bias_correction=True)` → `scale_by_learning_rate(η)`.

  Example:
    >>> tx = gx.nadam(1e-3)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 5)            # −η (0.9 · 0.05/(1 − 0.9²) + 0.05/0.1) / 0.5
    Array([-0.00147, -0.00147], dtype=float32)

  References:
    Dozat, "Incorporating Nesterov momentum into Adam", ICLR workshop 2016.
  """
  _check.learning_rate("nadam", learning_rate)
  _betas("nadam", b1, b2, eps)
  return chain(scale_by_nadam_momentum(b1, momentum_decay=momentum_decay,
                                       state_dtype=state_dtype),
               scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True,
                            state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps"))
def amsgrad(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
            eps: float = 1e-8, *, bias_correction: bool = True,
            state_dtype: Any = None) -> GradientTransformation:
  """AMSGrad: Adam with the running maximum of the second moment.

  Default (torch.optim.Adam(amsgrad=True)): `θ ← θ − η m̂ / (√(v_max/(1−β2^t)) + ε)`;
  `bias_correction=False`, Reddi et al.'s form: `θ ← θ − η m / (√v_max + ε)`.
  Chain: `scale_by_momentum(b1, ema=True)` → `bias_correction(b1)` (when corrected) →
  `scale_by_amsgrad(b2, eps)` → `scale_by_learning_rate(η)`.

  Example:
    >>> tx = gx.amsgrad(1e-3)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # as Adam on the first step
    Array([-0.001, -0.001], dtype=float32)

  References:
    Reddi, Kale & Kumar, "On the convergence of Adam and beyond", ICLR 2018.
  """
  from gradxform._transforms.bias import bias_correction as correct  # the flag shadows it
  _check.learning_rate("amsgrad", learning_rate)
  _betas("amsgrad", b1, b2, eps)
  parts = [scale_by_momentum(b1, ema=True, state_dtype=state_dtype)]
  if bias_correction:
    parts.append(correct(b1))
  parts += [scale_by_amsgrad(b2, eps, bias_correction=bias_correction, state_dtype=state_dtype),
            scale_by_learning_rate(learning_rate)]
  return chain(*parts)


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "threshold"))
def radam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, *, threshold: float = 5.0,
          state_dtype: Any = None) -> GradientTransformation:
  """RAdam: Adam whose adaptive step is switched on and rectified by its variance.

  With `ρ_t > threshold`: `θ ← θ − η r_t m̂ √(1−β2^t) / (√v + ε)`; otherwise `θ ← θ − η m̂`
  (see `scale_by_rectification`). Equal to torch.optim.RAdam.
  Chain: `scale_by_momentum(b1, ema=True)` → `bias_correction(b1)` →
  `scale_by_rectification(b2, eps, threshold)` → `scale_by_learning_rate(η)`.

  Example:
    >>> tx = gx.radam(1e-3)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # ρ_1 ≤ 5: the step is −η m̂ = −η g
    Array([-0.0005, -0.0005], dtype=float32)

  References:
    Liu et al., "On the variance of the adaptive learning rate and beyond", ICLR 2020.
  """
  _check.learning_rate("radam", learning_rate)
  _betas("radam", b1, b2, eps)
  return chain(scale_by_momentum(b1, ema=True, state_dtype=state_dtype),
               bias_correction(b1),
               scale_by_rectification(b2, eps, threshold=threshold, state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))
