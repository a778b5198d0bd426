"""Muon's matrix primitives: Newton–Schulz orthogonalization and the shape-dependent scaling.

`orthogonalize` replaces each matrix update `X = U S Vᵀ` by an approximation of `U Vᵀ`, the
nearest semi-orthogonal matrix, with a few steps of a quintic Newton–Schulz iteration.
Leaves that reach the iteration with the same matrix shape and dtype are stacked and iterated
as one batched matrix product, so a transformer's dozens of equal-shape weights cost a handful
of batched kernels per iteration, not a handful per weight.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from gradxform import _check
from gradxform._base import GradientTransformation, transform
from gradxform._batching import by_shape
from gradxform._transforms.stateless import stateless
from gradxform._wrappers.masked import evaluate

#: Jordan's quintic coefficients (a, b, c): `f(X) = a X + b (XXᵀ) X + c (XXᵀ)² X`.
DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)
#: Named coefficient sets: "standard" (Jordan's), "dion" (one (a, b, c) per step, Ahn et al.).
NS_COEFFS_PRESETS: dict[str, Any] = {
    "standard": DEFAULT_NS_COEFFS,
    "dion": ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
             (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)),
}
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")


class MuonDimensionNumbers(NamedTuple):
  """Which axes of a parameter are the matrix that Muon orthogonalizes.

  The parameter is read as `x @ W = y`: `reduction_axis` (fan-in, contracted with the input)
  and `output_axis` (fan-out). Each is an axis or a tuple of axes (flattened together); every
  other axis is a batch axis, and each slice along the batch axes is orthogonalized on its
  own. The default is a plain `(in, out)` matrix. Optax's `MuonDimensionNumbers` (same
  fields) is accepted wherever this one is.

  Example:
    >>> dn = gx.MuonDimensionNumbers(reduction_axis=1, output_axis=2)   # (heads, in, out)
    >>> tx = gx.orthogonalize(dimension_numbers={"w": dn})
    >>> kernel = {"w": jnp.ones((4, 8, 8))}
    >>> tx.update(kernel, tx.init(kernel))[0]["w"].shape
    (4, 8, 8)

  References:
    Optax's `optax.contrib.MuonDimensionNumbers` (https://github.com/google-deepmind/optax).
  """
  reduction_axis: Sequence[int] | int = 0
  output_axis: Sequence[int] | int = 1


def _is_spec(x: Any) -> bool:
  return x is None or (hasattr(x, "reduction_axis") and hasattr(x, "output_axis"))


def dims_per_leaf(where: str, dims: Any, tree: Any) -> list[Any]:
  """One dimension spec (or None) per leaf of `tree`, in flatten order.

  `dims` is None (every leaf a plain 2-D matrix), or a tree of specs and Nones with the
  structure of `tree` or a prefix of it (a spec or None covers a whole subtree), or a function
  of `tree` returning one. `MaskedNode`s in `tree` hold no leaves, so whatever covers them is
  dropped.
  """
  n = len(jax.tree.leaves(tree))
  if dims is None:
    return [MuonDimensionNumbers()] * n
  dims = evaluate(dims, tree)
  specs, treedef = jax.tree.flatten(dims, is_leaf=_is_spec)
  try:
    subtrees = treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{where}: the dimension numbers must have the structure of the params, "
                     f"or a prefix of it ({e})") from None
  out: list[Any] = []
  for spec, sub in zip(specs, subtrees):
    if not _is_spec(spec):
      raise ValueError(f"{where}: the dimension numbers must be MuonDimensionNumbers or None, "
                       f"got {type(spec).__name__} {spec!r}")
    out.extend([spec] * len(jax.tree.leaves(sub)))
  return out


def _axes(where: str, spec: Any, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The reduction and output axes of `spec` as tuples of non-negative axes."""
  def norm(ax):
    axes = (ax,) if isinstance(ax, int) else tuple(ax)
    for a in axes:
      if not -ndim <= a < ndim:
        raise ValueError(f"{where}: axis {a} of {spec!r} is out of range for a leaf of rank "
                         f"{ndim}")
    return tuple(a % ndim for a in axes)
  red, out = norm(spec.reduction_axis), norm(spec.output_axis)
  if not red or not out or set(red) & set(out):
    raise ValueError(f"{where}: the reduction and output axes must be non-empty and disjoint, "
                     f"got {spec!r} for a leaf of rank {ndim}")
  return red, out


