"""Shared helpers for the benchmarks: engines in scratch dirs, timing, medians, reports.

Benchmarks are programs, not tests: they measure on this machine, print a table, and write
their raw numbers to bench/results/<name>-<timestamp>.json together with the machine and the
git commit, so docs/performance.md can cite them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.dirs import make_scratch_dir, remove_scratch_dir  # noqa: E402
from tests.support.engine_process import EngineProcess, start_engine  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextmanager
def engine_in_scratch(backend: str | None = None, **kwargs: Any) -> Iterator[EngineProcess]:
    """An engine with a fresh store; `backend` sets `snapshot.backend` before it starts."""
    workdir = make_scratch_dir("sqlrs-bench-")
    if backend is not None:
        store = workdir / "state-store"
        store.mkdir(mode=0o700)
        (store / "config.json").write_text(json.dumps({"snapshot": {"backend": backend}}))
    engine = start_engine(workdir, **kwargs)
    try:
        yield engine
    finally:
        engine.stop()
        remove_scratch_dir(workdir)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "commit": commit + ("+dirty" if dirty else ""),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path
