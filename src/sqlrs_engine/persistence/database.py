"""Open `state.db` through `dataset`: WAL, foreign keys, migrations.

`dataset` keeps one SQLAlchemy connection per thread; the Registry actor is the only thread
that uses the returned object, which gives SQLite the single writer it is best at.
"""

from __future__ import annotations

import os
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


PRIVATE_MODE = 0o600
SIDE_FILES = ("-wal", "-shm", "-journal")
"""SQLite's companions of a database file; it creates them with the database's own mode."""


def make_private(path: Path) -> None:
    """Create `path` if missing, and give it and its side files mode 0600 (SPEC §0.9).

    `state.db` holds every job's request, output and error, and each instance's password.
    Creating it 0600 *before* SQLite opens it matters: SQLite copies the database's mode to
    the `-wal` and `-shm` files it creates.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_MODE)
    os.close(fd)
    for candidate in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
        try:
            if (candidate.stat().st_mode & 0o777) != PRIVATE_MODE:
                os.chmod(candidate, PRIVATE_MODE)
        except FileNotFoundError:
            continue


def open_database(path: Path) -> dataset.Database:
    """Open (creating if needed, mode 0600) and migrate the database at `path`."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_private(path)
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
