#!/usr/bin/env bash
# The checks a session runs when it is lent a GPU (BUILD_NOTES, "Checked on a GPU").
#
# 1. The single-device numerics tests on the GPU: every named optimizer against Optax in
#    float64 and against the stored torch.optim trajectories, the primitives, dtypes, the
#    modern canon. `GRADXFORM_TEST_ACCELERATOR=1` lets tests/conftest.py keep JAX's default
#    backend instead of the 8 fake CPU devices; the multi-device files are left out.
# 2. Where the step's time goes (benchmarks/step_overhead.py: the host's dispatch against the
#    device's work) and the optimizer-step benchmark (benchmarks/run.py) against Optax.
# The benchmarks run first: they are what a short lease is for.
#
# Usage, from the repository root, with jax[cuda], optax, flax, chex, pytest, pytest-xdist,
# hypothesis and scikit-learn installed:  OUT=/some/dir bash benchmarks/gpu_check.sh
# Each part has its own limit in seconds (OVERHEAD_TIMEOUT, BENCH_TIMEOUT, TEST_TIMEOUT,
# MUON_TIMEOUT; 0 leaves a part out).
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import jax, optax, flax, chex, numpy
print("jax", jax.__version__, "optax", optax.__version__, "flax", flax.__version__,
      "chex", chex.__version__, "numpy", numpy.__version__)
print(jax.devices())
PY
ran() { [ "${1:-0}" != 0 ]; }
ran "${OVERHEAD_TIMEOUT:-150}" && timeout "${OVERHEAD_TIMEOUT:-150}" python3 \
  benchmarks/step_overhead.py --trees "${OVERHEAD_TREES:-gpt2_small,resnet50,leaves2000x1000}" \
  --libs gx,optax,gx_flatten,gx_flatten_small --json "$OUT/overhead.jsonl" 2>&1 | tail -30 \
  | tee "$OUT/overhead.txt"
ran "${BENCH_TIMEOUT:-200}" && timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/run.py \
  --device --check --trees "${BENCH_TREES:-gpt2_small,resnet50,leaves2000x1000}" \
  --optimizers "${BENCH_OPTIMIZERS:-adam,adamw}" --libs gx,optax,gx_flatten,gx_flatten_small \
  --markdown "$OUT/bench.md" --json "$OUT/bench.jsonl" 2>&1 | tail -40 | tee "$OUT/bench.txt"
ran "${MUON_TIMEOUT:-0}" && timeout "${MUON_TIMEOUT:-0}" python3 benchmarks/run.py --check \
  --trees gpt2_small --optimizers muon --libs gx,optax --markdown "$OUT/bench_muon.md" \
  --json "$OUT/bench_muon.jsonl" 2>&1 | tail -20 | tee -a "$OUT/bench.txt"
FILES=$(ls tests/test_algorithms.py tests/test_modern.py tests/test_torch_optim.py \
  tests/test_robust_transforms.py tests/test_primitives.py tests/test_dtypes.py \
  tests/test_complex.py tests/test_layerwise.py tests/test_adam_variants.py \
  tests/test_loss_aware.py tests/test_lookahead_sam.py tests/test_torch_forms.py \
  tests/test_loss_scale.py tests/test_adafactor.py tests/test_muon.py tests/test_lbfgs.py \
  tests/test_schedule_free.py tests/test_lr_free_prodigy.py tests/test_parameter_free.py \
  tests/test_shampoo_soap.py tests/test_yellowfin.py tests/test_int8_state.py \
  tests/test_fast_paths.py 2>/dev/null)
ran "${TEST_TIMEOUT:-300}" && GRADXFORM_TEST_ACCELERATOR=1 timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -p no:cacheprovider \
  -n "${WORKERS:-8}" -rf --junitxml "$OUT/gpu_tests.xml" $FILES 2>&1 | tail -60 \
  | tee "$OUT/gpu_tests.txt"
# What the accelerator run deselected (tests/conftest.py; xdist's summary does not count it).
ran "${TEST_TIMEOUT:-300}" && GRADXFORM_TEST_ACCELERATOR=1 python3 -m pytest -p no:cacheprovider \
  -n 0 --collect-only $FILES 2>&1 | grep -E "collected|deselected" | tail -1 \
  | tee -a "$OUT/gpu_tests.txt"
