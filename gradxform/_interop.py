"""Optax interop, both ways: `from_optax` and `to_optax`.

gradxform transforms already have Optax's shape (a NamedTuple of `init` and `update`), so most
Optax-consuming code (Flax's `TrainState`, `nnx.Optimizer`, `optax.chain`) takes them as they
are. Two places still need an adapter:

* An Optax transform inside a gradxform `chain`. `chain` hands every part two reserved extras,
  `grad` (the raw gradient) and `count` (the chain's shared step counter). An Optax transform
  that does not take extra arguments must receive none; one that does
  (`optax.GradientTransformationExtraArgs`, e.g. `optax.contrib.reduce_on_plateau` reading
  `value=`) must receive the caller's extras but never gradxform's reserved ones, which would
  mean something else to it. `from_optax` does exactly this.
* Code that checks `isinstance(tx, optax.GradientTransformation)` (some Optax utilities and
  user libraries). `to_optax` returns a real `optax.GradientTransformationExtraArgs` holding
  the same two functions, so value equality survives the conversion.

Optax is imported inside the functions only: `import gradxform` never imports Optax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradxform._base import CHECKED_KEY, COUNT_KEY, GRAD_KEY, GradientTransformation, transform

if TYPE_CHECKING:  # pragma: no cover - typing only
  import optax

#: The extras `chain` adds for its own parts; never forwarded to a foreign transform.
RESERVED_EXTRAS = frozenset({GRAD_KEY, COUNT_KEY, CHECKED_KEY})


def _takes_extra_args(tx: Any) -> bool:
  """Whether an Optax transform accepts `**extra_args` in `update`."""
  import optax
  return isinstance(tx, optax.GradientTransformationExtraArgs)


@transform
def from_optax(optax_transform: Any) -> GradientTransformation:
  """Wraps an Optax transform for use inside gradxform (`chain`, `masked`, `partition`, ...).

  `u, s ← optax_transform.update(u, s, params, **extra')`, where `extra'` is the caller's extra
  keyword arguments without gradxform's reserved `grad`, `count` and `trees_checked`, and is
  empty when the Optax transform is a plain `optax.GradientTransformation` (which takes no
  extras). The state is the Optax transform's own state, unchanged.

  Args:
    optax_transform: an `optax.GradientTransformation` or
      `optax.GradientTransformationExtraArgs`.

  Returns:
    A gradxform `GradientTransformation`. Wrapping the same Optax object twice gives equal
    transforms (Optax's own transforms compare by identity, so two separate
    `optax.clip(1.0)` calls give unequal wrappers).

  Example:
    >>> import optax
    >>> tx = gx.chain(gx.from_optax(optax.clip(1.0)), gx.adam(1e-3))

  Note:
    A wrapped Optax transform is opaque to `chain`: it is never treated as a running average,
    so a gradxform second-moment stage after, e.g., `from_optax(optax.trace(0.9))` squares the
    momentum, not the raw gradient. Put gradxform's own `scale_by_momentum` there instead.

  References:
    Optax, "GradientTransformation" and "GradientTransformationExtraArgs",
    https://optax.readthedocs.io/en/latest/api/transformations.html
  """
  init_fn = getattr(optax_transform, "init", None)
  update_fn = getattr(optax_transform, "update", None)
  if not (callable(init_fn) and callable(update_fn)):
    raise TypeError("from_optax: expected an optax.GradientTransformation, got "
                    f"{type(optax_transform).__name__}: {optax_transform!r}")
  if isinstance(optax_transform, GradientTransformation):
    raise TypeError("from_optax: this is already a gradxform GradientTransformation; use it "
                    "directly (no wrapper needed).")
  passes_extra = _takes_extra_args(optax_transform)

  def init(params):
    return init_fn(params)

  def update(updates, state, params=None, **extra):
    if not passes_extra:
      return update_fn(updates, state, params)
    forwarded = {k: v for k, v in extra.items() if k not in RESERVED_EXTRAS}
    return update_fn(updates, state, params, **forwarded)

  return GradientTransformation(init, update)


def to_optax(tx: GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Returns `tx` as an `optax.GradientTransformationExtraArgs` (a real Optax instance).

  The result holds `tx`'s own `init` and `update`, so it computes exactly what `tx` computes,
  `isinstance(result, optax.GradientTransformation)` holds, and equal gradxform transforms give
  equal Optax ones (`to_optax(gx.adam(1e-3)) == to_optax(gx.adam(1e-3))`). Extra keyword
  arguments from Optax (`value=`, ...) reach `tx.update`; gradxform transforms ignore the ones
  they do not use. Use it where code checks the Optax type; elsewhere `tx` itself works.

  Args:
    tx: a gradxform `GradientTransformation` (or anything with `init` and `update`).

  Example:
    >>> import optax
    >>> opt = optax.chain(optax.clip_by_global_norm(1.0), gx.to_optax(gx.adam(1e-3)))

  References:
    Optax, "GradientTransformationExtraArgs",
    https://optax.readthedocs.io/en/latest/api/transformations.html
  """
  import optax
  if isinstance(tx, optax.GradientTransformationExtraArgs):
    return tx
  if isinstance(tx, optax.GradientTransformation):
    return optax.with_extra_args_support(tx)  # a plain Optax transform: drop extras for it
  init_fn = getattr(tx, "init", None)
  update_fn = getattr(tx, "update", None)
  if not (callable(init_fn) and callable(update_fn)):
    raise TypeError(f"to_optax: expected a GradientTransformation, got {type(tx).__name__}: "
                    f"{tx!r}")
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
