"""The Snapshot actor and its `SnapshotClient`, on a real `StateStore` (copy backend).

Jobs, instance actors and deletions all change the store through this one actor, from many
threads at once; these tests check that such calls are served in parallel but bounded, that a
failed operation reaches its caller as the store's own exception while the actor keeps serving,
that start-up cleanup is done before `start_snapshot_actor` returns, and that stop is clean.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
import pytest

from sqlrs_engine.actors.snapshot import SnapshotClient, SnapshotProxy, start_snapshot_actor
from sqlrs_engine.cancel import NEVER_CANCELLED, CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.snapshot.base import DIRTY_REASON, MISSING_DIR_REASON, SnapshotError
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.mounts import is_mount_point, release_mounts_under
from sqlrs_engine.snapshot.overlay import MountSweep, OverlayBackend
from sqlrs_engine.snapshot.store import StateStore

IMAGE = "postgres@host-15.18"
STATE = "a" * 64
OTHER_STATE = "b" * 64
JOB_A = "1" * 32
JOB_B = "2" * 32
WAIT = 10.0
"""Seconds before a wait that should end at once counts as a hang (never a timing claim)."""


def write_data_dir(path: Path, *, pid: bool = False) -> Path:
    """A small data dir shaped like initdb's (`pgdata/PG_VERSION`), optionally dirty."""
    pgdata = path / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "pg_control").write_bytes(b"\x01" * 4096)
    if pid:
        (pgdata / "postmaster.pid").write_text("4242\n")
    return path


def initdb(calls: list[str] | None = None) -> Callable[[Path], None]:
    """A base init that writes a cluster and records which thread ran it."""

    def init(base: Path) -> None:
        if calls is not None:
            calls.append(threading.current_thread().name)
        write_data_dir(base)

    return init


@dataclass
class Running:
    ref: pykka.ActorRef[Any]
    proxy: SnapshotProxy
    client: SnapshotClient
    store: StateStore

    def drain(self) -> None:
        """Return once the pool ran everything submitted before (FIFO with one worker)."""
        self.proxy.submit(lambda _store: None).get(timeout=WAIT).result(timeout=WAIT)


@contextmanager
def running(store: StateStore, workers: int = 4) -> Iterator[Running]:
    ref, client = start_snapshot_actor(store, workers)
    try:
        yield Running(ref, ref.proxy(), client, store)  # type: ignore[arg-type]
    finally:
        if ref.is_alive():
            ref.stop(timeout=WAIT)


def copy_store(root: Path) -> StateStore:
    return StateStore(StoreLayout(root), CopyBackend())


@pytest.fixture
def actor(tmp_path: Path) -> Iterator[Running]:
    with running(copy_store(tmp_path / "root")) as started:
        yield started


@pytest.fixture
def single(tmp_path: Path) -> Iterator[Running]:
    """One pool worker: a failure or a block there would be visible to every later call."""
    with running(copy_store(tmp_path / "root"), workers=1) as started:
        yield started


