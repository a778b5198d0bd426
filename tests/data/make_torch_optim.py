"""Generates tests/data/torch_optim.json: torch.optim trajectories that gradxform must reproduce.

What it stores. A closed-loop problem, so that an error at one step feeds into the next
gradient: parameters θ (a tree of a (3, 4) matrix, a (5,) vector and a scalar), and at every
step the gradient `g_t = c ⊙ (θ_t − target) + noise_t` of a noisy quadratic. `c` (in [0.5, 2]),
`target`, `θ_0` and the noise sequence are drawn once from `numpy.random.default_rng(SEED)` and
stored in the JSON, so the test replays exactly the same inputs. For every configuration (a
torch.optim optimizer with given arguments, and the gradxform call documented as computing the
same numbers) it stores θ after the steps listed in `recorded_steps` (of STEPS), computed by
torch in float64 (`torch.set_default_dtype(torch.float64)`, single-tensor code path:
`foreach=False`).

A second problem has a complex128 (3, 4) leaf next to a real (5,) leaf; torch optimizes a
complex entry as two reals (`torch.view_as_real`). Its inputs are stored in that real view:
`c`, `target`, `noise` and every complex θ carry a trailing axis of 2 (real, imaginary), and
`g = view_as_complex(c ⊙ (view_as_real(θ) − target) + noise)`. The script checks that torch's
complex trajectory equals its trajectory on the real-viewed parameters (to 1e-13; SGD's
complex arithmetic rounds a little differently, the adaptive ones are bit for bit).

The JSON holds floats written by Python's `json` (repr: every float64 round-trips exactly),
`torch.__version__` and NumPy's version, and for each configuration the torch class and keyword
arguments and the gradxform call (as text; tests/test_torch_optim.py builds it).

Regenerate (torch is not a test dependency; any venv with torch and NumPy works), from the
repository root:

    /tmp/torchenv/bin/python tests/data/make_torch_optim.py

Generated with torch 2.13.0+cpu. A torch release that changes an algorithm changes this file; the
test then fails and names the configuration.
"""

import json
import os
import sys

import numpy as np
import torch

SEED = 20240614
STEPS = 40
# θ is stored after these steps (1-based): every step while the moments warm up and RAdam
# switches on, then every 4th (a third of the file size of all 40).
RECORDED = list(range(1, 9)) + list(range(12, STEPS + 1, 4))
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_optim.json")

REAL_SHAPES = {"w": [3, 4], "b": [5], "s": []}
# "z" is complex: stored (and optimized by torch) as its real view, shape (3, 4, 2).
COMPLEX_SHAPES = {"z": [3, 4], "b": [5]}
COMPLEX_LEAVES = ["z"]

