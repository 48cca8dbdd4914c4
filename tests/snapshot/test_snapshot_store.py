from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.locks import LockTimeout
from sqlrs_engine.snapshot.base import DIRTY_REASON, MISSING_PG_VERSION_REASON, SnapshotError
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.store import StateStore

IMAGE = "postgres@sha256:ab12"
SID = "a" * 64
JOB = "b" * 32
WORKER = Path(__file__).with_name("store_worker.py")
DataDirFactory = Callable[..., Path]
Tree = Callable[[Path], dict[str, tuple[object, ...]]]


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(StoreLayout(tmp_path / "root"), CopyBackend())


def fake_initdb(calls: list[str], sleep: float = 0.0) -> Callable[[Path], None]:
    lock = threading.Lock()

    def init(base: Path) -> None:
        with lock:
            calls.append(threading.current_thread().name)
        time.sleep(sleep)
        (base / "pgdata").mkdir()
        (base / "pgdata" / "PG_VERSION").write_text("15\n")

    return init


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def worker(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def run_threads(n: int, target: Callable[[int], object]) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), name=f"t{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def built_state(store: StateStore, data_dir: DataDirFactory, state_id: str = SID) -> Path:
    src = data_dir(f"runtime-{state_id[:4]}")
    with store.build_state(IMAGE, state_id) as build:
        build.snapshot(src, parent=None)
        build.commit()
    return store.state_dir(IMAGE, state_id)


# -- ensure_base (SPEC §9.3) ------------------------------------------------------------------


def test_ensure_base_runs_init_once_and_writes_marker(store: StateStore) -> None:
    calls: list[str] = []
    base = store.ensure_base(IMAGE, fake_initdb(calls))
    assert base == store.layout.base_dir(IMAGE)
    marker = store.layout.init_marker(IMAGE)
    assert marker.read_text() == "ok"
    assert marker.stat().st_mode & 0o777 == 0o600
    assert (base / "pgdata" / "PG_VERSION").is_file()
    assert store.ensure_base(IMAGE, fake_initdb(calls)) == base
    assert len(calls) == 1


@pytest.mark.parametrize(
    "leftover",
    [
        "complete-cluster",  # crash after publishing, before the marker
        "half-cluster",  # crash during initdb: PG_VERSION is written early
        "staging",  # crash before publishing
        "running-postmaster",  # postmaster.pid of a bootstrap backend
    ],
)
def test_ensure_base_never_trusts_a_cluster_without_its_marker(
    store: StateStore, leftover: str
) -> None:
    base = store.layout.base_dir(IMAGE)
    target = base / (".init-staging/pgdata" if leftover == "staging" else "pgdata")
    target.mkdir(parents=True)
    (target / "PG_VERSION").write_text("15\n")
    if leftover == "running-postmaster":
        (target / "postmaster.pid").write_text("1\n")
    if leftover == "half-cluster":
        (target / "global").mkdir()
    calls: list[str] = []
    store.ensure_base(IMAGE, fake_initdb(calls))
    assert len(calls) == 1, "the base is built again"
    assert sorted(p.name for p in base.iterdir()) == [".init.lock", ".init.ok", "pgdata"]
    assert sorted(p.name for p in (base / "pgdata").iterdir()) == ["PG_VERSION"]


def test_ensure_base_builds_in_staging_and_publishes_by_rename(store: StateStore) -> None:
    base = store.layout.base_dir(IMAGE)
    (base / "pgdata" / "half").mkdir(parents=True)  # a crashed init
    (base / "junk").write_text("x")
    seen: list[tuple[str, list[str]]] = []

    def init(staging: Path) -> None:
        seen.append((staging.name, sorted(p.name for p in staging.parent.iterdir())))
        fake_initdb([])(staging)

    store.ensure_base(IMAGE, init)
    assert seen == [(".init-staging", [".init-staging", ".init.lock"])]
    assert sorted(p.name for p in base.iterdir()) == [".init.lock", ".init.ok", "pgdata"]


