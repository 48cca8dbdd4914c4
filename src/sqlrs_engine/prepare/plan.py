"""The plan task list of a prepare job (SPEC §2.8) and its three renderings.

A plan is `plan` → optional `resolve-image` → `execute-0..n-1` → `prepare-instance`, with each
execute task's output state feeding the next one's input. The same `PlanTask` value is stored
as a `prepare_tasks` row (§4.10), shown in the job status `tasks` list (§2.8) and in
`/v1/tasks` entries (§4.9), so the three shapes are produced here, next to each other, and
cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlrs_engine.prepare.hashing import lb_task_hash, state_id
from sqlrs_engine.prepare.images import has_digest

TASK_PLAN = "plan"
TASK_RESOLVE_IMAGE = "resolve_image"
TASK_STATE_EXECUTE = "state_execute"
TASK_PREPARE_INSTANCE = "prepare_instance"

PLAN_TASK_ID = "plan"
RESOLVE_IMAGE_TASK_ID = "resolve-image"
PREPARE_INSTANCE_TASK_ID = "prepare-instance"

INPUT_IMAGE = "image"
INPUT_STATE = "state"
INSTANCE_MODE_EPHEMERAL = "ephemeral"

StateExists = Callable[[str], bool]


def execute_task_id(index: int) -> str:
    """`execute-<index>`: the task of step `index`."""
    return f"execute-{index}"


def step_index(task: PlanTask) -> int:
    """The step number of an `execute-<index>` task."""
    return int(task.task_id.rsplit("-", 1)[1])


@dataclass(frozen=True)
class TaskInput:
    """What a task starts from: an image or a state."""

    kind: str
    id: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id}


@dataclass(frozen=True)
class PlanTask:
    """One planned task; empty strings / None mean "not set" (absent in JSON, NULL in rows)."""

    task_id: str
    type: str
    planner_kind: str = ""
    input_kind: str = ""
    input_id: str = ""
    image_id: str = ""
    resolved_image_id: str = ""
    task_hash: str = ""
    output_state_id: str = ""
    cached: bool | None = None
    instance_mode: str = ""
    args_summary: str = ""
    changeset_id: str = ""
    changeset_author: str = ""
    changeset_path: str = ""

    @property
    def input(self) -> TaskInput | None:
        return TaskInput(self.input_kind, self.input_id) if self.input_kind else None

    def _cached_value(self) -> bool | None:
        # A state_execute task always reports `cached` (false when unknown).
        if self.type == TASK_STATE_EXECUTE:
            return bool(self.cached)
        return self.cached

    def _common_fields(self) -> list[tuple[str, Any]]:
        return [
            ("planner_kind", self.planner_kind),
            ("input", self.input.to_json() if self.input else None),
            ("image_id", self.image_id),
            ("resolved_image_id", self.resolved_image_id),
        ]

    def _tail_fields(self) -> list[tuple[str, Any]]:
        return [
            ("task_hash", self.task_hash),
            ("output_state_id", self.output_state_id),
            ("cached", self._cached_value()),
            ("instance_mode", self.instance_mode),
            ("changeset_id", self.changeset_id),
            ("changeset_author", self.changeset_author),
            ("changeset_path", self.changeset_path),
        ]

    def to_status_json(self) -> dict[str, Any]:
        """The job status `tasks` entry (§2.8): no status, no args_summary."""
        out: dict[str, Any] = {"task_id": self.task_id, "type": self.type}
        for key, value in self._common_fields() + self._tail_fields():
            if value is not None and value != "":
                out[key] = value
        return out

    def to_task_entry(self, job_id: str, status: str) -> dict[str, Any]:
        """The `/v1/tasks` entry (§4.9): status and `args_summary` (state_execute only)."""
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "job_id": job_id,
            "type": self.type,
            "status": status,
        }
        summary = self.args_summary if self.type == TASK_STATE_EXECUTE else ""
        fields = [*self._common_fields(), ("args_summary", summary), *self._tail_fields()]
        for key, value in fields:
            if value is not None and value != "":
                out[key] = value
        return out

    def to_task_row(self, job_id: str, position: int, status: str = "queued") -> dict[str, Any]:
        """A `prepare_tasks` row (§4.10); unset values are None, `cached` is 0/1/None."""
        cached = self._cached_value()
        return {
            "job_id": job_id,
            "task_id": self.task_id,
            "position": position,
            "type": self.type,
            "status": status,
            "planner_kind": self.planner_kind or None,
            "input_kind": self.input_kind or None,
            "input_id": self.input_id or None,
            "image_id": self.image_id or None,
            "resolved_image_id": self.resolved_image_id or None,
            "task_hash": self.task_hash or None,
            "output_state_id": self.output_state_id or None,
            "cached": None if cached is None else int(cached),
            "instance_mode": self.instance_mode or None,
            "changeset_id": self.changeset_id or None,
            "changeset_author": self.changeset_author or None,
            "changeset_path": self.changeset_path or None,
        }

    @classmethod
    def from_task_row(cls, row: Mapping[str, Any], args_summary: str = "") -> PlanTask:
        """Rebuild a task from a `prepare_tasks` row (extra columns are ignored)."""

        def text(key: str) -> str:
            value = row.get(key)
            return "" if value is None else str(value)

        cached = row.get("cached")
        return cls(
            task_id=text("task_id"),
            type=text("type"),
            planner_kind=text("planner_kind"),
            input_kind=text("input_kind"),
            input_id=text("input_id"),
            image_id=text("image_id"),
            resolved_image_id=text("resolved_image_id"),
            task_hash=text("task_hash"),
            output_state_id=text("output_state_id"),
            cached=None if cached is None else bool(cached),
            instance_mode=text("instance_mode"),
            args_summary=args_summary,
            changeset_id=text("changeset_id"),
            changeset_author=text("changeset_author"),
            changeset_path=text("changeset_path"),
        )


def _head(prepare_kind: str, requested_image_id: str, effective_image_id: str) -> list[PlanTask]:
    tasks = [PlanTask(task_id=PLAN_TASK_ID, type=TASK_PLAN, planner_kind=prepare_kind)]
    if not has_digest(requested_image_id):
        tasks.append(
            PlanTask(
                task_id=RESOLVE_IMAGE_TASK_ID,
                type=TASK_RESOLVE_IMAGE,
                image_id=requested_image_id,
                resolved_image_id=effective_image_id,
            )
        )
    return tasks


def _prepare_instance(final_state_id: str) -> PlanTask:
    return PlanTask(
        task_id=PREPARE_INSTANCE_TASK_ID,
        type=TASK_PREPARE_INSTANCE,
        input_kind=INPUT_STATE,
        input_id=final_state_id,
        instance_mode=INSTANCE_MODE_EPHEMERAL,
    )


def _execute(
    index: int, input_kind: str, input_id: str, task_hash: str, state_exists: StateExists
) -> PlanTask:
    output = state_id(input_kind, input_id, task_hash)
    return PlanTask(
        task_id=execute_task_id(index),
        type=TASK_STATE_EXECUTE,
        input_kind=input_kind,
        input_id=input_id,
        task_hash=task_hash,
        output_state_id=output,
        cached=bool(state_exists(output)),
    )


def build_psql_plan(
    *,
    requested_image_id: str,
    effective_image_id: str,
    step_task_hashes: Sequence[str],
    state_exists: StateExists,
    args_summaries: Sequence[str] | None = None,
) -> list[PlanTask]:
    """The psql plan: one chained `state_execute` per step task hash.

    `resolve-image` is included exactly when the requested id has no digest (§2.7);
    `effective_image_id` is the resolved id (or the requested one when it has a digest).
    `cached` comes from `state_exists(output_state_id)` at planning time.
    """
    if not step_task_hashes:
        raise ValueError("a psql plan needs at least one step")
    if args_summaries is not None and len(args_summaries) != len(step_task_hashes):
        raise ValueError("args_summaries must have one entry per step")
    tasks = _head("psql", requested_image_id, effective_image_id)
    input_kind, input_id = INPUT_IMAGE, effective_image_id
    for index, task_hash in enumerate(step_task_hashes):
        task = _execute(index, input_kind, input_id, task_hash, state_exists)
        if args_summaries is not None and args_summaries[index]:
            task = replace(task, args_summary=args_summaries[index])
        tasks.append(task)
        input_kind, input_id = INPUT_STATE, task.output_state_id
    tasks.append(_prepare_instance(input_id))
    return tasks


@dataclass(frozen=True)
class LbChangeset:
    """One planned Liquibase changeset; `changeset_hash` = checksum, else sha256 of its SQL."""

    changeset_id: str
    author: str
    path: str
    changeset_hash: str

    @property
    def args_summary(self) -> str:
        """`<id>::<author>::<path>` when all three are known (§3.6), else empty."""
        if self.changeset_id and self.author and self.path:
            return f"{self.changeset_id}::{self.author}::{self.path}"
        return ""


def build_lb_plan(
    *,
    requested_image_id: str,
    effective_image_id: str,
    changesets: Sequence[LbChangeset],
    state_exists: StateExists,
) -> list[PlanTask]:
    """The lb plan (§3.4): one task per changeset, each hashed on its input state.

    Zero changesets give a single `execute-0` hashed on the image alone.
    """
    tasks = _head("lb", requested_image_id, effective_image_id)
    input_kind, input_id = INPUT_IMAGE, effective_image_id
    if not changesets:
        task = _execute(0, input_kind, input_id, lb_task_hash(input_id, None), state_exists)
        tasks.append(task)
        input_id = task.output_state_id
    for index, changeset in enumerate(changesets):
        task_hash = lb_task_hash(input_id, changeset.changeset_hash)
        task = replace(
            _execute(index, input_kind, input_id, task_hash, state_exists),
            args_summary=changeset.args_summary,
            changeset_id=changeset.changeset_id,
            changeset_author=changeset.author,
            changeset_path=changeset.path,
        )
        tasks.append(task)
        input_kind, input_id = INPUT_STATE, task.output_state_id
    tasks.append(_prepare_instance(input_id))
    return tasks


def final_state_id(tasks: Sequence[PlanTask]) -> str:
    """Output state of the last `state_execute` task (`""` when there is none)."""
    for task in reversed(tasks):
        if task.type == TASK_STATE_EXECUTE:
            return task.output_state_id
    return ""


def execute_tasks(tasks: Sequence[PlanTask]) -> list[PlanTask]:
    """The `state_execute` tasks, in order."""
    return [task for task in tasks if task.type == TASK_STATE_EXECUTE]
