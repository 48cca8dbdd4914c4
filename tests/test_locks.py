"""FileLock: exclusive across threads and processes, cancellable, with a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sqlrs_engine import locks
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.locks import FileLock, LockTimeout

HOLDER = textwrap.dedent(
    """
    import sys, time
    from sqlrs_engine.locks import FileLock
    with FileLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
    """
)


def _spawn_holder(path: Path, hold: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(hold)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_acquire_release_and_file_stays(tmp_path: Path) -> None:
    path = tmp_path / ".init.lock"
    lock = FileLock(path)
    assert not lock.locked
    with lock:
        assert lock.locked
        assert path.exists()
    assert not lock.locked
    assert path.exists()
    with FileLock(path, timeout=0.1):  # re-acquirable at once
        pass
    assert locks._thread_locks == {}


def test_threads_are_mutually_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    inside = 0
    max_inside = 0
    count = 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal inside, max_inside, count
        for _ in range(5):
            with FileLock(path, timeout=30):
                with guard:
                    inside += 1
                    max_inside = max(max_inside, inside)
                time.sleep(0.002)
                with guard:
                    inside -= 1
                    count += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count == 40
    assert max_inside == 1
    assert locks._thread_locks == {}


def test_other_process_blocks_then_releases(tmp_path: Path) -> None:
    path = tmp_path / "p.lock"
    holder = _spawn_holder(path, 0.6)
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as info:
            FileLock(path, timeout=0.15).acquire()
        assert time.monotonic() - started < 0.5
        assert str(path) in str(info.value)
        with FileLock(path, timeout=10):
            assert holder.poll() is not None or holder.stdout is not None
            # the holder must have released before we got in
            assert holder.wait(timeout=5) == 0
    finally:
        holder.kill()
        holder.wait()


def test_we_block_other_process(tmp_path: Path) -> None:
    path = tmp_path / "q.lock"
    with FileLock(path):
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path), "0"], stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.3)
        assert proc.poll() is None  # still waiting for us
    out, _ = proc.communicate(timeout=10)
    assert out.split() == ["locked", "released"]


def test_crashed_holder_releases_lock(tmp_path: Path) -> None:
    path = tmp_path / "crash.lock"
    holder = _spawn_holder(path, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    with FileLock(path, timeout=5):
        pass
    assert time.monotonic() - started < 1


def test_cancel_while_waiting_for_thread(tmp_path: Path) -> None:
    path = tmp_path / "c.lock"
    token = CancelToken()
    with FileLock(path):
        threading.Timer(0.2, token.cancel).start()
        started = time.monotonic()
        with pytest.raises(JobFailure) as info:
            FileLock(path, cancel=token).acquire()
        assert time.monotonic() - started < 1.5
    assert info.value.code == "cancelled"
    assert locks._thread_locks == {}


def test_cancel_while_waiting_for_process(tmp_path: Path) -> None:
    path = tmp_path / "cp.lock"
    holder = _spawn_holder(path, 30)
    try:
        token = CancelToken()
        threading.Timer(0.2, token.cancel).start()
        with pytest.raises(JobFailure) as info:
            FileLock(path, cancel=token).acquire()
        assert info.value.code == "cancelled"
    finally:
        holder.kill()
        holder.wait()


def test_already_cancelled_never_acquires(tmp_path: Path) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(JobFailure):
        FileLock(tmp_path / "a.lock", cancel=token).acquire()


def test_lock_file_replaced_while_waiting(tmp_path: Path) -> None:
    """A waiter that gets a lock on a deleted inode retries on the current file."""
    path = tmp_path / "r.lock"
    first = _spawn_holder(path, 60)
    waiter = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(0.3)
        path.unlink()  # someone removes the lock file while it is held and waited for
        with FileLock(path, timeout=1):  # a new file: free at once
            first.kill()  # the waiter's flock on the old inode succeeds, but must not count
            first.wait()
            time.sleep(0.4)
            assert waiter.poll() is None
        out, _ = waiter.communicate(timeout=10)
        assert out.split() == ["locked", "released"]
    finally:
        for proc in (first, waiter):
            proc.kill()
            proc.wait()


def test_not_reentrant_object(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "n.lock")
    with lock, pytest.raises(RuntimeError):
        lock.acquire()


def test_missing_parent_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileLock(tmp_path / "nope" / "x.lock", timeout=1).acquire()
    assert locks._thread_locks == {}
