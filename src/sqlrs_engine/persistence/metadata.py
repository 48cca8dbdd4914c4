"""Queries over states, instances and names (SPEC §7) and their API entries.

Entries are built here because their derived fields (`status`, `refcount`, the primary name)
are facts of the data, computed in SQL next to the rows they come from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dataset

from sqlrs_engine.clock import format_rfc3339, parse_rfc3339, utcnow
from sqlrs_engine.persistence.pages import Page, entries_page, page_of
from sqlrs_engine.persistence.rows import Row, compact
from sqlrs_engine.persistence.sql import execute, fetch, fetch_entries, fetch_one


@dataclass(frozen=True)
class StateRecord:
    """A new state row (SPEC §2.9 step 12)."""

    state_id: str
    parent_state_id: str | None
    image_id: str
    prepare_kind: str
    prepare_args_normalized: str
    created_at: str
    size_bytes: int | None
    snapshot_backend: str | None = None


ACTIVE = "active"
DELETING = "deleting"
"""Row status while a deletion that includes the row is under way (see `mark_deleting`)."""


@dataclass(frozen=True)
class InstanceRecord:
    """A new instance row (SPEC §2.12)."""

    instance_id: str
    state_id: str
    image_id: str
    created_at: str
    runtime_id: str | None
    runtime_dir: str | None
    job_id: str | None = None
    expires_at: str | None = None
    status: str = ACTIVE
    secret: str | None = field(default=None, repr=False)
    """The instance's password (SPEC §0.9); None only for rows of older engines."""


def _expired(expires_at: str | None) -> bool:
    return bool(expires_at) and parse_rfc3339(str(expires_at)) < utcnow()


