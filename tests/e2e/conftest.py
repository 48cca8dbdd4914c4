"""Fixtures that start the real engine process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.engine_process import EngineProcess, start_engine


@pytest.fixture
def engine(scratch_dir: Path) -> Iterator[EngineProcess]:
    """A running engine with an empty state store."""
    running = start_engine(scratch_dir)
    try:
        yield running
    finally:
        running.stop()
