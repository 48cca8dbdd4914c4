"""Bounded polling for conditions another process or thread makes true."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlrs_engine.cancel import CancelToken
from tests.support.engine_process import EngineProcess


class WaitingToken(CancelToken):
    """A cancel token that says when blocking work starts waiting: work that may block
    registers its wake-up (or kill) callback with the token right before it waits, so a
    test knows that the work is waiting without sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def register(self, callback: Callable[[], None]) -> Callable[[], None]:
        unregister = super().register(callback)
        self.waiting.set()
        return unregister


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, poll: float = 0.05) -> bool:
    """Whether `condition` became true within `timeout` seconds (checked once more at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()


def wait_for_log(
    engine: EngineProcess, job_id: str, predicate: Callable[[str], Any], timeout: float = 120
) -> None:
    """Follow a job's events until a log line satisfies `predicate`; fail if the job ends first."""
    deadline = time.monotonic() + timeout
    for event in engine.ndjson(f"/v1/prepare-jobs/{job_id}/events", timeout=timeout):
        if event["type"] == "log" and predicate(event["message"]):
            return
        assert time.monotonic() < deadline
    raise AssertionError("the job ended before the expected log line")