class Gate:
    """Pool operations that block until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._entered = threading.Condition(self._lock)
        self.active = 0
        self.peak = 0
        self.started = 0

    def operation(self, _store: StateStore) -> str:
        with self._lock:
            self.active += 1
            self.started += 1
            self.peak = max(self.peak, self.active)
            self._entered.notify_all()
        try:
            assert self.release.wait(WAIT), "gate never released"
            return threading.current_thread().name
        finally:
            with self._lock:
                self.active -= 1

    def wait_started(self, count: int) -> None:
        with self._lock:
            assert self._entered.wait_for(lambda: self.started >= count, WAIT)


# -- the client API ----------------------------------------------------------------------------


def test_a_state_is_built_and_removed_through_the_client(actor: Running) -> None:
    """The calls a prepare job makes, in its order, leave a complete state behind."""
    client = actor.client
    assert client.kind == "copy"
    assert client.layout == actor.store.layout
    base = client.ensure_base(IMAGE, initdb())
    mount = client.clone_to_runtime(base, JOB_A, False, NEVER_CANCELLED)
    assert mount == actor.store.layout.job_runtime_dir(JOB_A)
    (mount / "pgdata" / "table").write_text("rows")
    with client.build_state(IMAGE, STATE, NEVER_CANCELLED) as build:
        assert not build.already_built
        size = client.snapshot(build, mount, base, NEVER_CANCELLED)
        assert client.state_size(IMAGE, STATE) == size > 0
        build.commit()
    assert client.validate_state(IMAGE, STATE) is None
    state_dir = client.state_dir(IMAGE, STATE)
    assert (state_dir / "pgdata" / "table").read_text() == "rows"
    assert client.mount_dir_of(mount) == mount
    client.remove_runtime_dir(JOB_A)
    assert not mount.exists() and actor.store.layout.job_dir(JOB_A).is_dir()
    client.remove_job_dir(JOB_A)
    assert not actor.store.layout.job_dir(JOB_A).exists()
    client.remove_state(IMAGE, STATE, NEVER_CANCELLED)
    assert not state_dir.exists()


def test_invalidate_removes_only_an_incomplete_state(actor: Running) -> None:
    client = actor.client
    write_data_dir(client.state_dir(IMAGE, STATE))  # no build marker: never committed
    reason = client.invalidate_state(IMAGE, STATE, NEVER_CANCELLED)
    assert reason is not None and "build marker" in reason
    assert not client.state_dir(IMAGE, STATE).exists()
    assert client.invalidate_state(IMAGE, STATE, NEVER_CANCELLED) == (
        f"{MISSING_DIR_REASON}: {client.state_dir(IMAGE, STATE)}"
    )


def test_concurrent_clones_through_the_client_all_succeed(actor: Running) -> None:
    """Many job workers cloning at once each get their own complete runtime dir."""
    base = actor.client.ensure_base(IMAGE, initdb())
    jobs = [f"{i:032x}" for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as callers:
        mounts = list(
            callers.map(
                lambda job: actor.client.clone_to_runtime(base, job, False, NEVER_CANCELLED),
                jobs,
            )
        )
    assert len(set(mounts)) == len(jobs)
    for mount in mounts:
        assert (mount / "pgdata" / "PG_VERSION").read_text() == "15\n"
    assert actor.ref.is_alive()


def test_concurrent_ensure_base_initializes_once(actor: Running) -> None:
    """Callers racing for the same base share one initdb, run on a pool thread."""
    calls: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(8) as callers:
        bases = set(
            callers.map(lambda _i: actor.client.ensure_base(IMAGE, initdb(calls)), range(8))
        )
    assert bases == {actor.store.layout.base_dir(IMAGE)}
    assert len(calls) == 1
    assert calls[0].startswith("snapshot-copy"), "heavy I/O runs on the actor's pool"


def test_the_pool_bounds_parallel_operations_and_the_mailbox_stays_free(tmp_path: Path) -> None:
    """Copies must not all hit the disk at once, and a full pool must not block messages."""
    gate = Gate()
    with running(copy_store(tmp_path / "root"), workers=2) as started:
        futures = [started.proxy.submit(gate.operation).get(timeout=WAIT) for _ in range(5)]
        gate.wait_started(2)
        assert started.proxy.backend_kind().get(timeout=WAIT) == "copy"
        assert not futures[2].running() and not futures[2].done(), "no third worker"
        gate.release.set()
        names = {future.result(timeout=WAIT) for future in futures}
    assert gate.peak == 2
    assert len(names) == 2 and all(n.startswith("snapshot-copy") for n in names)


def test_lock_waiting_operations_do_not_need_the_pool(single: Running) -> None:
    """build_state, validate, invalidate and remove run on the caller's thread: a pool
    thread blocked on a build lock whose holder needs the pool would deadlock."""
    client = single.client
    write_data_dir(client.state_dir(IMAGE, OTHER_STATE))
    gate = Gate()
    blocker = single.proxy.submit(gate.operation).get(timeout=WAIT)
    gate.wait_started(1)
    done = threading.Event()
    outcome: dict[str, object] = {}

    def caller() -> None:
        with client.build_state(IMAGE, STATE, NEVER_CANCELLED) as build:
            outcome["already_built"] = build.already_built
        outcome["valid"] = client.validate_state(IMAGE, STATE)
        outcome["invalidated"] = client.invalidate_state(IMAGE, OTHER_STATE, NEVER_CANCELLED)
        client.remove_state(IMAGE, STATE, NEVER_CANCELLED)
        done.set()

    thread = threading.Thread(target=caller)
    thread.start()
    try:
        assert done.wait(WAIT), "a lock-waiting operation queued behind the busy pool"
    finally:
        gate.release.set()
        thread.join(WAIT)
    assert blocker.result(timeout=WAIT).startswith("snapshot-copy")
    assert outcome["already_built"] is False
    assert outcome["valid"] is not None
    assert outcome["invalidated"] is not None
    assert not client.state_dir(IMAGE, OTHER_STATE).exists()


# -- failures ------------------------------------------------------------------------------------


def _clone_dirty_source(client: SnapshotClient, tmp: Path) -> None:
    client.clone_to_runtime(write_data_dir(tmp / "dirty", pid=True), JOB_A, True, NEVER_CANCELLED)


def _clone_missing_source(client: SnapshotClient, tmp: Path) -> None:
    client.clone_to_runtime(tmp / "nowhere", JOB_A, True, NEVER_CANCELLED)


def _clone_without_pg_version(client: SnapshotClient, tmp: Path) -> None:
    (tmp / "empty" / "pgdata").mkdir(parents=True)
    client.clone_to_runtime(tmp / "empty", JOB_A, True, NEVER_CANCELLED)


def _clone_cancelled(client: SnapshotClient, tmp: Path) -> None:
    token = CancelToken()
    token.cancel()
    client.clone_to_runtime(write_data_dir(tmp / "src"), JOB_A, False, token)


def _clone_to_bad_job_id(client: SnapshotClient, tmp: Path) -> None:
    client.clone_to_runtime(write_data_dir(tmp / "src"), "../escape", False, NEVER_CANCELLED)


def _failing_initdb(client: SnapshotClient, _tmp: Path) -> None:
    def init(_base: Path) -> None:
        raise RuntimeError("initdb exploded")

    client.ensure_base(IMAGE, init)


def _snapshot_of_a_running_server(client: SnapshotClient, tmp: Path) -> None:
    with client.build_state(IMAGE, STATE, NEVER_CANCELLED) as build:
        client.snapshot(build, write_data_dir(tmp / "live", pid=True), None, NEVER_CANCELLED)


def _size_of_a_missing_state(client: SnapshotClient, _tmp: Path) -> None:
    client.state_size(IMAGE, STATE)


@pytest.mark.parametrize(
    ("operation", "error", "text"),
    [
        (_clone_dirty_source, SnapshotError, DIRTY_REASON),
        (_clone_missing_source, SnapshotError, MISSING_DIR_REASON),
        (_clone_without_pg_version, SnapshotError, "missing PG_VERSION"),
        (_clone_cancelled, JobFailure, "cancelled"),
        (_clone_to_bad_job_id, ValueError, "invalid job id"),
        (_failing_initdb, RuntimeError, "initdb exploded"),
        (_snapshot_of_a_running_server, SnapshotError, "snapshot refused"),
        (_size_of_a_missing_state, FileNotFoundError, ""),
    ],
    ids=lambda value: getattr(value, "__name__", "").strip("_") or None,
)
def test_a_failed_operation_raises_in_the_caller_and_the_actor_keeps_serving(
    single: Running,
    tmp_path: Path,
    operation: Callable[[SnapshotClient, Path], None],
    error: type[BaseException],
    text: str,
) -> None:
    """The caller gets the store's own exception (a job turns it into its error); the single
    pool worker and the actor survive it, and the next call works."""
    with pytest.raises(error) as raised:
        operation(single.client, tmp_path)
    assert text in str(raised.value) + str(getattr(raised.value, "details", ""))
    assert single.ref.is_alive()
    base = single.client.ensure_base(IMAGE, initdb())
    assert single.client.clone_to_runtime(base, JOB_B, False, NEVER_CANCELLED).is_dir()


def test_a_failed_build_leaves_no_half_state_behind(single: Running, tmp_path: Path) -> None:
    client = single.client
    source = write_data_dir(tmp_path / "src")
    with (
        pytest.raises(RuntimeError, match="psql failed"),
        client.build_state(IMAGE, STATE, NEVER_CANCELLED) as build,
    ):
        client.snapshot(build, source, None, NEVER_CANCELLED)
        raise RuntimeError("psql failed")
    assert client.validate_state(IMAGE, STATE) is not None
    assert not (client.state_dir(IMAGE, STATE) / "pgdata").exists()


# -- start-up cleanup -----------------------------------------------------------------------------


def test_start_sweeps_leftovers_and_reports_foreign_states(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`.stale-*` leftovers of interrupted removals are swept on the pool; states made by
    another backend are reported (they are rebuilt, never mixed)."""
    store = copy_store(tmp_path / "root")
    layout = store.layout
    stale_job = layout.jobs_dir / f"{JOB_A}.stale-17"
    write_data_dir(stale_job / "runtime")
    stale_state = layout.states_dir(IMAGE) / f"{STATE}.stale-3"
    write_data_dir(stale_state)
    kept = write_data_dir(layout.job_runtime_dir(JOB_B))
    foreign = layout.state_dir(IMAGE, OTHER_STATE)
    foreign.mkdir(parents=True)
    (foreign / "layers.json").write_text("{}")  # an overlay layer record
    caplog.set_level(logging.INFO, logger="sqlrs_engine.actors.snapshot")
    with running(store, workers=1) as started:
        started.drain()
        assert not stale_job.exists() and not stale_state.exists()
        assert (kept / "pgdata" / "PG_VERSION").is_file()
        assert foreign.is_dir(), "reported, not removed"
    messages = [r.getMessage() for r in caplog.records]
    assert any("removed 2 stale leftovers" in m for m in messages), messages
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("overlayfs: 1" in m and "this engine uses copy" in m for m in warnings), warnings


