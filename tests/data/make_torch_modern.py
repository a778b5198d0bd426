"""Generates tests/data/torch_modern.json: torch's Rprop, ASGD and GradScaler, for gradxform.

What it stores.

* `problem`: a closed-loop noisy quadratic (so an error at one step feeds into the next
  gradient): parameters θ (a tree of a (3, 4) matrix, a (5,) vector and a scalar), and at every
  step the gradient `g_t = c ⊙ (θ_t − target) + noise_t`. `c` (in [0.5, 2]), `target`, `θ_0`
  and the noise sequence are drawn once from `numpy.random.default_rng(SEED)` and stored, so
  the test replays exactly the same inputs.
* `optim`: for each torch.optim configuration (Rprop, ASGD with the defaults and with moved
  values) θ after every one of STEPS steps, computed by torch in float64
  (`torch.set_default_dtype(torch.float64)`, single-tensor code path: `foreach=False`); for
  ASGD also torch's averaged parameters `ax` after every step.
* `loss_scale`: `torch.amp.GradScaler("cpu")` around an optimizer, on the same problem without
  noise: at step t the loss `½ Σ c (θ − target)²` is scaled with `scaler.scale(loss)`,
  differentiated with `backward()`, then the gradient of one entry is overwritten with inf or
  NaN at the steps listed in `inf_steps` / `nan_steps` (a scripted overflow), and
  `scaler.step(opt)`, `scaler.update()` run. Per step it stores the scale *used* for that
  step's loss, whether the step was skipped (the optimizer did not run), the scale after
  `update()`, and θ after the step. The parameters are float64 (GradScaler's unscale and
  inf check take float64 gradients on the CPU); the scale is torch's float32 scalar.

The JSON holds floats written by Python's `json` (repr: every float64 round-trips exactly; inf
and NaN never occur in stored values), `torch.__version__` and NumPy's version, and for each
configuration the torch class and arguments and the gradxform call (as text;
tests/test_torch_forms.py and tests/test_loss_scale.py build the same calls as code).

Regenerate (torch is not a test dependency; any venv with torch and NumPy works), from the
repository root:

    /tmp/torchenv/bin/python tests/data/make_torch_modern.py

Generated with torch 2.13.0+cpu.
"""

import json
import os
import sys

import numpy as np
import torch

SEED = 20261204
STEPS = 30
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_modern.json")
SHAPES = {"w": [3, 4], "b": [5], "s": []}

# name -> (torch class, torch kwargs, gradxform call as text).
OPTIM = {
    "rprop": ("Rprop", dict(lr=0.01), "gx.rprop(0.01, always_clip=True)"),
    # lr above max_step_size: torch clips the first step, Optax's form does not.
    "rprop_moved": ("Rprop", dict(lr=0.2, etas=(0.3, 1.5), step_sizes=(1e-3, 0.1)),
                    "gx.rprop(0.2, 0.3, 1.5, 1e-3, 0.1, always_clip=True)"),
    # lr below min_step_size.
    "rprop_small_lr": ("Rprop", dict(lr=1e-4, etas=(0.6, 1.1), step_sizes=(1e-3, 1.0)),
                       "gx.rprop(1e-4, 0.6, 1.1, 1e-3, 1.0, always_clip=True)"),
    "asgd": ("ASGD", dict(lr=0.01), "gx.asgd(0.01)"),
    "asgd_moved": ("ASGD", dict(lr=0.05, lambd=0.01, alpha=0.6, t0=5.0, weight_decay=0.1),
                   "gx.asgd(0.05, lambd=0.01, alpha=0.6, t0=5.0, weight_decay=0.1)"),
    "asgd_fractional_t0": ("ASGD", dict(lr=0.1, lambd=0.05, alpha=0.9, t0=2.5),
                           "gx.asgd(0.1, lambd=0.05, alpha=0.9, t0=2.5)"),
}

LOSS_SCALE = {
    # torch's defaults except init_scale and growth_interval; SGD with momentum inside.
    "sgd": dict(
        optimizer=("SGD", dict(lr=0.05, momentum=0.9)),
        scaler=dict(init_scale=2.0 ** 10, growth_interval=3),
        inf_steps=[2, 7, 8, 15, 16, 17], nan_steps=[11, 24],
        gradxform="gx.dynamic_loss_scale(gx.sgd(0.05, 0.9), init_scale=2.0 ** 10, "
                  "growth_interval=3)"),
    "adam_moved": dict(
        optimizer=("Adam", dict(lr=0.05)),
        scaler=dict(init_scale=2.0 ** 20, growth_factor=4.0, backoff_factor=0.25,
                    growth_interval=2),
        inf_steps=[1, 5, 6, 13], nan_steps=[9, 10, 22],
        gradxform="gx.dynamic_loss_scale(gx.adam(0.05), init_scale=2.0 ** 20, "
                  "growth_factor=4.0, backoff_factor=0.25, growth_interval=2)"),
}


