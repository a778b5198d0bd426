"""Adam and AdamW as one pass over every leaf: the fused tail of a chain on CPU.

A chain whose last parts are, in this order,

    scale_by_momentum(β1, ema=True)   bias_correction(β1')
    scale_by_rms(β2, ε, eps_in_sqrt=False, bias_correction=True, eps_root=ε_root)
    [decoupled_weight_decay(λ)]       scale(s) or scale_by_learning_rate(η or schedule)

(Adam's and AdamW's chains, also after other parts such as clipping) has a *fused tail*.
`gx.update_and_apply` runs it as one call of the C++ kernel `adam.cc`, which reads g, p, m, v
once and writes p, m, v once, in place (7 words a parameter; the per-leaf chain and its
`apply_updates` take three loops and about 10 on XLA:CPU), for all leaves in one call.

Each part declares what it computes in its metadata (`fusable`, see `gradxform._base.fusable`);
this module matches those declarations, not names. It runs only where its numbers equal the
per-leaf chain's (float32 throughout, x64 off, every tree checked by the chain, no raw gradient
from an earlier accumulating part, the CPU backend with the kernel built); otherwise `apply`
returns None and the chain runs its parts. The scalars are computed here exactly as the parts
compute them, and the kernel multiplies by `1/(1−β^t)` where the parts divide by `1−β^t`:
XLA rewrites that division into the same multiplication.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _numerics
from gradxform._base import meta, next_count

_ADAM = ("ema_momentum", "bias_correction", "adam_rms")
#: Leaves per kernel call. XLA's compile time grows faster than linearly in the aliased
#: operands of one custom call (500 leaves: 4.8 s in one call, 0.5 s in calls of 64); calls of
#: 64 leaves keep it linear in the calls.
_LEAVES_PER_CALL = 64


class Plan(NamedTuple):
  """The fused tail of a chain: where it starts and each of its parts' declaration."""
  start: int
  parts: tuple[tuple[str, dict[str, Any]], ...]   # (kind, values) per part, in order


def plan(parts: list[Any]) -> Plan | None:
  """The fused tail of the flat parts of a chain, or None when it has none."""
  kinds: list[tuple[str, dict[str, Any]]] = [meta(tx, "fusable") or ("", {}) for tx in parts]
  names = [k for k, _ in kinds]
  if not names or names[-1] not in ("scale", "schedule"):
    return None
  head = len(names) - 1 - (len(names) >= 2 and names[-2] == "weight_decay")
  start = head - len(_ADAM)
  if start < 0 or tuple(names[start:head]) != _ADAM:
    return None
  return Plan(start, tuple(kinds[start:]))


def _f32(x: Any) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _is_f32_array(x: Any) -> bool:
  return isinstance(x, jax.Array) and x.dtype == jnp.float32


def apply(p: Plan, updates: Any, states: list[Any], params: Any, chain_count: Any,
          *, checked: bool, grad: Any) -> tuple[Any, list[Any]] | None:
  """New params and the tail's new states, or None where the kernel cannot run exactly.

  `updates` enter the tail's first part; `states` are the tail's parts' states; `chain_count`
  is the chain's shared step counter (for parts whose own `count` is None).
  """
  from gradxform._fused import build
  if (not checked or grad is not None or jax.config.jax_enable_x64
      or jax.default_backend() != "cpu"):
    return None
  (_, mom), (_, corr), (_, rms) = p.parts[:3]
  decay = next((v for k, v in p.parts if k == "weight_decay"), None)
  kind, lr = p.parts[-1]
  g = jax.tree.leaves(updates)
  ps = jax.tree.leaves(params)
  m = jax.tree.leaves(states[0].trace)
  v = jax.tree.leaves(states[2].nu)
  if not (len(g) == len(ps) == len(m) == len(v)) or not all(
      _is_f32_array(x) for x in g + ps + m + v):
    return None
  counts = [s.count if s.count is not None else chain_count for s in states]
  used = [counts[i] for i in range(3)] + ([counts[-1]] if kind == "schedule" else [])
  if any(c is None for c in used) or build.library() is None:
    return None

  def correction(d: Any, count: Any) -> jax.Array:
    return 1.0 / _numerics.one_minus_decay_power(d, count + 1)

  b1, b2 = mom["decay"], rms["decay"]
  eps_root = rms["eps_root"]
  root = not (isinstance(eps_root, (int, float)) and eps_root == 0.0)
  scale = lr["factor"] if kind == "scale" else lr["sign"] * lr["fn"](counts[-1])
  scalars = jnp.stack([
      _f32(b1), _f32(1.0 - b1), _f32(b2), _f32(1.0 - b2),
      _f32(correction(corr["decay"], counts[1])), _f32(correction(b2, counts[2])),
      _f32(rms["eps"]), _f32(eps_root if root else 0.0),
      _f32(decay["rate"] if decay is not None else 0.0), _f32(scale)])
  new_p, new_m, new_v = [], [], []
  for lo in range(0, len(g), _LEAVES_PER_CALL):
    hi = min(len(g), lo + _LEAVES_PER_CALL)
    operands = [scalars]
    for leaf in zip(g[lo:hi], ps[lo:hi], m[lo:hi], v[lo:hi]):
      operands += leaf
    results = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in ps[lo:hi] for _ in range(3)]
    aliases = {2 + 4 * i + j: 3 * i + j for i in range(hi - lo) for j in range(3)}
    call = jax.ffi.ffi_call("gx_adam_apply", results, input_output_aliases=aliases,
                            vmap_method="sequential")
    out = call(*operands, root=np.int64(root), decay=np.int64(decay is not None))
    new_p += out[0::3]
    new_m += out[1::3]
    new_v += out[2::3]
  tree = jax.tree.structure
  new_states = list(states)
  new_states[0] = states[0]._replace(count=next_count(states[0], counts[0]),
                                     trace=tree(states[0].trace).unflatten(new_m))
  new_states[1] = states[1]._replace(count=next_count(states[1], counts[1]))
  new_states[2] = states[2]._replace(count=next_count(states[2], counts[2]),
                                     nu=tree(states[2].nu).unflatten(new_v))
  if kind == "schedule":
    new_states[-1] = states[-1]._replace(count=next_count(states[-1], counts[-1]))
  return tree(params).unflatten(new_p), new_states
