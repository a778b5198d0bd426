"""YellowFin: momentum SGD whose momentum and step size tune themselves every step.

Zhang & Mitliagkas (2017) measure four scalars from the gradients alone (Algorithms 2-4 of the
paper, written below as one small function each) and solve a one-dimensional model of the
loss for the momentum μ and the step size α that minimise its expected squared distance to
the optimum after one step (Algorithm 1's `SingleStep`, `_single_step` below):

* curvature range `[h_min, h_max]`: the extremes of `h_t = ‖g_t‖²` over a sliding window of
  the last `window` steps, each smoothed by an EMA (`_curvature_range`);
* gradient variance `C = E‖g‖² − ‖E g‖²` (EMAs over steps, `_variance`; computed by West's
  weighted update, which gives the same number without the difference's cancellation);
* distance to the optimum `D`: an EMA of `E‖g‖ / E‖g‖²` (`_distance`).

Every EMA has decay β and is zero-debiased (divided by `1 − β^t`), as in the authors' code
(`zero_debias=True`); the paper's listings leave out the debiasing, under which the first
steps would see curvatures 1000 times too small. The tuned μ_t and α_t are smoothed by the
same debiased EMA before use. The scalars are kept in the promotion of the parameters' dtypes
with float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import GradientTransformation, next_count, step_count, transform, trees_checked
from gradxform._transforms.dog import scalar_dtype_of, squared_norm


class YellowFinEstimates(NamedTuple):
  """The debiased quantities of one YellowFin step (for inspection; recomputed every step)."""
  h_min: jax.Array     # smoothed lower end of the curvature range
  h_max: jax.Array     # smoothed upper end of the curvature range
  variance: jax.Array  # gradient variance C
  distance: jax.Array  # distance to the optimum D
  mu_t: jax.Array      # momentum tuned at this step (before smoothing)
  alpha_t: jax.Array   # step size tuned at this step (before smoothing)
  mu: jax.Array        # smoothed momentum, the one used
  alpha: jax.Array     # smoothed step size, the one used


class YellowFinState(NamedTuple):
  """State of `scale_by_yellowfin`. The `*_avg` scalars are EMAs before debiasing."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  window: jax.Array        # the last `window` values of h = ‖g‖² (slot t mod window)
  h_min_avg: jax.Array     # EMA of the window's minimum (of its log with `log_curvature`)
  h_max_avg: jax.Array     # EMA of the window's maximum (of its log with `log_curvature`)
  norm_sq_avg: jax.Array   # EMA of ‖g‖²
  norm_avg: jax.Array      # EMA of ‖g‖
  grad_mean: Any           # debiased EMA of g, like params
  var_sum: jax.Array       # C · (1 − β^t): the EMA-weighted sum of ‖g − mean‖² (West's update)
  dist_avg: jax.Array      # EMA of E‖g‖ / E‖g‖²
  mu_avg: jax.Array        # EMA of the tuned momentum μ_t
  alpha_avg: jax.Array     # EMA of the tuned step size α_t
  trace: Any               # momentum buffer v, like params
  estimates: YellowFinEstimates  # this step's debiased values


def _curvature_range(window: jax.Array, t: jax.Array, h_min_avg: jax.Array,
                     h_max_avg: jax.Array, beta: Any, debias: jax.Array, log: bool):
  """Algorithm 2: EMAs of the extremes of the valid part of the window (its first min(t, w)
  slots), debiased; with `log`, the EMAs are of log h and the result is their exponential."""
  valid = jnp.arange(window.shape[0]) < t
  lo = jnp.min(jnp.where(valid, window, jnp.inf))
  hi = jnp.max(jnp.where(valid, window, -jnp.inf))
  if log:
    tiny = jnp.finfo(window.dtype).tiny
    lo, hi = jnp.log(jnp.maximum(lo, tiny)), jnp.log(jnp.maximum(hi, tiny))
  h_min_avg = _numerics.ema(h_min_avg, lo, beta)
  h_max_avg = _numerics.ema(h_max_avg, hi, beta)
  h_min, h_max = h_min_avg / debias, h_max_avg / debias
  if log:
    h_min, h_max = jnp.exp(h_min), jnp.exp(h_max)
  return h_min_avg, h_max_avg, h_min, h_max


def _variance(updates: Any, grad_mean: Any, var_sum: jax.Array, beta: Any, debias: jax.Array,
              debias_before: jax.Array):
  """Algorithm 3: `C = E‖g‖² − ‖E g‖²` over debiased EMAs, computed without the cancellation
  of that difference (which in float32 loses all digits once C ≪ E‖g‖²) by West's weighted
  update of the mean m̂ and of `S = (1 − β^t) C`: with `δ = g − m̂_{t−1}`,
  `m̂_t = m̂_{t−1} + (1 − β)/(1 − β^t) δ` and
  `S_t = β S_{t−1} + β (1 − β) (1 − β^{t−1})/(1 − β^t) ‖δ‖²` (exactly 0 at the first step)."""
  dtype = var_sum.dtype
  gain = ((1.0 - beta) / debias).astype(dtype)
  deltas = jax.tree.map(lambda g, m: _numerics.cast(g, dtype) - _numerics.cast(m, dtype),
                        updates, grad_mean)
  new_mean = jax.tree.map(lambda m, d: _numerics.cast(_numerics.cast(m, dtype) + gain * d,
                                                      m.dtype), grad_mean, deltas)
  weight = (beta * (1.0 - beta) * debias_before / debias).astype(dtype)
  var_sum = beta * var_sum + weight * squared_norm(deltas, dtype)
  return new_mean, var_sum, var_sum / debias


