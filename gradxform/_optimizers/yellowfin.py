"""YellowFin: momentum SGD with automatically tuned momentum and step size."""

from __future__ import annotations

from typing import Any

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform._transforms.scale import scale_by_learning_rate
from gradxform._transforms.yellowfin import scale_by_yellowfin


@transform(hyperparams=("learning_rate", "beta", "mu_factor"))
def yellowfin(learning_rate: ScalarOrSchedule = 1.0, *, beta: float = 0.999, window: int = 20,
              mu_factor: float = 1.0, log_curvature: bool = False,
              state_dtype: Any = None) -> GradientTransformation:
  """YellowFin: `v ← μ_t v + g`, `θ ← θ − η α_t v`, with μ_t and α_t tuned every step.

  Chain: `scale_by_yellowfin(beta, window, mu_factor)` → `scale_by_learning_rate(η)`. The
  tuned values are in the state: `state[0].estimates.mu` and `.alpha`. Optax has no
  YellowFin; this follows the paper's Algorithms 1-4 with the authors' zero-debiased EMAs
  (see `scale_by_yellowfin` for the differences from their code).

  Args:
    learning_rate: η ≥ 0 or a schedule, a multiplier of the tuned step size (the authors'
      `lr_factor`; 1: as tuned).
    beta: β in [0, 1), the decay of every running estimate (0.999 in the paper).
    window: the curvature range's sliding window, ≥ 1 (20 in the paper).
    mu_factor: a multiplier ≥ 0 of the tuned momentum (1: as tuned).
    log_curvature: smooth the curvature range in the log domain (the authors' PyTorch code).
    state_dtype: dtype of the gradient average and the momentum buffer (None: the params').

  Example:
    >>> tx = gx.yellowfin()
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> jnp.round(updates["b"], 4)            # −g/‖g‖² on the first step
    Array([-0.3333, -0.3333], dtype=float32)

  References:
    Zhang & Mitliagkas, "YellowFin and the art of momentum tuning", SysML 2019
    (https://arxiv.org/abs/1706.03471).
  """
  _check.learning_rate("yellowfin", learning_rate)
  return chain(scale_by_yellowfin(beta, window, mu_factor, log_curvature=log_curvature,
                                  state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))
