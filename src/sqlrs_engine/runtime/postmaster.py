"""Waiting on a postmaster that `pg_ctl` launched or signalled without waiting (`-W`).

`pg_ctl start -w` and `pg_ctl stop -w` look at `postmaster.pid` only every 100 ms
(PostgreSQL's `WAITS_PER_SEC`): a server ready after 40 ms is reported after 100, and a stop
always takes at least 100 ms. On a cache hit that start step is most of the gap to the floor,
and every build step pays both again when it restarts its server. The host runtime therefore
runs `pg_ctl … -W` (pg_ctl still forks the postmaster into its own session, so it outlives the
engine as before, and still sends the stop signal as the server user) and waits here, watching
what `-w` watches, more closely.

Start (`wait_until_ready`):

- **ready**: `postmaster.pid` names the postmaster and its status line says `ready` (or
  `standby`) — the postmaster writes that line only after its sockets are open, which is
  exactly what `pg_ctl -w` waits for. The file is read again whenever inotify reports a write
  in PGDATA (no CPU spent between writes, which matters when 16 servers start at once), at
  the latest every `STATUS_POLL` seconds where inotify is not available (out of instances);
- **exited**: a pidfd of the postmaster (readable the moment it exits; a short poll where
  pidfds do not exist) — a bad setting, a taken port or a broken data dir fail at once. The pid
  comes from `postmaster.pid`; a postmaster that dies before writing it (it reads its
  configuration first) is noticed by looking for its command line (`cmdline_mark`, which only a
  start on this run dir carries) every `SEARCH_EVERY` seconds;
- the **deadline** and the caller's **cancel** token.

Stop (`wait_until_gone`): the postmaster's exit, on its pidfd (no polling at all), then its
`postmaster.pid` gone — what `pg_ctl stop -w` waits for.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.dbms import postgres as pg
from sqlrs_engine.runtime import procs

STATUS_POLL = 0.002
"""Seconds between looks at `postmaster.pid` without inotify (a ~100-byte read; a cache hit
waits on it)."""

WATCHED_POLL = 0.02
"""With inotify, the longest sleep: the cancel token is looked at this often (and a write
missed in an overflowed event queue costs no more than this)."""

SEARCH_EVERY = 0.1
"""Seconds between /proc scans for a postmaster that has not written `postmaster.pid` yet
(a scan costs a few ms; only a server that takes this long to lock its data dir pays it; an
early failure is noticed as soon as with `pg_ctl -w`'s 100 ms steps)."""

READY_STATES = frozenset({"ready", "standby"})
"""`postmaster.pid` status lines that `pg_ctl -w` accepts as started."""


class StartupError(Exception):
    """The postmaster did not become ready."""


class ServerExited(StartupError):
    """The postmaster exited before it was ready (its log says why)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        which = f"the postmaster (pid {pid})" if pid is not None else "the postmaster"
        super().__init__(f"{which} exited during start-up")


class StartTimedOut(StartupError):
    """The postmaster was still not ready at the deadline (it is left running)."""

    def __init__(self, pid: int | None, timeout: float) -> None:
        self.pid = pid
        super().__init__(f"the server did not become ready within {timeout:g} s")


@dataclass(frozen=True)
class Ready:
    """What `postmaster.pid` said once the server was ready."""

    pid: int
    port: int | None


def wait_until_ready(
    pgdata: Path,
    cmdline_mark: str,
    *,
    serves: Callable[[int], bool],
    timeout: float,
    cancel: CancelToken,
    poll: float = STATUS_POLL,
) -> Ready:
    """Wait until the postmaster launched on `pgdata` reports `ready` in `postmaster.pid`.

    `serves(pid)`: is `pid` a live postgres serving `pgdata` (a pid file may name a process
    that is not ours any more). Raises `ServerExited`, `StartTimedOut`, or the cancel token's
    `cancelled` JobFailure; the caller kills what is left and reads the server log.
    """
    deadline = time.monotonic() + timeout
    watch = _Postmaster()
    writes = _DirWrites.watch(pgdata)
    if writes is not None:  # writes made before it are seen by the first read below
        watch.also_wake_on(writes.fd)
        poll = max(poll, WATCHED_POLL)
    next_search = time.monotonic() + SEARCH_EVERY
    try:
        while True:
            info = pg.read_postmaster_pid(pgdata)
            if info is not None and watch.pid is None and serves(info.pid):
                watch.follow(info.pid)
            if info is not None and info.pid == watch.pid and info.status in READY_STATES:
                return Ready(info.pid, info.port)
            now = time.monotonic()
            if watch.pid is None and now >= next_search:
                next_search = now + SEARCH_EVERY
                found = _launched(cmdline_mark)
                if found is None and pg.read_postmaster_pid(pgdata) is None:
                    raise ServerExited(None)
                if found is not None:
                    watch.follow(found)
            if watch.pid is not None and watch.exited():
                raise ServerExited(watch.pid)
            if now >= deadline:
                raise StartTimedOut(watch.pid, timeout)
            cancel.raise_if_cancelled()
            watch.sleep(poll, cancel)  # ends at a write in PGDATA or the postmaster's exit
            if writes is not None:
                writes.drain()
    finally:
        watch.close()
        if writes is not None:
            writes.close()


def wait_until_gone(pid: int, pgdata: Path, timeout: float) -> bool:
    """Wait until the postmaster `pid` has exited and its `postmaster.pid` is gone (it removes
    the file on its way out); False when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    watch = _Postmaster()
    watch.follow(pid)
    try:
        while True:
            exited = watch.exited()
            if exited:
                info = pg.read_postmaster_pid(pgdata)
                if info is None or info.pid != pid:
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if exited:  # the file normally goes first; a pidfd stays readable from now on
                time.sleep(min(left, STATUS_POLL))
            else:  # the pidfd wakes us at the exit
                watch.sleep(left if watch.has_pidfd else min(left, STATUS_POLL), None)
    finally:
        watch.close()


def _launched(cmdline_mark: str) -> int | None:
    """The process pg_ctl launched (its forked child, before or after it execs `sh -c 'exec
    postgres …'`: the same pid throughout), found by the mark in its command line."""
    pids = procs.find_by_cmdline(cmdline_mark)
    leaders = [pid for pid in pids if procs.process_group(pid) == pid]  # pg_ctl's setsid()
    candidates = leaders or pids
    return min(candidates) if candidates else None


class _Postmaster:
    """The postmaster's pid and, where the kernel has them, a pidfd to sleep on."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self._fd: int | None = None
        self._also: list[int] = []

    def also_wake_on(self, fd: int) -> None:
        """`sleep` also ends when `fd` is readable."""
        self._also.append(fd)

    def follow(self, pid: int) -> None:
        self.pid = pid
        with contextlib.suppress(OSError, AttributeError):
            self._fd = os.pidfd_open(pid)

    def exited(self) -> bool:
        if self.pid is None:
            return False
        if self._fd is not None and _readable([self._fd], 0):
            return True
        return not procs.is_alive(self.pid)

    @property
    def has_pidfd(self) -> bool:
        return self._fd is not None

    def sleep(self, seconds: float, cancel: CancelToken | None) -> None:
        """Up to `seconds`, waking early when the postmaster exits or an `also_wake_on` fd is
        readable; without any fd, early on cancel (with fds, callers keep `seconds` short
        enough to look at their token)."""
        fds = ([self._fd] if self._fd is not None else []) + self._also
        if fds:
            _readable(fds, seconds)
        elif cancel is not None:
            cancel.wait(seconds)
        else:
            time.sleep(seconds)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _readable(fds: list[int], seconds: float) -> bool:
    """Wait up to `seconds` for one of `fds` to be readable (poll(2): no FD_SETSIZE limit,
    which a busy engine's descriptors can pass)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(seconds * 1000 + 0.999))))


class _DirWrites:
    """An inotify watch on one directory's writes (not its subdirectories'): its fd becomes
    readable when a file in it is created, written or closed after writing."""

    _MASK = 0x2 | 0x8 | 0x80 | 0x100  # IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
    _FLAGS = os.O_NONBLOCK | os.O_CLOEXEC  # IN_NONBLOCK, IN_CLOEXEC have the same values

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def watch(cls, directory: Path) -> _DirWrites | None:
        """A watch on `directory`, or None where inotify is missing or exhausted (the caller
        polls instead)."""
        libc = _libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(cls._FLAGS)
        if fd < 0:
            return None
        if libc.inotify_add_watch(fd, os.fsencode(directory), cls._MASK) < 0:
            os.close(fd)
            return None
        return cls(fd)

    def drain(self) -> None:
        """Forget the events read so far (the caller re-reads the file it cares about)."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.fd, 65536):
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


_LIBC: list[ctypes.CDLL | None] = []


def _libc() -> ctypes.CDLL | None:
    """The C library, for inotify (the standard library has no binding); None without it."""
    if not _LIBC:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        except (OSError, AttributeError):
            libc = None
        _LIBC.append(libc)
    return _LIBC[0]


__all__ = [
    "READY_STATES",
    "SEARCH_EVERY",
    "STATUS_POLL",
    "Ready",
    "ServerExited",
    "StartTimedOut",
    "StartupError",
    "wait_until_gone",
    "wait_until_ready",
]
