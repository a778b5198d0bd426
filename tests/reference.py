"""Float64 NumPy references, written from the equations of docs/ALGORITHMS.md (not from
gradxform).

Every algorithm here is element-wise, so a reference works on one flat float64 vector: the
leaves of a parameter tree concatenated (`flatten` / `unflatten`). A reference is a class with
`step(theta, g) -> theta` that keeps its own state and its own step counter `t` (1 on the first
update). A learning rate may be a float or a schedule `step -> value` with `step` counted from 0
at the first update, as in gradxform. `run` drives a reference over a sequence of gradients.

These are deliberately plain loops over the paper's symbols (m, v, u, G, E[g²], ...), so a
reader can hold each one next to its equation.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

# ---------------------------------------------------------------------------------------------
# Trees <-> one flat float64 vector.


def flatten(tree: Any) -> np.ndarray:
  import jax  # local: the references themselves need only NumPy (and run without jax)
  leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]
  return np.concatenate(leaves) if leaves else np.zeros([0])


def unflatten(like: Any, flat: np.ndarray) -> Any:
  import jax
  leaves, treedef = jax.tree.flatten(like)
  out, i = [], 0
  for x in leaves:
    n = int(np.size(x))
    out.append(flat[i:i + n].reshape(np.shape(x)))
    i += n
  return treedef.unflatten(out)


def lr_at(lr: float | Callable[[int], float], step: int) -> float:
  """The learning rate at `step` (0 on the first update)."""
  return float(lr(step)) if callable(lr) else float(lr)


def run(ref: Any, theta0: np.ndarray, grads: np.ndarray) -> np.ndarray:
  """Applies `ref.step` once per row of `grads` (shape [T, n]); returns the final theta."""
  theta = np.array(theta0, np.float64)
  for g in grads:
    theta = ref.step(theta, np.asarray(g, np.float64))
  return theta


class _Ref:
  """Common bits: a step counter t (1 on the first update) and the learning rate at t."""

  def __init__(self, lr: Any):
    self.lr = lr
    self.t = 0

  def tick(self) -> float:
    self.t += 1
    return lr_at(self.lr, self.t - 1)


# ---------------------------------------------------------------------------------------------
# Gradient-descent family.


class SGD(_Ref):
  """θ ← θ − η b; b ← μ b + (1 − d) g with b_1 = g_1; Nesterov: step along g + μ b.

  Coupled L2: g ← g + λθ first.
  """

  def __init__(self, lr, momentum=0.0, nesterov=False, dampening=0.0, weight_decay=0.0):
    super().__init__(lr)
    self.mu, self.nesterov, self.d, self.wd = momentum, nesterov, dampening, weight_decay
    self.b = None

  def step(self, theta, g):
    eta = self.tick()
    g = g + self.wd * theta
    if self.mu == 0.0:
      return theta - eta * g
    if self.b is None:
      self.b = g.copy()
    else:
      self.b = self.mu * self.b + (1.0 - self.d) * g
    direction = g + self.mu * self.b if self.nesterov else self.b
    return theta - eta * direction


class SGDW(_Ref):
  """b ← μ b + g; θ ← θ − η b − η λ θ (Nesterov: η (g + μ b) in place of η b)."""

  def __init__(self, lr, momentum=0.9, nesterov=False, weight_decay=1e-4, mask=None):
    super().__init__(lr)
    self.mu, self.nesterov, self.wd = momentum, nesterov, weight_decay
    self.mask = 1.0 if mask is None else mask  # flat 0/1 vector
    self.b = 0.0

  def step(self, theta, g):
    eta = self.tick()
    self.b = self.mu * self.b + g
    direction = g + self.mu * self.b if self.nesterov else self.b
    return theta - eta * direction - eta * self.wd * self.mask * theta


def noisy_sgd_sigma(eta: float, gamma: float, t: int) -> float:
  """σ_t of Neelakantan et al.: σ_t² = eta / (1 + t')^γ, t' = t − 1 (0 on the first step)."""
  return math.sqrt(eta / (1.0 + (t - 1)) ** gamma)


class NoisySGD(_Ref):
  """θ ← θ − η (g + σ_t z_t), σ_t from `noisy_sgd_sigma`; `normals(t)` gives step t's standard
  normal draws z_t (a flat vector like g): the random stream is the caller's to supply."""

  def __init__(self, lr, normals, eta=0.01, gamma=0.55):
    super().__init__(lr)
    self.normals, self.eta, self.gamma = normals, eta, gamma

  def step(self, theta, g):
    eta = self.tick()
    sigma = noisy_sgd_sigma(self.eta, self.gamma, self.t)
    return theta - eta * (g + sigma * np.asarray(self.normals(self.t), np.float64))


# ---------------------------------------------------------------------------------------------
# Adaptive family.


class Adagrad(_Ref):
  """G ← G + g²; θ ← θ − η g / √(G + ε) (eps_in_sqrt) or θ ← θ − η g / (√G + ε)."""

  def __init__(self, lr, initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=True):
    super().__init__(lr)
    self.G, self.eps, self.in_sqrt = initial_accumulator_value, eps, eps_in_sqrt

  def step(self, theta, g):
    eta = self.tick()
    self.G = self.G + g * g
    denom = np.sqrt(self.G + self.eps) if self.in_sqrt else np.sqrt(self.G) + self.eps
    return theta - eta * g / denom


class Adadelta(_Ref):
  """E[g²] ← ρE[g²] + (1−ρ)g²; Δ = √(E[Δ²]+ε)/√(E[g²]+ε)·g; E[Δ²] ← ρE[Δ²] + (1−ρ)Δ²."""

  def __init__(self, lr=1.0, rho=0.9, eps=1e-6):
    super().__init__(lr)
    self.rho, self.eps = rho, eps
    self.Eg2, self.Edx2 = 0.0, 0.0

  def step(self, theta, g):
    eta = self.tick()
    rho, eps = self.rho, self.eps
    self.Eg2 = rho * self.Eg2 + (1 - rho) * g * g
    delta = np.sqrt(self.Edx2 + eps) / np.sqrt(self.Eg2 + eps) * g
    self.Edx2 = rho * self.Edx2 + (1 - rho) * delta * delta
    return theta - eta * delta


class RMSprop(_Ref):
  """v ← ρv + (1−ρ)g²; denom √(v+ε) (eps_in_sqrt) or √v + ε; centered: v − ḡ² for v.

  momentum μ: b ← μ b + g/denom, θ ← θ − η b (Nesterov: along g/denom + μ b).
  """

  def __init__(self, lr, decay=0.9, eps=1e-8, eps_in_sqrt=True, centered=False, momentum=0.0,
               nesterov=False):
    super().__init__(lr)
    self.rho, self.eps, self.in_sqrt, self.centered = decay, eps, eps_in_sqrt, centered
    self.mu, self.nesterov = momentum, nesterov
    self.v, self.gbar, self.b = 0.0, 0.0, 0.0

  def step(self, theta, g):
    eta = self.tick()
    rho = self.rho
    self.v = rho * self.v + (1 - rho) * g * g
    v = self.v
    if self.centered:
      self.gbar = rho * self.gbar + (1 - rho) * g
      v = v - self.gbar ** 2
    denom = np.sqrt(v + self.eps) if self.in_sqrt else np.sqrt(v) + self.eps
    if self.mu == 0.0:
      return theta - eta * g / denom
    self.b = self.mu * self.b + g / denom
    direction = g / denom + self.mu * self.b if self.nesterov else self.b
    return theta - eta * direction


class Adam(_Ref):
  """m̂ = m/(1−β1^t), v̂ = v/(1−β2^t); θ ← θ − η m̂/(√(v̂+ε_root)+ε).

  AdamW (`weight_decay=λ`, `alpha=1`): θ ← θ − η (m̂/(√v̂+ε) + λθ). With `alpha=α`
  (Loshchilov & Hutter's Algorithm 2): θ ← θ − η_t (α m̂/(√v̂+ε) + λθ), η_t the schedule.
  """

  def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=0.0,
               mask=None, alpha=1.0):
    super().__init__(lr)
    self.b1, self.b2, self.eps, self.eps_root = b1, b2, eps, eps_root
    self.wd, self.alpha = weight_decay, alpha
    self.mask = 1.0 if mask is None else mask
    self.m, self.v = 0.0, 0.0

  def step(self, theta, g):
    eta = self.tick()
    t, b1, b2 = self.t, self.b1, self.b2
    self.m = b1 * self.m + (1 - b1) * g
    self.v = b2 * self.v + (1 - b2) * g * g
    m_hat = self.m / (1 - b1 ** t)
    v_hat = self.v / (1 - b2 ** t)
    direction = self.alpha * m_hat / (np.sqrt(v_hat + self.eps_root) + self.eps)
    return theta - eta * (direction + self.wd * self.mask * theta)


