"""Whether a recovered job may reuse the tasks it stored before the engine stopped (SPEC §4.8).

A job left `queued`/`running` by a previous engine is planned again at start-up, because its
inputs (script files, includes) may have changed meanwhile. If the new plan has the stored
signature and the same task shape, the stored tasks are reused: what succeeded stays
succeeded, a `state_execute` caught `running` counts as done when its output state exists
(the crash came after the snapshot) and is queued again otherwise, and a task recorded as
`failed` fails the job. Any drift replaces the stored tasks with the new plan.

Pure logic: the caller supplies the stored rows and a `state_exists` check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlrs_engine.prepare.plan import (
    TASK_PLAN,
    TASK_PREPARE_INSTANCE,
    TASK_STATE_EXECUTE,
    PlanTask,
)


@dataclass(frozen=True)
class StoredPlan:
    """What a job had persisted of its plan before the engine stopped."""

    signature: str | None
    rows: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Resumption:
    """What recovery does with a job's stored tasks."""

    drift: str | None = None
    """Why the stored tasks cannot be reused (None: reuse them)."""
    failed_task: str | None = None
    """A stored task marked `failed`: the job fails with it."""
    done: frozenset[str] = frozenset()
    """Tasks that need not run again (succeeded, or their output state exists)."""
    mark_succeeded: tuple[str, ...] = ()
    """`running` tasks whose output state exists: recorded as succeeded now."""
    mark_queued: tuple[str, ...] = ()
    """`running` tasks that must run again: recorded as queued now."""


def resume_stored_plan(
    stored: StoredPlan,
    planned_signature: str,
    planned: Sequence[PlanTask],
    state_exists: Callable[[str], bool],
) -> Resumption | None:
    """The resumption of a recovered job, or None when nothing was stored (a fresh job)."""
    if not stored.rows:
        return None
    if stored.signature != planned_signature:
        return Resumption(drift="its inputs changed since it was planned (new signature)")
    stored_shape = [(row.get("task_id"), row.get("type")) for row in stored.rows]
    planned_shape = [(task.task_id, task.type) for task in planned]
    if stored_shape != planned_shape:
        return Resumption(drift="its steps no longer match the stored tasks")
    done: set[str] = set()
    succeeded: list[str] = []
    queued: list[str] = []
    for row in stored.rows:
        task_id, status = str(row["task_id"]), row.get("status")
        if row.get("type") == TASK_PLAN:
            continue  # planning has just run again; the supervisor records it
        if status == "failed":
            return Resumption(failed_task=task_id)
        if status == "succeeded":
            done.add(task_id)
        elif status == "running":
            output = row.get("output_state_id")
            if row.get("type") == TASK_STATE_EXECUTE and output and state_exists(str(output)):
                done.add(task_id)
                succeeded.append(task_id)
            else:
                queued.append(task_id)
    # The instance is made again: its result (the DSN) is what the job reports.
    done -= {task.task_id for task in planned if task.type == TASK_PREPARE_INSTANCE}
    return Resumption(
        done=frozenset(done),
        mark_succeeded=tuple(succeeded),
        mark_queued=tuple(queued),
    )


__all__ = ["Resumption", "StoredPlan", "resume_stored_plan"]
