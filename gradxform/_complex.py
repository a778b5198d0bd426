"""Complex parameters as pairs of reals, the way torch.optim treats them.

A complex entry `z = a + ib` is optimized as the two real numbers `(a, b)`: every transform sees
a real leaf of shape `z.shape + (2,)` (real part at index 0, imaginary part at index 1, the
layout of `torch.view_as_real`), so Adam's second moment of `z` is the pair `(E[a²], E[b²])`,
not `E[|z|²]`, and a sign is taken per part. Linear transforms (SGD, momentum, weight decay,
clipping by a norm) give the same numbers either way; the nonlinear ones (every adaptive and
sign-based method) are what this fixes: squaring the complex gradient `g²` would silently
give wrong results.

`gradxform._base.transform` applies this to every decorated transform: `init` and `update` see
real trees whenever the parameters, updates or raw gradient hold a complex leaf, and `update`
returns complex updates again. The state therefore holds, for a complex leaf, real arrays with
the extra trailing axis of 2. Trees without complex leaves are passed through untouched (one
dtype look-up per leaf at trace time, no traced operation).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _is_complex(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.dtype(dtype).kind == "c"


def has_complex(tree: Any) -> bool:
  """Whether any leaf of `tree` is a complex array (False for None)."""
  return tree is not None and any(_is_complex(x) for x in jax.tree.leaves(tree))


def to_real(tree: Any) -> Any:
  """Each complex leaf `z` as the real array `stack([z.real, z.imag], -1)`; others unchanged."""
  if not has_complex(tree):
    return tree
  return jax.tree.map(lambda x: jnp.stack([x.real, x.imag], -1) if _is_complex(x) else x, tree)


def from_real(tree: Any, like: Any) -> Any:
  """The inverse of `to_real`: leaves of `tree` whose `like` leaf is complex become complex
  again (in `like`'s dtype); the rest pass through."""

  def back(x, z):
    if x is None or not _is_complex(z):
      return x
    return jax.lax.complex(x[..., 0], x[..., 1]).astype(z.dtype)

  return jax.tree.map(back, tree, like, is_leaf=lambda x: x is None)
