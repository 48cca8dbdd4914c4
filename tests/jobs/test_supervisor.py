"""A job from its row to its terminal status, whatever ends it (SPEC §4.1-§4.6, §4.8).

The supervisor runs on the test's thread (or a helper thread when a test must cancel it)
against a real Registry and Snapshot actor; the fake runtime provides the faults: a client
that fails, raises, or hangs until it is cancelled.
"""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pykka
import pytest

from sqlrs_engine.actors.events import END
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import cancelled
from sqlrs_engine.jobs.supervisor import JobSupervisor
from sqlrs_engine.persistence.rows import Row, load_json
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.runtime.base import OutputSink
from tests.jobs.conftest import ASK, Parts, ScriptRuntime, World, psql_request
from tests.support.fake_runtime import ClientBehaviour, hang, raise_error


def milestones(events: Sequence[Row]) -> list[str]:
    """Status, task, result and error events; heartbeat repeats collapsed, logs dropped."""
    out: list[str] = []
    for event in events:
        if event["type"] == "log":
            continue
        words = [event["type"], event.get("task_id"), event.get("status")]
        text = " ".join(str(word) for word in words if word)
        if not out or out[-1] != text:
            out.append(text)
    return out


def fail_with(code: int, *lines: bytes) -> ClientBehaviour:
    def client(_args: Sequence[str], on_output: OutputSink, _cancel: CancelToken) -> int:
        for line in lines:
            on_output("stderr", line)
        return code

    return client


def killed_by_cancel(_args: Sequence[str], _on_output: OutputSink, cancel: CancelToken) -> int:
    """What a real psql does when its process group is killed: it just exits non-zero."""
    cancel.wait(300)
    return 137


@dataclass
class Run:
    """One supervised job and everything the test can observe about it."""

    parts: Parts
    job_id: str
    runtime: ScriptRuntime
    supervisor: JobSupervisor
    trimmed: list[str] = field(default_factory=list)

    @property
    def events(self) -> list[Row]:
        return self.parts.events(self.job_id)

    @property
    def row(self) -> Row:
        return self.parts.job_row(self.job_id)

    @property
    def error(self) -> Any:
        return load_json(self.row["error_json"])


@pytest.fixture
def supervise(world: World) -> Iterator[Callable[..., Run]]:
    """`supervise(request, client=..., trim=...)`: a supervisor for a freshly stored job."""

    def make(
        request: PrepareRequest | str,
        client: ClientBehaviour | None = None,
        trim: Callable[[str], object] | None = None,
    ) -> Run:
        job_id = world.add_raw_job(request) if isinstance(request, str) else world.add_job(request)
        parts = world.start()
        runtime = ScriptRuntime(client) if client else ScriptRuntime()
        trimmed: list[str] = []
        services = parts.services(runtime, trim_jobs=trim or trimmed.append)
        return Run(parts, job_id, runtime, JobSupervisor(job_id, services), trimmed)

    yield make


class Started:
    """Wraps a client behaviour to tell the test when psql is really running."""

    def __init__(self, behaviour: ClientBehaviour) -> None:
        self.behaviour = behaviour
        self.event = threading.Event()

    def __call__(self, args: Sequence[str], on_output: OutputSink, cancel: CancelToken) -> int:
        self.event.set()
        return self.behaviour(args, on_output, cancel)


def run_until_psql_runs(run: Run, started: Started) -> threading.Thread:
    """Start the supervisor on a thread; return once its step's client is running."""
    worker = threading.Thread(target=run.supervisor.run, name="test-job")
    worker.start()
    assert started.event.wait(ASK), "the step never started its client"
    return worker


def test_a_successful_job_records_the_typical_event_order(
    supervise: Callable[..., Run],
) -> None:
    """SPEC §4.4, normal job; the stream's subscribers are ended after the final event."""
    run = supervise(psql_request("-c", "create table t()"))
    sub = run.parts.registry.subscribe_events(run.job_id, 0, None).get(timeout=ASK)
    run.supervisor.run()
    assert milestones(run.events) == [
        "status running",
        "task plan running",
        "task plan succeeded",
        "task resolve-image succeeded",
        "task execute-0 running",
        "task execute-0 succeeded",
        "task prepare-instance running",
        "task prepare-instance succeeded",
        "status succeeded",
        "result",
    ]
    row = run.row
    assert row["status"] == "succeeded" and row["started_at"] and row["finished_at"]
    result = load_json(row["result_json"])
    assert result == run.events[-1]["result"]
    assert result["state_id"] == run.parts.task_rows(run.job_id)["execute-0"]["output_state_id"]
    assert row["signature"] and run.trimmed == [row["signature"]] * 2, "after plan and at end"
    assert not any(t.name == "job-heartbeat" and t.is_alive() for t in threading.enumerate())
    drained = []
    while (item := sub.mailbox.get(timeout=ASK)) is not END:
        drained.append(item)
    assert len(drained) == len(run.events), "every event was published, then END"


