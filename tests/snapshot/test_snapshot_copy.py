from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.snapshot.base import (
    DIRTY_REASON,
    MISSING_DIR_REASON,
    MISSING_MARKER_REASON,
    MISSING_PG_VERSION_REASON,
    SnapshotBackend,
    SnapshotError,
)
from sqlrs_engine.snapshot.copy import CopyBackend
from tests.support.faults import chattr, needs_chattr, tmpfs

B = CopyBackend()
DataDirFactory = Callable[..., Path]
Tree = Callable[[Path], dict[str, tuple[object, ...]]]


def test_is_a_snapshot_backend() -> None:
    backend: SnapshotBackend = B
    assert backend.kind == "copy"
    assert backend.separate_build_meta is False
    assert backend.mount_dir_of(Path("/x/runtime")) == Path("/x/runtime")


# -- clone ------------------------------------------------------------------------------------


def test_clone_preserves_modes_owners_symlinks(
    tmp_path: Path, data_dir: DataDirFactory, tree: Tree
) -> None:
    src = data_dir("src")
    os.chmod(src, 0o750)
    dst = tmp_path / "jobs" / "j" / "runtime"
    assert B.clone(src, dst) == dst
    assert tree(dst) == tree(src)
    assert os.readlink(dst / "pgdata" / "pg_wal") == "../wal"
    assert (dst / "pgdata" / "pg_wal" / "000000010000000000000001").is_file()
    assert oct(os.stat(dst).st_mode & 0o7777) == oct(0o750)


def test_clone_keeps_postgres_ownership(
    tmp_path: Path, data_dir: DataDirFactory, pg_ids: tuple[int, int]
) -> None:
    uid, gid = pg_ids
    src = data_dir("src")
    f = src / "pgdata" / "root-owned"
    f.write_text("x")
    os.chown(f, 0, 0)
    dst = B.clone(src, tmp_path / "dst")
    st = os.stat(dst / "pgdata" / "PG_VERSION")
    assert (st.st_uid, st.st_gid) == (uid, gid)
    assert os.stat(dst / "pgdata").st_uid == uid
    assert os.stat(dst / "pgdata" / "root-owned").st_uid == 0


def test_clone_skips_store_metadata(tmp_path: Path, data_dir: DataDirFactory) -> None:
    src = data_dir("src", marker=True)
    for name in (".build.lock", ".init.ok", ".init.lock"):
        (src / name).write_text("")
    dst = B.clone(src, tmp_path / "dst")
    assert sorted(p.name for p in dst.iterdir()) == ["pgdata", "wal"]


def test_clone_into_existing_empty_dir(tmp_path: Path, data_dir: DataDirFactory) -> None:
    src = data_dir("src")
    dst = tmp_path / "dst"
    dst.mkdir()
    B.clone(src, dst)
    assert (dst / "pgdata" / "PG_VERSION").read_text() == "15\n"


def test_clone_refuses_nonempty_dst(tmp_path: Path, data_dir: DataDirFactory) -> None:
    src = data_dir("src")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep").write_text("mine")
    with pytest.raises(SnapshotError, match="not empty"):
        B.clone(src, dst)
    assert (dst / "keep").read_text() == "mine"  # untouched


@pytest.mark.parametrize(
    ("rel_dst", "match"),
    [("src/runtime", "inside source"), ("src/pgdata/x", "inside source"), ("src", "inside")],
)
def test_clone_rejects_dst_inside_src(
    tmp_path: Path, data_dir: DataDirFactory, tree: Tree, rel_dst: str, match: str
) -> None:
    src = data_dir("src")
    before = tree(src)
    with pytest.raises(SnapshotError, match=match):
        B.clone(src, tmp_path / rel_dst)
    assert tree(src) == before


def test_clone_rejects_dst_inside_src_via_symlink(tmp_path: Path, data_dir: DataDirFactory) -> None:
    src = data_dir("src")
    (tmp_path / "alias").symlink_to(src)
    with pytest.raises(SnapshotError, match="inside source"):
        B.clone(src, tmp_path / "alias" / "runtime")


def test_clone_rejects_src_inside_dst(tmp_path: Path, data_dir: DataDirFactory) -> None:
    src = data_dir(tmp_path / "outer" / "inner")
    with pytest.raises(SnapshotError, match="inside destination"):
        B.clone(src, tmp_path / "outer")