def test_an_orphaned_init_process_is_killed_before_its_base_is_discarded(
    store: StateStore,
) -> None:
    """An initdb whose engine was killed keeps writing into the base dir; the next init must
    stop it first (here: a process working inside the half-built cluster)."""
    base = store.layout.base_dir(IMAGE)
    (base / "pgdata").mkdir(parents=True)
    orphan = subprocess.Popen(["sleep", "300"], cwd=base / "pgdata")
    try:
        store.ensure_base(IMAGE, fake_initdb([]))
        assert orphan.wait(timeout=10) == -9
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_failed_init_leaves_no_marker_and_is_retried(store: StateStore) -> None:
    def broken(base: Path) -> None:
        (base / "pgdata").mkdir()
        raise JobFailure("internal_error", "initdb failed", "boom")

    with pytest.raises(JobFailure, match="initdb failed"):
        store.ensure_base(IMAGE, broken)
    assert not store.layout.init_marker(IMAGE).exists()
    calls: list[str] = []
    store.ensure_base(IMAGE, fake_initdb(calls))
    assert len(calls) == 1


def test_init_without_pg_version_is_an_error(store: StateStore) -> None:
    with pytest.raises(SnapshotError, match=r"base init failed.*PG_VERSION"):
        store.ensure_base(IMAGE, lambda base: None)
    assert not store.layout.init_marker(IMAGE).exists()


def test_init_leaving_a_server_running_is_an_error(store: StateStore) -> None:
    def init(base: Path) -> None:
        fake_initdb([])(base)
        (base / "pgdata" / "postmaster.pid").write_text("1\n")

    with pytest.raises(SnapshotError, match=r"postmaster\.pid"):
        store.ensure_base(IMAGE, init)
    assert not store.layout.init_marker(IMAGE).exists()


def test_ensure_base_concurrent_threads_and_process(store: StateStore, tmp_path: Path) -> None:
    calls_file = tmp_path / "calls"
    started = tmp_path / "started"
    proc = worker("ensure_base", store.layout.root, IMAGE, calls_file, started, 0.5)
    calls: list[str] = []
    init = fake_initdb(calls, sleep=0.5)
    results: list[Path] = []

    def call(_: int) -> None:
        results.append(store.ensure_base(IMAGE, init))

    errors = run_threads(6, call)
    out = finish(proc)
    assert errors == []
    base = store.layout.base_dir(IMAGE)
    assert results == [base] * 6
    assert out.strip() == str(base)
    in_process = len(calls)
    in_worker = len(calls_file.read_text().splitlines()) if calls_file.exists() else 0
    assert in_process + in_worker == 1  # exactly one init across 6 threads and 2 processes
    assert store.layout.init_marker(IMAGE).read_text() == "ok"


def test_waiters_see_the_marker_of_another_process(store: StateStore, tmp_path: Path) -> None:
    calls_file = tmp_path / "calls"
    started = tmp_path / "started"
    proc = worker("ensure_base", store.layout.root, IMAGE, calls_file, started, 0.5)
    wait_for(started)  # the other process holds the init lock and is initializing
    calls: list[str] = []
    errors = run_threads(4, lambda _: store.ensure_base(IMAGE, fake_initdb(calls)))
    finish(proc)
    assert errors == []
    assert calls == []
    assert calls_file.read_text().splitlines() == [str(proc.pid)]


def test_cancel_while_waiting_for_init_lock(store: StateStore) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow_init(base: Path) -> None:
        entered.set()
        release.wait(10)
        fake_initdb([])(base)

    holder = threading.Thread(target=store.ensure_base, args=(IMAGE, slow_init))
    holder.start()
    try:
        assert entered.wait(10)
        token = CancelToken()
        threading.Timer(0.2, token.cancel).start()
        with pytest.raises(JobFailure) as info:
            store.ensure_base(IMAGE, fake_initdb([]), token)
        assert info.value.code == "cancelled"
    finally:
        release.set()
        holder.join(10)
    assert store.layout.init_marker(IMAGE).is_file()


# -- build_state (SPEC §9.4) ------------------------------------------------------------------


def test_build_commit_and_rebuild_check(store: StateStore, data_dir: DataDirFactory) -> None:
    src = data_dir("runtime")
    with store.build_state(IMAGE, SID) as build:
        assert not build.already_built
        assert build.state_dir == store.layout.state_dir(IMAGE, SID)
        build.snapshot(src, parent=None)
        assert store.validate_state(IMAGE, SID) is not None  # no marker yet
        size = build.size_bytes()
        build.commit()
    state = store.state_dir(IMAGE, SID)
    assert store.validate_state(IMAGE, SID) is None
    assert size == store.state_size(IMAGE, SID) - len("ok")
    marker = store.layout.build_marker(IMAGE, SID)
    assert marker.read_text() == "ok" and marker.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in state.iterdir()) == [".build.lock", ".build.ok", "pgdata", "wal"]
    with store.build_state(IMAGE, SID) as build:
        assert build.already_built


