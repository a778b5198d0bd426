"""Line searches: the zoom (strong Wolfe) search, Armijo backtracking, and reusing their values.

A line search is the last part of a chain: it receives a direction `u` and returns `η u`, with
the step size `η` chosen by evaluating the objective along `θ + η u`. Its `update` takes, as
Optax's, the keyword arguments

* `value_fn`: the objective, called as `value_fn(params, **kw)` where `kw` are the other extra
  keyword arguments whose names are parameters of `value_fn` (data, for example);
* `value`: `f(θ)` at the current parameters (computed from `value_fn` when not given);
* `grad`: `∇f(θ)` at the current parameters. In a chain this is the `grad` of the chain
  protocol (`gx.raw_gradient`): the gradient the chain received, or the `grad=` the caller
  gave the chain's `update`, which is exactly Optax's `grad=`. Parts that do not declare
  `accumulates` pass their output on as the raw gradient, so in a chain of your own that starts
  with such parts, pass `grad=` (as Optax requires anyway). When no `grad` arrives, or it is the
  very direction the line search received, it is computed from `value_fn`.

Extra keyword arguments that `value_fn` does not take are ignored (the chain protocol passes its
own); Optax raises `TypeError` for them. With complex parameters `value_fn` is written for
them as they are; the search runs on their real view (pairs of reals, as every transform).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics
from gradxform._base import (CHECKED_KEY, COUNT_KEY, GRAD_KEY, GradientTransformation,
                             require_params, transform)

#: Keys of `**extra` that are never passed on to `value_fn`.
_RESERVED = frozenset({"value", GRAD_KEY, "value_fn", COUNT_KEY, CHECKED_KEY})


# ---------------------------------------------------------------------------------------------
# Helpers shared by both searches.


def _vdot(x: Any, y: Any) -> jax.Array:
  """`⟨x, y⟩` over two trees of real arrays, summed at the highest precision."""
  parts = jax.tree.leaves(jax.tree.map(
      lambda a, b: jnp.vdot(a, b, precision=jax.lax.Precision.HIGHEST), x, y))
  return sum(parts[1:], parts[0]) if parts else jnp.asarray(0.0)


def _along(params: Any, step: jax.Array, direction: Any) -> Any:
  """`θ + η u`, each leaf in its parameter's dtype."""
  return jax.tree.map(lambda p, u: _numerics.cast(p + step * u, jnp.result_type(p)),
                      params, direction)


def _value_dtype(params: Any) -> Any:
  """The dtype of the scalars a search keeps: that of the first parameter leaf."""
  leaves = jax.tree.leaves(params)
  return jnp.result_type(leaves[0]) if leaves else _numerics.scalar_dtype()


def _objective_kwargs(where: str, value_fn: Any, extra: dict[str, Any]) -> dict[str, Any]:
  """The extra keyword arguments that are parameters of `value_fn`."""
  if not callable(value_fn):
    raise ValueError(f"{where}.update needs value_fn=, the objective (a function of the "
                     f"params returning a scalar), got {value_fn!r}.")
  try:
    names = inspect.signature(value_fn).parameters
  except (TypeError, ValueError):
    return {}
  return {k: v for k, v in extra.items() if k in names and k not in _RESERVED}


def _value_and_grad_at(updates: Any, params: Any, value_fn: Callable[..., Any],
                       kwargs: dict[str, Any], extra: dict[str, Any]) -> tuple[Any, Any]:
  """`f(θ)` and `∇f(θ)` from `extra` where given (see the module docstring), else computed."""
  value, grad = extra.get("value"), extra.get(GRAD_KEY)
  if grad is None or grad is updates:
    computed, grad = jax.value_and_grad(value_fn)(params, **kwargs)
    value = computed if value is None else value
  elif value is None:
    value = value_fn(params, **kwargs)
  return value, grad


