"""Records the state layout (tree structure, leaf shapes and dtypes) of every named optimizer
and of common compositions, as gradxform at a given commit builds them.

Run with the library of interest first on the path, e.g. for the layouts before the
flat-chain change (commit 86327ea):
  git worktree add /tmp/old 86327ea
  PYTHONPATH=/tmp/old python tests/data/make_state_layouts.py
Writes tests/data/state_layouts_86327ea.json, which tests/test_chain_protocol.py compares
the current layouts with.
"""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp

import gradxform as gx

HERE = pathlib.Path(__file__).resolve().parent


def optimizers():
  sched = gx.linear_schedule(1.0, 0.5, 10)
  named = {
      "sgd": gx.sgd(0.1), "sgd_momentum": gx.sgd(0.1, 0.9), "sgdw": gx.sgdw(0.1),
      "adagrad": gx.adagrad(0.1), "adadelta": gx.adadelta(), "rmsprop": gx.rmsprop(0.1),
      "rmsprop_centered_momentum": gx.rmsprop(0.1, centered=True, momentum=0.9),
      "adam": gx.adam(0.1), "adam_schedule": gx.adam(sched), "adamw": gx.adamw(0.1),
      "adamax": gx.adamax(0.1), "nadam": gx.nadam(0.1), "nadam_torch": gx.nadam(
          0.1, momentum_decay=0.004), "amsgrad": gx.amsgrad(0.1), "radam": gx.radam(0.1),
      "powersign": gx.powersign(0.1), "addsign": gx.addsign(0.1),
      "noisy_sgd": gx.noisy_sgd(0.1),
  }
  composed = {
      "clip_then_adam": gx.chain(gx.clip_by_global_norm(1.0), gx.adam(0.1)),
      "adam_then_ema_params": gx.chain(gx.adam(0.1), gx.ema_params(0.9)),
      "adam_then_schedule": gx.chain(gx.adam(0.1), gx.scale_by_learning_rate(sched)),
      "named_clip_sgd": gx.named_chain(("clip", gx.clip(1.0)), ("sgd", gx.sgd(0.1, 0.9))),
  }
  return {**named, **composed}


def layout(state):
  leaves = jax.tree.leaves(state)
  return {"treedef": str(jax.tree.structure(state)),
          "leaves": [[list(x.shape), str(x.dtype)] for x in leaves]}


def main():
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=pathlib.Path(gx.__file__).parent).stdout.strip()
  out = {"commit": commit, "layouts": {k: layout(tx.init(params))
                                       for k, tx in optimizers().items()}}
  path = HERE / f"state_layouts_{commit}.json"
  lines = ["{", f' "commit": "{commit}",', ' "layouts": {']
  lines += [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in out["layouts"].items()]
  lines[-1] = lines[-1].rstrip(",")
  path.write_text("\n".join(lines + [" }", "}"]) + "\n")
  print("wrote", path, file=sys.stderr)


if __name__ == "__main__":
  main()