def test_build_lock_serializes_threads(store: StateStore, data_dir: DataDirFactory) -> None:
    src = data_dir("runtime")
    builds: list[int] = []
    reused: list[int] = []
    active = threading.Lock()

    def job(i: int) -> None:
        with store.build_state(IMAGE, SID) as build:
            assert active.acquire(blocking=False), "two holders at once"
            try:
                if build.already_built:
                    reused.append(i)
                    return
                time.sleep(0.3)
                build.snapshot(src, parent=None)
                builds.append(i)
                build.commit()
            finally:
                active.release()

    errors = run_threads(4, job)
    assert errors == []
    assert len(builds) == 1
    assert sorted(builds + reused) == [0, 1, 2, 3]


def test_build_lock_excludes_another_process(store: StateStore, tmp_path: Path) -> None:
    ready, release = tmp_path / "ready", tmp_path / "release"
    proc = worker("hold_build", store.layout.root, IMAGE, SID, ready, release)
    try:
        wait_for(ready)
        with pytest.raises(LockTimeout), store.build_state(IMAGE, SID, timeout=0.3):
            pass
        token = CancelToken()
        threading.Timer(0.2, token.cancel).start()
        with pytest.raises(JobFailure) as info, store.build_state(IMAGE, SID, token):
            pass
        assert info.value.code == "cancelled"
    finally:
        release.touch()
        finish(proc)
    with store.build_state(IMAGE, SID, timeout=10) as build:
        assert not build.already_built


def test_failed_build_removes_partial_state(store: StateStore, data_dir: DataDirFactory) -> None:
    src = data_dir("runtime")
    with (
        pytest.raises(RuntimeError, match="cannot store state"),
        store.build_state(IMAGE, SID) as build,
    ):
        build.snapshot(src, parent=None)
        raise RuntimeError("cannot store state")
    state = store.state_dir(IMAGE, SID)
    assert [p.name for p in state.iterdir()] == [".build.lock"]


def test_failure_does_not_touch_a_built_state(
    store: StateStore, data_dir: DataDirFactory, tree: Tree
) -> None:
    state = built_state(store, data_dir)
    before = tree(state)
    with pytest.raises(RuntimeError), store.build_state(IMAGE, SID) as build:
        assert build.already_built
        raise RuntimeError("row lookup failed")
    assert tree(state) == before
    assert store.validate_state(IMAGE, SID) is None


def test_rebuild_resets_previous_content(store: StateStore, data_dir: DataDirFactory) -> None:
    state = built_state(store, data_dir)
    (state / "pgdata" / "stale-file").write_text("old")
    other = data_dir("other")
    with store.build_state(IMAGE, SID) as build:
        build.snapshot(other, parent=None)  # a state dir with a marker is reset first
        assert not store.layout.build_marker(IMAGE, SID).exists()
        build.commit()
    assert not (state / "pgdata" / "stale-file").exists()


def test_build_handle_expires_with_the_lock(store: StateStore, data_dir: DataDirFactory) -> None:
    with store.build_state(IMAGE, SID) as build:
        pass
    with pytest.raises(RuntimeError, match="no longer held"):
        build.commit()


def test_commit_refuses_an_incomplete_state(store: StateStore) -> None:
    with store.build_state(IMAGE, SID) as build, pytest.raises(SnapshotError, match="PG_VERSION"):
        build.commit()
    assert not store.layout.build_marker(IMAGE, SID).exists()


# -- invalidate / remove (SPEC §0.1, §9.5) --------------------------------------------------


def test_invalidate_dirty_state(store: StateStore, data_dir: DataDirFactory) -> None:
    state = built_state(store, data_dir)
    (state / "pgdata" / "postmaster.pid").write_text("99\n")
    assert store.validate_state(IMAGE, SID) == DIRTY_REASON
    assert store.invalidate_state(IMAGE, SID) == DIRTY_REASON
    assert not state.exists()
    with store.build_state(IMAGE, SID) as build:  # and it can be rebuilt
        assert not build.already_built


