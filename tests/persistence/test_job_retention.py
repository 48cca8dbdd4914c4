"""Retention by signature in SQL (SPEC §4.11, §0.1): which finished jobs may be trimmed, and
that finding them reads the old jobs and at most `keep` fresh ones, not the signature's all."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dataset
import pytest

from sqlrs_engine.persistence.database import open_database
from sqlrs_engine.persistence.jobs import JobQueries, JobRecord
from sqlrs_engine.persistence.schema import MIGRATIONS

NOW = 1_790_000_000.0
"""A fixed "now" (2026-09-21T14:13:20Z): finish stamps below are seconds before it."""
MIN_AGE = 300.0


def stamp(seconds_before: float) -> str:
    from datetime import UTC, datetime

    from sqlrs_engine.clock import format_rfc3339

    return format_rfc3339(datetime.fromtimestamp(NOW - seconds_before, UTC))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[dataset.Database]:
    database = open_database(tmp_path / "state.db")
    try:
        yield database
    finally:
        database.close()


def add_job(
    jobs: JobQueries,
    index: int,
    finished: str | None,
    signature: str = "sig",
    status: str = "succeeded",
) -> str:
    job_id = f"{index:032x}"
    jobs.insert_job(JobRecord(job_id, "psql", "img", False, "-c x", "{}", stamp(7200)))
    fields: dict[str, Any] = {"status": status, "signature": signature}
    if finished is not None:
        fields["finished_at"] = finished
    jobs.update_job(job_id, **fields)
    return job_id


def candidates(jobs: JobQueries, keep: int = 2, signature: str = "sig") -> list[str]:
    return jobs.retention_candidates(signature, keep, NOW - MIN_AGE)


AGES = {"fresh": 10.0, "old": 3600.0}


@pytest.mark.parametrize(
    ("finished", "keep", "victims"),
    [
        # Oldest first in `finished`; victims are indexes into it, newest first.
        (["old", "old", "old", "old"], 2, [1, 0]),  # beyond the newest two
        (["old", "old", "old", "fresh"], 2, [1, 0]),  # a fresh one counts toward the two
        (["old", "old", "fresh", "fresh", "fresh"], 2, [1, 0]),  # fresh beyond two stay
        (["fresh", "fresh", "fresh", "fresh"], 2, []),  # nothing is old enough
        (["old", "old"], 2, []),  # within the newest two
        (["old", "old", "old"], 0, [2, 1, 0]),  # keep none (the caller never asks for 0)
        ([], 2, []),
    ],
)
def test_victims_are_the_old_jobs_beyond_the_newest(
    db: dataset.Database, finished: list[str], keep: int, victims: list[int]
) -> None:
    jobs = JobQueries(db)
    ids = [add_job(jobs, i, stamp(AGES[age] - i)) for i, age in enumerate(finished)]
    assert candidates(jobs, keep) == [ids[i] for i in victims]


def test_finish_times_order_as_time_not_as_text(db: dataset.Database) -> None:
    """`format_rfc3339` cuts trailing zeros: `…:05Z` < `…:05.1Z` < `…:05.12Z` in time, but
    not as text ('Z' sorts after digits and '.')."""
    jobs = JobQueries(db)
    base = stamp(3600)[:-1]  # whole seconds: "YYYY-MM-DDTHH:MM:SS"
    newest = add_job(jobs, 0, base + ".12Z")
    middle = add_job(jobs, 1, base + ".1Z")
    oldest = add_job(jobs, 2, base + "Z")
    assert candidates(jobs, keep=1) == [middle, oldest]
    assert candidates(jobs, keep=2) == [oldest]
    assert newest not in candidates(jobs, keep=0)[1:]


def test_equal_finish_times_order_by_insertion(db: dataset.Database) -> None:
    jobs = JobQueries(db)
    ids = [add_job(jobs, i, stamp(3600)) for i in range(3)]
    assert candidates(jobs, keep=1) == [ids[1], ids[0]]


def test_only_finished_jobs_of_the_signature_are_candidates(db: dataset.Database) -> None:
    jobs = JobQueries(db)
    add_job(jobs, 0, None, status="running")  # old by creation, but not finished
    add_job(jobs, 1, stamp(3600), signature="other")
    failed = add_job(jobs, 2, stamp(3600), status="failed")
    assert candidates(jobs, keep=0) == [failed]
    assert candidates(jobs, keep=0, signature="none") == []


def test_a_finished_job_without_a_finish_time_ages_from_its_creation(
    db: dataset.Database,
) -> None:
    jobs = JobQueries(db)
    job_id = add_job(jobs, 0, None, status="failed")  # created two hours before NOW
    assert candidates(jobs, keep=0) == [job_id]


def vm_steps(db: dataset.Database, jobs: JobQueries) -> int:
    """SQLite virtual-machine instructions one retention query costs: a measure of rows
    read that does not depend on the machine's speed."""
    connection: sqlite3.Connection = db.executable.connection.driver_connection
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    connection.set_progress_handler(count, 1)
    try:
        assert candidates(jobs) == []
    finally:
        connection.set_progress_handler(None, 1)
    return steps


def test_the_query_does_not_read_the_fresh_jobs_beyond_the_newest(
    db: dataset.Database,
) -> None:
    """A signature hit thousands of times within `minAge` costs each finishing job what a
    signature hit a few times costs: every job asks, so reading them all were quadratic."""
    jobs = JobQueries(db)
    for index in range(5):
        add_job(jobs, index, stamp(60 - index * 0.01))
    few = vm_steps(db, jobs)
    connection: sqlite3.Connection = db.executable.connection.driver_connection
    connection.executemany(
        "INSERT INTO prepare_jobs (job_id, status, prepare_kind, image_id, signature, "
        "created_at, finished_at) VALUES (?, 'succeeded', 'psql', 'img', 'sig', ?, ?)",
        [(f"f{i:031x}", stamp(100), stamp(50 - i * 0.001)) for i in range(5000)],
    )
    connection.commit()
    assert vm_steps(db, jobs) <= few + 20


def test_migration_4_replaces_the_signature_index(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for migration in MIGRATIONS[:3]:
        for statement in migration:
            connection.execute(statement)
    connection.execute("INSERT INTO schema_version (version) VALUES (3)")
    connection.commit()
    connection.close()
    open_database(path).close()
    connection = sqlite3.connect(path)
    try:
        indexes = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert "idx_jobs_retention" in indexes
        assert "idx_jobs_signature" not in indexes
    finally:
        connection.close()
