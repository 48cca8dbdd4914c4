"""The snapshot backend protocol: how states are made from data dirs and clones from states.

A *data dir* is what a backend clones and snapshots; PostgreSQL's PGDATA is its `pgdata/`
subdirectory (SPEC §9.1). A *state* is an immutable data dir of a cleanly stopped server; a
*clone* is a writable, independent copy of a state (or of the base) that a server runs on.

Three backends fit this protocol (SPEC §9.2, §0.6): `copy` (plain/reflink copies, `copy.py`),
`overlayfs` (`overlay.py`: a clone is an overlay mount whose *mount dir* is `dst/merged`; a
state is stored as a layer of what its step changed, on top of its parent's layers) and
`btrfs` (`btrfs.py`: subvolume snapshots; markers and locks live in `states/.build/` because a
read-only snapshot cannot hold them). Everything that differs between them is behind these
methods, so the store and the jobs never branch on the kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

from sqlrs_engine.cancel import NEVER_CANCELLED, CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.runtime.base import pgdata_of

BackendKind = Literal["copy", "overlayfs", "btrfs"]

PG_VERSION = "PG_VERSION"
POSTMASTER_PID = "postmaster.pid"

DIRTY_REASON = "state snapshot is dirty (postmaster.pid present)"
MISSING_PG_VERSION_REASON = "state snapshot missing PG_VERSION"
MISSING_MARKER_REASON = "state snapshot incomplete (build marker missing)"
MISSING_DIR_REASON = "state directory is missing"


class SnapshotError(JobFailure):
    """A backend operation failed; a job that hits it fails with `internal_error`.

    `no_space` is True when the failure was ENOSPC ("No space left on device"), which the
    prepare job reports as `cache_limit_too_small` instead (SPEC §10.2).
    """

    def __init__(self, message: str, details: str | None = None, *, no_space: bool = False) -> None:
        super().__init__("internal_error", message, details or None)
        self.no_space = no_space


class StateInUse(SnapshotError):
    """A state cannot be removed because a clone stands on its files (an overlay layer that
    is a lower of a mounted clone): a conflict with whoever uses it, not a fault."""


def find_data_file(data_dir: Path, name: str) -> Path | None:
    """`<dir>/<name>` or `<dir>/pgdata/<name>`, whichever exists (SPEC §9.1), else None."""
    for candidate in (data_dir / name, pgdata_of(data_dir) / name):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None


def data_dir_problem(data_dir: Path, *, require_pg_version: bool = True) -> str | None:
    """Why a data dir cannot be cloned from or snapshotted (None when it can).

    A `postmaster.pid` means the server was not stopped cleanly (or still runs): its files may
    be mid-write, so a copy would be a dirty state.
    """
    if not data_dir.is_dir():
        return f"{MISSING_DIR_REASON}: {data_dir}"
    if find_data_file(data_dir, POSTMASTER_PID) is not None:
        return DIRTY_REASON
    if require_pg_version and find_data_file(data_dir, PG_VERSION) is None:
        return MISSING_PG_VERSION_REASON
    return None


def state_problem(state_dir: Path, marker: Path) -> str | None:
    """Why a state dir is not a complete, clean state (None when it is) — SPEC §0.1, §2.10."""
    problem = data_dir_problem(state_dir, require_pg_version=True)
    if problem is not None:
        return problem
    if not marker.is_file():
        return f"{MISSING_MARKER_REASON}: {marker.name}"
    return None


class SnapshotBackend(Protocol):
    """File operations of one snapshot backend; stateless apart from configuration.

    Every method is safe to call from several threads for *different* paths; the store's
    locks serialize work on the same state.
    """

    @property
    def kind(self) -> BackendKind:
        """`copy` | `overlayfs` | `btrfs`, as reported in logs and config."""
        ...

    @property
    def separate_build_meta(self) -> bool:
        """True when build lock/marker live in `states/.build/` instead of the state dir."""
        ...

    def clone(self, src: Path, dst: Path, *, cancel: CancelToken = NEVER_CANCELLED) -> Path:
        """Make `dst` a writable, independent clone of data dir `src`; returns the mount dir.

        The mount dir is the data dir a server runs on (`dst` for copy and btrfs,
        `dst/merged` for overlay). `dst` must be absent or empty and must not overlap `src`.
        Store metadata (`.build.ok`, `.init.ok`, locks) is not part of the clone. On failure
        nothing is left behind in `dst`.
        """
        ...

    def snapshot(
        self,
        src_mount_dir: Path,
        dst: Path,
        parent: Path | None,
        *,
        cancel: CancelToken = NEVER_CANCELLED,
    ) -> None:
        """Make state dir `dst` an immutable copy of a *cleanly stopped* server's data dir.

        Refuses a source with `postmaster.pid` (a dirty state) or without `PG_VERSION`.
        `parent` is the state (or base) dir the source was cloned from, so layered backends
        can store only what changed. `dst` must be absent or hold only the build lock. The
        caller writes the build marker afterwards (after the state row is stored).
        """
        ...

    def remove(self, path: Path) -> None:
        """Remove a clone or a state, whatever it is (unmount, subvolume delete, rm -rf).

        Retried; if the path still cannot be removed it is renamed to `<path>.stale-<ns>`
        so the name is free again. Raises `SnapshotError` only when neither worked. Not
        cancellable on purpose: cleanup after a cancel must still finish.
        """
        ...

    def ensure_base_dir(self, path: Path) -> None:
        """Create the base dir of an engine if missing (btrfs: a subvolume)."""
        ...

    def ensure_state_dir(self, path: Path) -> None:
        """Prepare for building state dir `path` (copy: mkdir; btrfs: parent only)."""
        ...

    def validate_state(self, path: Path) -> str | None:
        """None when state dir `path` is complete and clean, else the reason it is not.

        Complete = build marker present, `PG_VERSION` present and no `postmaster.pid` (both
        looked up in `<dir>` and `<dir>/pgdata`).
        """
        ...

    def size_bytes(self, path: Path) -> int:
        """Bytes a state occupies for cache accounting (SPEC §9.6).

        Copy: sum of regular-file sizes under `path`. Layered backends report what the state
        adds on top of its parent (its own layer), so a chain is not counted twice.
        """
        ...

    def mount_dir_of(self, dst: Path) -> Path:
        """The data dir a server runs on for a clone made at `dst` (run recovery).

        Overlay remounts a clone whose mount is gone (a reboot, or the start-up sweep of idle
        mounts), so the returned path is usable by a server; the others just compute it.
        """
        ...

    def data_problem(self, path: Path, *, require_pg_version: bool = True) -> str | None:
        """Why base/state dir `path` (in this backend's layout) cannot be cloned or committed.

        `data_dir_problem` for backends whose states are plain data dirs; layered backends
        look `PG_VERSION` and `postmaster.pid` up through the state's layers and also report
        a missing or rebuilt parent layer.
        """
        ...


__all__ = [
    "DIRTY_REASON",
    "MISSING_DIR_REASON",
    "MISSING_MARKER_REASON",
    "MISSING_PG_VERSION_REASON",
    "PG_VERSION",
    "POSTMASTER_PID",
    "BackendKind",
    "SnapshotBackend",
    "SnapshotError",
    "StateInUse",
    "data_dir_problem",
    "find_data_file",
    "state_problem",
]
