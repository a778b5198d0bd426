"""Smoke test of benchmarks/run.py in --quick mode: output structure only, no timing asserts."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("gx_benchmark_run", ROOT / "benchmarks" / "run.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_tree_shapes_are_realistic(bench):
  import math
  resnet = bench.resnet50_shapes()
  gpt2 = bench.gpt2_small_shapes()
  assert len(resnet) == 161 and sum(math.prod(s) for _, s in resnet) == 25_557_032
  assert len(gpt2) == 148 and sum(math.prod(s) for _, s in gpt2) == 124_439_808
  assert len(bench.TREES["leaves10000x10"]()) == 10_000


def test_quick_run_output(bench, tmp_path):
  jsonl, md = tmp_path / "out.jsonl", tmp_path / "table.md"
  rows = bench.main(["--quick", "--reps", "2", "--check", "--device", "--json", str(jsonl),
                     "--markdown", str(md)])
  records = [json.loads(line) for line in jsonl.read_text().splitlines()]
  machine = [r for r in records if r["kind"] == "machine"]
  steps = [r for r in records if r["kind"] == "step"]
  checks = [r for r in records if r["kind"] == "check"]
  assert len(machine) == 1
  assert machine[0]["numpy_triad_bytes_per_s"] > 0 and machine[0]["device_triad_bytes_per_s"] > 0
  assert machine[0]["platform"]

  opts, trees = set(bench.WORDS), set(bench.QUICK_TREES)
  assert {(r["tree"], r["optimizer"], r["lib"]) for r in steps} == {
      (t, o, lib) for t in trees for o in opts for lib in ("gx", "optax")}
  assert steps == rows
  for r in steps:
    for key in ("trace_s", "lower_s", "compile_s", "total_compile_s", "step_s", "step_min_s",
                "achieved_bytes_per_s", "fraction_of_reference_bandwidth", "state_bytes",
                "bytes_per_step", "params", "leaves"):
      assert r[key] > 0, (key, r)
    assert r["finite"]
    # The algorithm's state words per parameter plus O(1): one int32 step counter (Muon: a
    # counter and a float32 momentum product in each of its two groups).
    if r["lib"] == "gx":
      assert r["state_bytes"] == r["algorithm_state_bytes"] + r["state_overhead_bytes"], r

  assert len(checks) == len(trees) * len(opts)
  for c in checks:
    assert c["max_rel_param_diff"] < 1e-5, c

  table = md.read_text().strip().splitlines()
  assert table[0].startswith("| tree |") and "step gx/optax" in table[0]
  assert len(table) == 2 + len(trees) * len(opts)
  assert all(line.count("|") == table[0].count("|") for line in table)


def test_bfloat16_state_halves(bench):
  rows = bench.main(["--quick", "--reps", "1", "--warmup", "0", "--trees", "quick_mixed",
                     "--optimizers", "adam", "--libs", "gx", "--state-dtype", "bfloat16",
                     "--json", "/dev/null"])
  (row,) = rows
  assert row["state_bytes"] == row["algorithm_state_bytes"] // 2 + 4


def test_search_mlp_bound_quick():
  """benchmarks/search_mlp.py --quick: the 64-8-10 MLP's size and a complete, finite row."""
  import math
  spec = importlib.util.spec_from_file_location("gx_search_mlp", ROOT / "benchmarks" /
                                                "search_mlp.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  (row,) = module.main(["--quick", "--population", "4", "--repeats", "1"])
  assert row["params"] == 64 * 8 + 8 + 8 * 10 + 10 and (row["hidden"], row["samples"]) == (8, 16)
  assert all(math.isfinite(v) and v > 0 for v in row.values())


def test_torch_column_is_gradxform_over_torch(bench):
  """`--torch-python` rows: the table's `step gx/torch` is gx's step over torch's (2 / 4 ms)."""
  def row(lib, step_s, compile_s=1.0):
    return {"lib": lib, "tree": "t", "optimizer": "adam", "leaves": 1, "params": 10,
            "step_s": step_s, "total_compile_s": compile_s, "achieved_bytes_per_s": 1.0,
            "state_bytes_per_param": 8.0, "kernels": 3}
  rows = [row("gx", 2e-3), row("optax", 3e-3, 2.0), row("torch_fused", 4e-3, 0.0)]
  head, _, line = bench.markdown(rows, 1.0, "numpy_triad").splitlines()
  cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in line.split("|")]))
  assert cells["step gx/torch"] == "0.50" and cells["step gx/optax"] == "0.67"
  assert cells["torch_fused step ms"] == "4.000" and "torch_fused compile s" not in cells
  assert cells["compile optax/gx"] == "2.00" and cells["kernels gx/optax"] == "3 / 3"


