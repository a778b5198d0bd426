"""Optimizers after the Adam canon: Lion, signSGD, Signum, AdaBelief, Yogi, AdaMaxW, NAdamW.

Names, parameter names and defaults are Optax's (`state_dtype` stands for its `mu_dtype` /
`accumulator_dtype`); the default numerics equal Optax's.
"""

from __future__ import annotations

from typing import Any

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._transforms.accumulators import scale_by_inf_norm
from gradxform._transforms.belief import scale_by_belief, scale_by_yogi
from gradxform._transforms.bias import bias_correction
from gradxform._transforms.momentum import scale_by_momentum
from gradxform._transforms.nadam import scale_by_nadam_momentum
from gradxform._transforms.rms import scale_by_rms
from gradxform._transforms.scale import scale_by_learning_rate
from gradxform._transforms.sign_descent import scale_by_lion, scale_by_sign
from gradxform._transforms.weight_decay import Mask, decoupled_weight_decay


def _betas(where: str, b1: Any, b2: Any, eps: Any) -> None:
  _check.unit_interval(where, "b1", b1)
  _check.unit_interval(where, "b2", b2)
  _check.non_negative(where, "eps", eps)


@transform(hyperparams=("learning_rate", "b1", "b2", "weight_decay"))
def lion(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.99, *,
         weight_decay: ScalarOrSchedule = 1e-3, mask: Mask | None = None,
         state_dtype: Any = None) -> GradientTransformation:
  """Lion: `θ ← θ − η (sign((1 − β1) g + β1 m) + λθ)`, then `m ← β2 m + (1 − β2) g`.

  Chain: `scale_by_lion(b1, b2)` → `decoupled_weight_decay(λ, mask)` →
  `scale_by_learning_rate(η)`. Optax's defaults (λ = 10⁻³, β2 = 0.99); the paper suggests an
  η 3–10× smaller than AdamW's and a λ as much larger. Equal to `optax.lion`.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1: β1 in [0, 1), the interpolation weight of the momentum in the direction.
    b2: β2 in [0, 1), the decay of the momentum.
    weight_decay: λ ≥ 0 or a schedule, decoupled (multiplied by η, not by the sign).
    mask: which leaves to decay (a bool tree or a function of params), as `gx.adamw`.
    state_dtype: dtype of the momentum (Optax's `mu_dtype`).

  Example:
    >>> tx = gx.lion(1e-4, weight_decay=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # −η · sign(g)
    Array([-0.0001, -0.0001], dtype=float32)

  References:
    Chen et al., "Symbolic discovery of optimization algorithms", NeurIPS 2023
    (https://arxiv.org/abs/2302.06675).
  """
  _check.learning_rate("lion", learning_rate)
  _check.unit_interval("lion", "b1", b1)
  _check.unit_interval("lion", "b2", b2)
  _check.non_negative_or_schedule("lion", "weight_decay", weight_decay)
  return chain(scale_by_lion(b1, b2, state_dtype=state_dtype),
               decoupled_weight_decay(weight_decay, mask=mask),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate",))
def sign_sgd(learning_rate: ScalarOrSchedule) -> GradientTransformation:
  """signSGD: `θ ← θ − η sign(g)`.

  Chain: `scale_by_sign()` → `scale_by_learning_rate(η)`. Equal to `optax.sign_sgd`.

  Args:
    learning_rate: η ≥ 0 or a schedule.

  Example:
    >>> tx = gx.sign_sgd(0.01)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]
    Array([-0.01, -0.01], dtype=float32)

  References:
    Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: compressed optimisation for
    non-convex problems", ICML 2018.
  """
  _check.learning_rate("sign_sgd", learning_rate)
  return chain(scale_by_sign(), scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "beta"))
