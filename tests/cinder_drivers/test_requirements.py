"""The Cinder tests run: Cinder is installed (skipped, saying why, when it is not;
failing when the environment variable CI is set)."""

from __future__ import annotations

import os

import pytest

from .conftest import CINDER_MISSING


def test_cinder_is_installed() -> None:
    if CINDER_MISSING is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the Cinder tests must run when CI is set: {CINDER_MISSING}")
        pytest.skip(f"the Cinder tests did not run: {CINDER_MISSING}")
