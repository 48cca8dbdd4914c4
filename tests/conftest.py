"""Fixtures shared by every suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from tests.support.dirs import make_scratch_dir, remove_scratch_dir


@pytest.fixture(autouse=True)
def no_leaked_actors() -> Iterator[None]:
    """Every actor a test starts must be stopped by it: a live actor thread keeps pytest
    (and CI) from exiting, and usually means a missing stop in the code under test."""
    yield
    leaked = pykka.ActorRegistry.get_all()
    if leaked:
        pykka.ActorRegistry.stop_all(block=True, timeout=10)
        pytest.fail(f"test left {len(leaked)} actor(s) running: {leaked}")


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A fresh directory the PostgreSQL server user can traverse (unlike tmp_path as root)."""
    path = make_scratch_dir()
    try:
        yield path
    finally:
        remove_scratch_dir(path)
