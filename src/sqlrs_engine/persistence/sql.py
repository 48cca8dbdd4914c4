"""Running SQL through `dataset` with explicit transaction ends.

SQLAlchemy 2 "autobegins" a transaction on first use of a connection, and `dataset` commits
it only after its own table operations. A raw statement run through `Database.query` would
therefore stay uncommitted (holding SQLite's write lock, invisible to other connections,
lost on a crash) until some later table write. Every raw statement goes through these two
functions instead: writes are committed at once, and reads end their implicit transaction so
no read snapshot is held open. Inside an explicit `with db:` block, nothing is committed
early; the block's end commits.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import dataset

from sqlrs_engine.persistence.rows import Row


def _end_implicit_transaction(db: dataset.Database) -> None:
    if not db.in_transaction and db.executable.in_transaction():
        db.executable.commit()


def fetch(db: dataset.Database, sql: str, **params: Any) -> list[Row]:
    """All rows of a SELECT, as plain dicts.

    Read through the DB-API connection underneath SQLAlchemy (same connection, same
    transaction): building rows through SQLAlchemy and dataset costs about ten times more per
    row, which is most of the time of a 10 000-row listing. The SQL is plain SQLite with
    `:name` parameters either way.
    """
    connection: Any = db.executable.connection.driver_connection
    cursor: sqlite3.Cursor = connection.execute(sql, params)
    try:
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor]
    finally:
        cursor.close()
    _end_implicit_transaction(db)
    return rows


def fetch_entries(
    db: dataset.Database, sql: str, key_columns: int = 1, **params: Any
) -> tuple[list[Row], tuple[Any, ...] | None]:
    """API entries read straight off a SELECT, and the last row's key (None without rows).

    The SELECT names the entry's fields in order, computed in SQL, then `key_columns` more
    columns: the listing's keyset. NULL and empty values are left out (Go's `omitempty`), as
    `rows.compact` does. One dict per row and nothing else is built: for the 10 000-row
    state listing, building a row dict and then an entry from it was about half of the
    listing's time.
    """
    connection: Any = db.executable.connection.driver_connection
    cursor: sqlite3.Cursor = connection.execute(sql, params)
    try:
        fields = [column[0] for column in cursor.description][:-key_columns]
        rows = cursor.fetchall()
    finally:
        cursor.close()
    _end_implicit_transaction(db)
    # zip stops at the shorter `fields`: the key columns never enter an entry.
    entries = [
        {k: v for k, v in zip(fields, row, strict=False) if v is not None and v != ""}
        for row in rows
    ]
    return entries, tuple(rows[-1][-key_columns:]) if rows else None


def fetch_one(db: dataset.Database, sql: str, **params: Any) -> Row | None:
    rows = fetch(db, sql, **params)
    return rows[0] if rows else None


def execute(db: dataset.Database, sql: str, **params: Any) -> int:
    """Run a write statement and commit it; returns the number of rows it changed."""
    result = db.query(sql, **params).result_proxy
    count = result.rowcount if result is not None else 0
    _end_implicit_transaction(db)
    return int(count)


def update_where(
    db: dataset.Database, table: str, keys: dict[str, Any], values: dict[str, Any]
) -> int:
    """`UPDATE table SET <values> WHERE <keys>` and commit (unless inside `with db:`).

    Columns the table does not have are ignored, as `dataset`'s `Table.update` ignores them;
    unlike it, the table's columns are not looked up again on every call (a cache hit
    updates its job's and tasks' rows a dozen times, and that look-up cost more than the
    update). Returns the number of rows changed.
    """
    columns = table_columns(db, table)
    assignments = {k: v for k, v in values.items() if k in columns and k not in keys}
    if not assignments:
        return 0
    params = {f"v_{k}": v for k, v in assignments.items()}
    params.update({f"k_{k}": v for k, v in keys.items()})
    sql = (
        f"UPDATE {table} SET "
        + ", ".join(f"{k} = :v_{k}" for k in assignments)
        + " WHERE "
        + " AND ".join(f"{k} = :k_{k}" for k in keys)
    )
    result = db.executable.exec_driver_sql(sql, params)
    _end_implicit_transaction(db)
    return int(result.rowcount)


def table_columns(db: dataset.Database, table: str) -> frozenset[str]:
    """The column names of `table`, read once per database object (the schema changes only
    by migrations, which run before any query)."""
    cache: dict[str, frozenset[str]] = db.__dict__.setdefault("_sqlrs_columns", {})
    columns = cache.get(table)
    if columns is None:
        rows = fetch(db, f"PRAGMA table_info({table})")
        columns = cache[table] = frozenset(str(row["name"]) for row in rows)
    return columns
