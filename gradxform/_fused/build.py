"""Compiling and registering the CPU kernels of `gradxform._fused` (once per machine).

The kernels are C++ sources shipped in this package, written against XLA's FFI headers that
jaxlib ships (`jax.ffi.include_dir()`). The first call that needs one compiles it with the
system's C++ compiler (`$CXX`, else `c++`) for this machine's CPU, caches the shared library
under `$GRADXFORM_CACHE_DIR` (default `~/.cache/gradxform`), keyed by the source, the flags,
jaxlib's version and the CPU, and registers it with `jax.ffi`. Without a compiler, or with
`GRADXFORM_KERNELS=0`, `library()` returns None and callers take the per-leaf path; `status()`
says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Any

import jax

_SOURCES = ("adam.cc",)
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-pthread", "-w",
          # IEEE float32 arithmetic in the written order, as XLA evaluates the per-leaf chain:
          # no fused multiply-add contraction; `sqrt` needs no errno, so it vectorizes.
          "-ffp-contract=off", "-fno-math-errno")
#: The FFI targets registered, with the symbol that implements each.
TARGETS = {"gx_adam_apply": "GxAdamApply"}

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _cpu_id() -> str:
  """What `-march=native` depends on: the CPU's model and feature flags."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
    return "".join(lines)
  except OSError:
    return platform.processor() + platform.machine()


def _cache_dir() -> str:
  root = os.environ.get("GRADXFORM_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "gradxform")
  return os.path.join(root, "kernels")


def _compile(compiler: str) -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  sources = [os.path.join(here, name) for name in _SOURCES]
  key = hashlib.sha256()
  for path in sources:
    with open(path, "rb") as f:
      key.update(f.read())
  import jaxlib
  key.update(repr((_FLAGS, compiler, jaxlib.__version__, _cpu_id())).encode())
  out_dir = _cache_dir()
  target = os.path.join(out_dir, f"gradxform_kernels_{key.hexdigest()[:24]}.so")
  if os.path.exists(target):
    return target
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
  os.close(fd)
  try:
    cmd = [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", *sources, "-o", tmp]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    os.replace(tmp, target)  # atomic: concurrent builders (test workers) each write a whole file
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target


def library() -> ctypes.CDLL | None:
  """The compiled kernels with their FFI targets registered, or None (see `status`)."""
  with _lock:
    if "lib" not in _state:
      _state["lib"], _state["why"] = None, ""
      if os.environ.get("GRADXFORM_KERNELS", "1") == "0":
        _state["why"] = "disabled by GRADXFORM_KERNELS=0"
      elif (compiler := shutil.which(os.environ.get("CXX", "c++"))) is None:
        _state["why"] = "no C++ compiler found ($CXX or c++)"
      else:
        try:
          lib = ctypes.cdll.LoadLibrary(_compile(compiler))
          for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
          _state["lib"] = lib
        except Exception as e:  # noqa: BLE001 - any failure means: use the per-leaf path
          _state["why"] = f"{type(e).__name__}: {e}"
    return _state["lib"]


def status() -> str:
  """"available", or why the kernels are not (no compiler, disabled, a build error)."""
  return "available" if library() is not None else _state["why"]
