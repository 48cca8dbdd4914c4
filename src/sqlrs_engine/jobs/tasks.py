"""Task status bookkeeping: the task row and its `task` event change together."""

from __future__ import annotations

from typing import Any

from sqlrs_engine.actors.registry import RegistryProxy
from sqlrs_engine.clock import now_rfc3339
from sqlrs_engine.jobs.event_log import JobEventLog
from sqlrs_engine.jobs.services import ASK_TIMEOUT


class TaskTracker:
    """Moves a job's tasks through queued → running → succeeded/failed."""

    def __init__(self, job_id: str, registry: RegistryProxy, events: JobEventLog) -> None:
        self._job_id = job_id
        self._registry = registry
        self._events = events
        self.running: str | None = None

    def start(self, task_id: str) -> None:
        self._update(task_id, {"status": "running", "started_at": now_rfc3339()})
        self.running = task_id
        self._events.task(task_id, "running")

    def succeed(self, task_id: str, **fields: Any) -> None:
        """Mark succeeded (a task cached at planning time never had a `running` event)."""
        self._update(task_id, {"status": "succeeded", "finished_at": now_rfc3339(), **fields})
        if self.running == task_id:
            self.running = None
        self._events.task(task_id, "succeeded")

    def fail(self, task_id: str, error: dict[str, Any]) -> None:
        self._update(task_id, {"status": "failed", "finished_at": now_rfc3339(), "error": error})
        if self.running == task_id:
            self.running = None
        self._events.task(task_id, "failed", error)

    def update(self, task_id: str, **fields: Any) -> None:
        self._update(task_id, fields)

    def _update(self, task_id: str, fields: dict[str, Any]) -> None:
        self._registry.update_task(self._job_id, task_id, fields).get(timeout=ASK_TIMEOUT)
