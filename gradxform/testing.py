"""A small kit for checking a transform you wrote (built on chex).

    >>> import gradxform.testing as gxt
    >>> my_tx = gx.sgd(0.1, momentum=0.9)
    >>> gxt.check_transform(my_tx, params)                      # all checks
    >>> gxt.check_jit(my_tx, params, grads)                     # or one at a time

Every check raises `AssertionError` whose message starts with the check's name and says what
differed and where (the leaf path). The checks:

* `check_init_pure`: `init` leaves params untouched, returns the same state when called twice
  and under `jax.jit` (no hidden global state, no host randomness).
* `check_jit`: a few steps give the same updates and state with and without `jax.jit`.
* `check_state_stable`: state structure, shapes and dtypes do not change across steps, updates
  keep each gradient's shape and dtype, and the jitted update is traced once.
* `check_zero_grads`: zero gradients give finite updates and state.
* `check_vmap`: under `jax.vmap` over a batch of parameter sets, results equal a Python loop.
* `check_pmap`: under `jax.pmap` over the local devices (at most 2), results equal a loop.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_init_pure", "check_jit", "check_pmap", "check_state_stable",
           "check_transform", "check_vmap", "check_zero_grads", "default_grads"]


def default_grads(params: Any, seed: int = 0) -> Any:
  """Deterministic pseudo-random gradients like `params` (each leaf in its own dtype)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), max(len(leaves), 1))
  out = [jax.random.normal(k, jnp.shape(p), jnp.float32).astype(jnp.result_type(p))
         for k, p in zip(keys, leaves)]
  return treedef.unflatten(out)


def _fail(check: str, msg: str) -> None:
  raise AssertionError(f"{check}: {msg}")


