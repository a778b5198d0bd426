"""The closed-loop harness the optimizer test files share: plain helpers, no tests.

Three parts, one for each kind of check those files make.

* The oracle run. `problem` draws a float64 tree (by default a 130 × 129 matrix `w`, a vector
  `v` of 17 and a scalar `s`) and the curvature `a` and centre `c` of
  `f(θ) = Σ ½ a (θ − c)² + 0.3 Σ sin θ`; `closed_loop` runs a gradxform optimizer and its
  oracle (Optax's counterpart) side by side for `STEPS` steps in one jitted `lax.scan`, each
  step's gradient taken at that optimizer's own current parameters (closed loop), and returns
  both trajectories; `assert_trajectories_close` compares them at every step. The scan is
  compiled once per (configuration, problem shape): the configuration is a static argument.
  `replay` is the same kind of loop on the noisy quadratic that the torch reference files
  (tests/data/torch_*.json) store.
* The contract, on a small float32 tree (`params`, `grads`): `run` steps a transform a few
  times; `assert_inject_equals_plain`, `assert_masked_and_partition_match` and
  `assert_equal_by_value` and `checkpoint_round_trip` / `assert_identical` are the wrapper,
  equality and checkpoint checks every optimizer file makes.

Test files import it as `import closed_loop as cl` (pytest puts `tests/` on the path, as for
`reference.py` and `torch_data.py`).
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

import gradxform as gx

STEPS = 30                 # closed-loop steps per configuration
RTOL = 1e-7                # relative agreement with the oracle required at every step
MASK = {"w": True, "v": False, "s": True}            # a mask over `problem`'s default tree
SHAPES = {"w": (130, 129), "v": (17,), "s": ()}      # `problem`'s default tree


# --- the closed loop against an oracle ---------------------------------------------------

def problem(seed: int = 16, shapes: Mapping[str, tuple[int, ...]] = SHAPES,
            keys: tuple[str, ...] | None = None):
  """Start `θ₀`, curvature `a` and centre `c` of `f(θ) = Σ ½ a (θ − c)² + 0.3 Σ sin θ`.

  Three dicts of float64 NumPy arrays with `shapes`' keys; each leaf draws θ₀ ~ U(−2, 2),
  a ~ U(0.2, 3) and c ~ U(−1, 1) from `np.random.default_rng(seed)`, leaf after leaf in
  `shapes`' order. `keys` keeps only those leaves (drawn all the same, so the kept ones do not
  change).
  """
  rng = np.random.default_rng(seed)

  def draw(shape):
    return (rng.uniform(-2.0, 2.0, shape), rng.uniform(0.2, 3.0, shape),
            rng.uniform(-1.0, 1.0, shape))

  parts = {k: draw(s) for k, s in shapes.items()}
  return tuple({k: np.asarray(p[i]) for k, p in parts.items() if keys is None or k in keys}
               for i in range(3))


def grad(theta, a, c):
  """`∇f(θ) = a (θ − c) + 0.3 cos θ`, leaf by leaf."""
  return jax.tree.map(lambda t, a_, c_: a_ * (t - c_) + 0.3 * jnp.cos(t), theta, a, c)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))     # one compile per configuration
def _both(theta0, a, c, pair, loss, record):
  """Both optimizers of `pair` in closed loop, `STEPS` steps in one scan (see `closed_loop`)."""
  ours, theirs = pair[0](), pair[1]()

  def gradient(p):
    if loss is None:
      return grad(p, a, c), {}
    value, g = jax.value_and_grad(loss)(p, a, c)
    return g, {"value": value}

  def step(carry, _):
    (p1, s1), (p2, s2) = carry
    g1, extra1 = gradient(p1)
    g2, extra2 = gradient(p2)
    u1, s1 = ours.update(g1, s1, p1, **extra1)
    u2, s2 = theirs.update(g2, s2, p2, **extra2)
    p1, p2 = gx.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    recorded = () if record is None else tuple(record(p1, s1, p2, s2))
    return ((p1, s1), (p2, s2)), (p1, p2, *recorded)

  carry = ((theta0, ours.init(theta0)), (theta0, theirs.init(theta0)))
  _, trajectories = jax.lax.scan(step, carry, None, length=STEPS)
  return trajectories


def closed_loop(pair: tuple[Callable[[], Any], Callable[[], Any]], *, seed: int = 16,
                shapes: Mapping[str, tuple[int, ...]] = SHAPES,
                keys: tuple[str, ...] | None = None, loss: Callable | None = None,
                record: Callable | None = None):
  """Runs gradxform's optimizer and its oracle side by side in float64, in closed loop.

  Args:
    pair: `(make_ours, make_theirs)`, two functions of no argument returning the gradxform
      optimizer and the oracle (an Optax `GradientTransformation`). They are a static argument
      of the jitted scan: keep the same pair object for the same configuration and the scan
      compiles once.
    seed, shapes, keys: the problem (see `problem`).
    loss: if given, `loss(θ, a, c)` replaces `f`: the gradient is its gradient and
      `update(..., value=loss)` receives its value (the optimizers that need the loss).
    record: if given, `record(p_ours, s_ours, p_theirs, s_theirs)` returns a tuple of more
      things to keep after every step (an estimate in the state, evaluation parameters).

  Returns:
    `(θ₀, trajectories)`: the start (float64 NumPy) and, as NumPy arrays with a leading axis of
    `STEPS`, `(ours, theirs, *recorded)` after every step.
  """
  with jax.enable_x64(True):
    theta0, a, c = problem(seed, shapes, keys)
    return theta0, jax.device_get(_both(theta0, a, c, pair, loss, record))


def assert_trajectories_close(theta0, ours, theirs, *, rtol: float = RTOL,
                              atol: float = 1e-12, min_move: float | None = 1e-3,
                              what: str = ""):
  """Every leaf of `ours` is float64 and equals `theirs` to `rtol` / `atol` at every step.

  With `min_move`, each leaf must also have moved more than that from `θ₀` by the last step
  (a leaf that barely moves makes a weak comparison). `what` prefixes the failure messages.
  """
  for key in theta0:
    assert ours[key].dtype == np.float64
    if min_move is not None:
      moved = np.abs(ours[key][-1] - theta0[key]).max()
      assert moved > min_move, f"{key} barely moved ({moved}): the comparison would be weak"
    if np.allclose(ours[key], theirs[key], rtol=rtol, atol=atol, equal_nan=True):
      continue                         # all steps pass: skip the step-by-step report
    for t in range(len(ours[key])):
      np.testing.assert_allclose(ours[key][t], theirs[key][t], rtol=rtol, atol=atol,
                                 err_msg=f"{what}leaf {key}, step {t + 1}")


@functools.partial(jax.jit, static_argnums=(0, 1))
def _replay(tx, record, theta0, c, target, noise):
  """The scan of `replay`: `tx` and `record` are static, so equal transforms share one
  compile."""
  def step(carry, noise_t):
    theta, state = carry
    g = jax.tree.map(lambda t, c_, y, e: c_ * (t - y) + e, theta, c, target, noise_t)
    u, state = tx.update(g, state, theta)
    theta = gx.apply_updates(theta, u)
    return (theta, state), (theta if record is None else (theta, record(theta, state)))

  return jax.lax.scan(step, (theta0, tx.init(theta0)), noise)[1]


def replay(tx, data, record=None):
  """`tx` in closed loop on the quadratic a torch reference file stores (the oracles made by
  tests/data/make_torch_*.py): `g_t = c (θ − target) + noise_t` from `theta0`, one step per
  row of `noise`, in one jitted scan (compiled once per transform, equal ones sharing it).

  Args:
    tx: the gradxform transform (hashable: gradxform's transforms are equal by value).
    data: a mapping with `theta0`, `c`, `target` (trees of nested lists) and `noise` (the same
      trees with a leading axis of steps). Call under `jax.enable_x64(True)` for float64.
    record: optional `(params, state) -> tree`, also recorded after every step (a module-level
      function, so that it is the same static argument each call).

  Returns:
    The parameters after every step, as NumPy arrays with a leading axis of steps; with
    `record`, the pair (parameters, recorded trees).
  """
  trees = [{k: np.asarray(v, np.float64) for k, v in data[name].items()}
           for name in ("theta0", "c", "target", "noise")]
  return jax.device_get(_replay(tx, record, *trees))


# --- the contract on a small tree --------------------------------------------------------

def params():
  """A small float32 tree: a 3 × 4 matrix `w`, a vector `b` of 2 and a scalar `s`."""
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.3, -0.2]),
          "s": jnp.asarray(0.7, jnp.float32)}


def params64():
  """`params()` in float64 (call it under `jax.enable_x64(True)`)."""
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params())


def grads(k: int = 0):
  """The gradient of step `k` for `params()` (fixed, not a function of the parameters)."""
  return {"w": jnp.cos(jnp.arange(12.0) + k).reshape(3, 4), "b": jnp.array([-0.5, 0.25 + k]),
          "s": jnp.asarray(0.4 - 0.3 * k, jnp.float32)}


def grads_for(k: int, params):
  """`grads(k)` restricted to the keys of `params` (a sub-tree of `params()`)."""
  return {key: g for key, g in grads(k).items() if key in params}


def grads_at(k: int, params):
  """`grads_for(k, params) + 0.5 θ`: a gradient that depends on where it is taken."""
  return jax.tree.map(lambda g, p: g + 0.5 * p, grads_for(k, params), params)


def run(tx, params, steps: int = 3, *, start: int = 0, state=None, move: bool = False,
        grad_fn: Callable = grads_for, value: Callable[[int], Any] | None = None,
        update: Callable | None = None, apply: Callable = gx.apply_updates):
  """Steps `start, …, start + steps − 1` of `tx` on `params`, eagerly.

  Args:
    tx: the transform; `state` its state to start from (default `tx.init(params)`).
    move: apply each update to the parameters (`apply`), else every step sees `params`.
    grad_fn: `grad_fn(k, params)`, the gradient of step `k` (default `grads_for`).
    value: if given, `value(k)` is passed as `update(..., value=)` (the loss).
    update: the update function to call (default `tx.update`; e.g. a jitted one).

  Returns:
    `(updates, state, params)`: the list of each step's updates, the last state, and the
    parameters after the last step (`params` itself unless `move`).
  """
  update = update or tx.update
  state = tx.init(params) if state is None else state
  outs = []
  for k in range(start, start + steps):
    extra = {} if value is None else {"value": value(k)}
    u, state = update(grad_fn(k, params), state, params, **extra)
    if move:
      params = apply(params, u)
    outs.append(u)
  return outs, state, params


def train(tx, state, params, start: int, stop: int, **run_kwargs):
  """Steps `start … stop − 1` moving the parameters: `(params, state, updates)`."""
  outs, state, params = run(tx, params, stop - start, start=start, state=state, move=True,
                            **run_kwargs)
  return params, state, outs


def assert_steps_close(ours, theirs, *, rtol: float = 2e-6, atol: float = 1e-7):
  """Two lists of update trees are equal step by step, in structure and to `rtol` / `atol`."""
  assert len(ours) == len(theirs)
  for p, q in zip(ours, theirs):
    assert jax.tree.structure(p) == jax.tree.structure(q)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), p, q)


def assert_trees_close(got, want, *, rtol: float, atol: float, err_msg: str = ""):
  """Two trees are equal leaf by leaf to `rtol` / `atol`."""
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                                                       err_msg=err_msg), got, want)


def assert_all_zero(tree):
  """Every leaf of `tree` is exactly 0."""
  assert all(np.all(np.asarray(x) == 0.0) for x in jax.tree.leaves(tree))


def assert_inject_equals_plain(factory: Callable, kwargs: Mapping[str, Any], *,
                               rate: str | None = "learning_rate", run_fn: Callable = run,
                               zero_value: Any = None, atol: float = 1e-7):
  """`inject_hyperparams(factory)(**kwargs)` injects exactly `kwargs`, takes the plain
  optimizer's steps (3 steps of `run_fn`, `run`'s signature and results; to 2e-6 relative),
  and with `rate` set to 0 in its state takes no step (skipped with `rate=None`).
  `zero_value`: the loss passed to that last step, for the optimizers that need it; `atol`:
  the steps' absolute tolerance.
  """
  injected = gx.inject_hyperparams(factory)(**kwargs)
  assert set(injected.init(params()).hyperparams) == set(kwargs)
  plain_out = run_fn(factory(**kwargs), params())[0]
  injected_out = run_fn(injected, params())[0]
  assert_steps_close(plain_out, injected_out, atol=atol)
  if rate is None:
    return
  state = injected.init(params())
  state = state._replace(hyperparams={**state.hyperparams, rate: jnp.asarray(0.0)})
  extra = {} if zero_value is None else {"value": zero_value}
  u, _ = injected.update(grads(), state, params(), **extra)     # rate injected as 0: no step
  assert_all_zero(u)


def assert_masked_and_partition_match(opt, *, reference=None, run_fn: Callable = run,
                                      steps: int = 3, masked_steps: int | None = None,
                                      rtol: float = 1e-6, atol: float = 0.0,
                                      passthrough: bool = True):
  """`masked(opt, …)` and `partition({opt, sgd(0.1)}, …)` over `params()` equal `reference`
  (default `opt`) run alone on the leaves `w` and `s`; `partition` steps `b` by SGD.

  `run_fn` runs a transform (`run`'s signature and results); `steps` of it for `reference`
  and `partition`, `masked_steps` (default `steps`) for `masked`. With `passthrough`, the
  masked-out leaf `b` must come out as its gradient unchanged.
  """
  masked_steps = steps if masked_steps is None else masked_steps
  full = params()
  alone = run_fn(opt if reference is None else reference,
                 {"w": full["w"], "s": full["s"]}, steps=steps)[0]
  masked = run_fn(gx.masked(opt, {"w": True, "b": False, "s": True}), full,
                  steps=masked_steps)[0]
  grouped = run_fn(gx.partition({"opt": opt, "sgd": gx.sgd(0.1)},
                                {"w": "opt", "b": "sgd", "s": "opt"}), full, steps=steps)[0]
  for k in range(steps):
    for key in ("w", "s"):
      if k < masked_steps:
        np.testing.assert_allclose(masked[k][key], alone[k][key], rtol=rtol, atol=atol)
      np.testing.assert_allclose(grouped[k][key], alone[k][key], rtol=rtol, atol=atol)
    if passthrough and k < masked_steps:
      np.testing.assert_array_equal(masked[k]["b"], grads(k)["b"])   # passed through
    np.testing.assert_allclose(grouped[k]["b"], -0.1 * grads(k)["b"], rtol=1e-6)


def assert_equal_by_value(factory: Callable, *, state_dtype: bool = False):
  """Two calls of `factory()` are equal and hash alike; with `state_dtype`, asking for a
  bfloat16 state (`factory(state_dtype=jnp.bfloat16)`) makes a different transform."""
  assert factory() == factory() and hash(factory()) == hash(factory())
  if state_dtype:
    assert factory() != factory(state_dtype=jnp.bfloat16)


# --- checkpoints -------------------------------------------------------------------------

def save_and_restore(params, state, template_params, template_state):
  """`{"params", "opt"}` through flax's `to_bytes` and back into the templates' structure:
  the restored `(params, state)`."""
  blob = serialization.to_bytes({"params": params, "opt": state})
  restored = serialization.from_bytes({"params": template_params, "opt": template_state}, blob)
  return restored["params"], restored["opt"]


class RoundTrip(NamedTuple):
  """What `checkpoint_round_trip` ran; each run is `(params, state, updates)`."""
  full: tuple             # `n` steps straight
  saved: tuple            # the first `k` steps, then saved
  restored: tuple         # `(params, state)` read back from the bytes
  resumed: tuple          # steps `k … n − 1` of a fresh optimizer from `restored`


def checkpoint_round_trip(make: Callable, params0, n: int = 5, k: int = 2,
                          **run_kwargs) -> RoundTrip:
  """Trains `make()` `n` steps straight; trains another `k` steps, saves parameters and state
  to bytes, restores them into a fresh `make()`'s template (as after a restart) and resumes to
  step `n`. `run_kwargs` go to `train` (`grad_fn`, `value`, `apply`)."""
  full = train(make(), make().init(params0), params0, 0, n, **run_kwargs)
  tx = make()
  saved = train(tx, tx.init(params0), params0, 0, k, **run_kwargs)
  fresh = make()                                   # a new optimizer object, as after a restart
  restored = save_and_restore(saved[0], saved[1], params0, fresh.init(params0))
  resumed = train(fresh, restored[1], restored[0], k, n, **run_kwargs)
  return RoundTrip(full, saved, restored, resumed)


def assert_identical(a, b):
  """Two trees are the same: structure, and each leaf's dtype, shape and every bit."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, f"{x.dtype}{x.shape} ≠ {y.dtype}{y.shape}"
    np.testing.assert_array_equal(x, y)
