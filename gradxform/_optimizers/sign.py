"""PowerSign and AddSign, found by Neural Optimizer Search."""

from __future__ import annotations

import math
from typing import Any

from gradxform import _check
from gradxform._base import (GradientTransformation, Schedule, ScalarOrSchedule, chain,
                             transform)
from gradxform._transforms.scale import scale_by_learning_rate
from gradxform._transforms.sign import sign_agreement


@transform(hyperparams=("learning_rate", "base", "beta"))
def powersign(learning_rate: ScalarOrSchedule, *, base: float = math.e, beta: float = 0.9,
              decay_fn: Schedule | None = None,
              state_dtype: Any = None) -> GradientTransformation:
  """PowerSign: `θ ← θ − η · base^{f(t)·sign(g)·sign(m)} · g`, `m ← β m + (1 − β) g`.

  Chain: `sign_agreement(mode="power")` → `scale_by_learning_rate(η)`.

  Example:
    >>> tx = gx.powersign(0.01)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"], 5)            # g and m agree: −0.01 · e¹ · 0.5
    Array([-0.01359, -0.01359], dtype=float32)

  References:
    Bello, Zoph, Vasudevan & Le, "Neural optimizer search with reinforcement learning",
    ICML 2017.
  """
  _check.learning_rate("powersign", learning_rate)
  return chain(sign_agreement(mode="power", base=base, beta=beta, decay_fn=decay_fn,
                              state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))


@transform(hyperparams=("learning_rate", "alpha", "beta"))
def addsign(learning_rate: ScalarOrSchedule, *, alpha: float = 1.0, beta: float = 0.9,
            decay_fn: Schedule | None = None,
            state_dtype: Any = None) -> GradientTransformation:
  """AddSign: `θ ← θ − η · (α + f(t)·sign(g)·sign(m)) · g`, `m ← β m + (1 − β) g`.

  Chain: `sign_agreement(mode="add")` → `scale_by_learning_rate(η)`.

  Example:
    >>> tx = gx.addsign(0.01)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["b"]                          # g and m agree: −0.01 · (1 + 1) · 0.5
    Array([-0.01, -0.01], dtype=float32)

  References:
    Bello, Zoph, Vasudevan & Le, ICML 2017.
  """
  _check.learning_rate("addsign", learning_rate)
  return chain(sign_agreement(mode="add", alpha=alpha, beta=beta, decay_fn=decay_fn,
                              state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))