def _distance(norm_avg: jax.Array, norm_sq_avg: jax.Array, dist_avg: jax.Array, beta: Any,
              debias: jax.Array):
  """Algorithm 4: `D = E[E‖g‖ / E‖g‖²]` (the inner EMAs share their bias, which cancels)."""
  ratio = jnp.where(norm_sq_avg > 0, norm_avg / jnp.where(norm_sq_avg > 0, norm_sq_avg, 1.0),
                    0.0)
  dist_avg = _numerics.ema(dist_avg, ratio, beta)
  return dist_avg, dist_avg / debias


def _cubic_root(p: jax.Array) -> jax.Array:
  """The root x ∈ [0, 1] of `p x = (1 − x)³`, i.e. y = x − 1 solves `y³ + p y + p = 0`.

  Vieta's substitution, as in the authors' code, then two Newton steps on `(1 − x)³ − p x`:
  for large p the root is ≈ 1/p while Vieta's two terms are ≈ √(p/3) and cancel, losing
  about p^1.5 ulps; the Newton steps restore full relative accuracy. x = 1 at p = 0 and x = 0
  at p = ∞ (no variance: the step that minimises only the distance term).
  """
  ok = (p > 0) & jnp.isfinite(p)
  ps = jnp.where(ok, p, 1.0)
  w3 = (-jnp.sqrt(ps * ps + 4.0 / 27.0 * ps * ps * ps) - ps) / 2.0
  w = jnp.sign(w3) * jnp.cbrt(jnp.abs(w3))
  x = jnp.clip(w - ps / (3.0 * w) + 1.0, 0.0, 1.0)
  for _ in range(2):
    x = x + ((1.0 - x) ** 3 - ps * x) / (3.0 * jnp.square(1.0 - x) + ps)
  return jnp.where(ok, x, jnp.where(p > 0, 0.0, 1.0))


def _single_step(h_min: jax.Array, h_max: jax.Array, variance: jax.Array,
                 distance: jax.Array):
  """Algorithm 1's SingleStep: `√μ*` minimises `μ D² + (1 − √μ)⁴ C / h_min²`; then
  `μ_t = max(μ*, ((√κ − 1)/(√κ + 1))²)` with κ = h_max/h_min, `α_t = (1 − √μ_t)² / h_min`."""
  pos = h_min > 0
  h_safe = jnp.where(pos, h_min, 1.0)
  p = jnp.where(variance > 0,
                jnp.square(distance * h_min) / (2.0 * jnp.where(variance > 0, variance, 1.0)),
                jnp.inf)
  root = _cubic_root(p)
  sqrt_kappa = jnp.sqrt(jnp.where(pos, jnp.maximum(h_max / h_safe, 1.0), 1.0))
  mu_t = jnp.maximum(jnp.square(root), jnp.square((sqrt_kappa - 1.0) / (sqrt_kappa + 1.0)))
  alpha_t = jnp.where(pos, jnp.square(1.0 - jnp.sqrt(mu_t)) / h_safe, 0.0)
  return mu_t, alpha_t