def make_problem(rng):
  c = {k: rng.uniform(0.5, 2.0, size=s) for k, s in SHAPES.items()}
  target = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  theta0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  noise = {k: 0.3 * rng.normal(size=[STEPS] + s) for k, s in SHAPES.items()}
  return dict(shapes=SHAPES, c=c, target=target, theta0=theta0, noise=noise)


def _t(x):
  return torch.tensor(np.asarray(x), dtype=torch.float64)


def run_optim(problem, cls, kwargs):
  names = sorted(SHAPES)
  params = {k: torch.nn.Parameter(_t(problem["theta0"][k]).clone()) for k in names}
  opt = getattr(torch.optim, cls)([params[k] for k in names], foreach=False, **kwargs)
  traj = {k: [] for k in names}
  ax = {k: [] for k in names}
  for step in range(STEPS):
    with torch.no_grad():
      for k in names:
        p = params[k]
        p.grad = _t(problem["c"][k]) * (p - _t(problem["target"][k])) + _t(
            problem["noise"][k][step])
    opt.step()
    for k in names:
      traj[k].append(params[k].detach().numpy().copy())
      if cls == "ASGD":
        ax[k].append(opt.state[params[k]]["ax"].numpy().copy())
  out = dict(trajectory={k: np.stack(v) for k, v in traj.items()})
  if cls == "ASGD":
    out["ax"] = {k: np.stack(v) for k, v in ax.items()}
  return out


def run_loss_scale(problem, config):
  names = sorted(SHAPES)
  params = {k: torch.nn.Parameter(_t(problem["theta0"][k]).clone()) for k in names}
  cls, kwargs = config["optimizer"]
  opt = getattr(torch.optim, cls)([params[k] for k in names], foreach=False, **kwargs)
  scaler = torch.amp.GradScaler("cpu", **config["scaler"])
  rows = dict(scale_used=[], skipped=[], scale_after=[], theta={k: [] for k in names})
  for step in range(1, STEPS + 1):
    opt.zero_grad()
    loss = sum(0.5 * (_t(problem["c"][k]) * (params[k] - _t(problem["target"][k])) ** 2).sum()
               for k in names)
    scale_used = float(scaler.get_scale())
    scaler.scale(loss).backward()
    with torch.no_grad():
      if step in config["inf_steps"]:
        params["w"].grad[1, 2] = float("inf")
      if step in config["nan_steps"]:
        params["b"].grad[3] = float("nan")
    before = {k: params[k].detach().clone() for k in names}
    scaler.step(opt)
    skipped = sum(float(v.item()) for v in scaler._found_inf_per_device(opt).values()) > 0
    scaler.update()
    unchanged = all(torch.equal(before[k], params[k].detach()) for k in names)
    assert unchanged == skipped, (step, skipped)
    assert skipped == (step in config["inf_steps"] + config["nan_steps"]), step
    rows["scale_used"].append(scale_used)
    rows["skipped"].append(skipped)
    rows["scale_after"].append(float(scaler.get_scale()))
    for k in names:
      rows["theta"][k].append(params[k].detach().numpy().copy())
  rows["theta"] = {k: np.stack(v) for k, v in rows["theta"].items()}
  return rows


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
  return json.dumps(obj, allow_nan=False)


def main():
  torch.set_default_dtype(torch.float64)
  problem = make_problem(np.random.default_rng(SEED))
  optim = {}
  for name, (cls, kwargs, gx_call) in OPTIM.items():
    out = run_optim(problem, cls, kwargs)
    moved = max(np.max(np.abs(out["trajectory"][k][-1] - problem["theta0"][k])) for k in SHAPES)
    assert moved > 0.05, (name, moved)
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    optim[name] = dict(torch=f"torch.optim.{cls}", torch_kwargs=kw, gradxform=gx_call, **out)
    print(f"{name:24s} moved {moved:.3f}", file=sys.stderr)
  loss_scale = {}
  for name, config in LOSS_SCALE.items():
    rows = run_loss_scale(problem, config)
    cls, kwargs = config["optimizer"]
    loss_scale[name] = dict(torch_optimizer=f"torch.optim.{cls}", torch_kwargs=kwargs,
                            grad_scaler_kwargs=config["scaler"], inf_steps=config["inf_steps"],
                            nan_steps=config["nan_steps"], gradxform=config["gradxform"],
                            **rows)
    print(f"{name:24s} scales {rows['scale_after']}", file=sys.stderr)
  data = dict(
      description="torch Rprop / ASGD trajectories and GradScaler runs (float64); see "
                  "tests/data/make_torch_modern.py",
      generator="tests/data/make_torch_modern.py", torch_version=torch.__version__,
      numpy_version=np.__version__, seed=SEED, steps=STEPS,
      gradient="g_t = c * (theta_t - target) + noise[t] (optim); "
               "scale * c * (theta_t - target) with scripted inf/nan (loss_scale)",
      problem=problem, optim=optim, loss_scale=loss_scale)
  text = dumps(tolist(data))
  assert json.loads(text) == json.loads(json.dumps(tolist(data)))
  with open(OUT, "w") as f:
    f.write(text + "\n")
  print(f"wrote {OUT} ({len(text) / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
  main()
