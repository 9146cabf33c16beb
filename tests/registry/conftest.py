"""A study on the registry study's stores whose one model is far worse (the `registry` fixture
itself is in tests/conftest.py, shared with tests/inference)."""

from __future__ import annotations

import pytest

from tests._registry import BAD
from tests._registry import run_study


@pytest.fixture(scope="session")
def bad_study(registry) -> str:
    """A study on the registry study's file and split whose one model is far worse."""
    return run_study(registry, "bad", base=BAD)
