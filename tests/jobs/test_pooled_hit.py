"""The pure parts of the pooled-hit short path: when a submission may take it, and the
collecting event sink (the path itself runs end to end in tests/e2e/test_pool_short_path.py)."""

from __future__ import annotations

import pytest

from sqlrs_engine.jobs.event_log import JobEventLog
from sqlrs_engine.jobs.pooled_hit import CollectingSink, plan_refusal, refusal
from sqlrs_engine.jobs.tasks import TaskTracker
from sqlrs_engine.persistence.jobs import RowChange
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.prepare.plan import PlanTask


def step(index: int, cached: bool) -> PlanTask:
    return PlanTask(task_id=f"execute-{index}", type="state_execute", cached=cached)


PLAN = PlanTask(task_id="plan", type="plan")
RESOLVE = PlanTask(task_id="resolve-image", type="resolve_image")
INSTANCE = PlanTask(task_id="prepare-instance", type="prepare_instance")


@pytest.mark.parametrize(
    ("kind", "plan_only", "expected"),
    [
        ("psql", False, None),
        ("psql", True, "plan only"),
        ("lb", False, "planning of kind lb may need a server"),
        ("lb", True, "plan only"),
    ],
)
def test_refusal_before_planning(kind: str, plan_only: bool, expected: str | None) -> None:
    request = PrepareRequest(prepare_kind=kind, image_id="postgres:15", plan_only=plan_only)
    assert refusal(request, kind) == expected


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ([PLAN, RESOLVE, step(0, True), INSTANCE], None),
        ([PLAN, step(0, True), step(1, True), INSTANCE], None),
        ([PLAN, step(0, True), step(1, False), INSTANCE], "steps to build: execute-1"),
        ([PLAN, step(0, False), step(1, False), INSTANCE], "steps to build: execute-0, execute-1"),
        ([PLAN, INSTANCE], "no step"),
        ([PLAN, step(0, True)], "no single prepare-instance task"),
        ([PLAN, step(0, True), INSTANCE, INSTANCE], "no single prepare-instance task"),
        ([PLAN, INSTANCE, step(0, True)], "prepare-instance is not the last task"),
    ],
)
def test_plan_refusal(tasks: list[PlanTask], expected: str | None) -> None:
    assert plan_refusal(tasks) == expected


def test_the_collecting_sink_keeps_a_jobs_items_in_order_and_never_blocks() -> None:
    """What a job would send as several Registry messages arrives as one ordered list."""
    sink = CollectingSink()
    events = JobEventLog(sink, job_id="j")
    tasks = TaskTracker("j", events)
    events.job_row({"status": "running"})
    events.status("running")  # waits for its batch: answered at once
    tasks.start("plan")  # sent at once
    events.log("resolve image postgres:15")
    events.send()
    first = sink.take()
    tasks.succeed("plan")
    events.status("succeeded", wait=False)
    events.close()
    second = sink.take()
    assert [type(i).__name__ if isinstance(i, RowChange) else i["type"] for i in first] == [
        "RowChange",
        "status",
        "RowChange",
        "task",
        "log",
    ]
    assert [i.task_id if isinstance(i, RowChange) else i["type"] for i in second] == [
        "plan",
        "task",
        "status",
    ]
    assert sink.take() == []
