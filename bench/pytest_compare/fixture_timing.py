"""pytest plugin for bench/bench_pytest.py: how long each test's `db` fixture takes.

Appends one JSON line per test to $FIXTURE_TIMINGS: the `db` setup and the whole teardown
phase (the fixture's finalizer is all that runs there in the example suite).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator
from typing import Any

import pytest

_setup: dict[str, float] = {}


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Generator[None, Any, Any]:
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        if fixturedef.argname == "db":
            _setup[request.node.nodeid] = time.perf_counter() - started


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, Any, Any]:
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        teardown = time.perf_counter() - started
        if item.nodeid in _setup:
            with open(os.environ["FIXTURE_TIMINGS"], "a", encoding="utf-8") as out:
                out.write(
                    json.dumps(
                        {
                            "test": item.nodeid,
                            "setup": _setup.pop(item.nodeid),
                            "teardown": teardown,
                        }
                    )
                    + "\n"
                )
