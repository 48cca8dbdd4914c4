"""The persistence layer against a real SQLite file: schema, commits, queries."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine.clock import format_rfc3339, utcnow
from sqlrs_engine.persistence.database import SchemaTooNewError, open_database, schema_version
from sqlrs_engine.persistence.jobs import JobQueries, JobRecord
from sqlrs_engine.persistence.metadata import InstanceRecord, MetadataQueries, StateRecord
from sqlrs_engine.persistence.pages import Page
from sqlrs_engine.persistence.schema import SCHEMA_VERSION

STATE = "s" * 64
JOB = "j" * 32


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[MetadataQueries, JobQueries, Path]]:
    db = open_database(tmp_path / "state.db")
    try:
        yield MetadataQueries(db), JobQueries(db), tmp_path / "state.db"
    finally:
        db.close()


def other_connection_can_write(path: Path) -> bool:
    """Another process-like connection gets the write lock at once: nothing is left open."""
    connection = sqlite3.connect(path, timeout=0)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


def seed_state(metadata: MetadataQueries) -> None:
    metadata.insert_state(
        StateRecord(STATE, None, "img@x", "psql", "-c x", "2026-01-01T00:00:00Z", 5)
    )


def seed_job(jobs: JobQueries) -> None:
    jobs.insert_job(
        JobRecord(JOB, "psql", "postgres:15", False, "-c x", "{}", "2026-01-01T00:00:00Z")
    )


WRITES: list[tuple[str, Callable[[MetadataQueries, JobQueries], object]]] = [
    ("insert_state", lambda m, j: seed_state(m)),
    ("set_state_size", lambda m, j: (seed_state(m), m.set_state_size(STATE, 9))),
    ("delete_state", lambda m, j: (seed_state(m), m.delete_state_if_unreferenced(STATE))),
    (
        "refresh_state",
        lambda m, j: (
            seed_state(m),
            m.refresh_state(
                StateRecord(STATE, None, "img@x", "psql", "-c x", "2026-02-01T00:00:00Z", 7)
            ),
        ),
    ),
    (
        "insert_instance",
        lambda m, j: (
            seed_state(m),
            m.insert_instance(
                InstanceRecord("i" * 32, STATE, "img@x", "2026-01-01T00:00:00Z", "host:1", "/x")
            ),
        ),
    ),
    ("set_instance_runtime", lambda m, j: m.set_instance_runtime("i" * 32, "host:2")),
    ("delete_many", lambda m, j: m.delete_many(["i" * 32], [STATE])),
    ("insert_job", lambda m, j: seed_job(j)),
    ("update_job", lambda m, j: (seed_job(j), j.update_job(JOB, status="running"))),
    (
        "replace_tasks",
        lambda m, j: (
            seed_job(j),
            j.replace_tasks(
                JOB, [{"task_id": "plan", "position": 0, "type": "plan", "status": "queued"}]
            ),
        ),
    ),
    ("append_event", lambda m, j: (seed_job(j), j.append_event(JOB, {"type": "log", "ts": "t"}))),
    (
        "update_task",
        lambda m, j: (
            seed_job(j),
            j.replace_tasks(
                JOB, [{"task_id": "plan", "position": 0, "type": "plan", "status": "queued"}]
            ),
            j.update_task(JOB, "plan", status="succeeded"),
        ),
    ),
    ("delete_job", lambda m, j: (seed_job(j), j.delete_job(JOB))),
]


@pytest.mark.parametrize(("name", "write"), WRITES, ids=[name for name, _ in WRITES])
def test_every_write_is_committed_at_once(
    stores: tuple[MetadataQueries, JobQueries, Path],
    name: str,
    write: Callable[[MetadataQueries, JobQueries], object],
) -> None:
    metadata, jobs, path = stores
    write(metadata, jobs)
    assert other_connection_can_write(path), f"{name} left a transaction open"


@pytest.mark.parametrize(
    "read",
    [
        lambda m, j: m.list_states(),
        lambda m, j: m.state_row(STATE),
        lambda m, j: j.list_jobs(),
        lambda m, j: j.job_status(JOB),
        lambda m, j: j.events(JOB),
        lambda m, j: m.list_names(),
    ],
)
def test_reads_leave_no_transaction_open(
    stores: tuple[MetadataQueries, JobQueries, Path],
    read: Callable[[MetadataQueries, JobQueries], object],
) -> None:
    metadata, jobs, path = stores
    seed_state(metadata)
    read(metadata, jobs)
    connection = sqlite3.connect(path)
    connection.execute("INSERT INTO schema_version (version) VALUES (99)")
    connection.commit()
    connection.execute("DELETE FROM schema_version WHERE version = 99")
    connection.commit()
    connection.close()
    assert metadata.state_exists(STATE)


def test_committed_data_is_visible_to_another_connection(
    stores: tuple[MetadataQueries, JobQueries, Path],
) -> None:
    metadata, jobs, path = stores
    seed_state(metadata)
    seed_job(jobs)
    jobs.delete_job(JOB)
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT COUNT(*) FROM states").fetchone() == (1,)
    assert connection.execute("SELECT COUNT(*) FROM prepare_jobs").fetchone() == (0,)
    connection.close()


def test_foreign_keys_and_cascades(stores: tuple[MetadataQueries, JobQueries, Path]) -> None:
    metadata, jobs, _ = stores
    seed_job(jobs)
    jobs.append_event(JOB, {"type": "status", "ts": "t", "status": "queued"})
    jobs.replace_tasks(
        JOB, [{"task_id": "plan", "position": 0, "type": "plan", "status": "queued"}]
    )
    jobs.delete_job(JOB)
    assert jobs.event_count(JOB) == 0
    assert jobs.task_rows(JOB) == []
    with pytest.raises(Exception, match="FOREIGN KEY"):
        metadata.insert_instance(
            InstanceRecord("i" * 32, "missing", "img", "2026-01-01T00:00:00Z", None, None)
        )


def test_schema_version_and_a_newer_database(tmp_path: Path) -> None:
    db = open_database(tmp_path / "state.db")
    assert schema_version(db) == SCHEMA_VERSION
    db.close()
    connection = sqlite3.connect(tmp_path / "state.db")
    connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 5,))
    connection.commit()
    connection.close()
    with pytest.raises(SchemaTooNewError, match="upgrade sqlrs-engine"):
        open_database(tmp_path / "state.db")


def test_reopen_is_idempotent(tmp_path: Path) -> None:
    first = open_database(tmp_path / "state.db")
    MetadataQueries(first).insert_state(
        StateRecord(STATE, None, "img", "psql", "-c x", "2026-01-01T00:00:00Z", 1)
    )
    first.close()
    second = open_database(tmp_path / "state.db")
    assert MetadataQueries(second).state_exists(STATE)
    second.close()


def test_job_prefix_filter_escapes_like_wildcards(
    stores: tuple[MetadataQueries, JobQueries, Path],
) -> None:
    _, jobs, _ = stores
    seed_job(jobs)
    assert [j["job_id"] for j in jobs.list_jobs("JJ")] == [JOB]
    assert jobs.list_jobs("_") == []
    assert jobs.list_jobs("%") == []


CHILD = "c" * 64


@pytest.mark.parametrize(
    ("reference", "deleted"),
    [("none", True), ("instance", False), ("child state", False)],
)
def test_an_invalidated_state_row_stays_while_something_references_it(
    stores: tuple[MetadataQueries, JobQueries, Path], reference: str, deleted: bool
) -> None:
    """A dirty state is rebuilt under the same id; its instances and children keep the row."""
    metadata = stores[0]
    seed_state(metadata)
    if reference == "instance":
        metadata.insert_instance(
            InstanceRecord("i" * 32, STATE, "img@x", "2026-01-01T00:00:00Z", "host:1", "/x")
        )
    if reference == "child state":
        metadata.insert_state(
            StateRecord(CHILD, STATE, "img@x", "psql", "-c y", "2026-01-01T00:00:01Z", 5)
        )
    assert metadata.delete_state_if_unreferenced(STATE) is deleted
    assert metadata.state_exists(STATE) is not deleted


def test_a_rebuilt_state_refreshes_its_size_and_backend(
    stores: tuple[MetadataQueries, JobQueries, Path],
) -> None:
    metadata = stores[0]
    seed_state(metadata)
    created = (metadata.state_row(STATE) or {})["created_at"]
    rebuilt = StateRecord(
        STATE, None, "img@x", "psql", "-c x", "2026-03-01T00:00:00Z", 42, snapshot_backend="btrfs"
    )
    assert metadata.insert_state(rebuilt) is False, "the row outlived its directory"
    metadata.refresh_state(rebuilt)
    row = metadata.state_row(STATE) or {}
    assert (row["size_bytes"], row["snapshot_backend"]) == (42, "btrfs")
    assert row["created_at"] == created


def test_expired_instances_are_found_by_time_not_by_text(
    stores: tuple[MetadataQueries, JobQueries, Path],
) -> None:
    """`expires_at` has a variable fraction ("…05Z" sorts after "…05.5Z" as text)."""
    metadata, _, _ = stores
    seed_state(metadata)
    now = utcnow()
    expiries = {
        "a" * 32: None,
        "b" * 32: format_rfc3339(now - timedelta(seconds=1)),
        "c" * 32: format_rfc3339(now + timedelta(hours=1)),
        "d" * 32: format_rfc3339(now.replace(microsecond=0) - timedelta(seconds=2)),
    }
    for instance_id, expires_at in expiries.items():
        metadata.insert_instance(
            InstanceRecord(
                instance_id,
                STATE,
                "img@x",
                "2026-01-01T00:00:00Z",
                None,
                None,
                expires_at=expires_at,
            )
        )
    assert metadata.expired_instance_ids() == ["b" * 32, "d" * 32]
    assert [i for i, _ in metadata.expiring_instances()] == ["b" * 32, "c" * 32, "d" * 32]
    statuses = {e["instance_id"]: e["status"] for e in metadata.list_instances()}
    assert statuses == {
        "a" * 32: "orphaned",
        "b" * 32: "expired",
        "c" * 32: "orphaned",
        "d" * 32: "expired",
    }


def test_state_db_and_its_side_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.touch(mode=0o644)
    path.chmod(0o644)  # an older engine's file
    db = open_database(path)
    MetadataQueries(db).insert_state(
        StateRecord(STATE, None, "img", "psql", "-c x", "2026-01-01T00:00:00Z", 1)
    )
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    db.close()


def test_migration_2_adds_the_instance_secret(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    from sqlrs_engine.persistence.schema import MIGRATIONS

    for statement in MIGRATIONS[0]:
        connection.execute(statement)
    connection.execute("INSERT INTO schema_version (version) VALUES (1)")
    connection.execute(
        "INSERT INTO states (state_id, image_id, prepare_kind, prepare_args_normalized, "
        "created_at) VALUES (?, 'img', 'psql', '-c x', '2026-01-01T00:00:00Z')",
        (STATE,),
    )
    connection.execute(
        "INSERT INTO instances (instance_id, state_id, image_id, created_at) "
        "VALUES (?, ?, 'img', '2026-01-01T00:00:00Z')",
        ("a" * 32, STATE),
    )
    connection.commit()
    connection.close()
    db = open_database(path)
    metadata = MetadataQueries(db)
    row = metadata.instance_row("a" * 32)
    assert row is not None and row["secret"] is None  # an older engine's instance
    metadata.set_instance_runtime("a" * 32, "host:1", "s3cret")
    metadata.set_instance_runtime("a" * 32, "host:2")  # a restart without a new secret
    row = metadata.instance_row("a" * 32)
    assert row is not None and (row["runtime_id"], row["secret"]) == ("host:2", "s3cret")
    db.close()


# -- paged lists and batched events ----------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 4, 7, 50])
def test_state_pages_concatenate_to_the_whole_list(
    stores: tuple[MetadataQueries, JobQueries, Path], limit: int
) -> None:
    """Keyset pages: no row twice, none lost, the list's order, a short page is the last."""
    metadata, _, _ = stores
    for n in range(7):
        kind = "psql" if n % 2 else "lb"
        metadata.insert_state(
            StateRecord(f"{n:02d}" + "f" * 62, None, "img", kind, "", "2026-01-01T00:00:00Z", n)
        )
    for filters in ({}, {"kind": "psql"}):
        pages = [metadata.list_states_page(**filters, limit=limit)]
        while pages[-1].next_key is not None:
            pages.append(
                metadata.list_states_page(**filters, after=pages[-1].next_key, limit=limit)
            )
        assert all(len(page.rows) <= limit for page in pages)
        assert [row for page in pages for row in page.rows] == metadata.list_states(**filters)


