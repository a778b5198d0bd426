"""The documentation is built and run, so it stays true.

- The Sphinx site (`docs/`) builds with warnings as errors, as `.ci/run` runs it.
- The API reference documents every name of `gradxform.__all__`.
- Every ```python block of README.md and of docs/**/*.md runs: the blocks of one page in order,
  in one namespace, as a reader would paste them. A block preceded by the line
  `<!-- no-run -->` is not run (kept for the few that cannot run here); shell blocks are not
  run.
- Every `>>>` example in the library's docstrings runs as a doctest, starting from the names
  that docs/api/index.md defines for the reader (`gx`, `jax`, `jnp`, `np`, `params`, `grads`).
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

import gradxform as gx

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NO_RUN = "<!-- no-run -->"
#: Folders under docs/ that are not part of the site (drafts), so their blocks are not run.
NOT_IN_SITE = {"notes", "_build"}
_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")


def markdown_pages() -> list[Path]:
  """README.md and every Markdown page of the site."""
  pages = [ROOT / "README.md"]
  for path in sorted(DOCS.rglob("*.md")):
    if not NOT_IN_SITE.intersection(path.relative_to(DOCS).parts[:-1]):
      pages.append(path)
  return pages


def python_blocks(text: str) -> list[tuple[int, str]]:
  """The ```python blocks of a Markdown text as (first line number, code), minus no-run ones."""
  blocks, lines, i = [], text.splitlines(), 0
  while i < len(lines):
    m = _FENCE.match(lines[i])
    if not m:
      i += 1
      continue
    fence, lang, start = m.group(1), m.group(2).lower(), i
    i += 1
    body = []
    while i < len(lines) and lines[i].strip() != fence:
      body.append(lines[i])
      i += 1
    i += 1  # the closing fence
    previous = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
    if lang in ("python", "py") and previous != NO_RUN:
      blocks.append((start + 2, "\n".join(body) + "\n"))
  return blocks


def test_python_blocks_are_found():
  """The extractor itself: fences, languages, the no-run marker, nested backticks."""
  text = ("x\n```python\na = 1\n```\n```bash\nls\n```\n<!-- no-run -->\n\n```python\nboom\n```\n"
          "````python\nb = '```'\n````\n")
  assert python_blocks(text) == [(3, "a = 1\n"), (14, "b = '```'\n")]


def _page_id(path: Path) -> str:
  return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", markdown_pages(), ids=_page_id)
def test_markdown_code_blocks_run(page: Path, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # blocks that write files write them here
  namespace: dict = {"__name__": "__docs__"}
  for line, code in python_blocks(page.read_text(encoding="utf-8")):
    try:
      exec(compile(code, f"{_page_id(page)}:{line}", "exec"), namespace)  # noqa: S102
    except Exception:  # noqa: BLE001 - report the page, the block and the traceback
      pytest.fail(f"the ```python block at {_page_id(page)}:{line} failed:\n"
                  f"{traceback.format_exc()}", pytrace=False)


def test_readme_links_point_to_files():
  """The README is read on its own (e.g. on a forge), so its relative links must resolve."""
  text = (ROOT / "README.md").read_text(encoding="utf-8")
  targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)
             if "://" not in t and not t.startswith("#")}
  missing = sorted(t for t in targets if not (ROOT / t).exists())
  assert targets and not missing, f"README.md links to missing files: {missing}"


# ---------------------------------------------------------------------------------------------
# Docstring examples.


def _library_modules() -> list[str]:
  names = ["gradxform"]
  for info in pkgutil.walk_packages(gx.__path__, "gradxform."):
    names.append(info.name)
  return sorted(names)


def _doctest_globals() -> dict:
  """The names the examples start from: the first block of docs/api/index.md, which shows them
  to the reader (`gx`, `jax`, `jnp`, `np`, a small `params` tree and its `grads`)."""
  (_, code), *_ = python_blocks((DOCS / "api" / "index.md").read_text(encoding="utf-8"))
  namespace: dict = {"__name__": "__docs__"}
  exec(compile(code, "docs/api/index.md", "exec"), namespace)  # noqa: S102
  return namespace


class _Finder(doctest.DocTestFinder):
  """Finds the examples of decorated factories too (`@gx.transform` wraps them: the wrapper's
  globals are those of the decorator's module, so doctest would not count it as this one's)."""

  def _from_module(self, module, object):  # noqa: A002 (doctest's own signature)
    return super()._from_module(module, inspect.unwrap(object) if callable(object) else object)

  def _find_lineno(self, obj, source_lines):
    return super()._find_lineno(inspect.unwrap(obj) if callable(obj) else obj, source_lines)


@pytest.mark.parametrize("module", _library_modules())
def test_docstring_examples_run(module: str, monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  mod = importlib.import_module(module)
  finder = _Finder(exclude_empty=True)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  report: list[str] = []
  for test in finder.find(mod, module, globs=_doctest_globals()):
    runner.run(test, out=report.append)
  failed = runner.summarize(verbose=False).failed
  assert failed == 0, f"{failed} docstring example(s) failed in {module}:\n" + "".join(report)


# ---------------------------------------------------------------------------------------------
# The site.

_DIRECTIVE = re.compile(r"^\.\. auto(?:function|class|data)::\s+gradxform\.(\w+)\s*$", re.M)


def documented_names() -> dict[str, list[str]]:
  """Each top-level name the API pages document, with the pages that document it."""
  found: dict[str, list[str]] = {}
  for page in sorted((DOCS / "api").glob("*.md")):
    for name in _DIRECTIVE.findall(page.read_text(encoding="utf-8")):
      found.setdefault(name, []).append(page.name)
  return found


def test_api_reference_covers_every_public_name():
  found = documented_names()
  missing = sorted(set(gx.__all__) - set(found))
  assert not missing, (f"public names with no entry in docs/api/*.md: {missing}; add a "
                       "`.. autofunction:: gradxform.NAME` block to the page of its kind")
  unknown = sorted(set(found) - set(gx.__all__))
  assert not unknown, f"docs/api/*.md documents names that are not in gx.__all__: {unknown}"
  twice = {n: p for n, p in found.items() if len(p) > 1}
  assert not twice, f"names documented more than once: {twice}"


def test_public_docstrings_have_an_example_and_references():
  """Each API entry shows an example (run by `test_docstring_examples_run`) and cites where
  the algorithm or the design comes from."""
  lacking = {}
  for name in gx.__all__:
    doc = inspect.getdoc(getattr(gx, name)) or ""
    missing = [part for part, marker in (("an example", ">>>"), ("References", "References:"))
               if marker not in doc]
    if missing:
      lacking[name] = missing
  assert not lacking, f"public docstrings without an example or References: {lacking}"


def test_sphinx_build_has_no_warnings(tmp_path):
  """`sphinx-build -W` (warnings are errors), and each public name gets its anchor."""
  out = tmp_path / "html"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
       "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
  html = "".join(p.read_text(encoding="utf-8") for p in (out / "api").glob("*.html"))
  anchors = set(re.findall(r'id="gradxform\.(\w+)"', html))
  missing = sorted(set(gx.__all__) - anchors)
  assert not missing, f"names without an entry in the built API reference: {missing}"
