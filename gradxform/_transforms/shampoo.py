"""Shampoo's Kronecker-factored preconditioner, blocked, grafted, batched over equal shapes.

For a k-dimensional gradient block `G`, Shampoo keeps one statistic per axis,
`L_i ← β2 L_i + (1 − β2) G_(i) G_(i)ᵀ` (`G_(i)`: axis i against all the others), and
preconditions with `G ×_1 L_1^{-1/2k} ×_2 … ×_k L_k^{-1/2k}` (`−1/4` per side for a matrix).
The roots are recomputed from the statistics every `precondition_every` steps only, under
`lax.cond`, from `eigh` in float32 (float64 for float64 parameters): between refreshes a step
costs a few matrix products.

Batching: a leaf is cut into blocks of at most `block_size` along each axis (the last block of
an axis zero-padded, which preconditions it exactly as a smaller block); leaves whose blocks
have the same shape and dtype are stacked and processed as one batch, and every statistic of
the same size, across all groups and axes, goes through one batched `eigh` at a refresh (the
grouping is `gradxform._batching`'s, shared with `orthogonalize` and `scale_by_soap`; on CPU
that `eigh` decomposes the batch's matrices in turn, see `_batching.per_matrix`). The
helpers `along_axis` and `axis_statistic` here are shared with `gx.scale_by_soap`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics, _tree
from gradxform._base import GradientTransformation, next_count, step_count, transform, trees_checked
from gradxform._batching import by_shape, group_indices, per_matrix, stack, unstack

GRAFTINGS = ("adam", "sgd", "none")
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Kronecker-factor helpers (shared with soap.py).


def along_axis(x: jax.Array, mat: jax.Array, axis: int, *, transpose: bool = False
               ) -> jax.Array:
  """`y[b, …, a, …] = Σ_l x[b, …, l, …] M[b, l, a]` on axis `axis` of each batch member
  (`M[b, a, l]` with `transpose`): `Mᵀ x` along that axis (`M x` with `transpose`)."""
  xm = jnp.moveaxis(x, axis, -1)
  spec = "b...l,bal->b...a" if transpose else "b...l,bla->b...a"
  return jnp.moveaxis(jnp.einsum(spec, xm, mat, precision=_HIGHEST), -1, axis)


def axis_statistic(x: jax.Array, axis: int) -> jax.Array:
  """`X_(i) X_(i)ᵀ` for each batch member: axis `axis` of `x` against all others but 0."""
  xm = jnp.moveaxis(x, axis, 1)
  xm = xm.reshape(xm.shape[0], xm.shape[1], -1)
  return jnp.einsum("bir,bjr->bij", xm, xm, precision=_HIGHEST)


def ema_weights(decay: Any) -> tuple[Any, Any]:
  """`(β, 1 − β)` for an EMA, `(1, 1)` (a plain sum) for β = 1; Python floats stay floats."""
  if isinstance(decay, float):
    return decay, (1.0 if decay == 1.0 else 1.0 - decay)
  decay = jnp.asarray(decay)
  return decay, jnp.where(decay == 1.0, 1.0, 1.0 - decay)


def _eigh(mats: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigenvalues (ascending) and eigenvectors of a stack of symmetric matrices; on CPU one
  matrix per LAPACK call (`per_matrix`: batched calls can deadlock there)."""
  w, v = per_matrix(jnp.linalg.eigh)(mats)
  return w, v


# ---------------------------------------------------------------------------------------------
# Blocking.


class _Layout(NamedTuple):
  """How a leaf is cut into blocks: its size-1 axes dropped, each axis into `counts` blocks."""
  squeezed: tuple[int, ...]   # the leaf's shape without size-1 axes
  counts: tuple[int, ...]     # blocks per axis
  block: tuple[int, ...]      # the block shape