STATE_ROW = {
    "state_id": STATE,
    "parent_state_id": "p" * 64,
    "state_fingerprint": STATE,
    "image_id": "img@x",
    "prepare_kind": "psql",
    "prepare_args_normalized": "-c x",
    "created_at": "2026-01-01T00:00:00Z",
    "size_bytes": 5,
    "last_used_at": "2026-01-02T00:00:00Z",
    "use_count": 3,
    "min_retention_until": "2026-02-01T00:00:00Z",
    "evicted_at": "2026-03-01T00:00:00Z",
    "status": "active",
    "snapshot_backend": "copy",
}
FULL_ENTRY = {
    key: STATE_ROW[key]
    for key in (
        "state_id",
        "parent_state_id",
        "image_id",
        "prepare_kind",
        "prepare_args_normalized",
        "created_at",
        "size_bytes",
        "last_used_at",
        "use_count",
        "min_retention_until",
    )
}


@pytest.mark.parametrize(
    ("changes", "dropped"),
    [
        ({}, ()),
        (
            {"parent_state_id": None, "min_retention_until": None},
            ("parent_state_id", "min_retention_until"),
        ),
        ({"min_retention_until": ""}, ("min_retention_until",)),
        ({"size_bytes": 0, "use_count": 0}, ("size_bytes", "use_count")),
        ({"size_bytes": None}, ("size_bytes",)),
        ({"prepare_args_normalized": ""}, ("prepare_args_normalized",)),
    ],
)
def test_a_state_entry_is_its_api_fields_in_order_without_absent_values(
    stores: tuple[MetadataQueries, JobQueries, Path],
    changes: dict[str, Any],
    dropped: tuple[str, ...],
) -> None:
    """SPEC §7 state entries: API field order, `refcount` last and always there, absent
    (NULL, empty) values and a zero size or use count left out; no internal column leaks."""
    metadata, _, path = stores
    columns = {**STATE_ROW, **changes}
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(
            f"INSERT INTO states ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            list(columns.values()),
        )
    connection.close()
    expected = {k: v for k, v in FULL_ENTRY.items() if k not in dropped} | {"refcount": 0}
    entry = metadata.get_state(STATE)
    assert entry is not None
    assert list(entry.items()) == list(expected.items())
    assert metadata.list_states() == [entry]
    assert metadata.list_states_page(limit=1) == Page([entry], 1)