def signum(learning_rate: ScalarOrSchedule, beta: float = 0.9, *,
           state_dtype: Any = None) -> GradientTransformation:
  """Signum: `m ← β m + (1 − β) g`, `θ ← θ − η sign(m)`.

  Chain: `scale_by_momentum(β, ema=True)` → `scale_by_sign()` → `scale_by_learning_rate(η)`.
  The EMA is not bias-corrected (a positive factor does not change a sign). Equal to
  `optax.signum`.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    beta: β in [0, 1), the momentum's decay.
    state_dtype: dtype of the momentum (Optax's `accumulator_dtype`).

  Example:
    >>> tx = gx.signum(0.01)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # −η · sign(0.1 · g)
    Array([-0.01, -0.01], dtype=float32)

  References:
    Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: compressed optimisation for
    non-convex problems", ICML 2018 (Signum is its momentum variant).
  """
  _check.learning_rate("signum", learning_rate)
  _check.unit_interval("signum", "beta", beta)
  return chain(scale_by_momentum(beta, ema=True, state_dtype=state_dtype),
               scale_by_sign(),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "eps_root"))
def adabelief(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-16, eps_root: float = 1e-16, *, nesterov: bool = False,
              state_dtype: Any = None) -> GradientTransformation:
  """AdaBelief: `θ ← θ − η m̂ / (√ŝ + ε)`, `s ← β2 s + (1 − β2)(g − m)² + ε_root`.

  Adam with the second moment of the gradient's deviation from its average (the "belief")
  in place of the raw second moment; see `scale_by_belief` (also for `nesterov`).
  Chain: `scale_by_belief(b1, b2, eps, eps_root)` → `scale_by_learning_rate(η)`.
  Equal to `optax.adabelief`; the authors' PyTorch package adds ε the same way.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1, b2: decays in [0, 1).
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 added to `s` every step.
    nesterov: Dozat's look-ahead of the first moment.
    state_dtype: dtype of both moments.

  Example:
    >>> tx = gx.adabelief(1e-3)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # −η m̂/√ŝ = −η · 0.5/0.45
    Array([-0.001111, -0.001111], dtype=float32)

  References:
    Zhuang et al., "AdaBelief optimizer: adapting stepsizes by the belief in observed
    gradients", NeurIPS 2020 (https://arxiv.org/abs/2010.07468).
  """
  _check.learning_rate("adabelief", learning_rate)
  _betas("adabelief", b1, b2, eps)
  _check.non_negative("adabelief", "eps_root", eps_root)
  return chain(scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov,
                               state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "eps_root",
                        "initial_accumulator_value"))
def yogi(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-3, *, eps_root: float = 0.0, initial_accumulator_value: float = 1e-6,
         state_dtype: Any = None) -> GradientTransformation:
  """Yogi: `v ← v − (1 − β2) sign(v − g²) g²`, `θ ← θ − η m̂ / (√v̂ + ε)`.

  Chain: `scale_by_yogi(b1, b2, eps, eps_root, initial_accumulator_value)` →
  `scale_by_learning_rate(η)`. Equal to `optax.yogi` (both moments start at 10⁻⁶ and are
  bias-corrected; the paper starts at 0 without correction: `initial_accumulator_value=0`
  is its start).

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1, b2: decays in [0, 1).
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 inside it.
    initial_accumulator_value: the starting value of both moments, ≥ 0.
    state_dtype: dtype of both moments.

  Example:
    >>> tx = gx.yogi(0.01)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 4)            # about −η m̂/(√v̂ + ε) = −η · 0.5/0.501
    Array([-0.01, -0.01], dtype=float32)

  References:
    Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive methods for nonconvex optimization",
    NeurIPS 2018.
  """
  _check.learning_rate("yogi", learning_rate)
  _betas("yogi", b1, b2, eps)
  return chain(scale_by_yogi(b1, b2, eps, eps_root, initial_accumulator_value,
                             state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "weight_decay"))
