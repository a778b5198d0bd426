"""Adafactor (issue 17): `gx.adafactor`, its primitives `scale_by_factored_rms` and
`scale_by_param_block_rms`, and its torch form.

Oracles: Optax itself in float64, in closed loop (each step's gradient is that of a fixed
function at the current parameters), 30 steps over a tree with a 130 × 129 matrix (factored at
Optax's `min_dim_size_to_factor=128`), a vector and a scalar, with Optax's defaults and with
every hyperparameter moved; the parameters must agree to 1e-7 relative after every step.
torch.optim.Adafactor's float64 trajectories stored in tests/data/torch_adafactor.json (made by
tests/data/make_torch_adafactor.py), to 1e-10. NumPy for the first factored step and for the
size of the state. Then the contract: `gradxform.testing`, the wrappers, equality by value,
validation, a checkpoint round trip.
"""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import closed_loop as cl
import gradxform as gx
import gradxform.testing as gxt
from closed_loop import MASK


# (gradxform optimizer, Optax optimizer): the defaults first, then moved values. Optax's
# momentum is an EMA whose float32 state it multiplies by μ in float32 (a weakly typed Python
# μ times a float32 array), gradxform in the wider dtype of the update: the same numbers
# rounded differently, which a closed loop carries to 1e-2 over 30 steps. So the momentum cases
# keep the momentum in float64 on both sides (state_dtype = Optax's dtype_momentum).
CASES = {
    "default": (lambda: gx.adafactor(), lambda: optax.adafactor()),
    "learning_rate": (lambda: gx.adafactor(0.05), lambda: optax.adafactor(0.05)),
    "moved": (
        lambda: gx.adafactor(0.03, 64, 0.6, -3, True, 0.5, 0.8, jnp.float64, 0.02, 1e-6, True,
                             MASK),
        lambda: optax.adafactor(0.03, 64, 0.6, -3, True, 0.5, 0.8, jnp.float64, 0.02, 1e-6, True,
                                MASK)),
    "unfactored_momentum": (
        lambda: gx.adafactor(0.05, momentum=0.9, state_dtype=jnp.float64, factored=False,
                             clipping_threshold=None, weight_decay_rate=1e-3),
        lambda: optax.adafactor(0.05, momentum=0.9, dtype_momentum=jnp.float64, factored=False,
                                clipping_threshold=None, weight_decay_rate=1e-3)),
    "schedule_no_param_scale": (
        lambda: gx.adafactor(_schedule, multiply_by_parameter_scale=False,
                             min_dim_size_to_factor=200),
        lambda: optax.adafactor(_schedule, multiply_by_parameter_scale=False,
                                min_dim_size_to_factor=200)),
}


def _schedule(count):
  """η_t = 0.1 / (1 + 0.2 t), the same function on both sides (gradxform's own schedules
  return float32 under x64, Optax's float64)."""
  return 0.1 / (1.0 + 0.2 * count)


@pytest.mark.parametrize("name", list(CASES))
def test_equals_optax_float64_every_step(name):
  theta0, (ours, theirs) = cl.closed_loop(CASES[name], seed=17)
  cl.assert_trajectories_close(theta0, ours, theirs)


def test_the_matrix_is_factored_and_optax_lays_out_the_state_alike():
  theta0 = {k: np.asarray(v, np.float32) for k, v in cl.problem(17)[0].items()}
  ours = gx.adafactor().init(theta0)[0]
  theirs = optax.adafactor().init(theta0)[0]
  for key, shape in (("w", (130, 129)),):
    # Optax averages over the largest axis for v_row (axis 0 here) and the other for v_col.
    assert ours.v_row[key].shape == theirs.v_row[key].shape == (shape[1],)
    assert ours.v_col[key].shape == theirs.v_col[key].shape == (shape[0],)
    assert ours.v[key].shape == (0,)          # Optax keeps a placeholder of shape (1,)
  assert ours.v["v"].shape == (17,) and ours.v_row["v"].shape == (0,)