def all_pages(read: Callable[[Any, int], Page[Any]], limit: int) -> list[Page[Any]]:
    pages = [read(None, limit)]
    while pages[-1].next_key is not None:
        pages.append(read(pages[-1].next_key, limit))
    assert all(len(page.rows) <= limit for page in pages)
    return pages


@pytest.mark.parametrize("plan_only", [False, True])
def test_a_job_entry_has_its_resolved_image_and_plan_flag(
    stores: tuple[MetadataQueries, JobQueries, Path], plan_only: bool
) -> None:
    """SPEC §4.9 job entries: field order, `resolved_image_id` from the resolve-image task,
    `plan_only` only when true (a JSON boolean), absent values left out."""
    _, jobs, _ = stores
    jobs.insert_job(JobRecord(JOB, "psql", "postgres:15", plan_only, "", "{}", "2026-01-01"))
    jobs.update_job(JOB, signature="sig", started_at="2026-01-02")
    jobs.replace_tasks(
        JOB,
        [
            {"task_id": "plan", "position": 0, "type": "plan", "status": "succeeded"},
            {
                "task_id": "resolve-image",
                "position": 1,
                "type": "resolve_image",
                "status": "succeeded",
                "resolved_image_id": "postgres@sha256:ab",
            },
        ],
    )
    expected = {
        "job_id": JOB,
        "status": "queued",
        "prepare_kind": "psql",
        "image_id": "postgres:15",
        "resolved_image_id": "postgres@sha256:ab",
        "signature": "sig",
        **({"plan_only": True} if plan_only else {}),
        "created_at": "2026-01-01",
        "started_at": "2026-01-02",
    }
    [entry] = jobs.list_jobs()
    assert list(entry.items()) == list(expected.items())
    assert entry.get("plan_only", False) is plan_only