def _search_start(where: str, updates: Any, params: Any, extra: dict[str, Any]
                  ) -> tuple[Any, Any, dict[str, Any], jax.Array, Any, Any]:
  """What both searches start from: the parameters, `value_fn` and the keyword arguments it
  takes, `f(θ)` (in the parameters' value dtype, also returned) and `∇f(θ)`."""
  params = require_params(where, params)
  value_fn: Any = extra.get("value_fn")      # checked callable by _objective_kwargs
  kwargs = _objective_kwargs(where, value_fn, extra)
  value0, grad0 = _value_and_grad_at(updates, params, value_fn, kwargs, extra)
  dt = _value_dtype(params)
  return params, value_fn, kwargs, jnp.asarray(value0, dt), grad0, dt


def _scaled(step: jax.Array, updates: Any) -> Any:
  return jax.tree.map(lambda u: _numerics.cast(step * u, u.dtype), updates)


# ---------------------------------------------------------------------------------------------
# The zoom line search.


class ZoomLinesearchInfo(NamedTuple):
  """What the last zoom line search did (for diagnostics)."""
  num_linesearch_steps: jax.Array  # int32: evaluations of the objective it made
  decrease_error: jax.Array        # > 0: the chosen step misses the sufficient decrease
  curvature_error: jax.Array       # > 0: the chosen step misses the curvature condition


class ScaleByZoomLinesearchState(NamedTuple):
  """State of `scale_by_zoom_linesearch` (Optax's field names)."""
  learning_rate: jax.Array         # the step size η the last search chose
  value: jax.Array                 # f(θ + η u): the objective at the new parameters
  grad: Any                        # ∇f(θ + η u), like params (see value_and_grad_from_state)
  info: ZoomLinesearchInfo


class _Zoom(NamedTuple):
  """The loop state of one zoom line search along `θ + η u`."""
  count: jax.Array            # evaluations so far
  stepsize: jax.Array         # the last η tried, with its value, gradient and slope f'(η)
  value: jax.Array
  grad: Any
  slope: jax.Array
  decrease_error: jax.Array
  curvature_error: jax.Array
  interval_found: jax.Array   # bool: phase 2 (zooming into [low, high]) has begun
  done: jax.Array             # bool: both conditions hold at `stepsize`
  failed: jax.Array           # bool: out of evaluations or of interval
  low: jax.Array              # the bracket: f(low) ≤ f(high), not low < high
  value_low: jax.Array
  slope_low: jax.Array
  high: jax.Array
  value_high: jax.Array
  slope_high: jax.Array
  cubic_ref: jax.Array        # the third point of the cubic interpolation
  value_cubic_ref: jax.Array
  safe_stepsize: jax.Array    # the best η with sufficient decrease seen (0: none yet)
  safe_value: jax.Array
  safe_grad: Any


def _cubic_minimizer(a, fa, fpa, b, fb, c, fc):
  """The critical point of the cubic through (a, fa), (b, fb), (c, fc) with slope fpa at a
  (NaN when there is none)."""
  db, dc = b - a, c - a
  rb, rc = fb - fa - fpa * db, fc - fa - fpa * dc
  denom = (db * dc) ** 2 * (db - dc)
  cubic = (dc ** 2 * rb - db ** 2 * rc) / denom
  square = (-dc ** 3 * rb + db ** 3 * rc) / denom
  return a + (-square + jnp.sqrt(square * square - 3.0 * cubic * fpa)) / (3.0 * cubic)


def _quadratic_minimizer(a, fa, fpa, b, fb):
  """The critical point of the parabola through (a, fa), (b, fb) with slope fpa at a."""
  db = b - a
  curvature = (fb - fa - fpa * db) / db ** 2
  return a - fpa / (2.0 * curvature)


@transform(hyperparams=("max_learning_rate", "tol", "increase_factor", "slope_rtol",
                        "curv_rtol", "approx_dec_rtol", "stepsize_precision"))
