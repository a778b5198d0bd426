"""torch.optim as an outside oracle: stored float64 torch trajectories, replayed in gradxform.

tests/data/torch_optim.json (written by tests/data/make_torch_optim.py, torch is not a test
dependency) holds a closed-loop problem — the gradient `g_t = c ⊙ (θ_t − target) + noise_t`
depends on the parameters, so an error at one step feeds into the next — its inputs (c, target,
θ_0, the noise sequence), and θ after each recorded step for 38 torch.optim configurations:
every algorithm and convention flag that README.md and BUILD_NOTES.md document as equal to
torch.optim (SGD momentum / dampening / Nesterov / coupled L2, Adam, Adam(amsgrad=True),
AdamW, Adamax, NAdam, RAdam, RMSprop, Adagrad (with lr_decay as a schedule), Adadelta), and
five with complex parameters. Here gradxform replays the same inputs in float64 and must land
on torch's numbers at every recorded step.
"""

import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx

DATA_FILE = Path(__file__).parent / "data" / "torch_optim.json"
if not DATA_FILE.is_file():  # loud, at collection: this file is the oracle
  raise FileNotFoundError(f"{DATA_FILE} is missing; regenerate it with "
                          "`python tests/data/make_torch_optim.py` in a venv with torch")
DATA = json.loads(DATA_FILE.read_text())
CONFIGS = DATA["configs"]

# Float64 on both sides. Torch and gradxform do the same operations in a different order (torch
# in place, addcdiv, Python-float bias corrections; XLA may fuse a multiply-add), so each step
# differs by a few ulps (~1e-16 relative), and the closed loop can carry that forward. Over 40
# steps the observed difference is < 1e-13 relative; 1e-10 leaves 1000x for other CPUs / XLA
# versions and still fails any convention difference (the smallest, eps = 1e-8 placed inside
# vs outside a root, moves θ by ~1e-8 relative; the tested ones by 1e-3 or more, see
# test_other_convention_is_far_off). atol: θ ~ 1 here, so a coordinate crossing zero keeps an
# absolute error of ~1e-16 x its past size; 1e-12 absolute covers that.
RTOL, ATOL = 1e-10, 1e-12
# Observed (default ISA, AVX2, SSE4_2): ≤ 5.1e-15 absolute, ≤ 3.1e-13 relative.
#
# Except: gradxform's schedules return float32 even under x64 (schedules/_common.py, OUT_DTYPE),
# so `inverse_time_decay` (torch's Adagrad lr_decay) gives η_t to float32 rounding (~3e-8
# relative) and θ carries that: 9.2e-9 absolute observed after 40 steps. An lr_decay convention
# error (t in place of t − 1, or no decay) is 1e-2 to 10 off; 5e-8 absolute tells them apart.
TOLERANCE = {"adagrad_lr_decay": (RTOL, 5e-8)}