def test_first_factored_step_by_hand():
  """NumPy from the paper: β̂_1 = 0, so V̂ = r cᵀ / mean(r) of the first G = g² + ε."""
  rng = np.random.default_rng(3)
  g = rng.normal(size=(4, 6)).astype(np.float32)
  tx = gx.scale_by_factored_rms(min_dim_size_to_factor=2, epsilon=1e-3)
  out, state = tx.update({"g": jnp.asarray(g)}, tx.init({"g": jnp.zeros((4, 6))}))
  G = g.astype(np.float64) ** 2 + 1e-3
  rows, cols = G.mean(axis=1), G.mean(axis=0)   # v_row: over the larger axis (6); v_col: the other
  v_hat = rows[:, None] * cols[None, :] / rows.mean()
  np.testing.assert_allclose(out["g"], g / np.sqrt(v_hat), rtol=1e-5)
  np.testing.assert_allclose(state.v_row["g"], rows, rtol=1e-6)
  np.testing.assert_allclose(state.v_col["g"], cols, rtol=1e-6)


# --- torch.optim.Adafactor ----------------------------------------------------------------

TORCH_FILE = Path(__file__).parent / "data" / "torch_adafactor.json"
if not TORCH_FILE.is_file():  # loud, at collection: this file is the oracle
  raise FileNotFoundError(f"{TORCH_FILE} is missing; regenerate it with "
                          "`python tests/data/make_torch_adafactor.py` in a venv with torch")
TORCH = json.loads(TORCH_FILE.read_text())
# float64 on both sides; torch works in place (lerp, norm², rsqrt) and XLA fuses differently,
# a few ulps per step that the closed loop carries: 1e-10 leaves a wide margin and still fails
# any convention difference (see test_torch_form_differs_from_optax_form).
TORCH_RTOL, TORCH_ATOL = 1e-10, 1e-12


def _from_torch(kwargs):
  """The documented translation of torch.optim.Adafactor's arguments, and its text."""
  lr = kwargs.get("lr", 1e-2)
  eps1, eps2 = kwargs.get("eps", (None, 1e-3))
  args = dict(min_dim_size_to_factor=0, decay_rate=-kwargs.get("beta2_decay", -0.8),
              clipping_threshold=float(kwargs.get("d", 1.0)))
  if kwargs.get("weight_decay", 0.0):
    args["weight_decay_rate"] = kwargs["weight_decay"]
  args.update(eps=eps1, min_scale=eps2, torch_form=True)
  text = f"gx.adafactor({lr!r}, " + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
  tx = gx.adafactor(lr, **args)
  if kwargs.get("maximize", False):
    return gx.chain(gx.scale(-1.0), tx), f"gx.chain(gx.scale(-1.0), {text})"
  return tx, text


@pytest.mark.parametrize("name", list(TORCH["configs"]))
def test_torch_form_equals_torch_optim_adafactor(name):
  config = TORCH["configs"][name]
  tx, text = _from_torch(config["torch_kwargs"])
  assert text == config["gradxform"]              # the documented call is the one replayed
  with jax.enable_x64(True):
    ours = cl.replay(tx, TORCH["problem"])
  for key, theirs in config["trajectory"].items():
    theirs = np.asarray(theirs)
    assert ours[key].shape == theirs.shape
    for t in range(TORCH["steps"]):
      np.testing.assert_allclose(ours[key][t], theirs[t], rtol=TORCH_RTOL, atol=TORCH_ATOL,
                                 err_msg=f"{name}: leaf {key}, step {t + 1}")


def test_torch_form_differs_from_optax_form():
  """The flag matters: Optax's form, on the same data, is far from torch's numbers."""
  config = TORCH["configs"]["eps"]
  with jax.enable_x64(True):
    optax_form = cl.replay(
        gx.adafactor(0.05, min_dim_size_to_factor=0, eps=0.4, min_scale=0.05), TORCH["problem"])
  far = max(np.abs(optax_form[k][-1] - np.asarray(v)[-1]).max()
            for k, v in config["trajectory"].items())
  assert far > 1e-2


# --- the contract ------------------------------------------------------------------------

