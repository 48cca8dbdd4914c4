"""Task bookkeeping: a task's row and its `task` event change together (SPEC §4.3, §4.9).

The rows are the ones a real psql job plans and persists (PsqlJob.make_plan) in a real
state.db; the tracker then moves them, and `/v1/tasks` entries are read back through the
Registry, `args_summary` included.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine.jobs.builder import StateBuilder as PsqlJob
from sqlrs_engine.jobs.tasks import TaskTracker
from tests.jobs.conftest import ASK, Parts, ScriptRuntime, World, psql_request, task_events

ERROR = {"code": "internal_error", "message": "psql execution failed", "details": "boom"}

Op = Callable[[TaskTracker], None]


def start(task_id: str) -> Op:
    return lambda tracker: tracker.start(task_id)


def succeed(task_id: str, **fields: Any) -> Op:
    return lambda tracker: tracker.succeed(task_id, **fields)


def fail(task_id: str) -> Op:
    return lambda tracker: tracker.fail(task_id, ERROR)


def update(task_id: str, **fields: Any) -> Op:
    return lambda tracker: tracker.update(task_id, **fields)


def planned_job(world: World) -> tuple[Parts, PsqlJob]:
    """A two-step job whose task rows are planned and stored, all `queued`."""
    job_id = world.add_job(psql_request("-c", "select 1", "-c", "select 2"))
    parts = world.start()
    job = parts.psql_job(job_id, psql_request("-c", "select 1", "-c", "select 2"), ScriptRuntime())
    job.make_plan()
    return parts, job


@pytest.mark.parametrize(
    ("ops", "statuses", "running", "events"),
    [
        pytest.param(
            [start("execute-0")],
            {"execute-0": "running", "execute-1": "queued"},
            "execute-0",
            [("execute-0", "running")],
            id="start",
        ),
        pytest.param(
            [start("execute-0"), succeed("execute-0")],
            {"execute-0": "succeeded"},
            None,
            [("execute-0", "running"), ("execute-0", "succeeded")],
            id="start-succeed",
        ),
        pytest.param(
            [succeed("execute-0")],
            {"execute-0": "succeeded"},
            None,
            [("execute-0", "succeeded")],
            id="cached-at-plan-has-no-running-event",
        ),
        pytest.param(
            [start("execute-1"), succeed("execute-0")],
            {"execute-0": "succeeded", "execute-1": "running"},
            "execute-1",
            [("execute-1", "running"), ("execute-0", "succeeded")],
            id="another-task-ending-keeps-the-running-one",
        ),
        pytest.param(
            [start("execute-0"), fail("execute-0")],
            {"execute-0": "failed", "execute-1": "queued"},
            None,
            [("execute-0", "running"), ("execute-0", "failed")],
            id="start-fail",
        ),
        pytest.param(
            [start("execute-1"), fail("execute-0")],
            {"execute-0": "failed", "execute-1": "running"},
            "execute-1",
            [("execute-1", "running"), ("execute-0", "failed")],
            id="failing-another-task-keeps-the-running-one",
        ),
        pytest.param(
            [update("execute-0", cached=True)],
            {"execute-0": "queued"},
            None,
            [],
            id="update-has-no-event",
        ),
    ],
)
def test_transitions(
    world: World,
    ops: list[Op],
    statuses: dict[str, str],
    running: str | None,
    events: list[tuple[str, str]],
) -> None:
    parts, job = planned_job(world)
    for op in ops:
        op(job.tasks)
    job.events.flush()  # task changes are stored with the job's next batch
    rows = parts.task_rows(job.job_id)
    assert {task_id: rows[task_id]["status"] for task_id in statuses} == statuses
    assert job.tasks.running == running
    assert task_events(parts.events(job.job_id)) == events


def test_timestamps_error_and_fields_land_on_the_row(world: World) -> None:
    parts, job = planned_job(world)
    job.tasks.start("execute-0")
    job.events.flush()
    started = parts.task_rows(job.job_id)["execute-0"]
    assert started["started_at"] and started["finished_at"] is None
    job.tasks.fail("execute-0", ERROR)
    job.tasks.succeed("execute-1", cached=True)
    job.events.flush()
    rows = parts.task_rows(job.job_id)
    failed, cached = rows["execute-0"], rows["execute-1"]
    assert failed["finished_at"] >= failed["started_at"]
    assert failed["error_json"] and "boom" in failed["error_json"]
    assert cached["cached"] == 1 and cached["started_at"] is None and cached["finished_at"]
    task_failed = next(e for e in parts.events(job.job_id) if e.get("status") == "failed")
    assert task_failed["message"] == ERROR["message"]
    assert task_failed["error"] == ERROR


def test_update_changes_only_the_given_fields(world: World) -> None:
    parts, job = planned_job(world)
    before = parts.task_rows(job.job_id)["execute-1"]
    job.tasks.update("execute-1", cached=True, task_hash="f" * 64)
    job.events.flush()
    after = parts.task_rows(job.job_id)["execute-1"]
    assert after["cached"] == 1 and after["task_hash"] == "f" * 64
    unchanged = {k: v for k, v in before.items() if k not in ("cached", "task_hash")}
    assert {k: after[k] for k in unchanged} == unchanged


@pytest.mark.parametrize(
    ("args", "stdin", "summaries"),
    [
        pytest.param(["-c", "select 1"], None, {"execute-0": "-c select 1"}, id="command"),
        pytest.param(["--command=select 3"], None, {"execute-0": "-c select 3"}, id="long-form"),
        pytest.param(["-f", "{dir}/a.sql"], None, {"execute-0": "-f {dir}/a.sql"}, id="file"),
        pytest.param(["-f", "-"], "select 1;", {"execute-0": "-f -"}, id="stdin"),
        pytest.param(
            ["-v", "x=1", "-X", "-c", "select :x", "-f", "{dir}/a.sql", "-c", "select 2"],
            None,
            {
                "execute-0": "-c select :x",
                "execute-1": "-f {dir}/a.sql",
                "execute-2": "-c select 2",
            },
            id="options-are-not-part-of-a-step-summary",
        ),
        pytest.param(["-c", "select\n1"], None, {"execute-0": "-c select\n1"}, id="multi-line"),
        pytest.param(["-X"], None, {"execute-0": None}, id="no-input-step-has-none"),
    ],
)
def test_args_summary_of_each_task(
    world: World, tmp_path: Path, args: list[str], stdin: str | None, summaries: dict[str, Any]
) -> None:
    """SPEC §4.9: `state_execute` tasks carry the first input of their step; other tasks
    (and the job status's plan tasks, §2.8) never carry one."""
    (tmp_path / "a.sql").write_text("select 'a';\n")

    def fill(text: str) -> str:
        return text.replace("{dir}", str(tmp_path))

    request = psql_request(*[fill(a) for a in args], stdin=stdin)
    job_id = world.add_job(request)
    parts = world.start()
    parts.psql_job(job_id, request, ScriptRuntime()).make_plan()
    entries = parts.registry.list_tasks(job_id).get(timeout=ASK)
    expected_ids = ["plan", "resolve-image", *summaries, "prepare-instance"]
    assert [e["task_id"] for e in entries] == expected_ids
    got = {e["task_id"]: e.get("args_summary") for e in entries}
    want = {task_id: None for task_id in expected_ids}
    want.update({k: fill(v) if v else None for k, v in summaries.items()})
    assert got == want
    rows = parts.task_rows(job_id)
    assert {k: rows[k]["args_summary"] for k in rows} == want, "empty is NULL in the row"
    status = parts.registry.job_status(job_id).get(timeout=ASK)
    assert all("args_summary" not in task for task in status["tasks"])
