"""torch.optim's fused CPU step on the same trees as `run.py`, in torch's own process.

`run.py --torch-python PATH` runs this file with the Python of a virtual environment that has
torch (torch is not a dependency of gradxform, and the two libraries' thread pools should not
share a process). It reads one job as JSON from stdin:

    {"optimizer": "adam", "shapes": [[768, 2304], ...], "reps": 20, "warmup": 2, "chunks": 3,
     "seed": 0}

and prints one JSON object: the step time (median of `chunks` groups of `reps` back-to-back
steps, as `run.py` times the JAX libraries), torch's version and thread count. The step is
`torch.optim.<Adam|AdamW|SGD>(..., fused=True).step()` with the hyperparameters of `run.py`
(`clip_adamw` adds `clip_grad_norm_(..., foreach=True)` before the step); gradients are set
once and reused, as in `run.py`.

    echo '{"optimizer": "adam", "shapes": [[1000000]]}' | python benchmarks/torch_step.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

LR, WD, MOMENTUM, MAX_NORM = 1e-3, 1e-2, 0.9, 1.0


def make_optimizer(name: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
  if name == "adam":
    return torch.optim.Adam(params, lr=LR, fused=True)
  if name in ("adamw", "clip_adamw"):
    return torch.optim.AdamW(params, lr=LR, weight_decay=WD, fused=True)
  if name == "sgd_momentum":
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, fused=True)
  raise SystemExit(f"torch_step.py: no torch step for optimizer {name!r}")


def main() -> None:
  job = json.load(sys.stdin)
  name = job["optimizer"]
  torch.manual_seed(job.get("seed", 0))
  params = []
  for shape in job["shapes"]:
    p = torch.nn.Parameter(0.02 * torch.randn(*shape))
    p.grad = 0.1 * p.detach() + 1e-3
    params.append(p)
  opt = make_optimizer(name, params)

  def step() -> None:
    if name == "clip_adamw":
      torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)
    opt.step()

  for _ in range(max(job.get("warmup", 2), 1)):
    step()
  times = []
  for _ in range(job.get("chunks", 3)):
    t0 = time.perf_counter()
    for _ in range(job.get("reps", 20)):
      step()
    times.append((time.perf_counter() - t0) / job.get("reps", 20))
  finite = all(bool(torch.isfinite(p).all()) for p in params[:4])
  print(json.dumps({"lib": "torch_fused", "optimizer": name, "step_s": statistics.median(times),
                    "step_min_s": min(times), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "finite": finite}))


if __name__ == "__main__":
  main()
