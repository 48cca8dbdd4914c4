"""Snapshot backends and the state store: immutable states, writable clones (SPEC §9).

- `layout.StoreLayout`: where things live under the store root (pure).
- `base.SnapshotBackend`: the backend protocol (docs/snapshots.md explains the backends).
- `copy.CopyBackend`: states and clones as `cp -a --reflink=auto` copies.
- `overlay.OverlayBackend`: clones are overlay mounts, states are layers of what changed.
- `btrfs.BtrfsBackend`: subvolumes; read-only snapshots for states, writable ones for clones.
- `store.StateStore`: base init, per-state build locks, clones into job runtime dirs.
- `select.select_backend`: the startup choice of backend, with its reason for the log.
"""

from sqlrs_engine.snapshot.base import BackendKind, SnapshotBackend, SnapshotError
from sqlrs_engine.snapshot.btrfs import BtrfsBackend
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.overlay import OverlayBackend
from sqlrs_engine.snapshot.select import BackendChoice, select_backend
from sqlrs_engine.snapshot.store import StateBuild, StateStore

__all__ = [
    "BackendChoice",
    "BackendKind",
    "BtrfsBackend",
    "CopyBackend",
    "OverlayBackend",
    "SnapshotBackend",
    "SnapshotError",
    "StateBuild",
    "StateStore",
    "StoreLayout",
    "select_backend",
]
