"""Learning-rate-free Adam: D-Adaptation's and Prodigy's estimate `d` of the distance to the
solution, with the Adam moments it scales.

Each keeps one scalar `d`, a lower bound on `‖x₀ − x*‖` that only grows, estimated from the
inner products of the gradients with the step history; Adam's moments accumulate the gradients
weighted by the `d` of their step. The estimate and the moments are one transform, not two
parts of a chain: the estimate reads the moments' previous second moment (D-Adaptation) and
the moments and their ε are scaled by the current estimate (both), so neither can run
without the other's state.

The scalars (`d` and the weighted numerator) are kept in the promotion of the parameters'
dtypes with float32 (Optax: the parameters' lowest dtype). Where the denominator of the
estimate is zero (zero gradients so far) `d` is kept; Optax turns it into NaN. Inner products
and L1 norms are taken over the real view of complex parameters.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, ScalarOrSchedule, next_count,
                             require_params, step_count, transform, trees_checked)


def _tree_sum(terms: list[jax.Array], dtype: Any) -> jax.Array:
  """`Σ terms` of per-leaf scalars in `dtype` (0 for none), stacked behind a barrier: summed as
  a chain of scalar additions, XLA:CPU compiles in time quadratic in the number of leaves."""
  if not terms:
    return jnp.zeros([], dtype)
  return jnp.sum(jax.lax.optimization_barrier(jnp.stack([_numerics.cast(t, dtype)
                                                         for t in terms])))


def _vdot(a: Any, b: Any, dtype: Any) -> jax.Array:
  """`Σ_leaves ⟨a, b⟩` in `dtype`."""
  return _tree_sum([jnp.sum(_numerics.cast(x, dtype) * _numerics.cast(y, dtype))
                    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))], dtype)


def _l1(tree: Any, dtype: Any) -> jax.Array:
  """`Σ_leaves Σ |x|` in `dtype`."""
  return _tree_sum([jnp.sum(jnp.abs(_numerics.cast(x, dtype))) for x in jax.tree.leaves(tree)],
                   dtype)


def _grown(d: jax.Array, estimate: jax.Array, denominator: jax.Array) -> jax.Array:
  """`max(d, estimate)`, keeping `d` where the estimate's denominator is zero (0/0)."""
  return jnp.where(denominator > 0, jnp.maximum(d, estimate), d)


def _betas(where: str, betas: Any) -> tuple[Any, Any]:
  if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
    raise ValueError(f"{where}: betas must be a pair (b1, b2), got {betas!r}")
  return (_check.unit_interval(where, "betas[0]", betas[0]),
          _check.unit_interval(where, "betas[1]", betas[1]))


def _schedule_value(learning_rate: ScalarOrSchedule, count: jax.Array) -> Any:
  return learning_rate(count) if callable(learning_rate) else learning_rate


def _adam_correction(b1: Any, b2: Any, count: jax.Array) -> jax.Array:
  """`√(1 − β2^t) / (1 − β1^t)` at step `t = count + 1`."""
  return (jnp.sqrt(_numerics.one_minus_decay_power(b2, count + 1))
          / _numerics.one_minus_decay_power(b1, count + 1))


def _adam_step_inputs(where: str, learning_rate: ScalarOrSchedule, b1: Any, b2: Any,
                      updates: Any, state: Any, params: Any, extra: dict[str, Any]
                      ) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
  """Prodigy's and D-Adapt Adam's step inputs: the parameters, the step count, the bias
  correction `√(1 − β2^t) / (1 − β1^t)` and `d γ` times it (`dlr`), in `d`'s dtype."""
  params = require_params(where, params)
  if not trees_checked(extra):
    _tree.check_updates(where, state.mu, updates)
  count = step_count(state, extra)
  d = state.estim_lr
  corr = _adam_correction(b1, b2, count).astype(d.dtype)
  dlr = d * jnp.asarray(_schedule_value(learning_rate, count), d.dtype) * corr
  return params, count, corr, dlr


