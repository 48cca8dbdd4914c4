"""Queries over the prepare queue: jobs, their tasks and their events (SPEC §4)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dataset

from sqlrs_engine.dbms.dsn import with_password, with_port
from sqlrs_engine.persistence.pages import Page, entries_page, page_of
from sqlrs_engine.persistence.rows import Row, compact, dump_json, like_prefix, load_json
from sqlrs_engine.persistence.sql import (
    execute,
    fetch,
    fetch_entries,
    fetch_one,
    update_where,
)
from sqlrs_engine.prepare.plan import PlanTask

TERMINAL_STATUSES = frozenset({"succeeded", "failed"})

EVENT_FIELDS = ("type", "ts", "status", "task_id", "message", "result", "error")

TASK_COLUMNS = (
    "task_id",
    "position",
    "type",
    "status",
    "planner_kind",
    "input_kind",
    "input_id",
    "image_id",
    "resolved_image_id",
    "task_hash",
    "output_state_id",
    "cached",
    "instance_mode",
    "changeset_id",
    "changeset_author",
    "changeset_path",
    "args_summary",
)


JobKey = tuple[str, int]
"""Where a page of jobs resumes: the last row's `(created_at, rowid)`."""

TaskKey = tuple[str, int]
"""Where a page of tasks resumes: the last row's `(job_id, position)`."""


@dataclass(frozen=True)
class JobRecord:
    """A newly submitted job (SPEC §2.1)."""

    job_id: str
    prepare_kind: str
    image_id: str
    plan_only: bool
    prepare_args_normalized: str
    request_json: str
    created_at: str
    status: str = "queued"


@dataclass(frozen=True)
class RowChange:
    """A write to a job's own row (`task_id` None) or to one of its task rows, sent with the
    job's events and stored in their transaction (jobs/event_log.py batches them)."""

    fields: Mapping[str, Any]
    task_id: str | None = None


def canonical_event(event: Mapping[str, Any]) -> Row:
    """An event in the API's field order (SPEC §4.3), absent fields dropped."""
    return compact({key: event.get(key) for key in EVENT_FIELDS})


def event_from_row(row: Mapping[str, Any]) -> Row:
    """The API shape of a persisted event."""
    return canonical_event(
        {
            **row,
            "result": load_json(row["result_json"]),
            "error": load_json(row["error_json"]),
        }
    )