@transform(shares_count=True, hyperparams=("beta", "mu_factor"))
def scale_by_yellowfin(beta: float = 0.999, window: int = 20, mu_factor: float = 1.0, *,
                       log_curvature: bool = False,
                       state_dtype: Any = None) -> GradientTransformation:
  """YellowFin's step: `v ← μ v + g`, output `α v`, with μ and α tuned from the gradients.

  Each step measures `h_min, h_max` (EMAs of the extremes of ‖g‖² over the last `window`
  steps), `C` (gradient variance) and `D` (distance to the optimum), solves
  `√μ* = argmin_x x² D² + (1 − x)⁴ C / h_min²` (a cubic), and tunes
  `μ_t = max(μ*, ((√κ − 1)/(√κ + 1))²)` with `κ = h_max/h_min`,
  `α_t = (1 − √μ_t)² / h_min`. The μ and α used are debiased EMAs (decay β) of μ_t and α_t;
  the momentum buffer is multiplied by `mu_factor · μ`. All EMAs are zero-debiased, as in the
  authors' code (the paper's listings omit it). The momentum is torch's and the authors'
  convention, `v ← μ v + g` with α applied outside (the paper writes α inside the buffer).
  No sign flip: follow it with `scale_by_learning_rate`. Optax has no YellowFin; the
  authors' code adds clipping and warm-up heuristics that are left out here.

  Args:
    beta: β in [0, 1), the decay of every EMA (0.999 in the paper).
    window: the number of recent ‖g‖² the curvature range looks at, ≥ 1 (20 in the paper).
    mu_factor: a multiplier ≥ 0 of the tuned momentum (the authors' code; 1: as tuned).
    log_curvature: smooth log h_min and log h_max instead of h_min and h_max (the default of
      the authors' PyTorch code; the paper smooths the values).
    state_dtype: dtype of `grad_mean` and `trace` (None: each parameter's dtype).

  State: `YellowFinState(count, window, h_min_avg, h_max_avg, norm_sq_avg, norm_avg, grad_mean,
  var_sum, dist_avg, mu_avg, alpha_avg, trace, estimates)`; `estimates` holds this step's debiased
  `h_min, h_max, variance, distance, mu_t, alpha_t, mu, alpha`.

  Example:
    >>> tx = gx.scale_by_yellowfin()
    >>> updates, state = tx.update(grads, tx.init(params))
    >>> float(state.estimates.mu), round(float(state.estimates.alpha), 4)  # C = 0, κ = 1
    (0.0, 0.6667)
    >>> jnp.round(updates["b"], 4)            # α g with α = 1/‖g‖² = 1/1.5
    Array([0.3333, 0.3333], dtype=float32)

  References:
    Zhang & Mitliagkas, "YellowFin and the art of momentum tuning", SysML 2019
    (https://arxiv.org/abs/1706.03471).
  """
  where = "scale_by_yellowfin"
  beta = _check.unit_interval(where, "beta", beta)
  window = _check.integer(where, "window", window, minimum=1)
  mu_factor = _check.non_negative(where, "mu_factor", mu_factor)
  state_dtype = _check.state_dtype(where, state_dtype, int8=False)

  def init(params):
    dtype = scalar_dtype_of(params)
    zero = jnp.zeros([], dtype)
    return YellowFinState(
        count=_numerics.zero_count(), window=jnp.zeros([window], dtype), h_min_avg=zero,
        h_max_avg=zero, norm_sq_avg=zero, norm_avg=zero,
        grad_mean=_numerics.state_zeros(params, state_dtype), var_sum=zero, dist_avg=zero,
        mu_avg=zero, alpha_avg=zero, trace=_numerics.state_zeros(params, state_dtype),
        estimates=YellowFinEstimates(*([zero] * 8)))

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.trace, updates)
    count = step_count(state, extra)
    t = count + 1
    dtype = state.norm_sq_avg.dtype
    debias = _numerics.one_minus_decay_power(beta, t).astype(dtype)
    debias_before = _numerics.one_minus_decay_power(beta, count).astype(dtype)

    h = squared_norm(updates, dtype)
    win = jnp.asarray(state.window).at[count % window].set(h)
    h_min_avg, h_max_avg, h_min, h_max = _curvature_range(
        win, t, state.h_min_avg, state.h_max_avg, beta, debias, log_curvature)
    norm_sq_avg = _numerics.ema(state.norm_sq_avg, h, beta)
    norm_avg = _numerics.ema(state.norm_avg, jnp.sqrt(h), beta)
    grad_mean, var_sum, variance = _variance(updates, state.grad_mean, state.var_sum, beta,
                                             debias, debias_before)
    dist_avg, distance = _distance(norm_avg, norm_sq_avg, state.dist_avg, beta, debias)
    mu_t, alpha_t = _single_step(h_min, h_max, variance, distance)
    mu_avg = _numerics.ema(state.mu_avg, mu_t, beta)
    alpha_avg = _numerics.ema(state.alpha_avg, alpha_t, beta)
    mu, alpha = mu_avg / debias, alpha_avg / debias
    decay = mu_factor * mu

    def leaf(g, v):
      cd = _numerics.compute_dtype(g, v, decay)
      new_v = decay.astype(cd) * _numerics.cast(v, cd) + _numerics.cast(g, cd)
      return _numerics.cast(alpha.astype(cd) * new_v, g.dtype), _numerics.cast(new_v, v.dtype)

    out, trace = _tree.map_unzip(leaf, 2, updates, state.trace)
    estimates = YellowFinEstimates(h_min, h_max, variance, distance, mu_t, alpha_t, mu, alpha)
    def scalar(x):
      return jnp.asarray(x).astype(dtype)

    return out, YellowFinState(
        count=next_count(state, count), window=win, h_min_avg=scalar(h_min_avg),
        h_max_avg=scalar(h_max_avg), norm_sq_avg=scalar(norm_sq_avg), norm_avg=scalar(norm_avg),
        grad_mean=grad_mean, var_sum=scalar(var_sum), dist_avg=scalar(dist_avg),
        mu_avg=scalar(mu_avg), alpha_avg=scalar(alpha_avg), trace=trace,
        estimates=YellowFinEstimates(*[scalar(e) for e in estimates]))

  return GradientTransformation(init, update)