class Adamax(_Ref):
  """u ← max(β2 u, |g|), θ ← θ − (η/(1−β1^t)) m/(u+ε); eps_in_max: u ← max(β2 u, |g|+ε), m/u."""

  def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8, eps_in_max=False):
    super().__init__(lr)
    self.b1, self.b2, self.eps, self.in_max = b1, b2, eps, eps_in_max
    self.m, self.u = 0.0, 0.0

  def step(self, theta, g):
    eta = self.tick()
    t, b1, b2, eps = self.t, self.b1, self.b2, self.eps
    self.m = b1 * self.m + (1 - b1) * g
    if self.in_max:
      self.u = np.maximum(b2 * self.u, np.abs(g) + eps)
      return theta - eta / (1 - b1 ** t) * self.m / self.u
    self.u = np.maximum(b2 * self.u, np.abs(g))
    return theta - eta / (1 - b1 ** t) * self.m / (self.u + eps)


class AMSGrad(_Ref):
  """v_max ← max(v_max, v); bias_correction: θ ← θ − η m̂/(√(v_max/(1−β2^t)) + ε);
  else θ ← θ − η m/(√v_max + ε)."""

  def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8, bias_correction=True):
    super().__init__(lr)
    self.b1, self.b2, self.eps, self.bc = b1, b2, eps, bias_correction
    self.m, self.v, self.vmax = 0.0, 0.0, 0.0

  def step(self, theta, g):
    eta = self.tick()
    t, b1, b2, eps = self.t, self.b1, self.b2, self.eps
    self.m = b1 * self.m + (1 - b1) * g
    self.v = b2 * self.v + (1 - b2) * g * g
    self.vmax = np.maximum(self.vmax, self.v)
    if self.bc:
      return theta - eta * (self.m / (1 - b1 ** t)) / (np.sqrt(self.vmax / (1 - b2 ** t)) + eps)
    return theta - eta * self.m / (np.sqrt(self.vmax) + eps)