def seed_jobs_and_tasks(jobs: JobQueries) -> list[str]:
    """Jobs inserted out of `created_at` order, several created in the same instant (the
    keyset must break ties by rowid), each with tasks replaced out of position order."""
    created = ["2026-01-03", "2026-01-01", "2026-01-02", "2026-01-01", "2026-01-01", "2026-01-02"]
    ids = [f"{n:02d}{'ab'[n % 2]}" + "0" * 29 for n in range(len(created))]
    for job_id, at in zip(ids, created, strict=True):
        jobs.insert_job(JobRecord(job_id, "psql", "img", False, "", "{}", at + "T00:00:00Z"))
        positions = [2, 0, 1] if job_id[1] in "135" else [0]
        jobs.replace_tasks(
            job_id,
            [
                {"task_id": f"t{p}", "position": p, "type": "plan", "status": "queued"}
                for p in positions
            ],
        )
    return ids


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 50])
def test_job_and_task_pages_concatenate_to_the_whole_list_in_spec_order(
    stores: tuple[MetadataQueries, JobQueries, Path], limit: int
) -> None:
    """Jobs by created_at (ties in insertion order), tasks by job_id then position (§4.9),
    filters applied on every page; no row twice, none lost."""
    _, jobs, _ = stores
    ids = seed_jobs_and_tasks(jobs)
    for prefix in (None, "0", "00A"):
        pages = all_pages(partial(jobs.list_jobs_page, prefix), limit)
        listed = [row for page in pages for row in page.rows]
        assert listed == jobs.list_jobs(prefix)
    by_time = [ids[n] for n in (1, 3, 4, 2, 5, 0)]
    assert [row["job_id"] for row in jobs.list_jobs()] == by_time
    assert [row["job_id"] for row in jobs.list_jobs("0")] == by_time
    assert [row["job_id"] for row in jobs.list_jobs("00b")] == []
    assert [row["job_id"] for row in jobs.list_jobs("01B")] == [ids[1]]

    for job_id in (None, ids[1], ids[0], "missing"):
        pages = all_pages(partial(jobs.list_tasks_page, job_id), limit)
        listed = [row for page in pages for row in page.rows]
        assert listed == jobs.list_tasks(job_id)
    expected = [
        (job_id, f"t{p}")
        for job_id in sorted(ids)
        for p in ((0, 1, 2) if job_id[1] in "135" else (0,))
    ]
    assert [(t["job_id"], t["task_id"]) for t in jobs.list_tasks()] == expected
    assert [t["task_id"] for t in jobs.list_tasks(ids[1])] == ["t0", "t1", "t2"]