def scale_by_zoom_linesearch(max_linesearch_steps: int, max_learning_rate: float | None = None,
                             tol: float = 0.0, increase_factor: float = 2.0,
                             slope_rtol: float = 1e-4, curv_rtol: float = 0.9,
                             approx_dec_rtol: float | None = 1e-6,
                             stepsize_precision: float = 1e-5,
                             initial_guess_strategy: str = "keep", *,
                             verbose: bool = False) -> GradientTransformation:
  """Scales the direction by a step size satisfying the strong Wolfe conditions: `u ← η u`.

  With `φ(η) = f(θ + η u)`, finds `η` with sufficient decrease
  `φ(η) ≤ φ(0) + c₁ η φ'(0) + tol` and small curvature `|φ'(η)| ≤ c₂ |φ'(0)| + tol`
  (Nocedal & Wright's Algorithms 3.5 and 3.6: grow `η` by `increase_factor` until a bracket is
  found, then shrink it by cubic, quadratic or bisection steps). Near a minimizer, where
  `φ(η) ≤ φ(0) + c₃|φ(0)|`, the sufficient decrease may instead be Hager & Zhang's approximate
  one, `φ'(η) ≤ (2c₁ − 1) φ'(0)`, which resolves differences down to machine precision
  (`approx_dec_rtol=None` turns it off). When the conditions cannot be met in
  `max_linesearch_steps` evaluations, the best step with sufficient decrease is taken (η = 0
  when there is none and the objective is not finite). Equal to
  `optax.scale_by_zoom_linesearch`.

  `update(updates, state, params, *, value_fn, value=None, grad=None, **kw)`: see the module
  `gradxform._transforms.linesearch` for what `grad` is in a chain. The state keeps `f` and `∇f`
  at the new parameters, which `gx.value_and_grad_from_state` hands to the next step.

  Args:
    max_linesearch_steps: the most evaluations of `f` per search (≥ 1).
    max_learning_rate: the largest η tried (None: no bound).
    tol: slack ε ≥ 0 on both conditions.
    increase_factor: growth of η while looking for a bracket (> 1).
    slope_rtol: c₁ in (0, 1), of the sufficient decrease.
    curv_rtol: c₂ > 0, of the curvature condition (`jnp.inf` turns it off).
    approx_dec_rtol: c₃ ≥ 0, or None for the Armijo condition alone.
    stepsize_precision: a bracket shorter than this ends the search on the best step with
      sufficient decrease found.
    initial_guess_strategy: `'one'` starts at η = 1 (Newton-like directions, L-BFGS);
      `'keep'` at the last step size (gradient directions).
    verbose: print diagnostics when a search fails.

  State: `ScaleByZoomLinesearchState(learning_rate, value, grad, info)`.

  Example:
    >>> f = lambda p: jnp.sum((p["w"] - 1.0) ** 2) + jnp.sum(p["b"] ** 2)
    >>> tx = gx.chain(gx.sgd(1.0), gx.scale_by_zoom_linesearch(max_linesearch_steps=15))
    >>> value, grad = jax.value_and_grad(f)(params)
    >>> updates, state = tx.update(grad, tx.init(params), params, value=value, grad=grad,
    ...                            value_fn=f)
    >>> float(state[1].learning_rate)     # η = 1/2 minimises this quadratic along −∇f
    0.5
    >>> float(f(gx.apply_updates(params, updates)))
    0.0

  References:
    Nocedal & Wright, "Numerical optimization", Springer 1999, Algorithms 3.5 and 3.6;
    Hager & Zhang, "Algorithm 851: CG_DESCENT, a conjugate gradient method with guaranteed
    descent", ACM TOMS 2006 (https://doi.org/10.1145/1132973.1132979).
  """
  where = "scale_by_zoom_linesearch"
  max_steps = _check.integer(where, "max_linesearch_steps", max_linesearch_steps, minimum=1)
  if max_learning_rate is not None:
    max_learning_rate = _check.positive(where, "max_learning_rate", max_learning_rate)
  tol = _check.non_negative(where, "tol", tol)
  increase_factor = _check.at_least(where, "increase_factor", increase_factor, 1.0)
  slope_rtol = _check.positive(where, "slope_rtol", slope_rtol)
  curv_rtol = _check.positive(where, "curv_rtol", curv_rtol)
  if approx_dec_rtol is not None:
    approx_dec_rtol = _check.non_negative(where, "approx_dec_rtol", approx_dec_rtol)
  precision = _check.non_negative(where, "stepsize_precision", stepsize_precision)
  _check.one_of(where, "initial_guess_strategy", initial_guess_strategy, ("one", "keep"))

  def init(params):
    dt = _value_dtype(params)
    inf = jnp.asarray(jnp.inf, dt)
    return ScaleByZoomLinesearchState(
        learning_rate=jnp.asarray(1.0, dt), value=inf,
        grad=jax.tree.map(jnp.zeros_like, params),
        info=ZoomLinesearchInfo(num_linesearch_steps=_numerics.zero_count(),
                                decrease_error=inf, curvature_error=inf))

  def decrease_error(step, value, slope, value0, slope0):
    error = value - value0 - slope_rtol * step * slope0
    if approx_dec_rtol is not None:
      approx = jnp.maximum(slope - (2 * slope_rtol - 1.0) * slope0,
                           value - value0 - approx_dec_rtol * jnp.abs(value0))
      error = jnp.minimum(approx, error)
    error = jnp.maximum(error, 0.0)
    return jnp.where(jnp.isnan(error), jnp.inf, error)

  def curvature_error(slope, slope0):
    error = jnp.maximum(jnp.abs(slope) - curv_rtol * jnp.abs(slope0), 0.0)
    return jnp.where(jnp.isnan(error), jnp.inf, error)

  def update(updates, state, params=None, **extra):
    params, value_fn, kwargs, value0, grad0, dt = _search_start(where, updates, params, extra)
    grad0 = jax.tree.map(lambda a, p: _numerics.cast(jnp.asarray(a), jnp.result_type(p)),
                         grad0, params)
    slope0 = _numerics.cast(_vdot(updates, grad0), dt)
    value_and_grad = jax.value_and_grad(value_fn)
    if initial_guess_strategy == "one":
      guess = jnp.asarray(1.0, dt)
    else:
      guess = _numerics.cast(state.learning_rate, dt)
    zero = jnp.asarray(0.0, dt)
    false = jnp.asarray(False)

    def evaluate(step):
      v, g = value_and_grad(_along(params, step, updates), **kwargs)
      v = _numerics.cast(jnp.asarray(v), dt)
      g = jax.tree.map(lambda a, p: _numerics.cast(a, jnp.result_type(p)), g, params)
      s = _numerics.cast(_vdot(g, updates), dt)
      return v, g, s, decrease_error(step, v, s, value0, slope0), curvature_error(s, slope0)

    def bracket_step(z):
      """Phase 1: the first η is the guess, then grow η until [low, high] holds a good step."""
      step = jnp.where(z.count == 0, guess, increase_factor * z.stepsize)
      if max_learning_rate is not None:
        at_max = step >= max_learning_rate
        step = jnp.minimum(step, max_learning_rate)
      else:
        at_max = false
      return step, at_max

    def zoom_step(z):
      """Phase 2: a cubic, else quadratic, else bisection point strictly inside the bracket."""
      width = jnp.abs(z.high - z.low)
      left, right = jnp.minimum(z.low, z.high), jnp.maximum(z.low, z.high)
      cubic = _cubic_minimizer(z.low, z.value_low, z.slope_low, z.high, z.value_high,
                               z.cubic_ref, z.value_cubic_ref)
      quad = _quadratic_minimizer(z.low, z.value_low, z.slope_low, z.high, z.value_high)
      cubic_ok = (cubic > left + 0.2 * width) & (cubic < right - 0.2 * width)
      quad_ok = (quad > left + 0.1 * width) & (quad < right - 0.1 * width)
      step = jnp.where(cubic_ok, cubic, jnp.where(quad_ok, quad, (z.low + z.high) / 2.0))
      return step, width <= precision

    def body(z):
      zooming = z.interval_found
      grow, at_max = bracket_step(z)
      shrink, too_narrow = zoom_step(z)
      step = jnp.where(zooming, shrink, grow)
      v, g, s, dec, curv = evaluate(step)
      error = jnp.maximum(dec, curv)
      good = error <= tol

      # The best step with sufficient decrease so far (phase 1: the latest such step).
      keep = (dec <= tol) & (~zooming | (v < z.safe_value))
      safe_step, safe_value = jnp.where(keep, step, z.safe_stepsize), jnp.where(
          keep, v, z.safe_value)
      safe_grad = jax.tree.map(lambda a, b: jnp.where(keep, a, b), g, z.safe_grad)

      # Phase 1: the bracket is [previous η, η] (or reversed) once η is too far.
      high_is_new = (dec > 0.0) | ((v >= z.value) & (z.count > 0))
      low_is_new = (s >= 0.0) & ~high_is_new
      found = high_is_new | low_is_new | good
      b_low = jnp.where(low_is_new, jnp.stack([step, v, s]), jnp.stack([z.stepsize, z.value,
                                                                        z.slope]))
      b_high = jnp.where(low_is_new, jnp.stack([z.stepsize, z.value, z.slope]),
                         jnp.stack([step, v, s]))
      b_done = good | (at_max & ~found)

      # Phase 2: the new point replaces high, or low (then high may become the old low).
      high_is_mid = (dec > 0.0) | (v >= z.value_low)
      high_is_low = (s * (z.high - z.low) >= 0.0) & ~high_is_mid
      old_low = jnp.stack([z.low, z.value_low, z.slope_low])
      old_high = jnp.stack([z.high, z.value_high, z.slope_high])
      mid = jnp.stack([step, v, s])
      z_high = jnp.where(high_is_mid, mid, jnp.where(high_is_low, old_low, old_high))
      z_low = jnp.where(high_is_mid, old_low, mid)
      z_ref = jnp.where(high_is_mid | high_is_low, old_high[:2], old_low[:2])
      z_failed = (too_narrow & (safe_step > 0.0)) & ~good

      low = jnp.where(zooming, z_low, b_low)
      high = jnp.where(zooming, z_high, b_high)
      ref = jnp.where(zooming, z_ref, b_low[:2])
      done = jnp.where(zooming, good, b_done)
      failed = (((z.count + 1 >= max_steps) & ~done) | (zooming & z_failed))
      out = _Zoom(count=_numerics.safe_increment(z.count), stepsize=step, value=v, grad=g,
                  slope=s, decrease_error=dec, curvature_error=curv,
                  interval_found=jnp.where(zooming, z.interval_found, found), done=done,
                  failed=failed, low=low[0], value_low=low[1], slope_low=low[2], high=high[0],
                  value_high=high[1], slope_high=high[2], cubic_ref=ref[0],
                  value_cubic_ref=ref[1], safe_stepsize=safe_step, safe_value=safe_value,
                  safe_grad=safe_grad)
      return jax.lax.cond(failed, fall_back, lambda x: x, out)

    def fall_back(z):
      """Out of evaluations: the best step with sufficient decrease, if any was found (or η=0
      when the last step left the domain of f)."""
      use_safe = (z.safe_stepsize > 0.0) | jnp.isinf(z.decrease_error)
      if verbose:
        jax.debug.print("scale_by_zoom_linesearch: no step size met both conditions in "
                        "{n} evaluations (slope at 0: {s0}); decrease error {d}, curvature "
                        "error {c}; using the step size {e}.", n=z.count, s0=slope0,
                        d=z.decrease_error, c=z.curvature_error,
                        e=jnp.where(use_safe, z.safe_stepsize, z.stepsize))
      return z._replace(
          stepsize=jnp.where(use_safe, z.safe_stepsize, z.stepsize),
          value=jnp.where(use_safe, z.safe_value, z.value),
          grad=jax.tree.map(lambda a, b: jnp.where(use_safe, a, b), z.safe_grad, z.grad))

    start = _Zoom(count=_numerics.zero_count(), stepsize=zero, value=value0, grad=grad0,
                  slope=slope0, decrease_error=jnp.asarray(jnp.inf, dt),
                  curvature_error=jnp.asarray(jnp.inf, dt), interval_found=false, done=false,
                  failed=false, low=zero, value_low=value0, slope_low=slope0, high=zero,
                  value_high=value0, slope_high=slope0, cubic_ref=zero, value_cubic_ref=value0,
                  safe_stepsize=zero, safe_value=value0, safe_grad=grad0)
    end = jax.lax.while_loop(lambda z: ~(z.done | z.failed), body, start)
    info = ZoomLinesearchInfo(num_linesearch_steps=end.count, decrease_error=end.decrease_error,
                              curvature_error=end.curvature_error)
    new_state = ScaleByZoomLinesearchState(
        learning_rate=_numerics.cast(end.stepsize, jnp.result_type(state.learning_rate)),
        value=_numerics.cast(end.value, jnp.result_type(state.value)),
        grad=jax.tree.map(lambda a, b: _numerics.cast(a, jnp.result_type(b)), end.grad,
                          state.grad),
        info=info)
    return _scaled(end.stepsize, updates), new_state

  return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------