def adamaxw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
            eps: float = 1e-8, *, weight_decay: ScalarOrSchedule = 1e-4,
            mask: Mask | None = None, eps_in_max: bool = True,
            state_dtype: Any = None) -> GradientTransformation:
  """AdaMaxW: AdaMax with decoupled weight decay, `θ ← θ − η (m̂ / u + λθ)`.

  `u ← max(β2 u, |g| + ε)` by default (`eps_in_max=True`, Optax's and torch's form);
  `eps_in_max=False` is Kingma & Ba's `u ← max(β2 u, |g|)`, divided by `u + ε` (the default
  of `gx.adamax`). Chain: `scale_by_momentum(b1, ema=True)` → `bias_correction(b1)` →
  `scale_by_inf_norm(b2, eps, eps_in_max)` → `decoupled_weight_decay(λ, mask)` →
  `scale_by_learning_rate(η)`. Equal to `optax.adamaxw`.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1, b2: decays in [0, 1).
    eps: ε ≥ 0.
    weight_decay: λ ≥ 0 or a schedule (Optax's default 10⁻⁴).
    mask: which leaves to decay, as `gx.adamw`.
    eps_in_max: where ε goes (see above).
    state_dtype: dtype of both moments.

  Example:
    >>> tx = gx.adamaxw(2e-3, weight_decay=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # m̂ = g and u = |g| + ε on the first step
    Array([-0.002, -0.002], dtype=float32)

  References:
    Kingma & Ba, "Adam: A method for stochastic optimization", ICLR 2015, section 7.1.
    Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.
  """
  _check.learning_rate("adamaxw", learning_rate)
  _betas("adamaxw", b1, b2, eps)
  _check.non_negative_or_schedule("adamaxw", "weight_decay", weight_decay)
  return chain(scale_by_momentum(b1, ema=True, state_dtype=state_dtype),
               bias_correction(b1),
               scale_by_inf_norm(b2, eps, eps_in_max=eps_in_max, state_dtype=state_dtype),
               decoupled_weight_decay(weight_decay, mask=mask),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay"))
def nadamw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
           eps: float = 1e-8, *, eps_root: float = 0.0, weight_decay: ScalarOrSchedule = 1e-4,
           mask: Mask | None = None, state_dtype: Any = None) -> GradientTransformation:
  """NAdamW: Nadam (Dozat's form) with decoupled weight decay.

  `θ ← θ − η ((β1 m/(1−β1^{t+1}) + (1−β1) g/(1−β1^t)) / (√(v̂ + ε_root) + ε) + λθ)`.
  Chain: `scale_by_nadam_momentum(b1)` → `scale_by_rms(b2, eps, eps_in_sqrt=False,
  eps_root, bias_correction=True)` → `decoupled_weight_decay(λ, mask)` →
  `scale_by_learning_rate(η)`. Equal to `optax.nadamw` (`optax.adamw(nesterov=True)`);
  torch's `NAdam(decoupled_weight_decay=True)` uses the `momentum_decay` schedule instead.

  Args:
    learning_rate: η ≥ 0 or a schedule.
    b1, b2: decays in [0, 1).
    eps: ε ≥ 0 outside the root. eps_root: ε_root ≥ 0 inside it.
    weight_decay: λ ≥ 0 or a schedule (Optax's default 10⁻⁴).
    mask: which leaves to decay, as `gx.adamw`.
    state_dtype: dtype of both moments (Optax's `mu_dtype`, which sets the first only).

  Example:
    >>> tx = gx.nadamw(1e-3, weight_decay=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 5)            # as gx.nadam on the first step
    Array([-0.00147, -0.00147], dtype=float32)

  References:
    Dozat, "Incorporating Nesterov momentum into Adam", ICLR workshop 2016.
    Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.
  """
  _check.learning_rate("nadamw", learning_rate)
  _betas("nadamw", b1, b2, eps)
  _check.non_negative("nadamw", "eps_root", eps_root)
  _check.non_negative_or_schedule("nadamw", "weight_decay", weight_decay)
  return chain(scale_by_nadam_momentum(b1, state_dtype=state_dtype),
               scale_by_rms(b2, eps, eps_in_sqrt=False, eps_root=eps_root, bias_correction=True,
                            state_dtype=state_dtype),
               decoupled_weight_decay(weight_decay, mask=mask),
               scale_by_learning_rate(learning_rate))
