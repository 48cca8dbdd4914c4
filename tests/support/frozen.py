"""Whether a process is frozen: what a test waits for after a crash point's SIGSTOP."""

from __future__ import annotations

from pathlib import Path


def all_threads_stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped: the group stop that a crash point began is complete,
    so nothing of the process runs on while the test kills it."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks]
    except OSError:
        return False
    return bool(states) and all(state in ("T", "t") for state in states)
