"""Build your own optimizer from gradxform primitives, check it, and train a Flax model with it.

Two optimizers that gradxform does not ship, written in a few lines each:

1. **NAdamW-clip**, entirely from library primitives: global-norm clipping, Nesterov-style EMA
   momentum, Adam's second moment, decoupled weight decay on kernels only (biases and norm
   scales are masked out), and a warm-up + cosine learning-rate schedule:

       g ← clip(g, 1),  m ← β1 m + (1−β1) g,  m̃ = β1 m + (1−β1) g  (look-ahead),
       v ← β2 v + (1−β2) g²,  θ ← θ − η_t (m̃/(1−β1^t) / (√(v/(1−β2^t)) + ε) + λ·[kernel]·θ)

2. **Signum with decoupled weight decay**, with one new primitive, `scale_by_sign`, written
   here from scratch (a factory returning `gx.GradientTransformation(init, update)`):

       m ← β m + (1−β) g,  θ ← θ − η (sign(m) + λθ)

   (Bernstein et al., "signSGD: compressed optimisation for non-convex problems", ICML 2018).

Both are checked with `gradxform.testing.check_transform` (jit = no-jit, stable state,
vmap/pmap, zero gradients), then trained on the digits in a linen `TrainState` and in an
`nnx.Optimizer`.

    python examples/custom_optimizer.py
    python examples/custom_optimizer.py --epochs 1 --limit 300
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gradxform as gx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import load_digits_split, train  # noqa: E402


def kernels_only(params: Any) -> Any:
  """Weight-decay mask: True for matrices and conv kernels, False for biases and norm scales."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def nadamw_clip(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
                weight_decay: float = 1e-2, max_norm: float = 1.0) -> gx.GradientTransformation:
  """NAdamW with global-norm clipping, built only from gradxform primitives (see the module)."""
  return gx.chain(
      gx.clip_by_global_norm(max_norm),
      gx.scale_by_momentum(b1, ema=True, nesterov=True),
      gx.bias_correction(b1),
      # In a chain, the second moment squares the raw (clipped) gradient, not the momentum.
      gx.scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True),
      gx.masked(gx.decoupled_weight_decay(weight_decay), kernels_only),
      gx.scale_by_learning_rate(learning_rate),
  )


def scale_by_sign() -> gx.GradientTransformation:
  """A new primitive: `u ← sign(u)` element-wise, keeping each leaf's dtype. No state.

  References:
    Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: compressed optimisation for
    non-convex problems", ICML 2018.
  """

  def init(params):
    del params
    return gx.EmptyState()

  def update(updates, state, params=None, **extra):  # ignore extras (chain passes `grad`...)
    del params, extra
    return jax.tree.map(lambda u: jnp.sign(u).astype(u.dtype), updates), state

  return gx.GradientTransformation(init, update)


def signum(learning_rate: Any, beta: float = 0.9, *,
           weight_decay: float = 1e-4) -> gx.GradientTransformation:
  """Signum with decoupled weight decay: `θ ← θ − η (sign(m) + λθ)`."""
  return gx.chain(gx.scale_by_momentum(beta, ema=True), scale_by_sign(),
                  gx.decoupled_weight_decay(weight_decay), gx.scale_by_learning_rate(learning_rate))


def check(tx: gx.GradientTransformation, name: str, level: str, quiet: bool) -> None:
  """Runs gradxform's transform-checking kit on a small parameter tree.

  `level="full"`: `check_transform` (every check, vmap and pmap included); `"basic"`: only
  `check_jit` and `check_state_stable` (quicker).
  """
  import gradxform.testing as gxt
  params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.zeros((4,))},
            "dense": {"kernel": 0.1 * jnp.ones((4, 2)), "bias": jnp.zeros((2,))}}
  if level == "full":
    gxt.check_transform(tx, params, needs_params=True, pmap=jax.local_device_count() > 1)
  else:
    gxt.check_jit(tx, params, needs_params=True)
    gxt.check_state_stable(tx, params, needs_params=True)
  if not quiet:
    print(f"{name}: gradxform.testing checks ({level}) passed")


def train_nnx(tx: gx.GradientTransformation, data, *, epochs: int, batch_size: int,
              seed: int) -> float:
  """The same optimizer in `flax.nnx`: returns the test accuracy of a small MLP."""
  from flax import nnx

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(64, 64, rngs=rngs)
      self.l2 = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.l1(x.reshape(x.shape[0], -1))))

  x_train, x_test, y_train, y_test = data
  model = MLP(nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      logp = jax.nn.log_softmax(model(x))
      return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    order = rng.permutation(len(x_train))
    for i in range(len(x_train) // batch_size):
      idx = order[i * batch_size:(i + 1) * batch_size]
      step(model, optimizer, x_train[idx], y_train[idx])
  return float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--limit", type=int, default=None, help="use only the first N images")
  p.add_argument("--optimizers", default="nadamw_clip,signum",
                 help="comma-separated subset of nadamw_clip,signum")
  p.add_argument("--checks", choices=("full", "basic", "none"), default="full",
                 help="which gradxform.testing checks to run on the custom optimizers")
  p.add_argument("--quiet", action="store_true")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
  """Checks and trains both custom optimizers; returns their test accuracies."""
  args = parse_args(argv)
  data = load_digits_split(args.seed, limit=args.limit)
  steps = args.epochs * (len(data[0]) // args.batch_size)
  schedule = gx.warmup_cosine_decay_schedule(0.0, 3e-3, max(1, steps // 10), max(2, steps))
  optimizers = {"nadamw_clip": nadamw_clip(schedule, weight_decay=1e-2),
                "signum": signum(gx.cosine_decay_schedule(3e-3, max(1, steps)))}
  results = {}
  chosen = [n.strip() for n in args.optimizers.split(",") if n.strip()]
  unknown = sorted(set(chosen) - set(optimizers))
  if unknown:
    raise SystemExit(f"unknown optimizers {unknown}; choose from {sorted(optimizers)}")
  for name in chosen:
    tx = optimizers[name]
    if args.checks != "none":
      check(tx, name, args.checks, args.quiet)
    _, history = train(tx, data, epochs=args.epochs, batch_size=args.batch_size,
                       seed=args.seed, progress=False)
    nnx_acc = train_nnx(tx, data, epochs=args.epochs, batch_size=args.batch_size,
                        seed=args.seed)
    results[name] = {"linen_cnn": history[-1]["test_acc"], "nnx_mlp": nnx_acc}
    if not args.quiet:
      print(f"{name}: test accuracy {history[-1]['test_acc']:.2%} (CNN, linen TrainState), "
            f"{nnx_acc:.2%} (MLP, nnx.Optimizer)")
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
