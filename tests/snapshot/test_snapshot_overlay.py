"""The overlayfs backend: layer format, O(1) snapshots, flattening, mounts (real mounts, root)."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlrs_engine.process import RunAs
from sqlrs_engine.runtime.users import chown_tree
from sqlrs_engine.snapshot.base import MISSING_PG_VERSION_REASON, SnapshotBackend, SnapshotError
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.mounts import (
    MOUNT_DATA_LIMIT,
    OVERLAY_MAX_LAYERS,
    is_mount_point,
    mounts_under,
    overlay_limit_problem,
    overlay_options,
    unmount,
)
from sqlrs_engine.snapshot.overlay import (
    DEFAULT_MAX_DEPTH,
    LAYER,
    META,
    OverlayBackend,
    lookup,
    read_meta,
    sweep_mounts,
)
from sqlrs_engine.snapshot.store import StateStore
from tests.snapshot.test_snapshot_backends import IMAGE, JOB_A, JOB_B, build, fake_initdb, view

pytestmark = pytest.mark.usefixtures("overlay_ok")

S1, S2 = "1" * 64, "2" * 64


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    root = tmp_path / "root"
    store = StateStore(StoreLayout(root), OverlayBackend(root))
    try:
        yield store
    finally:
        for entry in mounts_under(tmp_path):
            unmount(entry.mount_point, lazy=True)


def upper_files(store: StateStore, job: str) -> dict[str, str]:
    """Regular files and whiteouts in a clone's upper dir (what it copied up or wrote)."""
    upper = store.layout.job_runtime_dir(job) / "upper"
    found: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(upper):
        for name in files:
            path = Path(dirpath) / name
            st = os.lstat(path)
            kind = "whiteout" if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 else "file"
            found[str(path.relative_to(upper))] = kind
    return found


def test_is_a_snapshot_backend(tmp_path: Path) -> None:
    backend: SnapshotBackend = OverlayBackend(tmp_path)
    assert backend.kind == "overlayfs"
    assert backend.separate_build_meta is False
    assert backend.mount_dir_of(tmp_path / "missing") == tmp_path / "missing" / "merged"
    with pytest.raises(ValueError, match="500"):
        OverlayBackend(tmp_path, max_depth=501)


def test_state_is_a_layer_of_what_the_step_changed(store: StateStore) -> None:
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    assert is_mount_point(mount)
    merged_root = os.stat(mount)
    pgdata_owner = os.stat(base / "pgdata")
    assert (merged_root.st_uid, merged_root.st_gid) == (pgdata_owner.st_uid, pgdata_owner.st_gid)
    assert stat.S_IMODE(merged_root.st_mode) == 0o700
    (mount / "pgdata" / "base" / "5" / "t").write_text("step")
    (mount / "pgdata" / "base" / "5" / "dropped").unlink()
    upper = store.layout.job_runtime_dir(JOB_A) / "upper"
    upper_inode = os.stat(upper).st_ino
    state = build(store, S1, mount, base)

    layer = state / LAYER
    assert os.stat(layer).st_ino == upper_inode, "the upper dir is moved, never copied"
    meta = read_meta(state / META)
    assert meta["backend"] == "overlayfs" and meta["flattened"] is False
    assert [item["path"] for item in meta["lowers"]] == ["../../base"]
    files = {
        str(p.relative_to(layer)): "whiteout" if p.is_char_device() else "file"
        for p in layer.rglob("*")
        if not p.is_dir()
    }
    assert files == {
        ".init.ok": "whiteout",
        ".init.lock": "whiteout",
        "pgdata/base/5/t": "file",
        "pgdata/base/5/dropped": "whiteout",
    }
    # Its own blocks: the one file the step wrote ("step", one block), whiteouts none.
    assert store.state_size(IMAGE, S1) == os.stat(layer / "pgdata/base/5/t").st_blocks * 512 > 0
    # The clone was remounted on the new state and keeps working.
    assert is_mount_point(mount)
    clone_meta = read_meta(store.layout.job_runtime_dir(JOB_A) / META)
    assert clone_meta["lowers"][0]["id"] == meta["id"]
    assert upper_files(store, JOB_A) == {}
    (mount / "pgdata" / "base" / "5" / "t").write_text("next step")
    assert (layer / "pgdata" / "base" / "5" / "t").read_text() == "step"


