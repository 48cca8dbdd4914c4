"""Fixtures shared by every suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dirs import make_scratch_dir, remove_scratch_dir


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A fresh directory the PostgreSQL server user can traverse (unlike tmp_path as root)."""
    path = make_scratch_dir()
    try:
        yield path
    finally:
        remove_scratch_dir(path)