# name -> the gradxform optimizer documented as equal to the torch configuration of that name
# (torch class and arguments are in the JSON next to the trajectory).
GX = {
    "sgd": gx.sgd(0.1),
    "sgd_momentum": gx.sgd(0.05, 0.9),
    "sgd_dampening": gx.sgd(0.05, 0.9, dampening=0.3),
    "sgd_nesterov": gx.sgd(0.05, 0.8, nesterov=True),
    "sgd_weight_decay": gx.sgd(0.05, 0.9, weight_decay=0.1),
    "sgd_weight_decay_nomomentum": gx.sgd(0.1, weight_decay=0.2),
    "sgd_nesterov_weight_decay": gx.sgd(0.05, 0.8, nesterov=True, weight_decay=0.05),
    "adam": gx.adam(0.05),
    "adam_betas_eps": gx.adam(0.05, 0.8, 0.99, 0.1),
    # torch's Adam(weight_decay=λ) is coupled L2: the gradient gets + λθ before the moments.
    "adam_weight_decay": gx.chain(gx.add_l2_penalty(0.1), gx.adam(0.05)),
    "amsgrad": gx.amsgrad(0.05),
    "amsgrad_betas_eps": gx.amsgrad(0.05, 0.8, 0.9, 0.05),
    "adamw": gx.adamw(0.05),
    "adamw_2": gx.adamw(0.05, 0.85, 0.995, 1e-3, weight_decay=0.3),
    "adamax": gx.adamax(0.05, eps_in_max=True),
    "adamax_eps": gx.adamax(0.05, 0.8, 0.99, 0.05, eps_in_max=True),
    "nadam": gx.nadam(0.05, momentum_decay=0.004),
    "nadam_2": gx.nadam(0.05, 0.85, 0.995, 0.05, momentum_decay=0.01),
    "radam": gx.radam(0.05),
    "radam_2": gx.radam(0.05, 0.8, 0.99, 1e-3),
    "radam_eps": gx.radam(0.05, eps=0.1),
    # torch's RMSprop(alpha=ρ) is rmsprop(decay=ρ, eps_in_sqrt=False); torch's alpha default 0.99.
    "rmsprop": gx.rmsprop(0.01, 0.99, 1e-8, eps_in_sqrt=False),
    "rmsprop_eps": gx.rmsprop(0.01, 0.9, 0.1, eps_in_sqrt=False),
    "rmsprop_centered": gx.rmsprop(0.01, 0.95, 1e-2, eps_in_sqrt=False, centered=True),
    "rmsprop_momentum": gx.rmsprop(0.01, 0.9, 1e-2, eps_in_sqrt=False, momentum=0.8),
    "rmsprop_centered_momentum": gx.rmsprop(0.01, 0.95, 1e-2, eps_in_sqrt=False, centered=True,
                                            momentum=0.7),
    "rmsprop_weight_decay": gx.chain(gx.add_l2_penalty(0.1),
                                     gx.rmsprop(0.01, 0.9, 1e-2, eps_in_sqrt=False)),
    "adagrad": gx.adagrad(0.1, eps_in_sqrt=False),
    "adagrad_init_eps": gx.adagrad(0.1, initial_accumulator_value=0.1, eps=0.1,
                                   eps_in_sqrt=False),
    # torch's lr_decay: η_t = η / (1 + (t − 1) r) with t = 1 on the first step.
    "adagrad_lr_decay": gx.adagrad(gx.inverse_time_decay(0.1, 0.05), eps=1e-2,
                                   eps_in_sqrt=False),
    "adagrad_weight_decay": gx.chain(gx.add_l2_penalty(0.1),
                                     gx.adagrad(0.1, eps=1e-2, eps_in_sqrt=False)),
    "adadelta": gx.adadelta(1.0, rho=0.9, eps=1e-6),
    "adadelta_2": gx.adadelta(0.5, rho=0.95, eps=1e-3),
    # Complex parameters: torch optimizes a complex entry as two reals (view_as_real).
    "complex_sgd_momentum": gx.sgd(0.05, 0.9),
    "complex_adam": gx.adam(0.05, 0.8, 0.99, 1e-2),
    "complex_adamw": gx.adamw(0.05, weight_decay=0.3),
    "complex_rmsprop": gx.rmsprop(0.01, 0.9, 1e-2, eps_in_sqrt=False, centered=True,
                                  momentum=0.5),
    "complex_adagrad": gx.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-2,
                                  eps_in_sqrt=False),
}

REAL = sorted(n for n, c in CONFIGS.items() if c["problem"] == "real")
COMPLEX = sorted(n for n, c in CONFIGS.items() if c["problem"] == "complex")


def _problem(name, dtype=np.float64):
  """θ_0 (complex leaves as complex again), c, target and noise for config `name`."""
  p = DATA["problems"][CONFIGS[name]["problem"]]
  arr = lambda tree: {k: np.asarray(v, dtype) for k, v in tree.items()}
  cplx = tuple(sorted(p["complex_leaves"]))
  theta0 = {k: v[..., 0] + 1j * v[..., 1] if k in cplx else v
            for k, v in arr(p["theta0"]).items()}
  return theta0, arr(p["c"]), arr(p["target"]), arr(p["noise"]), cplx


def _trajectory(tx, cplx, theta0, c, target, noise):
  """θ (complex leaves in their real view) after every step of the closed loop."""

  def real_view(p):
    return {k: jnp.stack([v.real, v.imag], -1) if k in cplx else v for k, v in p.items()}

  def body(carry, noise_t):
    p, s = carry
    g = jax.tree.map(lambda c_, th, t_, n: c_ * (th - t_) + n, c, real_view(p), target, noise_t)
    g = {k: jax.lax.complex(v[..., 0], v[..., 1]) if k in cplx else v for k, v in g.items()}
    u, s = tx.update(g, s, p)
    p = gx.apply_updates(p, u)
    return (p, s), real_view(p)

  _, traj = jax.lax.scan(body, (theta0, tx.init(theta0)), noise)
  return traj


# One compile per configuration (tx and the complex-leaf names are static).
run_trajectory = jax.jit(_trajectory, static_argnums=(0, 1))


def replay(tx, name, dtype=np.float64):
  """gradxform's θ at torch's recorded steps, as float64 NumPy arrays."""
  theta0, c, target, noise, cplx = _problem(name, dtype)
  traj = run_trajectory(tx, cplx, theta0, c, target, noise)
  rows = np.asarray(DATA["recorded_steps"]) - 1
  return {k: np.asarray(v, np.float64)[rows] for k, v in traj.items()}


def torch_trajectory(name):
  return {k: np.asarray(v, np.float64) for k, v in CONFIGS[name]["trajectory"].items()}


