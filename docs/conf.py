"""Sphinx configuration for the aiocinder documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``. Nothing here
fetches anything from the network.
"""

from __future__ import annotations

import os
import sys

# Document the aiocinder of this checkout, even when another one is installed.
sys.path.insert(0, os.path.abspath(".."))

import aiocinder

project = "aiocinder"
author = "The aiocinder developers"
copyright = "the aiocinder developers"
release = aiocinder.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

root_doc = "index"
exclude_patterns = ["_build"]
language = "en"

# Warnings are errors in CI (-W); unresolved cross-references are not
# warnings as long as nitpicky stays off.
nitpicky = False

autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
autoclass_content = "class"

pygments_style = "sphinx"

html_theme = "alabaster"
html_title = f"aiocinder {release}"
html_theme_options = {
    "description": "Block storage for asyncio, through storage drivers",
    "fixed_sidebar": True,
}
