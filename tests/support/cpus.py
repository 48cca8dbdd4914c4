"""CPU sets of this process's threads and of other processes, for the pinning tests."""

from __future__ import annotations

import contextlib
import os

import pytest

EVERY_CPU = frozenset(os.sched_getaffinity(0))
"""The CPUs the test process may use (an engine it starts inherits them)."""

needs_two_cpus = pytest.mark.skipif(
    len(EVERY_CPU) < 2,
    reason="needs two CPUs this process may use, to tell a pinned thread from a free one",
)


def thread_cpus() -> dict[int, frozenset[int]]:
    """Each live thread of this process's CPUs, by thread id (one that ends meanwhile is
    left out)."""
    found: dict[int, frozenset[int]] = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        with contextlib.suppress(ProcessLookupError):
            found[tid] = frozenset(os.sched_getaffinity(tid))
    return found


def allowed_list(status: str) -> str:
    """The `Cpus_allowed_list` of a `/proc/…/status` text (`"0-1"`)."""
    (line,) = [x for x in status.splitlines() if x.startswith("Cpus_allowed_list:")]
    return line.split(":", 1)[1].strip()


def allowed_list_of(proc_dir: str) -> str | None:
    """The `Cpus_allowed_list` of a process or thread (`/proc/<pid>`, `…/task/<tid>`); None
    when it has ended meanwhile."""
    try:
        with open(f"{proc_dir}/status") as status:
            return allowed_list(status.read())
    except FileNotFoundError:
        return None