# The backtracking line search.


class BacktrackingLinesearchInfo(NamedTuple):
  """What the last backtracking line search did (for diagnostics)."""
  num_linesearch_steps: jax.Array  # int32: evaluations of the objective it made
  decrease_error: jax.Array        # > 0: the chosen step misses the sufficient decrease


class ScaleByBacktrackingLinesearchState(NamedTuple):
  """State of `scale_by_backtracking_linesearch` (Optax's field names)."""
  learning_rate: jax.Array         # the step size η the last search chose
  value: jax.Array                 # f at the last step size tried
  grad: Any                        # ∇f there, like params (None unless store_grad)
  info: BacktrackingLinesearchInfo


@transform(hyperparams=("slope_rtol", "decrease_factor", "increase_factor", "max_learning_rate",
                        "atol", "rtol"))
def scale_by_backtracking_linesearch(max_backtracking_steps: int, slope_rtol: float = 1e-4,
                                     decrease_factor: float = 0.8, increase_factor: float = 1.5,
                                     max_learning_rate: float = 1.0, atol: float = 0.0,
                                     rtol: float = 0.0, *, store_grad: bool = False,
                                     verbose: bool = False) -> GradientTransformation:
  """Scales the direction by a step size with sufficient decrease (Armijo): `u ← η u`.

  Starts from `η = min(increase_factor · η_prev, max_learning_rate)` and multiplies η by
  `decrease_factor` until `f(θ + η u) ≤ (1 + rtol) f(θ) + c η ⟨u, ∇f(θ)⟩ + atol`, at most
  `max_backtracking_steps` times; η = 0 if the objective is still not finite. Equal to
  `optax.scale_by_backtracking_linesearch`.

  `update(updates, state, params, *, value_fn, value=None, grad=None, **kw)`, as
  `scale_by_zoom_linesearch`. With `store_grad=True` the state keeps `∇f` at the new
  parameters for `gx.value_and_grad_from_state` (one gradient evaluation per search).

  Args:
    max_backtracking_steps: the most reductions of η per search (≥ 0).
    slope_rtol: c ≥ 0, the fraction of the linear decrease required.
    decrease_factor: the factor in (0, 1) that shrinks η.
    increase_factor: ≥ 1, grows the last η into the next search's first guess.
    max_learning_rate: the largest η tried (> 0).
    atol, rtol: absolute and relative slack ≥ 0 of the condition.
    store_grad: keep the gradient at the accepted step in the state.
    verbose: print diagnostics when a search fails.

  State: `ScaleByBacktrackingLinesearchState(learning_rate, value, grad, info)`.

  Example:
    >>> f = lambda p: jnp.sum((p["w"] - 1.0) ** 2) + jnp.sum(p["b"] ** 2)
    >>> tx = gx.chain(gx.sgd(1.0), gx.scale_by_backtracking_linesearch(15))
    >>> value, grad = jax.value_and_grad(f)(params)
    >>> updates, state = tx.update(grad, tx.init(params), params, value=value, grad=grad,
    ...                            value_fn=f)
    >>> round(float(state[1].learning_rate), 4)       # 1 is too long; 0.8 decreases enough
    0.8

  References:
    Armijo, "Minimization of functions having Lipschitz continuous first partial
    derivatives", Pacific J. Math. 1966; Vaswani et al., "Painless stochastic gradient:
    interpolation, line-search, and convergence rates", NeurIPS 2019
    (https://arxiv.org/abs/1905.09997).
  """
  where = "scale_by_backtracking_linesearch"
  max_steps = _check.integer(where, "max_backtracking_steps", max_backtracking_steps, minimum=0)
  slope_rtol = _check.non_negative(where, "slope_rtol", slope_rtol)
  decrease_factor = _check.positive(where, "decrease_factor", decrease_factor)
  decrease_factor = _check.unit_interval(where, "decrease_factor", decrease_factor)
  increase_factor = _check.at_least(where, "increase_factor", increase_factor, 1.0)
  max_learning_rate = _check.positive(where, "max_learning_rate", max_learning_rate)
  atol = _check.non_negative(where, "atol", atol)
  rtol = _check.non_negative(where, "rtol", rtol)

  def init(params):
    dt = _value_dtype(params)
    inf = jnp.asarray(jnp.inf, dt)
    return ScaleByBacktrackingLinesearchState(
        learning_rate=jnp.asarray(1.0, dt), value=inf,
        grad=jax.tree.map(jnp.zeros_like, params) if store_grad else None,
        info=BacktrackingLinesearchInfo(num_linesearch_steps=_numerics.zero_count(),
                                        decrease_error=inf))

  def update(updates, state, params=None, **extra):
    params, value_fn, kwargs, value0, grad0, dt = _search_start(where, updates, params, extra)
    slope0 = _numerics.cast(_vdot(updates, grad0), dt)

    def body(carry):
      step, _, _, i = carry
      step = jnp.where(i > 0, decrease_factor * step, step)
      value = _numerics.cast(jnp.asarray(value_fn(_along(params, step, updates), **kwargs)), dt)
      error = value - (1.0 + rtol) * value0 - step * slope_rtol * slope0
      error = jnp.maximum(jnp.where(jnp.isnan(error), jnp.inf, error), 0.0)
      return step, value, error, i + 1

    first = jnp.minimum(increase_factor * state.learning_rate, max_learning_rate)
    start = (_numerics.cast(jnp.asarray(first), dt), value0, jnp.asarray(jnp.inf, dt),
             _numerics.zero_count())
    step, value, error, n = jax.lax.while_loop(
        lambda c: ~(c[2] <= atol) & (c[3] <= max_steps), body, start)
    grad = None
    if store_grad:
      grad = jax.grad(value_fn)(_along(params, step, updates), **kwargs)
      grad = jax.tree.map(lambda a, b: _numerics.cast(a, jnp.result_type(b)), grad, state.grad)
    if verbose:
      jax.debug.print("scale_by_backtracking_linesearch: decrease error {e} after {n} "
                      "evaluations at step size {s} (slope at 0: {s0}).", e=error, n=n, s=step,
                      s0=slope0)
    step = jnp.where(jnp.isinf(error), 0.0, step)
    new_state = ScaleByBacktrackingLinesearchState(
        learning_rate=_numerics.cast(step, jnp.result_type(state.learning_rate)),
        value=_numerics.cast(value, jnp.result_type(state.value)), grad=grad,
        info=BacktrackingLinesearchInfo(num_linesearch_steps=n, decrease_error=error))
    return _scaled(step, updates), new_state

  return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------
