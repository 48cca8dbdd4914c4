"""The run executor: event order, steps, decoding, back-pressure and cancellation.

The runtime here runs real child processes (`python -c <script>` through `process.run`, as
the host runtime runs psql), so killing, reaping and pipe back-pressure are real; only
PostgreSQL is left out (tests/e2e/test_runs.py covers the real thing).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlrs_engine import process
from sqlrs_engine.actors.instance import RESTARTING, RESTORING, STARTED, RunningServer
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.runs.executor import (
    ChannelClosed,
    Event,
    EventChannel,
    RunExecution,
)
from sqlrs_engine.runs.requests import RunPlan, RunStep
from sqlrs_engine.runtime.base import LogSink, OutputSink, ServerHandle

INSTANCE = "0123456789abcdef0123456789abcdef"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


class ScriptRuntime:
    """`run_client` runs the step's first argument as a Python script, as a real process.

    Scripts write each line with one `write` (a small write reaches the pipe, and so one
    read, whole); `print` may write a line and its newline separately.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bytes | None, Mapping[str, str] | None]] = []

    def run_client(
        self,
        handle: ServerHandle,
        program: str,
        args: Sequence[str],
        *,
        stdin: bytes | None,
        cwd: Path | None,
        on_output: OutputSink,
        cancel: CancelToken,
        env: Mapping[str, str] | None = None,
    ) -> int:
        self.calls.append((list(args), stdin, env))
        result = process.run(
            [sys.executable, "-c", args[0]], stdin=stdin, on_output=on_output, cancel=cancel
        )
        return process.exit_status(result.exit_code)


class ChunkRuntime:
    """`run_client` delivers given chunks directly (exact chunk boundaries)."""

    def __init__(self, chunks: list[tuple[str, bytes]]) -> None:
        self.chunks = chunks

    def run_client(self, *_args: Any, on_output: OutputSink, **_kwargs: Any) -> int:
        for stream, chunk in self.chunks:
            on_output(stream, chunk)
        return 0


class FailingRuntime:
    def run_client(self, *_args: Any, **_kwargs: Any) -> int:
        raise JobFailure("internal_error", "cannot run psql", "psql is not installed")


def handle(data_dir: Path = Path("/nonexistent")) -> ServerHandle:
    return ServerHandle("host:1", data_dir, "127.0.0.1", 5432)


def running(runtime: Any, logs: Sequence[str] = ()) -> Callable[[LogSink], RunningServer]:
    def ensure(log_line: LogSink) -> RunningServer:
        for line in logs:
            log_line(line)
        return RunningServer(handle(), runtime, bool(logs))

    return ensure


def plan(*steps: RunStep) -> RunPlan:
    return RunPlan(INSTANCE, "psql", "psql", steps)


def script(source: str, stdin: str | None = None) -> RunStep:
    return RunStep((source,), stdin)


def run_all(execution: RunExecution) -> list[Event]:
    events = list(execution.stream())
    assert execution.join(10)
    return events


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_events_are_start_output_in_order_then_the_real_exit_code() -> None:
    source = (
        "import sys\n"
        "sys.stdout.write('first\\n'); sys.stdout.flush()\n"
        "sys.stderr.write('oops\\n'); sys.stderr.flush()\n"
        "sys.exit(3)\n"
    )
    events = run_all(RunExecution(plan(script(source)), running(ScriptRuntime())))
    assert [(e["type"], e.get("data"), e.get("exit_code")) for e in events] == [
        ("start", None, None),
        ("stdout", "first\n", None),
        ("stderr", "oops\n", None),
        ("exit", None, 3),
    ]
    assert events[0]["instance_id"] == INSTANCE
    assert all(TS.match(e["ts"]) for e in events)


def test_steps_run_in_order_with_their_own_stdin_and_stop_at_the_first_failure() -> None:
    runtime = ScriptRuntime()
    echo = "import sys; sys.stdout.write(sys.stdin.read())"
    execution = RunExecution(
        plan(
            script(echo, "one\n"),
            script(echo, "two\n"),
            script("import sys; sys.stdout.write('bad\\n'); sys.exit(2)"),
            script("print('never')"),
        ),
        running(runtime),
    )
    events = run_all(execution)
    assert [(e["type"], e.get("data")) for e in events[:-1]] == [
        ("start", None),
        ("stdout", "one\n"),
        ("stdout", "two\n"),
        ("stdout", "bad\n"),
    ]
    assert events[-1]["exit_code"] == 2
    assert len(runtime.calls) == 3
    assert [call[1] for call in runtime.calls] == [b"one\n", b"two\n", None]
    # The connection is injected after the step's own arguments (the DSN for psql).
    assert runtime.calls[0][0][-1] == "postgres://sqlrs@127.0.0.1:5432/postgres"


def test_a_program_killed_by_a_signal_exits_with_128_plus_n() -> None:
    source = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    events = run_all(RunExecution(plan(script(source)), running(ScriptRuntime())))
    assert events[-1] == {"type": "exit", "ts": events[-1]["ts"], "exit_code": 137}


def test_utf8_split_across_reads_is_decoded_whole_and_bad_bytes_are_replaced() -> None:
    chunks = [
        ("stdout", b"caf\xc3"),
        ("stderr", b"\xe2\x82"),
        ("stdout", b"\xa9 ok\n"),
        ("stderr", b"\xac\n"),
        ("stdout", b"bad \xff\n\xc3"),
    ]
    events = run_all(RunExecution(plan(RunStep(())), running(ChunkRuntime(chunks))))
    assert [(e["type"], e.get("data")) for e in events] == [
        ("start", None),
        ("stdout", "caf"),
        ("stdout", "é ok\n"),
        ("stderr", "€\n"),
        ("stdout", "bad \ufffd\n"),
        ("stdout", "\ufffd"),  # a dangling lead byte at the end of the step
        ("exit", None),
    ]


