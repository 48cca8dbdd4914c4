"""Open `state.db` through `dataset`: WAL, foreign keys, migrations.

`dataset` keeps one SQLAlchemy connection per thread; the Registry actor is the only thread
that uses the returned object, which gives SQLite the single writer it is best at.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import dataset
from sqlalchemy import event

from sqlrs_engine.persistence.schema import MIGRATIONS
from sqlrs_engine.persistence.sql import execute, fetch_one


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer engine; refusing beats corrupting it."""


def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def open_database(path: Path) -> dataset.Database:
    """Open (creating if needed) and migrate the database at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = dataset.connect(
        f"sqlite:///{path}",
        ensure_schema=False,
        sqlite_wal_mode=False,  # set per connection in _on_connect, together with FKs
        engine_kwargs={"connect_args": {"check_same_thread": False}},
    )
    event.listen(db.engine, "connect", _on_connect)
    migrate(db)
    return db


def schema_version(db: dataset.Database) -> int:
    """Number of migrations applied (0 for a new database)."""
    execute(db, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = fetch_one(db, "SELECT MAX(version) AS v FROM schema_version")
    return int(row["v"]) if row and row["v"] is not None else 0


def migrate(db: dataset.Database) -> int:
    """Apply missing migrations, each in its own transaction; returns the new version."""
    current = schema_version(db)
    if current > len(MIGRATIONS):
        raise SchemaTooNewError(
            f"state.db has schema version {current}, this engine knows {len(MIGRATIONS)}; "
            "upgrade sqlrs-engine or use another state store"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        with db as tx:
            for statement in MIGRATIONS[version - 1]:
                tx.query(statement)
            tx.query("INSERT INTO schema_version (version) VALUES (:v)", v=version)
    return len(MIGRATIONS)