class Nadam(_Ref):
  """Dozat (momentum_decay None): θ ← θ − η/(√v̂+ε)·(β1 m/(1−β1^{t+1}) + (1−β1) g/(1−β1^t)).

  torch form (ψ): μ_t = β1(1 − ½·0.96^{tψ}), Π_t = ∏ μ_i,
  θ ← θ − η(1−μ_t)/(1−Π_t)·g/denom − η μ_{t+1}/(1−Π_t μ_{t+1})·m/denom, denom = √v̂ + ε.
  """

  def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8, momentum_decay=None):
    super().__init__(lr)
    self.b1, self.b2, self.eps, self.psi = b1, b2, eps, momentum_decay
    self.m, self.v, self.prod = 0.0, 0.0, 1.0

  def step(self, theta, g):
    eta = self.tick()
    t, b1, b2 = self.t, self.b1, self.b2
    self.m = b1 * self.m + (1 - b1) * g
    self.v = b2 * self.v + (1 - b2) * g * g
    denom = np.sqrt(self.v / (1 - b2 ** t)) + self.eps
    if self.psi is None:
      look = b1 * self.m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1 ** t)
      return theta - eta * look / denom
    mu_t = b1 * (1 - 0.5 * 0.96 ** (t * self.psi))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * self.psi))
    self.prod *= mu_t
    return (theta - eta * (1 - mu_t) / (1 - self.prod) * g / denom
            - eta * mu_next / (1 - self.prod * mu_next) * self.m / denom)


