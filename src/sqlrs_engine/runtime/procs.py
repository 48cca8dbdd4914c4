"""Small Linux `/proc` helpers for finding and killing server processes we did not spawn.

PostgreSQL servers are daemonized by `pg_ctl` (their parent exits, they are re-parented to
init), so the engine cannot `wait()` for them. Liveness is read from `/proc/<pid>/stat`, and a
**zombie counts as dead**: on machines whose PID 1 does not reap orphans (containers, some VM
init shims — this project's CI machines among them) an exited postmaster stays a zombie
forever, and `kill(pid, 0)` would call it alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the `(comm)` field: [state, ppid, pgrp, session, …]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    end = raw.rfind(")")
    if end < 0:
        return None
    return raw[end + 2 :].split()


def is_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie."""
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X", "x")


def parent(pid: int) -> int | None:
    """The parent's pid (None: no such process)."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def process_group(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [part.decode("utf-8", errors="replace") for part in raw.split(b"\0") if part]


def cwd(pid: int) -> str | None:
    """The working directory of `pid` (None when gone or not permitted)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def exe(pid: int) -> str | None:
    """The executable of `pid` (None when gone or not permitted)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def all_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            pids.append(int(entry))
    return pids


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    members = []
    for pid in all_pids():
        fields = _stat_fields(pid)
        if fields and fields[0] not in ("Z", "X", "x") and int(fields[2]) == pgid:
            members.append(pid)
    return members


def find_by_cmdline(needle: str) -> list[int]:
    """Live processes (other than us) with `needle` in one of their command-line arguments."""
    me = os.getpid()
    found = []
    for pid in all_pids():
        if pid == me:
            continue
        if any(needle in arg for arg in cmdline(pid)) and is_alive(pid):
            found.append(pid)
    return found


def environ_has(pid: int, entry: bytes) -> bool:
    """True when `entry` (`NAME=value`) is one of `pid`'s environment strings (readable only
    for our own processes or as root)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return False
    return entry in raw.split(b"\0")


def find_by_environ(entry: bytes) -> list[int]:
    """Live processes (other than us) whose environment holds `entry` (`NAME=value`)."""
    me = os.getpid()
    return [pid for pid in all_pids() if pid != me and environ_has(pid, entry) and is_alive(pid)]


def send(pid: int, signum: int) -> None:
    """Signal one process; a process that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def wait_dead(pids: Iterable[int], timeout: float, interval: float = 0.02) -> bool:
    """Wait until none of `pids` is alive; False on timeout."""
    pending = [p for p in pids if is_alive(p)]
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        pending = [p for p in pending if is_alive(p)]
    return True


def kill_group_members(pgid: int, timeout: float = 5.0) -> bool:
    """SIGKILL every live member of process group `pgid` (members are checked one by one, so
    a recycled group id of an unrelated process is never signalled blindly); waits for them."""
    deadline = time.monotonic() + timeout
    while True:
        members = group_members(pgid)
        if not members:
            return True
        for pid in members:
            send(pid, signal.SIGKILL)
        if time.monotonic() >= deadline:
            return not group_members(pgid)
        wait_dead(members, min(1.0, max(0.0, deadline - time.monotonic())))


def kill_processes_using(directory: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process (other than us) that names `directory` or a path below it on
    its command line, or works inside it; returns their pids once they are gone.

    For a directory about to be emptied: an orphaned `initdb` or bootstrap backend of a
    crashed engine would otherwise keep writing into it.
    """
    prefix = str(directory).rstrip("/")
    me = os.getpid()
    victims = []
    for pid in all_pids():
        if pid == me or not is_alive(pid):
            continue
        where = cwd(pid) or ""
        args = cmdline(pid)
        if _under(where, prefix) or any(_mentions(arg, prefix) for arg in args):
            victims.append(pid)
    for pid in victims:
        send(pid, signal.SIGKILL)
    wait_dead(victims, timeout)
    return victims


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _mentions(arg: str, prefix: str) -> bool:
    """`arg` is the path, a path below it, or `--opt=<path…>`."""
    value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
    return _under(value, prefix)
