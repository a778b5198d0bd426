"""Schedules against independent float64 NumPy formulas, torch's per-step logic re-implemented
from its documentation, values taken from torch 2.13 (torch is not imported here), and
hand-computed boundary values."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx

STEPS = np.arange(0, 400)


def values(schedule, steps=STEPS):
  """The schedule at all `steps` in one vectorised call (jit vs eager: `test_contract`)."""
  out = jax.jit(schedule)(jnp.asarray(steps, jnp.int32))
  assert out.dtype == jnp.float32 and out.shape == np.shape(steps)
  return np.asarray(out, np.float64)


def close(got, want, rtol=2e-6, atol=1e-12):
  np.testing.assert_allclose(got, np.asarray(want, np.float64), rtol=rtol, atol=atol)


# --- closed forms ------------------------------------------------------------------------------

def test_constant():
  close(values(gx.constant_schedule(0.3)), np.full(len(STEPS), 0.3))


@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.0])
def test_step_decay(gamma):
  close(values(gx.step_decay_schedule(0.2, 30, gamma)),
        [0.2 * gamma ** (t // 30) for t in STEPS])


def test_step_decay_boundaries():
  s = gx.step_decay_schedule(1.0, 10, 0.5)
  close(values(s, [0, 9, 10, 19, 20]), [1.0, 1.0, 0.5, 0.5, 0.25])


def test_piecewise_constant():
  s = gx.piecewise_constant_schedule(0.3, {120: 0.1, 50: 0.5, 300: 2.0})
  want = [0.3 * (0.5 if t >= 50 else 1) * (0.1 if t >= 120 else 1) * (2.0 if t >= 300 else 1)
          for t in STEPS]
  close(values(s), want)
  close(values(s, [49, 50, 119, 120]), [0.3, 0.15, 0.15, 0.015])
  close(values(gx.piecewise_constant_schedule(0.3)), np.full(len(STEPS), 0.3))


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential_decay(staircase):
  s = gx.exponential_decay(0.1, 0.96, transition_steps=7, staircase=staircase)
  p = STEPS // 7 if staircase else STEPS / 7
  close(values(s), 0.1 * 0.96 ** p)


def test_exponential_decay_end_value_and_begin():
  s = gx.exponential_decay(1.0, 0.5, transition_steps=10, end_value=0.2, transition_begin=5)
  t = np.maximum(STEPS - 5, 0)
  close(values(s), np.maximum(0.5 ** (t / 10), 0.2))
  up = gx.exponential_decay(1.0, 2.0, transition_steps=10, end_value=4.0)
  close(values(up), np.minimum(2.0 ** (STEPS / 10), 4.0))


@pytest.mark.parametrize("staircase", [False, True])
def test_inverse_time_decay(staircase):
  s = gx.inverse_time_decay(0.5, 0.3, transition_steps=4, staircase=staircase)
  p = STEPS // 4 if staircase else STEPS / 4
  close(values(s), 0.5 / (1 + 0.3 * p))


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_polynomial(power):
  s = gx.polynomial_schedule(1.0, 0.01, power, 200, transition_begin=20)
  c = np.clip(STEPS - 20, 0, 200)
  close(values(s), (1.0 - 0.01) * (1 - c / 200) ** power + 0.01)
  close(values(s, [0, 20, 220, 399]), [1.0, 1.0, 0.01, 0.01])


def test_linear():
  s = gx.linear_schedule(0.0, 1e-3, 100)
  close(values(s), 1e-3 * np.minimum(STEPS, 100) / 100)
  close(values(s, [0, 50, 100, 101]), [0.0, 5e-4, 1e-3, 1e-3])


@pytest.mark.parametrize("end_value,exponent", [(0.0, 1.0), (0.05, 1.0), (0.0, 2.0)])
def test_cosine_decay(end_value, exponent):
  s = gx.cosine_decay_schedule(0.5, 250, end_value=end_value, exponent=exponent)
  t = np.minimum(STEPS, 250)
  close(values(s), end_value + (0.5 - end_value) * ((1 + np.cos(np.pi * t / 250)) / 2)
        ** exponent)
  close(values(s, [0, 125, 250, 300]),
        [0.5, end_value + (0.5 - end_value) * 0.5 ** exponent, end_value, end_value])


def test_cosine_matches_torch_cosine_annealing_until_t_max():
  # torch CosineAnnealingLR(T_max=25, eta_min=0.05), lr=0.5: its recursive form, re-derived
  lrs, lr = [0.5], 0.5
  for e in range(1, 26):
    lr = ((1 + math.cos(math.pi * e / 25)) / (1 + math.cos(math.pi * (e - 1) / 25))
          * (lr - 0.05) + 0.05)
    lrs.append(lr)
  close(values(gx.cosine_decay_schedule(0.5, 25, end_value=0.05), np.arange(26)), lrs,
        rtol=1e-6)


def test_warmup_cosine_decay():
  s = gx.warmup_cosine_decay_schedule(0.01, 1.0, 50, 300, end_value=0.1)
  want = []
  for t in STEPS:
    if t < 50:
      want.append(0.01 + (1.0 - 0.01) * t / 50)
    else:
      c = min(t - 50, 250)
      want.append(0.1 + 0.9 * (1 + math.cos(math.pi * c / 250)) / 2)
  close(values(s), want)
  # end of warm-up is the peak; decay_steps counts the warm-up; end value after
  close(values(s, [0, 49, 50, 300, 399]), [0.01, 0.01 + 0.99 * 49 / 50, 1.0, 0.1, 0.1])
  no_warm = gx.warmup_cosine_decay_schedule(0.0, 1.0, 0, 100)
  close(values(no_warm, np.arange(101)), values(gx.cosine_decay_schedule(1.0, 100),
                                                np.arange(101)))


def test_transformer():
  s = gx.transformer_schedule(512, 40, scale=2.0)
  n = STEPS + 1.0
  close(values(s), 2.0 * 512 ** -0.5 * np.minimum(n ** -0.5, n * 40 ** -1.5))
  # peak at n = warmup (t = warmup - 1): (d_model * warmup) ** -0.5 * scale
  v = values(s, [38, 39, 40])
  assert v[1] > v[0] and v[1] > v[2]
  close(v[1], 2.0 * (512 * 40) ** -0.5)


def test_join_schedules_optax_semantics():
  warm = gx.linear_schedule(0.0, 1.0, 10)
  cos = gx.cosine_decay_schedule(1.0, 90)
  s = gx.join_schedules([warm, cos, gx.constant_schedule(0.3)], [10, 100])
  want = [t / 10 if t < 10 else (1 + math.cos(math.pi * min(t - 10, 90) / 90)) / 2
          if t < 100 else 0.3 for t in STEPS]
  close(values(s), want)


# --- torch semantics ---------------------------------------------------------------------------

def torch_sgdr(base, t0, mult, eta_min, n):
  """torch CosineAnnealingWarmRestarts stepped n times without an epoch (from its docs/code)."""
  t_cur, t_i, out = 0, t0, []
  for _ in range(n):
    out.append(eta_min + (base - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
    t_cur += 1
    if t_cur >= t_i:
      t_cur -= t_i
      t_i *= mult
  return out


@pytest.mark.parametrize("t0,mult,eta_min", [(10, 1, 0.01), (10, 2, 0.01), (3, 3, 0.0),
                                             (7, 1.5, 0.1), (10, 1.1, 0.0), (1, 2, 0.0)])
def test_sgdr_against_torch_stepping(t0, mult, eta_min):
  n = 800
  s = gx.sgdr_schedule(0.5, t0, period_mult=mult, min_value=eta_min)
  close(values(s, np.arange(n)), torch_sgdr(0.5, t0, mult, eta_min, n), rtol=2e-6, atol=1e-9)


def test_sgdr_torch_values_and_restarts():
  # values printed by torch 2.13 CosineAnnealingWarmRestarts (lr=0.5 / 1.0)
  s = gx.sgdr_schedule(0.5, 10, period_mult=2, min_value=0.01)
  close(values(s, [0, 9, 10, 29, 30, 69, 70, 150]),
        [0.5, 0.021991153507687385, 0.5, 0.013016356554191274, 0.5, 0.01075525323538365,
         0.5, 0.5])
  s = gx.sgdr_schedule(1.0, 3, period_mult=3)
  close(values(s, [0, 2, 3, 11, 12, 38, 39, 119, 120]),
        [1.0, 0.25, 1.0, 0.03015368960704584, 1.0, 0.0033808211290284884, 1.0,
         0.0003760237478849793, 1.0])
  # non-integer growth: restarts due at 10, 25, 47.5, 81.25 happen at 10, 25, 48, 82
  s = gx.sgdr_schedule(1.0, 10, period_mult=1.5)
  v = values(s, [24, 25, 47, 48, 81, 82])
  close(v[[1]], [1.0])
  close(v[3], (1 + math.cos(math.pi * 0.5 / 33.75)) / 2)       # t_cur = 48 - 47.5
  close(v[5], (1 + math.cos(math.pi * 0.75 / 50.625)) / 2)     # t_cur = 82 - 81.25
  assert v[2] < 0.01 and v[4] < 0.01


def test_sgdr_large_steps():
  s = gx.sgdr_schedule(1.0, 10, period_mult=2)
  restart = 10 * (2 ** 27 - 1)          # the 27th restart; its period is 10 * 2**27
  v = values(s, np.array([restart - 1, restart, restart + 10 * 2 ** 26, 2 ** 31 - 1]))
  close(v[:3], [(1 + math.cos(math.pi * (10 * 2 ** 26 - 1) / (10 * 2 ** 26))) / 2, 1.0, 0.5],
        rtol=1e-5)
  assert np.all(np.isfinite(v))


def torch_cyclic(base, high, up, down, mode, gamma, n):
  """torch CyclicLR.get_lr (float arithmetic as torch's)."""
  total = up + down
  ratio = up / total
  out = []
  for e in range(n):
    cycle = math.floor(1 + e / total)
    x = 1.0 + e / total - cycle
    factor = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
    height = (high - base) * factor
    scale = {"triangular": 1.0, "triangular2": 1 / (2.0 ** (cycle - 1)),
             "exp_range": gamma ** e}[mode]
    out.append(base + height * scale)
  return out


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
@pytest.mark.parametrize("up,down", [(3, 5), (4, None), (10, 2)])
def test_cyclical_against_torch(mode, up, down):
  s = gx.cyclical_schedule(0.1, 1.0, up, step_size_down=down, mode=mode, gamma=0.995)
  close(values(s), torch_cyclic(0.1, 1.0, up, down or up, mode, 0.995, len(STEPS)))


def test_cyclical_torch_values():
  # torch 2.13 CyclicLR(0.1, 1.0, step_size_up=3, step_size_down=5)
  s = gx.cyclical_schedule(0.1, 1.0, 3, step_size_down=5, mode="triangular2")
  close(values(s, [0, 3, 8, 11, 16, 19, 24]), [0.1, 1.0, 0.1, 0.55, 0.1, 0.325, 0.1])
  s = gx.cyclical_schedule(0.1, 1.0, 3, step_size_down=5, mode="exp_range", gamma=0.99)
  close(values(s, [0, 3, 8, 11, 24, 27]),
        [0.1, 0.9732691, 0.1, 0.9058044288328447, 0.1, 0.7861084429123932])


def torch_one_cycle(total, max_lr, pct, div, final_div, anneal):
  """torch OneCycleLR.get_lr, three_phase=False."""
  initial = max_lr / div
  low = initial / final_div
  phases = [(float(pct * total) - 1, initial, max_lr), (total - 1, max_lr, low)]

  def cos(a, b, p):
    return b + (a - b) / 2.0 * (math.cos(math.pi * p) + 1)

  def lin(a, b, p):
    return (b - a) * p + a

  out = []
  for step in range(total):
    start = 0
    for i, (end, a, b) in enumerate(phases):
      if step <= end or i == len(phases) - 1:
        p = (step - start) / (end - start)
        out.append((cos if anneal == "cos" else lin)(a, b, p))
        break
      start = end
  return out


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("total,pct", [(37, 0.3), (100, 0.25), (10, 0.05), (50, 0.5)])
def test_one_cycle_against_torch(anneal, total, pct):
  s = gx.one_cycle_schedule(total, 2.0, pct_start=pct, div_factor=25.0, final_div_factor=1e4,
                            anneal=anneal)
  close(values(s, np.arange(total)), torch_one_cycle(total, 2.0, pct, 25.0, 1e4, anneal),
        rtol=3e-6)
  # after the cycle the value stays at the minimum
  close(values(s, [total - 1, total, total + 50]), [2.0 / 25 / 1e4] * 3, rtol=3e-6)


def test_one_cycle_torch_values():
  s = gx.one_cycle_schedule(37, 2.0)
  close(values(s, [0, 5, 10, 11, 20, 36]),
        [0.08, 1.025070260556463, 1.9995356310003085, 1.9940471882106803, 1.361576861884798,
         8e-06])
  s = gx.one_cycle_schedule(37, 2.0, anneal="linear")
  close(values(s, [0, 5, 10, 11, 20, 36]),
        [0.08, 1.0304950495049505, 1.980990099009901, 1.9305022084942085,
         1.2355242934362933, 8e-06])


# --- sign decays (ALGORITHMS.md) ---------------------------------------------------------------

def test_linear_sign_decay():
  close(values(gx.linear_sign_decay(100)), np.maximum(0, (100 - np.minimum(STEPS, 100)) / 100),
        atol=1e-7)
  close(values(gx.linear_sign_decay(4), [0, 1, 4, 9]), [1.0, 0.75, 0.0, 0.0])


@pytest.mark.parametrize("periods,zero_after", [(0.5, None), (2.0, None), (1.5, 1.0)])
def test_cosine_sign_decay(periods, zero_after):
  T = 150
  s = np.minimum(STEPS, T) / T
  phi = 2 * periods * s
  f = 0.5 * (1 + np.cos(np.pi * phi))
  if zero_after is not None:
    f = np.where(phi >= 2 * zero_after, 0.0, f)
  close(values(gx.cosine_sign_decay(T, periods, zero_after)), f, atol=1e-6)


@pytest.mark.parametrize("periods,zero_after", [(1, None), (3, None), (2.5, None), (4, 2.0)])
def test_restart_sign_decay(periods, zero_after):
  T = 120
  n = np.minimum(STEPS, T)
  phi = np.mod(periods * n, T) / T
  f = 0.5 * (1 + np.cos(np.pi * phi))
  if zero_after is not None:
    f = np.where(periods * n / T >= zero_after, 0.0, f)
  close(values(gx.restart_sign_decay(T, periods, zero_after)), f, atol=1e-6)
  # restarts: back to 1 at every multiple of T / periods (integer periods)
  if float(periods).is_integer() and zero_after is None:
    close(values(gx.restart_sign_decay(T, periods), [0, T // periods]), [1.0, 1.0])


def test_sign_decay_in_powersign():
  tx = gx.powersign(0.1, decay_fn=gx.linear_sign_decay(2))
  params = {"w": jnp.array([1.0, -1.0])}
  state = tx.init(params)
  g = {"w": jnp.array([0.5, -0.25])}
  u, state = tx.update(g, state, params)                   # f(0) = 1: scale e^1
  close(np.asarray(u["w"]), -0.1 * math.e * np.array([0.5, -0.25]), rtol=1e-6)
  u, state = tx.update(g, state, params)                   # f(1) = 0.5
  close(np.asarray(u["w"]), -0.1 * math.e ** 0.5 * np.array([0.5, -0.25]), rtol=1e-6)
  u, state = tx.update(g, state, params)                   # f(2) = 0
  close(np.asarray(u["w"]), -0.1 * np.array([0.5, -0.25]), rtol=1e-6)


# --- contract: pure, jit-safe, equal by value, accepted as rates --------------------------------

ALL = {
    "constant": lambda: gx.constant_schedule(0.1),
    "step": lambda: gx.step_decay_schedule(0.1, 10),
    "piecewise": lambda: gx.piecewise_constant_schedule(0.1, {5: 0.1}),
    "exponential": lambda: gx.exponential_decay(0.1, 0.9),
    "inverse_time": lambda: gx.inverse_time_decay(0.1, 0.5),
    "polynomial": lambda: gx.polynomial_schedule(0.1, 0.0, 2.0, 10),
    "linear": lambda: gx.linear_schedule(0.1, 0.0, 10),
    "cosine": lambda: gx.cosine_decay_schedule(0.1, 10),
    "warmup_cosine": lambda: gx.warmup_cosine_decay_schedule(0.0, 0.1, 2, 10),
    "sgdr": lambda: gx.sgdr_schedule(0.1, 3, period_mult=2.0),
    "cyclical": lambda: gx.cyclical_schedule(0.01, 0.1, 3),
    "one_cycle": lambda: gx.one_cycle_schedule(10, 0.1),
    "transformer": lambda: gx.transformer_schedule(64, 4),
    "join": lambda: gx.join_schedules([gx.constant_schedule(0.1), gx.linear_schedule(0.1, 0, 5)],
                                      [3]),
    "linear_sign": lambda: gx.linear_sign_decay(10),
    "cosine_sign": lambda: gx.cosine_sign_decay(10),
    "restart_sign": lambda: gx.restart_sign_decay(10, 2),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_contract(name):
  a, b = ALL[name](), ALL[name]()
  assert a == b and hash(a) == hash(b)
  assert a != gx.constant_schedule(0.123)
  eager = np.array([float(a(t)) for t in range(12)])
  jitted = np.asarray(jax.jit(a)(jnp.arange(12, dtype=jnp.int32)))
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  assert a(jnp.int32(3)).dtype == jnp.float32 and a(3).shape == ()
  with pytest.raises(TypeError, match="integer"):
    a(jnp.float32(1.0))


def test_equal_schedules_make_equal_optimizers():
  assert gx.adam(gx.cosine_decay_schedule(1e-3, 100)) == gx.adam(gx.cosine_decay_schedule(1e-3,
                                                                                           100))
  assert hash(gx.adam(gx.sgdr_schedule(1e-3, 10))) == hash(gx.adam(gx.sgdr_schedule(1e-3, 10)))
  assert gx.adam(gx.cosine_decay_schedule(1e-3, 100)) != gx.adam(gx.cosine_decay_schedule(1e-3,
                                                                                           99))
  assert gx.piecewise_constant_schedule(1.0, {2: 0.5, 1: 0.1}) == (
      gx.piecewise_constant_schedule(1.0, {1: 0.1, 2: 0.5}))


def test_schedules_as_rates():
  params = {"w": jnp.array([1.0, -2.0])}
  g = {"w": jnp.array([0.5, 0.5])}
  lr = gx.piecewise_constant_schedule(0.1, {1: 0.5})
  wd = gx.linear_schedule(0.0, 1.0, 1)
  for tx in [gx.sgd(lr), gx.adam(lr), gx.adamw(lr, weight_decay=wd), gx.rmsprop(lr),
             gx.powersign(lr), gx.nadam(lr), gx.radam(lr),
             gx.chain(gx.decoupled_weight_decay(wd), gx.scale_by_learning_rate(lr))]:
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(3):
      u, state = step(g, state, params)
      assert np.all(np.isfinite(np.asarray(u["w"])))
  # decoupled weight decay with a scheduled rate: 0 at step 0, 1 after
  tx = gx.chain(gx.decoupled_weight_decay(wd), gx.scale_by_learning_rate(lr))
  state = tx.init(params)
  u, state = tx.update(g, state, params)
  close(np.asarray(u["w"]), -0.1 * np.array([0.5, 0.5]))
  u, state = tx.update(g, state, params)
  close(np.asarray(u["w"]), -0.05 * (np.array([0.5, 0.5]) + np.array([1.0, -2.0])))


def test_adam_with_schedule_has_one_counter():
  state = gx.adam(gx.cosine_decay_schedule(1e-3, 10)).init({"w": jnp.zeros(2)})
  counts = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.integer)]
  assert len(counts) == 1 and counts[0].dtype == jnp.int32


# --- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("build,param", [
    (lambda: gx.step_decay_schedule(0.1, 0), "step_size"),
    (lambda: gx.step_decay_schedule(0.1, 10, -0.5), "gamma"),
    (lambda: gx.piecewise_constant_schedule(0.1, {-1: 0.5}), "boundar"),
    (lambda: gx.piecewise_constant_schedule(0.1, {3: -0.5}), "boundaries_and_scales"),
    (lambda: gx.exponential_decay(0.1, 0.0), "decay_rate"),
    (lambda: gx.exponential_decay(0.1, 0.9, transition_steps=0), "transition_steps"),
    (lambda: gx.inverse_time_decay(0.1, -1.0), "decay_rate"),
    (lambda: gx.polynomial_schedule(0.1, 0.0, 0.0, 10), "power"),
    (lambda: gx.polynomial_schedule(0.1, 0.0, 1.0, 10, transition_begin=-1), "transition_begin"),
    (lambda: gx.linear_schedule(0.1, 0.0, 0), "transition_steps"),
    (lambda: gx.cosine_decay_schedule(0.1, 0), "decay_steps"),
    (lambda: gx.cosine_decay_schedule("0.1", 10), "init_value"),
    (lambda: gx.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10), "decay_steps"),
    (lambda: gx.warmup_cosine_decay_schedule(0.0, 1.0, -1, 10), "warmup_steps"),
    (lambda: gx.sgdr_schedule(0.1, 0), "first_period"),
    (lambda: gx.sgdr_schedule(0.1, 10, period_mult=0.5), "period_mult"),
    (lambda: gx.sgdr_schedule(0.1, 10, min_value=float("nan")), "min_value"),
    (lambda: gx.cyclical_schedule(0.1, 1.0, 0), "step_size_up"),
    (lambda: gx.cyclical_schedule(0.1, 1.0, 3, step_size_down=0), "step_size_down"),
    (lambda: gx.cyclical_schedule(0.1, 1.0, 3, mode="exp"), "mode"),
    (lambda: gx.cyclical_schedule(0.1, 1.0, 3, gamma=1.5), "gamma"),
    (lambda: gx.one_cycle_schedule(0, 1.0), "total_steps"),
    (lambda: gx.one_cycle_schedule(10, 1.0, pct_start=1.5), "pct_start"),
    (lambda: gx.one_cycle_schedule(10, 1.0, div_factor=0.0), "div_factor"),
    (lambda: gx.one_cycle_schedule(10, 1.0, anneal="cosine"), "anneal"),
    (lambda: gx.transformer_schedule(0), "d_model"),
    (lambda: gx.transformer_schedule(64, 0), "warmup_steps"),
    (lambda: gx.join_schedules([gx.constant_schedule(1.0)], [3]), "boundaries"),
    (lambda: gx.join_schedules([gx.constant_schedule(1.0)] * 3, [5, 3]), "boundaries"),
    (lambda: gx.join_schedules([1.0, gx.constant_schedule(1.0)], [3]), "schedules"),
    (lambda: gx.linear_sign_decay(0), "decay_steps"),
    (lambda: gx.cosine_sign_decay(10, 0.0), "num_periods"),
    (lambda: gx.restart_sign_decay(10, 1, zero_after=-1.0), "zero_after"),
])
def test_validation(build, param):
  with pytest.raises(ValueError, match=param):
    build()


def test_plot_schedules_example_smoke(tmp_path):
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                      "plot_schedules.py")
  spec = importlib.util.spec_from_file_location("plot_schedules", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = tmp_path / "s.png"
  assert module.main(["--out", str(out), "--steps", "24"]) == str(out)
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
