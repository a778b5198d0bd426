"""Generates tests/data/torch_muon.json: torch.optim.Muon trajectories that gradxform reproduces.

What it stores. A closed-loop noisy quadratic, as tests/data/make_torch_optim.py: a tree of
2-D parameters only (torch's Muon takes nothing else): three (6, 5) matrices (tall, of one
shape, so gradxform orthogonalizes them as one batch), a wide (4, 7) and a square (5, 5); at
every step the gradient `g_t = c ⊙ (θ_t − target) + noise_t`. `c` (in [0.5, 2]), `target`,
`θ_0` and the noise are drawn once from `numpy.random.default_rng(SEED)` and stored, so the
test replays the same inputs. For every configuration (torch.optim.Muon keyword arguments and
the gradxform call documented as computing the same numbers) it stores θ after the steps in
`recorded_steps`, computed by torch in float64.

Newton–Schulz in float64. torch's `_zeropower_via_newtonschulz` casts the matrix to bfloat16
before iterating, which would make the reference bfloat16-accurate and hide every other
difference (momentum form, ε placement, learning-rate adjustment, decay) below 1e-2. This
script therefore runs torch's own function with that one cast removed (its source, with
`grad.bfloat16()` replaced by `grad.clone()`, checked to occur exactly once); everything else
is torch's code as installed. The unpatched bfloat16 run of the first configuration is stored
too (`bf16_reference`), to show how far the bfloat16 iteration is from float64.

Regenerate (torch is not a test dependency), from the repository root:

    /tmp/torchenv/bin/python tests/data/make_torch_muon.py

Generated with torch 2.13.0+cpu.
"""

import inspect
import json
import os

import numpy as np
import torch
import torch.optim._muon as torch_muon

SEED = 20261204
STEPS = 30
RECORDED = [1, 2, 3, 4, 5, 10, 15, 20, 25, 30]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_muon.json")
SHAPES = {"a": [6, 5], "b": [6, 5], "c": [6, 5], "wide": [4, 7], "square": [5, 5]}

# name -> (torch.optim.Muon kwargs, gradxform call; tests/test_muon.py builds the same calls).
CONFIGS = {
    "default": (dict(lr=0.02),
                'gx.muon(0.02, beta=0.95, eps=1e-7, weight_decay=0.1, adjust_lr="original", '
                'bias_correction=False, eps_in_max=True)'),
    "match_rms_adamw": (
        dict(lr=0.01, momentum=0.9, weight_decay=0.05, adjust_lr_fn="match_rms_adamw"),
        'gx.muon(0.01, beta=0.9, eps=1e-7, weight_decay=0.05, adjust_lr="match_rms_adamw", '
        'bias_correction=False, eps_in_max=True)'),
    "plain_momentum": (
        dict(lr=0.03, momentum=0.8, nesterov=False, weight_decay=0.0, ns_steps=3,
             ns_coefficients=(3.0, -3.2, 1.2), eps=1e-5),
        'gx.muon(0.03, (3.0, -3.2, 1.2), 3, beta=0.8, eps=1e-5, nesterov=False, '
        'adjust_lr="original", bias_correction=False, eps_in_max=True)'),
}


def float64_newton_schulz():
  """torch's `_zeropower_via_newtonschulz` without its cast to bfloat16."""
  src = inspect.getsource(torch_muon._zeropower_via_newtonschulz)
  assert src.count("grad.bfloat16()") == 1, "torch's Newton-Schulz changed: update this script"
  namespace = dict(vars(torch_muon))
  exec(src.replace("grad.bfloat16()", "grad.clone()"), namespace)  # noqa: S102
  return namespace["_zeropower_via_newtonschulz"]


def run(problem, kwargs):
  params = {k: torch.tensor(v, requires_grad=True) for k, v in problem["theta0"].items()}
  opt = torch.optim.Muon(list(params.values()), **kwargs)
  out = []
  for t in range(STEPS):
    opt.zero_grad()
    for k, p in params.items():
      c, target = torch.tensor(problem["c"][k]), torch.tensor(problem["target"][k])
      p.grad = c * (p.detach() - target) + torch.tensor(problem["noise"][k][t])
    opt.step()
    if t + 1 in RECORDED:
      out.append({k: p.detach().numpy().tolist() for k, p in params.items()})
  return out


def main():
  torch.set_default_dtype(torch.float64)
  rng = np.random.default_rng(SEED)
  problem = {
      "c": {k: rng.uniform(0.5, 2.0, s).tolist() for k, s in SHAPES.items()},
      "target": {k: rng.normal(size=s).tolist() for k, s in SHAPES.items()},
      "theta0": {k: rng.normal(size=s).tolist() for k, s in SHAPES.items()},
      "noise": {k: (0.3 * rng.normal(size=[STEPS] + s)).tolist() for k, s in SHAPES.items()},
  }
  bf16 = run(problem, CONFIGS["default"][0])
  torch_muon._zeropower_via_newtonschulz = float64_newton_schulz()
  configs = {name: dict(torch_kwargs={k: list(v) if isinstance(v, tuple) else v
                                      for k, v in kw.items()},
                        gradxform=call, theta=run(problem, kw))
             for name, (kw, call) in CONFIGS.items()}
  data = dict(
      description="torch.optim.Muon trajectories (float64, Newton-Schulz without torch's "
                  "bfloat16 cast) on a noisy quadratic; see tests/data/make_torch_muon.py",
      generator="tests/data/make_torch_muon.py", torch_version=torch.__version__,
      numpy_version=np.__version__, seed=SEED, steps=STEPS, recorded_steps=RECORDED,
      gradient="g_t = c * (theta_t - target) + noise[t]", shapes=SHAPES, **problem,
      configs=configs, bf16_reference=dict(config="default", theta=bf16))
  with open(OUT, "w") as f:
    json.dump(data, f)
    f.write("\n")
  print(f"wrote {OUT}: {len(configs)} configurations")


if __name__ == "__main__":
  main()
