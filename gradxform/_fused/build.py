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
from typing import Any, Callable

import jax

_SOURCES = ("elementwise.cc",)
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-pthread", "-w",
          # IEEE float32 arithmetic in the written order, as XLA evaluates the per-leaf chain:
          # no fused multiply-add contraction; `sqrt` needs no errno, so it vectorizes.
          "-ffp-contract=off", "-fno-math-errno")
#: The FFI targets registered, with the symbol that implements each.
TARGETS = {"gx_elementwise": "GxElementwise", "gx_elementwise_packed": "GxElementwisePacked",
           "gx_codec": "GxCodec"}

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


def _compile(compiler: str, sources: dict[str, bytes], stem: str) -> str:
  """The shared library built from `sources` (file name: text), from the cache if there."""
  key = hashlib.sha256()
  for name, text in sorted(sources.items()):
    key.update(name.encode() + b"\0" + text)
  import jaxlib
  key.update(repr((_FLAGS, compiler, jaxlib.__version__, _cpu_id())).encode())
  out_dir = _cache_dir()
  target = os.path.join(out_dir, f"{stem}_{key.hexdigest()[:24]}.so")
  if os.path.exists(target):
    return target
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
    paths = []
    for name, text in sources.items():
      paths.append(os.path.join(tmp, name))
      with open(paths[-1], "wb") as f:
        f.write(text)
    built = os.path.join(tmp, "out.so")
    cmd = [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", *paths, "-o", built]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    os.replace(built, target)  # atomic: concurrent builders (test workers) each write a whole file
  return target


def _shipped() -> dict[str, bytes]:
  here = os.path.dirname(os.path.abspath(__file__))
  out = {}
  for name in _SOURCES:
    with open(os.path.join(here, name), "rb") as f:
      out[name] = f.read()
  return out


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
          lib = ctypes.cdll.LoadLibrary(_compile(compiler, _shipped(), "gradxform_kernels"))
          _state["compiler"] = compiler
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


def program(source: str, init: Callable[[ctypes.CDLL], None] | None = None) -> str | None:
  """Compiles (once per machine) and loads the C++ loop `source` for `gx_elementwise`.

  `source` defines `extern "C" void gx_run(...)` (see `elementwise.cc`); `init`, if given,
  is called with the loaded library once per process, before the loop is registered. Returns
  the name to pass the kernel, or None when the kernels are not available or the build fails.
  """
  lib = library()
  if lib is None:
    return None
  name = "gx_" + hashlib.sha256(source.encode()).hexdigest()[:20]
  with _lock:
    loaded = _state.setdefault("programs", {})
    if name not in loaded:
      try:
        loop = ctypes.cdll.LoadLibrary(_compile(_state["compiler"],
                                                {"program.cc": source.encode()}, "gx_program"))
        if init is not None:
          init(loop)
      except Exception:  # noqa: BLE001 - the per-leaf path runs instead
        return None
      lib.gx_register_program(name.encode(), ctypes.cast(loop.gx_run, ctypes.c_void_p))
      loaded[name] = loop  # keeps the library loaded
  return name
