"""Leaves of the same shape and dtype processed as one batched operation.

A transformer without `scan` has dozens of identical matrices; running Newton–Schulz
(`orthogonalize`) or an `eigh` (`scale_by_shampoo`, `scale_by_soap`) once per group of equal
shapes, on their stack, instead of once per leaf, cuts the kernels per step and the compile
time by the group size. Stacking copies each group's arrays once.

The LAPACK-backed decompositions (`eigh`, `qr`) go through `per_matrix`, which keeps them batched
on GPU but calls them one matrix at a time on CPU (see there: a batched CPU call can deadlock).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

import jax
import jax.numpy as jnp


def group_indices(keys: Sequence[Hashable | None]) -> list[list[int]]:
  """The indices of equal keys, one list per distinct key in first-seen order; None: skipped."""
  groups: dict[Hashable, list[int]] = {}
  for i, k in enumerate(keys):
    if k is not None:
      groups.setdefault(k, []).append(i)
  return list(groups.values())


def stack(xs: Sequence[jax.Array]) -> jax.Array:
  """`xs` (each with a leading batch axis) concatenated along it; a single one as it is."""
  return xs[0] if len(xs) == 1 else jnp.concatenate(xs)


def unstack(x: jax.Array, sizes: Sequence[int]) -> list[jax.Array]:
  """The inverse of `stack`: pieces of `x` along axis 0 of the given sizes."""
  if len(sizes) == 1:
    return [x]
  out, start = [], 0
  for n in sizes:
    out.append(x[start:start + n])
    start += n
  return out


def by_shape(fn: Callable[..., tuple[jax.Array, ...]],
             items: Sequence[tuple[jax.Array, ...]]) -> list[tuple[jax.Array, ...]]:
  """`fn` on stacks of arrays `(B, ...)`, called once per distinct trailing shape and dtype.

  Each item is a tuple of arrays with a common leading axis, the first one's trailing shape
  and dtype group it; `fn(*stacked)` maps the items of one group, stacked, to a tuple of
  arrays with the same leading axis. The result for each item is its slice of those.
  """
  groups = group_indices([(item[0].shape[1:], item[0].dtype) for item in items])
  out: list[Any] = [None] * len(items)
  for idx in groups:
    args = [stack([items[i][k] for i in idx]) for k in range(len(items[idx[0]]))]
    results = fn(*args)
    pieces = [unstack(r, [items[i][0].shape[0] for i in idx]) for r in results]
    for j, i in enumerate(idx):
      out[i] = tuple(p[j] for p in pieces)
  return out


def per_matrix(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` (stacks `(B, ...)` to a pytree of stacks), run one batch member at a time on CPU.

  For LAPACK-backed decompositions (`eigh`, `qr`, `svd`, ...). jaxlib's CPU kernel of such a
  decomposition splits a batch of B > 1 matrices into pieces scheduled on XLA's intra-op thread
  pool, then blocks its own thread until they are done. When the thunk executor starts two of
  them at once on pool threads (two independent decompositions whose inputs come from parallel
  kernels, as Shampoo's per-size `eigh` or SOAP's per-size `qr`), each can wait for pieces
  queued behind the other: once every pool thread waits, the program never finishes
  (jaxlib 0.10.2, 2 cores: one run in six of benchmarks/shampoo_hang.py). A single matrix is
  decomposed inline, never waiting on the pool; so on CPU, `fn` runs under `lax.map` on
  `(1, ...)` slices. Same LAPACK calls, same results; the batch members are decomposed in turn
  instead of in parallel. Elsewhere (GPU) `fn` gets the whole batch. B = 1 calls `fn` directly.
  """
  def one_at_a_time(*args):
    return jax.lax.map(
        lambda xs: jax.tree.map(lambda r: r[0], fn(*(x[None] for x in xs))), args)

  def call(*args):
    if all(jnp.shape(x)[0] == 1 for x in args):
      return fn(*args)
    return jax.lax.platform_dependent(*args, cpu=one_at_a_time, default=fn)

  return call
