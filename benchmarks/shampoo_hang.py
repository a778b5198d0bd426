"""Regression check for the former Shampoo / SOAP hang on jaxlib's CPU backend (BUILD_NOTES).

    for s in $(seq 1 24); do
      timeout 60 python benchmarks/shampoo_hang.py $s || echo "seed $s: hung"
    done
    python benchmarks/shampoo_hang.py 1 --algo soap --shape tree2 --every 1

Each run jits `update` of `gx.scale_by_shampoo()` (`--algo shampoo`, the default) or
`gx.scale_by_soap()` on random float32 leaves (`--shape`: 1024x128, the default, or any `RxC`;
`tree`: {1024×128, 256×256, 100}; `tree2`: {2 × 256×256, 2 × 512×128, 100}, whose repeated
shapes make SOAP batch its `eigh`/`qr`), and takes `--steps` steps (default 3), each waited for
with `block_until_ready`. `--every N` sets `precondition_every` / `precondition_frequency`
(default: the factory's). A run that does not finish within `--timeout` seconds (default 50)
dumps the Python stacks and exits with status 1; "ok" and status 0 otherwise.

The former hang: jaxlib's CPU LAPACK kernels (`eigh`, `qr`, ...) split a batch of matrices into
pieces scheduled on XLA's intra-op thread pool and block their own pool thread until the pieces
are done; two such batched calls started together on pool threads (Shampoo's `eigh` per block
size, fed by parallel kernels) could each wait for pieces queued behind the other, a deadlock
once every pool thread waited (jaxlib 0.10.2 on 2 cores: about one run in five of the default
configuration; SOAP's batched `qr` on `tree2 --every 1` nearly every run). Since
`gradxform._batching.per_matrix`, those decompositions run one matrix per LAPACK call on CPU
(inline, never waiting on the pool), and this script should always print "ok".
"""

import argparse
import faulthandler
import sys

import jax
import jax.numpy as jnp
import numpy as np

import gradxform as gx

SHAPES = {"tree": {"a": (1024, 128), "b": (256, 256), "c": (100,)},
          "tree2": {"a": (256, 256), "b": (256, 256), "c": (512, 128), "d": (512, 128),
                    "e": (100,)}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("seed", nargs="?", type=int, default=0)
  parser.add_argument("--algo", choices=("shampoo", "soap"), default="shampoo")
  parser.add_argument("--shape", default="1024x128")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--every", type=int, default=None)
  parser.add_argument("--timeout", type=float, default=50.0)
  args = parser.parse_args(argv)

  faulthandler.dump_traceback_later(args.timeout, exit=True)
  if args.shape in SHAPES:
    shapes = SHAPES[args.shape]
  else:
    shapes = {"w": tuple(int(d) for d in args.shape.split("x"))}
  rng = np.random.default_rng(args.seed)
  sample = lambda: {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
  if args.algo == "shampoo":
    kw = {} if args.every is None else {"precondition_every": args.every}
    tx = gx.scale_by_shampoo(**kw)
  else:
    kw = {} if args.every is None else {"precondition_frequency": args.every}
    tx = gx.scale_by_soap(**kw)
  state = tx.init(sample())
  update = jax.jit(tx.update)
  for _ in range(args.steps):
    updates, state = update(sample(), state)
    jax.block_until_ready(updates)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  print("ok", args.algo, args.shape, args.seed)


if __name__ == "__main__":
  sys.exit(main())
