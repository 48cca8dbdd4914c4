"""A lock file that is exclusive across processes *and* threads, cancellable, with a timeout.

Used for the base-initialization lock (`base/.init.lock`, SPEC §9.3) and the per-state build
locks (`states/<id>/.build.lock`, §9.4)::

    with FileLock(base / ".init.lock", cancel=token, timeout=None):
        ...  # re-check the marker, do the work, write the marker

How it works:

- **Across processes**: `fcntl.flock(LOCK_EX | LOCK_NB)` on the lock file, polled every
  `poll_interval` seconds. The kernel releases a flock when its holder dies, so a crashed
  engine never leaves a stale lock behind (unlike the reference's create-exclusive file, which
  needs a staleness rule).
- **Across threads of one process**: a per-path `threading.Lock`, taken first. (flock alone
  would also exclude threads that open the file separately, but the thread lock makes waiting
  threads queue without hammering the file.)
- **Cancellation**: while waiting, `cancel` is checked at every poll; a cancelled wait raises
  `errors.cancelled()` (JobFailure `cancelled`). A `timeout` (seconds) raises `LockTimeout`.
- **Deleted lock files**: if the lock file is unlinked or replaced while we wait (someone
  removed the directory), the lock we got is on a dead inode; we notice (inode comparison after
  locking) and retry on the current file, so two holders can never coexist.

The lock file itself is left in place on release (removing it would reopen the race above for
waiters that do not check inodes); it is empty and harmless. The lock is **not** reentrant: the
same thread acquiring the same path twice waits for itself until its timeout/cancel.

The parent directory must exist; it is not created (creating it could resurrect a directory
that a deletion just removed).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType

from sqlrs_engine.cancel import CancelToken

DEFAULT_POLL_INTERVAL = 0.05
"""Seconds between attempts while waiting (the reference polls every 50 ms)."""


class LockTimeout(TimeoutError):
    """The lock was not acquired within the requested timeout."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__(f"timed out after {timeout:g}s waiting for lock {path}")
        self.path = path
        self.timeout = timeout


_registry_lock = threading.Lock()
_thread_locks: dict[str, tuple[threading.Lock, int]] = {}


def _key(path: Path) -> str:
    # Resolve the parent (it must exist), keep the file name as is: the lock file may not exist.
    return os.path.join(os.path.realpath(path.parent), path.name)


def _retain(key: str) -> threading.Lock:
    with _registry_lock:
        lock, refs = _thread_locks.get(key, (None, 0))
        if lock is None:
            lock = threading.Lock()
        _thread_locks[key] = (lock, refs + 1)
        return lock


def _release_ref(key: str) -> None:
    with _registry_lock:
        lock, refs = _thread_locks[key]
        if refs <= 1:
            del _thread_locks[key]
        else:
            _thread_locks[key] = (lock, refs - 1)


class FileLock:
    """An exclusive lock on `path`, shared by threads and processes.

    `with FileLock(path, cancel=token, timeout=None): ...` — or `acquire()` / `release()`.
    One `FileLock` object is one acquisition: do not share an object between threads.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        cancel: CancelToken | None = None,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self.cancel = cancel
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._key = _key(self.path)
        self._fd: int | None = None
        self._thread_lock: threading.Lock | None = None

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Wait for the lock; raises `LockTimeout`, or JobFailure `cancelled` on cancel."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this FileLock object")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        thread_lock = _retain(self._key)
        try:
            self._wait_thread_lock(thread_lock, deadline)
        except BaseException:
            _release_ref(self._key)
            raise
        try:
            self._fd = self._wait_flock(deadline)
        except BaseException:
            thread_lock.release()
            _release_ref(self._key)
            raise
        self._thread_lock = thread_lock

    def release(self) -> None:
        """Release the lock (no-op when not held)."""
        fd, thread_lock = self._fd, self._thread_lock
        if fd is None or thread_lock is None:
            return
        self._fd = None
        self._thread_lock = None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            thread_lock.release()
            _release_ref(self._key)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- waiting -------------------------------------------------------------------------------

    def _check(self, deadline: float | None) -> float:
        """Raise on cancel/timeout; otherwise return how long to sleep before the next try."""
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        if deadline is None:
            return self.poll_interval
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockTimeout(self.path, self.timeout or 0.0)
        return min(self.poll_interval, remaining)

    def _sleep(self, seconds: float) -> None:
        if self.cancel is not None:
            self.cancel.wait(seconds)
        else:
            time.sleep(seconds)

    def _wait_thread_lock(self, lock: threading.Lock, deadline: float | None) -> None:
        while True:
            wait = self._check(deadline)
            if lock.acquire(timeout=wait):
                return

    def _wait_flock(self, deadline: float | None) -> int:
        while True:
            self._check(deadline)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._sleep(self._check(deadline))
                continue
            except BaseException:
                os.close(fd)
                raise
            if self._same_file(fd):
                return fd
            # The file was removed or replaced while we waited: lock the current one instead.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _same_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


__all__ = ["DEFAULT_POLL_INTERVAL", "FileLock", "LockTimeout"]
