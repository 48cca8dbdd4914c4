"""Fixtures shared by every suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import RUNTIME_ENV, TEST_RUNTIME


def pytest_configure(config: pytest.Config) -> None:
    """Pin the runtime for every engine this test process starts without saying which:
    `start_engine` pins it itself, and this covers the rest — engines built in-process
    (`Engine` reads os.environ), CLI auto-starts, the pytest plugin's engine, plain
    subprocesses. Tests that want another runtime pass it explicitly (tests/e2e/
    test_runtimes.py: `docker` with the container engine's `DOCKER_HOST`)."""
    os.environ[RUNTIME_ENV] = TEST_RUNTIME


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
