"""Two processes under jax.distributed (CPU, localhost) train like one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

import gradxform as gx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import mp_worker  # noqa: E402  (the script the processes run; here for its problem())

TIMEOUT_S = 60
NUM_PROCESSES = 2
LOCAL_DEVICES = 2


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _child_env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "TPU_"))}
  env.update(JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             PYTHONPATH=os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]))
  return env


def _single_process_reference():
  xs, ys, params = mp_worker.problem()
  tx = gx.adam(mp_worker.LR)
  cpu = jax.devices("cpu")[0]
  params = jax.device_put(params, cpu)

  @jax.jit
  def step(params, state, x, y):
    updates, state = tx.update(jax.grad(mp_worker.loss)(params, x, y), state, params)
    return gx.apply_updates(params, updates), state

  state = tx.init(params)
  for t in range(mp_worker.STEPS):
    params, state = step(params, state, xs[t], ys[t])
  return {k: np.asarray(v) for k, v in params.items()}


def test_two_processes_match_single_process(tmp_path):
  port = _free_port()
  out_file = tmp_path / "params.npz"
  procs = [
      subprocess.Popen([sys.executable, str(HERE / "mp_worker.py"), str(port), str(i),
                        str(NUM_PROCESSES), str(out_file)],
                       env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
      for i in range(NUM_PROCESSES)]
  logs = []
  deadline = time.monotonic() + TIMEOUT_S  # one budget for both processes
  try:
    for p in procs:
      out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
      logs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, f"worker failed (rc={p.returncode}):\n{log[-3000:]}"

  got = np.load(out_file)
  assert int(got["process_count"]) == NUM_PROCESSES
  assert int(got["device_count"]) == NUM_PROCESSES * LOCAL_DEVICES
  want = _single_process_reference()
  for route in ("jit", "sm"):
    for k, v in want.items():
      np.testing.assert_allclose(got[f"{route}_{k}"], v, rtol=1e-5, atol=1e-6,
                                 err_msg=f"route {route}, leaf {k}")