def test_each_fused_step_gets_its_ratios(bench):
  """With `gx_fused_flatten` (and torch) in the run: its step over Optax's and torch's."""
  def row(lib, step_s, compile_s=1.0):
    return {"lib": lib, "tree": "t", "optimizer": "adam", "leaves": 1, "params": 10,
            "step_s": step_s, "total_compile_s": compile_s, "achieved_bytes_per_s": 1.0,
            "state_bytes_per_param": 8.0, "kernels": 3}
  rows = [row("gx_fused", 2e-3), row("gx_fused_flatten", 1e-3, 0.5), row("optax", 4e-3, 2.0),
          row("torch_fused", 5e-3, 0.0)]
  head, _, line = bench.markdown(rows, 1.0, "numpy_triad").splitlines()
  cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in line.split("|")]))
  assert cells["step gx_fused/optax"] == "0.50" and cells["step gx_fused_flatten/optax"] == "0.25"
  assert cells["compile optax/gx_fused_flatten"] == "4.00"
  assert cells["step gx_fused_flatten/torch"] == "0.20" and cells["step gx_fused/torch"] == "0.40"
  assert cells["step gx/optax"] == ""                     # no gx row in this run


def test_quick_run_of_the_fused_flatten_step(bench, tmp_path):
  """`update_and_apply` over `gx.flatten(adam)` in the quick run: the same parameters as
  Optax's after the check's steps (the packed loop's numbers, not only its speed)."""
  jsonl = tmp_path / "out.jsonl"
  rows = bench.main(["--quick", "--reps", "1", "--warmup", "0", "--trees", "quick_mixed",
                     "--optimizers", "adam", "--libs", "gx_fused_flatten,optax", "--check",
                     "--json", str(jsonl)])
  assert [r["lib"] for r in rows] == ["gx_fused_flatten", "optax"]
  assert rows[0]["kernels"] < rows[1]["kernels"]
  (check,) = [r for r in map(json.loads, jsonl.read_text().splitlines()) if r["kind"] == "check"]
  assert check["max_rel_param_diff"] < 1e-5, check


def test_torch_step_failure_stops_with_its_message(bench, tmp_path):
  """A torch interpreter that fails (here a stand-in script) stops the run with its stderr."""
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
  fake.chmod(0o755)
  with pytest.raises(SystemExit, match=r"(?s)torch_step\.py failed under .*python:.*'torch'"):
    bench.bench_torch(str(fake), "adam", "t", [("w", (4,))], reps=1, warmup=0, seed=0)


def test_explicit_without_shard_stops_with_a_message(bench):
  with pytest.raises(SystemExit, match="--explicit .* --shard N"):
    bench.main(["--quick", "--explicit"])


@pytest.mark.parametrize("explicit", [False, True])
def test_shard_splits_leaves_and_the_libraries_still_agree(bench, tmp_path, explicit):
  """`--shard 8` on the suite's 8 fake devices: a leaf whose leading axis 8 divides is split
  over the 8, the others replicated; the steps still give Optax's parameters, on automatic
  and (`--explicit`) explicit axes."""
  import jax
  import numpy as np
  tree = bench.split({"a": np.zeros((64, 32)), "c": np.zeros((3, 3, 4, 8))},
                     bench.shard_mesh(8))
  assert tree["a"].sharding.shard_shape((64, 32)) == (8, 32)
  assert tree["c"].sharding.is_fully_replicated and len(tree["c"].devices()) == 8
  jsonl = tmp_path / "out.jsonl"
  rows = bench.main(["--quick", "--shard", "8", "--trees", "quick_mixed", "--optimizers",
                     "adam", "--libs", "gx,gx_fused,optax", "--reps", "1", "--warmup", "0",
                     "--check", "--json", str(jsonl)] + ["--explicit"] * explicit)
  assert [r["shard"] for r in rows] == [8, 8, 8] and jax.device_count() >= 8
  assert [r["explicit"] for r in rows] == [explicit] * 3
  (check,) = [r for r in map(json.loads, jsonl.read_text().splitlines()) if r["kind"] == "check"]
  assert check["max_rel_param_diff"] < 1e-5, check


def test_step_overhead_quick_rows():
  """benchmarks/step_overhead.py on a tiny tree: a row per library with the back-to-back
  calls, the in-loop step and the host's share (their difference); `--calls-only` leaves the
  loop out, `--grads-inside` is recorded."""
  import math
  spec = importlib.util.spec_from_file_location("gx_step_overhead",
                                                ROOT / "benchmarks" / "step_overhead.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  common = ["--trees", "quick_mixed", "--reps", "2", "--triad-size", "4096"]
  rows = module.main(common + ["--libs", "gx,optax"])
  n = 64 * 32 + 32 + 3 * 3 * 4 * 8 + 1000
  assert [r["lib"] for r in rows] == ["gx", "optax"]
  for r in rows:
    assert r["params"] == n and r["leaves"] == 4 and r["bytes_per_step"] == 7 * 4 * n
    assert r["calls_s"] > 0 and r["loop_s"] > 0 and r["one_leaf_s"] > 0
    assert r["host_s"] == pytest.approx(r["calls_s"] - r["loop_s"])
    assert not r["grads_inside"]
  (row,) = module.main(common + ["--libs", "gx_flatten", "--calls-only", "--grads-inside"])
  assert row["grads_inside"] and row["calls_s"] > 0
  assert math.isnan(row["loop_s"]) and math.isnan(row["one_leaf_s"])