TRANSFORMS = {
    "adafactor": lambda: gx.adafactor(0.1, min_dim_size_to_factor=2),
    "adafactor_momentum_wd": lambda: gx.adafactor(0.1, min_dim_size_to_factor=2, momentum=0.9,
                                                  weight_decay_rate=0.01),
    "adafactor_torch": lambda: gx.adafactor(0.1, min_dim_size_to_factor=0, eps=None,
                                            weight_decay_rate=0.1, torch_form=True),
    "scale_by_factored_rms": lambda: gx.scale_by_factored_rms(min_dim_size_to_factor=2),
    "scale_by_factored_rms_torch": lambda: gx.scale_by_factored_rms(
        min_dim_size_to_factor=0, epsilon=None, torch_form=True),
    "scale_by_param_block_rms": lambda: gx.scale_by_param_block_rms(),
}


@pytest.mark.parametrize("name", [n for n in TRANSFORMS if n != "adafactor"])   # a sub-case
def test_check_transform(name):
  # pmap once, on the chain with every kind of part (the others differ only inside a leaf)
  gxt.check_transform(TRANSFORMS[name](), cl.params(), needs_params=True,
                      pmap=name == "adafactor_momentum_wd")


def test_momentum_state_dtype():
  params = cl.params()
  default = gx.adafactor(0.1, momentum=0.9).init(params)[-2]       # Optax: float32 momentum
  assert {x.dtype for x in jax.tree.leaves(default.trace)} == {jnp.dtype(jnp.float32)}
  tx = gx.adafactor(0.1, momentum=0.9, state_dtype=jnp.bfloat16, min_dim_size_to_factor=2)
  gxt.check_transform(tx, params, needs_params=True, pmap=False)
  state = tx.init(params)
  assert {x.dtype for x in jax.tree.leaves(state[-2].trace)} == {jnp.dtype(jnp.bfloat16)}
  # the factored statistics stay in the parameters' dtype, as Optax keeps them
  assert state[0].v_row["w"].dtype == jnp.float32


def test_state_bytes_per_parameter_of_a_large_matrix():
  """Factored: O(n + m) numbers for an n × m matrix, exactly (plus the int32 step counter)."""
  n, m = 4096, 1024
  params = {"w": jax.ShapeDtypeStruct((n, m), jnp.float32)}

  def nbytes(tx):
    state = jax.eval_shape(tx.init, params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))

  assert nbytes(gx.adafactor()) == 4 * (n + m) + 4
  assert nbytes(gx.adafactor(1e-2, torch_form=True, min_dim_size_to_factor=0)) == 4 * (n + m) + 4
  assert nbytes(gx.adafactor(factored=False)) == 4 * n * m + 4
  # the momentum borrows the chain's step counter: one count in all
  assert nbytes(gx.adafactor(momentum=0.9)) == 4 * (n + m) + 4 + 4 * n * m
  assert nbytes(gx.adafactor(momentum=0.9, state_dtype=jnp.bfloat16)) == (
      4 * (n + m) + 4 + 2 * n * m)
  assert nbytes(gx.adam(1e-3)) == 2 * 4 * n * m + 4      # what Adafactor saves


INJECTED = dict(learning_rate=0.1, decay_rate=0.7, clipping_threshold=0.8, momentum=0.5,
                weight_decay_rate=0.01, eps=1e-6, min_scale=1e-2)


@pytest.mark.parametrize("torch_form", [False, True])
def test_inject_hyperparams_equals_plain_and_injects(torch_form):
  kwargs = dict(INJECTED, min_dim_size_to_factor=2, torch_form=torch_form)
  injected = gx.inject_hyperparams(gx.adafactor)(**kwargs)
  assert set(injected.init(cl.params()).hyperparams) == set(INJECTED)
  cl.assert_steps_close(cl.run(gx.adafactor(**kwargs), cl.params())[0],
                        cl.run(injected, cl.params())[0])
  zero = dict(INJECTED, weight_decay_rate=0.0, learning_rate=0.0)
  state = injected.init(cl.params())
  state = state._replace(hyperparams={k: jnp.asarray(v) for k, v in zero.items()})
  u, _ = injected.update(cl.grads(), state, cl.params())     # η injected as 0: no step
  cl.assert_all_zero(u)


