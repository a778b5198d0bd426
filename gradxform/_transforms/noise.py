"""Annealed Gaussian gradient noise."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _check, _numerics
from gradxform._base import GradientTransformation, next_count, step_count, transform


class NoiseState(NamedTuple):
  """State of `add_gradient_noise`."""
  # int32 scalar: updates so far (None: the chain's counter is used)
  count: jax.Array | None  # type: ignore[assignment]  # shadows tuple.count


def noise_key(seed: int, count: jax.Array) -> jax.Array:
  """The PRNG key of step `count` (0-based): `fold_in(PRNGKey(seed), count)`.

  Leaf `i` (in `jax.tree.leaves` order) draws from `jax.random.split(key, n_leaves)[i]`.
  Deriving keys from the step keeps the state a single counter and makes every data-parallel
  replica draw the same noise.
  """
  return jax.random.fold_in(jax.random.PRNGKey(seed), count)


@transform(shares_count=True, hyperparams=("eta", "gamma"))
def add_gradient_noise(eta: float = 0.01, gamma: float = 0.55,
                       seed: int = 0) -> GradientTransformation:
  """Adds annealed Gaussian noise: `g ← g + N(0, σ_t²)`, `σ_t² = η / (1 + t')^γ`.

  `t'` = updates before this one (0 on the first step), as docs/ALGORITHMS.md and Neelakantan
  et al. For the random stream see `noise_key`.

  Args:
    eta: η ≥ 0, the initial variance.
    gamma: γ ≥ 0, the annealing exponent.
    seed: integer seed.

  State: `NoiseState(count)`.

  Example:
    >>> tx = gx.add_gradient_noise(eta=0.0)      # η = 0: no noise
    >>> tx.update(grads, tx.init(params))[0]["b"]
    Array([0.5, 0.5], dtype=float32)
    >>> tx = gx.add_gradient_noise(eta=0.01, seed=0)
    >>> noisy, _ = tx.update(grads, tx.init(params))
    >>> bool(jnp.all(noisy["w"] != grads["w"]))
    True

  References:
    Neelakantan et al., "Adding gradient noise improves learning for very deep networks",
    2015.
  """
  where = "add_gradient_noise"
  eta = _check.non_negative(where, "eta", eta)
  gamma = _check.non_negative(where, "gamma", gamma)
  seed = _check.integer(where, "seed", seed)

  def init(params):
    del params
    return NoiseState(count=_numerics.zero_count())

  def update(updates, state, params=None, **extra):
    del params
    count = step_count(state, extra)
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(noise_key(seed, count), max(len(leaves), 1))
    std = jnp.sqrt(eta / (1.0 + count.astype(_numerics.scalar_dtype())) ** gamma)
    noisy = [_numerics.cast(u + std * jax.random.normal(k, jnp.shape(u),
                                                        _numerics.compute_dtype(u)), u.dtype)
             for u, k in zip(leaves, keys)]
    return treedef.unflatten(noisy), NoiseState(count=next_count(state, count))

  return GradientTransformation(init, update)
