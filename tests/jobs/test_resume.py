"""Reuse of a recovered job's stored tasks, or re-planning on drift (SPEC §4.8)."""

from __future__ import annotations

from typing import Any

import pytest

from sqlrs_engine.jobs.resume import Resumption, StoredPlan, resume_stored_plan
from sqlrs_engine.prepare.plan import PlanTask, build_psql_plan

SIGNATURE = "s" * 64


def planned(steps: int = 2) -> list[PlanTask]:
    """A plan of `steps` steps: plan, resolve_image, execute-0.., prepare-instance."""
    return build_psql_plan(
        requested_image_id="postgres:15",
        effective_image_id="postgres@host-15.18",
        step_task_hashes=[f"{n}" * 64 for n in range(steps)],
        state_exists=lambda _state: False,
    )


def stored_rows(tasks: list[PlanTask], statuses: dict[str, str]) -> list[dict[str, Any]]:
    """The task rows a job stored, with the given statuses (others `queued`)."""
    rows = []
    for position, task in enumerate(tasks):
        row = task.to_task_row("job", position)
        row["status"] = statuses.get(task.task_id, "queued")
        rows.append(row)
    return rows


def execute_ids(tasks: list[PlanTask]) -> list[str]:
    return [t.task_id for t in tasks if t.type == "state_execute"]


def test_a_fresh_job_has_nothing_to_resume() -> None:
    assert resume_stored_plan(StoredPlan(None, []), SIGNATURE, planned(), lambda _: True) is None


@pytest.mark.parametrize(
    ("stored_signature", "stored_steps", "reason"),
    [
        ("x" * 64, 2, "new signature"),
        (None, 2, "new signature"),  # stopped between storing tasks and signature
        (SIGNATURE, 3, "no longer match"),
        (SIGNATURE, 1, "no longer match"),
    ],
)
def test_drift_replans(stored_signature: str | None, stored_steps: int, reason: str) -> None:
    rows = stored_rows(planned(stored_steps), {})
    result = resume_stored_plan(StoredPlan(stored_signature, rows), SIGNATURE, planned(), bool)
    assert result is not None and result.drift is not None and reason in result.drift


def resume(statuses: dict[str, str], existing: set[str]) -> Resumption:
    tasks = planned()
    result = resume_stored_plan(
        StoredPlan(SIGNATURE, stored_rows(tasks, statuses)), SIGNATURE, tasks, existing.__contains__
    )
    assert result is not None and result.drift is None
    return result


def test_succeeded_tasks_are_done_and_queued_ones_run() -> None:
    tasks = planned()
    first, second = execute_ids(tasks)
    result = resume({"resolve-image": "succeeded", first: "succeeded"}, set())
    assert result.done == {"resolve-image", first}
    assert second not in result.done
    assert result.mark_succeeded == () and result.mark_queued == ()
    assert result.failed_task is None


@pytest.mark.parametrize(
    ("output_exists", "done", "marked_succeeded", "marked_queued"),
    [
        (True, True, True, False),  # stopped after the snapshot: the state is there
        (False, False, False, True),  # stopped while the step ran: run it again
    ],
)
def test_a_step_caught_running_depends_on_its_output_state(
    output_exists: bool, done: bool, marked_succeeded: bool, marked_queued: bool
) -> None:
    tasks = planned()
    step = next(t for t in tasks if t.type == "state_execute")
    existing = {step.output_state_id} if output_exists else set()
    result = resume({step.task_id: "running"}, existing)
    assert (step.task_id in result.done) is done
    assert (step.task_id in result.mark_succeeded) is marked_succeeded
    assert (step.task_id in result.mark_queued) is marked_queued


def test_a_failed_task_fails_the_job() -> None:
    second = execute_ids(planned())[1]
    result = resume({"resolve-image": "succeeded", second: "failed"}, set())
    assert result.failed_task == second


def test_the_instance_is_always_made_again_and_planning_is_not_judged() -> None:
    tasks = planned()
    instance = next(t.task_id for t in tasks if t.type == "prepare_instance")
    plan = next(t.task_id for t in tasks if t.type == "plan")
    result = resume({instance: "succeeded", plan: "failed"}, set())
    assert instance not in result.done
    assert result.failed_task is None, "the plan task was just redone; its old status is moot"
