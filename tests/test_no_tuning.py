"""examples/no_tuning.py: the tuning-free optimizers at their defaults train the digits CNN.

A short run (500 images, 10 epochs of 12 steps). Observed test accuracies on the 100 test
images: tuned AdamW 97 %, schedule-free AdamW 97 %, Prodigy 98 %, YellowFin 98 %, DoG 53 %
(DoG's step starts at 10⁻⁶ (1 + ‖θ₀‖) and takes ~100 steps to grow; it reaches 97.8 % in the
full 15-epoch run). Chance is 10 % and a uniform guess has loss ln 10 ≈ 2.30; the thresholds
sit well below the observed values.
"""

import importlib
import math
import os
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
UNIFORM_GUESS_LOSS = math.log(10.0)
MIN_ACC = {"adamw": 0.85, "schedule_free_adamw": 0.85, "prodigy": 0.85, "yellowfin": 0.85,
           "dog": 0.3}


def test_every_optimizer_beats_chance_and_the_table_and_plot_say_so(tmp_path):
  """One run of the example (it trains five optimizers, so one test holds its checks: with
  two workers a shared module fixture would train them twice)."""
  if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)
  out = tmp_path / "curves.png"
  results = importlib.import_module("no_tuning").main(
      ["--epochs", "10", "--limit", "500", "--out", str(out)])
  assert list(results) == ["adamw", "schedule_free_adamw", "prodigy", "dog", "yellowfin"]
  for name, r in results.items():
    assert r["test_acc"] > MIN_ACC[name], (name, r["test_acc"])
    assert r["train_loss"] < 0.95 * UNIFORM_GUESS_LOSS, (name, r["train_loss"])
    assert len(r["curve"]) == 10 and r["curve"][-1] == r["train_loss"]
  for name in ("schedule_free_adamw", "prodigy", "yellowfin"):
    assert results[name]["train_loss"] < 0.2, (name, results[name]["train_loss"])
  # The table's gaps are against tuned AdamW, in percentage points; the plot is a PNG.
  base = results["adamw"]["test_acc"]
  for r in results.values():
    assert r["gap_pp"] == pytest.approx(100.0 * (r["test_acc"] - base))
  assert results["adamw"]["gap_pp"] == 0.0
  assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_free_is_evaluated_at_its_averaged_point():
  import jax.numpy as jnp
  from flax.training import train_state

  import gradxform as gx
  if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)
  mod = importlib.import_module("no_tuning")
  params = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
  tx = gx.schedule_free_adamw()
  state = train_state.TrainState.create(apply_fn=lambda v, x: x @ v["params"]["w"],
                                        params=params, tx=tx)
  for k in range(3):                                     # after one step x = y = z
    state = state.apply_gradients(grads={"w": jnp.array([[1.0, -1.0], [0.5, k - 1.0]])})
  x_eval = gx.schedule_free_eval_params(state.opt_state, state.params)["w"]
  assert not jnp.allclose(x_eval, state.params["w"])     # the two points differ
  data = (None, jnp.eye(2), None, jnp.array([0, 1]))
  loss, _ = mod.final_metrics("schedule_free_adamw", state, data)
  logits = jnp.eye(2) @ x_eval                           # the loss at the averaged point
  expected = -jnp.mean(jnp.diag(logits) - jnp.log(jnp.sum(jnp.exp(logits), axis=1)))
  assert loss == pytest.approx(float(expected), rel=1e-5)