class MetadataQueries:
    """States, instances and names in one `dataset` database."""

    def __init__(self, db: dataset.Database) -> None:
        self._db = db

    # -- states ----------------------------------------------------------------------------

    def insert_state(self, record: StateRecord) -> bool:
        """INSERT OR IGNORE a state; True when this call created it."""
        changed = execute(
            self._db,
            """INSERT OR IGNORE INTO states (state_id, parent_state_id, state_fingerprint,
                   image_id, prepare_kind, prepare_args_normalized, created_at, size_bytes,
                   last_used_at, use_count, snapshot_backend)
               VALUES (:state_id, :parent, :state_id, :image_id, :kind, :args, :created_at,
                   :size_bytes, :created_at, 0, :backend)""",
            state_id=record.state_id,
            parent=record.parent_state_id,
            image_id=record.image_id,
            kind=record.prepare_kind,
            args=record.prepare_args_normalized,
            created_at=record.created_at,
            size_bytes=record.size_bytes,
            backend=record.snapshot_backend,
        )
        return changed > 0

    def refresh_state(self, record: StateRecord) -> None:
        """A rebuilt state's row: what its new directory holds and which backend made it."""
        execute(
            self._db,
            """UPDATE states SET size_bytes = :size_bytes, snapshot_backend = :backend
               WHERE state_id = :state_id""",
            state_id=record.state_id,
            size_bytes=record.size_bytes,
            backend=record.snapshot_backend,
        )

    def delete_state_if_unreferenced(self, state_id: str) -> bool:
        """Delete a state row that no instance and no child state references; True if gone."""
        changed = execute(
            self._db,
            """DELETE FROM states WHERE state_id = :id
                 AND NOT EXISTS (SELECT 1 FROM instances WHERE state_id = :id)
                 AND NOT EXISTS (SELECT 1 FROM states AS child
                                 WHERE child.parent_state_id = :id)""",
            id=state_id,
        )
        return changed > 0

    def state_row(self, state_id: str) -> Row | None:
        return fetch_one(self._db, "SELECT * FROM states WHERE state_id = :id", id=state_id)

    def state_rows(self, state_ids: Iterable[str]) -> dict[str, Row]:
        """The rows of those of `state_ids` that exist, by id (one query)."""
        ids = sorted(set(state_ids))
        if not ids:
            return {}
        marks = ", ".join(f":s{i}" for i in range(len(ids)))
        rows = fetch(
            self._db,
            f"SELECT * FROM states WHERE state_id IN ({marks})",
            **{f"s{i}": state_id for i, state_id in enumerate(ids)},
        )
        return {row["state_id"]: row for row in rows}

    def state_exists(self, state_id: str) -> bool:
        return self.state_row(state_id) is not None

    def set_state_size(self, state_id: str, size_bytes: int) -> None:
        execute(
            self._db,
            "UPDATE states SET size_bytes = :size WHERE state_id = :id",
            size=size_bytes,
            id=state_id,
        )

    def child_state_ids(self, state_id: str) -> list[str]:
        rows = fetch(
            self._db,
            "SELECT state_id FROM states WHERE parent_state_id = :id ORDER BY created_at, rowid",
            id=state_id,
        )
        return [row["state_id"] for row in rows]

    def cache_inventory(self) -> list[Row]:
        """Per state, what cache enforcement decides on (SPEC §10.2), with `refcount`.

        The columns only, not listing entries: a cache status reads every state, and the
        entry conversion was a third of its time with 10 000 states.
        """
        return fetch(
            self._db,
            """SELECT s.state_id, s.parent_state_id, s.image_id, s.size_bytes, s.created_at,
                      s.last_used_at, s.min_retention_until,
                      (SELECT COUNT(*) FROM instances i WHERE i.state_id = s.state_id)
                      AS refcount
                   FROM states s ORDER BY s.rowid""",
        )

    def cache_usage(self) -> Row:
        """`state_count`, `usage_bytes` (summed `size_bytes`), `smallest_bytes` and
        `unmeasured` (states without a size yet) in one aggregate: a capacity check without
        pressure needs no more, and runs three times per built state."""
        row = fetch_one(
            self._db,
            """SELECT COUNT(*) AS state_count,
                      COALESCE(SUM(CASE WHEN size_bytes > 0 THEN size_bytes END), 0)
                      AS usage_bytes,
                      MIN(CASE WHEN size_bytes > 0 THEN size_bytes END) AS smallest_bytes,
                      COALESCE(SUM(size_bytes IS NULL OR size_bytes <= 0), 0) AS unmeasured
                   FROM states""",
        )
        assert row is not None  # an aggregate always has its one row
        return row

    def list_states(
        self, *, kind: str | None = None, image: str | None = None, id_prefix: str | None = None
    ) -> list[Row]:
        """State entries (SPEC §7), filtered by exact kind/image and lowercase id prefix."""
        return self.list_states_page(kind=kind, image=image, id_prefix=id_prefix).rows

    def list_states_page(
        self,
        *,
        kind: str | None = None,
        image: str | None = None,
        id_prefix: str | None = None,
        after: int | None = None,
        limit: int = -1,
    ) -> Page[int]:
        """One page of `list_states`: entries after keyset `after`, at most `limit` (-1: all)."""
        where, params = _filters(
            ("s.prepare_kind = :kind", "kind", kind),
            ("s.image_id = :image", "image", image),
            ("lower(s.state_id) LIKE :prefix", "prefix", _prefix(id_prefix)),
            ("s.rowid > :after", "after", after),
        )
        entries, last_key = self._state_entries(where, params, limit)
        return entries_page(entries, limit, None if last_key is None else int(last_key[0]))

    def get_state(self, state_id: str) -> Row | None:
        entries, _ = self._state_entries("WHERE s.state_id = :id", {"id": state_id})
        return entries[0] if entries else None

    def _state_entries(
        self, where: str, params: dict[str, Any], limit: int = -1
    ) -> tuple[list[Row], tuple[Any, ...] | None]:
        """State entries (SPEC §7) in API field order, built by SQL; a zero `size_bytes` or
        `use_count` means unknown/never and is left out like an absent value."""
        return fetch_entries(
            self._db,
            f"""SELECT s.state_id, s.parent_state_id, s.image_id, s.prepare_kind,
                       s.prepare_args_normalized, s.created_at,
                       NULLIF(s.size_bytes, 0) AS size_bytes, s.last_used_at,
                       NULLIF(s.use_count, 0) AS use_count, s.min_retention_until,
                       (SELECT COUNT(*) FROM instances i WHERE i.state_id = s.state_id)
                       AS refcount,
                       s.rowid AS row_key
                    FROM states s {where} ORDER BY s.rowid LIMIT :limit""",
            limit=limit,
            **params,
        )

    # -- instances -------------------------------------------------------------------------

    def insert_instance(self, record: InstanceRecord) -> None:
        """Insert the instance and count the use of its state, in one transaction."""
        row = {
            "instance_id": record.instance_id,
            "state_id": record.state_id,
            "image_id": record.image_id,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "runtime_id": record.runtime_id,
            "runtime_dir": record.runtime_dir,
            "status": record.status,
            "job_id": record.job_id,
            "secret": record.secret,
        }
        # Plain SQL, as for job rows: `dataset`'s insert looks the table's columns up and
        # builds a statement each time, which cost a pooled hit more than its whole job row.
        with self._db as tx:
            tx.executable.exec_driver_sql(_INSERT_INSTANCE, [row])
            tx.executable.exec_driver_sql(
                """UPDATE states SET last_used_at = ?, use_count = use_count + 1
                   WHERE state_id = ?""",
                (record.created_at, record.state_id),
            )

    def instance_row(self, instance_id: str) -> Row | None:
        return fetch_one(
            self._db, "SELECT * FROM instances WHERE instance_id = :id", id=instance_id
        )

    def instance_of_job(self, job_id: str) -> Row | None:
        return fetch_one(
            self._db, "SELECT * FROM instances WHERE job_id = :id ORDER BY rowid", id=job_id
        )

    def all_instance_rows(self) -> list[Row]:
        return fetch(self._db, "SELECT * FROM instances ORDER BY rowid")

    def instance_rows_of_state(self, state_id: str) -> list[Row]:
        return fetch(
            self._db,
            "SELECT * FROM instances WHERE state_id = :id ORDER BY created_at, rowid",
            id=state_id,
        )

    def set_instance_runtime(
        self, instance_id: str, runtime_id: str | None, secret: str | None = None
    ) -> None:
        """Record a (re)started server; `secret` also replaces the password when given."""
        execute(
            self._db,
            "UPDATE instances SET runtime_id = :rid, secret = coalesce(:secret, secret) "
            "WHERE instance_id = :id",
            rid=runtime_id,
            secret=secret,
            id=instance_id,
        )

    def delete_instance(self, instance_id: str) -> None:
        execute(self._db, "DELETE FROM instances WHERE instance_id = :id", id=instance_id)

    def delete_many(self, instance_ids: list[str], state_ids: list[str]) -> None:
        """Delete instance rows, then state rows (children first), in one transaction."""
        with self._db as tx:
            for instance_id in instance_ids:
                tx.query("DELETE FROM instances WHERE instance_id = :id", id=instance_id)
            for state_id in state_ids:
                tx.query("DELETE FROM states WHERE state_id = :id", id=state_id)

    def mark_deleting(self, instance_ids: list[str], state_ids: list[str], on: bool) -> None:
        """Record (or take back) the intent to delete these rows, in one transaction.

        A deletion marks its whole tree before it touches a file; a start-up after a crash
        finds the marked rows and completes their deletion (deletion/service.py).
        """
        status = DELETING if on else ACTIVE
        with self._db as tx:
            for instance_id in instance_ids:
                tx.query(
                    "UPDATE instances SET status = :s WHERE instance_id = :id",
                    s=status,
                    id=instance_id,
                )
            for state_id in state_ids:
                tx.query(
                    "UPDATE states SET status = :s WHERE state_id = :id", s=status, id=state_id
                )

    def rows_marked_deleting(self) -> tuple[list[Row], list[Row]]:
        """(instance rows, state rows) whose deletion was begun and not finished."""
        instances = fetch(
            self._db, "SELECT * FROM instances WHERE status = :s ORDER BY rowid", s=DELETING
        )
        states = fetch(
            self._db, "SELECT * FROM states WHERE status = :s ORDER BY rowid", s=DELETING
        )
        return instances, states

    def expiring_instances(self) -> list[tuple[str, str]]:
        """`(instance_id, expires_at)` of every instance that has an expiry (TTL)."""
        rows = fetch(
            self._db,
            "SELECT instance_id, expires_at FROM instances WHERE expires_at IS NOT NULL "
            "AND expires_at != '' ORDER BY rowid",
        )
        return [(str(row["instance_id"]), str(row["expires_at"])) for row in rows]

    def expired_instance_ids(self) -> list[str]:
        """Instances whose `expires_at` has passed (parsed: the text has a variable fraction)."""
        return [instance_id for instance_id, at in self.expiring_instances() if _expired(at)]

    def runtime_dirs(self) -> set[str]:
        """Data directories that instances live in (never removed with a job, §0.1)."""
        rows = fetch(self._db, "SELECT runtime_dir FROM instances WHERE runtime_dir IS NOT NULL")
        return {str(row["runtime_dir"]) for row in rows}

    def list_instances(
        self, *, state: str | None = None, image: str | None = None, id_prefix: str | None = None
    ) -> list[Row]:
        return self.list_instances_page(state=state, image=image, id_prefix=id_prefix).rows

    def list_instances_page(
        self,
        *,
        state: str | None = None,
        image: str | None = None,
        id_prefix: str | None = None,
        after: int | None = None,
        limit: int = -1,
    ) -> Page[int]:
        """One page of `list_instances` (keyset `after`, at most `limit`; -1: all)."""
        where, params = _filters(
            ("i.state_id = :state", "state", state),
            ("i.image_id = :image", "image", image),
            ("lower(i.instance_id) LIKE :prefix", "prefix", _prefix(id_prefix)),
            ("i.rowid > :after", "after", after),
        )
        return page_of(self._instance_rows(where, params, limit), limit, _instance_entry, _row_key)

    def get_instance(self, instance_id: str) -> Row | None:
        rows = self._instance_rows("WHERE i.instance_id = :id", {"id": instance_id})
        return _instance_entry(rows[0]) if rows else None

    def instance_id_by_name(self, name: str) -> str | None:
        row = fetch_one(self._db, "SELECT instance_id FROM names WHERE name = :name", name=name)
        return str(row["instance_id"]) if row and row["instance_id"] else None

    def _instance_rows(self, where: str, params: dict[str, Any], limit: int = -1) -> list[Row]:
        return fetch(
            self._db,
            f"""SELECT i.*, i.rowid AS row_key,
                       (SELECT n.name FROM names n WHERE n.instance_id = i.instance_id
                        ORDER BY n.is_primary DESC, n.name LIMIT 1) AS primary_name,
                       (SELECT COUNT(*) FROM names n WHERE n.instance_id = i.instance_id)
                        AS name_count
                    FROM instances i {where} ORDER BY i.rowid LIMIT :limit""",
            limit=limit,
            **params,
        )

    # -- names -----------------------------------------------------------------------------

    def upsert_name(self, row: Row) -> None:
        """Write a name row (no endpoint creates names locally; used by tooling and tests)."""
        self._db["names"].upsert(dict(row), ["name"])

    def list_names(
        self, *, instance: str | None = None, state: str | None = None, image: str | None = None
    ) -> list[Row]:
        return self.list_names_page(instance=instance, state=state, image=image).rows

    def list_names_page(
        self,
        *,
        instance: str | None = None,
        state: str | None = None,
        image: str | None = None,
        after: int | None = None,
        limit: int = -1,
    ) -> Page[int]:
        """One page of `list_names` (keyset `after`, at most `limit`; -1: all)."""
        where, params = _filters(
            ("n.instance_id = :instance", "instance", instance),
            ("n.state_id = :state", "state", state),
            ("n.image_id = :image", "image", image),
            ("n.rowid > :after", "after", after),
        )
        return page_of(self._name_rows(where, params, limit), limit, _name_entry, _row_key)

    def get_name(self, name: str) -> Row | None:
        rows = self._name_rows("WHERE n.name = :name", {"name": name})
        return _name_entry(rows[0]) if rows else None

    def _name_rows(self, where: str, params: dict[str, Any], limit: int = -1) -> list[Row]:
        return fetch(
            self._db,
            f"""SELECT n.*, n.rowid AS row_key, i.instance_id AS live_instance_id,
                       i.expires_at AS expires_at
                    FROM names n LEFT JOIN instances i ON i.instance_id = n.instance_id
                    {where} ORDER BY n.rowid LIMIT :limit""",
            limit=limit,
            **params,
        )


