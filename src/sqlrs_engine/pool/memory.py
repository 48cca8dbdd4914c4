"""What a running member costs in memory: the PSS of its server's processes.

PSS (proportional set size) splits shared pages — PostgreSQL's shared memory, the binaries'
text — among the processes that map them, so summing it over the postmaster and its children
gives what that server adds to the machine, not what each process could touch. Read from
`/proc/<pid>/smaps_rollup` (Linux 4.14+). A runtime whose handle carries no host pid (or a
machine without that file) gets a fixed estimate instead: the budget then still bounds the pool,
conservatively.
"""

from __future__ import annotations

from pathlib import Path

from sqlrs_engine.runtime import procs

FALLBACK_MEMBER_BYTES = 48 << 20
"""Used when a member cannot be measured: above the PSS of an idle server (docs/performance.md)."""


def server_memory_bytes(pid: int | None, proc: Path = Path("/proc")) -> int | None:
    """PSS of `pid` and its direct children in bytes; None when it cannot be read."""
    if pid is None or not procs.is_alive(pid):
        return None
    total = _pss(proc / str(pid))
    if total is None:
        return None
    for child in _children(pid, proc):
        total += _pss(proc / str(child)) or 0
    return total


def _pss(process: Path) -> int | None:
    try:
        text = (process / "smaps_rollup").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def _children(pid: int, proc: Path) -> list[int]:
    """Processes whose parent is `pid` (a postmaster's backends and auxiliary processes)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        end = raw.rfind(")")
        fields = raw[end + 2 :].split() if end >= 0 else []
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found
