"""Second-moment preconditioning: RMSprop's root-mean-square, and AMSGrad's running maximum."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, next_count, raw_gradient,
                             step_count, transform, trees_checked)


class RmsState(NamedTuple):
  """State of `scale_by_rms`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  nu: Any                  # EMA of squared gradients, like params
  mu: Any                  # EMA of gradients when centered, else None


def _denominator(v: jax.Array, eps: Any, eps_root: Any, eps_in_sqrt: bool) -> jax.Array:
  if not (isinstance(eps_root, (int, float)) and eps_root == 0.0):  # skip adding a literal 0
    v = v + eps_root
  return jnp.sqrt(v + eps) if eps_in_sqrt else jnp.sqrt(v) + eps


@transform(shares_count=True, hyperparams=("decay", "eps", "eps_root"))
def scale_by_rms(decay: float = 0.9, eps: float = 1e-8, *, eps_in_sqrt: bool = True,
                 centered: bool = False, bias_correction: bool = False, eps_root: float = 0.0,
                 state_dtype: Any = None) -> GradientTransformation:
  """Divides updates by the root of an EMA of squared raw gradients.

  `v ← ρ v + (1 − ρ) g²`; with `bias_correction`, `v̂ = v / (1 − ρ^t)` (else `v̂ = v`);
  `centered` (Graves 2013): `ḡ ← ρ ḡ + (1 − ρ) g` and `v̂ − ḡ²` replaces `v̂`.
  Output `u / √(v̂ + ε)` (`eps_in_sqrt=True`, Hinton's form) or `u / (√(v̂ + ε_root) + ε)`
  (`eps_in_sqrt=False`, torch's and Adam's form).

  `g` is the raw gradient (`extra['grad']` inside a chain, see `gradxform.chain`), `u` the
  incoming update: in Adam's chain, the bias-corrected first moment.

  Args:
    decay: ρ in [0, 1).
    eps: ε ≥ 0.
    eps_in_sqrt: where ε goes (see above).
    centered: subtract the squared mean gradient.
    bias_correction: divide `v` (and `ḡ`) by `1 − ρ^t`.
    eps_root: ε_root ≥ 0 inside the root (Adam's `eps_root`).
    state_dtype: dtype of `nu` and `mu` (None: each parameter's dtype).

  State: `RmsState(count, nu, mu)`; `mu` is None unless centered.

  Example:
    >>> tx = gx.scale_by_rms(0.9, eps=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> updates["b"]                          # 0.5 / √(0.1 · 0.5²) = √10
    Array([3.1622777, 3.1622777], dtype=float32)

  References:
    Hinton, Srivastava & Swersky, "Neural networks for machine learning", lecture 6e, 2012.
    Graves, "Generating sequences with recurrent neural networks", 2013.
  """
  where = "scale_by_rms"
  decay = _check.unit_interval(where, "decay", decay)
  eps = _check.non_negative(where, "eps", eps)
  eps_root = _check.non_negative(where, "eps_root", eps_root)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return RmsState(count=_numerics.zero_count(),
                    nu=_numerics.state_zeros(params, state_dtype),
                    mu=_numerics.state_zeros(params, state_dtype) if centered else None)

  def update(updates, state, params=None, **extra):
    del params
    grad = raw_gradient(updates, extra)
    if not trees_checked(extra):
      _tree.check_updates(where, state.nu, updates)
    count = step_count(state, extra)
    corr = _numerics.one_minus_decay_power(decay, count + 1) if bias_correction else 1.0

    def unbiased(x):
      return x / corr if bias_correction else x

    def leaf(u, g, nu, mu):
      cd = _numerics.compute_dtype(u, nu)
      g = _numerics.cast(g, cd)
      new_nu = _numerics.ema(nu, g, decay, squared=True)
      v = unbiased(new_nu)
      new_mu = mu
      if centered:
        new_mu = _numerics.ema(mu, g, decay)
        v = v - jnp.square(unbiased(new_mu))
        new_mu = _numerics.cast(new_mu, mu.dtype)
      out = _numerics.cast(u, cd) / _denominator(v, eps, eps_root, eps_in_sqrt)
      return _numerics.cast(out, u.dtype), _numerics.cast(new_nu, nu.dtype), new_mu

    mus = state.mu if centered else jax.tree.map(lambda x: x, state.nu)
    out, nu, mu = _tree.map_unzip(leaf, 3, updates, grad, state.nu, mus)
    return out, RmsState(count=next_count(state, count), nu=nu, mu=mu if centered else None)

  tx = GradientTransformation(init, update)
  return elementwise(tx)


class AmsgradState(NamedTuple):
  """State of `scale_by_amsgrad`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  nu: Any                  # EMA of squared gradients, like params
  nu_max: Any              # running maximum of nu, like params


@transform(shares_count=True, hyperparams=("decay", "eps"))
def scale_by_amsgrad(decay: float = 0.999, eps: float = 1e-8, *, bias_correction: bool = True,
                     state_dtype: Any = None) -> GradientTransformation:
  """AMSGrad's preconditioner: the root of the running maximum of the second moment.

  `v ← ρ v + (1 − ρ) g²`, `v_max ← max(v_max, v)`; output `u / (√(v_max / (1 − ρ^t)) + ε)`
  with `bias_correction` (torch.optim.Adam(amsgrad=True)), else `u / (√v_max + ε)` (Reddi et
  al.'s algorithm).

  Args:
    decay: ρ in [0, 1).
    eps: ε ≥ 0.
    bias_correction: divide `v_max` by `1 − ρ^t`.
    state_dtype: dtype of `nu` and `nu_max`.

  State: `AmsgradState(count, nu, nu_max)`.

  Example:
    >>> tx = gx.scale_by_amsgrad(0.999, eps=0.0)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> jnp.round(updates["b"], 4)            # v_max / (1 − ρ) = 0.5², so 0.5 / 0.5
    Array([1., 1.], dtype=float32)

  References:
    Reddi, Kale & Kumar, "On the convergence of Adam and beyond", ICLR 2018.
  """
  where = "scale_by_amsgrad"
  decay = _check.unit_interval(where, "decay", decay)
  eps = _check.non_negative(where, "eps", eps)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return AmsgradState(count=_numerics.zero_count(),
                        nu=_numerics.state_zeros(params, state_dtype),
                        nu_max=_numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    grad = raw_gradient(updates, extra)
    if not trees_checked(extra):
      _tree.check_updates(where, state.nu, updates)
    count = step_count(state, extra)
    corr = _numerics.one_minus_decay_power(decay, count + 1) if bias_correction else 1.0

    def leaf(u, g, nu, nu_max):
      cd = _numerics.compute_dtype(u, nu)
      g = _numerics.cast(g, cd)
      new_nu = _numerics.ema(nu, g, decay, squared=True)
      new_max = jnp.maximum(_numerics.cast(nu_max, cd), new_nu)
      out = _numerics.cast(u, cd) / (jnp.sqrt(new_max / corr) + eps)
      return (_numerics.cast(out, u.dtype), _numerics.cast(new_nu, nu.dtype),
              _numerics.cast(new_max, nu_max.dtype))

    out, nu, nu_max = _tree.map_unzip(leaf, 3, updates, grad, state.nu, state.nu_max)
    return out, AmsgradState(count=next_count(state, count), nu=nu, nu_max=nu_max)

  return elementwise(GradientTransformation(init, update))
