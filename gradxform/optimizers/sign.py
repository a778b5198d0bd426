"""PowerSign and AddSign, found by Neural Optimizer Search."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax

from gradxform import _check
from gradxform._base import GradientTransformation, ScalarOrSchedule, chain, transform
from gradxform.transforms.scale import scale_by_learning_rate
from gradxform.transforms.sign import sign_agreement


@transform
def powersign(learning_rate: ScalarOrSchedule, *, base: float = math.e, beta: float = 0.9,
              decay_fn: Callable[[jax.Array], jax.Array] | None = None,
              state_dtype: Any = None) -> GradientTransformation:
  """PowerSign: `θ ← θ − η · base^{f(t)·sign(g)·sign(m)} · g`, `m ← β m + (1 − β) g`.

  Chain: `sign_agreement(mode="power")` → `scale_by_learning_rate(η)`.

  References:
    Bello, Zoph, Vasudevan & Le, "Neural optimizer search with reinforcement learning",
    ICML 2017.
  """
  _check.learning_rate("powersign", learning_rate)
  return chain(sign_agreement(mode="power", base=base, beta=beta, decay_fn=decay_fn,
                              state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))


@transform
def addsign(learning_rate: ScalarOrSchedule, *, alpha: float = 1.0, beta: float = 0.9,
            decay_fn: Callable[[jax.Array], jax.Array] | None = None,
            state_dtype: Any = None) -> GradientTransformation:
  """AddSign: `θ ← θ − η · (α + f(t)·sign(g)·sign(m)) · g`, `m ← β m + (1 − β) g`.

  Chain: `sign_agreement(mode="add")` → `scale_by_learning_rate(η)`.

  References:
    Bello, Zoph, Vasudevan & Le, ICML 2017.
  """
  _check.learning_rate("addsign", learning_rate)
  return chain(sign_agreement(mode="add", alpha=alpha, beta=beta, decay_fn=decay_fn,
                              state_dtype=state_dtype),
               scale_by_learning_rate(learning_rate))
