from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from sqlrs_engine.snapshot.base import BackendKind, SnapshotBackend
from sqlrs_engine.snapshot.btrfs import BtrfsBackend
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.overlay import OverlayBackend
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
    """Stands in for a backend whose probe is faked (choice logic only)."""
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
COPY_ONLY: dict[BackendKind, Factory] = {"copy": IMPLEMENTED["copy"]}


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
def test_unavailable_backends_fall_back_to_copy_with_a_reason(
    tmp_path: Path, configured: str | None, reason: str, fallback: bool
) -> None:
    choice = select_backend(configured, tmp_path, implemented=COPY_ONLY, probes=NO_PROBES)
    assert isinstance(choice, BackendChoice)
    assert isinstance(choice.backend, CopyBackend)
    assert choice.backend.kind == "copy"
    assert choice.reason == reason
    assert choice.fallback is fallback


def test_every_backend_is_implemented() -> None:
    assert sorted(IMPLEMENTED) == ["btrfs", "copy", "overlayfs"]


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
def test_choice_follows_the_probes(
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


def test_real_probes_on_this_filesystem_choose_overlay_as_root(tmp_path: Path) -> None:
    """CI runs as root on ext4: auto and overlay pick overlayfs, saying why not btrfs."""
    if os.geteuid() != 0:
        pytest.skip("overlay mounts need root")
    if statfs_type(tmp_path) == BTRFS_MAGIC:
        pytest.skip("test dir is on btrfs; auto would pick btrfs")
    choice = select_backend("auto", tmp_path / "root")
    assert isinstance(choice.backend, OverlayBackend)
    fs = fs_type_name(statfs_type(tmp_path))
    assert choice.reason == (
        f"snapshot backend overlayfs (configured auto; btrfs: store root is {fs}, not btrfs)"
    )
    assert select_backend("overlay", tmp_path).backend.kind == "overlayfs"
    btrfs = select_backend("btrfs", tmp_path)
    assert btrfs.backend.kind == "copy" and btrfs.fallback
    assert btrfs.reason == (
        f"snapshot backend copy (configured btrfs; btrfs: store root is {fs}, not btrfs)"
    )


def test_real_probes_on_btrfs_choose_btrfs(btrfs_dir: Path) -> None:
    choice = select_backend("auto", btrfs_dir / "root")
    assert isinstance(choice.backend, BtrfsBackend)
    assert choice.reason == "snapshot backend btrfs (configured auto)"
    assert choice.fallback is False
    assert select_backend("copy", btrfs_dir).backend.kind == "copy"
    overlay = select_backend("overlay", btrfs_dir)
    assert overlay.backend.kind == "overlayfs", "overlay works on btrfs too (as root)"
