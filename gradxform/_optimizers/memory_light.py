"""Memory-light optimizers: Adafactor (Optax's form, and torch.optim.Adafactor's).

Names, parameter names and defaults are Optax's (`state_dtype` stands for its
`dtype_momentum`); the default numerics equal Optax's.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._transforms.clip import clip_by_block_rms
from gradxform._transforms.factored import scale_by_factored_rms, scale_by_param_block_rms
from gradxform._transforms.momentum import scale_by_momentum
from gradxform._transforms.scale import scale, scale_by_learning_rate
from gradxform._transforms.weight_decay import Mask, decoupled_weight_decay

#: torch.optim.Adafactor's default `lr`, the paper's cap on the relative step size.
_TORCH_LR = 1e-2


def _relative_step(lr: ScalarOrSchedule) -> Callable[[jax.Array], jax.Array]:
  """torch's `ρ_t = min(lr, 1/√t)` with `t = count + 1`, as a schedule of the count."""

  def rho(count):
    t = jnp.asarray(count + 1).astype(_numerics.scalar_dtype())
    cap = lr(count) if callable(lr) else lr
    return jnp.minimum(cap, 1.0 / jnp.sqrt(t))

  return rho


def _product(a: ScalarOrSchedule, b: ScalarOrSchedule) -> ScalarOrSchedule:
  """`a · b` for numbers, arrays or schedules of the count."""
  if not callable(a) and not callable(b):
    return a * b
  at = lambda x, count: x(count) if callable(x) else x  # noqa: E731
  return lambda count: at(a, count) * at(b, count)


@transform(hyperparams=("learning_rate", "decay_rate", "clipping_threshold", "momentum",
                        "weight_decay_rate", "eps", "min_scale"))
def adafactor(learning_rate: ScalarOrSchedule | None = None, min_dim_size_to_factor: int = 128,
              decay_rate: float = 0.8, decay_offset: int = 0,
              multiply_by_parameter_scale: bool = True, clipping_threshold: float | None = 1.0,
              momentum: float | None = None, state_dtype: Any = jnp.float32,
              weight_decay_rate: ScalarOrSchedule | None = None, eps: float | None = 1e-30,
              factored: bool = True, weight_decay_mask: Mask | None = None, *,
              min_scale: float = 1e-3, torch_form: bool = False) -> GradientTransformation:
  """Adafactor: `θ ← θ − η · max(rms(θ), s) · clip_d(g / √V̂)` with a factored second moment V̂.

  Chain (each part only where its argument is set): `scale_by_factored_rms(factored,
  decay_rate, decay_offset, min_dim_size_to_factor, eps)` → `clip_by_block_rms(d)` →
  `scale_by_learning_rate(η, flip_sign=False)` → `scale_by_param_block_rms(s)` →
  `scale_by_momentum(μ, ema=True)` → `decoupled_weight_decay(λ, mask)` → `scale(-1)`. The
  weight decay comes after η: the step gains `λθ`, not `ηλθ`. With `learning_rate=None` the
  step is the parameter-scaled update itself (the paper's form has a relative step size ρ_t
  instead: see the torch form). Equal to `optax.adafactor`, whose defaults these are
  (including a float32 momentum).

  `torch_form=True` reproduces `torch.optim.Adafactor(lr, beta2_decay, (eps1, eps2), d,
  weight_decay)` exactly, as `gx.adafactor(lr, min_dim_size_to_factor=0, decay_rate=-beta2_decay,
  clipping_threshold=d, weight_decay_rate=weight_decay, eps=eps1, min_scale=eps2,
  torch_form=True)` (`eps=None` is torch's default `eps1`, the machine epsilon): the
  preconditioner is `scale_by_factored_rms(..., torch_form=True)` (torch's axes and ε), η is
  replaced by torch's relative step `ρ_t = min(η, 1/√t)` (`η` None: 0.01, torch's default),
  and the weight decay is torch's `ηλθ`. torch's `maximize=True` is
  `gx.chain(gx.scale(-1.0), ...)`.

  Args:
    learning_rate: η ≥ 0 or a schedule; None: no learning-rate factor (Optax form).
    min_dim_size_to_factor: factor a leaf's second moment only if two axes are this long.
    decay_rate: exponent of the second-moment decay `β̂_t = 1 − t^(−decay_rate)`.
    decay_offset: step at which the decay schedule restarts (for fine-tuning).
    multiply_by_parameter_scale: multiply by the parameter's block rms (at least
      `min_scale`); else η is an absolute step size.
    clipping_threshold: d > 0, the largest block rms of the preconditioned update; None: no
      clipping.
    momentum: μ in [0, 1) for an EMA of the updates (extra memory: a full copy of the
      parameters); None: no momentum.
    state_dtype: dtype of the momentum (Optax's `dtype_momentum`, float32 by default; None:
      each parameter's dtype).
    weight_decay_rate: λ ≥ 0 or a schedule; None: no weight decay.
    eps: ε ≥ 0 added to g² (torch form: torch's `eps1`, None for its default).
    factored: factor the second moment of matrix leaves.
    weight_decay_mask: which leaves to decay (a bool tree or a function of params).
    min_scale: the floor of the parameter scale (Optax's `scale_by_param_block_rms` default,
      torch's `eps2`).
    torch_form: torch.optim.Adafactor's numerics (see above).

  Example:
    >>> tx = gx.adafactor(learning_rate=0.1)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # −η · rms(θ_b) · sign(g) = −0.1 · 0.1
    Array([-0.01, -0.01], dtype=float32)

  References:
    Shazeer & Stern, "Adafactor: Adaptive learning rates with sublinear memory cost", ICML
    2018 (https://arxiv.org/abs/1804.04235).
  """
  where = "adafactor"
  if learning_rate is not None:
    _check.learning_rate(where, learning_rate)
  _check.non_negative(where, "decay_rate", decay_rate)
  _check.integer(where, "decay_offset", decay_offset)
  _check.integer(where, "min_dim_size_to_factor", min_dim_size_to_factor, minimum=0)
  if clipping_threshold is not None:
    _check.positive(where, "clipping_threshold", clipping_threshold)
  if momentum is not None:
    _check.unit_interval(where, "momentum", momentum)
  _check.state_dtype(where, state_dtype)
  if weight_decay_rate is not None:
    _check.non_negative_or_schedule(where, "weight_decay_rate", weight_decay_rate)
  _check.requires(where, eps is not None or torch_form,
                  "eps must be a number, got None (None is torch's machine epsilon, in the "
                  "torch form only: torch_form=True)")
  if eps is not None:
    _check.non_negative(where, "eps", eps)
  _check.non_negative(where, "min_scale", min_scale)

  parts = [scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor,
                                 eps, torch_form=torch_form)]
  if clipping_threshold is not None:
    parts.append(clip_by_block_rms(clipping_threshold))
  if torch_form:
    lr = _TORCH_LR if learning_rate is None else learning_rate
    if multiply_by_parameter_scale:
      parts.append(scale_by_param_block_rms(min_scale))
    parts.append(scale_by_learning_rate(_relative_step(lr), flip_sign=False))
    decay = None if weight_decay_rate is None else _product(lr, weight_decay_rate)
  else:
    if learning_rate is not None:
      parts.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
      parts.append(scale_by_param_block_rms(min_scale))
    decay = weight_decay_rate
  if momentum is not None:
    parts.append(scale_by_momentum(momentum, ema=True, state_dtype=state_dtype))
  if decay is not None:
    parts.append(decoupled_weight_decay(decay, mask=weight_decay_mask))
  parts.append(scale(-1.0))
  return chain(*parts)