def test_a_batch_of_events_is_one_transaction_in_order(
    stores: tuple[MetadataQueries, JobQueries, Path],
) -> None:
    _, jobs, _ = stores
    seed_job(jobs)
    batch = [{"type": "log", "ts": f"t{n}", "message": f"line {n}"} for n in range(1000)]
    jobs.append_events(JOB, batch)
    jobs.append_events(JOB, [])
    assert jobs.event_count(JOB) == 1000
    assert [event["message"] for event in jobs.events(JOB, 998)] == ["line 998", "line 999"]


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([], {"state_count": 0, "usage_bytes": 0, "smallest_bytes": None, "unmeasured": 0}),
        ([5, 7], {"state_count": 2, "usage_bytes": 12, "smallest_bytes": 5, "unmeasured": 0}),
        ([None, 7], {"state_count": 2, "usage_bytes": 7, "smallest_bytes": 7, "unmeasured": 1}),
        ([0, None], {"state_count": 2, "usage_bytes": 0, "smallest_bytes": None, "unmeasured": 2}),
    ],
)
def test_cache_usage_sums_the_measured_states_and_counts_the_others(
    stores: tuple[MetadataQueries, JobQueries, Path],
    sizes: list[int | None],
    expected: dict[str, object],
) -> None:
    metadata = stores[0]
    for n, size in enumerate(sizes):
        metadata.insert_state(
            StateRecord(f"{n:064x}", None, "img@x", "psql", "-c x", "2026-01-01T00:00:00Z", size)
        )
    assert metadata.cache_usage() == expected


