"""Muon: momentum orthogonalized by Newton–Schulz on matrices, AdamW on every other leaf.

Names, parameter names and defaults are Optax's `optax.contrib.muon` (`state_dtype` stands for
its `mu_dtype`); the default numerics equal Optax's. Flags give torch.optim.Muon's form.
"""

from __future__ import annotations

from typing import Any

import jax

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._optimizers.adam import adamw
from gradxform._optimizers.modern import nadamw
from gradxform._transforms.bias import bias_correction as unbias
from gradxform._transforms.momentum import scale_by_momentum
from gradxform._transforms.nadam import scale_by_nadam_momentum
from gradxform._transforms.orthogonalize import (DEFAULT_NS_COEFFS, PRECONDITIONINGS,
                                                 dims_per_leaf, ns_coefficients, orthogonalize,
                                                 scale_by_shape)
from gradxform._transforms.scale import scale_by_learning_rate
from gradxform._transforms.weight_decay import decoupled_weight_decay
from gradxform._wrappers.partition import partition

ADJUST_LR = (None, "original", "match_rms_adamw")


@transform(hyperparams=("learning_rate", "beta", "eps", "weight_decay", "adam_b1", "adam_b2",
                        "adam_eps_root", "adam_weight_decay", "adam_learning_rate",
                        "consistent_rms"))