def _leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
  return [(jax.tree_util.keystr(p) or "<root>", x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _assert_close(check: str, what: str, expected: Any, got: Any, rtol: float,
                  atol: float) -> None:
  if jax.tree.structure(expected) != jax.tree.structure(got):
    _fail(check, f"{what}: tree structure differs:\n  {jax.tree.structure(expected)}\n  "
          f"{jax.tree.structure(got)}")
  for (path, e), g in zip(_leaves_with_paths(expected), jax.tree.leaves(got)):
    e, g = np.asarray(e), np.asarray(g)
    if e.shape != g.shape or e.dtype != g.dtype:
      _fail(check, f"{what} at {path}: {e.dtype}{list(e.shape)} vs {g.dtype}{list(g.shape)}")
    if np.issubdtype(e.dtype, np.inexact) or e.dtype.name in ("bfloat16", "float16"):
      e64, g64 = e.astype(np.float64), g.astype(np.float64)
      tol = max(rtol, float(jnp.finfo(e.dtype).eps) * 4)
      if not np.allclose(e64, g64, rtol=tol, atol=max(atol, tol), equal_nan=True):
        err = np.max(np.abs(e64 - g64)) if e.size else 0.0
        _fail(check, f"{what} at {path} differs (max abs difference {err:.3g}).")
    elif not np.array_equal(e, g):
      _fail(check, f"{what} at {path} differs: {e} vs {g}.")


def _run(tx: Any, params: Any, grads: Any, steps: int, needs_params: bool, extra: dict,
         update: Callable[..., Any] | None = None, state: Any = None) -> tuple[list, list]:
  """`steps` steps; returns the lists of updates and states (one per step)."""
  update = update or tx.update
  state = tx.init(params) if state is None else state
  outs, states = [], []
  for i in range(steps):
    factor = 1.0 + 0.5 * i
    g = jax.tree.map(lambda x, f=factor: (x * f).astype(x.dtype), grads)
    u, state = update(g, state, params if needs_params else None, **extra)
    params = jax.tree.map(lambda p, d: (p + d).astype(p.dtype), params, u)
    outs.append(u)
    states.append(state)
  return outs, states


class _SharedJit:
  """One `jax.jit(tx.update)` that `check_transform` hands to every check, so the update is
  compiled once instead of once per check; it counts its traces (`check_state_stable`)."""

  def __init__(self, tx: Any):
    self.traces = 0

    def counted(*args, **kwargs):
      self.traces += 1
      return tx.update(*args, **kwargs)

    self.update = jax.jit(counted)


def check_init_pure(tx: Any, params: Any) -> None:
  """`init` does not modify params and returns equal states (twice, and under jit)."""
  name = "check_init_pure"
  before = jax.tree.map(lambda x: np.array(x, copy=True), params)
  first = tx.init(params)
  _assert_close(name, "params after init (init must not modify them)", before,
                jax.tree.map(np.asarray, params), 0.0, 0.0)
  second = tx.init(params)
  _assert_close(name, "state of a second init() call (init must not depend on hidden state)",
                first, second, 0.0, 0.0)
  jitted = jax.jit(tx.init)(params)
  _assert_close(name, "state of jax.jit(init) (init must not depend on host values)",
                first, jitted, 0.0, 0.0)


def check_jit(tx: Any, params: Any, grads: Any = None, *, needs_params: bool = False,
              extra: dict | None = None, steps: int = 3, rtol: float = 1e-6,
              atol: float = 1e-6, _jit: _SharedJit | None = None) -> None:
  """`steps` steps with and without `jax.jit` give the same updates and states."""
  name = "check_jit"
  grads = default_grads(params) if grads is None else grads
  extra = extra or {}
  plain_u, plain_s = _run(tx, params, grads, steps, needs_params, extra)
  jitted = _jit.update if _jit is not None else jax.jit(tx.update)
  jit_u, jit_s = _run(tx, params, grads, steps, needs_params, extra, jitted)
  for i in range(steps):
    _assert_close(name, f"updates of step {i + 1} (jit vs no jit)", plain_u[i], jit_u[i],
                  rtol, atol)
    _assert_close(name, f"state after step {i + 1} (jit vs no jit)", plain_s[i], jit_s[i],
                  rtol, atol)


def _check_layout(name: str, reference: Any, got: Any, structure_msg: str, leaf_msg: str) -> None:
  """Fails unless `got` has `reference`'s tree structure and each leaf's shape and dtype.

  `structure_msg` is formatted with `error`; `leaf_msg` with `path`, `ref` and `got`, each leaf
  described as e.g. `float32[3, 2]`.
  """
  try:
    chex.assert_trees_all_equal_structs(reference, got)
  except AssertionError as e:
    _fail(name, structure_msg.format(error=e))
  for (path, x), y in zip(_leaves_with_paths(reference), jax.tree.leaves(got)):
    if jnp.shape(x) != jnp.shape(y) or jnp.result_type(x) != jnp.result_type(y):
      _fail(name, leaf_msg.format(path=path, ref=f"{jnp.result_type(x)}{list(jnp.shape(x))}",
                                  got=f"{jnp.result_type(y)}{list(jnp.shape(y))}"))


def check_state_stable(tx: Any, params: Any, grads: Any = None, *, needs_params: bool = False,
                       extra: dict | None = None, steps: int = 3,
                       _jit: _SharedJit | None = None) -> None:
  """State structure/shapes/dtypes fixed across steps; updates keep grads' shapes/dtypes."""
  name = "check_state_stable"
  grads = default_grads(params) if grads is None else grads
  extra = extra or {}
  init_state = tx.init(params)
  shared = _jit if _jit is not None else _SharedJit(tx)
  outs, states = _run(tx, params, grads, steps, needs_params, extra, shared.update)
  for i, (u, s) in enumerate(zip(outs, states)):
    step = i + 1
    _check_layout(name, init_state, s,
                  f"the state's tree structure changed at step {step}: {{error}}",
                  f"state leaf {{path}} changed from {{ref}} to {{got}} at step {step}.")
    _check_layout(name, grads, u,
                  "the updates' tree structure differs from the gradients': {error}",
                  f"update leaf {{path}} is {{got}}, the gradient is {{ref}} (step {step}).")
  if shared.traces > 1:
    _fail(name, f"the jitted update was traced {shared.traces} times in {steps} steps: the state "
          "it returns differs in type from the state it got (e.g. weak types or Python "
          "scalars in the state), so every step recompiles.")


def check_zero_grads(tx: Any, params: Any, *, needs_params: bool = False,
                     extra: dict | None = None, steps: int = 2,
                     _jit: _SharedJit | None = None) -> None:
  """Zero gradients give finite updates and state (no 0/0)."""
  name = "check_zero_grads"
  zeros = jax.tree.map(jnp.zeros_like, params)
  outs, states = _run(tx, params, zeros, steps, needs_params, extra or {},
                      _jit.update if _jit is not None else None)
  for i, (u, s) in enumerate(zip(outs, states)):
    for what, tree in (("update", u), ("state", s)):
      for path, x in _leaves_with_paths(tree):
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact) and not bool(jnp.all(jnp.isfinite(x))):
          _fail(name, f"{what} leaf {path} is not finite after step {i + 1} with zero "
                "gradients (a division by a zero norm or accumulator?).")


def _batched(tree: Any, n: int) -> Any:
  return jax.tree.map(lambda x: jnp.stack([(x * (1.0 + 0.25 * i)).astype(x.dtype)
                                           for i in range(n)]), tree)


def _index(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda x: x[i], tree)


def _check_mapped(name: str, mapper: Callable[[Callable], Callable], n: int, tx: Any,
                  params: Any, grads: Any, needs_params: bool, extra: dict, steps: int,
                  rtol: float, atol: float, shared: _SharedJit | None = None) -> None:
  grads = default_grads(params) if grads is None else grads
  bparams, bgrads = _batched(params, n), _batched(grads, n)
  try:
    bstate = jax.jit(mapper(tx.init))(bparams)
    upd = jax.jit(mapper(lambda g, s, p: tx.update(g, s, p if needs_params else None,
                                                   **extra)))
    bu, bs = _run(tx, bparams, bgrads, steps, True, {}, upd, bstate)
  except AssertionError:
    raise
  except Exception as e:  # noqa: BLE001 - report any failure under the transformation
    _fail(name, f"the transform failed under the mapping: {type(e).__name__}: {e}")
  # the un-mapped reference runs jitted (jit against eager is check_jit's business)
  jitted = shared.update if shared is not None else jax.jit(tx.update)
  ref_update = lambda g, s, p: jitted(g, s, p, **extra)  # noqa: E731
  for i in range(n):
    ref_u, ref_s = _run(tx, _index(bparams, i), _index(bgrads, i), steps, needs_params, {},
                        ref_update)
    for t in range(steps):
      _assert_close(name, f"updates of member {i}, step {t + 1}", ref_u[t], _index(bu[t], i),
                    rtol, atol)
      _assert_close(name, f"state of member {i}, step {t + 1}", ref_s[t], _index(bs[t], i),
                    rtol, atol)


def check_vmap(tx: Any, params: Any, grads: Any = None, *, needs_params: bool = False,
               extra: dict | None = None, steps: int = 2, batch: int = 2, rtol: float = 1e-5,
               atol: float = 1e-6, _jit: _SharedJit | None = None) -> None:
  """Under `jax.vmap` over `batch` parameter sets, each member equals its own un-mapped run."""
  _check_mapped("check_vmap", jax.vmap, batch, tx, params, grads, needs_params, extra or {},
                steps, rtol, atol, _jit)


def check_pmap(tx: Any, params: Any, grads: Any = None, *, needs_params: bool = False,
               extra: dict | None = None, steps: int = 2, rtol: float = 1e-5,
               atol: float = 1e-6, _jit: _SharedJit | None = None) -> None:
  """Under `jax.pmap` over (up to 2) local devices, each replica equals its un-mapped run."""
  n = min(2, jax.local_device_count())
  _check_mapped("check_pmap", jax.pmap, n, tx, params, grads, needs_params, extra or {},
                steps, rtol, atol, _jit)


def check_transform(tx: Any, params: Any, grads: Any = None, *, needs_params: bool = False,
                    extra: dict | None = None, steps: int = 3, pmap: bool = True) -> None:
  """Runs every check above on `tx`; raises AssertionError naming the first that fails.

  Args:
    tx: the transform (anything with `init` and `update`).
    params: example parameters (a pytree of float arrays).
    grads: example gradients like params (default: `default_grads(params)`).
    needs_params: pass params to `update` (for weight decay, parameter averaging, ...).
    extra: keyword arguments for every `update` call (e.g. `{"value": loss}`).
    steps: steps per check.
    pmap: include `check_pmap`.
  """
  shared = _SharedJit(tx)          # one compile of the update for every check below
  check_init_pure(tx, params)
  check_jit(tx, params, grads, needs_params=needs_params, extra=extra, steps=steps, _jit=shared)
  check_state_stable(tx, params, grads, needs_params=needs_params, extra=extra, steps=steps,
                     _jit=shared)
  check_zero_grads(tx, params, needs_params=needs_params, extra=extra, _jit=shared)
  check_vmap(tx, params, grads, needs_params=needs_params, extra=extra, _jit=shared)
  if pmap:
    check_pmap(tx, params, grads, needs_params=needs_params, extra=extra, _jit=shared)
