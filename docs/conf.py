"""Sphinx configuration for the textbrewer documentation.

Build from the repository root with::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import re
import sys
from pathlib import Path

# Document the checkout this file sits in, not whatever textbrewer happens to be installed.
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

_version_line = re.search(
    r'__version__ = "([^"]+)"', (REPO_ROOT / "textbrewer" / "__init__.py").read_text("utf-8")
)

project = "textbrewer"
author = "the textbrewer authors"
copyright = "the textbrewer authors, Apache-2.0"
release = _version_line.group(1) if _version_line else "unknown"
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "README.md", "snippets"]
templates_path = []
html_static_path = []
html_theme = "alabaster"
html_title = f"textbrewer {release}"
html_theme_options = {
    "description": "Knowledge distillation for NLP models in PyTorch",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "230px",
}
pygments_style = "sphinx"

# Google-style docstrings only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = False
napoleon_attr_annotations = True

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = True

# Quieter builds; a CUDA-less machine must be able to import the package (it does not touch CUDA).
os.environ.setdefault("TQDM_DISABLE", "1")
