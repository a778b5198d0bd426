"""SM3's preconditioner: an Adagrad whose accumulator is one vector per axis of each leaf."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import GradientTransformation, transform, trees_checked


class Sm3State(NamedTuple):
  """State of `scale_by_sm3`."""
  mu: Any  # per leaf, a list of accumulators: one vector per axis (a leaf of rank < 2: one
           # array of its shape); SM3's cover of maxima
  nu: Any  # EMA of the preconditioned updates, like params


def _axis_zeros(p: jax.Array, dtype: Any) -> list[jax.Array]:
  """SM3's accumulators of one leaf: one vector per axis, or the leaf's shape below rank 2."""
  if p.ndim < 2:
    return [jnp.zeros(p.shape, dtype)]
  return [jnp.zeros((n,), dtype) for n in p.shape]


def _expanded(v: jax.Array, axis: int, ndim: int) -> jax.Array:
  """The accumulator of `axis` shaped to broadcast against the leaf (1 on the other axes)."""
  return jnp.reshape(v, [1] * axis + [v.shape[0]] + [1] * (ndim - axis - 1))


@transform(hyperparams=("b1", "b2", "eps"))
def scale_by_sm3(b1: float = 0.9, b2: float = 1.0, eps: float = 1e-8, *,
                 state_dtype: Any = None) -> GradientTransformation:
  """SM3-II's preconditioner, then an EMA: `m ← β1 m + (1 − β1) g / √(ν + ε)`, output `m`.

  Per entry `i` of a leaf, `ν_i = c g_i² + β2 min_{r ∋ i} μ_r` over the accumulators `μ_r`
  covering `i` (one vector per axis: the row and the column of a matrix entry), with `c = 1`
  when `β2 = 1` (sums, the paper's SM3-II) and `c = 1 − β2` otherwise; then each `μ_r ←
  max_{i ∈ r} ν_i`. A leaf of rank < 2 keeps a full accumulator (Adagrad). Where `ν = 0` the
  output is 0. Memory: `Σ_axes n_k` per leaf instead of `Π n_k`. Equal to Optax's
  `scale_by_sm3` (which fails on scalar leaves; here a scalar keeps a scalar accumulator).
  A complex leaf is its real view, so its trailing axis of 2 gets an accumulator too.

  Args:
    b1: β1 in [0, 1), the decay of the output's EMA (0: no momentum).
    b2: β2 in [0, 1], the decay of the accumulators (1: sums).
    eps: ε ≥ 0 inside the root.
    state_dtype: dtype of the accumulators and of `nu` (None: each parameter's dtype).

  State: `Sm3State(mu, nu)`.

  Example:
    >>> tx = gx.scale_by_sm3()
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> round(float(updates["b"][0]), 4)      # (1 − β1) · g/√(g²) on the first step
    0.1
    >>> [a.shape for a in tx.init({"w": jnp.zeros((3, 5))}).mu["w"]]   # a row and a column
    [(3,), (5,)]

  References:
    Anil, Gupta, Koren & Singer, "Memory-efficient adaptive optimization", NeurIPS 2019
    (https://arxiv.org/abs/1901.11150).
  """
  where = "scale_by_sm3"
  b1 = _check.unit_interval(where, "b1", b1)
  b2 = _check.unit_interval(where, "b2", b2, closed=True)
  eps = _check.non_negative(where, "eps", eps)
  state_dtype = _check.state_dtype(where, state_dtype, int8=False)
  if isinstance(b2, float):
    new_weight: Any = 1.0 if b2 == 1.0 else 1.0 - b2
  else:
    new_weight = jnp.where(b2 == 1.0, 1.0, 1.0 - b2)

  def init(params):
    nu = _numerics.state_zeros(params, state_dtype)
    return Sm3State(mu=jax.tree.map(lambda m: _axis_zeros(m, m.dtype), nu), nu=nu)

  def leaf(g, accumulators, m):
    cd = _numerics.compute_dtype(g, m, *accumulators)
    g32 = _numerics.cast(g, cd)
    if g.ndim < 2:
      previous = _numerics.cast(accumulators[0], cd)
    else:
      previous = functools.reduce(jnp.minimum, [
          _expanded(_numerics.cast(a, cd), i, g.ndim) for i, a in enumerate(accumulators)])
    nu = new_weight * jnp.square(g32) + b2 * previous
    scaled = g32 * jnp.where(nu > 0, jax.lax.rsqrt(nu + eps), 0.0)
    new_m = _numerics.ema(m, scaled, b1)
    if g.ndim < 2:
      new_acc = [nu]
    else:
      new_acc = [jnp.max(nu, axis=tuple(k for k in range(g.ndim) if k != i))
                 for i in range(g.ndim)]
    new_acc = [_numerics.cast(a, old.dtype) for a, old in zip(new_acc, accumulators)]
    return _numerics.cast(new_m, g.dtype), new_acc, _numerics.cast(new_m, m.dtype)

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.nu, updates)
    out, mu, nu = _tree.map_unzip(leaf, 3, updates, state.mu, state.nu)
    return out, Sm3State(mu=mu, nu=nu)

  return GradientTransformation(init, update)