class RAdam(_Ref):
  """ρ∞ = 2/(1−β2) − 1, ρ_t = ρ∞ − 2tβ2^t/(1−β2^t); if ρ_t > threshold:
  θ ← θ − η r_t m̂ √(1−β2^t)/(√v + ε), else θ ← θ − η m̂."""

  def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8, threshold=5.0):
    super().__init__(lr)
    self.b1, self.b2, self.eps, self.threshold = b1, b2, eps, threshold
    self.m, self.v = 0.0, 0.0

  @staticmethod
  def rho(b2: float, t: int) -> float:
    rho_inf = 2 / (1 - b2) - 1
    return rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)

  def step(self, theta, g):
    eta = self.tick()
    t, b1, b2 = self.t, self.b1, self.b2
    self.m = b1 * self.m + (1 - b1) * g
    self.v = b2 * self.v + (1 - b2) * g * g
    m_hat = self.m / (1 - b1 ** t)
    rho_inf = 2 / (1 - b2) - 1
    rho_t = self.rho(b2, t)
    if rho_t > self.threshold:
      r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
      return theta - eta * r * m_hat * math.sqrt(1 - b2 ** t) / (np.sqrt(self.v) + self.eps)
    return theta - eta * m_hat


# ---------------------------------------------------------------------------------------------
# Sign agreement (Bello et al. 2017).


def linear_sign_decay(decay_steps: int) -> Callable[[int], float]:
  """f(step) = max(0, (T − min(step, T)) / T), step 0 at the first update."""
  T = float(decay_steps)
  return lambda step: max(0.0, (T - min(step, T)) / T)


def cosine_sign_decay(decay_steps: int, num_periods: float = 0.5) -> Callable[[int], float]:
  """φ = 2·num_periods·s, s = min(step, T)/T; f = ½(1 + cos(π φ))."""
  T = float(decay_steps)
  return lambda step: 0.5 * (1 + math.cos(math.pi * 2 * num_periods * min(step, T) / T))


class SignAgreement(_Ref):
  """m ← βm + (1−β)g (current g included), s = f(t)·sign(g)·sign(m);
  PowerSign θ ← θ − η·base^s·g; AddSign θ ← θ − η·(α + s)·g. f(step), step 0 first."""

  def __init__(self, lr, mode="power", base=math.e, alpha=1.0, beta=0.9, decay_fn=None):
    super().__init__(lr)
    self.mode, self.base, self.alpha, self.beta = mode, base, alpha, beta
    self.decay_fn = decay_fn
    self.m = 0.0

  def step(self, theta, g):
    eta = self.tick()
    f = 1.0 if self.decay_fn is None else self.decay_fn(self.t - 1)
    self.m = self.beta * self.m + (1 - self.beta) * g
    s = f * np.sign(g) * np.sign(self.m)
    factor = self.base ** s if self.mode == "power" else self.alpha + s
    return theta - eta * factor * g


def PowerSign(lr, base=math.e, beta=0.9, decay_fn=None):  # noqa: N802 - reads as a class
  return SignAgreement(lr, "power", base=base, beta=beta, decay_fn=decay_fn)


def AddSign(lr, alpha=1.0, beta=0.9, decay_fn=None):  # noqa: N802
  return SignAgreement(lr, "add", alpha=alpha, beta=beta, decay_fn=decay_fn)
