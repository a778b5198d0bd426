"""Optimizer-step benchmark: gradxform against Optax, side by side in one process.

For every (tree, optimizer) pair it builds the same algorithm in gradxform and in Optax and
measures, for each library:

* compile time of the jitted step `params, state = apply_updates(params, update(grads))`
  (trace + lower + XLA compile, via `jax.jit(...).trace().lower().compile()`), with params and
  state donated;
* the time of one step: `reps` steps run back to back and end in one `block_until_ready`,
  three such groups, the median group's mean;
* the achieved memory bandwidth of the step, `words_per_param * bytes * n_params / time` (a
  word is one parameter's dtype, float32 unless `--param-dtype`)
  (the algorithm's minimal traffic, e.g. Adam reads p, g, m, v and writes p, m, v: 7 words),
  as a fraction of the machine's triad bandwidth (see `triad_bandwidth`);
* the optimizer state size in bytes.

Output: one JSON object per line (to stdout or `--json FILE`), then a Markdown table.

    python benchmarks/run.py                       # everything (GPU: a few minutes)
    python benchmarks/run.py --cpu-default         # the subset that runs in minutes on 2 cores
    python benchmarks/run.py --quick               # tiny trees, smoke run (the test suite)
    python benchmarks/run.py --trees gpt2_small --optimizers adam,adamw --device
    python benchmarks/run.py --cpu-default --torch-python /path/to/torch-venv/bin/python
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/run.py --shard 8 \
        --trees resnet50 --optimizers adam --state-dtype int8   # split over 8 (CPU) devices

The step compared is the same algorithm in both libraries (same hyperparameters, eps outside
the root, decoupled weight decay `-lr * wd * p`, heavy-ball momentum without dampening,
clipping to global norm 1 before AdamW; Muon: `optax.contrib.muon`'s defaults with decay on
the matrices, NAdamW on the other leaves); `--check` also reports the largest relative
difference between the libraries' parameters after the first two compiled steps (untimed).
`--torch-python` adds torch.optim's fused CPU step (Adam, AdamW, SGD with momentum, clipped
AdamW) on the same trees, run by `torch_step.py` in that interpreter's own process and timed
the same way. `--shard N` splits every leaf whose leading axis N divides over N devices
(the others replicated), as data-parallel training with ZeRO-style state does, and lays out
each library's state by one untimed step before compiling the timed one; on a CPU host the
devices are faked by XLA_FLAGS (above), and share the host's cores. `--explicit` makes
the mesh's axis explicit (JAX's shardings in types) instead of automatic.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# ------------------------------------------------------------------------------------------
# Trees: lists of (name, shape); the parameters are built on the device from these.


def resnet50_shapes() -> list[tuple[str, tuple[int, ...]]]:
  """ResNet-50 (v1.5, ImageNet head): 161 leaves, 25,557,032 parameters."""
  shapes = [("stem/conv", (7, 7, 3, 64)), ("stem/bn/scale", (64,)), ("stem/bn/bias", (64,))]
  cin = 64
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
    for b in range(blocks):
      pre = f"stage{stage}/block{b}"
      for j, (k, ci, co) in enumerate(((1, cin, width), (3, width, width), (1, width, 4 * width))):
        shapes += [(f"{pre}/conv{j}", (k, k, ci, co)), (f"{pre}/bn{j}/scale", (co,)),
                   (f"{pre}/bn{j}/bias", (co,))]
      if b == 0:
        shapes += [(f"{pre}/down/conv", (1, 1, cin, 4 * width)),
                   (f"{pre}/down/bn/scale", (4 * width,)), (f"{pre}/down/bn/bias", (4 * width,))]
      cin = 4 * width
  return shapes + [("head/kernel", (2048, 1000)), ("head/bias", (1000,))]


def gpt2_small_shapes() -> list[tuple[str, tuple[int, ...]]]:
  """GPT-2 small (tied embeddings): 148 leaves, 124,439,808 parameters."""
  d, vocab, ctx = 768, 50257, 1024
  shapes = [("wte", (vocab, d)), ("wpe", (ctx, d))]
  for i in range(12):
    shapes += [(f"h{i}/ln1/g", (d,)), (f"h{i}/ln1/b", (d,)),
               (f"h{i}/attn/c_attn/w", (d, 3 * d)), (f"h{i}/attn/c_attn/b", (3 * d,)),
               (f"h{i}/attn/c_proj/w", (d, d)), (f"h{i}/attn/c_proj/b", (d,)),
               (f"h{i}/ln2/g", (d,)), (f"h{i}/ln2/b", (d,)),
               (f"h{i}/mlp/c_fc/w", (d, 4 * d)), (f"h{i}/mlp/c_fc/b", (4 * d,)),
               (f"h{i}/mlp/c_proj/w", (4 * d, d)), (f"h{i}/mlp/c_proj/b", (d,))]
  return shapes + [("ln_f/g", (d,)), ("ln_f/b", (d,))]


def uniform_shapes(n: int, size: int) -> list[tuple[str, tuple[int, ...]]]:
  return [(f"w{i:05d}", (size,)) for i in range(n)]


TREES: dict[str, Callable[[], list[tuple[str, tuple[int, ...]]]]] = {
    "resnet50": resnet50_shapes,
    "gpt2_small": gpt2_small_shapes,
    "leaves2000x1000": lambda: uniform_shapes(2000, 1000),
    "single50m": lambda: [("w", (50_000_000,))],
    "leaves10000x10": lambda: uniform_shapes(10000, 10),
}
QUICK_TREES: dict[str, Callable[[], list[tuple[str, tuple[int, ...]]]]] = {
    "quick_mixed": lambda: [("a", (64, 32)), ("b", (32,)), ("c", (3, 3, 4, 8)), ("d", (1000,))],
    "quick_leaves50x10": lambda: uniform_shapes(50, 10),
}
#: The trees that compile in seconds on a 2-core CPU (leaves10000x10 takes about 3 minutes per
#: Optax AdamW compile there: XLA:CPU compile time grows faster than linearly with the leaves).
CPU_DEFAULT_TREES = ("resnet50", "gpt2_small", "leaves2000x1000", "single50m")


def make_tree(shapes: list[tuple[str, tuple[int, ...]]], seed: int,
              dtype: Any = jnp.float32) -> dict[str, jax.Array]:
  """Parameters as a nested dict ('a/b/c' -> {'a': {'b': {'c': ...}}}), deterministic values."""
  tree: dict[str, Any] = {}
  for i, (name, shape) in enumerate(shapes):
    key = jax.random.fold_in(jax.random.key(seed), i)
    node = tree
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  return tree


# ------------------------------------------------------------------------------------------
# Optimizers: the same algorithm in both libraries.

LR, WD, MOMENTUM, MAX_NORM = 1e-3, 1e-2, 0.9, 1.0
#: `gx_flatten_small`: `gx.flatten(tx, max_leaf_size=FLATTEN_SMALL)`, only small leaves packed.
FLATTEN_SMALL = 1 << 14
#: The `--libs` that time `gx.update_and_apply`.
_FUSED_LIBS = ("gx_fused", "gx_fused_flatten", "gx_fused_flatten_small")

#: Minimal words (4-byte f32 values) read + written per parameter by one step incl. apply.
WORDS = {
    "adam": 7,          # read p g m v, write p m v
    "adamw": 7,         # the same; the decay reads p, which the apply reads anyway
    "sgd_momentum": 5,  # read p g b, write p b
    "clip_adamw": 8,    # AdamW plus one extra pass over g for the global norm
    "muon": 5,          # on matrices: read p g m, write p m (Newton-Schulz is compute, not
                        # traffic); the other leaves are NAdamW's 7, see `words`
}
#: State words per parameter the algorithm needs (plus O(1) counters).
STATE_WORDS = {"adam": 2, "adamw": 2, "sgd_momentum": 1, "clip_adamw": 2, "muon": 1}
#: Muon's AdamW fallback on leaves that are not matrices: its words and state words.
MUON_FALLBACK_WORDS, MUON_FALLBACK_STATE_WORDS = 7, 2
#: Bytes of gradxform's O(1) state (counters): one int32 step counter, except Muon's two
#: groups (Muon and AdamW), each with a step counter and Nadam's float32 momentum product.
STATE_OVERHEAD_BYTES = {"muon": 16}
#: Optimizers left out of --cpu-default unless named: Muon's Newton-Schulz on GPT-2's matrices
#: (the embedding is one) is minutes per step on a few CPU cores.
CPU_HEAVY_OPTIMIZERS = ("muon",)


def words(opt: str, shapes: list[tuple[str, tuple[int, ...]]], state: bool = False) -> int:
  """Minimal words moved per step (or, with `state`, state words) summed over the tree."""
  table = STATE_WORDS if state else WORDS
  if opt != "muon":
    return table[opt] * sum(math.prod(s) for _, s in shapes)
  other = MUON_FALLBACK_STATE_WORDS if state else MUON_FALLBACK_WORDS
  return sum((table[opt] if len(s) == 2 else other) * math.prod(s) for _, s in shapes)


def build(lib: str, name: str, state_dtype: Any = None) -> Any:
  import optax

  import gradxform as gx
  if lib in ("gx", "gx_fused", "gx_flatten", "gx_flatten_small", "gx_fused_flatten",
             "gx_fused_flatten_small"):
    sd = {} if state_dtype is None else {"state_dtype": state_dtype}
    tx = {
        "adam": lambda: gx.adam(LR, **sd),
        "adamw": lambda: gx.adamw(LR, weight_decay=WD, **sd),
        "sgd_momentum": lambda: gx.sgd(LR, momentum=MOMENTUM, **sd),
        "clip_adamw": lambda: gx.chain(gx.clip_by_global_norm(MAX_NORM),
                                       gx.adamw(LR, weight_decay=WD, **sd)),
        "muon": lambda: gx.muon(LR, weight_decay=WD, **sd),
    }[name]()
    if lib in ("gx_flatten_small", "gx_fused_flatten_small"):
      return gx.flatten(tx, max_leaf_size=FLATTEN_SMALL)
    return gx.flatten(tx) if lib in ("gx_flatten", "gx_fused_flatten") else tx
  if lib == "optax":
    return {
        "adam": lambda: optax.adam(LR),
        "adamw": lambda: optax.adamw(LR, weight_decay=WD),
        "sgd_momentum": lambda: optax.sgd(LR, momentum=MOMENTUM),
        "clip_adamw": lambda: optax.chain(optax.clip_by_global_norm(MAX_NORM),
                                          optax.adamw(LR, weight_decay=WD)),
        "muon": lambda: optax.contrib.muon(LR, weight_decay=WD),
    }[name]()
  raise ValueError(f"unknown library {lib!r}")


def make_step(lib: str, tx: Any) -> Callable[..., Any]:
  import optax

  import gradxform as gx
  apply = optax.apply_updates if lib == "optax" else gx.apply_updates
  if lib in _FUSED_LIBS:
    return jax.jit(lambda params, state, grads: gx.update_and_apply(tx, grads, state, params),
                   donate_argnums=(0, 1))

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return apply(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


# ------------------------------------------------------------------------------------------
# Measurements.


def tree_bytes(tree: Any) -> int:
  return int(sum(np.dtype(x.dtype).itemsize * math.prod(x.shape)
                 for x in jax.tree.leaves(tree)))


#: Entry-computation ops that launch no work of their own.
_NO_WORK = ("parameter(", "tuple(", "get-tuple-element(", "bitcast(", "constant(")


def count_kernels(hlo_text: str) -> int:
  """Ops in the optimized HLO's entry computation that run work (fusions, copies, reductions,
  library calls...): on a GPU roughly the kernels one step launches."""
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  ops = [ln for ln in entry.splitlines()[1:] if " = " in ln]
  return sum(1 for ln in ops if not any(w in ln.split(" = ", 1)[1] for w in _NO_WORK))


def block(tree: Any) -> None:
  jax.block_until_ready(tree)


def triad_bandwidth(n: int, reps: int) -> dict[str, float]:
  """STREAM-like bandwidth in bytes/s: `a = b + s*c` over 3 arrays of n float32.

  `numpy_triad`: NumPy on the host (`a = b + c`, one pass, 3 arrays moved, single thread;
  `multiply` and `add` into `a` would be two passes). `device_triad`: the jitted triad
  `c = b + s*c` on JAX's default device (read 2 arrays, write 1), ten in one call. Best of
  `reps`.
  """
  b = np.full(n, 1.0, np.float32)
  c = np.full(n, 2.0, np.float32)
  a = np.empty_like(b)
  best = math.inf
  for _ in range(reps):
    t0 = time.perf_counter()
    np.add(b, c, out=a)
    best = min(best, time.perf_counter() - t0)
  numpy_bw = 3 * 4 * n / best
  del a, b, c

  # `inner` triads in one dispatch (c <- b + s*c, a loop-carried dependence XLA cannot hoist),
  # so launch and host overheads do not count: on a GPU one triad of 3 x 128 MiB takes about
  # as long as dispatching it.
  inner = 10

  @jax.jit
  def triad(b, c):
    return jax.lax.fori_loop(0, inner, lambda _, c: b + 0.5 * c, c)

  bd, cd = jnp.ones((n,), jnp.float32), jnp.full((n,), 2.0, jnp.float32)
  block(triad(bd, cd))
  best = math.inf
  for _ in range(reps):
    t0 = time.perf_counter()
    block(triad(bd, cd))
    best = min(best, (time.perf_counter() - t0) / inner)
  device_bw = 3 * 4 * n / best
  del bd, cd
  return {"numpy_triad_bytes_per_s": numpy_bw, "device_triad_bytes_per_s": device_bw}


def device_info() -> dict[str, Any]:
  import optax
  dev = jax.devices()[0]
  return {
      "optax": optax.__version__,
      "platform": dev.platform,
      "device_kind": getattr(dev, "device_kind", "?"),
      "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "python": platform.python_version(),
      "machine": platform.machine(),
  }


def host_trees(shapes: list[tuple[str, tuple[int, ...]]], seed: int,
               param_dtype: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """--quick's params and grads, made once per tree with NumPy on the host (deterministic, as
  `make_tree`'s, but without compiling `jax.random.normal` for every leaf shape: seconds on
  the tiny trees); params ~ 0.02 N(0, 1), grads 0.1 (0.02 N(0, 1)) + 1e-3."""
  rng = np.random.default_rng(seed)
  params: dict[str, Any] = {}
  grads: dict[str, Any] = {}
  for name, shape in shapes:
    *parents, leaf = name.split("/")
    p_node, g_node = params, grads
    for p in parents:
      p_node, g_node = p_node.setdefault(p, {}), g_node.setdefault(p, {})
    p_node[leaf] = (0.02 * rng.standard_normal(shape, np.float32)).astype(param_dtype)
    g_node[leaf] = (0.1 * 0.02 * rng.standard_normal(shape, np.float32) + 1e-3).astype(
        param_dtype)
  return params, grads


def shard_mesh(n: int, explicit: bool = False) -> Any:
  """A mesh of the first `n` devices along one axis "d", automatic or explicit (`--shard`,
  `--explicit`)."""
  from jax.sharding import AxisType, Mesh
  if jax.device_count() < n:
    raise SystemExit(f"--shard {n}: this process has {jax.device_count()} devices; on a CPU "
                     f"host set XLA_FLAGS=--xla_force_host_platform_device_count={n}")
  kind = AxisType.Explicit if explicit else AxisType.Auto
  return Mesh(np.array(jax.devices()[:n]), ("d",), axis_types=(kind,))


def split(tree: Any, mesh: Any) -> Any:
  """`tree` with each leaf split along its leading axis over `mesh`'s devices where their
  number divides that axis, the other leaves replicated on them (`--shard`)."""
  from jax.sharding import NamedSharding, PartitionSpec
  n = mesh.size
  return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec(
      "d" if x.ndim and x.shape[0] % n == 0 else None))), tree)


def bench_one(lib: str, opt: str, tree_name: str, shapes: list[Any], reps: int, warmup: int,
              seed: int, state_dtype: Any, snapshot: list[Any] | None = None,
              param_dtype: Any = jnp.float32, start: tuple[Any, Any] | None = None,
              shard: int = 0, explicit: bool = False) -> dict[str, Any]:
  """Compiles and times one library's step; with `snapshot` (a list), appends the params after
  `CHECK_STEPS` steps of the compiled step (as NumPy arrays) for `max_rel_diff`. `start`:
  `host_trees(...)`, the params and grads to start from (copied to the device here: the step
  donates its inputs); None makes them with `make_tree`. `shard`, `explicit`: see `split`
  (on explicit axes the whole run is under `jax.set_mesh`, as JAX wants)."""
  mesh = shard_mesh(shard, explicit) if shard else None
  with jax.set_mesh(mesh) if explicit and mesh is not None else contextlib.nullcontext():
    return _bench_one(lib, opt, tree_name, shapes, reps, warmup, seed, state_dtype, snapshot,
                      param_dtype, start, mesh)


def _bench_one(lib: str, opt: str, tree_name: str, shapes: list[Any], reps: int, warmup: int,
               seed: int, state_dtype: Any, snapshot: list[Any] | None, param_dtype: Any,
               start: tuple[Any, Any] | None, mesh: Any) -> dict[str, Any]:
  if start is None:
    params = make_tree(shapes, seed, param_dtype)
    grads = jax.tree.map(lambda p: 0.1 * p + 1e-3, make_tree(shapes, seed + 1, param_dtype))
  else:
    params, grads = jax.tree.map(jnp.array, start)
  size = np.dtype(param_dtype).itemsize  # bytes a word
  tx = build(lib, opt, state_dtype)
  step = make_step(lib, tx)
  if mesh is not None:
    params, grads = split(params, mesh), split(grads, mesh)
    # The state laid out as it steps, by a step of its own: the timed one below must compile
    # (on explicit axes the same jitted function found this compile in its cache).
    params, state = make_step(lib, tx)(params, tx.init(params), grads)
  else:
    state = tx.init(params)
  block((params, grads, state))

  t0 = time.perf_counter()
  traced = step.trace(params, state, grads)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()

  kernels = count_kernels(compiled.as_text())
  state_bytes = tree_bytes(state)
  n_params = sum(math.prod(s) for _, s in shapes)
  done = 0
  if snapshot is not None:
    for _ in range(CHECK_STEPS):
      params, state = compiled(params, state, grads)
    snapshot.append([np.asarray(x) for x in jax.tree.leaves(params)])
    done = CHECK_STEPS
  for _ in range(max(warmup - done, 0)):
    params, state = compiled(params, state, grads)
  block((params, state))
  # Steps run back to back, as in training (dispatch overlaps the device's work), and are
  # timed in CHUNKS groups of `reps` steps, each ended by one block_until_ready.
  times = []
  for _ in range(CHUNKS):
    s0 = time.perf_counter()
    for _ in range(reps):
      params, state = compiled(params, state, grads)
    block((params, state))
    times.append((time.perf_counter() - s0) / reps)
  finite = bool(all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params)[:4]))
  del params, state, grads, compiled, lowered, traced
  step_s = statistics.median(times)
  return {
      "lib": lib, "optimizer": opt, "tree": tree_name, "leaves": len(shapes),
      "params": n_params, "trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2,
      "total_compile_s": t3 - t0, "step_s": step_s, "step_min_s": min(times), "reps": reps,
      "bytes_per_step": words(opt, shapes) * size,
      "achieved_bytes_per_s": words(opt, shapes) * size / step_s,
      "param_dtype": np.dtype(param_dtype).name,
      "kernels": kernels, "state_bytes": state_bytes,
      "state_bytes_per_param": state_bytes / n_params,
      "algorithm_state_bytes": words(opt, shapes, state=True) * size,
      "state_overhead_bytes": STATE_OVERHEAD_BYTES.get(opt, 4), "finite": finite,
  }


CHECK_STEPS = 2
CHUNKS = 3
#: The optimizers `torch_step.py` has a fused torch step for.
TORCH_OPTIMIZERS = ("adam", "adamw", "sgd_momentum", "clip_adamw")


def bench_torch(python: str, opt: str, tree_name: str, shapes: list[Any], reps: int,
                warmup: int, seed: int) -> dict[str, Any]:
  """torch.optim's fused step on `shapes`, timed by `torch_step.py` under `python`."""
  job = {"optimizer": opt, "shapes": [list(s) for _, s in shapes], "reps": reps,
         "warmup": warmup, "chunks": CHUNKS, "seed": seed}
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_step.py")
  done = subprocess.run([python, script], input=json.dumps(job), capture_output=True, text=True,
                        check=False)
  if done.returncode != 0:
    raise SystemExit(f"torch_step.py failed under {python}:\n{done.stderr[-2000:]}")
  row = json.loads(done.stdout.strip().splitlines()[-1])
  n_params = sum(math.prod(s) for _, s in shapes)
  return {**row, "tree": tree_name, "leaves": len(shapes), "params": n_params,
          "trace_s": 0.0, "lower_s": 0.0, "compile_s": 0.0, "total_compile_s": 0.0,
          "reps": reps, "bytes_per_step": words(opt, shapes) * 4,
          "achieved_bytes_per_s": words(opt, shapes) * 4 / row["step_s"], "kernels": 0,
          "state_bytes": words(opt, shapes, state=True) * 4,
          "state_bytes_per_param": STATE_WORDS[opt] * 1.0}


