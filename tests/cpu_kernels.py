"""Whether this machine runs gradxform's generated CPU kernels: a C++ compiler (`$CXX`, else
`c++`), not `GRADXFORM_KERNELS=0`, and JAX's CPU backend (`GRADXFORM_TEST_ACCELERATOR=1` may
run the tests on a GPU: conftest.py). Without them the fused and int8 paths take XLA's form,
and the tests that look for a kernel in the program expect none."""

import os
import shutil

import jax

COMPILER = shutil.which(os.environ.get("CXX", "c++"))
KERNELS_ON = (COMPILER is not None and os.environ.get("GRADXFORM_KERNELS", "1") != "0"
              and jax.default_backend() == "cpu")