class JobQueries:
    """Jobs, tasks and events in one `dataset` database."""

    def __init__(self, db: dataset.Database) -> None:
        self._db = db

    # -- jobs ------------------------------------------------------------------------------

    def insert_job(self, record: JobRecord) -> None:
        # Plain SQL, like the events: `dataset`'s insert checks the table's columns first,
        # which costs a cache hit more than the insert itself.
        row = {
            "job_id": record.job_id,
            "status": record.status,
            "prepare_kind": record.prepare_kind,
            "image_id": record.image_id,
            "plan_only": int(record.plan_only),
            "snapshot_mode": "always",
            "prepare_args_normalized": record.prepare_args_normalized,
            "request_json": record.request_json,
            "created_at": record.created_at,
        }
        with self._db as tx:
            tx.executable.exec_driver_sql(_INSERT_JOB, [row])

    def job_row(self, job_id: str) -> Row | None:
        return fetch_one(self._db, "SELECT * FROM prepare_jobs WHERE job_id = :id", id=job_id)

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Update columns of a job; `result`/`error` values are stored as JSON."""
        values = dict(fields)
        for key in ("result", "error"):
            if key in values:
                values[f"{key}_json"] = dump_json(values.pop(key))
        update_where(self._db, "prepare_jobs", {"job_id": job_id}, values)

    def move_result_port(self, job_id: str, port: int) -> bool:
        """Point the DSN of a job's result at `port` (its instance's server moved there);
        True when the result changed. The `result` event keeps what was sent at the time."""
        return self._rewrite_result_dsn(job_id, lambda dsn: with_port(dsn, port))

    def set_result_password(self, job_id: str, password: str) -> bool:
        """Give the DSN of a job's result its instance's password (an instance of an older
        engine got one at its server's restart, SPEC §0.9); True when the result changed."""
        return self._rewrite_result_dsn(job_id, lambda dsn: with_password(dsn, password))

    def _rewrite_result_dsn(self, job_id: str, rewrite: Callable[[str], str]) -> bool:
        row = self.job_row(job_id)
        result = load_json(row["result_json"]) if row and row["result_json"] else None
        if not isinstance(result, dict) or not isinstance(result.get("dsn"), str):
            return False
        updated = rewrite(result["dsn"])
        if updated == result["dsn"]:
            return False
        result["dsn"] = updated
        self.update_job(job_id, result=result)
        return True

    def states_used_by_unfinished_jobs(self) -> set[str]:
        """State ids that queued or running jobs start from or will produce (their plans):
        eviction must leave them alone (issue 14)."""
        rows = fetch(
            self._db,
            """SELECT t.input_id AS id FROM prepare_tasks t
                   JOIN prepare_jobs j ON j.job_id = t.job_id
                   WHERE j.status IN ('queued', 'running') AND t.input_kind = 'state'
               UNION
               SELECT t.output_state_id AS id FROM prepare_tasks t
                   JOIN prepare_jobs j ON j.job_id = t.job_id
                   WHERE j.status IN ('queued', 'running') AND t.output_state_id IS NOT NULL""",
        )
        return {str(row["id"]) for row in rows if row["id"]}

    def delete_job(self, job_id: str) -> None:
        """Delete a job; its tasks and events go with it (ON DELETE CASCADE)."""
        execute(self._db, "DELETE FROM prepare_jobs WHERE job_id = :id", id=job_id)

    def unfinished_job_rows(self) -> list[Row]:
        return fetch(
            self._db,
            """SELECT * FROM prepare_jobs WHERE status IN ('queued', 'running')
                   ORDER BY created_at, rowid""",
        )

    def retention_candidates(self, signature: str, keep: int, finished_before: float) -> list[str]:
        """Terminal jobs of `signature` beyond its newest `keep` that finished before the
        epoch `finished_before`, newest first (SPEC §4.11 order, ties by insertion).

        Through `idx_jobs_retention` this reads at most `keep` fresh rows and the old ones
        (which the caller trims), however many fresh jobs the signature has: each finished
        job asks, so a whole-signature read would make a burst of identical hits quadratic.
        """
        cutoff = finished_before / 86400.0 + _UNIX_EPOCH_JULIAN_DAY
        params = {"sig": signature, "cutoff": cutoff, "keep": keep}
        fresh = fetch_one(self._db, _COUNT_FRESH, **params)
        kept_old = max(0, keep - (fresh["fresh"] if fresh else 0))
        rows = fetch(self._db, _OLD_BY_SIGNATURE, skip=kept_old, **params)
        return [row["job_id"] for row in rows]

    def list_jobs(self, job_prefix: str | None = None) -> list[Row]:
        """Job entries (SPEC §4.9), `job_prefix` matched case-insensitively as a prefix."""
        return self.list_jobs_page(job_prefix).rows

    def list_jobs_page(
        self, job_prefix: str | None = None, after: JobKey | None = None, limit: int = -1
    ) -> Page[JobKey]:
        """One page of `list_jobs`: entries after keyset `after` (created_at, rowid), at most
        `limit` (-1: all). The index on `created_at` (rowid is in every index) serves both
        the order and the seek; `resolved_image_id` comes from a partial index of the
        resolve-image tasks without touching the task table."""
        clauses = []
        params: dict[str, Any] = {"limit": limit}
        if job_prefix:
            clauses.append("lower(j.job_id) LIKE :prefix ESCAPE '\\'")
            params["prefix"] = like_prefix(job_prefix.lower())
        if after is not None:
            clauses.append("(j.created_at, j.rowid) > (:after_at, :after_row)")
            params.update(after_at=after[0], after_row=after[1])
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        entries, last_key = fetch_entries(
            self._db,
            f"""SELECT j.job_id, j.status, j.prepare_kind, j.image_id,
                    (SELECT t.resolved_image_id FROM prepare_tasks t
                     WHERE t.job_id = j.job_id AND t.type = 'resolve_image') AS resolved_image_id,
                    j.prepare_args_normalized, j.signature,
                    CASE WHEN j.plan_only THEN 1 END AS plan_only,
                    j.created_at, j.started_at, j.finished_at,
                    j.created_at AS key_created_at, j.rowid AS key_row
                FROM prepare_jobs j {where} ORDER BY j.created_at, j.rowid LIMIT :limit""",
            key_columns=2,
            **params,
        )
        for entry in entries:
            if "plan_only" in entry:
                entry["plan_only"] = True  # a JSON boolean; SQLite has none
        key = None if last_key is None else (str(last_key[0]), int(last_key[1]))
        return entries_page(entries, limit, key)

    def job_status(self, job_id: str) -> Row | None:
        """The job status object of SPEC §4.2, or None."""
        row = self.job_row(job_id)
        if row is None:
            return None
        status = compact(
            {
                "job_id": row["job_id"],
                "status": row["status"],
                "prepare_kind": row["prepare_kind"],
                "image_id": row["image_id"],
                "plan_only": True if row["plan_only"] else None,
                "prepare_args_normalized": row["prepare_args_normalized"],
                "created_at": row["created_at"],
                "started_at": row["started_at"],
                "finished_at": row["finished_at"],
            }
        )
        tasks = [_plan_task(task) for task in self.task_rows(job_id)]
        if tasks:
            status["tasks"] = tasks
        if row["status"] == "succeeded" and row["result_json"]:
            status["result"] = load_json(row["result_json"])
        if row["status"] == "failed" and row["error_json"]:
            status["error"] = load_json(row["error_json"])
        return status

    # -- tasks -----------------------------------------------------------------------------

    def replace_tasks(self, job_id: str, tasks: Iterable[Mapping[str, Any]]) -> None:
        """Replace the job's task rows (planning, re-planning) in one transaction."""
        rows = []
        for task in tasks:
            row = {key: task.get(key) for key in TASK_COLUMNS}
            if row["cached"] is not None:
                row["cached"] = int(bool(row["cached"]))
            row["job_id"] = job_id
            rows.append(row)
        with self._db as tx:
            tx.query("DELETE FROM prepare_tasks WHERE job_id = :id", id=job_id)
            if rows:
                tx.executable.exec_driver_sql(_INSERT_TASK, rows)

    def update_task(self, job_id: str, task_id: str, **fields: Any) -> None:
        values = dict(fields)
        if "error" in values:
            values["error_json"] = dump_json(values.pop("error"))
        if "cached" in values and values["cached"] is not None:
            values["cached"] = int(bool(values["cached"]))
        update_where(self._db, "prepare_tasks", {"job_id": job_id, "task_id": task_id}, values)

    def task_rows(self, job_id: str) -> list[Row]:
        return fetch(
            self._db, "SELECT * FROM prepare_tasks WHERE job_id = :id ORDER BY position", id=job_id
        )

    def has_running_task(self, job_id: str) -> bool:
        rows = fetch(
            self._db,
            """SELECT 1 FROM prepare_tasks WHERE job_id = :id AND status = 'running'
               LIMIT 1""",
            id=job_id,
        )
        return next(iter(rows), None) is not None

    def list_tasks(self, job_id: str | None = None) -> list[Row]:
        """Task entries (SPEC §4.9), `job_id` an exact filter."""
        return self.list_tasks_page(job_id).rows

    def list_tasks_page(
        self, job_id: str | None = None, after: TaskKey | None = None, limit: int = -1
    ) -> Page[TaskKey]:
        """One page of `list_tasks`: entries after keyset `after` (job_id, position), at most
        `limit` (-1: all), read through the index on those two columns."""
        clauses = []
        params: dict[str, Any] = {"limit": limit}
        if job_id:
            clauses.append("job_id = :id")
            params["id"] = job_id
        if after is not None:
            clauses.append("(job_id, position) > (:after_job, :after_position)")
            params.update(after_job=after[0], after_position=after[1])
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        rows = fetch(
            self._db,
            f"SELECT * FROM prepare_tasks {where} ORDER BY job_id, position LIMIT :limit",
            **params,
        )
        return page_of(rows, limit, _task_entry, _task_key)

    # -- events ----------------------------------------------------------------------------

    def append_event(self, job_id: str, event: Mapping[str, Any]) -> None:
        """Persist an event at the end of the job's event list."""
        self.append_events(job_id, [event])

    def append_events(self, job_id: str, events: Iterable[Mapping[str, Any]]) -> None:
        """Persist events at the end of the job's event list, in one transaction."""
        rows = [_event_row(job_id, event) for event in events]
        if not rows:
            return
        with self._db as tx:
            tx.executable.exec_driver_sql(_INSERT_EVENT, rows)

    def apply(self, job_id: str, items: Iterable[Mapping[str, Any] | RowChange]) -> list[Row]:
        """Row changes and events of a job, in order, in one transaction; returns the events
        (canonical) that were appended."""
        events: list[Row] = []
        with self._db:
            for item in items:
                if isinstance(item, RowChange):
                    if item.task_id is None:
                        self.update_job(job_id, **item.fields)
                    else:
                        self.update_task(job_id, item.task_id, **item.fields)
                else:
                    events.append(canonical_event(item))
            self.append_events(job_id, events)
        return events

    def event_count(self, job_id: str) -> int:
        row = fetch_one(
            self._db, "SELECT COUNT(*) AS n FROM prepare_events WHERE job_id = :id", id=job_id
        )
        return int(row["n"]) if row else 0

    def events(self, job_id: str, start: int = 0, stop: int | None = None) -> list[Row]:
        """Events with index in [start, stop) in order."""
        limit = -1 if stop is None else max(0, stop - start)
        rows = fetch(
            self._db,
            """SELECT * FROM prepare_events WHERE job_id = :id ORDER BY seq
               LIMIT :limit OFFSET :offset""",
            id=job_id,
            limit=limit,
            offset=start,
        )
        return [event_from_row(row) for row in rows]


_INSERT_JOB = """INSERT INTO prepare_jobs
    (job_id, status, prepare_kind, image_id, plan_only, snapshot_mode, prepare_args_normalized,
     request_json, created_at)
    VALUES (:job_id, :status, :prepare_kind, :image_id, :plan_only, :snapshot_mode,
     :prepare_args_normalized, :request_json, :created_at)"""

_UNIX_EPOCH_JULIAN_DAY = 2440587.5
"""The Julian day of 1970-01-01T00:00:00Z: SQLite's `julianday` of a Unix epoch of 0."""

_FINISHED = "julianday(COALESCE(finished_at, created_at))"
"""A terminal job's finish time as a number: the expression `idx_jobs_retention` indexes
(schema migration 4), spelled exactly so the planner uses it."""

_TERMINAL_OF_SIGNATURE = "signature = :sig AND status IN ('succeeded', 'failed')"

_COUNT_FRESH = f"""SELECT COUNT(*) AS fresh FROM (
    SELECT 1 FROM prepare_jobs
     WHERE {_TERMINAL_OF_SIGNATURE} AND {_FINISHED} >= :cutoff LIMIT :keep)"""

_OLD_BY_SIGNATURE = f"""SELECT job_id FROM prepare_jobs
     WHERE {_TERMINAL_OF_SIGNATURE} AND {_FINISHED} < :cutoff
     ORDER BY {_FINISHED} DESC, rowid DESC LIMIT -1 OFFSET :skip"""

_INSERT_TASK = (
    "INSERT INTO prepare_tasks (job_id, "
    + ", ".join(TASK_COLUMNS)
    + ") VALUES (:job_id, "
    + ", ".join(f":{column}" for column in TASK_COLUMNS)
    + ")"
)

_INSERT_EVENT = """INSERT INTO prepare_events
    (job_id, type, ts, status, task_id, message, result_json, error_json)
    VALUES (:job_id, :type, :ts, :status, :task_id, :message, :result_json, :error_json)"""


def _event_row(job_id: str, event: Mapping[str, Any]) -> Row:
    return {
        "job_id": job_id,
        "type": event["type"],
        "ts": event["ts"],
        "status": event.get("status"),
        "task_id": event.get("task_id"),
        "message": event.get("message"),
        "result_json": dump_json(event.get("result")),
        "error_json": dump_json(event.get("error")),
    }


def _task_key(row: Row) -> TaskKey:
    return (str(row["job_id"]), int(row["position"]))


def _plan_task(row: Mapping[str, Any]) -> Row:
    """A job status `tasks` entry: rendered by `PlanTask`, the one owner of task shapes."""
    return PlanTask.from_task_row(row).to_status_json()


def _task_entry(row: Mapping[str, Any]) -> Row:
    """A `/v1/tasks` entry (SPEC §4.9), rendered by `PlanTask` like the status entries."""
    task = PlanTask.from_task_row(row, args_summary=row.get("args_summary") or "")
    return task.to_task_entry(str(row["job_id"]), str(row["status"]))


def is_terminal(status: str | None) -> bool:
    return status in TERMINAL_STATUSES
