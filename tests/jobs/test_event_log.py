"""The job event log: typed appends, their order in the Registry, and the heartbeat.

The heartbeat logic is driven through `tick()` with a hand-moved clock, so the 500 ms rule
(SPEC §4.4) is checked exactly and without sleeping; one test runs the real heartbeat thread
against the real Registry and waits for its repeat by event, not by time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine.actors.events import END
from sqlrs_engine.clock import parse_rfc3339
from sqlrs_engine.jobs.event_log import (
    BATCH_LINES,
    DEFAULT_HEARTBEAT,
    MAX_BATCHES_IN_FLIGHT,
    MAX_HEARTBEAT,
    MAX_STORED_LINE,
    MIN_HEARTBEAT,
    Item,
    JobEventLog,
    Stored,
    clamp_heartbeat,
)
from sqlrs_engine.jobs.supervisor import RegistrySink
from sqlrs_engine.persistence.jobs import RowChange
from tests.jobs.conftest import ASK, Recorded, ScriptRuntime, World, psql_request


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def heartbeat_log(period: float = DEFAULT_HEARTBEAT) -> tuple[JobEventLog, Recorded, ManualClock]:
    clock = ManualClock()
    sink = Recorded()
    return JobEventLog(sink, period, clock), sink, clock


@pytest.mark.parametrize(
    ("requested", "period"),
    [
        (0.5, 0.5),
        (0.0, MIN_HEARTBEAT),
        (0.1, MIN_HEARTBEAT),
        (MIN_HEARTBEAT, MIN_HEARTBEAT),
        (0.75, 0.75),
        (MAX_HEARTBEAT, MAX_HEARTBEAT),
        (5.0, MAX_HEARTBEAT),
        (-1.0, MIN_HEARTBEAT),
    ],
)
def test_heartbeat_period_is_clamped(requested: float, period: float) -> None:
    """SPEC §4.4: configurable, clamped to 200 ms - 1 s."""
    assert clamp_heartbeat(requested) == period


@pytest.mark.parametrize(("requested", "period"), [(0.05, MIN_HEARTBEAT), (3.0, MAX_HEARTBEAT)])
def test_the_log_repeats_at_the_clamped_period(requested: float, period: float) -> None:
    """The clamp is what the log actually uses, not just what a helper returns."""
    log, sink, clock = heartbeat_log(requested)
    log.task("execute-0", "running")
    clock.advance(period - 0.01)
    assert log.tick() is False
    clock.advance(0.01)
    assert log.tick() is True
    assert len(sink.events) == 2


def test_appends_have_their_shape_timestamp_and_wait_mode() -> None:
    """Status changes are waited for (a job never looks finished before they are stored),
    with everything appended before them; a running task is sent at once but not waited for;
    other task changes and log lines wait for the next batch (issue 16)."""
    log, sink, _ = heartbeat_log()

    def shapes() -> list[tuple[dict[str, Any], bool]]:
        return [({k: v for k, v in e.items() if k != "ts"}, waited) for e, waited in sink.events]

    running = {"type": "status", "status": "running"}
    task_running = {"type": "task", "task_id": "execute-0", "status": "running"}
    line = {"type": "log", "message": "psql: start"}
    error = {"code": "internal_error", "message": "psql failed"}
    task_failed = {**task_running, "status": "failed", "message": "psql failed", "error": error}
    log.status("running")
    assert shapes() == [(running, True)]
    log.task("execute-0", "running")
    assert shapes() == [(running, True), (task_running, False)]
    log.log("psql: start")
    log.task("execute-0", "failed", error)
    log.status("failed", wait=False)
    assert shapes() == [(running, True), (task_running, False)], "nothing more sent yet"
    log.error(error)
    failed = {"type": "status", "status": "failed"}
    assert shapes() == [
        (running, True),
        (task_running, False),  # found stored when the next batch went out: never waited for
        (line, True),
        (task_failed, True),
        (failed, True),
        ({"type": "error", "error": error}, True),
    ]
    log.result({"dsn": "postgres://x"})
    assert shapes()[-1] == ({"type": "result", "result": {"dsn": "postgres://x"}}, True)
    stamps = [parse_rfc3339(e["ts"]) for e, _ in sink.events]
    assert stamps == sorted(stamps)


def test_row_changes_travel_in_the_batch_of_their_event() -> None:
    """A task's row change and its `task` event, and the job's row change and its status,
    are sent together, so the Registry stores each pair in one transaction."""
    log, sink, _ = heartbeat_log()
    log.task("plan", "succeeded", row={"status": "succeeded"})
    log.task("execute-0", "succeeded", row={"status": "succeeded", "cached": True})
    log.job_row({"status": "succeeded"})
    log.status("succeeded")
    assert len(sink.sent) == 1, "one message for the whole bookkeeping"
    (batch,) = sink.sent
    kinds = [item["type"] if isinstance(item, dict) else "RowChange" for item in batch]
    assert kinds == [
        "RowChange",
        "task",
        "RowChange",
        "task",
        "RowChange",
        "status",
    ]
    assert [item.task_id for item in batch if isinstance(item, RowChange)] == [
        "plan",
        "execute-0",
        None,
    ]


def test_a_task_error_without_message_gets_an_empty_message() -> None:
    log, sink, _ = heartbeat_log()
    log.task("plan", "failed", {"code": "cancelled"})
    log.flush()
    event, _ = sink.events[0]
    assert event["message"] == ""
    assert event["error"] == {"code": "cancelled"}


Append = Callable[[JobEventLog], None]

RUNNING: Append = lambda log: log.task("execute-0", "running")  # noqa: E731
LOG_A: Append = lambda log: log.log("psql: a")  # noqa: E731
LOG_B: Append = lambda log: log.log("psql: b")  # noqa: E731
SUCCEEDED: Append = lambda log: log.task("execute-0", "succeeded")  # noqa: E731
FAILED: Append = lambda log: log.task("execute-0", "failed", {"code": "x", "message": "m"})  # noqa: E731
JOB_RUNNING: Append = lambda log: log.status("running")  # noqa: E731
JOB_FAILED: Append = lambda log: log.status("failed")  # noqa: E731
RESULT: Append = lambda log: log.result({"dsn": "d"})  # noqa: E731
ERROR: Append = lambda log: log.error({"code": "x", "message": "m"})  # noqa: E731

RUNNING_EVENT = {"type": "task", "task_id": "execute-0", "status": "running"}


@pytest.mark.parametrize(
    ("appends", "repeated"),
    [
        pytest.param([], None, id="nothing-appended"),
        pytest.param([JOB_RUNNING], None, id="job-status-alone"),
        pytest.param([LOG_A], None, id="log-without-a-running-task"),
        pytest.param([RUNNING], RUNNING_EVENT, id="running-task"),
        pytest.param([RUNNING, LOG_A], {"type": "log", "message": "psql: a"}, id="last-log"),
        pytest.param(
            [RUNNING, LOG_A, LOG_B], {"type": "log", "message": "psql: b"}, id="latest-log"
        ),
        pytest.param([RUNNING, SUCCEEDED], None, id="task-succeeded"),
        pytest.param([RUNNING, LOG_A, FAILED], None, id="task-failed"),
        pytest.param([RUNNING, JOB_FAILED], None, id="job-terminal-status"),
        pytest.param([RUNNING, RESULT], None, id="result"),
        pytest.param([RUNNING, ERROR], None, id="error"),
        pytest.param([RUNNING, SUCCEEDED, LOG_A], None, id="log-after-the-task-ended"),
        pytest.param([RUNNING, SUCCEEDED, RUNNING], RUNNING_EVENT, id="next-task-running"),
    ],
)
def test_what_the_heartbeat_repeats(appends: list[Append], repeated: dict[str, Any] | None) -> None:
    """SPEC §4.4: the last `task running` event, or the last log appended while that task
    runs; nothing once the task or the job ended."""
    log, sink, clock = heartbeat_log()
    for append in appends:
        append(log)
    log.flush()  # buffered log lines are not repeats
    before = len(sink.events)
    clock.advance(DEFAULT_HEARTBEAT)
    assert log.tick() is (repeated is not None)
    if repeated is None:
        assert len(sink.events) == before
        return
    event, wait = sink.events[-1]
    assert {k: v for k, v in event.items() if k != "ts"} == repeated
    assert wait is False, "a heartbeat never blocks on the Registry"


def test_heartbeat_repeats_only_after_a_quiet_period_with_a_fresh_timestamp() -> None:
    log, sink, clock = heartbeat_log()
    log.task("execute-0", "running")
    first_ts = sink.events[0][0]["ts"]
    clock.advance(DEFAULT_HEARTBEAT - 0.001)
    assert log.tick() is False, "something was appended less than a period ago"
    clock.advance(0.001)
    assert log.tick() is True, "a full period of silence repeats the event"
    assert log.tick() is False, "the repeat itself counts as an append"
    clock.advance(DEFAULT_HEARTBEAT / 2)
    log.log("psql: NOTICE")
    clock.advance(DEFAULT_HEARTBEAT / 2)
    assert log.tick() is False, "the log line reset the quiet period"
    clock.advance(DEFAULT_HEARTBEAT / 2)
    assert log.tick() is True
    repeats = [e for e, _ in sink.events]
    assert [e["type"] for e in repeats] == ["task", "task", "log", "log"]
    assert parse_rfc3339(repeats[1]["ts"]) >= parse_rfc3339(first_ts)


def test_a_repeat_does_not_alias_the_original_event() -> None:
    """The sink may keep what it gets (the Registry publishes it): repeats are copies."""
    original: list[dict[str, Any]] = []
    clock = ManualClock()
    log = JobEventLog(Recorded(on_record=original.append), DEFAULT_HEARTBEAT, clock)
    log.task("execute-0", "running")
    first_ts = original[0]["ts"]
    clock.advance(DEFAULT_HEARTBEAT)
    assert log.tick() is True
    assert original[0] is not original[1]
    assert original[0]["ts"] == first_ts, "the stored original was not re-stamped"


def test_events_are_persisted_and_published_in_append_order(world: World) -> None:
    """Through the RegistrySink: stored in order (the events endpoint reads them back) and
    delivered in the same order to a stream that is already listening."""
    job_id = world.add_job(psql_request("-c", "select 1"))
    parts = world.start()
    sub = parts.registry.subscribe_events(job_id, 0, None).get(timeout=ASK)
    assert sub is not None
    log = JobEventLog(RegistrySink(job_id, parts.services(ScriptRuntime())))
    log.status("running")
    log.task("plan", "running")
    for n in range(20):
        log.log(f"line {n}")  # not waited for: order must still hold
    log.task("plan", "succeeded")
    log.status("succeeded")
    log.result({"dsn": "postgres://sqlrs@127.0.0.1:1/postgres"})
    expected = (
        ["status running", "task plan running"]
        + [f"log line {n}" for n in range(20)]
        + ["task plan succeeded", "status succeeded", "result"]
    )

    def describe(event: dict[str, Any]) -> str:
        words = [event.get(key) for key in ("type", "task_id", "status", "message")]
        return " ".join(str(word) for word in words if word is not None)

    assert [describe(e) for e in parts.events(job_id)] == expected
    published = []
    while len(published) < len(expected):
        item = sub.mailbox.get(timeout=ASK)
        assert item is not END
        published.append(describe(item))
    assert published == expected
    parts.registry.unsubscribe_events(job_id, sub.token).get(timeout=ASK)


def test_the_heartbeat_thread_repeats_into_the_registry_and_stops_with_the_job(
    world: World,
) -> None:
    """The real thread and clock: a quiet running task's last log line is repeated
    (persisted, counted in the event index); once the job ends the thread is gone and the
    terminal status stays the last event."""
    job_id = world.add_job(psql_request("-c", "select 1"))
    parts = world.start()
    sub = parts.registry.subscribe_events(job_id, 0, None).get(timeout=ASK)
    assert sub is not None
    log = JobEventLog(RegistrySink(job_id, parts.services(ScriptRuntime())), MIN_HEARTBEAT)
    log.task("execute-0", "running")
    log.log("psql: start")
    log.start_heartbeat()
    try:
        seen = [sub.mailbox.get(timeout=ASK) for _ in range(3)]  # waits for one repeat
    finally:
        log.task("execute-0", "succeeded")
        log.status("succeeded")
        log.stop_heartbeat()
    parts.registry.unsubscribe_events(job_id, sub.token).get(timeout=ASK)
    assert [e.get("message") for e in seen if isinstance(e, dict)] == [
        None,
        "psql: start",
        "psql: start",
    ]
    assert not any(t.name == "job-heartbeat" and t.is_alive() for t in threading.enumerate())
    stored = parts.events(job_id)
    assert sum(e.get("message") == "psql: start" for e in stored) >= 2
    assert stored[-2]["type"] == "task" and stored[-2]["status"] == "succeeded"
    assert stored[-1] == {"type": "status", "ts": stored[-1]["ts"], "status": "succeeded"}
    stamps = [parse_rfc3339(e["ts"]) for e in stored]
    assert stamps == sorted(stamps)
    log.tick()
    assert len(parts.events(job_id)) == len(stored), "an ended job is never repeated"


# -- bounded task logs, the full log on disk, batches --------------------------------------


def bounded_log(tmp_path: Path, limit: int) -> tuple[JobEventLog, Recorded]:
    sink = Recorded()
    log = JobEventLog(sink, job_id="j" * 32, log_dir=tmp_path / "logs", max_task_lines=limit)
    return log, sink


def stored_messages(sink: Recorded) -> list[str]:
    return [event["message"] for event, _ in sink.events if event["type"] == "log"]


def test_a_task_stores_its_first_lines_then_one_truncation_event(tmp_path: Path) -> None:
    log, sink = bounded_log(tmp_path, limit=3)
    log.task("execute-0", "running")
    for n in range(10):
        log.log(f"psql: {n}")
    log.task("execute-0", "succeeded")
    log.task("execute-1", "running")
    log.log("psql: next task")
    log.close()
    messages = stored_messages(sink)
    assert messages[:3] == ["psql: 0", "psql: 1", "psql: 2"]
    notice = messages[3]
    assert notice.startswith("log truncated: task execute-0 printed more than 3 lines")
    assert f"GET /v1/prepare-jobs/{'j' * 32}/tasks/execute-0/log" in notice
    assert str(tmp_path / "logs" / "execute-0.log") in notice
    assert messages[4:] == ["psql: next task"], "the bound is per task"
    full = (tmp_path / "logs" / "execute-0.log").read_text().splitlines()
    assert full == [f"psql: {n}" for n in range(10)], "the file has every line"
    assert (tmp_path / "logs" / "execute-1.log").read_text() == "psql: next task\n"


def test_a_zero_bound_stores_only_the_notice_and_lines_outside_tasks_go_to_job_log(
    tmp_path: Path,
) -> None:
    log, sink = bounded_log(tmp_path, limit=0)
    log.log("resolving")
    log.log("more")
    log.close()
    assert [m.split(":")[0] for m in stored_messages(sink)] == ["log truncated"]
    assert (tmp_path / "logs" / "job.log").read_text() == "resolving\nmore\n"


def test_a_huge_line_is_cut_in_its_event_but_whole_in_the_file(tmp_path: Path) -> None:
    log, sink = bounded_log(tmp_path, limit=10)
    line = "x" * (MAX_STORED_LINE + 10)
    log.log(line)
    log.close()
    (stored,) = stored_messages(sink)
    assert stored.startswith("x" * MAX_STORED_LINE + "… [line cut")
    assert (tmp_path / "logs" / "job.log").read_text() == line + "\n"


def test_an_unwritable_log_dir_does_not_fail_the_job(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("a file where the directory should be")
    log, sink = bounded_log(tmp_path, limit=10)
    log.log("still stored")
    log.close()
    assert stored_messages(sink) == ["still stored"]


class SlowSink(Recorded):
    """Batches are stored only when the test releases them, like a busy Registry."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.released = threading.Event()
        self.waited = threading.Event()

    def record_batch(self, items: list[Item]) -> Stored:
        self.batches.append(len(items))

        def stored(timeout: float | None) -> bool:
            if timeout is not None:
                return self.released.wait(timeout)
            self.waited.set()
            assert self.released.wait(10)
            return True

        return stored


def test_lines_go_in_batches_and_a_busy_registry_slows_the_job_instead_of_failing_it() -> None:
    sink = SlowSink()
    log = JobEventLog(sink)
    for n in range(BATCH_LINES * MAX_BATCHES_IN_FLIGHT):
        log.log(f"{n}")
    assert sink.batches == [BATCH_LINES] * MAX_BATCHES_IN_FLIGHT
    assert not sink.waited.is_set(), "within the in-flight allowance nothing waits"
    writer = threading.Thread(target=lambda: [log.log(f"{n}") for n in range(BATCH_LINES)])
    writer.start()
    assert sink.waited.wait(10), "one batch too many: the writer waits for the oldest"
    assert writer.is_alive()
    sink.released.set()
    writer.join(10)
    assert not writer.is_alive()
