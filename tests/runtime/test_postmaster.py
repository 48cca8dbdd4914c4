"""`runtime/postmaster.py` on its own: what it concludes from the processes and the pid file
it sees (the real postmaster cases are in test_host.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.runtime import postmaster


@pytest.fixture
def marked(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line carries a start's mark (as pg_ctl's child does)."""
    mark = f"unix_socket_directories={tmp_path}/run"
    proc = subprocess.Popen(["sh", "-c", "sleep 60", mark], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _pid_file(pgdata: Path, pid: int, status: str) -> None:
    lines = [str(pid), str(pgdata), "1700000000", "5432", "/tmp/s", "127.0.0.1", "0 0", status]
    (pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")


def test_nothing_launched_is_an_exit(tmp_path: Path) -> None:
    with pytest.raises(postmaster.ServerExited) as info:
        postmaster.wait_until_ready(
            tmp_path,
            f"unix_socket_directories={tmp_path}/run",
            serves=lambda _p: True,
            timeout=30,
            cancel=CancelToken(),
        )
    assert info.value.pid is None


def test_a_launched_process_that_never_gets_ready_times_out(
    tmp_path: Path, marked: subprocess.Popen[bytes]
) -> None:
    with pytest.raises(postmaster.StartTimedOut) as info:
        postmaster.wait_until_ready(
            tmp_path,
            f"unix_socket_directories={tmp_path}/run",
            serves=lambda _p: False,
            timeout=0.3,
            cancel=CancelToken(),
        )
    assert info.value.pid == marked.pid
    assert "within 0.3 s" in str(info.value)


def test_ready_status_of_our_pid(tmp_path: Path, marked: subprocess.Popen[bytes]) -> None:
    _pid_file(tmp_path, marked.pid, "ready")
    ready = postmaster.wait_until_ready(
        tmp_path,
        "no-such-mark",
        serves=lambda pid: pid == marked.pid,
        timeout=30,
        cancel=CancelToken(),
    )
    assert ready == postmaster.Ready(marked.pid, 5432)


def test_exit_while_starting(tmp_path: Path, marked: subprocess.Popen[bytes]) -> None:
    _pid_file(tmp_path, marked.pid, "starting")
    os.kill(marked.pid, 9)
    with pytest.raises(postmaster.ServerExited) as info:
        postmaster.wait_until_ready(
            tmp_path,
            "no-such-mark",
            serves=lambda pid: pid == marked.pid,
            timeout=30,
            cancel=CancelToken(),
        )
    assert info.value.pid == marked.pid


def test_cancel(tmp_path: Path, marked: subprocess.Popen[bytes]) -> None:
    _pid_file(tmp_path, marked.pid, "starting")
    token = CancelToken()
    token.cancel()
    with pytest.raises(JobFailure) as info:
        postmaster.wait_until_ready(
            tmp_path, "no-such-mark", serves=lambda _p: True, timeout=30, cancel=token
        )
    assert info.value.code == "cancelled"


def test_wait_until_gone(tmp_path: Path, marked: subprocess.Popen[bytes]) -> None:
    _pid_file(tmp_path, marked.pid, "stopping")
    assert not postmaster.wait_until_gone(marked.pid, tmp_path, 0.2)  # still running
    (tmp_path / "postmaster.pid").unlink()
    marked.kill()
    assert postmaster.wait_until_gone(marked.pid, tmp_path, 30)