def test_invalidate_state_without_pg_version(store: StateStore, data_dir: DataDirFactory) -> None:
    state = built_state(store, data_dir)
    (state / "pgdata" / "PG_VERSION").unlink()
    assert store.invalidate_state(IMAGE, SID) == MISSING_PG_VERSION_REASON
    assert not state.exists()


def test_invalidate_leaves_valid_state(
    store: StateStore, data_dir: DataDirFactory, tree: Tree
) -> None:
    state = built_state(store, data_dir)
    before = tree(state)
    assert store.invalidate_state(IMAGE, SID) is None
    assert tree(state) == before


def test_invalidate_missing_state(store: StateStore) -> None:
    reason = store.invalidate_state(IMAGE, SID)
    assert reason is not None and "missing" in reason
    assert not store.state_dir(IMAGE, SID).exists()


def test_invalidate_waits_for_a_running_build(store: StateStore, data_dir: DataDirFactory) -> None:
    """A state mid-build looks incomplete; invalidation must not destroy it."""
    src = data_dir("runtime")
    in_build = threading.Event()
    proceed = threading.Event()
    results: list[str | None] = []

    def builder() -> None:
        with store.build_state(IMAGE, SID) as build:
            build.snapshot(src, parent=None)
            in_build.set()
            assert proceed.wait(10)
            build.commit()

    t = threading.Thread(target=builder)
    t.start()
    assert in_build.wait(10)
    assert store.validate_state(IMAGE, SID) is not None  # unlocked: looks incomplete
    inv = threading.Thread(target=lambda: results.append(store.invalidate_state(IMAGE, SID)))
    inv.start()
    inv.join(0.3)
    assert inv.is_alive()  # waiting for the build lock
    proceed.set()
    t.join(10)
    inv.join(10)
    assert results == [None]
    assert store.validate_state(IMAGE, SID) is None


def test_remove_state(store: StateStore, data_dir: DataDirFactory) -> None:
    state = built_state(store, data_dir)
    store.remove_state(IMAGE, SID)
    assert not state.exists()
    store.remove_state(IMAGE, SID)  # idempotent
    assert not state.exists()


def test_remove_state_waits_for_lock_and_builder_recovers(
    store: StateStore, data_dir: DataDirFactory
) -> None:
    """Removing a state dir (and its lock file) under the lock never lets two holders in."""
    built_state(store, data_dir)
    src = data_dir("runtime2")
    holders = 0
    max_holders = 0
    guard = threading.Lock()

    def job(i: int) -> None:
        nonlocal holders, max_holders
        if i % 2:
            store.remove_state(IMAGE, SID)
            return
        with store.build_state(IMAGE, SID) as build:
            with guard:
                holders += 1
                max_holders = max(max_holders, holders)
            try:
                if not build.already_built:
                    build.snapshot(src, parent=None)
                    build.commit()
            finally:
                with guard:
                    holders -= 1

    for _ in range(5):
        assert run_threads(6, job) == []
    assert max_holders == 1


class RacingBackend(CopyBackend):
    """Copy backend whose `ensure_state_dir` loses `races` races against a concurrent removal.

    `mkdir(exist_ok=True)` raises EEXIST when the dir exists at `mkdir` time but is gone by
    its `is_dir()` check; that window is too small to hit on demand, so it is simulated here.
    """

    def __init__(self, races: int) -> None:
        self.races = races

    def ensure_state_dir(self, path: Path) -> None:
        if self.races > 0:
            self.races -= 1
            raise FileExistsError(17, "File exists", str(path))
        super().ensure_state_dir(path)


def test_build_lock_starts_over_when_its_dir_is_removed_during_mkdir(
    tmp_path: Path, data_dir: DataDirFactory
) -> None:
    store = StateStore(StoreLayout(tmp_path / "root"), RacingBackend(races=2))
    with store.build_state(IMAGE, SID) as build:
        build.snapshot(data_dir("runtime"), parent=None)
        build.commit()
    assert store.validate_state(IMAGE, SID) is None