def max_rel_diff(snapshots: list[list[np.ndarray]]) -> float:
  """Largest |p_lib - p_first| / max|p_first| over leaves, for params after CHECK_STEPS steps
  of each library's compiled step from the same start."""
  worst = 0.0
  for other in snapshots[1:]:
    for a, b in zip(snapshots[0], other):
      a, b = a.astype(np.float64), b.astype(np.float64)
      worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30)))
  return worst


# ------------------------------------------------------------------------------------------
# Reporting.


def markdown(rows: list[dict[str, Any]], bw: float, bw_name: str) -> str:
  """One line per (tree, optimizer): gradxform and Optax side by side, with ratios."""
  by_key: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
  for r in rows:
    by_key.setdefault((r["tree"], r["optimizer"]), {})[r["lib"]] = r
  order = ["gx", "gx_fused", "gx_flatten", "gx_flatten_small", "gx_fused_flatten",
           "gx_fused_flatten_small", "optax", "torch_fused"]
  libs = sorted({r["lib"] for r in rows}, key=order.index)
  jax_libs = [lib for lib in libs if lib != "torch_fused"]
  head = ["tree", "leaves", "params", "optimizer"]
  for lib in libs:
    head += [f"{lib} step ms"] + ([f"{lib} compile s"] if lib != "torch_fused" else [])
  # Ratios against Optax (and torch) for gx and each `update_and_apply` step measured.
  fused = [lib for lib in _FUSED_LIBS if lib in libs]
  head += ["step gx/optax", "compile optax/gx"]
  for lib in fused:
    head += [f"step {lib}/optax", f"compile optax/{lib}"]
  if "torch_fused" in libs:
    head += ["step gx/torch"] + [f"step {lib}/torch" for lib in fused]
  head += [f"gx BW / {bw_name}", "state B/param gx/optax", "kernels " + "/".join(jax_libs)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for (tree, opt), per in by_key.items():
    any_r = next(iter(per.values()))
    cells = [tree, str(any_r["leaves"]), f"{any_r['params'] / 1e6:.2f}M", opt]
    for lib in libs:
      r = per.get(lib)
      n = 1 if lib == "torch_fused" else 2
      cells += ([f"{r['step_s'] * 1e3:.3f}", f"{r['total_compile_s']:.2f}"][:n] if r
                else ["", ""][:n])
    gx, ox, tt = (per.get(k) for k in ("gx", "optax", "torch_fused"))
    for mine in [gx] + [per.get(lib) for lib in fused]:
      cells.append(f"{mine['step_s'] / ox['step_s']:.2f}" if mine and ox else "")
      cells.append(f"{ox['total_compile_s'] / mine['total_compile_s']:.2f}"
                   if mine and ox else "")
    if "torch_fused" in libs:
      for mine in [gx] + [per.get(lib) for lib in fused]:
        cells.append(f"{mine['step_s'] / tt['step_s']:.2f}" if mine and tt else "")
    cells.append(f"{gx['achieved_bytes_per_s'] / bw:.2f}" if gx else "")
    cells.append(" / ".join(f"{per[lib]['state_bytes_per_param']:.2f}" for lib in ("gx", "optax")
                            if lib in per))
    cells.append(" / ".join(str(per[lib]["kernels"]) if lib in per else "-"
                            for lib in jax_libs))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--quick", action="store_true", help="tiny trees, few reps (smoke run)")
  ap.add_argument("--cpu-default", action="store_true",
                  help=f"only the trees that compile in seconds on a small CPU: "
                       f"{','.join(CPU_DEFAULT_TREES)}")
  ap.add_argument("--trees", default=None, help=f"comma list from {','.join(TREES)}")
  ap.add_argument("--optimizers", default=None, help=f"comma list from {','.join(WORDS)} "
                  f"(default all; with --cpu-default all but {','.join(CPU_HEAVY_OPTIMIZERS)})")
  ap.add_argument("--libs", default="gx,optax",
                  help="comma list from gx,optax,gx_flatten (gx.flatten(optimizer)),"
                       "gx_flatten_small (gx.flatten(optimizer, max_leaf_size=16384)), "
                       "gx_fused (gx.update_and_apply: the fused CPU kernel where it applies), "
                       "gx_fused_flatten, gx_fused_flatten_small (gx_flatten's and "
                       "gx_flatten_small's optimizers by gx.update_and_apply)")
  ap.add_argument("--reps", type=int, default=None, help="timed steps (default 20; quick 3)")
  ap.add_argument("--warmup", type=int, default=None, help="untimed steps after compile")
  ap.add_argument("--state-dtype", default=None, help="gradxform state_dtype, e.g. bfloat16")
  ap.add_argument("--param-dtype", default="float32",
                  help="the parameters' and gradients' dtype (float32, bfloat16, float16); a "
                       "word in the bandwidth figures is one of these; torch is float32 only")
  ap.add_argument("--triad-size", type=int, default=None, help="float32 elements per array")
  ap.add_argument("--check", action="store_true",
                  help="also report the max relative difference of params between libraries")
  ap.add_argument("--device", action="store_true", help="print device information first")
  ap.add_argument("--json", default=None, help="write JSON lines here instead of stdout")
  ap.add_argument("--markdown", default=None, help="also write the Markdown table here")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--shard", type=int, default=0,
                  help="split the leaves over this many devices (see the module docstring)")
  ap.add_argument("--explicit", action="store_true",
                  help="with --shard: a mesh with explicit axes, not automatic ones")
  ap.add_argument("--torch-python", default=None,
                  help="a Python with torch: also time torch.optim's fused step "
                       f"({','.join(TORCH_OPTIMIZERS)}) in its own process")
  return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  args = parse_args(argv)
  if args.explicit and not args.shard:
    raise SystemExit("--explicit makes --shard's mesh explicit: give --shard N as well")
  trees = QUICK_TREES if args.quick else TREES
  if args.trees:
    names = args.trees.split(",")
    pool = {**TREES, **QUICK_TREES}
    unknown = [n for n in names if n not in pool]
    if unknown:
      raise SystemExit(f"unknown trees {unknown}; choose from {sorted(pool)}")
    trees = {n: pool[n] for n in names}
  elif args.cpu_default:
    trees = {n: TREES[n] for n in CPU_DEFAULT_TREES}
  opts = (args.optimizers.split(",") if args.optimizers else
          [o for o in WORDS if not (args.cpu_default and o in CPU_HEAVY_OPTIMIZERS)])
  for o in opts:
    if o not in WORDS:
      raise SystemExit(f"unknown optimizer {o!r}; choose from {sorted(WORDS)}")
  libs = args.libs.split(",")
  reps = args.reps or (3 if args.quick else 20)
  warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
  triad_n = args.triad_size or (1 << 16 if args.quick else 1 << 25)
  out = open(args.json, "w") if args.json else sys.stdout

  def emit(obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()

  info = device_info()
  if args.device:
    print("# device: " + json.dumps(info), file=sys.stderr)
  bw = triad_bandwidth(triad_n, 3 if args.quick else 10)
  # The reference: the accelerator's own triad on GPU/TPU, NumPy's on CPU hosts.
  on_cpu = info["platform"] == "cpu"
  ref_name = "numpy_triad" if on_cpu else "device_triad"
  ref = bw[f"{ref_name}_bytes_per_s"]
  emit({"kind": "machine", **info, **bw, "reference_bandwidth": ref_name,
        "triad_elements": triad_n})

  rows = []
  for tree_name, fn in trees.items():
    shapes = fn()
    # --quick: the tiny trees are made once per tree, on the host (a full-size tree is made
    # anew by each run, and collected after it, to keep one copy in memory at a time).
    start = host_trees(shapes, args.seed, jnp.dtype(args.param_dtype)) if args.quick else None
    for opt in opts:
      snapshots: list[Any] | None = [] if args.check and len(libs) > 1 else None
      for lib in libs:
        row = bench_one(lib, opt, tree_name, shapes, reps, warmup, args.seed, args.state_dtype,
                        snapshots, jnp.dtype(args.param_dtype), start, args.shard,
                        args.explicit)
        row["shard"] = args.shard
        row["explicit"] = args.explicit
        row["kind"] = "step"
        row["fraction_of_reference_bandwidth"] = row["achieved_bytes_per_s"] / ref
        rows.append(row)
        emit(row)
        if not args.quick:
          gc.collect()
      if args.torch_python and opt in TORCH_OPTIMIZERS and args.param_dtype == "float32":
        row = bench_torch(args.torch_python, opt, tree_name, shapes, reps, warmup, args.seed)
        row["kind"] = "step"
        row["fraction_of_reference_bandwidth"] = row["achieved_bytes_per_s"] / ref
        rows.append(row)
        emit(row)
      if snapshots:
        emit({"kind": "check", "tree": tree_name, "optimizer": opt, "libs": libs,
              "steps": CHECK_STEPS, "max_rel_param_diff": max_rel_diff(snapshots)})
        del snapshots
  table = markdown(rows, ref, ref_name)
  if args.json:
    out.close()
  print("\n" + table)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(table + "\n")
  return rows


if __name__ == "__main__":
  main()
