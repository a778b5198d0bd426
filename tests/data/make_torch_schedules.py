"""Writes `torch_schedules.json`: learning rates stepped out of real torch schedulers.

The tests (`tests/test_schedules.py`, `tests/test_plateau.py`) compare gradxform's schedules
and `reduce_on_plateau` with these values; they never import torch. Each case builds a
`torch.optim.SGD` on one dummy float64 parameter, wraps it in a `torch.optim.lr_scheduler`
scheduler and steps it as in training: per step, read the learning rate that step uses
(`optimizer.param_groups[0]["lr"]`, checked equal to `scheduler.get_last_lr()`), then
`optimizer.step(); scheduler.step()`. For `ReduceLROnPlateau` the step is
`optimizer.step(); scheduler.step(loss)` over a scripted loss sequence (stored next to the
rates, NaN written as null) and the rate is read after it: gradxform's scale at step t is
decided by the loss passed at step t.

Torch's arithmetic is Python float64 (most schedulers update the rate recursively), and the
values are written with `repr`, i.e. to full float64 precision. `torch_version` records the
torch that produced them.

Regenerate (torch is needed only here, never by the tests), from the repository root:

    python tests/data/make_torch_schedules.py   # any python with torch, e.g. a separate venv

The tests run every stored case: they translate its scheduler and arguments to the gradxform
schedule documented as equal (and fail on an argument they do not translate), so a new case
needs a test change only when it brings a new scheduler or argument. Loss sequences are rounded
to float32 and kept clear of the improvement boundary (asserted below). The output is
deterministic: a rerun with the same torch rewrites the same file.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
from torch.optim import lr_scheduler as S

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_schedules.json")


def _optimizer(lr: float) -> torch.optim.SGD:
  p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
  p.grad = torch.zeros(1, dtype=torch.float64)
  return torch.optim.SGD([p], lr=lr)


def _current_lr(opt: torch.optim.Optimizer, sched: S.LRScheduler) -> float:
  lr = float(opt.param_groups[0]["lr"])
  last = float(sched.get_last_lr()[0])
  assert lr == last, (lr, last)
  return lr


def lr_schedule(name: str, lr: float, kwargs: dict, steps: int) -> list[float]:
  """The rate used at steps 0 .. steps-1 by torch scheduler `name(SGD(lr), **kwargs)`."""
  opt = _optimizer(lr)
  sched = getattr(S, name)(opt, **kwargs)
  out = []
  for t in range(steps):
    out.append(_current_lr(opt, sched))
    if t + 1 < steps:          # OneCycleLR refuses to step past total_steps
      opt.step()
      sched.step()
  return out


def plateau(lr: float, kwargs: dict, losses: list[float]) -> list[float]:
  """The rate after `ReduceLROnPlateau.step(loss)` at each loss."""
  opt = _optimizer(lr)
  sched = S.ReduceLROnPlateau(opt, **kwargs)
  sign = 1.0 if kwargs.get("mode", "min") == "max" else -1.0
  out = []
  for loss in losses:
    # gradxform tests `v < best (1 - threshold)` in float32, torch in float64: keep every loss
    # clear of that boundary so that rounding cannot decide (a data choice, not a semantics one)
    bound = sched.best * (1.0 + sign * sched.threshold)
    assert math.isnan(loss) or math.isinf(bound) or abs(loss - bound) > 1e-6 * abs(bound), (
        "loss too close to the improvement boundary", loss, bound)
    opt.step()
    sched.step(loss)
    out.append(float(opt.param_groups[0]["lr"]))
  return out


# name -> (torch scheduler, base lr, scheduler kwargs, steps)
SCHEDULES = {
    "step_lr": ("StepLR", 0.2, dict(step_size=30, gamma=0.1), 400),
    "step_lr_half": ("StepLR", 1.0, dict(step_size=7, gamma=0.5), 400),
    "multistep_lr": ("MultiStepLR", 0.3, dict(milestones=[50, 120, 300], gamma=0.1), 400),
    "exponential_lr": ("ExponentialLR", 0.1, dict(gamma=0.99), 1000),
    "exponential_lr_slow": ("ExponentialLR", 1.0, dict(gamma=0.999), 2000),
    "polynomial_lr_p1": ("PolynomialLR", 1.0, dict(total_iters=200, power=1.0), 300),
    "polynomial_lr_p2": ("PolynomialLR", 1.0, dict(total_iters=200, power=2.0), 300),
    "polynomial_lr_p05": ("PolynomialLR", 0.5, dict(total_iters=500, power=0.5), 600),
    "linear_lr_warmup": ("LinearLR", 1e-3, dict(start_factor=0.1, end_factor=1.0,
                                                 total_iters=100), 200),
    "linear_lr_decay": ("LinearLR", 0.5, dict(start_factor=1.0, end_factor=0.01,
                                              total_iters=250), 300),
    "cosine_annealing_lr": ("CosineAnnealingLR", 0.5, dict(T_max=25, eta_min=0.05), 26),
    "cosine_annealing_lr_long": ("CosineAnnealingLR", 1.0, dict(T_max=1000, eta_min=0.0),
                                 1001),
    "cosine_annealing_lr_long_min": ("CosineAnnealingLR", 0.1, dict(T_max=700, eta_min=1e-3),
                                     701),
    "warm_restarts_t10_m1": ("CosineAnnealingWarmRestarts", 0.5,
                             dict(T_0=10, T_mult=1, eta_min=0.01), 800),
    "warm_restarts_t10_m2": ("CosineAnnealingWarmRestarts", 0.5,
                             dict(T_0=10, T_mult=2, eta_min=0.01), 800),
    "warm_restarts_t3_m3": ("CosineAnnealingWarmRestarts", 1.0,
                            dict(T_0=3, T_mult=3, eta_min=0.0), 400),
    "warm_restarts_t1_m2": ("CosineAnnealingWarmRestarts", 0.5,
                            dict(T_0=1, T_mult=2, eta_min=0.0), 800),
    "warm_restarts_t100_m2_long": ("CosineAnnealingWarmRestarts", 1.0,
                                   dict(T_0=100, T_mult=2, eta_min=1e-4), 3200),
    "warm_restarts_t250_m1_long": ("CosineAnnealingWarmRestarts", 0.1,
                                   dict(T_0=250, T_mult=1, eta_min=0.0), 1000),
}
for _mode in ["triangular", "triangular2", "exp_range"]:
  for _up, _down in [(3, 5), (4, None), (10, 2), (250, 150)]:
    SCHEDULES[f"cyclic_{_mode}_{_up}_{_down}"] = (
        "CyclicLR", 0.1, dict(base_lr=0.1, max_lr=1.0, step_size_up=_up, step_size_down=_down,
                              mode=_mode, gamma=0.995 if _up < 100 else 0.9995,
                              cycle_momentum=False), 400 if _up < 100 else 800)
for _anneal in ["cos", "linear"]:
  for _total, _pct in [(37, 0.3), (100, 0.25), (10, 0.05), (50, 0.5), (1000, 0.3)]:
    SCHEDULES[f"one_cycle_{_anneal}_{_total}_{_pct}"] = (
        "OneCycleLR", 2.0, dict(max_lr=2.0, total_steps=_total, pct_start=_pct,
                                anneal_strategy=_anneal, cycle_momentum=False), _total)
  SCHEDULES[f"one_cycle_{_anneal}_divs"] = (
      "OneCycleLR", 0.5, dict(max_lr=0.5, total_steps=300, pct_start=0.4, div_factor=10.0,
                              final_div_factor=100.0, anneal_strategy=_anneal,
                              cycle_momentum=False), 300)


def _f32(xs) -> list[float]:
  """Losses rounded to float32 values, so torch (float64) and gradxform (float32) see the same
  numbers; NaN stays NaN."""
  return [float(x) for x in np.asarray(xs, np.float64).astype(np.float32)]


SEQ = [1.0, 0.9, 0.9, 0.95, 0.9, 0.9, 0.9, 0.89999, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6,
       0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]


def _noisy(seed: int, n: int) -> list[float]:
  """A loss that falls with noise and plateaus: values from {1, .99, .98, 1.01, .5} times a
  slow decline (as the random sequence the tests used before), seeded."""
  rng = np.random.default_rng(seed)
  choice = rng.choice([1.0, 0.99, 0.98, 1.01, 0.5], size=n)
  return _f32(choice * (1 - np.arange(n) / (2 * n + 7)))


def _training_curve(seed: int, n: int) -> list[float]:
  """A long training-like loss: exponential fall to a floor, multiplicative noise."""
  rng = np.random.default_rng(seed)
  t = np.arange(n)
  return _f32((0.2 + 2.0 * np.exp(-t / 60.0)) * (1 + 0.03 * rng.standard_normal(n)))


# name -> (base lr, ReduceLROnPlateau kwargs, losses). min_lr and eps are in rate units.
PLATEAU = {
    "seq_p2": (1.0, dict(factor=0.5, patience=2, threshold=1e-4, cooldown=0, min_lr=0.0,
                         eps=0.0), _f32(SEQ)),
    "seq_p1_cooldown_min": (1.0, dict(factor=0.5, patience=1, threshold=0.01, cooldown=2,
                                      min_lr=0.2, eps=0.0), _f32(SEQ)),
    "noisy_a": (1.0, dict(factor=0.7, patience=3, threshold=1e-3, cooldown=1, min_lr=0.01,
                          eps=0.0), _noisy(0, 120)),
    "noisy_b": (1.0, dict(factor=0.1, patience=0, threshold=0.0, cooldown=0, min_lr=0.0,
                          eps=1e-8), _noisy(1, 120)),
    "noisy_c": (1.0, dict(factor=0.5, patience=5, threshold=0.05, cooldown=4, min_lr=0.0,
                          eps=0.0), _noisy(2, 120)),
    "eps_stops_cuts": (1.0, dict(factor=0.8, patience=0, threshold=1e-4, cooldown=0,
                                 min_lr=0.0, eps=0.05), _f32([1.0] * 14)),
    "nan_loss": (1.0, dict(factor=0.5, patience=1, threshold=1e-4, cooldown=0, min_lr=0.0,
                           eps=0.0), _f32([1.0, math.nan, math.nan, 0.5, math.nan, 0.4, 0.4,
                                           math.nan, 0.3])),
    "long_training": (1.0, dict(factor=0.5, patience=10, threshold=1e-4, cooldown=5,
                                min_lr=1e-3, eps=1e-8), _training_curve(3, 600)),
    "base_lr_0.1": (0.1, dict(factor=0.3, patience=4, threshold=1e-3, cooldown=2, min_lr=0.002,
                              eps=1e-8), _training_curve(4, 400)),
    # maximising a metric (mode="max") with threshold 0 is minimising its negative
    "mode_max_threshold0": (1.0, dict(mode="max", factor=0.5, patience=2, threshold=0.0,
                                      cooldown=1, min_lr=0.0, eps=0.0),
                            _f32([-x for x in _noisy(5, 150)])),
}


def main() -> None:
  torch.set_default_dtype(torch.float64)
  data = {
      "torch_version": torch.__version__,
      "generator": "tests/data/make_torch_schedules.py",
      "schedules": {},
      "plateau": {},
  }
  for name, (cls, lr, kwargs, steps) in SCHEDULES.items():
    data["schedules"][name] = {"scheduler": cls, "lr": lr, "kwargs": kwargs, "steps": steps,
                               "values": lr_schedule(cls, lr, kwargs, steps)}
  for name, (lr, kwargs, losses) in PLATEAU.items():
    data["plateau"][name] = {
        "lr": lr, "kwargs": kwargs,
        "losses": [None if math.isnan(x) else x for x in losses],
        "values": plateau(lr, kwargs, losses)}
  with open(OUT, "w") as f:   # one line per case: diffs of a regeneration stay readable
    f.write("{\n")
    for key in ("torch_version", "generator"):
      f.write(f" {json.dumps(key)}: {json.dumps(data[key])},\n")
    for i, group in enumerate(("schedules", "plateau")):
      f.write(f" {json.dumps(group)}: {{\n")
      items = list(data[group].items())
      for j, (name, case) in enumerate(items):
        sep = "," if j + 1 < len(items) else ""
        f.write(f"  {json.dumps(name)}: {json.dumps(case, allow_nan=False)}{sep}\n")
      f.write(" },\n" if i == 0 else " }\n")
    f.write("}\n")
  with open(OUT) as f:
    assert json.load(f) == data
  n = sum(len(c["values"]) for c in data["schedules"].values())
  m = sum(len(c["values"]) for c in data["plateau"].values())
  print(f"wrote {OUT}: torch {torch.__version__}, {len(SCHEDULES)} schedules ({n} values), "
        f"{len(PLATEAU)} plateau runs ({m} values)")


if __name__ == "__main__":
  main()
