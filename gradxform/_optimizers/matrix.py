"""Kronecker-factored second-order optimizers: Shampoo and SOAP.

Optax 0.2.8 has neither; the signatures follow the authors' reference implementations (SOAP's
PyTorch code; Anil et al.'s distributed Shampoo for the blocking and grafting), with Optax's
glossary (`b1`, `b2`, `eps`, `weight_decay`, `mask`).
"""

from __future__ import annotations

from typing import Any

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._transforms.bias import bias_correction
from gradxform._transforms.momentum import scale_by_momentum
from gradxform._transforms.scale import scale_by_learning_rate
from gradxform._transforms.shampoo import GRAFTINGS, scale_by_shampoo
from gradxform._transforms.soap import scale_by_soap
from gradxform._transforms.weight_decay import Mask, decoupled_weight_decay


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "graft_eps", "weight_decay"))
def shampoo(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
            eps: float = 1e-6, *, block_size: int = 256, precondition_every: int = 10,
            grafting: str = "adam", graft_eps: float = 1e-8,
            weight_decay: ScalarOrSchedule = 0.0, mask: Mask | None = None,
            state_dtype: Any = None) -> GradientTransformation:
  """Shampoo: `θ ← θ − η (m̂ + λθ)`, `m` the EMA of the grafted `L^{-1/4} G R^{-1/4}`.

  Chain: `scale_by_shampoo(b2, eps, block_size, precondition_every, grafting, graft_eps)` →
  `scale_by_momentum(b1, ema=True)` → `bias_correction(b1)` →
  `decoupled_weight_decay(λ, mask)` → `scale_by_learning_rate(η)`. The preconditioner (see
  `gx.scale_by_shampoo`): per block of at most `block_size` along each axis, the statistics
  are EMAs (β2) of `G Gᵀ` and `Gᵀ G` (of each axis, with root `−1/2k`, for k-dimensional
  leaves), their roots recomputed by `eigh` every `precondition_every` steps, and each block
  grafted onto the norm of Adam's diagonal step (`grafting="adam"`); vectors and scalars take
  that diagonal step. With momentum and bias correction after grafting, a step has Adam's
  size. No Optax counterpart (written from the papers; distributed Shampoo's defaults differ:
  it takes momentum without bias correction and the weight decay as an L2 term).

  Args:
    learning_rate: η >= 0 or a schedule.
    b1: β1 in [0, 1), the momentum's decay (applied after grafting).
    b2: β2 in [0, 1], the decay of the statistics and of the Adam grafting (1: sums).
    eps: ε >= 0: `ε λ_max` is added to the statistics' eigenvalues before the root (ε
      relative to the largest eigenvalue, distributed Shampoo's default form).
    block_size: the largest block along an axis (>= 1).
    precondition_every: recompute the roots every this many steps (>= 1).
    grafting: "adam", "sgd" or "none".
    graft_eps: ε >= 0 of the Adam grafting.
    weight_decay: λ >= 0 or a schedule, decoupled (multiplied by η).
    mask: which leaves to decay (a bool tree or a function of params), as `gx.adamw`.
    state_dtype: dtype of the momentum (the statistics are float32 at least, always).

  Example:
    >>> tx = gx.shampoo(0.1)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["w"], 3)            # first step: −η times Adam's unit step
    Array([[-0.1, -0.1],
           [-0.1, -0.1]], dtype=float32)

  References:
    Gupta, Koren & Singer, "Shampoo: preconditioned stochastic tensor optimization", ICML 2018
    (https://arxiv.org/abs/1802.09568).
    Anil et al., "Scalable second order optimization for deep learning", 2020
    (https://arxiv.org/abs/2002.09018).
  """
  where = "shampoo"
  _check.learning_rate(where, learning_rate)
  _check.unit_interval(where, "b1", b1)
  _check.unit_interval(where, "b2", b2, closed=True)
  _check.non_negative(where, "eps", eps)
  _check.non_negative(where, "graft_eps", graft_eps)
  _check.integer(where, "block_size", block_size, minimum=1)
  _check.integer(where, "precondition_every", precondition_every, minimum=1)
  _check.one_of(where, "grafting", grafting, GRAFTINGS)
  _check.non_negative_or_schedule(where, "weight_decay", weight_decay)
  return chain(scale_by_shampoo(b2, eps, block_size=block_size,
                                precondition_every=precondition_every, grafting=grafting,
                                graft_eps=graft_eps),
               scale_by_momentum(b1, ema=True, state_dtype=state_dtype),
               bias_correction(b1),
               decoupled_weight_decay(weight_decay, mask=mask),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "b1", "b2", "eps", "weight_decay", "shampoo_beta"))
