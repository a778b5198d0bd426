"""Smoke tests: every example's `main(argv)` runs with tiny settings and writes its outputs."""

import importlib
import os
import sys

import pytest

pytest.importorskip("flax")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _example(name):
  if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)
  return importlib.import_module(name)


def test_train_digits_learns_quickly():
  # Two epochs on the full data already clear 90 % (the defaults, 15 epochs, reach ~99 %).
  result = _example("train_digits").main(["--epochs", "2", "--no-progress"])
  assert result["test_acc"] > 0.9
  assert len(result["history"]) == 2


@pytest.mark.parametrize("optimizer,schedule", [("nesterov", "onecycle"), ("powersign", "sgdr")])
def test_train_digits_flags(optimizer, schedule, capsys):
  result = _example("train_digits").main(
      ["--optimizer", optimizer, "--schedule", schedule, "--epochs", "1", "--limit", "200",
       "--batch-size", "32"])
  assert 0.0 <= result["test_acc"] <= 1.0
  assert "test accuracy" in capsys.readouterr().out


def test_train_digits_every_optimizer_and_schedule_builds():
  import jax.numpy as jnp
  mod = _example("train_digits")
  params = {"w": jnp.ones((2, 2)), "b": jnp.zeros((2,))}
  for name in mod.OPTIMIZERS:
    for schedule in mod.SCHEDULES:
      lr = mod.make_schedule(schedule, mod.DEFAULT_LR[name], 100, 10)
      assert hasattr(mod.OPTIMIZERS[name](lr), "update")
    tx = mod.make_optimizer(name, lr, inject=True)  # as the demo builds it
    updates, state = tx.update(params, tx.init(params), params)
    assert float(state.hyperparams["learning_rate"]) > 0


def test_compare_optimizers_writes_png(tmp_path):
  out = tmp_path / "cmp.png"
  result = _example("compare_optimizers").main(
      ["--optimizers", "sgd,adam", "--epochs", "1", "--limit", "200", "--out", str(out),
       "--quiet"])
  assert set(result) == {"sgd", "adam"}
  assert out.stat().st_size > 1000


def test_trajectories_writes_png(tmp_path):
  out = tmp_path / "traj.png"
  result = _example("trajectories").main(
      ["--optimizers", "sgd,adam", "--steps", "50", "--out", str(out), "--quiet"])
  assert set(result) == {"rosenbrock", "saddle"}
  # Adam escapes the saddle along y faster than SGD.
  assert abs(result["saddle"]["adam"][1]) > abs(result["saddle"]["sgd"][1])
  assert out.stat().st_size > 1000


def test_snapshot_ensemble_runs(tmp_path):
  out = tmp_path / "snap.png"
  result = _example("snapshot_ensemble").main(
      ["--cycles", "2", "--epochs-per-cycle", "1", "--limit", "300", "--out", str(out),
       "--quiet"])
  assert result["num_snapshots"] == 2
  assert 0.0 <= result["ensemble"] <= 1.0 and len(result["snapshots"]) == 2
  assert out.stat().st_size > 1000


def test_custom_optimizer_runs_and_passes_checks():
  pytest.importorskip("gradxform.testing")
  result = _example("custom_optimizer").main(
      ["--optimizers", "nadamw_clip", "--epochs", "1", "--limit", "200", "--checks", "basic",
       "--quiet"])
  assert set(result) == {"nadamw_clip"}
