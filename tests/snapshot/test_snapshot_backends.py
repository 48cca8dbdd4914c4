"""The contract of SPEC §9 on every backend: copy, overlayfs (real mounts) and btrfs (a real
btrfs on a loop device), through the StateStore the jobs use.

The data dirs are small fake clusters (no server needed: a backend only moves files); real
PostgreSQL runs on every backend in tests/e2e/test_backends.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.locks import LockTimeout
from sqlrs_engine.snapshot.base import DIRTY_REASON, SnapshotError
from sqlrs_engine.snapshot.fsinfo import is_subvolume
from sqlrs_engine.snapshot.mounts import mounts_under
from sqlrs_engine.snapshot.store import StateStore

IMAGE = "postgres@sha256:ab12"
S1, S2, S3 = "1" * 64, "2" * 64, "3" * 64
JOB_A, JOB_B, JOB_C = "a" * 32, "b" * 32, "c" * 32
WORKER = Path(__file__).with_name("store_worker.py")
MB = 1024 * 1024


def fake_initdb(base: Path) -> None:
    """A small cluster-shaped base: PG_VERSION, a 'relation', a config file, pg_control."""
    pgdata = base / "pgdata"
    (pgdata / "base" / "5").mkdir(parents=True)
    (pgdata / "global").mkdir()
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "global" / "pg_control").write_bytes(os.urandom(8) + b"\0" * 8184)
    (pgdata / "base" / "5" / "1259").write_bytes(b"\x01" * 8192)
    (pgdata / "base" / "5" / "keep").write_text("base")
    (pgdata / "base" / "5" / "dropped").write_text("to be dropped")
    (pgdata / "postgresql.conf").write_text("# conf\n")
    os.chmod(pgdata, 0o700)


def view(mount: Path) -> dict[str, str]:
    """Relative path → content of every regular file of a data dir (what a server sees)."""
    result: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(mount):
        for name in files:
            path = Path(dirpath) / name
            result[str(path.relative_to(mount))] = path.read_bytes().decode("latin-1")
    return result


def build(store: StateStore, state: str, mount: Path, parent: Path) -> Path:
    """Snapshot a (stopped) clone into a committed state, as a job does."""
    with store.build_state(IMAGE, state) as b:
        assert not b.already_built
        b.snapshot(mount, parent)
        b.commit()
    return store.state_dir(IMAGE, state)


def state_view(store: StateStore, state: str, job: str) -> dict[str, str]:
    """What a fresh clone of a state shows (the state itself may be layered)."""
    mount = store.clone_to_runtime(store.state_dir(IMAGE, state), job, require_pg_version=True)
    try:
        return view(mount)
    finally:
        store.remove_job_dir(job)


def test_clone_snapshot_clone_round_trip(any_store: StateStore) -> None:
    store = any_store
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    kind = store.backend.kind
    runtime = store.layout.job_runtime_dir(JOB_A)
    assert mount == (runtime / "merged" if kind == "overlayfs" else runtime)
    assert mount == store.runtime_mount_dir(JOB_A)
    assert sorted(os.listdir(mount)) == ["pgdata"], "store metadata must not show in a clone"
    (mount / "pgdata" / "base" / "5" / "t1").write_text("step 1")
    state = build(store, S1, mount, base)
    assert store.validate_state(IMAGE, S1) is None
    assert store.state_size(IMAGE, S1) > 0

    clone = store.clone_to_runtime(state, JOB_B, require_pg_version=True)
    assert sorted(os.listdir(clone)) == ["pgdata"]
    assert (clone / "pgdata" / "base" / "5" / "t1").read_text() == "step 1"
    assert (clone / "pgdata" / "PG_VERSION").read_text() == "15\n"
    if kind == "overlayfs":
        assert mounts_under(clone), "an overlay clone is a mount"
    if kind == "btrfs":
        assert is_subvolume(clone) and is_subvolume(state)
    store.remove_job_dir(JOB_B)
    store.remove_job_dir(JOB_A)
    assert not store.layout.jobs_dir.exists() or os.listdir(store.layout.jobs_dir) == []
    assert mounts_under(store.layout.root, fs_type="overlay") == []


def test_writes_are_isolated_from_state_siblings_and_children(any_store: StateStore) -> None:
    """Writes in one clone are invisible to the state, to sibling clones and to child states
    of other clones; a child state sees its own changes (deletions included)."""
    store = any_store
    base = store.ensure_base(IMAGE, fake_initdb)
    first = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    (first / "pgdata" / "base" / "5" / "t").write_text("s1")
    s1 = build(store, S1, first, base)
    store.remove_job_dir(JOB_A)
    s1_view = state_view(store, S1, JOB_C)

    a = store.clone_to_runtime(s1, JOB_A, require_pg_version=True)
    b = store.clone_to_runtime(s1, JOB_B, require_pg_version=True)
    (a / "pgdata" / "base" / "5" / "t").write_text("changed in a")
    (a / "pgdata" / "base" / "5" / "new").write_text("new in a")
    (a / "pgdata" / "base" / "5" / "dropped").unlink()
    assert view(b) == s1_view, "a sibling clone saw another clone's writes"
    assert state_view(store, S1, JOB_C) == s1_view, "the state saw a clone's writes"

    s2 = build(store, S2, a, s1)  # a child state of s1, made from clone a
    (b / "pgdata" / "base" / "5" / "t").write_text("changed in b")
    child = state_view(store, S2, JOB_C)
    assert child["pgdata/base/5/t"] == "changed in a"
    assert child["pgdata/base/5/new"] == "new in a"
    assert "pgdata/base/5/dropped" not in child
    assert state_view(store, S1, JOB_C) == s1_view, "making a child changed its parent"

    # The clone the child was made from goes on (as a job's next step does) without
    # touching the child.
    (a / "pgdata" / "base" / "5" / "t").write_text("after the snapshot")
    assert state_view(store, S2, JOB_C)["pgdata/base/5/t"] == "changed in a"
    c = store.clone_to_runtime(s2, JOB_C, require_pg_version=True)
    (c / "pgdata" / "base" / "5" / "t").write_text("in a clone of the child")
    assert view(a)["pgdata/base/5/t"] == "after the snapshot"
    assert view(b)["pgdata/base/5/t"] == "changed in b"
    store.remove_job_dir(JOB_C)
    assert state_view(store, S2, JOB_C)["pgdata/base/5/t"] == "changed in a"
    for job in (JOB_A, JOB_B):
        store.remove_job_dir(job)


def test_one_clone_through_several_steps(any_store: StateStore) -> None:
    """The job pattern: one clone, snapshot after every step, the clone keeps going."""
    store = any_store
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    parent = base
    for i, state in enumerate((S1, S2, S3)):
        (mount / "pgdata" / "base" / "5" / f"step{i}").write_text(str(i))
        parent = build(store, state, mount, parent)
        assert (mount / "pgdata" / "base" / "5" / f"step{i}").read_text() == str(i)
    assert sorted(k for k in state_view(store, S2, JOB_B) if "step" in k) == [
        "pgdata/base/5/step0",
        "pgdata/base/5/step1",
    ]
    assert sorted(k for k in state_view(store, S3, JOB_B) if "step" in k) == [
        "pgdata/base/5/step0",
        "pgdata/base/5/step1",
        "pgdata/base/5/step2",
    ]
    store.remove_job_dir(JOB_A)


def test_snapshot_refuses_a_running_server(any_store: StateStore) -> None:
    store = any_store
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    (mount / "pgdata" / "postmaster.pid").write_text("4242\n")
    with pytest.raises(SnapshotError, match=r"postmaster\.pid"), store.build_state(IMAGE, S1) as b:
        b.snapshot(mount, base)
    assert store.validate_state(IMAGE, S1) is not None
    store.remove_job_dir(JOB_A)


def test_dirty_cached_state_is_invalidated_and_rebuilt(any_store: StateStore) -> None:
    store = any_store
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    build(store, S1, mount, base)
    store.remove_job_dir(JOB_A)  # (an overlay clone stands on the state: see the overlay tests)
    store.layout.build_marker(IMAGE, S1, separate=store.backend.separate_build_meta).unlink()
    reason = store.validate_state(IMAGE, S1)
    assert reason is not None and "marker missing" in reason
    assert store.invalidate_state(IMAGE, S1) == reason
    assert not store.state_dir(IMAGE, S1).exists()
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    build(store, S1, mount, base)
    assert store.validate_state(IMAGE, S1) is None
    store.remove_job_dir(JOB_A)


def test_removal_leaves_no_mounts_or_subvolumes(any_store: StateStore) -> None:
    store = any_store
    base = store.ensure_base(IMAGE, fake_initdb)
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    build(store, S1, mount, base)
    store.clone_to_runtime(store.state_dir(IMAGE, S1), JOB_B, require_pg_version=True)
    store.remove_job_dir(JOB_A)
    store.remove_job_dir(JOB_B)
    store.remove_state(IMAGE, S1)
    assert not store.state_dir(IMAGE, S1).exists()
    assert not store.layout.build_marker(IMAGE, S1, separate=True).exists()
    assert mounts_under(store.layout.root, fs_type="overlay") == []
    leftovers = [p for p in store.layout.root.rglob("*") if is_subvolume(p)]
    assert leftovers == ([store.layout.base_dir(IMAGE)] if store.backend.kind == "btrfs" else [])


def test_cancelled_clone_leaves_nothing(any_store: StateStore) -> None:
    store = any_store
    base = store.ensure_base(IMAGE, fake_initdb)
    token = CancelToken()
    token.cancel()
    with pytest.raises(JobFailure) as info:
        store.clone_to_runtime(base, JOB_A, require_pg_version=False, cancel=token)
    assert info.value.code == "cancelled"
    runtime = store.layout.job_runtime_dir(JOB_A)
    assert not runtime.exists() or os.listdir(runtime) == []
    assert mounts_under(store.layout.root, fs_type="overlay") == []


def test_size_bytes_is_what_the_state_adds(any_store: StateStore) -> None:
    """copy: every byte; overlay: its own layer; btrfs: extents its parent does not share."""
    store = any_store
    base = store.ensure_base(IMAGE, lambda b: (fake_initdb(b), _big(b, 4 * MB))[0])
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    (mount / "pgdata" / "base" / "5" / "added").write_bytes(os.urandom(MB))
    build(store, S1, mount, base)
    size = store.state_size(IMAGE, S1)
    if store.backend.kind == "copy":
        assert size >= 5 * MB
    else:
        assert MB <= size < 2 * MB, size
    store.remove_job_dir(JOB_A)


def _big(base: Path, size: int) -> None:
    (base / "pgdata" / "base" / "5" / "16384").write_bytes(os.urandom(size))


# -- cross-process locks and markers (SPEC §9.3, §9.4) ------------------------------------------


def _worker(kind: str, *args: object) -> subprocess.Popen[str]:
    env = dict(os.environ, SQLRS_TEST_BACKEND=kind)
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    done = threading.Event()
    timer = threading.Timer(timeout, done.set)
    timer.start()
    try:
        while not path.exists():
            assert not done.is_set(), f"{path} did not appear: {proc.communicate()}"
            assert proc.poll() is None, proc.communicate()
            done.wait(0.01)
    finally:
        timer.cancel()


def test_build_lock_and_marker_across_processes(any_store: StateStore, tmp_path: Path) -> None:
    store = any_store
    kind = store.backend.kind
    base = store.ensure_base(IMAGE, fake_initdb)
    ready, release = tmp_path / "ready", tmp_path / "release"
    proc = _worker(kind, "hold_build", store.layout.root, IMAGE, S1, ready, release)
    try:
        _wait_for(ready, proc)
        with pytest.raises(LockTimeout), store.build_state(IMAGE, S1, timeout=0.3):
            pass
    finally:
        release.touch()
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    mount = store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    build(store, S1, mount, base)
    store.remove_job_dir(JOB_A)
    # Another process that takes the lock now sees the marker: the state is built.
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, os; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
            "from store_worker import backend;"
            "from sqlrs_engine.snapshot.layout import StoreLayout;"
            "from sqlrs_engine.snapshot.store import StateStore;"
            "root = Path(sys.argv[2]); s = StateStore(StoreLayout(root), backend(root));"
            "b = s.build_state(sys.argv[3], sys.argv[4]).__enter__();"
            "print(b.already_built, s.backend.kind)",
            str(WORKER.parent),
            str(store.layout.root),
            IMAGE,
            S1,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, SQLRS_TEST_BACKEND=kind),
        timeout=60,
    )
    assert check.stdout.split() == ["True", kind], check.stderr


def test_base_init_runs_once_across_processes(any_store: StateStore, tmp_path: Path) -> None:
    store = any_store
    calls, started = tmp_path / "calls", tmp_path / "started"
    proc = _worker(store.backend.kind, "ensure_base", store.layout.root, IMAGE, calls, started, 0.5)
    _wait_for(started, proc)
    ran: list[int] = []
    base = store.ensure_base(IMAGE, lambda b: ran.append(1))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert ran == [] and out.strip() == str(base)
    assert calls.read_text().splitlines() == [str(proc.pid)]
    if store.backend.kind == "btrfs":
        assert is_subvolume(base)


def test_dirty_reason_is_shared(any_store: StateStore) -> None:
    """A state dir whose data has a postmaster.pid is dirty for every backend (§0.1)."""
    store = any_store
    base = store.ensure_base(IMAGE, fake_initdb)
    (base / "pgdata" / "postmaster.pid").write_text("1\n")
    with pytest.raises(SnapshotError) as info:
        store.clone_to_runtime(base, JOB_A, require_pg_version=False)
    assert info.value.message == DIRTY_REASON
