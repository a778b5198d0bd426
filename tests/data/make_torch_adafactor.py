"""Generates tests/data/torch_adafactor.json: torch.optim.Adafactor trajectories for gradxform.

What it stores. A closed-loop problem, so that an error at one step feeds into the next
gradient: parameters θ (a tree of a (3, 4) matrix "w", a (2, 3, 4) tensor "t" -- torch
factors its last two axes, batched over the first --, a (5,) vector "b" and a scalar "s"), and
at every step the gradient `g_t = c ⊙ (θ_t − target) + noise_t` of a noisy quadratic. `c` (in
[0.5, 2]), `target`, `θ_0` and the noise sequence are drawn once from
`numpy.random.default_rng(SEED)` and stored in the JSON, so the test replays exactly the same
inputs. The vector "b" starts small (θ_0 ~ 0.01 N(0, 1)), so a moved `eps2` (0.05, the floor
of the parameter scale) is active on it. For every configuration (torch.optim.Adafactor
with given arguments, and the gradxform call documented as computing the same numbers) it
stores θ after every step, computed by torch in float64 (`torch.set_default_dtype(
torch.float64)`, single-tensor code path: `foreach=False`).

The configurations cover torch's defaults and each argument moved: `lr` large enough that the
relative step `ρ_t = min(lr, 1/√t)` switches from `lr` to `1/√t` within the run,
`beta2_decay`, both epsilons (an `eps1` large enough to clamp), the clipping threshold `d`,
`weight_decay` and `maximize`.

The JSON holds floats written by Python's `json` (repr: every float64 round-trips exactly),
`torch.__version__` and NumPy's version, and for each configuration the torch keyword
arguments and the gradxform call (as text; tests/test_adafactor.py builds the same call from
the torch arguments and checks the text agrees).

Regenerate (torch is not a test dependency; any venv with torch and NumPy works), from the
repository root:

    /tmp/torchenv/bin/python tests/data/make_torch_adafactor.py

Generated with torch 2.13.0+cpu. A torch release that changes the algorithm changes this file;
the test then fails and names the configuration.
"""

import json
import os
import sys

import numpy as np
import torch

SEED = 20261204
STEPS = 30
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_adafactor.json")
SHAPES = {"w": [3, 4], "t": [2, 3, 4], "b": [5], "s": []}

# name -> (torch kwargs, gradxform call). The call is the documented translation:
# gx.adafactor(lr, min_dim_size_to_factor=0, decay_rate=-beta2_decay, clipping_threshold=d,
#              weight_decay_rate=weight_decay, eps=eps1, min_scale=eps2, torch_form=True),
# preceded by gx.scale(-1.0) for maximize=True.
CONFIGS = {
    "default": (dict(), "gx.adafactor(0.01, min_dim_size_to_factor=0, decay_rate=0.8, "
                        "clipping_threshold=1.0, eps=None, min_scale=0.001, torch_form=True)"),
    "lr": (dict(lr=0.3), "gx.adafactor(0.3, min_dim_size_to_factor=0, decay_rate=0.8, "
                         "clipping_threshold=1.0, eps=None, min_scale=0.001, torch_form=True)"),
    "beta2_decay": (dict(lr=0.05, beta2_decay=-0.5),
                    "gx.adafactor(0.05, min_dim_size_to_factor=0, decay_rate=0.5, "
                    "clipping_threshold=1.0, eps=None, min_scale=0.001, torch_form=True)"),
    "eps": (dict(lr=0.05, eps=(0.4, 0.05)),
            "gx.adafactor(0.05, min_dim_size_to_factor=0, decay_rate=0.8, "
            "clipping_threshold=1.0, eps=0.4, min_scale=0.05, torch_form=True)"),
    "d": (dict(lr=0.1, d=1.5), "gx.adafactor(0.1, min_dim_size_to_factor=0, decay_rate=0.8, "
                               "clipping_threshold=1.5, eps=None, min_scale=0.001, "
                               "torch_form=True)"),
    "weight_decay": (dict(lr=0.05, weight_decay=0.3),
                     "gx.adafactor(0.05, min_dim_size_to_factor=0, decay_rate=0.8, "
                     "clipping_threshold=1.0, weight_decay_rate=0.3, eps=None, "
                     "min_scale=0.001, torch_form=True)"),
    "all_moved": (dict(lr=0.2, beta2_decay=-0.6, eps=(1e-3, 0.02), d=2.0, weight_decay=0.1),
                  "gx.adafactor(0.2, min_dim_size_to_factor=0, decay_rate=0.6, "
                  "clipping_threshold=2.0, weight_decay_rate=0.1, eps=0.001, min_scale=0.02, "
                  "torch_form=True)"),
    "maximize": (dict(lr=0.05, maximize=True),
                 "gx.chain(gx.scale(-1.0), gx.adafactor(0.05, min_dim_size_to_factor=0, "
                 "decay_rate=0.8, clipping_threshold=1.0, eps=None, min_scale=0.001, "
                 "torch_form=True))"),
}


