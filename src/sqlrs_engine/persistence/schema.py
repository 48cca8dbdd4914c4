"""Schema of `state.db` as an ordered list of forward migrations.

The version table records how many migrations ran; opening a database applies the missing
ones in one transaction each. Never edit a released migration: append a new one.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: metadata (SPEC §7.5) and queue (§4.10) tables.
    (
        """CREATE TABLE IF NOT EXISTS states (
            state_id TEXT PRIMARY KEY,
            parent_state_id TEXT,
            state_fingerprint TEXT UNIQUE,
            image_id TEXT NOT NULL,
            prepare_kind TEXT NOT NULL,
            prepare_args_normalized TEXT NOT NULL,
            created_at TEXT NOT NULL,
            size_bytes INTEGER,
            last_used_at TEXT,
            use_count INTEGER NOT NULL DEFAULT 0,
            min_retention_until TEXT,
            evicted_at TEXT,
            eviction_reason TEXT,
            status TEXT,
            snapshot_backend TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS idx_states_parent ON states(parent_state_id)",
        "CREATE INDEX IF NOT EXISTS idx_states_image ON states(image_id)",
        """CREATE TABLE IF NOT EXISTS instances (
            instance_id TEXT PRIMARY KEY,
            state_id TEXT NOT NULL REFERENCES states(state_id),
            image_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            runtime_id TEXT,
            runtime_dir TEXT,
            status TEXT,
            job_id TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS idx_instances_state ON instances(state_id)",
        """CREATE TABLE IF NOT EXISTS names (
            name TEXT PRIMARY KEY,
            instance_id TEXT,
            state_id TEXT,
            state_fingerprint TEXT NOT NULL,
            image_id TEXT NOT NULL,
            last_used_at TEXT,
            is_primary INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX IF NOT EXISTS idx_names_instance ON names(instance_id)",
        "CREATE INDEX IF NOT EXISTS idx_names_state ON names(state_id)",
        """CREATE TABLE IF NOT EXISTS prepare_jobs (
            job_id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            prepare_kind TEXT NOT NULL,
            image_id TEXT NOT NULL,
            plan_only INTEGER NOT NULL DEFAULT 0,
            snapshot_mode TEXT NOT NULL DEFAULT 'always',
            prepare_args_normalized TEXT,
            signature TEXT,
            request_json TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            result_json TEXT,
            error_json TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS idx_jobs_signature ON prepare_jobs(signature)",
        """CREATE TABLE IF NOT EXISTS prepare_tasks (
            job_id TEXT NOT NULL REFERENCES prepare_jobs(job_id) ON DELETE CASCADE,
            task_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            type TEXT NOT NULL,
            status TEXT NOT NULL,
            planner_kind TEXT,
            input_kind TEXT,
            input_id TEXT,
            image_id TEXT,
            resolved_image_id TEXT,
            task_hash TEXT,
            output_state_id TEXT,
            cached INTEGER,
            instance_mode TEXT,
            changeset_id TEXT,
            changeset_author TEXT,
            changeset_path TEXT,
            args_summary TEXT,
            started_at TEXT,
            finished_at TEXT,
            error_json TEXT,
            PRIMARY KEY (job_id, task_id)
        )""",
        """CREATE TABLE IF NOT EXISTS prepare_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL REFERENCES prepare_jobs(job_id) ON DELETE CASCADE,
            type TEXT NOT NULL,
            ts TEXT NOT NULL,
            status TEXT,
            task_id TEXT,
            message TEXT,
            result_json TEXT,
            error_json TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS idx_events_job ON prepare_events(job_id, seq)",
    ),
    # 2: per-instance credentials (SPEC §0.9): the superuser password of the instance's server.
    ("ALTER TABLE instances ADD COLUMN secret TEXT",),
    # 3: keyset pages of the job and task listings (SPEC §4.9 orders) seek through an index
    # instead of sorting the whole table for every page; a job entry's `resolved_image_id`
    # is read from a small covering index of the resolve-image tasks alone.
    (
        "CREATE INDEX IF NOT EXISTS idx_jobs_created ON prepare_jobs(created_at)",
        "CREATE INDEX IF NOT EXISTS idx_tasks_position ON prepare_tasks(job_id, position)",
        """CREATE INDEX IF NOT EXISTS idx_tasks_resolved ON prepare_tasks(job_id, resolved_image_id)
               WHERE type = 'resolve_image'""",
    ),
    # 4: retention by signature (SPEC §4.11) reads only the jobs it may trim and at most
    # `maxIdentical` others: finished jobs are indexed by signature and finish time as a
    # number (the RFC 3339 text, with its trailing zeros cut, does not sort as time does).
    # It replaces the signature-only index, which made every finished job read all jobs of
    # its signature — thousands within `minAge` of a pipeline's repeated prepare.
    (
        """CREATE INDEX IF NOT EXISTS idx_jobs_retention
               ON prepare_jobs(signature, julianday(COALESCE(finished_at, created_at)))
               WHERE status IN ('succeeded', 'failed')""",
        "DROP INDEX IF EXISTS idx_jobs_signature",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)
