"""A real engine for the client's tests, found by the client through its engine.json."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sqlrs_engine.client import Client
from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine


@pytest.fixture(scope="module")
def client_engine() -> Iterator[EngineProcess]:
    """One engine per module; its engine.json is where a client's state dir points."""
    workdir = make_scratch_dir()
    running = start_engine(workdir)
    try:
        yield running
    finally:
        running.stop()
        remove_scratch_dir(workdir)


@pytest.fixture
def client(client_engine: EngineProcess) -> Iterator[Client]:
    """A client of `client_engine` that may not start engines of its own."""
    with Client(state_dir=client_engine.engine_json.parent, autostart=False) as connected:
        yield connected