class ProdigyState(NamedTuple):
  """State of `scale_by_prodigy`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                    # EMA of d·g, like params
  nu: Any                    # EMA of (d·g)², like params
  grad_sum: Any              # s: β3-discounted sum of the d-and-γ-weighted gradients
  params0: Any               # the starting point x₀, like params (in the params' dtypes)
  estim_lr: jax.Array        # d: the distance estimate (starts at estim_lr0)
  numerator_weighted: jax.Array   # r: β3-discounted Σ weighted ⟨g, x₀ − x⟩


@transform(shares_count=True, hyperparams=("learning_rate", "beta3", "eps", "estim_lr0",
                                           "estim_lr_coef", "weight_decay"))
def scale_by_prodigy(learning_rate: ScalarOrSchedule = 1.0,
                     betas: tuple[float, float] = (0.9, 0.999), beta3: float | None = None,
                     eps: float = 1e-8, estim_lr0: float = 1e-6, estim_lr_coef: float = 1.0,
                     weight_decay: float = 0.0, *,
                     safeguard_warmup: bool = False) -> GradientTransformation:
  """Prodigy's direction: `d ĉ (m / (√v + d ε) + λ θ)`, with `d` its distance estimate.

  With the step's schedule value γ, `ĉ = √(1 − β2^t)/(1 − β1^t)` and `d` the current
  estimate: `m ← β1 m + (1 − β1) d g`, `v ← β2 v + (1 − β2) d² g²`,
  `s ← β3 s + (d γ ĉ) d g / d₀` (`d² g / d₀` with `safeguard_warmup`),
  `r ← β3 r + (d/d₀) d γ ĉ ⟨g, x₀ − x⟩`, then `d ← max(d, coef · r / ‖s‖₁)` and the output
  is `d_old ĉ (m / (√v + d_new ε) + λθ)`. It does not apply γ: follow it with
  `scale_by_learning_rate(γ)` (as `gx.prodigy` does); γ enters the estimate's weights.
  `params` are required (x₀ is the first `params` seen by `init`).

  Args:
    learning_rate: the schedule γ (or a constant) the step is scaled by afterwards; it
      weights the estimate.
    betas: (β1, β2) in [0, 1), Adam's decays.
    beta3: β3 in [0, 1), the decay of the estimate's sums (None: √β2).
    eps: ε ≥ 0, scaled by `d`, outside the root.
    estim_lr0: d₀ > 0, the starting (under-)estimate.
    estim_lr_coef: coef > 0, the factor on every new estimate.
    weight_decay: λ ≥ 0, decoupled (scaled by `d ĉ` and then by γ).
    safeguard_warmup: leave γ out of `s` (for warm-up schedules that start near 0).

  State: `ProdigyState(count, mu, nu, grad_sum, params0, estim_lr, numerator_weighted)`.

  Example:
    >>> tx = gx.scale_by_prodigy()
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"] / 1e-6, 3)     # d₀ ĉ m/√v = d₀ · √0.001/0.1 · 0.1/√0.001
    Array([1., 1.], dtype=float32)

  References:
    Mishchenko & Defazio, "Prodigy: an expeditiously adaptive parameter-free learner", ICML
    2024 (https://arxiv.org/abs/2306.06101).
  """
  where = "scale_by_prodigy"
  _check.learning_rate(where, learning_rate)
  b1, b2 = _betas(where, betas)
  if beta3 is None:
    beta3 = b2 ** 0.5
  beta3 = _check.unit_interval(where, "beta3", beta3)
  eps = _check.non_negative(where, "eps", eps)
  estim_lr0 = _check.positive(where, "estim_lr0", estim_lr0)
  coef = _check.positive(where, "estim_lr_coef", estim_lr_coef)
  weight_decay = _check.non_negative(where, "weight_decay", weight_decay)

  def init(params):
    sdt = _numerics.compute_dtype(*jax.tree.leaves(params))
    return ProdigyState(count=_numerics.zero_count(), mu=_numerics.state_zeros(params),
                        nu=_numerics.state_zeros(params), grad_sum=_numerics.state_zeros(params),
                        params0=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
                        estim_lr=jnp.asarray(estim_lr0, sdt),
                        numerator_weighted=jnp.zeros([], sdt))

  def update(updates, state, params=None, **extra):
    params, count, corr, dlr = _adam_step_inputs(where, learning_rate, b1, b2, updates, state,
                                                 params, extra)
    d = state.estim_lr
    sdt = d.dtype
    inner = _vdot(updates, jax.tree.map(lambda p0, p: p0 - p, state.params0, params), sdt)
    s_weight = d * d / estim_lr0 if safeguard_warmup else dlr * d / estim_lr0

    def moments(g, m, v, s):
      cd = _numerics.compute_dtype(g, m, v, s)
      dg = d.astype(cd) * _numerics.cast(g, cd)
      new_m = _numerics.ema(m, dg, b1)
      new_v = _numerics.ema(v, dg, b2, squared=True)
      new_s = beta3 * _numerics.cast(s, cd) + s_weight.astype(cd) * _numerics.cast(g, cd)
      return new_m, new_v, new_s

    mu, nu, grad_sum = _tree.map_unzip(moments, 3, updates, state.mu, state.nu, state.grad_sum)
    numerator = beta3 * state.numerator_weighted + (d / estim_lr0) * dlr * inner
    denominator = _l1(grad_sum, sdt)
    new_d = _grown(d, coef * numerator / denominator, denominator)
    step = d * corr

    def direction(g, m, v, p):
      cd = _numerics.compute_dtype(m, v)
      out = m / (jnp.sqrt(v) + new_d.astype(cd) * eps)
      if not (isinstance(weight_decay, float) and weight_decay == 0.0):
        out = out + weight_decay * _numerics.cast(p, cd)
      return _numerics.cast(step.astype(cd) * out, g.dtype)

    out = jax.tree.map(direction, updates, mu, nu, params)
    return out, ProdigyState(count=next_count(state, count),
                             mu=_numerics.cast_like(mu, state.mu),
                             nu=_numerics.cast_like(nu, state.nu),
                             grad_sum=_numerics.cast_like(grad_sum, state.grad_sum),
                             params0=state.params0, estim_lr=new_d,
                             numerator_weighted=numerator.astype(sdt))

  return GradientTransformation(init, update)


class DAdaptAdamState(NamedTuple):
  """State of `scale_by_dadapt_adam`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any                    # EMA of (d γ ĉ)·g, like params
  nu: Any                    # EMA of g², like params
  grad_sum: Any              # s: √β2-EMA of (d γ ĉ)·g, like params
  estim_lr: jax.Array        # d: the distance estimate (starts at estim_lr0)
  numerator_weighted: jax.Array   # r: √β2-EMA of (d γ ĉ) ⟨g, s/(√v + ε)⟩


@transform(shares_count=True, hyperparams=("learning_rate", "eps", "estim_lr0",
                                           "weight_decay"))
def scale_by_dadapt_adam(learning_rate: ScalarOrSchedule = 1.0,
                         betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                         estim_lr0: float = 1e-6,
                         weight_decay: float = 0.0) -> GradientTransformation:
  """D-Adaptation's Adam step, learning rate included: `m / (√v + ε) + λ d γ ĉ θ`.

  With the step's schedule value γ, `ĉ = √(1 − β2^t)/(1 − β1^t)`, `ρ = √β2` and the current
  estimate `d`, `λ_t = d γ ĉ`: `r ← ρ r + (1 − ρ) λ_t ⟨g, s/(√v + ε)⟩` (the previous `s`,
  `v`), `m ← β1 m + (1 − β1) λ_t g`, `v ← β2 v + (1 − β2) g²`, `s ← ρ s + (1 − ρ) λ_t g`,
  `d ← max(d, r / ((1 − ρ) ‖s‖₁))`. The moment `m` accumulates the step sizes of its steps,
  so the step cannot be factored out: the output is the whole step, descent-positive
  (`gx.dadapt_adamw` follows it with `scale(-1)`). `params` are required.

  Args:
    learning_rate: the schedule γ (or a constant) on the adapted step size.
    betas: (β1, β2) in [0, 1), Adam's decays.
    eps: ε ≥ 0 outside the root.
    estim_lr0: d₀ > 0, the starting (under-)estimate.
    weight_decay: λ ≥ 0, decoupled (scaled by the step size `d γ ĉ`).

  State: `DAdaptAdamState(count, mu, nu, grad_sum, estim_lr, numerator_weighted)`.

  Example:
    >>> tx = gx.scale_by_dadapt_adam()
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> jnp.round(updates["b"] / 1e-6, 3)     # (1 − β1) d₀ ĉ g / √((1 − β2) g²) = d₀
    Array([1., 1.], dtype=float32)

  References:
    Defazio & Mishchenko, "Learning-rate-free learning by D-Adaptation", ICML 2023
    (https://arxiv.org/abs/2301.07733).
  """
  where = "scale_by_dadapt_adam"
  _check.learning_rate(where, learning_rate)
  b1, b2 = _betas(where, betas)
  eps = _check.non_negative(where, "eps", eps)
  estim_lr0 = _check.positive(where, "estim_lr0", estim_lr0)
  weight_decay = _check.non_negative(where, "weight_decay", weight_decay)
  rho = b2 ** 0.5

  def init(params):
    sdt = _numerics.compute_dtype(*jax.tree.leaves(params))
    return DAdaptAdamState(count=_numerics.zero_count(), mu=_numerics.state_zeros(params),
                           nu=_numerics.state_zeros(params),
                           grad_sum=_numerics.state_zeros(params),
                           estim_lr=jnp.asarray(estim_lr0, sdt),
                           numerator_weighted=jnp.zeros([], sdt))

  def update(updates, state, params=None, **extra):
    params, count, _, dlr = _adam_step_inputs(where, learning_rate, b1, b2, updates, state,
                                              params, extra)
    d = state.estim_lr
    sdt = d.dtype
    weighted_s = jax.tree.map(lambda s, v: s / (jnp.sqrt(v) + eps), state.grad_sum, state.nu)
    inner = _vdot(updates, weighted_s, sdt)

    def moments(g, m, v, s):
      cd = _numerics.compute_dtype(g, m, v, s)
      g32 = _numerics.cast(g, cd)
      step_g = dlr.astype(cd) * g32
      new_m = _numerics.ema(m, step_g, b1)
      new_v = _numerics.ema(v, g32, b2, squared=True)
      new_s = _numerics.ema(s, step_g, rho)
      return new_m, new_v, new_s

    mu, nu, grad_sum = _tree.map_unzip(moments, 3, updates, state.mu, state.nu, state.grad_sum)
    numerator = rho * state.numerator_weighted + (1.0 - rho) * dlr * inner
    denominator = (1.0 - rho) * _l1(grad_sum, sdt)
    new_d = _grown(d, numerator / denominator, denominator)

    def direction(g, m, v, p):
      cd = _numerics.compute_dtype(m, v)
      out = m / (jnp.sqrt(v) + eps)
      if not (isinstance(weight_decay, float) and weight_decay == 0.0):
        out = out + weight_decay * dlr.astype(cd) * _numerics.cast(p, cd)
      return _numerics.cast(out, g.dtype)

    out = jax.tree.map(direction, updates, mu, nu, params)
    return out, DAdaptAdamState(count=next_count(state, count),
                                mu=_numerics.cast_like(mu, state.mu),
                                nu=_numerics.cast_like(nu, state.nu),
                                grad_sum=_numerics.cast_like(grad_sum, state.grad_sum),
                                estim_lr=new_d, numerator_weighted=numerator.astype(sdt))

  return GradientTransformation(init, update)