def fans(where: str, shape: tuple[int, ...], spec: Any) -> tuple[int, int]:
  """`(fan_in, fan_out)`: the sizes of the reduction and of the output axes."""
  red, out = _axes(where, spec, len(shape))
  return math.prod(shape[a] for a in red), math.prod(shape[a] for a in out)


def _to_batched(where: str, x: jax.Array, spec: Any) -> tuple[jax.Array, Callable[..., Any]]:
  """`x` as a stack of matrices `(batch, reduction, output)`, and the inverse reshape."""
  if x.ndim < 2:
    raise ValueError(f"{where}: a leaf of shape {x.shape} is not a matrix: Muon needs rank >= 2 "
                     "(give dimension numbers None for it, or leave it to the AdamW fallback)")
  red, out = _axes(where, spec, x.ndim)
  batch = tuple(a for a in range(x.ndim) if a not in red and a not in out)
  perm = batch + red + out
  inv = tuple(sorted(range(x.ndim), key=lambda i: perm[i]))
  sizes = lambda axes: tuple(x.shape[a] for a in axes)
  flat = (math.prod(sizes(batch)), math.prod(sizes(red)), math.prod(sizes(out)))
  unflat = sizes(batch) + sizes(red) + sizes(out)
  return x.transpose(perm).reshape(flat), lambda y: y.reshape(unflat).transpose(inv)


def _t(x: jax.Array) -> jax.Array:
  return jnp.swapaxes(x, -1, -2)


def _quintic(x: jax.Array, a: jax.Array, c: Any) -> jax.Array:
  """`c0 X + (c1 A + c2 A²) X` with `A = XXᵀ` given."""
  b = c[1] * a + c[2] * (a @ a)
  return c[0] * x + b @ x


def _newton_schulz(x: jax.Array, coeffs: tuple[tuple[float, float, float], ...], eps: Any,
                   preconditioning: str, eps_in_max: bool) -> jax.Array:
  """The iteration on a stack `(batch, m, n)` with `m <= n`, one batched product per term."""
  if preconditioning in ("frobenius", "spectral"):
    norm = (jnp.sqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True))
            if preconditioning == "frobenius"
            else jnp.linalg.norm(x, ord=2, axis=(-2, -1), keepdims=True))
    x = x / (jnp.maximum(norm, eps) if eps_in_max else norm + eps)
  for i, c in enumerate(coeffs):
    a = x @ _t(x)
    if i == 0 and preconditioning == "aol":
      # Almost-orthogonal-layer rescaling: s = 1/√(row sums of |XXᵀ|), X ← SX, A ← SAS.
      s = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.abs(a), axis=-1), eps))[..., None]
      x, a = x * s, a * s * _t(s)
    elif i == 0 and preconditioning == "schatten":
      # Schatten-4 rescaling: X ← X/√‖XXᵀ‖_F.
      s = jax.lax.rsqrt(jnp.maximum(jnp.sqrt(jnp.sum(a * a, axis=(-2, -1), keepdims=True)),
                                    eps))
      x, a = x * s, a * s * s
    x = _quintic(x, a, c)
  return x