def _layout(shape: tuple[int, ...], block_size: int) -> _Layout | None:
  """The blocking of a leaf of `shape`; None where it is not a matrix (rank < 2 squeezed)."""
  squeezed = tuple(d for d in shape if d != 1)
  if len(squeezed) < 2:
    return None
  block = tuple(min(d, block_size) for d in squeezed)
  counts = tuple(-(-d // b) for d, b in zip(squeezed, block))
  return _Layout(squeezed, counts, block)


def _to_blocks(x: jax.Array, lay: _Layout) -> jax.Array:
  """`x` as a stack of blocks `(N, *lay.block)`, the last block of an axis zero-padded."""
  x = x.reshape(lay.squeezed)
  pad = [(0, n * b - d) for d, n, b in zip(lay.squeezed, lay.counts, lay.block)]
  if any(p for _, p in pad):
    x = jnp.pad(x, pad)
  k = len(lay.block)
  x = x.reshape([s for nb in zip(lay.counts, lay.block) for s in nb])
  x = x.transpose([2 * i for i in range(k)] + [2 * i + 1 for i in range(k)])
  return x.reshape((math.prod(lay.counts),) + lay.block)


def _from_blocks(x: jax.Array, lay: _Layout, shape: tuple[int, ...]) -> jax.Array:
  """The inverse of `_to_blocks`, cropped and reshaped to the leaf's `shape`."""
  k = len(lay.block)
  x = x.reshape(lay.counts + lay.block)
  x = x.transpose([j for i in range(k) for j in (i, k + i)])
  x = x.reshape([n * b for n, b in zip(lay.counts, lay.block)])
  x = x[tuple(slice(0, d) for d in lay.squeezed)]
  return x.reshape(shape)


def _block_norms(x: jax.Array) -> jax.Array:
  """The Frobenius norm of each block of a stack, shaped to broadcast against it."""
  return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(1, x.ndim)), keepdims=True))


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """`num / den`, 0 where `den` is 0."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _refresh_roots(operands: Any) -> list[tuple[jax.Array, ...]]:
  """`(L_i + ε λ_max I)^{-1/2k}` of every statistic (grouped as the stacks are), one `eigh`
  per size.

  Defined once, not per call, so that the `lax.cond` around it is traced and compiled once
  when `update` runs outside `jit`.
  """
  stats, _, eps = operands
  eig = iter(by_shape(_eigh, [(m,) for group in stats for m in group]))
  out = []
  for group in stats:
    power = -1.0 / (2 * len(group))
    roots = []
    for _ in group:
      w, v = next(eig)
      w = jnp.maximum(w, 0.0)
      base = w + eps * w[:, -1:]                      # ε relative to the largest eigenvalue
      scale = jnp.where(base > 0, jnp.where(base > 0, base, 1.0) ** power, 0.0)
      roots.append(jnp.einsum("bij,bj,bkj->bik", v, scale, v, precision=_HIGHEST))
    out.append(tuple(roots))
  return out


def _keep_roots(operands: Any) -> list[tuple[jax.Array, ...]]:
  return [tuple(r) for r in operands[1]]


# ---------------------------------------------------------------------------------------------


class ShampooState(NamedTuple):
  """State of `scale_by_shampoo`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count
  nu: Any      # the grafting's EMA of g², like params (float32 at least)
  stats: Any   # per leaf, a tuple: the statistic L_i of each axis, (blocks, b_i, b_i); () for
  #              leaves of rank < 2
  roots: Any   # per leaf, like stats: the preconditioners L_i^{-1/2k} at the last refresh