def max_rel_error(got, expected):
  """max |Δθ| / (|θ| + 1e-3): for the report in failure messages and the sensitivity test."""
  return max(float(np.max(np.abs(got[k] - e) / (np.abs(e) + 1e-3)))
             for k, e in expected.items())


def test_data_file_is_complete():
  """The JSON and GX describe the same configurations, with the same gradxform calls, and
  the file records the torch it came from."""
  assert DATA["torch_version"].startswith("2."), DATA["torch_version"]
  assert sorted(GX) == sorted(CONFIGS)
  assert len(REAL) >= 30 and len(COMPLEX) == 5
  steps = DATA["recorded_steps"]
  assert steps[:8] == list(range(1, 9)) and steps[-1] == DATA["steps"] == 40
  for name, config in CONFIGS.items():
    # The text in the JSON names the optimizer tested here (gradxform compares by value).
    assert eval(config["gradxform"], {"gx": gx}) == GX[name], name
    for k, v in config["trajectory"].items():
      assert np.shape(v)[0] == len(steps), (name, k)


@pytest.mark.parametrize("name", REAL)
def test_matches_torch(name):
  with jax.enable_x64(True):
    got = replay(GX[name], name)
  expected = torch_trajectory(name)
  assert got.keys() == expected.keys()
  rtol, atol = TOLERANCE.get(name, (RTOL, ATOL))
  chex.assert_trees_all_close(got, expected, rtol=rtol, atol=atol,
                              custom_message=f"{name}: max rel {max_rel_error(got, expected):.1e}")


@pytest.mark.parametrize("name", COMPLEX)
def test_complex_params_match_torch(name):
  """A complex (3, 4) leaf next to a real (5,) one: gradxform's complex parameters follow the
  same trajectory as torch's (which treats each complex entry as two reals)."""
  with jax.enable_x64(True):
    theta0 = _problem(name)[0]
    assert theta0["z"].dtype == np.complex128
    got = replay(GX[name], name)
  expected = torch_trajectory(name)
  assert expected["z"].shape[-1] == 2 and got.keys() == expected.keys()
  chex.assert_trees_all_close(got, expected, rtol=RTOL, atol=ATOL,
                              custom_message=f"{name}: max rel {max_rel_error(got, expected):.1e}")


# float32 gradxform against the float64 torch values: a few configurations covering momentum,
# both adaptive denominators, NAdam's schedule and RAdam's switch. gradxform in float32 is as
# close to torch's float64 numbers as torch's own float32 is (BUILD_NOTES.md). Observed over
# 40 closed-loop steps, default ISA / AVX2 / SSE4_2: ≤ 5.5e-7 absolute with |θ| ≤ 3 (a few
# float32 ulps), up to 4e-5 relative only on coordinates passing near zero, which the atol is
# for. |Δ| ≤ 3e-6 + 1e-5 |θ| leaves ≥ 5x on every coordinate.
F32 = ["sgd_nesterov", "adam", "adamw_2", "nadam_2", "radam", "rmsprop_centered_momentum",
       "adagrad_init_eps", "adadelta_2"]


@pytest.mark.parametrize("name", F32)
def test_float32_close_to_torch_float64(name):
  got = replay(GX[name], name, np.float32)
  expected = torch_trajectory(name)
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=3e-6,
                              custom_message=f"{name}: max rel {max_rel_error(got, expected):.1e}")


# The stored data tell the conventions apart: the nearest gradxform setting with the other
# convention misses torch's trajectory by far more than RTOL (observed minimum in comment).
OTHER = {
    "adagrad_init_eps": gx.adagrad(0.1, initial_accumulator_value=0.1, eps=0.1),  # ε in √
    "rmsprop_eps": gx.rmsprop(0.01, 0.9, 0.1),  # ε inside the root
    "adamax_eps": gx.adamax(0.05, 0.8, 0.99, 0.05),  # ε outside the max
    "nadam_2": gx.nadam(0.05, 0.85, 0.995, 0.05),  # Dozat's Nadam
    "amsgrad_betas_eps": gx.amsgrad(0.05, 0.8, 0.9, 0.05, bias_correction=False),  # Reddi
    "adam_weight_decay": gx.adamw(0.05, weight_decay=0.1),  # decoupled, not L2
    "adagrad_lr_decay": gx.adagrad(0.1, eps=1e-2, eps_in_sqrt=False),  # no lr_decay
}


@pytest.mark.parametrize("name", sorted(OTHER))
def test_other_convention_is_far_off(name):
  with jax.enable_x64(True):
    got = replay(OTHER[name], name)
  err = max_rel_error(got, torch_trajectory(name))
  assert err > 1e-3, f"{name}: the other convention is only {err:.1e} off torch"
