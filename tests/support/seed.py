"""Seed a state store's metadata through the engine's own persistence layer."""

from __future__ import annotations

from pathlib import Path

from sqlrs_engine.persistence.database import open_database
from sqlrs_engine.persistence.jobs import JobQueries, JobRecord
from sqlrs_engine.persistence.metadata import InstanceRecord, MetadataQueries, StateRecord
from sqlrs_engine.snapshot.layout import StoreLayout

IMAGE = "postgres@host-15.18"


class Seeder:
    """Writes rows into `<store>/state.db` while no engine has it open."""

    def __init__(self, store: Path) -> None:
        store.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.db = open_database(store / "state.db")
        self.metadata = MetadataQueries(self.db)
        self.jobs = JobQueries(self.db)

    def state(
        self,
        state_id: str,
        parent: str | None = None,
        *,
        kind: str = "psql",
        image: str = IMAGE,
        size: int | None = 1024,
        created_at: str = "2026-01-01T00:00:00Z",
    ) -> str:
        self.metadata.insert_state(
            StateRecord(
                state_id=state_id,
                parent_state_id=parent,
                image_id=image,
                prepare_kind=kind,
                prepare_args_normalized="-c select 1 -X -v ON_ERROR_STOP=1",
                created_at=created_at,
                size_bytes=size,
            )
        )
        return state_id

    def instance(
        self,
        instance_id: str,
        state_id: str,
        *,
        image: str = IMAGE,
        expires_at: str | None = None,
        runtime_id: str | None = "host:1",
    ) -> str:
        self.metadata.insert_instance(
            InstanceRecord(
                instance_id=instance_id,
                state_id=state_id,
                image_id=image,
                created_at="2026-01-02T00:00:00Z",
                runtime_id=runtime_id,
                runtime_dir=None,
                expires_at=expires_at,
            )
        )
        return instance_id

    def name(
        self,
        name: str,
        instance_id: str | None,
        state_id: str,
        *,
        primary: bool = True,
        image: str = IMAGE,
    ) -> None:
        self.metadata.upsert_name(
            {
                "name": name,
                "instance_id": instance_id,
                "state_id": state_id,
                "state_fingerprint": state_id,
                "image_id": image,
                "last_used_at": "2026-01-03T00:00:00Z",
                "is_primary": int(primary),
            }
        )

    def job(
        self,
        job_id: str,
        *,
        status: str = "succeeded",
        plan_only: bool = False,
        created_at: str = "2026-01-01T00:00:00Z",
        signature: str | None = None,
    ) -> str:
        self.jobs.insert_job(
            JobRecord(
                job_id=job_id,
                prepare_kind="psql",
                image_id="postgres:15",
                plan_only=plan_only,
                prepare_args_normalized="-c select 1 -X -v ON_ERROR_STOP=1",
                request_json="{}",
                created_at=created_at,
                status=status,
            )
        )
        fields: dict[str, object] = {}
        if status in ("succeeded", "failed"):
            fields["finished_at"] = created_at
        if signature:
            fields["signature"] = signature
        if fields:
            self.jobs.update_job(job_id, **fields)
        return job_id

    def listed_states(self, state_ids: list[str]) -> None:
        """Many root states at once, each with the minimal complete copy-backend directory the
        start-up sweep requires of a row (it removes rows without one); the store is set to the
        copy backend. For big listings: one transaction, no snapshot made."""
        rows = [{"id": state_id, "image": IMAGE} for state_id in state_ids]
        with self.db as tx:
            tx.executable.exec_driver_sql(
                """INSERT INTO states (state_id, image_id, prepare_kind, prepare_args_normalized,
                       created_at, size_bytes)
                   VALUES (:id, :image, 'psql', '-c select 1', '2026-01-01T00:00:00Z', 1)""",
                rows,
            )
        layout = StoreLayout(self.store)
        for state_id in state_ids:
            pgdata = layout.state_dir(IMAGE, state_id) / "pgdata"
            pgdata.mkdir(parents=True)
            (pgdata / "PG_VERSION").write_text("15\n")
            (pgdata.parent / ".build.ok").write_text("ok")
        (self.store / "config.json").write_text('{"snapshot": {"backend": "copy"}}')

    def finished_jobs(self, jobs: list[tuple[str, str]]) -> None:
        """Many succeeded jobs at once — `(job_id, created_at)` each, with two tasks (plan,
        one state_execute) — in one transaction: big listings without one insert per row."""
        rows = [{"id": job_id, "image": IMAGE, "ts": created_at} for job_id, created_at in jobs]
        tasks = [
            {"id": row["id"], "task": task, "position": position, "type": kind}
            for row in rows
            for position, (task, kind) in enumerate(
                (("plan", "plan"), ("execute-0", "state_execute"))
            )
        ]
        with self.db as tx:
            tx.executable.exec_driver_sql(
                """INSERT INTO prepare_jobs (job_id, status, prepare_kind, image_id,
                       prepare_args_normalized, request_json, created_at, started_at, finished_at)
                   VALUES (:id, 'succeeded', 'psql', :image, '-c select 1', '{}', :ts, :ts, :ts)""",
                rows,
            )
            tx.executable.exec_driver_sql(
                """INSERT INTO prepare_tasks (job_id, task_id, position, type, status, args_summary)
                   VALUES (:id, :task, :position, :type, 'succeeded', '-c select 1')""",
                tasks,
            )

    def close(self) -> None:
        self.db.close()