# Reusing the line search's last evaluation.


def _linesearch_states(state: Any) -> list[Any]:
  """The line-search states inside an optimizer state (tuples, NamedTuples, dicts, lists)."""
  found: list[Any] = []

  def walk(s: Any) -> None:
    if isinstance(s, (ScaleByZoomLinesearchState, ScaleByBacktrackingLinesearchState)):
      found.append(s)
    elif isinstance(s, dict):
      for v in s.values():
        walk(v)
    elif isinstance(s, (tuple, list)):
      for v in s:
        walk(v)

  walk(state)
  return found


def value_and_grad_from_state(value_fn: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
  """`jax.value_and_grad(value_fn)` that reuses the value and gradient a line search stored.

  Returns `fn(params, *args, state, **kwargs) -> (value, grad)`: the line search in `state` has
  already evaluated `f` and `∇f` at the parameters it moved to, so when that stored value is
  finite it is returned as is; otherwise (the first step, or a search that left the domain)
  they are computed. For deterministic objectives only. Equal to
  `optax.value_and_grad_from_state`.

  Args:
    value_fn: the objective, `value_fn(params, *args, **kwargs)` a scalar.

  Raises `ValueError` (when called) unless `state` holds exactly one line-search state that
  keeps a gradient (`scale_by_zoom_linesearch`, or `scale_by_backtracking_linesearch` with
  `store_grad=True`).

  Example:
    >>> f = lambda p: jnp.sum((p["w"] - 1.0) ** 2) + jnp.sum(p["b"] ** 2)
    >>> tx = gx.lbfgs()
    >>> state, value_and_grad = tx.init(params), gx.value_and_grad_from_state(f)
    >>> p = params
    >>> for _ in range(2):
    ...   value, grad = value_and_grad(p, state=state)
    ...   updates, state = tx.update(grad, state, p, value=value, grad=grad, value_fn=f)
    ...   p = gx.apply_updates(p, updates)
    >>> value, grad = value_and_grad(p, state=state)   # stored by the line search: no call
    >>> bool(value == state[2].value), bool(value < 1e-12)   # f(p) at L-BFGS's second iterate
    (True, True)

  References:
    Nocedal & Wright, "Numerical optimization", Springer 1999, ch. 3 (a Wolfe line search
    evaluates the gradient at the point it accepts); Optax's `value_and_grad_from_state`
    (https://github.com/google-deepmind/optax).
  """
  if not callable(value_fn):
    raise ValueError(f"value_and_grad_from_state: value_fn must be a function, got {value_fn!r}")

  def value_and_grad(params: Any, *args: Any, state: Any, **kwargs: Any) -> tuple[Any, Any]:
    found = _linesearch_states(state)
    if len(found) != 1 or found[0].grad is None:
      what = ("none" if not found else f"{len(found)}" if len(found) > 1
              else "one that stores no gradient (store_grad=False)")
      raise ValueError(
          "value_and_grad_from_state: the optimizer state must hold exactly one line-search "
          f"state that keeps the gradient, found {what}. Use scale_by_zoom_linesearch (as "
          "lbfgs does) or scale_by_backtracking_linesearch(..., store_grad=True).")
    value, grad = found[0].value, found[0].grad

    def compute(p, a, kw):
      v, g = jax.value_and_grad(value_fn)(p, *a, **kw)
      return (_numerics.cast(jnp.asarray(v), value.dtype),
              _numerics.cast_like(g, grad))

    return jax.lax.cond(jnp.isfinite(value), lambda p, a, kw: (value, grad), compute,
                        params, args, kwargs)

  return value_and_grad