def ns_coefficients(where: str, ns_coeffs: Any, ns_steps: Any
                    ) -> tuple[tuple[float, float, float], ...]:
  """The (a, b, c) of each Newton–Schulz step, validated, as Python floats."""
  ns_steps = _check.integer(where, "ns_steps", ns_steps, minimum=1)
  if isinstance(ns_coeffs, str):
    _check.one_of(where, "ns_coeffs", ns_coeffs, tuple(NS_COEFFS_PRESETS))
    ns_coeffs = NS_COEFFS_PRESETS[ns_coeffs]
  try:
    rows = [[float(v) for v in row] for row in ns_coeffs]       # (n, 3): one row per step
  except TypeError:
    try:
      rows = [[float(v) for v in ns_coeffs]] * ns_steps         # (3,): the same every step
    except (TypeError, ValueError):
      rows = []
  except ValueError:
    rows = []
  if not rows or any(len(r) != 3 or not all(map(math.isfinite, r)) for r in rows):
    raise ValueError(f"{where}: ns_coeffs must be three finite numbers (a, b, c), one such "
                     f"triple per step, or a preset name {tuple(NS_COEFFS_PRESETS)}, got "
                     f"{ns_coeffs!r}")
  if len(rows) > ns_steps:
    raise ValueError(f"{where}: ns_coeffs has {len(rows)} rows (one per step), more than "
                     f"ns_steps={ns_steps}")
  return tuple((r[0], r[1], r[2]) for r in rows)


@transform(hyperparams=("eps",))
def orthogonalize(ns_coeffs: Any = DEFAULT_NS_COEFFS, ns_steps: int = 5, eps: float = 1e-8, *,
                  preconditioning: str = "frobenius", dimension_numbers: Any = None,
                  adaptive: bool = False, eps_in_max: bool = False) -> GradientTransformation:
  """Newton–Schulz orthogonalization: `X ← NS_k(X / (‖X‖_F + ε))`, about `U Vᵀ` of `X = U S Vᵀ`.

  Each step is Jordan's quintic `X ← a X + b (XXᵀ) X + c (XXᵀ)² X` on the wide orientation of
  the matrix (a tall matrix is transposed and back). The coefficients drive every singular
  value into about [0.7, 1.2] in five steps rather than exactly to 1, which Muon does not need.
  Leaves with the same matrix shape and dtype are stacked and iterated together, one batched
  matrix product per term (three per step for each distinct shape). No state. A complex leaf
  is its real view `(..., 2)` (as for every transform): with the default dimension numbers its
  real and imaginary parts are orthogonalized as two real matrices, where Optax iterates on
  the complex matrix.

  Used by `gx.muon` after its momentum; alone, it is the primitive of any orthogonalized chain.
  Equal to Optax's `orthogonalize_via_newton_schulz` mapped over the leaves.

  Args:
    ns_coeffs: `(a, b, c)` for every step, or one such triple per step (each is run once;
      at most `ns_steps` of them, as Optax), or a preset: "standard" (the default triple) or
      "dion" (five triples).
    ns_steps: the number of steps, >= 1.
    eps: ε >= 0 added to the norm before dividing (the AOL/Schatten floor).
    preconditioning: how the first step is scaled: "frobenius" (`X/(‖X‖_F + ε)`, default),
      "spectral" (`X/(‖X‖₂ + ε)`, an SVD per matrix), "aol" (Boissin et al.'s row rescaling
      in the first step), "schatten" (`X/√‖XXᵀ‖_F` in the first step).
    dimension_numbers: None (every leaf a 2-D `(in, out)` matrix), or a tree (or prefix) of
      `gx.MuonDimensionNumbers` and None like params, or a function of params returning one.
      A leaf whose spec is None passes through unchanged.
    adaptive: scale each leaf's result by `⟨X, O⟩`, the dual norm of its input (Bernstein &
      Newhouse).
    eps_in_max: divide by `max(‖X‖, ε)` instead (torch.optim.Muon's clamp).

  State: `EmptyState()`.

  Example:
    >>> tx = gx.orthogonalize()
    >>> updates, _ = tx.update({"w": grads["w"]}, tx.init({"w": params["w"]}))
    >>> w = updates["w"]                      # rank one: its singular value 1 → 0.696
    >>> bool(jnp.all(w == w[0, 0])), round(float(w[0, 0]), 3)
    (True, 0.348)

  References:
    Jordan et al., "Muon: an optimizer for hidden layers in neural networks", 2024
    (https://kellerjordan.github.io/posts/muon/).
    Bernstein & Newhouse, "Old optimizer, new norm: an anthology", 2024
    (https://arxiv.org/abs/2409.20325).
  """
  where = "orthogonalize"
  coeffs = ns_coefficients(where, ns_coeffs, ns_steps)
  eps = _check.non_negative(where, "eps", eps)
  _check.one_of(where, "preconditioning", preconditioning, PRECONDITIONINGS)

  def apply(updates, params):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    specs = dims_per_leaf(where, dimension_numbers, updates)
    stacks, undo = [], []
    for i, (x, spec) in enumerate(zip(leaves, specs)):
      if spec is None:
        continue
      y, inverse = _to_batched(where, x, spec)
      tall = y.shape[1] > y.shape[2]
      stacks.append((_t(y) if tall else y,))     # wide, so one shape per group
      undo.append((i, inverse, tall))
    # one Newton–Schulz per group of equal (matrix shape, dtype), on the group's stack
    results = by_shape(lambda y: (_newton_schulz(y, coeffs, eps, preconditioning, eps_in_max),),
                       stacks)
    out = list(leaves)
    for (i, inverse, tall), (piece,) in zip(undo, results):
      o = inverse(_t(piece) if tall else piece)
      if adaptive:
        o = jnp.sum(leaves[i] * o) * o
      out[i] = o.astype(leaves[i].dtype)
    return treedef.unflatten(out)

  return stateless(apply)


