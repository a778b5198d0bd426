"""Leaves of the same shape and dtype processed as one batched operation.

A transformer without `scan` has dozens of identical matrices; running Newton–Schulz
(`orthogonalize`) or an `eigh` (`scale_by_shampoo`, `scale_by_soap`) once per group of equal
shapes, on their stack, instead of once per leaf, cuts the kernels per step and the compile
time by the group size. Stacking copies each group's arrays once.
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
