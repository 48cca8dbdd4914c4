"""process.run: streaming, stdin, exit codes, cancel, bounded output, identity."""

from __future__ import annotations

import os
import pwd
import sys
import threading
import time
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.process import (
    LineBuffer,
    ProcessError,
    ProcessTimeout,
    RunAs,
    exit_status,
    run,
    run_lines,
)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry))
    return members


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_streams_separately_and_as_produced() -> None:
    code = (
        "import sys, time\n"
        "sys.stdout.write('one\\n'); sys.stdout.flush(); time.sleep(0.3)\n"
        "sys.stderr.write('two\\n'); sys.stderr.flush(); time.sleep(0.3)\n"
        "sys.stdout.write('three\\n'); sys.stdout.flush()\n"
    )
    seen: list[tuple[str, bytes, float]] = []
    started = time.monotonic()
    result = run(_py(code), on_output=lambda s, c: seen.append((s, c, time.monotonic())))
    ended = time.monotonic()
    assert result.exit_code == 0
    assert [(s, c) for s, c, _ in seen] == [
        ("stdout", b"one\n"),
        ("stderr", b"two\n"),
        ("stdout", b"three\n"),
    ]
    # the first chunk arrived long before the end: streamed, not buffered until exit
    assert seen[0][2] - started < ended - started - 0.4
    assert result.output == "one\ntwo\nthree\n"
    assert not result.truncated


def test_big_stdin_does_not_deadlock() -> None:
    data = os.urandom(4 * 1024 * 1024)
    received = bytearray()
    result = run(
        ["cat"],
        stdin=data,
        on_output=lambda s, c: received.extend(c),
        tail_bytes=1024,
        timeout=30,
    )
    assert result.exit_code == 0
    assert bytes(received) == data


def test_stdin_not_read_is_fine() -> None:
    result = run(["true"], stdin=b"x" * (1024 * 1024), timeout=10)
    assert result.exit_code == 0


def test_no_stdin_means_devnull() -> None:
    result = run(["cat"], timeout=10)
    assert result.exit_code == 0
    assert result.output == ""


@pytest.mark.parametrize("code", [0, 1, 3, 255])
def test_exit_codes(code: int) -> None:
    assert run(["sh", "-c", f"exit {code}"]).exit_code == code


def test_signal_exit_code_and_shell_status() -> None:
    result = run(["sh", "-c", "kill -9 $$"])
    assert result.exit_code == -9
    assert exit_status(result.exit_code) == 137
    assert exit_status(2) == 2


def test_check_raises_with_output() -> None:
    with pytest.raises(ProcessError) as info:
        run(["sh", "-c", "echo boom >&2; exit 4"], check=True)
    assert info.value.exit_code == 4
    assert "boom" in info.value.output
    assert "sh exited with code 4: boom" in str(info.value)


def test_missing_program() -> None:
    with pytest.raises(ProcessError) as info:
        run(["/nonexistent/program"])
    assert info.value.exit_code is None
    assert "cannot start program" in str(info.value)


def test_env_and_cwd(tmp_path: Path) -> None:
    result = run(["sh", "-c", 'echo "$FOO"; pwd'], env={"FOO": "bar"}, cwd=tmp_path)
    assert result.output.split() == ["bar", str(tmp_path)]
    clean = run(["/usr/bin/env"], env={"ONLY": "1"}, inherit_env=False)
    assert clean.output.strip() == "ONLY=1"


def test_cancel_kills_whole_group_quickly() -> None:
    token = CancelToken()
    pids: list[int] = []

    def on_output(stream: str, chunk: bytes) -> None:
        pids.extend(int(p) for p in chunk.split())

    threading.Timer(0.3, token.cancel).start()
    started = time.monotonic()
    with pytest.raises(JobFailure) as info:
        run(
            ["sh", "-c", "sleep 100 & echo $!; sleep 100 & echo $!; wait"],
            cancel=token,
            on_output=on_output,
        )
    assert time.monotonic() - started < 2
    assert info.value.code == "cancelled"
    assert info.value.message == "task cancelled"
    assert len(pids) == 2
    assert not any(_alive(p) for p in pids)


def test_cancel_escalates_to_sigkill() -> None:
    token = CancelToken()
    pids: list[int] = []
    threading.Timer(0.3, token.cancel).start()
    started = time.monotonic()
    with pytest.raises(JobFailure):
        run(
            ["sh", "-c", "trap '' TERM; echo $$; sleep 100 & echo $!; wait"],
            cancel=token,
            term_grace=0.3,
            on_output=lambda s, c: pids.extend(int(p) for p in c.split()),
        )
    assert time.monotonic() - started < 2
    assert pids
    assert not any(_alive(p) for p in pids)