def make_problem(rng):
  """c, target, θ_0 and noise for each leaf."""
  c = {k: rng.uniform(0.5, 2.0, size=s) for k, s in SHAPES.items()}
  target = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  theta0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  theta0["b"] = 0.01 * theta0["b"]
  noise = {k: 0.3 * rng.normal(size=[STEPS] + s) for k, s in SHAPES.items()}
  return dict(shapes=SHAPES, c=c, target=target, theta0=theta0, noise=noise)


def run_torch(problem, kwargs):
  """θ after every step, leaf by leaf: arrays of shape (STEPS,) + leaf shape."""
  names = sorted(problem["shapes"])
  t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float64)
  params = {k: torch.nn.Parameter(t(problem["theta0"][k]).clone()) for k in names}
  opt = torch.optim.Adafactor([params[k] for k in names], foreach=False, **kwargs)
  traj = {k: [] for k in names}
  for step in range(STEPS):
    with torch.no_grad():
      for k in names:
        p = params[k]
        p.grad = (t(problem["c"][k]) * (p - t(problem["target"][k]))
                  + t(problem["noise"][k][step]))
    opt.step()
    for k in names:
      traj[k].append(params[k].detach().numpy().copy())
  return {k: np.stack(v) for k, v in traj.items()}


def tolist(tree):
  if isinstance(tree, dict):
    return {k: tolist(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [tolist(v) for v in tree]
  if isinstance(tree, np.ndarray):
    return tolist(tree.tolist())
  if isinstance(tree, (np.floating, float)):
    return float(tree)
  return tree


def dumps(obj, indent=0):
  """JSON with one line per innermost list of numbers."""
  pad, inner = " " * indent, " " * (indent + 1)
  if isinstance(obj, dict):
    if not obj:
      return "{}"
    items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
    return "{\n" + ",\n".join(items) + "\n" + pad + "}"
  if isinstance(obj, list) and any(isinstance(v, (list, dict)) for v in obj):
    return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
  return json.dumps(obj)


def main():
  torch.set_default_dtype(torch.float64)
  rng = np.random.default_rng(SEED)
  problem = make_problem(rng)
  configs = {}
  for name, (kwargs, gx_call) in CONFIGS.items():
    traj = run_torch(problem, kwargs)
    moved = min(np.max(np.abs(traj[k][-1] - problem["theta0"][k]))
                / np.max(np.abs(problem["theta0"][k])) for k in traj)   # relative to θ_0
    assert moved > 0.05, (name, moved)
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    configs[name] = dict(torch="torch.optim.Adafactor", torch_kwargs=kw, gradxform=gx_call,
                         trajectory=traj)
    print(f"{name:16s} least moved leaf {moved:.3f}", file=sys.stderr)
  data = dict(
      description="torch.optim.Adafactor trajectories (float64) on a noisy quadratic; see "
                  "tests/data/make_torch_adafactor.py",
      generator="tests/data/make_torch_adafactor.py", torch_version=torch.__version__,
      numpy_version=np.__version__, seed=SEED, steps=STEPS,
      gradient="g_t = c * (theta_t - target) + noise[t]", problem=problem, configs=configs)
  text = dumps(tolist(data))
  assert json.loads(text) == json.loads(json.dumps(tolist(data)))
  with open(OUT, "w") as f:
    f.write(text + "\n")
  print(f"wrote {OUT} ({len(text) / 1e6:.2f} MB, {len(configs)} configurations)", file=sys.stderr)


if __name__ == "__main__":
  main()