def _row_key(row: Row) -> int:
    """The keyset of the listings ordered by rowid."""
    return int(row["row_key"])


def _prefix(id_prefix: str | None) -> str | None:
    return None if id_prefix is None else id_prefix.lower() + "%"


def _filters(*clauses: tuple[str, str, Any]) -> tuple[str, dict[str, Any]]:
    parts = [sql for sql, _, value in clauses if value is not None]
    params = {name: value for _, name, value in clauses if value is not None}
    return ("WHERE " + " AND ".join(parts) if parts else "", params)


def _instance_entry(row: Row) -> Row:
    if _expired(row["expires_at"]):
        status = "expired"
    elif not row["name_count"]:
        status = "orphaned"
    else:
        status = "active"
    return compact(
        {
            "instance_id": row["instance_id"],
            "image_id": row["image_id"],
            "state_id": row["state_id"],
            "name": row["primary_name"],
            "created_at": row["created_at"],
            "expires_at": row["expires_at"],
            "runtime_id": row["runtime_id"],
            "status": status,
        }
    )


def _name_entry(row: Row) -> Row:
    if not row["instance_id"] or not row["live_instance_id"]:
        status = "missing"
    elif _expired(row["expires_at"]):
        status = "expired"
    else:
        status = "active"
    return compact(
        {
            "name": row["name"],
            "instance_id": row["instance_id"],
            "image_id": row["image_id"],
            "state_id": row["state_id"] or row["state_fingerprint"],
            "state_fingerprint": row["state_fingerprint"],
            "status": status,
            "last_used_at": row["last_used_at"],
        }
    )


def now_text() -> str:
    return format_rfc3339(utcnow())


_INSERT_INSTANCE = """INSERT INTO instances
    (instance_id, state_id, image_id, created_at, expires_at, runtime_id, runtime_dir, status,
     job_id, secret)
    VALUES (:instance_id, :state_id, :image_id, :created_at, :expires_at, :runtime_id,
     :runtime_dir, :status, :job_id, :secret)"""
