"""Rprop (the paper's, torch's or Optax 0.2.8's form) and torch's ASGD.

`rprop` has Optax's names and defaults; `asgd` has torch.optim.ASGD's (Optax has no
ASGD), with torch's `lambd` spelling.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._transforms.rprop import check_rprop, scale_by_rprop
from gradxform._transforms.scale import scale, scale_by_learning_rate
from gradxform._transforms.weight_decay import add_l2_penalty
from gradxform._wrappers.averaging import _averaging, averaged_params


@transform(hyperparams=("learning_rate", "eta_minus", "eta_plus", "min_step_size",
                        "max_step_size"))
def rprop(learning_rate: float, eta_minus: float = 0.5, eta_plus: float = 1.2,
          min_step_size: float = 1e-6, max_step_size: float = 50.0, *,
          always_clip: bool = False, stale_output: bool = False,
          state_dtype: Any = None) -> GradientTransformation:
  """Rprop: `θ ← θ − Δ ⊙ sign(g)`, each Δ grown by η₊ while its gradient keeps its sign.

  Where the sign flips, Δ shrinks by η₋ and that coordinate rests for one step (iRprop⁻); Δ
  stays in `[min_step_size, max_step_size]`. Chain: `scale_by_rprop(...)` → `scale(−1)`.
  Optax's signature. The default is the paper's iRprop⁻; `always_clip=True` is
  `torch.optim.Rprop(lr=learning_rate, etas=(eta_minus, eta_plus),
  step_sizes=(min_step_size, max_step_size))` exactly (torch also clips Δ on steps where it
  is not changed, which matters only while `learning_rate` lies outside the bounds);
  `stale_output=True` is `optax.rprop` of Optax 0.2.8 exactly, whose update lags one step
  (see `scale_by_rprop`).

  Args:
    learning_rate: the initial step size Δ₀ > 0 (a number: Rprop adapts it per coordinate).
    eta_minus: η₋ in (0, 1). eta_plus: η₊ ≥ 1.
    min_step_size, max_step_size: the bounds of Δ.
    always_clip: torch's clipping.
    stale_output: Optax 0.2.8's one-step-late update.
    state_dtype: dtype of the step sizes and previous updates.

  Example:
    >>> tx = gx.rprop(0.01)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # −Δ₀ sign(g) on the first step
    Array([-0.01, -0.01], dtype=float32)

  References:
    Riedmiller & Braun, "A direct adaptive method for faster backpropagation learning: the
    RPROP algorithm", IEEE ICNN 1993. Igel & Hüsken, "Empirical evaluation of the improved
    Rprop learning algorithms", Neurocomputing 2003.
  """
  check_rprop("rprop", learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)
  return chain(scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size,
                              max_step_size, always_clip=always_clip,
                              stale_output=stale_output, state_dtype=state_dtype),
               scale(-1.0))


@transform
def asgd_averaging(t0: float = 1e6, *, state_dtype: Any = None) -> GradientTransformation:
  """torch's ASGD average of the parameters; passes updates through.

  `θ̄ ← θ̄ + μ_t (θ_t − θ̄)` with `θ_t = params + updates` (the parameters after step t,
  counted from 1) and `μ_t = 1 / max(1, t − 1 − t0)`: θ̄ follows the parameters until step
  `t0 + 2` and is their running mean from there on (torch's `ax`, whose `μ` lags one step).
  Place it last in the chain (`gx.asgd` does); read the average with
  `gx.averaged_params(state)`. Before the first step the average is `θ_0` (torch's is 0 until
  its first step).

  Args:
    t0: the step after which averaging starts, ≥ 0 (torch's default 10⁶: no averaging).
    state_dtype: dtype of the average (None: each parameter's dtype).

  State: `ParamAverageState(num_averaged, averaged)`.

  Example:
    >>> tx = gx.chain(gx.sgd(0.1), gx.asgd_averaging(t0=0.0))
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(grads, state, params)
    ...   params = gx.apply_updates(params, updates)
    >>> jnp.round(gx.averaged_params(state)["b"], 4)   # mean of θ_2 and θ_3
    Array([-0.025, -0.225], dtype=float32)

  References:
    Polyak & Juditsky, "Acceleration of stochastic approximation by averaging", SIAM J.
    Control Optim. 1992; torch.optim.ASGD.
  """
  t0 = _check.real("asgd_averaging", "t0", t0, ge=0.0)
  state_dtype = _check.state_dtype("asgd_averaging", state_dtype, int8=False)

  def rate(num_averaged: jax.Array) -> jax.Array:
    k = num_averaged.astype(_numerics.scalar_dtype())       # k = t − 1
    return 1.0 / jnp.maximum(1.0, k - t0)

  return _averaging("asgd_averaging", rate, state_dtype)


@transform(hyperparams=("learning_rate", "lambd", "alpha", "weight_decay"))
def asgd(learning_rate: ScalarOrSchedule, *, lambd: float = 1e-4, alpha: float = 0.75,
         t0: float = 1e6, weight_decay: float = 0.0,
         state_dtype: Any = None) -> GradientTransformation:
  """Averaged SGD (torch.optim.ASGD): `θ ← θ(1 − λη_t) − η_t (g + w θ)`, plus an average θ̄.

  The step size decays as `η_t = η / (1 + λ η (t − 1))^α` (t = 1 on the first step, so
  `η_1 = η`: torch updates its `eta` after the step that used it), and `θ̄` is torch's `ax`
  (see `asgd_averaging`), read with `gx.asgd_average(state, params)`. Chain:
  `add_l2_penalty(w + λ)` → `scale_by_learning_rate(−η_t)` → `asgd_averaging(t0)`. Equal to
  `torch.optim.ASGD(lr, lambd, alpha, t0, weight_decay)`, parameters and `ax`; Optax has no
  ASGD.

  With a schedule as `learning_rate`, `η_t = η(k) / (1 + λ η(k) k)^α` with `k = t − 1`
  (torch's `eta` is computed from the `lr` of the previous step, so under a torch lr scheduler
  it lags one step behind; for a constant η the two agree).

  Args:
    learning_rate: η ≥ 0 or a schedule.
    lambd: λ ≥ 0, the decay term (shrinks θ and η).
    alpha: α ≥ 0, the power of η's decay.
    t0: the step after which the average starts (see `asgd_averaging`).
    weight_decay: w ≥ 0, coupled L2 (torch's `weight_decay`).
    state_dtype: dtype of the average.

  Example:
    >>> tx = gx.asgd(0.1)
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 6)            # −η (g + λθ) on the first step, λ = 10⁻⁴
    Array([-0.050001, -0.049999], dtype=float32)
    >>> jnp.round(gx.asgd_average(state, params)["b"], 6)   # t0 = 10⁶: the average is θ_1
    Array([ 0.049999, -0.149999], dtype=float32)

  References:
    Polyak & Juditsky, "Acceleration of stochastic approximation by averaging", SIAM J.
    Control Optim. 1992. Bottou, "Stochastic gradient descent tricks", 2012 (the step sizes).
  """
  where = "asgd"
  lr = _check.learning_rate(where, learning_rate)
  lambd = _check.non_negative(where, "lambd", lambd)
  alpha = _check.non_negative(where, "alpha", alpha)
  weight_decay = _check.constant(where, "weight_decay", weight_decay,
                                 instead="gx.chain(gx.add_l2_penalty(schedule), gx.asgd(...))")
  weight_decay = _check.non_negative(where, "weight_decay", weight_decay)

  def eta(count: jax.Array) -> jax.Array:
    k = jnp.asarray(count).astype(_numerics.scalar_dtype())
    lr_k = lr(count) if callable(lr) else lr
    return lr_k / (1.0 + lambd * lr_k * k) ** alpha

  return chain(add_l2_penalty(weight_decay + lambd),
               scale_by_learning_rate(eta),
               asgd_averaging(t0, state_dtype=state_dtype))


def asgd_average(state: Any, params: Any) -> Any:
  """torch's `ax` for a `gx.asgd` state: the averaged parameters, to evaluate with.

  The average `θ̄` that `asgd_averaging` keeps anywhere in `state` (`gx.asgd`'s last part),
  checked against `params` (ValueError naming the paths where the trees differ). Before step
  `t0 + 2` it equals the parameters after the last step.

  Args:
    state: the state of `gx.asgd(...)`, or of any chain that ends with `asgd_averaging`.
    params: the current parameters (the tree the average has the structure of).

  Example:
    >>> tx = gx.asgd(0.1, t0=0.0)
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(grads, state, params)
    ...   params = gx.apply_updates(params, updates)
    >>> jnp.round(gx.asgd_average(state, params)["b"], 4)   # mean of θ_2 and θ_3
    Array([-0.025, -0.225], dtype=float32)

  References:
    Polyak & Juditsky, "Acceleration of stochastic approximation by averaging", SIAM J.
    Control Optim. 1992; torch.optim.ASGD's `ax`.
  """
  averaged = averaged_params(state)
  _tree.check_same_structure("asgd_average", params, averaged, "params", "average")
  return averaged
