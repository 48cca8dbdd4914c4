"""Storage faults of state.db as answers, not as a broken engine (issue 11).

A full disk, an I/O error or a write lock held by another process make an SQLite statement
fail. Two things must then hold: the connection is usable again at once (SQLAlchemy refuses
every later statement — "Can't reconnect until invalid transaction is rolled back" — until
the failed transaction is rolled back, and `dataset` does not roll back when its *commit*
fails), and the caller gets an ErrorResponse that says what is wrong (507 for a full disk,
503 otherwise) instead of a 500 with a traceback. Repeated identical failures are logged
once, with a count when they stop, so a full disk cannot also fill the log.

`StorageGuard.call` does both for one operation; the Registry runs every message through it
(`guard_public_methods`). `StorageHealth` backs the `storage_error` of `/v1/health`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import dataset
from sqlalchemy.exc import SQLAlchemyError

from sqlrs_engine.errors import ApiError

log = logging.getLogger(__name__)

T = TypeVar("T")

PROBE_FREE_BYTES = 1024 * 1024
"""Free space a full disk must have again before health reports state.db writable."""

FULL_MARKERS = ("database or disk is full", "no space left", "disk i/o error: no space")


class StorageError(ApiError):
    """state.db could not be read or written; the operation changed nothing."""


def classify(error: SQLAlchemyError) -> StorageError:
    """The ErrorResponse for a database failure: 507 when the disk is full, else 503."""
    text = str(getattr(error, "orig", None) or error).strip()
    lowered = text.lower()
    if any(marker in lowered for marker in FULL_MARKERS):
        return StorageError(
            507,
            "storage_full",
            "the engine's database is out of disk space",
            f"{text}; free space on the state store's filesystem and retry",
        )
    if "locked" in lowered or "busy" in lowered:
        return StorageError(
            503,
            "storage_unavailable",
            "the engine's database is locked by another process",
            f"{text}; retry shortly",
        )
    return StorageError(
        503, "storage_unavailable", "the engine's database cannot be used right now", text
    )


class StorageHealth:
    """Whether state.db can be written, readable from any thread without asking the Registry
    (so `/v1/health` never waits on a busy Registry). Written only by the Registry's guard."""

    def __init__(self) -> None:
        self.error: str | None = None


class StorageGuard:
    """Runs database operations; after a failure, rolls back and remembers it."""

    def __init__(
        self, db: dataset.Database, db_path: Path, health: StorageHealth | None = None
    ) -> None:
        self._db = db
        self._db_dir = db_path.parent
        self.health = health or StorageHealth()
        self._last: StorageError | None = None
        self._repeats = 0

    @property
    def failing(self) -> bool:
        return self._last is not None

    def call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        before = self.total_changes() if self._last is not None else 0
        try:
            result = operation(*args, **kwargs)
        except SQLAlchemyError as error:
            self.reset_connection()
            self._note_failure(classify(error), error)
            raise self._last_error() from None
        if self._last is not None and self.total_changes() != before:
            self._recovered()  # something was written: the database works again
        return result

    def reset_connection(self) -> None:
        """Roll back whatever transaction the failure left open, and dataset's bookkeeping."""
        try:
            self._db.executable.rollback()
        except SQLAlchemyError as error:
            log.warning("state.db: rollback after a failure failed too: %s", error)
        if hasattr(self._db.local, "tx"):
            self._db.local.tx = []

    def probe(self) -> None:
        """While a failure is remembered: check whether state.db works again, so health
        clears by itself once space returns.

        After a full disk, free space must be back first (a committed no-op write may still
        fit into the WAL's existing pages while new rows do not); then, for every kind of
        failure, a real committed write (a no-op UPDATE still writes its page).
        """
        if self._last is None:
            return
        if self._last.code == "storage_full" and self._free_bytes() < PROBE_FREE_BYTES:
            return
        try:
            with self._db as tx:
                tx.query("UPDATE schema_version SET version = version")
        except SQLAlchemyError as error:
            self.reset_connection()
            self._note_failure(classify(error), error)
            return
        self._recovered()

    def _free_bytes(self) -> int:
        try:
            found = os.statvfs(self._db_dir)
        except OSError:
            return 0
        return found.f_bavail * found.f_frsize

    def total_changes(self) -> int:
        """SQLite's count of rows changed on this connection (tells that a write happened)."""
        try:
            connection = self._db.executable.connection.dbapi_connection
            return int(getattr(connection, "total_changes", 0))
        except (SQLAlchemyError, AttributeError):
            return 0

    def _last_error(self) -> StorageError:
        assert self._last is not None
        return self._last

    def _note_failure(self, failure: StorageError, error: SQLAlchemyError) -> None:
        same = self._last is not None and str(self._last) == str(failure)
        self._last = failure
        self.health.error = str(failure)
        if same:
            self._repeats += 1
            return
        if self._repeats:
            log.error("state.db: the previous error repeated %d more time(s)", self._repeats)
        self._repeats = 0
        log.error("state.db: %s (%s); identical errors are counted, not logged", failure, error)

    def _recovered(self) -> None:
        log.warning(
            "state.db is writable again (%d identical failure(s) were not logged)", self._repeats
        )
        self._last = None
        self._repeats = 0
        self.health.error = None


def guard_public_methods(cls: type[T]) -> type[T]:
    """Run every public method of an actor class through its `self._storage` guard.

    Pykka's lifecycle hooks (`on_*`) are left alone. A method that completes while a failure
    is remembered counts as a recovery only if it wrote; reads succeed on a full disk.
    Methods calling each other are fine: an inner failure is already a `StorageError`.
    """
    for name, member in list(vars(cls).items()):
        if name.startswith("_") or name.startswith("on_") or not callable(member):
            continue
        setattr(cls, name, _guarded(member))
    return cls


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        guard: StorageGuard | None = getattr(self, "_storage", None)
        if guard is None:
            return method(self, *args, **kwargs)
        return guard.call(method, self, *args, **kwargs)

    return wrapper