# name -> (problem, torch class, torch kwargs, gradxform call). The gradxform text is for the
# reader; tests/test_torch_optim.py has the same calls as code and checks the names agree.
# eps values are large (1e-3 to 0.1) wherever two conventions place eps differently, so the
# other convention is far off (the test checks that too).
CONFIGS = {
    # --- SGD: momentum with b_1 = g_1, dampening, Nesterov, coupled L2.
    "sgd": ("real", "SGD", dict(lr=0.1), "gx.sgd(0.1)"),
    "sgd_momentum": ("real", "SGD", dict(lr=0.05, momentum=0.9), "gx.sgd(0.05, 0.9)"),
    "sgd_dampening": ("real", "SGD", dict(lr=0.05, momentum=0.9, dampening=0.3),
                      "gx.sgd(0.05, 0.9, dampening=0.3)"),
    "sgd_nesterov": ("real", "SGD", dict(lr=0.05, momentum=0.8, nesterov=True),
                     "gx.sgd(0.05, 0.8, nesterov=True)"),
    "sgd_weight_decay": ("real", "SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.1),
                         "gx.sgd(0.05, 0.9, weight_decay=0.1)"),
    "sgd_weight_decay_nomomentum": ("real", "SGD", dict(lr=0.1, weight_decay=0.2),
                                    "gx.sgd(0.1, weight_decay=0.2)"),
    "sgd_nesterov_weight_decay": (
        "real", "SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05),
        "gx.sgd(0.05, 0.8, nesterov=True, weight_decay=0.05)"),
    # --- Adam and AMSGrad (torch's Adam(amsgrad=True) is gx.amsgrad's default form).
    "adam": ("real", "Adam", dict(lr=0.05), "gx.adam(0.05)"),
    "adam_betas_eps": ("real", "Adam", dict(lr=0.05, betas=(0.8, 0.99), eps=0.1),
                       "gx.adam(0.05, 0.8, 0.99, 0.1)"),
    "adam_weight_decay": ("real", "Adam", dict(lr=0.05, weight_decay=0.1),
                          "gx.chain(gx.add_l2_penalty(0.1), gx.adam(0.05))"),
    "amsgrad": ("real", "Adam", dict(lr=0.05, amsgrad=True), "gx.amsgrad(0.05)"),
    "amsgrad_betas_eps": ("real", "Adam", dict(lr=0.05, betas=(0.8, 0.9), eps=0.05, amsgrad=True),
                          "gx.amsgrad(0.05, 0.8, 0.9, 0.05)"),
    # --- AdamW: decoupled decay, θ ← θ(1 − ηλ) − η·Adam.
    "adamw": ("real", "AdamW", dict(lr=0.05), "gx.adamw(0.05)"),
    "adamw_2": ("real", "AdamW", dict(lr=0.05, betas=(0.85, 0.995), eps=1e-3, weight_decay=0.3),
                "gx.adamw(0.05, 0.85, 0.995, 1e-3, weight_decay=0.3)"),
    # --- Adamax: torch's eps inside the max.
    "adamax": ("real", "Adamax", dict(lr=0.05), "gx.adamax(0.05, eps_in_max=True)"),
    "adamax_eps": ("real", "Adamax", dict(lr=0.05, betas=(0.8, 0.99), eps=0.05),
                   "gx.adamax(0.05, 0.8, 0.99, 0.05, eps_in_max=True)"),
    # --- NAdam: momentum schedule μ_t = β1 (1 − ½ 0.96^{tψ}).
    "nadam": ("real", "NAdam", dict(lr=0.05), "gx.nadam(0.05, momentum_decay=0.004)"),
    "nadam_2": ("real", "NAdam",
                dict(lr=0.05, betas=(0.85, 0.995), eps=0.05, momentum_decay=0.01),
                "gx.nadam(0.05, 0.85, 0.995, 0.05, momentum_decay=0.01)"),
    # --- RAdam: ε on the raw √v; 40 steps cross the ρ_t > 5 switch (t = 6).
    "radam": ("real", "RAdam", dict(lr=0.05), "gx.radam(0.05)"),
    "radam_2": ("real", "RAdam", dict(lr=0.05, betas=(0.8, 0.99), eps=1e-3),
                "gx.radam(0.05, 0.8, 0.99, 1e-3)"),
    "radam_eps": ("real", "RAdam", dict(lr=0.05, eps=0.1), "gx.radam(0.05, eps=0.1)"),
    # --- RMSprop: torch's alpha is gradxform's decay; eps outside the root.
    "rmsprop": ("real", "RMSprop", dict(lr=0.01),
                "gx.rmsprop(0.01, 0.99, 1e-8, eps_in_sqrt=False)"),
    "rmsprop_eps": ("real", "RMSprop", dict(lr=0.01, alpha=0.9, eps=0.1),
                    "gx.rmsprop(0.01, 0.9, 0.1, eps_in_sqrt=False)"),
    "rmsprop_centered": ("real", "RMSprop", dict(lr=0.01, alpha=0.95, eps=1e-2, centered=True),
                         "gx.rmsprop(0.01, 0.95, 1e-2, eps_in_sqrt=False, centered=True)"),
    "rmsprop_momentum": ("real", "RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-2, momentum=0.8),
                         "gx.rmsprop(0.01, 0.9, 1e-2, eps_in_sqrt=False, momentum=0.8)"),
    "rmsprop_centered_momentum": (
        "real", "RMSprop", dict(lr=0.01, alpha=0.95, eps=1e-2, centered=True, momentum=0.7),
        "gx.rmsprop(0.01, 0.95, 1e-2, eps_in_sqrt=False, centered=True, momentum=0.7)"),
    "rmsprop_weight_decay": (
        "real", "RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-2, weight_decay=0.1),
        "gx.chain(gx.add_l2_penalty(0.1), gx.rmsprop(0.01, 0.9, 1e-2, eps_in_sqrt=False))"),
    # --- Adagrad: eps outside the root; lr_decay is an inverse-time schedule of the step.
    "adagrad": ("real", "Adagrad", dict(lr=0.1), "gx.adagrad(0.1, eps_in_sqrt=False)"),
    "adagrad_init_eps": (
        "real", "Adagrad", dict(lr=0.1, initial_accumulator_value=0.1, eps=0.1),
        "gx.adagrad(0.1, initial_accumulator_value=0.1, eps=0.1, eps_in_sqrt=False)"),
    "adagrad_lr_decay": (
        "real", "Adagrad", dict(lr=0.1, lr_decay=0.05, eps=1e-2),
        "gx.adagrad(gx.inverse_time_decay(0.1, 0.05), eps=1e-2, eps_in_sqrt=False)"),
    "adagrad_weight_decay": (
        "real", "Adagrad", dict(lr=0.1, weight_decay=0.1, eps=1e-2),
        "gx.chain(gx.add_l2_penalty(0.1), gx.adagrad(0.1, eps=1e-2, eps_in_sqrt=False))"),
    # --- Adadelta.
    "adadelta": ("real", "Adadelta", dict(lr=1.0), "gx.adadelta(1.0, rho=0.9, eps=1e-6)"),
    "adadelta_2": ("real", "Adadelta", dict(lr=0.5, rho=0.95, eps=1e-3),
                   "gx.adadelta(0.5, rho=0.95, eps=1e-3)"),
    # --- Complex parameters (a complex (3, 4) leaf and a real (5,) leaf).
    "complex_sgd_momentum": ("complex", "SGD", dict(lr=0.05, momentum=0.9), "gx.sgd(0.05, 0.9)"),
    "complex_adam": ("complex", "Adam", dict(lr=0.05, betas=(0.8, 0.99), eps=1e-2),
                     "gx.adam(0.05, 0.8, 0.99, 1e-2)"),
    "complex_adamw": ("complex", "AdamW", dict(lr=0.05, weight_decay=0.3),
                      "gx.adamw(0.05, weight_decay=0.3)"),
    "complex_rmsprop": (
        "complex", "RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-2, centered=True, momentum=0.5),
        "gx.rmsprop(0.01, 0.9, 1e-2, eps_in_sqrt=False, centered=True, momentum=0.5)"),
    "complex_adagrad": (
        "complex", "Adagrad", dict(lr=0.1, initial_accumulator_value=0.1, eps=1e-2),
        "gx.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-2, eps_in_sqrt=False)"),
}