def test_masked_and_partition_equal_the_optimizer_on_its_leaves():
  cl.assert_masked_and_partition_match(gx.adafactor(0.1, min_dim_size_to_factor=2,
                                                    momentum=0.5))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_equal_by_value(name):
  cl.assert_equal_by_value(TRANSFORMS[name])


def test_different_hyperparameters_differ():
  assert gx.adafactor() != gx.adafactor(0.1)
  assert gx.adafactor() != gx.adafactor(torch_form=True)
  assert gx.adafactor(momentum=0.9) != gx.adafactor(momentum=0.9, state_dtype=jnp.bfloat16)
  assert gx.adafactor(0.1, 64) == gx.adafactor(learning_rate=0.1, min_dim_size_to_factor=64)
  assert gx.scale_by_factored_rms() != gx.scale_by_factored_rms(factored=False)
  assert gx.scale_by_param_block_rms() != gx.scale_by_param_block_rms(0.1)


@pytest.mark.parametrize("call,message", [
    (lambda: gx.adafactor(-1.0), "adafactor: learning_rate"),
    (lambda: gx.adafactor(decay_rate=-0.8), "adafactor: decay_rate must be >= 0, got -0.8"),
    (lambda: gx.adafactor(min_dim_size_to_factor=-1), "adafactor: min_dim_size_to_factor"),
    (lambda: gx.adafactor(min_dim_size_to_factor=2.5), "adafactor: min_dim_size_to_factor"),
    (lambda: gx.adafactor(decay_offset=0.5), "adafactor: decay_offset"),
    (lambda: gx.adafactor(clipping_threshold=0.0), "adafactor: clipping_threshold must be > 0"),
    (lambda: gx.adafactor(momentum=1.0), "adafactor: momentum must be in [0, 1), got 1.0"),
    (lambda: gx.adafactor(state_dtype=jnp.int32), "adafactor: state_dtype"),
    (lambda: gx.adafactor(weight_decay_rate=-0.1), "adafactor: weight_decay_rate"),
    (lambda: gx.adafactor(eps=-1e-30), "adafactor: eps must be >= 0"),
    (lambda: gx.adafactor(eps=None), "adafactor: eps must be a number, got None"),
    (lambda: gx.adafactor(min_scale=-1.0), "adafactor: min_scale must be >= 0"),
    (lambda: gx.scale_by_factored_rms(decay_rate=-1.0), "scale_by_factored_rms: decay_rate"),
    (lambda: gx.scale_by_factored_rms(epsilon=-1.0), "scale_by_factored_rms: epsilon"),
    (lambda: gx.scale_by_factored_rms(epsilon=None), "scale_by_factored_rms: epsilon must be"),
    (lambda: gx.scale_by_factored_rms(step_offset=1.5), "scale_by_factored_rms: step_offset"),
    (lambda: gx.scale_by_factored_rms(decay_rate_fn=3), "scale_by_factored_rms: decay_rate_fn"),
    (lambda: gx.scale_by_param_block_rms(-1.0), "scale_by_param_block_rms: min_scale"),
])
def test_bad_hyperparameters_raise_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_wrong_state_names_the_leaf():
  tx = gx.scale_by_factored_rms(min_dim_size_to_factor=2)
  state = tx.init({"w": jnp.zeros((3, 4))})
  with pytest.raises(ValueError, match=re.escape("scale_by_factored_rms.update: the state of "
                                                 "leaf ['w']")):
    tx.update({"w": jnp.zeros((3, 5))}, state)
  with pytest.raises(ValueError, match="scale_by_param_block_rms.update needs the current"):
    gx.scale_by_param_block_rms().update(cl.grads(), gx.EmptyState())


# --- checkpoints ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["adafactor_momentum_wd", "adafactor_torch"])
def test_flax_serialization_round_trip_and_exact_resume(name):
  run = cl.checkpoint_round_trip(TRANSFORMS[name], cl.params())
  cl.assert_identical(run.saved[1], run.restored[1])
  cl.assert_identical(run.full[:2], run.resumed[:2])
