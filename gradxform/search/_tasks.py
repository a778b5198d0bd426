"""Small training problems that score update rules: logistic regression, Rosenbrock, an MLP.

A `Task` is a flat float32 parameter vector, a deterministic full-batch loss of it, the number
of steps a rule trains for, and `floor`, a known lower bound of the loss (the optimum where it
is known, else 0). Scores are suboptimalities `loss − floor`, so a log scale means "digits of
progress". scikit-learn is imported inside `mlp_digits` only.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._equality import by_value, same_value, value_hash


class Task(NamedTuple):
  """A problem to train on: `loss(params)` from `params`, for `steps` full-batch steps."""
  name: str
  params: jax.Array                       # initial parameters, flat float32
  loss: Callable[[jax.Array], jax.Array]  # flat parameters -> scalar loss
  steps: int
  floor: float = 0.0                      # a lower bound of the loss (its minimum if known)

  # Equal by value (arrays by content, `loss` by the factory and arguments that built it), as
  # optimizers are: the task factories below are `by_value`, so a rebuilt task equals the
  # original. A NamedTuple's own `==` would compare the arrays element-wise.
  def __eq__(self, other: object) -> bool:
    return same_value(self, other)

  def __hash__(self) -> int:
    return value_hash(self)


@jax.custom_jvp
def _softplus(x: jax.Array) -> jax.Array:
  """`log(1 + eˣ)`, written `max(x, 0) + log1p(e^−|x|)` so that it cannot overflow.

  Its derivative is set to the sigmoid, `1 / (1 + e^−x)`, computed from the same `e^−|x|`
  (one exponential and one division). Differentiating the formula instead costs more and is
  wrong at `x = 0`, where it must be ½. There `max` splits its tie (½ each side) while `|x|`
  takes the one-sided derivative +1: autodiff gives 0 for this form, and gave −1 instead of
  −½ per unit of `z` for session 2's `max(−z, 0) + log1p(e^−|z|)`. Every logistic-regression
  run starts at `w = 0`, where every margin is 0.
  """
  return _softplus_and_exp(x)[0]


def _softplus_and_exp(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`softplus(x)` and the `e^−|x|` it is computed from (which the derivative reuses)."""
  e = jnp.exp(-jnp.abs(x))
  return jnp.maximum(x, 0.0) + jnp.log1p(e), e


@_softplus.defjvp
def _softplus_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  value, e = _softplus_and_exp(x)
  return value, (jnp.where(x >= 0, 1.0, e) / (1.0 + e)) * dx


@by_value
def logistic_regression(seed: int = 0, *, n: int = 256, dim: int = 16, l2: float = 1e-3,
                        steps: int = 100) -> Task:
  """L2-regularized logistic regression on ill-conditioned synthetic data (convex).

  Features are Gaussian with scales from 0.1 to 10 (condition number ~10⁴ of the Hessian),
  labels drawn from a logistic model. `floor` is the optimum, found by Newton's method in
  float64.
  """
  rng = np.random.default_rng(seed)
  scales = np.logspace(-1, 1, dim)
  x = rng.normal(size=(n, dim)) * scales
  w_true = rng.normal(size=dim) / scales
  y = (rng.random(n) < 1 / (1 + np.exp(-x @ w_true))).astype(np.float64) * 2 - 1

  def loss64(w):
    z = y * (x @ w)
    return np.mean(np.logaddexp(0.0, -z)) + 0.5 * l2 * w @ w

  w = np.zeros(dim)
  for _ in range(50):                              # Newton's method on the float64 problem
    z = y * (x @ w)
    p = 1 / (1 + np.exp(z))
    grad = -(x * (y * p)[:, None]).mean(0) + l2 * w
    hess = (x.T * (p * (1 - p))) @ x / n + l2 * np.eye(dim)
    w = w - np.linalg.solve(hess, grad)
  floor = float(loss64(w))
  # Labels are ±1, so (y·x) w = y · (x w) exactly. `w @ (y·x)ᵀ` rather than `(y·x) @ w`: the
  # same products, but XLA lays the vmapped forward and backward out better for it (10–18 %
  # faster in the population program; single runs unchanged).
  xyt = jnp.asarray((y[:, None] * x).T, jnp.float32)

  def loss(w):
    return jnp.mean(_softplus(-(w @ xyt))) + 0.5 * l2 * jnp.dot(w, w)

  name = f"logreg(seed={seed})" if n == 256 else f"logreg(seed={seed}, n={n})"
  return Task(name, jnp.zeros(dim, jnp.float32), loss, steps,
              floor - 1e-6)   # float32 losses can dip a hair below the float64 optimum