@transform(shares_count=True, hyperparams=("b2", "eps", "graft_eps"))
def scale_by_shampoo(b2: float = 0.999, eps: float = 1e-6, *, block_size: int = 256,
                     precondition_every: int = 10, grafting: str = "adam",
                     graft_eps: float = 1e-8) -> GradientTransformation:
  """Shampoo's direction `G ×_1 L_1^{-1/2k} … ×_k L_k^{-1/2k}`, grafted onto Adam's norm.

  Per block `G` of a leaf (at most `block_size` along each axis; size-1 axes dropped; `k` the
  number of axes left): `L_i ← β2 L_i + (1 − β2) G_(i) G_(i)ᵀ` every step (`β2 = 1`: the
  paper's sum); every `precondition_every` steps, from the first,
  `P_i ← (L_i + ε λ_max(L_i) I)^{-1/2k}` by `eigh` (negative eigenvalues clipped to 0; ε is
  relative, as distributed Shampoo's, so that float32 rounding in the null space of a
  rank-deficient `L_i` is not blown up by a tiny absolute ε), under `lax.cond`; direction
  `D = G ×_1 P_1 … ×_k P_k` (for a matrix `P_L G P_R`, `L^{-1/4} G R^{-1/4}`). Grafting
  (Agarwal et al.) rescales each block to the norm of a diagonal method's step on it:
  "adam": `D ‖A‖/‖D‖` with `A = g/(√v̂ + ε_g)`, `v ← β2 v + (1 − β2) g²`,
  `v̂ = v/(1 − β2^t)`; "sgd": `D ‖G‖/‖D‖`; "none": `D`. Leaves of rank < 2 (after dropping
  size-1 axes: biases, scales, scalars) get the diagonal step `A` ("sgd": `g`).
  Statistics and roots are float32 (float64 for float64 parameters), whatever the gradient's
  dtype; the output has the gradient's dtype. Leaves whose blocks have the same shape are
  preconditioned as one batch; statistics of the same size share one batched `eigh`. No Optax
  counterpart (written from the papers).

  Args:
    b2: β2 in [0, 1], the decay of the statistics and of `v` (1: sums, no bias correction).
    eps: ε >= 0: `ε λ_max` is added to the statistics' eigenvalues before the root.
    block_size: the largest block along an axis (>= 1); larger axes are cut into blocks.
    precondition_every: recompute the roots every this many steps (>= 1).
    grafting: "adam", "sgd" or "none" (see above).
    graft_eps: ε_g >= 0 of the Adam grafting.

  State: `ShampooState(count, nu, stats, roots)`.

  Example:
    >>> tx = gx.scale_by_shampoo()
    >>> updates, _ = tx.update(grads, tx.init(params))
    >>> jnp.round(updates["w"], 3)            # grafted: the norm of Adam's first step g/√v̂
    Array([[1., 1.],
           [1., 1.]], dtype=float32)
    >>> jnp.round(updates["b"], 3)            # a vector: the diagonal Adam step itself
    Array([1., 1.], dtype=float32)

  References:
    Gupta, Koren & Singer, "Shampoo: preconditioned stochastic tensor optimization", ICML 2018
    (https://arxiv.org/abs/1802.09568).
    Anil et al., "Scalable second order optimization for deep learning", 2020
    (https://arxiv.org/abs/2002.09018): blocking and grafting.
    Agarwal et al., "Disentangling adaptive gradient methods from learning rates", 2020
    (https://arxiv.org/abs/2002.11803).
  """
  where = "scale_by_shampoo"
  b2 = _check.unit_interval(where, "b2", b2, closed=True)
  eps = _check.non_negative(where, "eps", eps)
  graft_eps = _check.non_negative(where, "graft_eps", graft_eps)
  block_size = _check.integer(where, "block_size", block_size, minimum=1)
  every = _check.integer(where, "precondition_every", precondition_every, minimum=1)
  _check.one_of(where, "grafting", grafting, GRAFTINGS)

  def init(params):
    def leaf(p):
      cd = _numerics.compute_dtype(p)
      lay = _layout(jnp.shape(p), block_size)
      if lay is None:
        return (), ()
      n = math.prod(lay.counts)
      stats = tuple(jnp.zeros((n, b, b), cd) for b in lay.block)
      roots = tuple(jnp.broadcast_to(jnp.eye(b, dtype=cd), (n, b, b)) for b in lay.block)
      return stats, roots

    _tree.check_floating(where, params, "params")
    stats, roots = _tree.map_unzip(leaf, 2, params)
    nu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), _numerics.compute_dtype(p)), params)
    return ShampooState(count=_numerics.zero_count(), nu=nu, stats=stats, roots=roots)

  def update(updates, state, params=None, **extra):
    del params
    if not trees_checked(extra):
      _tree.check_updates(where, state.nu, updates)
    count = step_count(state, extra)
    decay, weight = ema_weights(b2)
    corr2 = _numerics.one_minus_decay_power(b2, count + 1)
    corr2 = jnp.where(corr2 > 0, corr2, 1.0)

    leaves, treedef = jax.tree.flatten(updates)
    nus = treedef.flatten_up_to(state.nu)
    old_stats = treedef.flatten_up_to(state.stats)
    old_roots = treedef.flatten_up_to(state.roots)
    g32 = [_numerics.cast(g, v.dtype) for g, v in zip(leaves, nus)]
    new_nus = [_numerics.cast(b2 * v + weight * g * g, v.dtype) for g, v in zip(g32, nus)]
    if grafting == "sgd":
      graft = g32
    else:
      graft = [g / (jnp.sqrt(v / corr2) + graft_eps) for g, v in zip(g32, new_nus)]

    lays = [_layout(g.shape, block_size) for g in leaves]
    groups = group_indices([None if lay is None else (lay.block, g.dtype)
                            for lay, g in zip(lays, g32)])
    blocks, stats = [], []
    for idx in groups:
      x = stack([_to_blocks(g32[i], lays[i]) for i in idx])
      blocks.append(x)
      old = [stack([old_stats[i][a] for i in idx]) for a in range(x.ndim - 1)]
      stats.append(tuple(_numerics.cast(decay * s + weight * axis_statistic(x, a + 1), s.dtype)
                         for a, s in enumerate(old)))
    roots_before = [tuple(stack([old_roots[i][a] for i in idx]) for a in range(len(s)))
                    for idx, s in zip(groups, stats)]

    roots = jax.lax.cond(count % every == 0, _refresh_roots, _keep_roots,
                         (stats, roots_before, eps))

    out = list(graft)
    new_stats, new_roots = list(old_stats), list(old_roots)
    for idx, x, s, r in zip(groups, blocks, stats, roots):
      d = x
      for a, p in enumerate(r):
        d = along_axis(d, p, a + 1)
      if grafting != "none":
        a_blocks = stack([_to_blocks(graft[i], lays[i]) for i in idx])
        d = d * _safe_ratio(_block_norms(a_blocks), _block_norms(d))
      sizes = [math.prod(lays[i].counts) for i in idx]
      for i, piece, *parts in zip(idx, unstack(d, sizes),
                                  *[unstack(m, sizes) for m in s + r]):
        out[i] = _from_blocks(piece, lays[i], leaves[i].shape)
        new_stats[i] = tuple(parts[:len(s)])
        new_roots[i] = tuple(parts[len(s):])
    outs = [_numerics.cast(o, g.dtype) for o, g in zip(out, leaves)]
    return treedef.unflatten(outs), ShampooState(
        count=next_count(state, count), nu=treedef.unflatten(new_nus),
        stats=treedef.unflatten(new_stats), roots=treedef.unflatten(new_roots))

  return GradientTransformation(init, update)