def muon(learning_rate: ScalarOrSchedule, ns_coeffs: Any = DEFAULT_NS_COEFFS,
         ns_steps: int = 5, beta: float = 0.95, eps: float = 1e-8,
         weight_decay: ScalarOrSchedule = 0.0, weight_decay_mask: Any = None,
         state_dtype: Any = None, *, nesterov: bool = True, adaptive: bool = False,
         preconditioning: str = "frobenius", adam_b1: float = 0.9, adam_b2: float = 0.999,
         adam_eps_root: float = 0.0, adam_weight_decay: ScalarOrSchedule = 0.0,
         adam_learning_rate: ScalarOrSchedule | None = None,
         muon_weight_dimension_numbers: Any = None, consistent_rms: float | None = None,
         adjust_lr: str | None = None, bias_correction: bool = True,
         eps_in_max: bool = False) -> GradientTransformation:
  """Muon: `θ ← θ − η (s · NS(m̂) + λθ)` on matrices, AdamW on the other leaves.

  On each matrix, `m ← β m + (1 − β) g` and the Nesterov look-ahead
  `m̂ = β m/(1 − β^{t+1}) + (1 − β) g/(1 − β^t)` (without Nesterov, `m/(1 − β^t)`) is
  orthogonalized by Newton–Schulz, scaled by `s = √max(1, fan_out/fan_in)` (or
  `consistent_rms · √max(fan_in, fan_out)`), decayed and scaled by η. Chain on matrices:
  `scale_by_nadam_momentum(β)` → `orthogonalize(ns_coeffs, ns_steps, ε)` → `scale_by_shape` →
  `decoupled_weight_decay(λ, weight_decay_mask)` → `scale_by_learning_rate(η)`; every other
  leaf gets `nadamw(adam_learning_rate or η, adam_b1, adam_b2, ε, adam_eps_root,
  adam_weight_decay)` (`adamw` without Nesterov), through `gx.partition`. By default the
  matrices are the 2-D leaves, read as `(in, out)`; `muon_weight_dimension_numbers` says
  otherwise. Equal-shape matrices are orthogonalized as one batched product. Equal to
  `optax.contrib.muon` on real parameters (a complex matrix is its real view `(m, n, 2)`, not
  2-D, so it gets the AdamW part by default; torch's Muon rejects complex parameters).

  torch.optim.Muon (2-D `(out, in)` parameters only, no AdamW part) is
  `gx.muon(lr, beta=momentum, eps=1e-7, weight_decay=0.1, adjust_lr="original",
  bias_correction=False, eps_in_max=True)` (its defaults; `adjust_lr="match_rms_adamw"` for
  its other option). torch runs Newton–Schulz in bfloat16; this runs it in the updates' dtype.

  Args:
    learning_rate: η >= 0 or a schedule.
    ns_coeffs: the Newton–Schulz `(a, b, c)`, one triple per step, or "standard" / "dion".
    ns_steps: Newton–Schulz steps, >= 1.
    beta: β in [0, 1), the momentum's decay.
    eps: ε >= 0 of the normalization before Newton–Schulz, and AdamW's ε.
    weight_decay: λ >= 0 or a schedule, decoupled, on the matrices (multiplied by η).
    weight_decay_mask: which matrices to decay, as `gx.adamw`'s `mask`.
    state_dtype: dtype of the momenta (Optax's `mu_dtype`).
    nesterov: Nesterov look-ahead, for Muon and for the AdamW part.
    adaptive: scale each orthogonalized update by `⟨m̂, NS(m̂)⟩` (see `gx.orthogonalize`).
    preconditioning: "frobenius" (default), "spectral", "aol" or "schatten" (see
      `gx.orthogonalize`).
    adam_b1, adam_b2: AdamW's decays in [0, 1). adam_eps_root: AdamW's ε inside the root.
    adam_weight_decay: AdamW's decoupled weight decay (default 0).
    adam_learning_rate: AdamW's learning rate (None: η).
    muon_weight_dimension_numbers: None (the 2-D leaves are Muon's), or a tree (or prefix)
      like params of `gx.MuonDimensionNumbers` (Muon, with those axes) and None (AdamW), or a
      function of params returning one.
    consistent_rms: None (width scaling), or r: the scale `r √max(fan_in, fan_out)`.
    adjust_lr: None (Optax's scaling, as above), or torch.optim.Muon's `adjust_lr_fn`:
      "original" (`√max(1, A/B)` for a shape `(A, B)`, torch's `(out, in)`) or
      "match_rms_adamw" (`0.2 √max(A, B)`).
    bias_correction: Optax's bias-corrected momentum (True); False is torch's plain EMA
      (`m̂ = β m + (1 − β) g`, or `m`).
    eps_in_max: divide by `max(‖X‖_F, ε)` before Newton–Schulz (torch) instead of `‖X‖_F + ε`.

  State: `PartitionState` with groups "adam" (the AdamW part's state) and "muon" (the momentum
  state, the other parts being stateless).

  Example:
    >>> tx = gx.muon(0.02)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["w"], 4)            # −η · 0.696: the orthogonalized rank-one g
    Array([[-0.007, -0.007],
           [-0.007, -0.007]], dtype=float32)
    >>> jnp.round(updates["b"], 4)            # the vector gets NAdamW: −η (1 + β1/(1 + β1))
    Array([-0.0295, -0.0295], dtype=float32)

  References:
    Jordan et al., "Muon: an optimizer for hidden layers in neural networks", 2024
    (https://kellerjordan.github.io/posts/muon/).
    Liu et al., "Muon is scalable for LLM training", 2025 (https://arxiv.org/abs/2502.16982).
  """
  where = "muon"
  _check.learning_rate(where, learning_rate)
  ns_coefficients(where, ns_coeffs, ns_steps)
  _check.unit_interval(where, "beta", beta)
  _check.non_negative(where, "eps", eps)
  _check.non_negative_or_schedule(where, "weight_decay", weight_decay)
  _check.one_of(where, "preconditioning", preconditioning, PRECONDITIONINGS)
  _check.unit_interval(where, "adam_b1", adam_b1)
  _check.unit_interval(where, "adam_b2", adam_b2)
  _check.non_negative(where, "adam_eps_root", adam_eps_root)
  _check.non_negative_or_schedule(where, "adam_weight_decay", adam_weight_decay)
  if adam_learning_rate is not None:
    _check.non_negative_or_schedule(where, "adam_learning_rate", adam_learning_rate)
  _check.one_of(where, "adjust_lr", adjust_lr, ADJUST_LR)
  _check.requires(where, adjust_lr is None or consistent_rms is None,
                  f"give adjust_lr or consistent_rms, not both, got adjust_lr={adjust_lr!r}, "
                  f"consistent_rms={consistent_rms!r}")
  dims = muon_weight_dimension_numbers

  def labels(tree):
    leaves, treedef = jax.tree.flatten(tree)
    if dims is None:
      return treedef.unflatten(["muon" if x.ndim == 2 else "adam" for x in leaves])
    specs = dims_per_leaf(where, dims, tree)
    return treedef.unflatten(["adam" if s is None else "muon" for s in specs])

  if not bias_correction:
    momentum = [scale_by_momentum(beta, nesterov=nesterov, ema=True, state_dtype=state_dtype)]
  elif nesterov:
    momentum = [scale_by_nadam_momentum(beta, state_dtype=state_dtype)]
  else:
    momentum = [scale_by_momentum(beta, ema=True, state_dtype=state_dtype),
                unbias(beta)]
  if adjust_lr == "match_rms_adamw":
    consistent_rms = 0.2
  adam_part = nadamw if nesterov else adamw
  adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
  return partition({
      "muon": chain(*momentum,
                    orthogonalize(ns_coeffs, ns_steps, eps, preconditioning=preconditioning,
                                  dimension_numbers=dims, adaptive=adaptive,
                                  eps_in_max=eps_in_max),
                    scale_by_shape(dims, consistent_rms, torch_layout=adjust_lr == "original"),
                    decoupled_weight_decay(weight_decay, mask=weight_decay_mask),
                    scale_by_learning_rate(learning_rate)),
      "adam": adam_part(adam_lr, adam_b1, adam_b2, eps, eps_root=adam_eps_root,
                        weight_decay=adam_weight_decay, state_dtype=state_dtype),
  }, labels)
