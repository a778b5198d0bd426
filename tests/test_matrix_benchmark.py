"""Smoke test of benchmarks/matrix_optimizers.py in --quick mode: the output's structure, the
optimizer-state sizes against counts derived by hand from the CNN's shapes, and that the
optimizers run learn. No timing asserts (the machine is shared).

The quick run trains three of the six optimizers. Shampoo and SOAP (SOAP alone took 25 s of
the quick run: the eigendecompositions of the 1024×1024 statistic of the dense kernel) are left
out of it and learn on the digits in tests/test_shampoo_soap.py; 8-bit AdamW trains this CNN
in tests/test_int8_state.py. The state sizes of all six are checked from each optimizer's
`init` on the CNN's parameters, with the benchmark's own `make_optimizer` and `state_bytes`,
and the quick run's reported sizes against those."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The CNN of examples/train_digits.py: conv 3×3×1×32, conv 3×3×32×64, dense 1024×128,
# dense 128×10, each with a bias.
KERNELS = [(3, 3, 1, 32), (3, 3, 32, 64), (1024, 128), (128, 10)]
BIASES = [32, 64, 128, 10]
N_PARAMS = sum(int(np.prod(s)) for s in KERNELS) + sum(BIASES)   # 151,306
F32 = 4
ALL = ("adamw", "adafactor", "muon", "shampoo", "soap", "adamw_int8")
RUN = ("adamw", "adafactor", "muon")   # the quick run's (cheap) optimizers


def _stat_floats(shape, block):
  """Floats of Shampoo-style per-axis statistics of one leaf: size-1 axes dropped, each axis
  cut into blocks of at most `block`, a (b, b) statistic per axis per block."""
  dims = [d for d in shape if d > 1]
  sizes = [min(d, block) for d in dims]
  blocks = int(np.prod([-(-d // b) for d, b in zip(dims, sizes)]))
  return blocks * sum(b * b for b in sizes)


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location(
      "gx_matrix_benchmark", ROOT / "benchmarks" / "matrix_optimizers.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def quick(bench, tmp_path_factory):
  out = tmp_path_factory.mktemp("matrix_bench")
  md, png = out / "table.md", out / "curves.png"
  results = bench.main(["--quick", "--quiet", "--optimizers", ",".join(RUN), "--markdown",
                        str(md), "--out", str(png)])
  return results, md.read_text(), png.read_bytes()


@pytest.fixture(scope="module")
def init_bytes(bench):
  """Bytes of each optimizer's state right after `init` on the CNN's parameters (the quick
  run's grid value: the middle one)."""
  x = np.zeros((1, 8, 8, 1), np.float32)
  params = bench.CNN().init(jax.random.key(0), x)["params"]
  assert sum(p.size for p in jax.tree.leaves(params)) == N_PARAMS
  return {name: bench.state_bytes(bench.make_optimizer(name, bench.GRIDS[name][1]).init(params))
          for name in ALL}


def test_quick_run(bench, quick, init_bytes):
  """The quick run's structure, that every optimizer learns, and the state bytes it reports:
  one test, so that the run (the module's slow part) is made once, not on each worker."""
  _structure(bench, quick)
  _every_optimizer_learns(quick)
  _reports_the_init_state_bytes(quick, init_bytes)


def _structure(bench, quick):
  results, md, png = quick
  cfg = results["config"]
  assert cfg["params"] == N_PARAMS == 151_306
  assert cfg["steps"] == 2 * (cfg["n_train"] // cfg["batch_size"])
  assert results["skipped"] == {}
  assert set(ALL) == set(bench.DEFAULT_OPTIMIZERS) == set(bench.GRIDS) == set(bench.MATRICES)
  assert tuple(results["optimizers"]) == RUN
  for name, r in results["optimizers"].items():
    assert len(r["curve"]) == len(r["losses"]) == len(r["step_times"]) == cfg["steps"]
    assert [g["lr"] for g in r["grid"]] == [bench.GRIDS[name][1]] == [r["lr"]]
    assert r["median_step_s"] > 0 and r["mean_step_s"] > 0
  rows = [line for line in md.splitlines() if line.startswith("| ")]
  assert len(rows) == 1 + len(RUN)
  assert {row.split(" | ")[0][2:] for row in rows[1:]} == set(RUN)
  assert png[:8] == b"\x89PNG\r\n\x1a\n"


def _every_optimizer_learns(quick):
  # 20 steps on 320 images: the first batch loss is ≈ ln 10 ≈ 2.30; observed final smoothed
  # losses 0.9–1.3 and test accuracies 85–93 % on the 80 test images.
  for name, r in quick[0]["optimizers"].items():
    assert np.all(np.isfinite(r["losses"])), name
    assert r["first_loss"] > 2.0, name
    assert r["final_loss"] < 0.75 * r["first_loss"], (name, r["final_loss"])
    assert r["test_acc"] > 0.6, (name, r["test_acc"])


def _reports_the_init_state_bytes(quick, init_bytes):
  for name, r in quick[0]["optimizers"].items():
    assert r["state_bytes"] == init_bytes[name], (name, r["state_bytes"], init_bytes[name])
    assert r["state_bytes_per_param"] == r["state_bytes"] / N_PARAMS


def test_state_bytes_per_parameter(init_bytes):
  counters = 64   # a few int32 step counters / scalars per optimizer, at most
  per_param = {name: got / N_PARAMS for name, got in init_bytes.items()}

  def near(name, expected_bytes):
    got = init_bytes[name]
    assert expected_bytes <= got <= expected_bytes + counters, (name, got, expected_bytes)

  # AdamW: mu and nu in float32 on every parameter.
  near("adamw", 2 * F32 * N_PARAMS)
  # Adafactor: the 1024×128 kernel (both axes >= 128) keeps a row and a column factor; every
  # other leaf a full second moment; no momentum.
  near("adafactor", F32 * (N_PARAMS - 1024 * 128) + F32 * (1024 + 128))
  assert per_param["adafactor"] < 0.6
  # Muon (conv kernels as matrices): one float32 momentum on the kernels, AdamW's two on the
  # biases.
  near("muon", F32 * (N_PARAMS - sum(BIASES)) + 2 * F32 * sum(BIASES))
  # Shampoo: momentum and the Adam graft's second moment on every parameter, plus a statistic
  # and its root per axis per 256-block of every kernel.
  near("shampoo", 2 * F32 * N_PARAMS + 2 * F32 * sum(_stat_floats(s, 256) for s in KERNELS))
  # SOAP: Adam's two moments, plus a statistic and an eigenbasis per axis of every kernel
  # (size-1 axes left out; no blocking).
  soap_stats = sum(d * d for s in KERNELS for d in s if d > 1)
  near("soap", 2 * F32 * N_PARAMS + 2 * F32 * soap_stats)
  # 8-bit AdamW: one byte per moment per parameter plus per-block scales: 2 to 2.5 bytes.
  assert 2.0 < per_param["adamw_int8"] < 2.5
  assert per_param["adafactor"] < per_param["adamw_int8"] < per_param["adamw"]
