"""L-BFGS: the limited-memory quasi-Newton direction with a line search.

Names, parameter names and defaults are Optax's 0.2.8; the numerics equal `optax.lbfgs`.
"""

from __future__ import annotations

from typing import Any

from gradxform import _check
from gradxform._base import (GradientTransformation, ScalarOrSchedule, _as_transform, chain,
                             identity, transform)
from gradxform._transforms.lbfgs import scale_by_lbfgs
from gradxform._transforms.linesearch import scale_by_zoom_linesearch
from gradxform._transforms.scale import scale, scale_by_learning_rate

#: `lbfgs`'s default line search, Optax's: zoom, starting each search at η = 1.
_ZOOM = scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")


@transform(hyperparams=("learning_rate",))
def lbfgs(learning_rate: ScalarOrSchedule | None = None, memory_size: int = 10,
          scale_init_precond: bool = True, linesearch: Any = _ZOOM) -> GradientTransformation:
  """L-BFGS: `θ ← θ − η_k H_k g_k`, `η_k` from a line search (strong Wolfe by default).

  Chain: `scale_by_lbfgs(memory_size, scale_init_precond)` → `scale(−1)` (or
  `scale_by_learning_rate(learning_rate)` when one is given) → `linesearch` (none when None).
  Equal to `optax.lbfgs`.

  Call `update(grad, state, params, value=f(θ), grad=grad, value_fn=f, **data)`, as in Optax:
  the line search evaluates `value_fn` along the direction. In gradxform's chain protocol the
  `grad=` keyword is the chain's raw gradient, which is what Optax's `grad=` means (`∇f(θ)`);
  when it is left out, the gradient given as `updates` is used (`scale_by_lbfgs` declares
  `accumulates`). `gx.value_and_grad_from_state(f)(params, state=state)` reuses the value and
  gradient the line search computed at the new parameters, so a deterministic problem costs one
  evaluation of `f` and `∇f` per line-search step.

  Args:
    learning_rate: None (the line search sets the step; the default) or a step size η ≥ 0 /
      schedule multiplying the direction before the line search.
    memory_size: m ≥ 1, the number of past steps the inverse-Hessian estimate keeps.
    scale_init_precond: scale the initial inverse Hessian by `⟨s, y⟩/‖y‖²`.
    linesearch: a transform choosing the step size (`gx.scale_by_zoom_linesearch(20,
      initial_guess_strategy='one')` by default, `gx.scale_by_backtracking_linesearch`), or
      None for a fixed step.

  Example:
    >>> f = lambda p: jnp.sum((p["w"] - 1.0) ** 2) + 10.0 * jnp.sum(p["b"] ** 2)
    >>> tx = gx.lbfgs()
    >>> state, value_and_grad = tx.init(params), gx.value_and_grad_from_state(f)
    >>> p = params
    >>> for _ in range(4):
    ...   value, grad = value_and_grad(p, state=state)
    ...   updates, state = tx.update(grad, state, p, value=value, grad=grad, value_fn=f)
    ...   p = gx.apply_updates(p, updates)
    ...   print(f"{float(f(p)):.1e}")
    7.8e+00
    5.2e-01
    1.3e-01
    9.8e-05

  References:
    Liu & Nocedal, "On the limited memory BFGS method for large scale optimization",
    Mathematical Programming 1989; Nocedal & Wright, "Numerical optimization", Springer 1999,
    Algorithms 7.4 and 7.5.
  """
  where = "lbfgs"
  _check.integer(where, "memory_size", memory_size, minimum=1)
  if learning_rate is None:
    base = scale(-1.0)
  else:
    base = scale_by_learning_rate(_check.learning_rate(where, learning_rate))
  search = identity() if linesearch is None else _as_transform(linesearch, f"{where}: linesearch")
  return chain(scale_by_lbfgs(memory_size, scale_init_precond), base, search)