def test_the_cache_inventory_has_what_the_policy_reads(
    stores: tuple[MetadataQueries, JobQueries, Path],
) -> None:
    metadata = stores[0]
    seed_state(metadata)
    metadata.insert_state(
        StateRecord(CHILD, STATE, "img@x", "psql", "-c y", "2026-01-01T00:00:01Z", None)
    )
    metadata.insert_instance(
        InstanceRecord("i" * 32, STATE, "img@x", "2026-01-01T00:00:00Z", "host:1", "/x")
    )
    rows = {row["state_id"]: row for row in metadata.cache_inventory()}
    assert rows[STATE] == {
        "state_id": STATE,
        "parent_state_id": None,
        "image_id": "img@x",
        "size_bytes": 5,
        "created_at": "2026-01-01T00:00:00Z",
        "last_used_at": "2026-01-01T00:00:00Z",
        "min_retention_until": None,
        "refcount": 1,
    }
    assert (rows[CHILD]["parent_state_id"], rows[CHILD]["refcount"]) == (STATE, 0)
    assert rows[CHILD]["size_bytes"] is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": "running"}, {"status": "running", "error_json": None}),
        (
            {"status": "failed", "error": {"code": "x"}},
            {"status": "failed", "error_json": '{"code":"x"}'},
        ),
        ({"no_such_column": 1}, {"status": "queued", "error_json": None}),
        ({}, {"status": "queued", "error_json": None}),
    ],
)
def test_update_task_sets_known_columns_only(
    stores: tuple[MetadataQueries, JobQueries, Path],
    fields: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    """Unknown columns are ignored (as `dataset` did); keys never move; JSON is encoded."""
    _metadata, jobs, _path = stores
    seed_job(jobs)
    jobs.replace_tasks(
        JOB, [{"task_id": "plan", "position": 0, "type": "plan", "status": "queued"}]
    )
    jobs.update_task(JOB, "plan", **fields)
    [row] = jobs.task_rows(JOB)
    assert row["job_id"] == JOB
    assert {k: row[k] for k in expected} == expected


def test_row_updates_inside_a_transaction_roll_back_with_it(
    stores: tuple[MetadataQueries, JobQueries, Path],
) -> None:
    _metadata, jobs, path = stores
    seed_job(jobs)
    db = jobs._db  # the transaction a Registry message opens around several writes
    with pytest.raises(RuntimeError), db:
        jobs.update_job(JOB, status="running")
        assert jobs.job_row(JOB)["status"] == "running"
        raise RuntimeError("refused")
    assert jobs.job_row(JOB)["status"] == "queued"
    assert other_connection_can_write(path)