def test_plan_only_succeeds_every_task_without_running_anything(
    supervise: Callable[..., Run],
) -> None:
    """SPEC §4.4, plan-only: no `running` task events, no result, no server, no state."""
    run = supervise(psql_request("-c", "select 1", "-c", "select 2", plan_only=True))
    run.supervisor.run()
    assert milestones(run.events) == [
        "status running",
        "task plan succeeded",
        "task resolve-image succeeded",
        "task execute-0 succeeded",
        "task execute-1 succeeded",
        "task prepare-instance succeeded",
        "status succeeded",
    ]
    assert run.row["status"] == "succeeded" and run.row["result_json"] is None
    assert run.runtime.calls == [] and run.runtime.running == set()
    assert run.parts.registry.list_states(None, None, None).get(timeout=ASK) == []
    assert {r["status"] for r in run.parts.task_rows(run.job_id).values()} == {"succeeded"}


@pytest.mark.parametrize(
    ("client", "error"),
    [
        pytest.param(
            fail_with(3, b'ERROR:  relation "t" does not exist\n'),
            {
                "code": "internal_error",
                "message": "psql execution failed",
                "details": 'ERROR:  relation "t" does not exist',
            },
            id="psql-fails",
        ),
        pytest.param(
            raise_error,
            {"code": "internal_error", "message": "internal error", "details": "runtime exploded"},
            id="unexpected-exception",
        ),
    ],
)
def test_a_failing_step_fails_its_task_then_the_job(
    supervise: Callable[..., Run], client: ClientBehaviour, error: dict[str, str]
) -> None:
    """SPEC §4.4, failure: `task failed` with the error, `status failed`, `error`; the
    job's runtime is released and retention still runs."""
    run = supervise(psql_request("-c", "select * from t"), client)
    run.supervisor.run()
    assert "task execute-0 running" in milestones(run.events)
    assert milestones(run.events)[-3:] == ["task execute-0 failed", "status failed", "error"]
    task_failed = next(e for e in run.events if e.get("status") == "failed")
    assert task_failed["error"] == error and task_failed["message"] == error["message"]
    assert run.events[-1]["error"] == error
    assert run.row["status"] == "failed" and run.row["finished_at"]
    assert run.error == error
    assert load_json(run.parts.task_rows(run.job_id)["execute-0"]["error_json"]) == error
    assert run.runtime.running == set()
    assert not run.parts.store.layout.job_runtime_dir(run.job_id).exists()
    assert len(run.trimmed) == 2


@pytest.mark.parametrize(
    "request_json",
    [
        pytest.param("not json", id="not-json"),
        pytest.param('{"prepare_kind": 1, "image_id": "postgres:15"}', id="wrong-type"),
        pytest.param('{"prepare_kind": "psql"}', id="no-image"),
    ],
)
def test_a_request_that_cannot_be_restored_fails_the_job(
    supervise: Callable[..., Run], request_json: str
) -> None:
    """SPEC §4.8: `internal_error` / `cannot restore job request`, before it ever runs."""
    run = supervise(request_json)
    run.supervisor.run()
    assert milestones(run.events) == ["status failed", "error"]
    assert run.error["code"] == "internal_error"
    assert run.error["message"] == "cannot restore job request"
    assert run.row["started_at"] is None
    assert run.trimmed == []


def test_a_stored_kind_missing_from_the_kind_table_cannot_be_restored(
    supervise: Callable[..., Run],
) -> None:
    run = supervise('{"prepare_kind": "mysql", "image_id": "postgres:15"}')
    run.supervisor.run()
    assert milestones(run.events) == ["status failed", "error"]
    assert run.error["code"] == "internal_error"
    assert run.error["message"] == "cannot restore job request"
    assert "unsupported prepare_kind" in run.error["details"]


