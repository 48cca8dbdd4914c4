"""Fixtures that start the real engine process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine


@pytest.fixture
def engine(scratch_dir: Path) -> Iterator[EngineProcess]:
    """A running engine with an empty state store."""
    running = start_engine(scratch_dir)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def shared_engine() -> Iterator[EngineProcess]:
    """One engine for a whole module of tests that leave no trace in it."""
    workdir = make_scratch_dir()
    running = start_engine(workdir)
    try:
        yield running
    finally:
        running.stop()
        remove_scratch_dir(workdir)