def test_large_output_is_streamed_through_a_bounded_channel() -> None:
    total = 8 * 1024 * 1024
    source = (
        "import sys\n"
        f"for _ in range({total // 65536}):\n"
        "    sys.stdout.write('x' * 65535 + '\\n')\n"
    )
    execution = RunExecution(plan(script(source)), running(ScriptRuntime()), capacity=4)
    stream = execution.stream()
    assert next(stream)["type"] == "start"
    first = next(stream)
    # The consumer pauses: the producer fills the channel and then has to wait.
    assert _wait_until(lambda: execution.channel.high_water == 4)
    received = len(first["data"])
    last: Event = first
    for event in stream:
        last = event
        if event["type"] == "stdout":
            received += len(event["data"])
    assert last["type"] == "exit" and last["exit_code"] == 0
    assert received == total
    assert execution.channel.high_water == 4


SLEEPER = (
    "import os, sys, time\n"
    "sys.stdout.write(f'{os.getpid()}\\n'); sys.stdout.flush()\n"
    "time.sleep(120)\n"
)


def test_closing_the_stream_kills_the_running_program() -> None:
    execution = RunExecution(plan(script(SLEEPER)), running(ScriptRuntime()))
    stream = execution.stream()
    assert next(stream)["type"] == "start"
    pid = int(next(stream)["data"])
    assert pid_alive(pid)
    stream.close()
    assert execution.join(10)
    assert not pid_alive(pid)


def test_a_client_that_goes_away_while_nothing_is_printed_kills_the_program() -> None:
    gone = threading.Event()
    execution = RunExecution(plan(script(SLEEPER)), running(ScriptRuntime()))
    stream = execution.stream(gone.is_set, poll=0.05)
    assert next(stream)["type"] == "start"
    pid = int(next(stream)["data"])
    gone.set()
    assert list(stream) == []
    assert execution.join(10)
    assert not pid_alive(pid)


def test_a_producer_blocked_on_a_full_channel_is_released_and_killed_by_close() -> None:
    source = (
        "import os, sys\n"
        "sys.stderr.write(str(os.getpid()) + '\\n'); sys.stderr.flush()\n"
        "while True:\n"
        "    sys.stdout.write('y' * 4096)\n"
    )
    execution = RunExecution(plan(script(source)), running(ScriptRuntime()), capacity=2)
    stream = execution.stream()
    assert next(stream)["type"] == "start"
    pid = None
    while pid is None:
        event = next(stream)
        if event["type"] == "stderr":
            pid = int(event["data"])
    assert _wait_until(lambda: execution.channel.high_water == 2)
    stream.close()
    assert execution.join(10)
    assert not pid_alive(pid)


def test_recovery_log_lines_come_before_start() -> None:
    execution = RunExecution(
        plan(script("import sys; sys.stdout.write('hi\\n')")),
        running(ScriptRuntime(), logs=[RESTARTING, RESTORING, STARTED]),
    )
    events = run_all(execution)
    assert [(e["type"], e.get("data")) for e in events] == [
        ("log", "run: server not running - restarting"),
        ("log", "run: restoring runtime"),
        ("log", "run: server started"),
        ("start", None),
        ("stdout", "hi\n"),
        ("exit", None),
    ]


def test_a_server_that_cannot_be_restarted_ends_the_stream_with_an_error_event() -> None:
    def ensure(log_line: LogSink) -> RunningServer:
        log_line(RESTARTING)
        raise JobFailure("internal_error", "instance runtime dir is missing", "/x does not exist")

    events = run_all(RunExecution(plan(script("print(1)")), ensure))
    assert [e["type"] for e in events] == ["log", "error"]
    assert events[1]["error"] == {
        "code": "internal_error",
        "message": "run failed",
        "details": "instance runtime dir is missing: /x does not exist",
    }


def test_a_program_that_cannot_start_is_an_error_event_after_start() -> None:
    events = run_all(RunExecution(plan(RunStep(())), running(FailingRuntime())))
    assert [e["type"] for e in events] == ["start", "error"]
    assert events[1]["error"]["details"] == "cannot run psql: psql is not installed"


def test_an_unexpected_exception_is_an_error_event_not_a_hang() -> None:
    def ensure(_log_line: LogSink) -> RunningServer:
        raise RuntimeError("boom")

    events = run_all(RunExecution(plan(RunStep(())), ensure))
    assert [e["type"] for e in events] == ["error"]
    assert events[0]["error"]["details"] == "RuntimeError: boom"


def test_channel_put_waits_for_room_and_fails_once_closed() -> None:
    channel = EventChannel(1)
    channel.put({"n": 1})
    done = threading.Event()
    failure: list[BaseException] = []

    def producer() -> None:
        try:
            channel.put({"n": 2})
        except ChannelClosed as error:
            failure.append(error)
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert not done.wait(0.1)  # full: the producer waits
    channel.close()
    assert done.wait(5)
    thread.join()
    assert failure and channel.get(0) is None  # nothing is delivered after close
    assert channel.offer({"n": 3}) is False


def test_channel_get_times_out_when_empty() -> None:
    assert EventChannel().get(0.01) is None


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Bounded polling for a condition another thread makes true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def test_script_runtime_really_runs_processes() -> None:
    """Guard: the fake runs a real child, so the kill tests above are meaningful."""
    runtime = ScriptRuntime()
    out: list[bytes] = []
    code = runtime.run_client(
        handle(),
        "psql",
        ["import os; print(os.getpid())"],
        stdin=None,
        cwd=None,
        on_output=lambda _s, chunk: out.append(chunk),
        cancel=CancelToken(),
    )
    assert code == 0 and int(b"".join(out)) != os.getpid()
