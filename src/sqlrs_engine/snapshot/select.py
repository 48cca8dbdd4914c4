"""Choosing the snapshot backend at startup (SPEC §9.2), never silently (§0.1).

`select_backend` returns the backend *and* a sentence for the engine log that says what was
configured, what was chosen and why each preferred backend was not. Backends that exist are
listed in `IMPLEMENTED`; adding overlay or btrfs later is one line there (their probes are
already here).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlrs_engine.process import ProcessError, run
from sqlrs_engine.snapshot.base import BackendKind, SnapshotBackend
from sqlrs_engine.snapshot.copy import CopyBackend

BTRFS_MAGIC = 0x9123683E

_FS_NAMES: dict[int, str] = {
    0xEF53: "ext4",  # ext2/ext3/ext4 share the magic
    0x9123683E: "btrfs",
    0x58465342: "xfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlayfs",
    0x2FC12FC1: "zfs",
    0x6969: "nfs",
    0x65735546: "fuse",
    0xF2F52010: "f2fs",
}

Probe = Callable[[Path], str | None]
"""Checks whether a backend can work for a store root: None = usable, else why not."""

Factory = Callable[[Path], SnapshotBackend]
"""Builds a backend for a store root."""

IMPLEMENTED: dict[BackendKind, Factory] = {
    "copy": lambda root: CopyBackend(),
    # "overlayfs": OverlayBackend,  (one line each once they exist)
    # "btrfs": BtrfsBackend,
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


def nearest_existing(path: Path) -> Path:
    """`path` or its closest existing ancestor (the store root may not exist yet)."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def statfs_type(path: Path) -> int:
    """The statfs `f_type` magic of the filesystem holding `path` (or its nearest ancestor)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # larger than struct statfs on every Linux ABI
    if libc.statfs(os.fsencode(nearest_existing(path)), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return ctypes.c_long.from_buffer(buf, 0).value & 0xFFFFFFFF


def fs_type_name(magic: int) -> str:
    return _FS_NAMES.get(magic, f"filesystem 0x{magic:X}")


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
    """overlayfs works when a real probe overlay mount in a temp dir succeeds (needs root)."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount programs not found"
    if os.geteuid() != 0:
        return "overlay mounts need root"
    parent = nearest_existing(store_root)
    if any(c in os.fspath(parent) for c in ",:\\") or not os.access(parent, os.W_OK):
        parent = Path(tempfile.gettempdir())
    tmp = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=parent))
    merged = tmp / "merged"
    mounted = False
    try:
        for name in ("lower", "upper", "work", "merged"):
            (tmp / name).mkdir()
        (tmp / "lower" / "probe").write_text("lower")
        options = f"lowerdir={tmp / 'lower'},upperdir={tmp / 'upper'},workdir={tmp / 'work'}"
        result = run(
            ["mount", "-t", "overlay", "overlay", "-o", options, os.fspath(merged)], timeout=15
        )
        if result.exit_code != 0:
            return f"overlay probe mount failed: {result.output.strip() or result.exit_code}"
        mounted = True
        (merged / "probe").write_text("upper")
        if (tmp / "lower" / "probe").read_text() != "lower":
            return "overlay probe wrote through to the lower layer"
        result = run(["umount", os.fspath(merged)], timeout=15)
        if result.exit_code != 0:
            return f"overlay probe umount failed: {result.output.strip() or result.exit_code}"
        mounted = False
        return None
    except (OSError, ProcessError) as exc:
        return f"overlay probe failed: {exc}"
    finally:
        if mounted:
            with contextlib.suppress(OSError, ProcessError):
                run(["umount", "-l", os.fspath(merged)], timeout=15)
        if not os.path.ismount(merged):
            shutil.rmtree(tmp, ignore_errors=True)


PROBES: dict[BackendKind, Probe] = {"btrfs": probe_btrfs, "overlayfs": probe_overlay}


__all__ = [
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