def soap(learning_rate: ScalarOrSchedule, b1: float = 0.95, b2: float = 0.95,
         eps: float = 1e-8, *, weight_decay: ScalarOrSchedule = 0.01, mask: Mask | None = None,
         shampoo_beta: float | None = None, precondition_frequency: int = 10,
         max_precond_dim: int = 10000, precondition_1d: bool = False,
         correct_bias: bool = True) -> GradientTransformation:
  """SOAP: `θ ← θ − η (Q (Q̃ᵀM / (√V + ε)) + λθ)`, Adam in Shampoo's eigenbasis `Q`.

  Chain: `scale_by_soap(b1, b2, eps, shampoo_beta, precondition_frequency, max_precond_dim,
  precondition_1d, correct_bias)` → `decoupled_weight_decay(λ, mask)` →
  `scale_by_learning_rate(η)`. See `gx.scale_by_soap`: the first step only sets the
  eigenbases (its update is the decay alone; the authors' code skips the decay too), the bases
  are refreshed by a power step and QR every `precondition_frequency` steps. Defaults are the
  authors' PyTorch `SOAP`'s (`lr=3e-3` is theirs; here η has no default, as in every
  gradxform optimizer). Their code decays with the parameters after the step,
  `θ ← θ' − ηλθ'`; this decays with those before it (Optax's decoupled form), a difference of
  order η²λ. No Optax counterpart.

  Args:
    learning_rate: η >= 0 or a schedule.
    b1, b2: Adam's decays in [0, 1).
    eps: ε >= 0 outside the root.
    weight_decay: λ >= 0 or a schedule, decoupled (multiplied by η).
    mask: which leaves to decay (a bool tree or a function of params), as `gx.adamw`.
    shampoo_beta: the decay of Shampoo's statistics, in [0, 1), or None for b2.
    precondition_frequency: refresh the bases every this many steps (>= 1).
    max_precond_dim: axes longer than this are not rotated (>= 1).
    precondition_1d: rotate vectors too.
    correct_bias: Adam's bias correction.

  Example:
    >>> tx = gx.soap(3e-3, weight_decay=0.0)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)     # sets the bases only
    >>> updates, state = tx.update(grads, state, params)
    >>> jnp.round(updates["b"], 4)            # −η on the vector (Adam's unit step)
    Array([-0.003, -0.003], dtype=float32)

  References:
    Vyas et al., "SOAP: improving and stabilizing Shampoo using Adam", ICLR 2025
    (https://arxiv.org/abs/2409.11321); the authors' code: https://github.com/nikhilvyas/SOAP.
  """
  where = "soap"
  _check.learning_rate(where, learning_rate)
  _check.unit_interval(where, "b1", b1)
  _check.unit_interval(where, "b2", b2)
  _check.non_negative(where, "eps", eps)
  if shampoo_beta is not None:
    _check.unit_interval(where, "shampoo_beta", shampoo_beta)
  _check.integer(where, "precondition_frequency", precondition_frequency, minimum=1)
  _check.integer(where, "max_precond_dim", max_precond_dim, minimum=1)
  _check.non_negative_or_schedule(where, "weight_decay", weight_decay)
  return chain(scale_by_soap(b1, b2, eps, shampoo_beta=shampoo_beta,
                             precondition_frequency=precondition_frequency,
                             max_precond_dim=max_precond_dim, precondition_1d=precondition_1d,
                             correct_bias=correct_bias),
               decoupled_weight_decay(weight_decay, mask=mask),
               scale_by_learning_rate(learning_rate))
