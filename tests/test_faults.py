"""`fault_point`: inert unless armed; armed, the thread that reaches it never goes past it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.frozen import all_threads_stopped

WORKER = """
import sys, threading, time
from sqlrs_engine.faults import fault_point

def worker():
    fault_point("test:point")
    open(sys.argv[1], "w").write("went past the point")

threading.Thread(target=worker).start()
while True:  # the main thread keeps a CPU busy, as a loaded engine's would be
    sum(range(10000))
"""


def start(tmp_path: Path, armed: str) -> tuple[subprocess.Popen[bytes], Path]:
    marker = tmp_path / "went-past"
    env = {**os.environ, "SQLRS_FAULT_POINT": armed}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(marker)], env=env), marker


def test_an_unarmed_point_does_nothing(tmp_path: Path) -> None:
    process, marker = start(tmp_path, "")
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the worker never went past an unarmed point"
            time.sleep(0.01)
        assert process.poll() is None and not all_threads_stopped(process.pid)
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("continues", [0, 5])
def test_an_armed_point_stops_the_process_and_never_lets_its_thread_go_on(
    tmp_path: Path, continues: int
) -> None:
    """Frozen whole, and a SIGCONT (job control sends one to an orphaned process group with a
    stopped member) only stops it again: the test that armed the point kills it."""
    process, marker = start(tmp_path, "test:point")
    try:
        deadline = time.monotonic() + 30
        while not all_threads_stopped(process.pid):
            assert process.poll() is None, "the process died instead of stopping"
            assert time.monotonic() < deadline, "the process never stopped at its point"
            time.sleep(0.01)
        for _ in range(continues):
            os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while not all_threads_stopped(process.pid):
            assert time.monotonic() < deadline, "a SIGCONT let the process run on"
            time.sleep(0.01)
        assert not marker.exists()
    finally:
        process.kill()
        process.wait()