def test_build_lock_gives_up_with_a_reason_when_its_dir_never_appears(tmp_path: Path) -> None:
    store = StateStore(StoreLayout(tmp_path / "root"), RacingBackend(races=10_000))
    with pytest.raises(SnapshotError) as err, store.build_state(IMAGE, SID):
        pass
    assert err.value.message == "cannot take lock"
    assert "keeps disappearing" in (err.value.details or "")
    assert "File exists" in (err.value.details or "")


# -- runtime clones (SPEC §2.10) --------------------------------------------------------------


def test_new_runtime_dir_replaces_leftovers(store: StateStore) -> None:
    runtime = store.layout.job_runtime_dir(JOB)
    (runtime / "pgdata").mkdir(parents=True)
    (runtime / "pgdata" / "postmaster.pid").write_text("1\n")
    assert store.new_runtime_dir(JOB) == runtime
    assert list(runtime.iterdir()) == []


def test_full_flow_base_state_clone(
    store: StateStore, data_dir: DataDirFactory, tree: Tree
) -> None:
    base = store.ensure_base(IMAGE, fake_initdb([]))
    mount = store.clone_to_runtime(base, JOB, require_pg_version=False)
    assert mount == store.runtime_mount_dir(JOB) == store.layout.job_runtime_dir(JOB)
    assert not (mount / ".init.ok").exists() and not (mount / ".init.lock").exists()
    (mount / "pgdata" / "table").write_text("step 1")
    with store.build_state(IMAGE, SID) as build:
        build.snapshot(mount, parent=base)
        build.commit()
    state = store.state_dir(IMAGE, SID)

    job2 = "c" * 32
    clone = store.clone_to_runtime(state, job2, require_pg_version=True)
    assert (clone / "pgdata" / "table").read_text() == "step 1"
    assert not (clone / ".build.ok").exists() and not (clone / ".build.lock").exists()
    before = tree(state)
    (clone / "pgdata" / "table").write_text("step 2")
    assert tree(state) == before

    store.remove_job_dir(job2)
    assert not store.layout.job_dir(job2).exists()
    assert store.validate_state(IMAGE, SID) is None


def test_clone_refuses_dirty_or_uninitialized_source(
    store: StateStore, data_dir: DataDirFactory
) -> None:
    dirty = data_dir("dirty", pid=True)
    with pytest.raises(SnapshotError) as info:
        store.clone_to_runtime(dirty, JOB, require_pg_version=True)
    assert info.value.message == DIRTY_REASON
    empty = data_dir("empty", pg_version=False)
    with pytest.raises(SnapshotError) as info:
        store.clone_to_runtime(empty, JOB, require_pg_version=True)
    assert info.value.message == MISSING_PG_VERSION_REASON
    # An image input (base) may lack PG_VERSION: the runtime will initdb.
    assert store.clone_to_runtime(empty, JOB, require_pg_version=False).is_dir()


def test_clone_rejects_runtime_inside_source(store: StateStore, data_dir: DataDirFactory) -> None:
    source = data_dir(store.layout.job_dir(JOB))
    with pytest.raises(SnapshotError, match="inside source"):
        store.clone_to_runtime(source, JOB, require_pg_version=True)
    assert (source / "pgdata" / "PG_VERSION").is_file()  # nothing was touched


def test_sweep_stale(store: StateStore, data_dir: DataDirFactory) -> None:
    state = built_state(store, data_dir)
    stale_state = state.with_name(f"{SID}.stale-123")
    stale_runtime = store.layout.job_dir(JOB) / "runtime.stale-456"
    stale_job = store.layout.jobs_dir / f"{JOB}.stale-7"
    for p in (stale_state, stale_runtime, stale_job):
        (p / "pgdata").mkdir(parents=True)
    keep = store.layout.job_runtime_dir(JOB)
    keep.mkdir()
    removed = store.sweep_stale()
    assert sorted(removed) == sorted([stale_state, stale_runtime, stale_job])
    assert keep.is_dir() and state.is_dir()
    assert store.sweep_stale() == []


def test_store_root_created_lazily(tmp_path: Path) -> None:
    store = StateStore(StoreLayout(tmp_path / "deep" / "root"), CopyBackend())
    store.ensure_base(IMAGE, fake_initdb([]))
    assert os.path.isdir(tmp_path / "deep" / "root" / "engines" / "postgres" / "sha256_ab12")