def test_clone_missing_source(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="not a directory"):
        B.clone(tmp_path / "nope", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_cancelled_clone_leaves_nothing(tmp_path: Path, data_dir: DataDirFactory) -> None:
    src = data_dir("src")
    token = CancelToken()
    token.cancel()
    with pytest.raises(JobFailure) as info:
        B.clone(src, tmp_path / "dst", cancel=token)
    assert info.value.code == "cancelled"
    assert not (tmp_path / "dst").exists()


# -- snapshot ---------------------------------------------------------------------------------


def test_snapshot_round_trip_and_isolation(
    tmp_path: Path, data_dir: DataDirFactory, tree: Tree
) -> None:
    base = data_dir("base")
    runtime = B.clone(base, tmp_path / "runtime")
    (runtime / "pgdata" / "base" / "1" / "16384").write_bytes(b"step-1")
    state = tmp_path / "states" / "s1"
    B.snapshot(runtime, state, parent=base)
    assert tree(state) == tree(runtime)

    # Writes to a clone never reach the state it came from, nor the base.
    clone = B.clone(state, tmp_path / "clone")
    (clone / "pgdata" / "base" / "1" / "16384").write_bytes(b"changed")
    (clone / "pgdata" / "base" / "1" / "1259").write_bytes(b"\x09" * 10)
    (clone / "pgdata" / "new").write_text("x")
    os.chmod(clone / "pgdata" / "postgresql.conf", 0o600)
    assert (state / "pgdata" / "base" / "1" / "16384").read_bytes() == b"step-1"
    assert (state / "pgdata" / "base" / "1" / "1259").read_bytes() == b"\x01" * 8192
    assert not (state / "pgdata" / "new").exists()
    assert os.stat(state / "pgdata" / "postgresql.conf").st_mode & 0o777 == 0o640
    assert not (base / "pgdata" / "base" / "1" / "16384").exists()

    # And writes to the runtime after the snapshot don't reach the state either.
    (runtime / "pgdata" / "PG_VERSION").write_text("16\n")
    assert (state / "pgdata" / "PG_VERSION").read_text() == "15\n"


@pytest.mark.parametrize("where", ["pid", "pid_top"])
def test_snapshot_refuses_running_server(
    tmp_path: Path, data_dir: DataDirFactory, where: str
) -> None:
    src = data_dir("src", **{where: True})
    dst = tmp_path / "state"
    with pytest.raises(SnapshotError) as info:
        B.snapshot(src, dst, parent=None)
    assert info.value.code == "internal_error"
    assert "postmaster.pid present" in str(info.value)
    assert "stop" in str(info.value)
    assert not dst.exists()


def test_snapshot_refuses_missing_pg_version(tmp_path: Path, data_dir: DataDirFactory) -> None:
    src = data_dir("src", pg_version=False)
    with pytest.raises(SnapshotError, match="missing PG_VERSION"):
        B.snapshot(src, tmp_path / "state", parent=None)


def test_snapshot_into_dir_holding_only_the_lock(tmp_path: Path, data_dir: DataDirFactory) -> None:
    src = data_dir("src")
    dst = tmp_path / "state"
    dst.mkdir()
    (dst / ".build.lock").write_text("")
    B.snapshot(src, dst, parent=None)
    assert sorted(p.name for p in dst.iterdir()) == [".build.lock", "pgdata", "wal"]


@pytest.mark.parametrize("leftover", [".build.ok", "pgdata"])
def test_snapshot_refuses_non_empty_state_dir(
    tmp_path: Path, data_dir: DataDirFactory, leftover: str
) -> None:
    src = data_dir("src")
    dst = tmp_path / "state"
    (dst / leftover).mkdir(parents=True)
    with pytest.raises(SnapshotError, match="not empty"):
        B.snapshot(src, dst, parent=None)


def test_snapshot_rejects_overlap(tmp_path: Path, data_dir: DataDirFactory) -> None:
    src = data_dir("src")
    with pytest.raises(SnapshotError, match="inside source"):
        B.snapshot(src, src / "state", parent=None)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_out_of_space_is_flagged_and_cleaned(tmp_path: Path, data_dir: DataDirFactory) -> None:
    src = data_dir("src")
    (src / "pgdata" / "big").write_bytes(b"\x07" * (512 * 1024))
    with tmpfs(tmp_path / "small", "128k") as small:
        with pytest.raises(SnapshotError) as info:
            B.clone(src, small / "runtime")
        assert info.value.no_space
        assert "No space left on device" in str(info.value)
        assert not (small / "runtime").exists()

        state = small / "state"
        state.mkdir()
        (state / ".build.lock").write_text("")
        with pytest.raises(SnapshotError) as info:
            B.snapshot(src, state, parent=None)
        assert info.value.no_space
        assert [p.name for p in state.iterdir()] == [".build.lock"]


# -- remove -----------------------------------------------------------------------------------


def test_remove_tree_file_symlink_and_absent(tmp_path: Path, data_dir: DataDirFactory) -> None:
    d = data_dir("victim")
    B.remove(d)
    assert not d.exists()
    f = tmp_path / "f"
    f.write_text("x")
    B.remove(f)
    assert not f.exists()
    target = data_dir("target")
    link = tmp_path / "link"
    link.symlink_to(target)
    B.remove(link)
    assert not link.is_symlink() and (target / "pgdata").is_dir()  # link only, not its target
    B.remove(tmp_path / "never-existed")


@needs_chattr
def test_remove_moves_aside_a_tree_it_cannot_empty(
    tmp_path: Path, data_dir: DataDirFactory
) -> None:
    runtime = data_dir(tmp_path / "jobs" / "j" / "runtime")
    stuck = runtime / "pgdata" / "global" / "pg_control"
    chattr("+i", stuck)  # rm -rf cannot unlink it; the tree can still be renamed
    try:
        B.remove(runtime)
        assert not runtime.exists()
        stale = [p for p in runtime.parent.iterdir() if p.name.startswith("runtime.stale-")]
        assert len(stale) == 1
    finally:
        for p in (tmp_path / "jobs" / "j").glob("runtime.stale-*/pgdata/global/pg_control"):
            chattr("-i", p)


@needs_chattr
def test_remove_reports_clearly_when_impossible(tmp_path: Path, data_dir: DataDirFactory) -> None:
    parent = tmp_path / "locked"
    victim = data_dir(parent / "state")
    chattr("+i", parent)  # neither unlink nor rename inside it
    try:
        with pytest.raises(SnapshotError) as info:
            B.remove(victim)
        assert info.value.message == f"cannot remove {victim}"
        assert "cannot move it aside" in (info.value.details or "")
        assert victim.exists()
    finally:
        chattr("-i", parent)


# -- validate_state / size_bytes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"marker": True}, None),
        ({"marker": True, "pid": True}, DIRTY_REASON),
        ({"marker": True, "pid_top": True}, DIRTY_REASON),
        ({"marker": True, "pg_version": False}, MISSING_PG_VERSION_REASON),
        ({"marker": False}, MISSING_MARKER_REASON),
        ({"marker": False, "pid": True}, DIRTY_REASON),
    ],
)
def test_validate_state_reasons(
    data_dir: DataDirFactory, kwargs: dict[str, bool], expected: str | None
) -> None:
    reason = B.validate_state(data_dir("state", **kwargs))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(expected)


def test_validate_state_pg_version_at_top_level(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "PG_VERSION").write_text("15\n")
    (state / ".build.ok").write_text("ok")
    assert B.validate_state(state) is None


def test_validate_missing_state_dir(tmp_path: Path) -> None:
    reason = B.validate_state(tmp_path / "gone")
    assert reason is not None and reason.startswith(MISSING_DIR_REASON)


def test_size_bytes(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "a" / "b").mkdir(parents=True)
    (root / "x").write_bytes(b"1" * 10)
    (root / "a" / "y").write_bytes(b"2" * 20)
    (root / "a" / "b" / "z").write_bytes(b"3" * 30)
    (root / "a" / "link").symlink_to("/etc/passwd")  # not counted (not a regular file)
    (root / "a" / "dirlink").symlink_to(root / "a")  # not followed
    os.mkfifo(root / "fifo")
    with open(root / "sparse", "wb") as f:
        f.truncate(1000)
    assert B.size_bytes(root) == 10 + 20 + 30 + 1000
    assert B.size_bytes(root / "x") == 10
    with pytest.raises(FileNotFoundError):
        B.size_bytes(tmp_path / "gone")