def test_ownership_walk_copies_nothing_up(store: StateStore) -> None:
    """`prepare_data_dir` chowns only entries whose owner differs: nothing on a clone."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        user = RunAs.from_name("postgres")
    except KeyError:
        pytest.skip("needs the OS user postgres")

    def init(base: Path) -> None:
        fake_initdb(base)
        chown_tree(base / "pgdata", user)

    base = store.ensure_base(IMAGE, init)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    assert chown_tree(mount, user) == 0
    assert os.stat(mount).st_uid == pwd.getpwnam("postgres").pw_uid
    assert all(kind == "whiteout" for kind in upper_files(store, JOB_A).values())


def test_deep_chain_is_flattened_at_the_depth_threshold(store: StateStore) -> None:
    backend = store.backend
    assert isinstance(backend, OverlayBackend)
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    parent = base
    depths = []
    for i in range(DEFAULT_MAX_DEPTH + 8):
        (mount / "pgdata" / "base" / "5" / f"step{i:02d}").write_text(str(i))
        parent = build(store, f"{i:064d}", mount, parent)
        depths.append(backend.depth_of(parent))
    # base + one layer per state, until the chain would exceed the threshold: flattened.
    assert depths[: DEFAULT_MAX_DEPTH - 1] == list(range(2, DEFAULT_MAX_DEPTH + 1))
    assert depths[DEFAULT_MAX_DEPTH - 1] == 1
    assert read_meta(store.state_dir(IMAGE, f"{DEFAULT_MAX_DEPTH - 1:064d}") / META)["flattened"]
    assert depths[DEFAULT_MAX_DEPTH:] == list(range(2, 10))
    assert max(depths) <= DEFAULT_MAX_DEPTH
    for i in (0, DEFAULT_MAX_DEPTH - 2, DEFAULT_MAX_DEPTH - 1, len(depths) - 1):
        state = store.state_dir(IMAGE, f"{i:064d}")
        clone = store.clone_to_runtime(state, JOB_B, require_pg_version=True)
        steps = sorted(k for k in view(clone) if "step" in k)
        assert steps == [f"pgdata/base/5/step{j:02d}" for j in range(i + 1)]
        assert "pgdata/base/5/dropped" in view(clone)
        store.remove_job_dir(JOB_B)
    store.remove_job_dir(JOB_A)


def test_chain_is_flattened_before_mount_options_overflow(store: StateStore) -> None:
    """Long layer paths hit the one-page option limit before the depth threshold."""
    backend = store.backend
    assert isinstance(backend, OverlayBackend)
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    parent = base
    depths = []
    for i in range(25):
        (mount / "pgdata" / f"s{i}").write_text(str(i))
        parent = build(store, f"{i:02d}" + "x" * 230, mount, parent)  # 232-char state ids
        depths.append(backend.depth_of(parent))
        lowers = [layer.path for layer in backend.stack_of(parent)]
        runtime = store.layout.job_runtime_dir(JOB_A)
        _cwd, options = overlay_options(lowers, runtime / "upper", runtime / "work")
        assert len(options) <= MOUNT_DATA_LIMIT
    flattened_at = depths.index(1)
    assert 10 < flattened_at < DEFAULT_MAX_DEPTH - 1, depths
    clone = store.clone_to_runtime(parent, JOB_B, require_pg_version=True)
    assert sorted(k for k in view(clone) if k.startswith("pgdata/s")) == sorted(
        f"pgdata/s{i}" for i in range(25)
    )


def test_kernel_limits_are_checked() -> None:
    assert overlay_limit_problem(OVERLAY_MAX_LAYERS, "x" * MOUNT_DATA_LIMIT) is None
    too_many = overlay_limit_problem(OVERLAY_MAX_LAYERS + 1, "x")
    assert too_many is not None and "501 lower layers" in too_many
    too_long = overlay_limit_problem(2, "x" * (MOUNT_DATA_LIMIT + 1))
    assert too_long is not None and "4096 bytes" in too_long


def test_options_use_short_relative_paths(tmp_path: Path) -> None:
    states = tmp_path / "e" / "v" / "states"
    lowers = [states / "b" / "layer", states / "a" / "layer", tmp_path / "e" / "v" / "base"]
    upper = tmp_path / "jobs" / "j" / "runtime" / "upper"
    cwd, options = overlay_options(lowers, upper, upper.with_name("work"))
    assert cwd == tmp_path / "e" / "v"
    assert options == (
        "lowerdir=states/b/layer:states/a/layer:base,upperdir=../../jobs/j/runtime/upper,"
        "workdir=../../jobs/j/runtime/work,index=off,metacopy=off"
    )
    with pytest.raises(SnapshotError, match="cannot carry"):
        overlay_options([tmp_path / "a:b"], upper, upper)


def test_lookup_follows_whiteouts_and_opaque_dirs(store: StateStore) -> None:
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    sub = mount / "pgdata" / "base" / "5"
    for entry in sub.iterdir():
        entry.unlink()
    sub.rmdir()
    sub.mkdir()  # recreated after removal: an opaque dir in the upper
    (sub / "new").write_text("n")
    (mount / "pgdata" / "PG_VERSION").unlink()
    state = build_without_pg_version_check(store, mount)
    backend = store.backend
    assert isinstance(backend, OverlayBackend)
    stack = [layer.path for layer in backend.stack_of(state)]
    assert lookup(stack, "pgdata/base/5/new") == state / LAYER / "pgdata" / "base" / "5" / "new"
    assert lookup(stack, "pgdata/base/5/keep") is None  # hidden by the opaque dir
    assert lookup(stack, "pgdata/PG_VERSION") is None  # hidden by a whiteout
    assert lookup(stack, "pgdata/postgresql.conf") == base / "pgdata" / "postgresql.conf"
    assert backend.data_problem(state) is None  # PG_VERSION at the top of the data dir
    (state / LAYER / "PG_VERSION").unlink()
    assert backend.data_problem(state) == MISSING_PG_VERSION_REASON


def build_without_pg_version_check(store: StateStore, mount: Path) -> Path:
    """Snapshot a clone whose PG_VERSION was deleted (through the backend, not the store)."""
    (mount / "PG_VERSION").write_text("15\n")  # snapshot wants one somewhere in the data dir
    dst = store.state_dir(IMAGE, S1)
    store.backend.snapshot(mount, dst, None)
    return dst


def test_a_state_under_a_mounted_clone_is_not_removed(store: StateStore) -> None:
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    build(store, S1, mount, base)
    clone = store.clone_to_runtime(store.state_dir(IMAGE, S1), JOB_B, require_pg_version=True)
    with pytest.raises(SnapshotError, match="lower layer of the mounted clone"):
        store.remove_state(IMAGE, S1)
    assert (clone / "pgdata" / "PG_VERSION").is_file()
    # Refused before anything was touched: the state is still complete and usable.
    assert store.validate_state(IMAGE, S1) is None
    store.remove_job_dir(JOB_A)
    store.remove_job_dir(JOB_B)
    store.remove_state(IMAGE, S1)
    assert not store.state_dir(IMAGE, S1).exists()


def test_a_rebuilt_parent_invalidates_its_children(store: StateStore) -> None:
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    s1 = build(store, S1, mount, base)
    (mount / "pgdata" / "child").write_text("c")
    build(store, S2, mount, s1)
    store.remove_job_dir(JOB_A)
    store.remove_state(IMAGE, S1)  # e.g. invalidated as dirty, then built again
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    build(store, S1, mount, base)
    store.remove_job_dir(JOB_A)
    reason = store.validate_state(IMAGE, S2)
    assert reason is not None and "was rebuilt" in reason
    with pytest.raises(SnapshotError, match="was rebuilt"):
        store.clone_to_runtime(store.state_dir(IMAGE, S2), JOB_B, require_pg_version=True)
    assert store.invalidate_state(IMAGE, S2) == reason


def test_mount_dir_of_remounts_an_unmounted_clone(store: StateStore) -> None:
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    (mount / "pgdata" / "written").write_text("kept in the upper")
    unmount(mount)  # as after a reboot, or the start-up sweep of an idle clone
    assert not (mount / "pgdata").exists()
    assert store.runtime_mount_dir(JOB_A) == mount
    assert is_mount_point(mount)
    assert (mount / "pgdata" / "written").read_text() == "kept in the upper"
    assert not (mount / ".init.ok").exists()


def test_start_sweep_unmounts_idle_and_leftover_mounts_only(store: StateStore) -> None:
    base = store.ensure_base(IMAGE, fake_initdb)
    idle = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    busy = store.clone_to_runtime(base, JOB_B, require_pg_version=False)
    leftover_job = "d" * 32
    leftover = store.clone_to_runtime(base, leftover_job, require_pg_version=False)
    stale_runtime = leftover.parent.with_name("runtime.stale-1")
    os.rename(leftover.parent, stale_runtime)  # a removal that was interrupted
    other = store.layout.root / "not-ours"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other)], check=True)
    holder = subprocess.Popen(["sleep", "60"], cwd=busy / "pgdata")  # like a running server
    busy_leftover = subprocess.Popen(["sleep", "60"], cwd=stale_runtime / "merged" / "pgdata")
    try:
        swept = sweep_mounts(store.layout.root)
        assert sorted(swept.released) == sorted([idle, stale_runtime / "merged"])
        assert swept.kept == [busy]
        assert not is_mount_point(idle) and is_mount_point(busy) and is_mount_point(other)
        assert not is_mount_point(stale_runtime / "merged")
        assert (busy / "pgdata" / "PG_VERSION").is_file()
        assert store.sweep_stale() == [stale_runtime]
    finally:
        for proc in (holder, busy_leftover):
            proc.kill()
            proc.wait()
        unmount(other)
    store.remove_job_dir(JOB_A)
    store.remove_job_dir(JOB_B)
    assert mounts_under(store.layout.root) == []


def test_clone_of_a_copy_layout_dir_and_meta_files(store: StateStore, tmp_path: Path) -> None:
    """A plain data dir (the base, or a state another backend made) is a single layer."""
    plain = tmp_path / "plain"
    fake_initdb(plain)
    (plain / ".build.ok").write_text("ok")
    dst = tmp_path / "clone"
    mount = store.backend.clone(plain, dst)
    assert sorted(os.listdir(mount)) == ["pgdata"]
    meta = json.loads((dst / META).read_text())
    assert meta["lowers"][0]["path"] == "../plain"
    assert meta["lowers"][0]["id"].startswith("sysid:")
    store.backend.remove(dst)
    assert not dst.exists() and not is_mount_point(mount)
