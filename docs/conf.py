"""Sphinx configuration for the gradxform documentation.

Build (warnings are errors, as in the test suite):

    sphinx-build -W --keep-going -b html docs /tmp/gradxform-docs
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "gradxform"
author = "the gradxform authors"
copyright = "2026, the gradxform authors"  # noqa: A001 (Sphinx's name for it)

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# docs/notes/ are superseded drafts (being merged into BUILD_NOTES.md and these pages).
exclude_patterns = ["_build", "notes", "notes/**", "Thumbs.db", ".DS_Store"]

# Docstrings write code and formulas between single backticks, as Markdown does.
default_role = "code"

# --- autodoc / napoleon: Google-style docstrings (Args:, Returns:, References:) ---------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# "Fields:" documents a NamedTuple state's fields like arguments.
napoleon_custom_sections = [("Fields", "params_style")]

# --- MyST --------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# --- HTML --------------------------------------------------------------------------------------
html_theme = "furo"
html_title = "gradxform"