@by_value
def rosenbrock(dim: int = 2, *, steps: int = 200, seed: int = 0) -> Task:
  """Rosenbrock's banana, `Σ (1 − x_i)² + 100 (x_{i+1} − x_i²)²`, from `(−1.2, 1, ...)`.

  A narrow curved valley; minimum 0 at all ones. `seed` > 0 perturbs the start by N(0, 0.1).
  """
  x0 = np.tile([-1.2, 1.0], (dim + 1) // 2)[:dim]
  if seed:
    x0 = x0 + 0.1 * np.random.default_rng(seed).normal(size=dim)

  def loss(x):
    return jnp.sum((1.0 - x[:-1]) ** 2 + 100.0 * (x[1:] - x[:-1] ** 2) ** 2)

  name = f"rosenbrock(dim={dim})" if not seed else f"rosenbrock(dim={dim}, seed={seed})"
  return Task(name, jnp.asarray(x0, jnp.float32), loss, steps, 0.0)


@by_value
def mlp_digits(seed: int = 0, *, hidden: int = 32, n_train: int = 512, l2: float = 1e-4,
               steps: int = 100) -> Task:
  """A one-hidden-layer tanh MLP on `n_train` of scikit-learn's 8×8 digits.

  Loss: cross-entropy plus `l2/2 · ‖θ‖²`. Without the penalty a rule that merely inflates the
  logits drives float32 cross-entropy to exactly 0 on a small training set, which a log-scale
  score would reward without bound. `seed` picks the training subset and the initialization
  (Glorot normal, zero biases). `floor` is 0 (the regularized minimum is unknown).
  """
  from sklearn.datasets import load_digits  # only here: importing gradxform never loads it
  data = load_digits()
  rng = np.random.default_rng(seed)
  idx = rng.permutation(len(data.target))[:n_train]
  x = jnp.asarray(data.data[idx] / 16.0, jnp.float32)
  y = jnp.asarray(data.target[idx])
  sizes = [(64, hidden), (hidden,), (hidden, 10), (10,)]
  w1 = rng.normal(size=sizes[0]) * np.sqrt(2 / (64 + hidden))
  w2 = rng.normal(size=sizes[2]) * np.sqrt(2 / (hidden + 10))
  flat = np.concatenate([w1.ravel(), np.zeros(hidden), w2.ravel(), np.zeros(10)])
  bounds = np.cumsum([0] + [int(np.prod(s)) for s in sizes])

  def loss(p):
    w1, b1, w2, b2 = (p[a:b].reshape(s) for a, b, s in zip(bounds[:-1], bounds[1:], sizes))
    logits = jnp.tanh(x @ w1 + b1) @ w2 + b2
    ce = jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, y[:, None], -1)[:, 0])
    return ce + 0.5 * l2 * jnp.dot(p, p)

  return Task(f"mlp_digits(hidden={hidden}, seed={seed})", jnp.asarray(flat, jnp.float32),
              loss, steps, 0.0)


def default_tasks() -> list[Task]:
  """The search's training suite: logistic regression, 2-D Rosenbrock, digits MLP."""
  return [logistic_regression(0), rosenbrock(2), mlp_digits(0)]


def held_out_tasks() -> list[Task]:
  """Different seeds and a wider MLP, for checking a found rule off the training suite."""
  return [logistic_regression(1, dim=32), rosenbrock(4, seed=1),
          mlp_digits(1, hidden=64, n_train=1024)]
