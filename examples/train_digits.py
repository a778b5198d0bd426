"""Train a small Flax CNN on scikit-learn's 8×8 handwritten digits with a gradxform optimizer.

The data ship inside scikit-learn (no download). With the defaults (Adam, cosine schedule,
15 epochs) this takes well under a minute on a laptop CPU and reaches about 99 % test accuracy.

    python examples/train_digits.py
    python examples/train_digits.py --optimizer nesterov --lr 0.05 --schedule onecycle
    python examples/train_digits.py --optimizer powersign --schedule sgdr --epochs 20

The loop is the usual Flax one: `flax.training.train_state.TrainState` takes a gradxform
optimizer exactly as it takes an Optax one (`tx=gx.adam(...)`).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.training import train_state

import gradxform as gx

# Learning rates that work for this problem, used when --lr is not given.
DEFAULT_LR = {
    "sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.05, "adadelta": 1.0,
    "rmsprop": 1e-3, "adam": 3e-3, "adamw": 3e-3, "amsgrad": 3e-3, "nadam": 3e-3,
    "radam": 3e-3, "adamax": 5e-3, "powersign": 0.02, "addsign": 0.02, "lion": 3e-4,
    "lamb": 3e-3, "adabelief": 3e-3, "adopt": 3e-3,
}

# name -> (gradxform factory, its other hyperparameters)
SPECS: dict[str, tuple[Callable[..., gx.GradientTransformation], dict[str, Any]]] = {
    "sgd": (gx.sgd, {}),
    "momentum": (gx.sgd, {"momentum": 0.9}),
    "nesterov": (gx.sgd, {"momentum": 0.9, "nesterov": True}),
    "adagrad": (gx.adagrad, {}),
    "adadelta": (gx.adadelta, {}),
    "rmsprop": (gx.rmsprop, {}),
    "adam": (gx.adam, {}),
    "adamw": (gx.adamw, {"weight_decay": 1e-2}),
    "amsgrad": (gx.amsgrad, {}),
    "nadam": (gx.nadam, {}),
    "radam": (gx.radam, {}),
    "adamax": (gx.adamax, {}),
    "powersign": (gx.powersign, {}),
    "addsign": (gx.addsign, {}),
    "lion": (gx.lion, {}),
    "lamb": (gx.lamb, {}),
    "adabelief": (gx.adabelief, {}),
    "adopt": (gx.adopt, {}),
}


def make_optimizer(name: str, learning_rate: Any, *, inject: bool = False,
                   state_dtype: str | None = None) -> gx.GradientTransformation:
  """`--optimizer name` with this learning rate (a float or a schedule).

  `inject=True` wraps the factory in `gx.inject_hyperparams`, so the learning rate in use can be
  read from the state (`opt_state.hyperparams["learning_rate"]`) for logging. `state_dtype`
  (e.g. "int8": 8-bit blockwise quantized moments) is passed on when given.
  """
  factory, kwargs = SPECS[name]
  if state_dtype is not None:
    kwargs = {**kwargs, "state_dtype": state_dtype}
  if inject:
    factory = gx.inject_hyperparams(factory)
  return factory(learning_rate=learning_rate, **kwargs)


OPTIMIZERS: dict[str, Callable[[Any], gx.GradientTransformation]] = {
    name: functools.partial(make_optimizer, name) for name in SPECS}

SCHEDULES = ("constant", "cosine", "warmup_cosine", "sgdr", "onecycle", "step", "exponential")


def make_schedule(name: str, lr: float, total_steps: int, steps_per_epoch: int) -> Any:
  """The learning rate for `--schedule name`: a float or a gradxform schedule `step -> lr`."""
  if name == "constant":
    return lr
  if name == "cosine":
    return gx.cosine_decay_schedule(lr, total_steps)
  if name == "warmup_cosine":
    return gx.warmup_cosine_decay_schedule(0.0, lr, max(1, total_steps // 10), total_steps)
  if name == "sgdr":  # restarts after 1, 2, 4, ... epochs' worth of steps (T_0 = 1 epoch)
    return gx.sgdr_schedule(lr, steps_per_epoch, period_mult=2.0)
  if name == "onecycle":
    return gx.one_cycle_schedule(total_steps, lr)
  if name == "step":  # ×0.1 at 50 % and 75 % of training, as in the classic ResNet recipe
    return gx.piecewise_constant_schedule(lr, {total_steps // 2: 0.1, 3 * total_steps // 4: 0.1})
  return gx.exponential_decay(lr, 0.01 ** (1.0 / max(1, total_steps)))  # to lr/100 at the end


def load_digits_split(seed: int = 0, test_fraction: float = 0.2, limit: int | None = None):
  """scikit-learn's digits as NHWC float32 images in [0, 1], split into train and test."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
  y = digits.target.astype(np.int32)
  if limit is not None:
    x, y = x[:limit], y[:limit]
  return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=None)


class CNN(nn.Module):
  """Two 3×3 convolutions, 2×2 average pooling, two dense layers: 151k parameters (default)."""

  features: Sequence[int] = (32, 64)
  hidden: int = 128
  classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for f in self.features:
      x = nn.relu(nn.Conv(f, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.classes)(x)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy `−log softmax(logits)[label]`."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


@jax.jit
def train_step(state: train_state.TrainState, x: jax.Array, y: jax.Array):
  """One optimizer step; returns the new state, the batch loss and the batch accuracy."""
  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x)
    return cross_entropy(logits, y), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads), loss, jnp.mean(jnp.argmax(logits, -1) == y)