def test_already_cancelled_does_not_start() -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(JobFailure):
        run(["sh", "-c", "echo started"], cancel=token)


def test_exception_in_callback_kills_group() -> None:
    pids: list[int] = []

    def on_output(stream: str, chunk: bytes) -> None:
        pids.extend(int(p) for p in chunk.split())
        raise ValueError("callback failed")

    with pytest.raises(ValueError, match="callback failed"):
        run(["sh", "-c", "sleep 100 & echo $!; wait"], on_output=on_output)
    assert pids
    assert not any(_alive(p) for p in pids)


def test_leftovers_killed_when_leader_exits() -> None:
    started = time.monotonic()
    result = run(["sh", "-c", "sleep 100 & echo $!"], timeout=10)
    assert time.monotonic() - started < 2
    pid = int(result.output.strip())
    assert not _alive(pid)


def test_spares_group_leaves_a_launched_child_running() -> None:
    """`pg_ctl start -W`'s case: the launcher exits before its child has left the group."""
    result = run(["sh", "-c", "sleep 100 >/dev/null 2>&1 & echo $!"], timeout=10, spares_group=True)
    pid = int(result.output.strip())
    try:
        assert result.exit_code == 0
        assert _alive(pid)
    finally:
        os.kill(pid, 9)


def test_spares_group_still_kills_the_group_on_cancel() -> None:
    token = CancelToken()
    pids: list[int] = []

    def on_line(_stream: str, line: str) -> None:
        pids.append(int(line))
        token.cancel()

    with pytest.raises(JobFailure):
        run_lines(
            ["sh", "-c", "sleep 100 >/dev/null 2>&1 & echo $!; sleep 100"],
            on_line=on_line,
            cancel=token,
            timeout=30,
            spares_group=True,
        )
    assert pids and not _alive(pids[0])


def test_timeout_kills() -> None:
    started = time.monotonic()
    with pytest.raises(ProcessTimeout) as info:
        run(["sh", "-c", "echo waiting; sleep 100"], timeout=0.3)
    assert time.monotonic() - started < 2
    assert "timed out" in str(info.value)
    assert "waiting" in info.value.output


def test_bounded_output_keeps_the_tail() -> None:
    code = "import sys\nfor i in range(200000): print(f'line {i}')\n"
    total = 0

    def count(stream: str, chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)

    result = run(_py(code), tail_bytes=1000, on_output=count)
    assert result.exit_code == 0
    assert total > 2_000_000
    assert result.truncated
    assert len(result.output) == 1000
    assert result.output.endswith("line 199999\n")


def test_run_lines() -> None:
    lines: list[tuple[str, str]] = []
    run_lines(
        ["sh", "-c", "printf 'a\\r\\nb\\n'; printf 'err\\n' >&2; printf 'partial'"],
        on_line=lambda s, line: lines.append((s, line)),
    )
    assert sorted(lines) == sorted(
        [("stdout", "a"), ("stdout", "b"), ("stderr", "err"), ("stdout", "partial")]
    )
    assert [x for x in lines if x[0] == "stdout"][-1] == ("stdout", "partial")


def test_run_lines_check() -> None:
    with pytest.raises(ProcessError):
        run_lines(["false"], on_line=lambda s, line: None, check=True)


def test_line_buffer_pieces_and_invalid_utf8() -> None:
    got: list[str] = []
    buf = LineBuffer(lambda s, line: got.append(line), max_line=4)
    buf.feed("stdout", b"abcdefghij")
    buf.feed("stdout", b"\xffk\nxy")
    buf.flush()
    assert got == ["abcd", "efgh", "ij\ufffdk", "xy"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_run_as_other_user() -> None:
    user = RunAs.from_name("postgres")
    entry = pwd.getpwnam("postgres")
    assert (user.uid, user.gid) == (entry.pw_uid, entry.pw_gid)
    result = run(["sh", "-c", 'id -u; id -g; echo "$HOME"; echo "$USER"; pwd'], user=user)
    out = result.output.split()
    assert out[:4] == [str(entry.pw_uid), str(entry.pw_gid), entry.pw_dir, "postgres"]
    assert out[4] == (entry.pw_dir if os.path.isdir(entry.pw_dir) else "/")
    groups = run(["id", "-G"], user=user).output.split()
    assert set(groups) == {str(entry.pw_gid), *(str(g) for g in user.groups)}


def test_current_identity() -> None:
    me = RunAs.current()
    assert me.uid == os.geteuid()
    # running "as myself" needs no privilege and changes nothing
    assert run(["id", "-u"], user=me).output.strip() == str(os.geteuid())
