"""Reproduces the open Shampoo hang on jaxlib 0.10.2's CPU backend (BUILD_NOTES, known limits).

    for s in 1 2 3 4 5 6 7 8; do
      timeout 40 python benchmarks/shampoo_hang.py $s || echo "seed $s: hung"
    done

Each run jits `gx.scale_by_shampoo().update` on one random 1024×128 float32 leaf and takes
three steps; a run that hangs never returns from `block_until_ready` on the first step
(about half of the runs on the project's 2-core machine; none on jaxlib 0.11.2). After 25 s the
Python stacks are dumped and the run exits with status 1.
"""

import faulthandler
import sys

import jax
import jax.numpy as jnp
import numpy as np

import gradxform as gx

faulthandler.dump_traceback_later(25, exit=True)
rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
params = {"w": jnp.asarray(rng.normal(size=(1024, 128)), jnp.float32)}
tx = gx.scale_by_shampoo()
state = tx.init(params)
update = jax.jit(tx.update)
for _ in range(3):
  grads = {"w": jnp.asarray(rng.normal(size=(1024, 128)), jnp.float32)}
  updates, state = update(grads, state)
  jax.block_until_ready(updates)
print("ok")