def evaluate(state: train_state.TrainState, x: jax.Array, y: jax.Array):
  """Loss and accuracy on a whole (small) dataset."""
  return _evaluate(state.apply_fn, state.params, x, y)


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(apply_fn: Callable[..., jax.Array], params: Any, x: jax.Array, y: jax.Array):
  # The parameters only, not the whole training state: one compile serves every optimizer.
  logits = apply_fn({"params": params}, x)
  return cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, -1) == y)


#: The default model. Linen modules hold no state, so one instance serves every run, and its
#: `apply` is the same static argument of `_evaluate` each time.
_CNN = CNN()


def train(tx: gx.GradientTransformation, data, *, epochs: int, batch_size: int, seed: int,
          model: nn.Module | None = None, progress: bool = True,
          on_epoch: Callable[[int, train_state.TrainState], None] | None = None
          ) -> tuple[train_state.TrainState, list[dict[str, float]]]:
  """Trains `model` (default `CNN()`) with `tx`; returns the final state and per-epoch metrics.

  `on_epoch(epoch, state)` is called after each epoch (snapshot ensembles use it).
  """
  from tqdm.auto import tqdm
  x_train, x_test, y_train, y_test = data
  model = _CNN if model is None else model
  params = model.init(jax.random.key(seed), x_train[:1])["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  rng = np.random.default_rng(seed)
  steps = len(x_train) // batch_size
  history = []
  for epoch in range(1, epochs + 1):
    order = rng.permutation(len(x_train))
    losses, accs = [], []
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{epochs}", leave=False, disable=not progress)
    for i in bar:
      idx = order[i * batch_size:(i + 1) * batch_size]
      state, loss, acc = train_step(state, x_train[idx], y_train[idx])
      losses.append(loss)
      accs.append(acc)
      if i % 10 == 0:
        bar.set_postfix(loss=f"{float(loss):.4f}")
    test_loss, test_acc = evaluate(state, x_test, y_test)
    row = {"epoch": epoch, "train_loss": float(np.mean(losses)),
           "train_acc": float(np.mean(accs)), "test_loss": float(test_loss),
           "test_acc": float(test_acc)}
    history.append(row)
    hyperparams = getattr(state.opt_state, "hyperparams", None)  # with inject_hyperparams
    if hyperparams is not None and "learning_rate" in hyperparams:
      row["lr"] = float(hyperparams["learning_rate"])
    if progress:
      lr = f"lr {row['lr']:.2e}  " if "lr" in row else ""
      tqdm.write(f"epoch {epoch:3d}  {lr}train loss {row['train_loss']:.4f}  "
                 f"acc {row['train_acc']:.2%}  |  test loss {row['test_loss']:.4f}  "
                 f"acc {row['test_acc']:.2%}")
    if on_epoch is not None:
      on_epoch(epoch, state)
  return state, history


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam", help="optimizer")
  p.add_argument("--lr", type=float, default=None,
                 help="peak learning rate (None: a tuned value per optimizer, DEFAULT_LR)")
  p.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                 help="learning-rate schedule over the whole run")
  p.add_argument("--epochs", type=int, default=15, help="passes over the training set")
  p.add_argument("--batch-size", type=int, default=32, help="images per step")
  p.add_argument("--seed", type=int, default=0, help="seed of the split, init and shuffling")
  p.add_argument("--limit", type=int, default=None,
                 help="use only the first N images (quick smoke runs)")
  p.add_argument("--state-dtype", choices=("int8", "bfloat16", "float32"), default=None,
                 help="dtype of the optimizer's state (int8: blockwise 8-bit quantized); "
                 "default: the parameters' dtype")
  p.add_argument("--no-progress", action="store_true", help="no progress bar or epoch lines")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the demo; returns the final metrics and the per-epoch history."""
  args = parse_args(argv)
  data = load_digits_split(args.seed, limit=args.limit)
  steps_per_epoch = len(data[0]) // args.batch_size
  lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
  schedule = make_schedule(args.schedule, lr, args.epochs * steps_per_epoch, steps_per_epoch)
  tx = make_optimizer(args.optimizer, schedule, inject=True, state_dtype=args.state_dtype)
  progress = not args.no_progress
  if progress:
    print(f"{args.optimizer} (lr {lr:g}, {args.schedule} schedule), {args.epochs} epochs of "
          f"{steps_per_epoch} steps, batch {args.batch_size}, {len(data[0])} train / "
          f"{len(data[1])} test images")
  start = time.perf_counter()
  _, history = train(tx, data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                     progress=progress)
  seconds = time.perf_counter() - start
  final = history[-1]
  if progress:
    print(f"done in {seconds:.1f} s: test accuracy {final['test_acc']:.2%}")
  return {"test_acc": final["test_acc"], "test_loss": final["test_loss"], "seconds": seconds,
          "history": history}


if __name__ == "__main__":
  main(sys.argv[1:])
