"""Preconditioners of the Adagrad family: sum of squares, Adadelta's unit correction, and
AdaMax's infinity norm."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import (GradientTransformation, elementwise, raw_gradient, transform,
                             trees_checked)


class AdagradState(NamedTuple):
  """State of `scale_by_adagrad`."""
  sum_of_squares: Any  # G, like params


@transform(hyperparams=("initial_accumulator_value", "eps"))
def scale_by_adagrad(initial_accumulator_value: float = 0.0, eps: float = 1e-10, *,
                     eps_in_sqrt: bool = True, state_dtype: Any = None) -> GradientTransformation:
  """Adagrad: divides by the root of the sum of all squared gradients so far.

  `G ← G + g²`; output `u / √(G + ε)` (`eps_in_sqrt=True`, the form of Ruder's overview) or
  `u / (√G + ε)` (`eps_in_sqrt=False`: Duchi et al.'s `δ + √G`, and torch.optim.Adagrad).
  `G_0 = initial_accumulator_value`.

  State: `AdagradState(sum_of_squares)`.

  Example:
    >>> tx = gx.scale_by_adagrad(eps=0.0)
    >>> state = tx.init(params)
    >>> for _ in range(4):
    ...   updates, state = tx.update(grads, state)
    >>> updates["b"]                          # 0.5 / √(4 · 0.5²)
    Array([0.5, 0.5], dtype=float32)

  References:
    Duchi, Hazan & Singer, "Adaptive subgradient methods for online learning and stochastic
    optimization", JMLR 2011.
  """
  where = "scale_by_adagrad"
  initial = _check.non_negative(where, "initial_accumulator_value", initial_accumulator_value)
  eps = _check.non_negative(where, "eps", eps)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return AdagradState(_numerics.state_full(params, initial, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    grad = raw_gradient(updates, extra)
    if not trees_checked(extra):
      _tree.check_updates(where, state.sum_of_squares, updates)

    def leaf(u, g, acc):
      cd = _numerics.compute_dtype(u, acc)
      new = _numerics.cast(acc, cd) + jnp.square(_numerics.cast(g, cd))
      denom = jnp.sqrt(new + eps) if eps_in_sqrt else jnp.sqrt(new) + eps
      return _numerics.cast(_numerics.cast(u, cd) / denom, u.dtype), _numerics.cast(new, acc.dtype)

    out, acc = _tree.map_unzip(leaf, 2, updates, grad, state.sum_of_squares)
    return out, AdagradState(acc)

  return elementwise(GradientTransformation(init, update))


class AdadeltaState(NamedTuple):
  """State of `scale_by_adadelta`."""
  e_g2: Any   # E[g²], like params
  e_dx2: Any  # E[Δ²], like params


@transform(hyperparams=("rho", "eps"))
def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6, *,
                      state_dtype: Any = None) -> GradientTransformation:
  """Adadelta: corrects the units of the update with an RMS of past updates.

  `E[g²] ← ρ E[g²] + (1−ρ) g²`; `Δ = √(E[Δ²] + ε) / √(E[g²] + ε) · u`;
  `E[Δ²] ← ρ E[Δ²] + (1−ρ) Δ²`; output Δ (the learning rate, 1.0 by default, follows).

  State: `AdadeltaState(e_g2, e_dx2)`.

  Example:
    >>> tx = gx.scale_by_adadelta(rho=0.9, eps=1e-6)
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> jnp.round(updates["b"], 5)            # √(1e-6) / √(0.1 · 0.5² + 1e-6) · 0.5
    Array([0.00316, 0.00316], dtype=float32)

  References:
    Zeiler, "ADADELTA: an adaptive learning rate method", 2012.
  """
  where = "scale_by_adadelta"
  rho = _check.unit_interval(where, "rho", rho)
  eps = _check.non_negative(where, "eps", eps)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return AdadeltaState(_numerics.state_zeros(params, state_dtype),
                         _numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    grad = raw_gradient(updates, extra)
    if not trees_checked(extra):
      _tree.check_updates(where, state.e_g2, updates)

    def leaf(u, g, e_g2, e_dx2):
      cd = _numerics.compute_dtype(u, e_g2)
      g = _numerics.cast(g, cd)
      new_g2 = _numerics.ema(e_g2, g, rho, squared=True)
      delta = (jnp.sqrt(_numerics.cast(e_dx2, cd) + eps) / jnp.sqrt(new_g2 + eps)
               * _numerics.cast(u, cd))
      new_dx2 = _numerics.ema(e_dx2, delta, rho, squared=True)
      return (_numerics.cast(delta, u.dtype), _numerics.cast(new_g2, e_g2.dtype),
              _numerics.cast(new_dx2, e_dx2.dtype))

    out, e_g2, e_dx2 = _tree.map_unzip(leaf, 3, updates, grad, state.e_g2, state.e_dx2)
    return out, AdadeltaState(e_g2, e_dx2)

  return elementwise(GradientTransformation(init, update))


class InfNormState(NamedTuple):
  """State of `scale_by_inf_norm`."""
  nu: Any  # the exponentially weighted infinity norm u, like params


@transform(hyperparams=("decay", "eps"))
def scale_by_inf_norm(decay: float = 0.999, eps: float = 1e-8, *, eps_in_max: bool = False,
                      state_dtype: Any = None) -> GradientTransformation:
  """AdaMax's preconditioner: an exponentially weighted infinity norm of the gradients.

  `ν ← max(β2 ν, |g|)`, output `u / (ν + ε)` (Kingma & Ba); with `eps_in_max` (torch form)
  `ν ← max(β2 ν, |g| + ε)`, output `u / ν`.

  State: `InfNormState(nu)`.

  Example:
    >>> tx = gx.scale_by_inf_norm(0.999, eps=0.0)
    >>> updates, _ = tx.update({"w": jnp.array([2.0, -0.5])}, tx.init({"w": jnp.zeros(2)}))
    >>> updates["w"]                          # u / max(β2 · 0, |g|)
    Array([ 1., -1.], dtype=float32)

  References:
    Kingma & Ba, "Adam: A method for stochastic optimization", ICLR 2015, section 7.
  """
  where = "scale_by_inf_norm"
  decay = _check.unit_interval(where, "decay", decay)
  eps = _check.non_negative(where, "eps", eps)
  state_dtype = _check.state_dtype(where, state_dtype)

  def init(params):
    return InfNormState(_numerics.state_zeros(params, state_dtype))

  def update(updates, state, params=None, **extra):
    del params
    grad = raw_gradient(updates, extra)
    if not trees_checked(extra):
      _tree.check_updates(where, state.nu, updates)

    def leaf(u, g, nu):
      cd = _numerics.compute_dtype(u, nu)
      mag = jnp.abs(_numerics.cast(g, cd))
      if eps_in_max:
        new = jnp.maximum(decay * _numerics.cast(nu, cd), mag + eps)
        out = _numerics.cast(u, cd) / new
      else:
        new = jnp.maximum(decay * _numerics.cast(nu, cd), mag)
        out = _numerics.cast(u, cd) / (new + eps)
      return _numerics.cast(out, u.dtype), _numerics.cast(new, nu.dtype)

    out, nu = _tree.map_unzip(leaf, 2, updates, grad, state.nu)
    return out, InfNormState(nu)

  return elementwise(GradientTransformation(init, update))
