"""The btrfs backend, and reflink copies, on a real btrfs filesystem on a loop device."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sqlrs_engine.snapshot.base import SnapshotBackend, SnapshotError
from sqlrs_engine.snapshot.btrfs import BtrfsBackend, state_record, subvolumes_below
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.extents import added_bytes, file_extents
from sqlrs_engine.snapshot.fsinfo import is_subvolume
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.store import StateStore
from tests.snapshot.test_snapshot_backends import IMAGE, JOB_A, JOB_B, build, fake_initdb

S1, S2 = "1" * 64, "2" * 64
MB = 1024 * 1024


@pytest.fixture
def store(btrfs_dir: Path) -> StateStore:
    root = btrfs_dir / "root"
    return StateStore(StoreLayout(root), BtrfsBackend(root))


def readonly(path: Path) -> bool:
    out = subprocess.run(
        ["btrfs", "property", "get", "-ts", str(path), "ro"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip() == "ro=true"


def test_is_a_snapshot_backend(tmp_path: Path) -> None:
    backend: SnapshotBackend = BtrfsBackend(tmp_path)
    assert backend.kind == "btrfs"
    assert backend.separate_build_meta is True
    assert backend.mount_dir_of(tmp_path / "runtime") == tmp_path / "runtime"


def test_subvolumes_snapshots_and_separate_markers(store: StateStore) -> None:
    base = store.ensure_base(IMAGE, fake_initdb)
    assert is_subvolume(base) and not readonly(base)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    assert is_subvolume(mount) and not readonly(mount)
    assert sorted(os.listdir(mount)) == ["pgdata"]
    (mount / "pgdata" / "step").write_text("1")
    state = build(store, S1, mount, base)
    assert is_subvolume(state) and readonly(state)
    assert sorted(os.listdir(state)) == ["pgdata"], "markers and locks live in states/.build"
    build_dir = state.parent / ".build"
    assert sorted(os.listdir(build_dir)) == [f"{S1}.json", f"{S1}.lock", f"{S1}.ok"]
    assert json.loads(state_record(state).read_text()) == {
        "backend": "btrfs",
        "parent": "../base",
    }
    with pytest.raises(OSError):
        (state / "pgdata" / "step").write_text("a state is immutable")
    store.remove_job_dir(JOB_A)
    store.remove_state(IMAGE, S1)
    assert not state.exists() and os.listdir(build_dir) == []


def test_remove_deletes_nested_subvolumes(store: StateStore) -> None:
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    state = build(store, S1, mount, base)
    job_dir = store.layout.job_dir(JOB_A)
    assert subvolumes_below(job_dir) == [mount]
    stale = state.with_name(f"{S1}.stale-1")
    subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(state), str(stale)], check=True)
    store.remove_job_dir(JOB_A)  # a job dir holding a writable subvolume
    assert not job_dir.exists()
    assert store.sweep_stale() == [stale]  # a read-only one: rm -rf alone cannot
    assert not stale.exists()


def test_base_dir_becomes_a_subvolume_unless_it_holds_a_cluster(btrfs_dir: Path) -> None:
    backend = BtrfsBackend(btrfs_dir)
    leftover = btrfs_dir / "e" / "base"
    (leftover / "half-done").mkdir(parents=True)
    backend.ensure_base_dir(leftover)
    assert is_subvolume(leftover) and os.listdir(leftover) == []
    plain = btrfs_dir / "plain" / "base"
    fake_initdb(plain)  # made by the copy backend earlier: kept, and cloned by reflink copy
    backend.ensure_base_dir(plain)
    assert not is_subvolume(plain)
    clone = backend.clone(plain, btrfs_dir / "clone")
    assert is_subvolume(clone)
    assert (clone / "pgdata" / "base" / "5" / "keep").read_text() == "base"
    big = plain / "pgdata" / "16384"
    big.write_bytes(os.urandom(2 * MB))
    clone2 = backend.clone(plain, btrfs_dir / "clone2")
    assert added_bytes(clone2, plain) < 64 * 1024, "the fallback copy reflinks"


def test_size_bytes_is_what_the_state_adds_to_its_parent(store: StateStore) -> None:
    def init(base: Path) -> None:
        fake_initdb(base)
        (base / "pgdata" / "base" / "5" / "16384").write_bytes(os.urandom(8 * MB))

    base = store.ensure_base(IMAGE, init)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    with open(mount / "pgdata" / "base" / "5" / "16384", "r+b") as f:
        f.seek(3 * MB)
        f.write(os.urandom(MB))  # the step rewrites 1 MB of an 8 MB relation
    s1 = build(store, S1, mount, base)
    assert MB <= store.state_size(IMAGE, S1) < MB + 256 * 1024
    (mount / "pgdata" / "other").write_bytes(os.urandom(2 * MB))
    build(store, S2, mount, s1)
    assert 2 * MB <= store.state_size(IMAGE, S2) < 2 * MB + 256 * 1024
    store.remove_job_dir(JOB_A)
    store.remove_state(IMAGE, S2)
    store.remove_state(IMAGE, S1)


def test_store_not_ready_when_the_root_is_no_longer_btrfs(tmp_path: Path) -> None:
    backend = BtrfsBackend(tmp_path / "root")
    src = tmp_path / "src"
    fake_initdb(src)
    with pytest.raises(SnapshotError) as info:
        backend.clone(src, tmp_path / "dst")
    assert info.value.code == "internal_error"
    assert info.value.message == "state store not ready"
    assert "not btrfs" in (info.value.details or "")


def test_copy_backend_reflinks_on_btrfs(btrfs_dir: Path) -> None:
    """copy uses `cp --reflink=auto`: shared extents on btrfs, a plain copy elsewhere."""
    src = btrfs_dir / "src"
    fake_initdb(src)
    big = src / "pgdata" / "base" / "5" / "16384"
    big.write_bytes(os.urandom(4 * MB))
    os.sync()
    dst = CopyBackend().clone(src, btrfs_dir / "dst")
    copied = dst / "pgdata" / "base" / "5" / "16384"
    assert copied.read_bytes() == big.read_bytes()
    assert [e[0] for e in file_extents(copied)] == [e[0] for e in file_extents(big)]
    assert added_bytes(dst, src) < 64 * 1024
    with open(copied, "r+b") as f:
        f.write(b"\xff" * 4096)
    os.sync()
    assert 4096 <= added_bytes(dst, src) < 64 * 1024 + 4096
    assert big.read_bytes()[:4096] != b"\xff" * 4096


def test_clone_from_a_foreign_btrfs_store_state_keeps_working(store: StateStore) -> None:
    """A second job cloning the same state gets its own subvolume."""
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    state = build(store, S1, mount, base)
    other = store.clone_to_runtime(state, JOB_B, require_pg_version=True)
    (other / "pgdata" / "x").write_text("b")
    assert not (mount / "pgdata" / "x").exists() and not (state / "pgdata" / "x").exists()
    store.remove_job_dir(JOB_A)
    store.remove_job_dir(JOB_B)


def test_a_reflinked_copy_state_counts_only_what_its_step_wrote(btrfs_dir: Path) -> None:
    """Issue 14: the copy backend on btrfs shares extents with the parent it was cloned from;
    its `size_bytes` is what it adds, not the sum of its file sizes."""
    root = btrfs_dir / "copy-root"
    store = StateStore(StoreLayout(root), CopyBackend())
    base = store.ensure_base(IMAGE, fake_initdb)
    relation = base / "pgdata" / "base" / "5" / "16384"
    relation.write_bytes(os.urandom(4 * MB))
    os.sync()
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    with open(mount / "pgdata" / "base" / "5" / "16384", "r+b") as f:
        f.write(b"\xff" * 4096)  # the step writes one page
    os.sync()
    with store.build_state(IMAGE, S1) as b:
        b.snapshot(mount, base)
        size = b.size_bytes()
        b.commit()
    state = store.state_dir(IMAGE, S1)
    assert store.backend.size_bytes(state) > 4 * MB, "file sizes count the shared data"
    assert 4096 <= size < 256 * 1024, size
    store.remove_job_dir(JOB_A)