@transform(hyperparams=("consistent_rms",))
def scale_by_shape(weight_dimension_numbers: Any = None, consistent_rms: float | None = None,
                   *, torch_layout: bool = False) -> GradientTransformation:
  """Scales each matrix update by a factor of its shape: `√max(1, fan_out/fan_in)` by default.

  The default keeps the update's spectral norm per unit of width constant (Jordan's width
  transfer; fan-in and fan-out are the sizes of the reduction and output axes, see
  `gx.MuonDimensionNumbers`). With `consistent_rms=r` the factor is `r √max(fan_in, fan_out)`
  (Liu et al.: an orthogonalized update then has the RMS `r` of an AdamW update, r = 0.2).
  No state. Equal to `optax.contrib.scale_by_shape`.

  Args:
    weight_dimension_numbers: as `dimension_numbers` of `gx.orthogonalize` (None: every leaf
      a 2-D `(in, out)` matrix; a leaf whose spec is None passes through unchanged).
    consistent_rms: None (width scaling) or r >= 0.
    torch_layout: read a matrix as torch's `(out, in)` weight, so that the width factor is
      `√max(1, A/B)` for shape `(A, B)`: torch.optim.Muon's `adjust_lr_fn="original"`.

  State: `EmptyState()`.

  Example:
    >>> tx = gx.scale_by_shape()
    >>> tall = {"w": jnp.ones((2, 8))}        # fan_in 2, fan_out 8: √4
    >>> tx.update(tall, tx.init(tall))[0]["w"][0, 0]
    Array(2., dtype=float32)

  References:
    Jordan et al., "Muon: an optimizer for hidden layers in neural networks", 2024
    (https://kellerjordan.github.io/posts/muon/).
    Liu et al., "Muon is scalable for LLM training", 2025 (https://arxiv.org/abs/2502.16982).
  """
  where = "scale_by_shape"
  if consistent_rms is not None:
    consistent_rms = _check.non_negative(where, "consistent_rms", consistent_rms)

  def factor(shape, spec):
    fan_in, fan_out = fans(where, shape, spec)
    if torch_layout:
      fan_in, fan_out = fan_out, fan_in
    if consistent_rms is None:
      return math.sqrt(max(1.0, fan_out / fan_in))
    return math.sqrt(max(fan_in, fan_out)) * consistent_rms

  def apply(updates, params):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    specs = dims_per_leaf(where, weight_dimension_numbers, updates)
    return treedef.unflatten([
        x if spec is None else (factor(x.shape, spec) * x).astype(x.dtype)
        for x, spec in zip(leaves, specs)])

  return stateless(apply)