class _UnsweepableStore(StateStore):
    """A store whose start-up checks fail (an unreadable mount table, a broken layout)."""

    def sweep_mounts(self) -> MountSweep:
        raise OSError(5, "Input/output error", "/proc/self/mountinfo")

    def foreign_states(self) -> dict[str, int]:
        raise PermissionError(13, "Permission denied", "engines")


def test_failing_start_up_cleanup_is_logged_and_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _UnsweepableStore(StoreLayout(tmp_path / "root"), CopyBackend())
    stale = store.layout.jobs_dir / f"{JOB_A}.stale-1"
    stale.mkdir(parents=True)
    with running(store, workers=1) as started:
        started.drain()
        assert not stale.exists(), "the leftover sweep still runs"
        base = started.client.ensure_base(IMAGE, initdb())
        assert (base / "pgdata" / "PG_VERSION").is_file()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "cannot sweep stale mounts" in errors
    assert "cannot check state layouts" in errors


@pytest.fixture
def overlay_root(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("overlay mounts need root")
    root = tmp_path / "root"
    try:
        yield root
    finally:
        release_mounts_under(root)


def test_idle_overlay_mounts_are_gone_before_start_returns(overlay_root: Path) -> None:
    """A previous engine used overlay; this one uses copy. Idle clone mounts and leftovers
    are unmounted before the Registry can set up instances; a mount in use stays."""
    overlay = StateStore(StoreLayout(overlay_root), OverlayBackend(overlay_root))
    base = overlay.ensure_base(IMAGE, initdb())
    idle = overlay.clone_to_runtime(base, JOB_A, require_pg_version=False)
    busy = overlay.clone_to_runtime(base, JOB_B, require_pg_version=False)
    holder = subprocess.Popen(["sleep", "60"], cwd=busy / "pgdata")  # like a running server
    try:
        assert is_mount_point(idle) and is_mount_point(busy)
        with running(copy_store(overlay_root)) as started:
            assert not is_mount_point(idle)
            assert is_mount_point(busy)
            remounted = started.client.mount_dir_of(idle.parent)
            assert remounted == idle and is_mount_point(idle), "an instance can mount it again"
            assert (remounted / "pgdata" / "PG_VERSION").is_file()
    finally:
        holder.kill()
        holder.wait()


# -- stop ------------------------------------------------------------------------------------------


def test_stop_finishes_the_running_operation_and_cancels_queued_ones(tmp_path: Path) -> None:
    gate = Gate()
    ref, client = start_snapshot_actor(copy_store(tmp_path / "root"), workers=1)
    proxy: SnapshotProxy = ref.proxy()  # type: ignore[assignment]
    in_flight = proxy.submit(gate.operation).get(timeout=WAIT)
    queued = proxy.submit(gate.operation).get(timeout=WAIT)
    gate.wait_started(1)
    queued_done = threading.Event()
    queued.add_done_callback(lambda _f: queued_done.set())
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(ref.stop(block=True, timeout=WAIT)))
    stopper.start()
    try:
        assert queued_done.wait(WAIT), "stop did not cancel the queued operation"
        assert queued.cancelled()
        assert not in_flight.done(), "stop waits for the operation that is running"
    finally:
        gate.release.set()
        stopper.join(WAIT)
    assert stopped == [True]
    assert in_flight.result(timeout=WAIT).startswith("snapshot-copy")
    assert gate.started == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("snapshot-copy")]
    with pytest.raises(pykka.ActorDeadError):
        client.remove_path(tmp_path / "anything")
