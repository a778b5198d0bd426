"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner.

Each axis of a leaf (up to `max_precond_dim` long) keeps Shampoo's statistic `L_i`, and an
orthogonal basis `Q_i` of its eigenvectors refreshed every `precondition_frequency` steps
(under `lax.switch`). Adam's second moment lives in the rotated coordinates; its first moment
in the parameters' own. Batching as in `gx.scale_by_shampoo`: leaves of the same shape and
dtype are one batch, and every `eigh` / `qr` of a refresh takes all the matrices of one size
at once (on CPU in turn, one LAPACK call per matrix: see `_batching.per_matrix`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import GradientTransformation, next_count, step_count, transform, trees_checked
from gradxform._batching import by_shape, group_indices, per_matrix, stack
from gradxform._transforms.shampoo import along_axis, axis_statistic, ema_weights

_HIGHEST = jax.lax.Precision.HIGHEST


class SoapState(NamedTuple):
  """State of `scale_by_soap`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  mu: Any       # Adam's first moment M, in the parameters' basis, like params (float32 at least)
  nu: Any       # Adam's second moment V, in the eigenbasis, like params (float32 at least)
  stats: Any    # per leaf, a tuple: Shampoo's statistic L_i (d_i, d_i) of each rotated axis
  eigvecs: Any  # per leaf, like stats: the basis Q_i, columns by decreasing eigenvalue


def _eigenbasis(stats: jax.Array) -> tuple[jax.Array]:
  """The eigenvectors of each statistic, by decreasing eigenvalue."""
  return (jnp.flip(jnp.linalg.eigh(stats)[1], axis=-1),)


def _power_qr(stats: jax.Array, basis: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One power step and QR from the last basis, its columns first sorted by the estimated
  eigenvalues `diag(Qᵀ L Q)`, decreasing; returns the new basis and the sort order."""
  lq = jnp.einsum("bij,bjk->bik", stats, basis, precision=_HIGHEST)
  estimate = jnp.einsum("bji,bji->bi", basis, lq, precision=_HIGHEST)
  order = jnp.argsort(-estimate, axis=-1, stable=True)
  lq = jnp.take_along_axis(lq, order[:, None, :], axis=-1)
  return jnp.linalg.qr(lq)[0], order


# The three branches of the refresh, defined once (not per call) so that `lax.switch` is traced
# and compiled once when `update` runs outside `jit`. Operands: per batch of equal leaves, the
# statistics and the bases of its rotated axes as dicts `{axis: stack}` (the axes are then static
# structure), and `V` stacked `(B, *shape)`. Each returns the new bases (lists) and `V`s.


def _keep(operands: Any) -> tuple[list[list[jax.Array]], list[jax.Array]]:
  _, bases, vs = operands
  return [list(b.values()) for b in bases], list(vs)


def _start(operands: Any) -> tuple[list[list[jax.Array]], list[jax.Array]]:
  stats, _, vs = operands
  items = [(s,) for group in stats for s in group.values()]
  flat = iter(by_shape(per_matrix(_eigenbasis), items))
  return [[next(flat)[0] for _ in group] for group in stats], list(vs)


def _refresh(operands: Any) -> tuple[list[list[jax.Array]], list[jax.Array]]:
  stats, bases, vs = operands
  items = [(s, q) for sg, qg in zip(stats, bases) for s, q in zip(sg.values(), qg.values())]
  flat = iter(by_shape(per_matrix(_power_qr), items))
  new_bases, new_vs = [], []
  for group, v in zip(stats, vs):
    qs = []
    for a in group:
      q, order = next(flat)
      qs.append(q)
      shape = [1] * v.ndim
      shape[0], shape[a + 1] = order.shape[0], order.shape[1]
      v = jnp.take_along_axis(v, order.reshape(shape), axis=a + 1)
    new_bases.append(qs)
    new_vs.append(v)
  return new_bases, new_vs


@transform(shares_count=True, hyperparams=("b1", "b2", "eps", "shampoo_beta"))
def scale_by_soap(b1: float = 0.95, b2: float = 0.95, eps: float = 1e-8, *,
                  shampoo_beta: float | None = None, precondition_frequency: int = 10,
                  max_precond_dim: int = 10000, precondition_1d: bool = False,
                  correct_bias: bool = True) -> GradientTransformation:
  """SOAP's direction: Adam in the eigenbasis `Q` of Shampoo's statistics, rotated back.

  With `G' = G ×_1 Q_1ᵀ … ×_k Q_kᵀ` (for a matrix `Q_Lᵀ G Q_R`) and its inverse rotation
  `·''`: `M ← β1 M + (1 − β1) G`, `V ← β2 V + (1 − β2) G'²`, output
  `(M' / (√V + ε))'' · √(1 − β2^s)/(1 − β1^s)` (s = 1, 2, … the Adam steps; the factor is 1
  without `correct_bias`). Then `L_i ← β_s L_i + (1 − β_s) G_(i) G_(i)ᵀ` (β_s:
  `shampoo_beta`, default β2). The first call only starts the statistics and sets `Q_i` to
  their eigenvectors: its output is zero (so that `Q` never contains the gradient it rotates).
  After the Adam step `s` with `s % precondition_frequency == 0`, each `Q_i` is refreshed by
  one power step and QR, `Q_i ← qr(L_i Q_i)`, its columns (and `V` along that axis) first
  sorted by `diag(Q_iᵀ L_i Q_i)`, decreasing. The bases are refreshed under `lax.switch`.

  Rotated axes: those longer than 1 and at most `max_precond_dim` long, of leaves of rank
  >= 2 (and rank 1 with `precondition_1d`); on a leaf without any the step is Adam's.
  Statistics, bases and moments are float32 (float64 for float64 parameters), whatever the
  gradient's dtype. No Optax counterpart; written after the paper's algorithm and the
  authors' PyTorch `SOAP` step without its learning rate and weight decay (their code keeps
  `M` rotated and rotates it again with each new basis, which is the same in exact
  arithmetic; `merge_dims`, `normalize_grads` and `data_format` are not offered).

  Args:
    b1, b2: Adam's decays in [0, 1).
    eps: ε >= 0 outside the root.
    shampoo_beta: β_s in [0, 1) of the statistics, or None for β2.
    precondition_frequency: refresh the bases every this many steps (>= 1).
    max_precond_dim: axes longer than this are not rotated (>= 1).
    precondition_1d: rotate vectors too (one full statistic per vector).
    correct_bias: Adam's bias correction.

  State: `SoapState(count, mu, nu, stats, eigvecs)`.

  Example:
    >>> tx = gx.scale_by_soap()
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state)
    >>> updates["w"]                          # the first call only sets the bases
    Array([[0., 0.],
           [0., 0.]], dtype=float32)
    >>> updates, state = tx.update(grads, state)
    >>> jnp.round(updates["b"], 3)            # then Adam: m̂/√v̂ = 1 on the vector
    Array([1., 1.], dtype=float32)

  References:
    Vyas et al., "SOAP: improving and stabilizing Shampoo using Adam", ICLR 2025
    (https://arxiv.org/abs/2409.11321); the authors' code: https://github.com/nikhilvyas/SOAP.
  """
  where = "scale_by_soap"
  b1 = _check.unit_interval(where, "b1", b1)
  b2 = _check.unit_interval(where, "b2", b2)
  eps = _check.non_negative(where, "eps", eps)
  if shampoo_beta is not None:
    shampoo_beta = _check.unit_interval(where, "shampoo_beta", shampoo_beta)
  every = _check.integer(where, "precondition_frequency", precondition_frequency, minimum=1)
  max_dim = _check.integer(where, "max_precond_dim", max_precond_dim, minimum=1)
  beta_s = b2 if shampoo_beta is None else shampoo_beta

  def rotated(shape):
    if len(shape) == 0 or (len(shape) == 1 and not precondition_1d):
      return ()
    return tuple(i for i, d in enumerate(shape) if 1 < d <= max_dim)

  def init(params):
    def leaf(p):
      cd, shape = _numerics.compute_dtype(p), jnp.shape(p)
      axes = rotated(shape)
      return (tuple(jnp.zeros((shape[a], shape[a]), cd) for a in axes),
              tuple(jnp.eye(shape[a], dtype=cd) for a in axes))

    _tree.check_floating(where, params, "params")
    stats, eigvecs = _tree.map_unzip(leaf, 2, params)
    zeros = lambda p: jnp.zeros(jnp.shape(p), _numerics.compute_dtype(p))
    return SoapState(count=_numerics.zero_count(), mu=jax.tree.map(zeros, params),
                     nu=jax.tree.map(zeros, params), stats=stats, eigvecs=eigvecs)

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.mu, updates)
    count = step_count(state, extra)
    first = count == 0
    steps = jnp.maximum(count, 1)
    factor = None
    if correct_bias:
      factor = (jnp.sqrt(_numerics.one_minus_decay_power(b2, steps))
                / _numerics.one_minus_decay_power(b1, steps))
    decay_s, weight_s = ema_weights(beta_s)

    leaves, treedef = jax.tree.flatten(updates)
    mus, nus = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
    old_stats = treedef.flatten_up_to(state.stats)
    old_bases = treedef.flatten_up_to(state.eigvecs)
    groups = group_indices([(g.shape, m.dtype) for g, m in zip(leaves, mus)])
    outs: list[Any] = [None] * len(leaves)
    batches = []
    for idx in groups:
      axes = rotated(leaves[idx[0]].shape)
      x = stack([_numerics.cast(leaves[i], mus[i].dtype)[None] for i in idx])
      m, v = stack([mus[i][None] for i in idx]), stack([nus[i][None] for i in idx])
      stats = [stack([old_stats[i][j][None] for i in idx]) for j in range(len(axes))]
      bases = [stack([old_bases[i][j][None] for i in idx]) for j in range(len(axes))]

      def rotate(y, back=False, axes=axes, bases=bases):
        for a, q in zip(axes, bases):
          y = along_axis(y, q, a + 1, transpose=back)
        return y

      new_m = _numerics.ema(m, x, b1)
      new_v = _numerics.ema(v, rotate(x), b2, squared=True)
      direction = rotate(rotate(new_m) / (jnp.sqrt(new_v) + eps), back=True)
      if factor is not None:
        direction = direction * factor.astype(direction.dtype)
      direction = jnp.where(first, jnp.zeros_like(direction), direction)
      new_m = _numerics.cast(jnp.where(first, m, new_m), m.dtype)
      new_v = _numerics.cast(jnp.where(first, v, new_v), v.dtype)
      stats = [_numerics.cast(decay_s * s + weight_s * axis_statistic(x, a + 1), s.dtype)
               for a, s in zip(axes, stats)]
      for j, i in enumerate(idx):
        outs[i] = _numerics.cast(direction[j], leaves[i].dtype)
      batches.append((idx, axes, new_m, new_v, stats, bases))

    branch = jnp.where(first, 1, jnp.where(count % every == 0, 2, 0))
    operands = ([dict(zip(b[1], b[4])) for b in batches], [dict(zip(b[1], b[5])) for b in batches],
                [b[3] for b in batches])
    bases, vs = jax.lax.switch(branch, (_keep, _start, _refresh), operands)

    new_mu, new_nu = list(mus), list(nus)
    new_stats, new_bases = list(old_stats), list(old_bases)
    for (idx, _, m, _, stats, _), qs, v in zip(batches, bases, vs):
      for j, i in enumerate(idx):
        new_mu[i], new_nu[i] = m[j], v[j]
        new_stats[i] = tuple(s[j] for s in stats)
        new_bases[i] = tuple(q[j] for q in qs)
    return treedef.unflatten(outs), SoapState(
        count=next_count(state, count), mu=treedef.unflatten(new_mu),
        nu=treedef.unflatten(new_nu), stats=treedef.unflatten(new_stats),
        eigvecs=treedef.unflatten(new_bases))

  return GradientTransformation(init, update)
