"""A store never mixes layouts silently: the engine may start with another backend than the
one that made the states (config changed, btrfs unmounted, not root any more)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlrs_engine.actors.snapshot import start_snapshot_actor
from sqlrs_engine.snapshot.btrfs import BtrfsBackend
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.fsinfo import is_subvolume
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.mounts import is_mount_point, mounts_under, unmount
from sqlrs_engine.snapshot.overlay import OverlayBackend
from sqlrs_engine.snapshot.store import StateStore, detect_layout
from tests.snapshot.test_snapshot_backends import IMAGE, JOB_A, JOB_B, build, fake_initdb

S1 = "1" * 64


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    try:
        yield root
    finally:
        for entry in mounts_under(tmp_path):
            unmount(entry.mount_point, lazy=True)


def stores(root: Path, first: str, second: str) -> tuple[StateStore, StateStore]:
    def make(kind: str) -> StateStore:
        backends = {
            "copy": CopyBackend(),
            "overlayfs": OverlayBackend(root),
            "btrfs": BtrfsBackend(root),
        }
        return StateStore(StoreLayout(root), backends[kind])

    return make(first), make(second)


def made_by(store: StateStore) -> Path:
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    (mount / "pgdata" / "mark").write_text(store.backend.kind)
    state = build(store, S1, mount, base)
    store.remove_job_dir(JOB_A)
    return state


@pytest.mark.usefixtures("overlay_ok")
def test_overlay_states_are_rebuilt_by_a_copy_engine(root: Path) -> None:
    overlay, copy = stores(root, "overlayfs", "copy")
    state = made_by(overlay)
    assert detect_layout(state) == "overlayfs"
    assert copy.foreign_states() == {"overlayfs": 1}
    reason = copy.validate_state(IMAGE, S1)
    assert reason == ("state was made by the overlayfs snapshot backend, but this engine uses copy")
    assert copy.invalidate_state(IMAGE, S1) == reason
    rebuilt = made_by(copy)
    assert detect_layout(rebuilt) == "copy"
    assert copy.validate_state(IMAGE, S1) is None
    assert overlay.validate_state(IMAGE, S1) == (
        "state was made by the copy snapshot backend, but this engine uses overlayfs"
    )


@pytest.mark.usefixtures("overlay_ok")
def test_a_copy_engine_finds_and_removes_overlay_clones(root: Path) -> None:
    overlay, copy = stores(root, "overlayfs", "copy")
    base = overlay.ensure_base(IMAGE, fake_initdb)
    mount = overlay.clone_to_runtime(base, JOB_B, require_pg_version=False)
    unmount(mount)  # engine restart after a reboot
    assert copy.runtime_mount_dir(JOB_B) == mount
    assert is_mount_point(mount), "remounted for the instance that owns it"
    copy.remove_runtime_dir(JOB_B)
    assert not mount.exists() and mounts_under(root) == []


def test_btrfs_states_are_rebuilt_by_a_copy_engine(btrfs_dir: Path) -> None:
    root = btrfs_dir / "root"
    btrfs, copy = stores(root, "btrfs", "copy")
    state = made_by(btrfs)
    assert detect_layout(state) == "btrfs" and is_subvolume(state)
    assert copy.foreign_states() == {"btrfs": 1}
    assert "made by the btrfs snapshot backend" in (copy.validate_state(IMAGE, S1) or "")
    # A read-only snapshot cannot hold copy's lock file: it is dropped before locking.
    with copy.build_state(IMAGE, S1) as b:
        assert not b.already_built
        assert not is_subvolume(state)
    rebuilt = made_by(copy)
    assert detect_layout(rebuilt) == "copy"
    assert copy.validate_state(IMAGE, S1) is None


def test_copy_states_are_rebuilt_by_a_btrfs_engine(btrfs_dir: Path) -> None:
    root = btrfs_dir / "root"
    copy, btrfs = stores(root, "copy", "btrfs")
    made_by(copy)
    reason = btrfs.validate_state(IMAGE, S1)
    assert reason == "state was made by the copy snapshot backend, but this engine uses btrfs"
    assert btrfs.invalidate_state(IMAGE, S1) == reason
    state = made_by(btrfs)
    assert is_subvolume(state) and btrfs.validate_state(IMAGE, S1) is None


@pytest.mark.usefixtures("overlay_ok")
def test_actor_start_sweeps_mounts_before_returning(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overlay, copy = stores(root, "overlayfs", "copy")
    made_by(copy)  # a state the overlay engine will not use as is
    base = overlay.ensure_base(IMAGE, fake_initdb)
    idle = overlay.clone_to_runtime(base, JOB_B, require_pg_version=False)
    caplog.set_level(logging.INFO)
    ref, client = start_snapshot_actor(overlay)
    try:
        assert not is_mount_point(idle), "the sweep ran before start_snapshot_actor returned"
        assert client.kind == "overlayfs"
        assert client.mount_dir_of(idle.parent) == idle  # run recovery mounts it again
        assert is_mount_point(idle) and (idle / "pgdata" / "PG_VERSION").is_file()
    finally:
        ref.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("unmounted 1 idle or leftover overlay mounts" in m for m in messages)
    assert any("states made by other snapshot backends (copy: 1)" in m for m in messages)
