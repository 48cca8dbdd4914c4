"""Seed a state store's metadata through the engine's own persistence layer."""

from __future__ import annotations

from pathlib import Path

from sqlrs_engine.persistence.database import open_database
from sqlrs_engine.persistence.jobs import JobQueries, JobRecord
from sqlrs_engine.persistence.metadata import InstanceRecord, MetadataQueries, StateRecord

IMAGE = "postgres@host-15.18"


class Seeder:
    """Writes rows into `<store>/state.db` while no engine has it open."""

    def __init__(self, store: Path) -> None:
        store.mkdir(parents=True, exist_ok=True)
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

    def close(self) -> None:
        self.db.close()
