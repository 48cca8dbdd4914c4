"""Task status bookkeeping: the task row and its `task` event change together.

Both go into the job's event log as one pending item pair and are stored in one transaction
with the batch that carries them (jobs/event_log.py): a running task is sent at once, other
changes with the job's next batch (at the latest its next status).
"""

from __future__ import annotations

from typing import Any

from sqlrs_engine.clock import now_rfc3339
from sqlrs_engine.jobs.event_log import JobEventLog


class TaskTracker:
    """Moves a job's tasks through queued → running → succeeded/failed."""

    def __init__(self, job_id: str, events: JobEventLog) -> None:
        self._job_id = job_id
        self._events = events
        self.running: str | None = None

    def start(self, task_id: str) -> None:
        self.running = task_id
        self._events.task(
            task_id, "running", row={"status": "running", "started_at": now_rfc3339()}
        )

    def succeed(self, task_id: str, **fields: Any) -> None:
        """Mark succeeded (a task cached at planning time never had a `running` event)."""
        row = {"status": "succeeded", "finished_at": now_rfc3339(), **fields}
        if self.running == task_id:
            self.running = None
        self._events.task(task_id, "succeeded", row=row)

    def fail(self, task_id: str, error: dict[str, Any]) -> None:
        row = {"status": "failed", "finished_at": now_rfc3339(), "error": error}
        if self.running == task_id:
            self.running = None
        self._events.task(task_id, "failed", error, row=row)

    def update(self, task_id: str, **fields: Any) -> None:
        self._events.task_row(task_id, fields)
