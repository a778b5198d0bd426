"""The package is typed and lint-clean, and every public name documents itself.

ruff and mypy run as subprocesses with the configuration in pyproject.toml. Both are in the
`test` extras (.ci/run installs them): a missing tool fails the test, it does not skip it.
"""

import importlib.util
import inspect
import os
import subprocess
import sys

import pytest

import gradxform as gx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Only a guard against a hung tool: a cold mypy run takes ~1 min on a loaded 2-core machine,
# ruff a second. A slow but correct run must pass, so the limit is far beyond either.
TOOL_TIMEOUT_S = 900


def _tool(module, *args):
  if importlib.util.find_spec(module) is None:
    pytest.fail(f"{module} is not installed; it is a test dependency: "
                f"pip install -e '.[test]'")
  try:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
  except subprocess.TimeoutExpired as e:
    so_far = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                     for x in (e.stdout, e.stderr))      # bytes here even with text=True
    pytest.fail(f"`python -m {module}` did not finish within {TOOL_TIMEOUT_S} s (a guard "
                f"against a hung tool, far beyond a normal run); output so far:\n{so_far}")


def test_ruff_clean():
  paths = [p for p in ("gradxform", "tests", "examples", "benchmarks")
           if os.path.isdir(os.path.join(ROOT, p))]
  out = _tool("ruff", "check", "--no-cache", "--output-format", "concise", *paths)
  assert out.returncode == 0, f"ruff found problems:\n{out.stdout}{out.stderr}"


def test_mypy_clean():
  out = _tool("mypy")  # files and settings: [tool.mypy] in pyproject.toml
  assert out.returncode == 0, f"mypy found problems:\n{out.stdout}{out.stderr}"


def test_py_typed_marker_ships():
  assert os.path.isfile(os.path.join(os.path.dirname(gx.__file__), "py.typed"))


def test_every_public_name_has_a_docstring():
  missing = []
  for name in gx.__all__:
    obj = getattr(gx, name)
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or callable(obj)):
      continue  # constants such as __version__
    doc = inspect.getdoc(obj)
    # A NamedTuple's automatic docstring ("Name(field, ...)") does not count.
    if not doc or doc.startswith(f"{name}(") or len(doc.strip()) < 20:
      missing.append(name)
  assert not missing, f"public names without a real docstring: {missing}"


def test_public_factories_state_math_and_references():
  # Named algorithms carry an update equation (a `←` or `=`) and a References section.
  algorithms = ["sgd", "sgdw", "adagrad", "adadelta", "rmsprop", "adam", "adamw", "adamax",
                "nadam", "amsgrad", "radam", "powersign", "addsign", "noisy_sgd"]
  bad = []
  for name in algorithms:
    doc = inspect.getdoc(getattr(gx, name)) or ""
    if not (("←" in doc or "=" in doc) and "References" in doc):
      bad.append(name)
  assert not bad, f"algorithm docstrings without an equation or References: {bad}"