def test_a_job_that_vanished_is_left_alone(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """A job deleted before its worker started: nothing to run, nothing to record."""
    parts = world.start()
    trimmed: list[str] = []
    runtime = ScriptRuntime()
    services = parts.services(runtime, trim_jobs=trimmed.append)
    with caplog.at_level(logging.INFO, logger="sqlrs_engine.jobs.supervisor"):
        JobSupervisor("0" * 32, services).run()
    assert f"job {'0' * 32} vanished before it started" in caplog.text
    assert [r.message for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert trimmed == [] and runtime.calls == []


@pytest.mark.parametrize(
    ("client", "error"),
    [
        pytest.param(hang, {"code": "cancelled", "message": "task cancelled"}, id="step-raises"),
        pytest.param(
            killed_by_cancel,
            {"code": "cancelled", "message": "job cancelled"},
            id="killed-client-exits-non-zero",
        ),
    ],
)
def test_a_cancelled_job_fails_as_cancelled(
    supervise: Callable[..., Run], client: ClientBehaviour, error: dict[str, str]
) -> None:
    """SPEC §4.6: whatever the killed step reports, a cancelled job fails `cancelled`."""
    started = Started(client)
    run = supervise(psql_request("-c", "select pg_sleep(600)"), started)
    worker = run_until_psql_runs(run, started)
    run.supervisor.cancel()
    worker.join(timeout=ASK)
    assert not worker.is_alive()
    assert run.error == error
    assert milestones(run.events)[-3:] == ["task execute-0 failed", "status failed", "error"]
    assert run.runtime.running == set()
    assert not run.parts.store.layout.job_runtime_dir(run.job_id).exists()


def test_a_job_cancelled_before_its_first_step_never_starts_a_server(
    supervise: Callable[..., Run],
) -> None:
    run = supervise(psql_request("-c", "select 1"))
    run.supervisor.cancel()
    run.supervisor.run()
    assert run.error == {"code": "cancelled", "message": "job cancelled"}
    assert run.runtime.calls == [] and run.runtime.running == set()


def test_shutdown_leaves_the_job_running_for_recovery(supervise: Callable[..., Run]) -> None:
    """SPEC §1.5, §4.8: an engine stop is not a failure; the runtime is still released."""
    started = Started(hang)
    run = supervise(psql_request("-c", "select pg_sleep(600)"), started)
    worker = run_until_psql_runs(run, started)
    run.supervisor.cancel(shutdown=True)
    worker.join(timeout=ASK)
    assert not worker.is_alive()
    assert run.row["status"] == "running" and run.row["error_json"] is None
    assert "failed" not in {e.get("status") for e in run.events}
    assert run.parts.task_rows(run.job_id)["execute-0"]["status"] == "running"
    assert run.runtime.running == set()
    assert not run.parts.store.layout.job_runtime_dir(run.job_id).exists()
    assert len(run.trimmed) == 1, "retention ran after planning only, not at shutdown"


def test_a_failing_retention_does_not_fail_the_job(supervise: Callable[..., Run]) -> None:
    def trim(_signature: str) -> None:
        raise RuntimeError("retention exploded")

    run = supervise(psql_request("-c", "select 1"), trim=trim)
    run.supervisor.run()
    assert run.row["status"] == "succeeded"


def test_the_cancel_message_is_kept_when_the_failure_already_says_cancelled(
    supervise: Callable[..., Run],
) -> None:
    """A cancellation that surfaces as `cancelled` keeps its own message (`task cancelled`
    from a killed step) instead of the generic `job cancelled`."""

    def cancel_from_inside(_args: Sequence[str], _out: OutputSink, cancel: CancelToken) -> int:
        run.supervisor.cancel()
        raise cancelled("task cancelled")

    run = supervise(psql_request("-c", "select 1"), cancel_from_inside)
    run.supervisor.run()
    assert run.error == {"code": "cancelled", "message": "task cancelled"}


def test_an_event_the_registry_refused_fails_the_next_write_of_the_job() -> None:
    """Batches sent without waiting are not dropped silently: a refusal (a full disk)
    surfaces at the job's next write, which then fails the job with that reason (issue 11);
    the refused batch is kept and sent again, in order, by the next flush."""
    from sqlrs_engine.jobs.event_log import JobEventLog
    from sqlrs_engine.jobs.supervisor import RegistrySink
    from sqlrs_engine.persistence.guard import StorageError

    refusal = StorageError(507, "storage_full", "the engine's database is out of disk space")

    class RefusingRegistry:
        def __init__(self) -> None:
            self.sent: list[list[str]] = []
            self.full = True

        def record_events(self, job_id: str, items: list[dict[str, object]]) -> pykka.Future[int]:
            future: pykka.Future[int] = pykka.ThreadingFuture()
            messages = [str(item["message"]) for item in items]
            self.sent.append(messages)
            if self.full and "refused" in messages:
                future.set_exception((StorageError, refusal, None))
            else:
                future.set(len(self.sent))
            return future

    registry = RefusingRegistry()
    services = types.SimpleNamespace(registry=registry)
    events = JobEventLog(RegistrySink("j1", services))  # type: ignore[arg-type]
    events.log("stored")
    events.send()
    events.log("refused")
    events.send()
    events.log("next")
    with pytest.raises(StorageError):
        events.send()
    assert registry.sent == [["stored"], ["refused"]]
    registry.full = False
    events.flush()
    assert registry.sent == [["stored"], ["refused"], ["refused", "next"]]
