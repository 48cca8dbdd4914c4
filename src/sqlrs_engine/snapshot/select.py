"""Choosing the snapshot backend at startup (SPEC §9.2), never silently (§0.1).

`select_backend` returns the backend *and* a sentence for the engine log that says what was
configured, what was chosen and why each preferred backend was not. `auto` prefers btrfs (the
store root is on btrfs and the `btrfs` program exists: block-level copy-on-write, nothing is
ever copied up), then overlayfs (a real probe mount with the options the backend uses
succeeds: needs root), then copy (which still reflinks where the filesystem can).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlrs_engine.process import ProcessError
from sqlrs_engine.snapshot.base import BackendKind, SnapshotBackend, SnapshotError
from sqlrs_engine.snapshot.btrfs import BtrfsBackend
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.fsinfo import (
    BTRFS_MAGIC,
    fs_type_name,
    nearest_existing,
    statfs_type,
)
from sqlrs_engine.snapshot.mounts import mount_overlay, unmount
from sqlrs_engine.snapshot.overlay import OverlayBackend

Probe = Callable[[Path], str | None]
"""Checks whether a backend can work for a store root: None = usable, else why not."""

Factory = Callable[[Path], SnapshotBackend]
"""Builds a backend for a store root."""

IMPLEMENTED: dict[BackendKind, Factory] = {
    "copy": lambda root: CopyBackend(),
    "overlayfs": lambda root: OverlayBackend(root),
    "btrfs": lambda root: BtrfsBackend(root),
}

CONFIG_VALUES = ("auto", "overlay", "btrfs", "copy")

_PREFERENCES: dict[str, tuple[BackendKind, ...]] = {
    "auto": ("btrfs", "overlayfs"),
    "overlay": ("overlayfs",),
    "btrfs": ("btrfs",),
    "copy": (),
}
"""Config value → backends to try, in order, before falling back to copy."""


@dataclass(frozen=True)
class BackendChoice:
    """The selected backend and the log line that explains the choice."""

    backend: SnapshotBackend
    reason: str
    """E.g. `snapshot backend copy (configured auto; btrfs: store root is ext4, not btrfs)`."""
    fallback: bool
    """True when a preferred backend was unavailable (log it as a warning)."""


def select_backend(
    configured: str | None,
    store_root: Path,
    *,
    implemented: Mapping[BackendKind, Factory] = IMPLEMENTED,
    probes: Mapping[BackendKind, Probe] | None = None,
) -> BackendChoice:
    """Pick the backend for `snapshot.backend` = `configured` (None = `auto`).

    Each preferred kind is tried in order: not implemented yet → noted; its probe fails →
    the probe's reason is noted; else it is chosen. Copy is the final fallback.
    """
    probes = PROBES if probes is None else probes
    value = (configured or "auto").strip().lower()
    notes: list[str] = []
    if value in _PREFERENCES:
        notes.append(f"configured {value}")
        preferred = _PREFERENCES[value]
    else:
        notes.append(
            f"configured {configured!r} is not one of {', '.join(CONFIG_VALUES)}; using copy"
        )
        preferred = ()
    for kind in preferred:
        factory = implemented.get(kind)
        if factory is None:
            notes.append(f"{kind}: not implemented yet")
            continue
        probe = probes.get(kind)
        why_not = probe(store_root) if probe is not None else None
        if why_not is not None:
            notes.append(f"{kind}: {why_not}")
            continue
        return BackendChoice(
            factory(store_root),
            _reason(kind, notes),
            fallback=kind != preferred[0],
        )
    return BackendChoice(
        implemented["copy"](store_root),
        _reason("copy", notes),
        fallback=bool(preferred) or value not in _PREFERENCES,
    )


def _reason(kind: str, notes: list[str]) -> str:
    return f"snapshot backend {kind} ({'; '.join(notes)})"


# -- probes ------------------------------------------------------------------------------------


def probe_btrfs(store_root: Path) -> str | None:
    """btrfs works when the store root is on btrfs and the `btrfs` program exists."""
    try:
        magic = statfs_type(store_root)
    except OSError as exc:
        return f"cannot stat filesystem of {store_root}: {exc}"
    if magic != BTRFS_MAGIC:
        return f"store root is {fs_type_name(magic)}, not btrfs"
    if shutil.which("btrfs") is None:
        return "btrfs program not found (install btrfs-progs)"
    return None


def probe_overlay(store_root: Path) -> str | None:
    """overlayfs works when a real probe mount in a temp dir succeeds (needs root).

    The probe mounts the way clones are mounted (`mounts.mount_overlay`: two lower layers,
    relative paths, the same options) and checks that a whiteout in the middle layer hides
    a file of the bottom one and that a write stays in the upper layer.
    """
    if shutil.which("mount") is None:
        return "mount program not found"
    if os.geteuid() != 0:
        return "overlay mounts need root"
    parent = nearest_existing(store_root)
    if any(c in os.fspath(parent) for c in ",:\\") or not os.access(parent, os.W_OK):
        parent = Path(tempfile.gettempdir())
    tmp = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=parent))
    merged = tmp / "merged"
    mounted = False
    try:
        for name in ("bottom", "middle", "upper", "work", "merged"):
            (tmp / name).mkdir()
        (tmp / "bottom" / "hidden").write_text("bottom")
        (tmp / "bottom" / "probe").write_text("bottom")
        os.mknod(tmp / "middle" / "hidden", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        mount_overlay([tmp / "middle", tmp / "bottom"], tmp / "upper", tmp / "work", merged)
        mounted = True
        if (merged / "hidden").exists():
            return "overlay probe: a whiteout in a lower layer did not hide the file below it"
        (merged / "probe").write_text("upper")
        if (tmp / "bottom" / "probe").read_text() != "bottom":
            return "overlay probe wrote through to the lower layer"
        unmount(merged)
        mounted = False
        return None
    except SnapshotError as exc:
        return f"overlay probe mount failed: {exc.details or exc.message}"
    except (OSError, ProcessError) as exc:
        return f"overlay probe failed: {exc}"
    finally:
        if mounted:
            with contextlib.suppress(OSError):
                unmount(merged, lazy=True)
        if not os.path.ismount(merged):
            shutil.rmtree(tmp, ignore_errors=True)


PROBES: dict[BackendKind, Probe] = {"btrfs": probe_btrfs, "overlayfs": probe_overlay}


__all__ = [
    "BTRFS_MAGIC",
    "CONFIG_VALUES",
    "IMPLEMENTED",
    "PROBES",
    "BackendChoice",
    "Factory",
    "Probe",
    "fs_type_name",
    "nearest_existing",
    "probe_btrfs",
    "probe_overlay",
    "select_backend",
    "statfs_type",
]