def make_problem(rng, shapes, complex_leaves):
  """c, target, θ_0 and noise for each leaf; complex leaves in their real view (trailing 2)."""
  real_shape = {k: list(s) + ([2] if k in complex_leaves else []) for k, s in shapes.items()}
  c = {k: rng.uniform(0.5, 2.0, size=s) for k, s in real_shape.items()}
  target = {k: rng.normal(size=s) for k, s in real_shape.items()}
  theta0 = {k: rng.normal(size=s) for k, s in real_shape.items()}
  noise = {k: 0.3 * rng.normal(size=[STEPS] + s) for k, s in real_shape.items()}
  return dict(shapes=shapes, complex_leaves=list(complex_leaves), c=c, target=target,
              theta0=theta0, noise=noise)


def run_torch(problem, cls, kwargs, as_complex=True):
  """θ (real view) after every step; complex leaves as complex tensors unless `as_complex`
  is False (then torch sees the real view: the sanity check of the complex runs)."""
  names = sorted(problem["shapes"])
  cplx = set(problem["complex_leaves"]) if as_complex else set()
  t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float64)

  def to_param(k, real_view):
    return torch.view_as_complex(real_view).clone() if k in cplx else real_view

  params = {k: torch.nn.Parameter(to_param(k, t(problem["theta0"][k]).clone())) for k in names}
  opt = getattr(torch.optim, cls)([params[k] for k in names], foreach=False, **kwargs)
  traj = {k: [] for k in names}
  for step in range(STEPS):
    with torch.no_grad():
      for k in names:
        p = params[k]
        view = torch.view_as_real(p) if k in cplx else p
        g = t(problem["c"][k]) * (view - t(problem["target"][k])) + t(problem["noise"][k][step])
        p.grad = torch.view_as_complex(g.contiguous()) if k in cplx else g
    opt.step()
    if step + 1 not in RECORDED:
      continue
    for k in names:
      p = params[k].detach()
      traj[k].append((torch.view_as_real(p) if k in cplx else p).numpy().copy())
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
  """JSON with one line per innermost list of numbers (readable, and a third of indent=1)."""
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
  problems = {"real": make_problem(rng, REAL_SHAPES, []),
              "complex": make_problem(rng, COMPLEX_SHAPES, COMPLEX_LEAVES)}
  configs = {}
  for name, (problem, cls, kwargs, gx_call) in CONFIGS.items():
    traj = run_torch(problems[problem], cls, kwargs)
    if problem == "complex":
      real = run_torch(problems[problem], cls, kwargs, as_complex=False)
      for k in traj:  # SGD's complex arithmetic rounds differently from the real one (1e-16)
        np.testing.assert_allclose(traj[k], real[k], rtol=1e-13, atol=1e-15,
                                   err_msg=f"{name}: complex != real view")
      diff = max(np.max(np.abs(traj[k] - real[k])) for k in traj)
      print(f"{name:32s} complex vs real view: max |diff| {diff:.1e}", file=sys.stderr)
    moved = max(np.max(np.abs(traj[k][-1] - problems[problem]["theta0"][k])) for k in traj)
    assert moved > 0.05, (name, moved)
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    configs[name] = dict(problem=problem, torch=f"torch.optim.{cls}", torch_kwargs=kw,
                         gradxform=gx_call, trajectory=traj)
    print(f"{name:32s} moved {moved:.3f}", file=sys.stderr)
  data = dict(
      description="torch.optim trajectories (float64) on a noisy quadratic; see "
                  "tests/data/make_torch_optim.py",
      generator="tests/data/make_torch_optim.py", torch_version=torch.__version__,
      numpy_version=np.__version__, seed=SEED, steps=STEPS, recorded_steps=RECORDED,
      gradient="g_t = c * (theta_t - target) + noise[t], complex leaves in their real view",
      problems=problems, configs=configs)
  text = dumps(tolist(data))
  assert json.loads(text) == json.loads(json.dumps(tolist(data)))
  with open(OUT, "w") as f:
    f.write(text + "\n")
  print(f"wrote {OUT} ({len(text) / 1e6:.2f} MB, {len(configs)} configurations)", file=sys.stderr)


if __name__ == "__main__":
  main()
