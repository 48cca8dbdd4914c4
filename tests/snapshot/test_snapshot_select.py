from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from sqlrs_engine.snapshot.base import BackendKind, SnapshotBackend
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.select import (
    BTRFS_MAGIC,
    IMPLEMENTED,
    BackendChoice,
    Factory,
    Probe,
    fs_type_name,
    nearest_existing,
    probe_btrfs,
    probe_overlay,
    select_backend,
    statfs_type,
)


def fake_backend(kind: BackendKind) -> SnapshotBackend:
    """Stands in for the overlay/btrfs backends that do not exist yet (choice logic only)."""
    return cast(SnapshotBackend, SimpleNamespace(kind=kind))


def with_fakes(*kinds: BackendKind) -> dict[BackendKind, Factory]:
    factories: dict[BackendKind, Factory] = dict(IMPLEMENTED)
    for kind in kinds:
        factories[kind] = lambda root, kind=kind: fake_backend(kind)  # type: ignore[misc]
    return factories


def probes(**results: str | None) -> dict[BackendKind, Probe]:
    def make(value: str | None) -> Probe:
        return lambda root: value

    return {("overlayfs" if k == "overlay" else k): make(v) for k, v in results.items()}  # type: ignore[misc]


def never(root: Path) -> str | None:
    raise AssertionError("probe must not run for a backend that is not implemented")


NO_PROBES: dict[BackendKind, Probe] = {"btrfs": never, "overlayfs": never}


@pytest.mark.parametrize(
    ("configured", "reason", "fallback"),
    [
        ("copy", "snapshot backend copy (configured copy)", False),
        (" COPY ", "snapshot backend copy (configured copy)", False),
        (
            "auto",
            "snapshot backend copy (configured auto; btrfs: not implemented yet; "
            "overlayfs: not implemented yet)",
            True,
        ),
        (
            None,
            "snapshot backend copy (configured auto; btrfs: not implemented yet; "
            "overlayfs: not implemented yet)",
            True,
        ),
        (
            "overlay",
            "snapshot backend copy (configured overlay; overlayfs: not implemented yet)",
            True,
        ),
        ("btrfs", "snapshot backend copy (configured btrfs; btrfs: not implemented yet)", True),
        (
            "zfs",
            "snapshot backend copy (configured 'zfs' is not one of auto, overlay, btrfs, copy; "
            "using copy)",
            True,
        ),
    ],
)
def test_today_everything_falls_back_to_copy_with_a_reason(
    tmp_path: Path, configured: str | None, reason: str, fallback: bool
) -> None:
    choice = select_backend(configured, tmp_path, probes=NO_PROBES)
    assert isinstance(choice, BackendChoice)
    assert isinstance(choice.backend, CopyBackend)
    assert choice.backend.kind == "copy"
    assert choice.reason == reason
    assert choice.fallback is fallback


@pytest.mark.parametrize(
    ("configured", "probe_results", "kind", "reason", "fallback"),
    [
        ("auto", {"btrfs": None, "overlay": None}, "btrfs",
         "snapshot backend btrfs (configured auto)", False),
        ("auto", {"btrfs": "store root is ext4, not btrfs", "overlay": None}, "overlayfs",
         "snapshot backend overlayfs (configured auto; btrfs: store root is ext4, not btrfs)",
         True),
        ("auto", {"btrfs": "store root is ext4, not btrfs", "overlay": "mount failed: EPERM"},
         "copy",
         "snapshot backend copy (configured auto; btrfs: store root is ext4, not btrfs; "
         "overlayfs: mount failed: EPERM)", True),
        ("overlay", {"btrfs": None, "overlay": None}, "overlayfs",
         "snapshot backend overlayfs (configured overlay)", False),
        ("btrfs", {"btrfs": "btrfs program not found", "overlay": None}, "copy",
         "snapshot backend copy (configured btrfs; btrfs: btrfs program not found)", True),
        ("copy", {"btrfs": None, "overlay": None}, "copy",
         "snapshot backend copy (configured copy)", False),
    ],
)  # fmt: skip
def test_choice_once_other_backends_exist(
    tmp_path: Path,
    configured: str,
    probe_results: dict[str, str | None],
    kind: str,
    reason: str,
    fallback: bool,
) -> None:
    choice = select_backend(
        configured,
        tmp_path,
        implemented=with_fakes("btrfs", "overlayfs"),
        probes=probes(**probe_results),
    )
    assert choice.backend.kind == kind
    assert choice.reason == reason
    assert choice.fallback is fallback


def test_implemented_backends_are_snapshot_backends(tmp_path: Path) -> None:
    for kind, factory in IMPLEMENTED.items():
        backend: SnapshotBackend = factory(tmp_path)
        assert backend.kind == kind


def test_statfs_type_matches_coreutils(tmp_path: Path) -> None:
    for path in (tmp_path, Path("/proc"), Path("/dev/shm")):
        if not path.exists():
            continue
        expected = subprocess.run(
            ["stat", "-f", "-c", "%t", str(path)], check=True, capture_output=True, text=True
        ).stdout.strip()
        assert statfs_type(path) == int(expected, 16), path


def test_statfs_of_missing_root_uses_nearest_ancestor(tmp_path: Path) -> None:
    missing = tmp_path / "a" / "b" / "c"
    assert nearest_existing(missing) == tmp_path
    assert statfs_type(missing) == statfs_type(tmp_path)


def test_fs_type_names() -> None:
    assert fs_type_name(0xEF53) == "ext4"
    assert fs_type_name(BTRFS_MAGIC) == "btrfs"
    assert fs_type_name(0x1234) == "filesystem 0x1234"


def test_probe_btrfs_on_this_filesystem(tmp_path: Path) -> None:
    reason = probe_btrfs(tmp_path)
    if statfs_type(tmp_path) == BTRFS_MAGIC:
        pytest.skip("test dir is on btrfs; the negative case needs another filesystem")
    assert reason == f"store root is {fs_type_name(statfs_type(tmp_path))}, not btrfs"


@pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root")
def test_probe_overlay_real_mount(tmp_path: Path) -> None:
    reason = probe_overlay(tmp_path / "root-not-created-yet")
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            assert reason is not None and "overlay" in reason
            return
    assert reason is None
    assert list(tmp_path.iterdir()) == []  # the probe cleaned up after itself
    with open("/proc/self/mounts") as f:
        assert ".overlay-probe-" not in f.read()


def test_select_with_real_probes_never_crashes(tmp_path: Path) -> None:
    choice: BackendChoice = select_backend("auto", tmp_path)
    assert choice.backend.kind == "copy"
    assert choice.reason.startswith("snapshot backend copy (configured auto; ")
