"""Two processes under jax.distributed (CPU, localhost) train like one float64 NumPy run.

The coordinator's port is reserved, not guessed: the parent binds a socket with SO_REUSEPORT to
port 0 and holds it (bound, not listening) until the workers exit. While it is held, no other
program can take the port (a bind without SO_REUSEPORT, or by another user, fails with
EADDRINUSE, which the test checks), but the coordinator can: it is a gRPC server, and gRPC sets
SO_REUSEPORT on its listening sockets. Connections reach only listening sockets, so the held
one never takes the workers' connections. Picking a free port, closing it and letting the
coordinator bind it later instead leaves a window in which another process can take it.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import reference

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import mp_worker  # noqa: E402  (the script the processes run; here for its problem())

# One budget for both processes: generous, because the two start jax and compile on a machine
# the rest of the suite may be loading; a healthy run takes a few seconds.
TIMEOUT_S = 300
NUM_PROCESSES = 2
LOCAL_DEVICES = 2


def _reserve_port() -> socket.socket:
  """A socket holding a free loopback port for the coordinator (see the module docstring)."""
  s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
  s.bind(("127.0.0.1", 0))
  return s


def _child_env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "TPU_"))}
  env.update(JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             PYTHONPATH=os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]))
  return env


def _numpy_reference() -> dict[str, np.ndarray]:
  """Adam (tests/reference.py) on mp_worker's problem, float64, hand-derived gradient.

  loss = mean((tanh(x W) + b − y)²) over the B × D_OUT entries, so with r = tanh(x W) + b − y:
  ∂/∂W = xᵀ (2r/(B·D_OUT) · (1 − tanh²(x W))), ∂/∂b = Σ_batch 2r/(B·D_OUT).
  """
  xs, ys, params = mp_worker.problem()
  w, b = np.float64(params["w"]), np.float64(params["b"])
  adam = reference.Adam(mp_worker.LR)
  theta = np.concatenate([w.ravel(), b])
  for x, y in zip(np.float64(xs), np.float64(ys)):
    w, b = theta[:w.size].reshape(w.shape), theta[w.size:]
    h = np.tanh(x @ w)
    dr = 2 * (h + b - y) / y.size
    g = np.concatenate([(x.T @ (dr * (1 - h * h))).ravel(), dr.sum(0)])
    theta = adam.step(theta, g)
  return {"w": theta[:w.size].reshape(w.shape), "b": theta[w.size:]}


def test_reserved_port_is_unavailable_to_others():
  with _reserve_port() as held:
    port = held.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
      with pytest.raises(OSError) as err:
        other.bind(("127.0.0.1", port))
      assert err.value.errno == errno.EADDRINUSE


def test_two_processes_match_float64_reference(tmp_path):
  out_file = tmp_path / "params.npz"
  with _reserve_port() as held:               # held until every worker has exited
    port = held.getsockname()[1]
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "mp_worker.py"), str(port), str(i),
                          str(NUM_PROCESSES), str(out_file)],
                         env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for i in range(NUM_PROCESSES)]
    logs = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
      for p in procs:
        try:
          out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
          pytest.fail(f"the {NUM_PROCESSES} workers did not finish within {TIMEOUT_S} s "
                      f"(a generous budget; a healthy run takes seconds)")
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
  # the fused route ran its kernel wherever the kernel is built (not: no compiler, or off)
  assert bool(got["fused_kernel"]) == (str(got["kernel_status"]) == "available")
  want = _numpy_reference()
  for route in ("jit", "sm", "fused"):
    for k, v in want.items():
      np.testing.assert_allclose(got[f"{route}_{k}"], v, rtol=2e-5, atol=1e-6,
                                 err_msg=f"route {route}, leaf {k}")
