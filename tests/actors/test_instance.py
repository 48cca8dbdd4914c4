"""The Instance actor with real PostgreSQL servers: recovery, and "start it once"."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from sqlrs_engine.actors.instance import (
    RESTARTING,
    RESTORING,
    STARTED,
    InstanceActor,
    InstanceProxy,
    RunningServer,
    instance_proxy,
)
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.runtime import procs
from sqlrs_engine.runtime.base import LogSink, ServerHandle
from sqlrs_engine.runtime.host import HostRuntime
from tests.support.dirs import make_scratch_dir, remove_scratch_dir, servers_under
from tests.support.prepare import query

INSTANCE = "0123456789abcdef0123456789abcdef"
TIMEOUT = 120


class CountingRuntime:
    """The real host runtime, counting `start` calls; a start can be held at its beginning."""

    def __init__(self, runtime: HostRuntime) -> None:
        self.real = runtime
        self.starts = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def start(
        self,
        image: str,
        data_dir: Path,
        log: LogSink,
        cancel: CancelToken,
        preferred_port: int | None = None,
        password: str | None = None,
    ) -> ServerHandle:
        self.starts += 1
        self.entered.set()
        assert self.release.wait(TIMEOUT)
        return self.real.start(image, data_dir, log, cancel, preferred_port, password)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class RecordingRegistry:
    """Stands in for the Registry proxy: records `set_instance_runtime` messages."""

    def __init__(self) -> None:
        self.runtime_ids: list[tuple[str, str | None]] = []
        self.ports: list[int | None] = []
        self.secrets: list[str | None] = []

    def set_instance_runtime(
        self,
        instance_id: str,
        runtime_id: str | None,
        port: int | None = None,
        secret: str | None = None,
    ) -> pykka.Future[None]:
        self.runtime_ids.append((instance_id, runtime_id))
        self.ports.append(port)
        self.secrets.append(secret)
        future: pykka.Future[None] = pykka.ThreadingFuture()
        future.set(None)
        return future


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = make_scratch_dir()
    try:
        yield path
    finally:
        remove_scratch_dir(path)


@pytest.fixture(scope="module")
def host(root: Path) -> HostRuntime:
    run_root = root / "run"
    run_root.mkdir(mode=0o711)
    runtime = HostRuntime(run_root=run_root)
    if not runtime.installed_majors():
        pytest.skip("no PostgreSQL server binaries installed on this machine")
    return runtime


@pytest.fixture(scope="module")
def image(host: HostRuntime) -> str:
    return host.resolve_image("postgres", lambda _line: None, CancelToken())


@pytest.fixture(scope="module")
def base(host: HostRuntime, image: str, root: Path) -> Path:
    path = root / "base"
    host.init_base(image, path, lambda _line: None, CancelToken())
    return path


_clones = itertools.count()


@pytest.fixture
def data_dir(base: Path, root: Path) -> Iterator[Path]:
    """A fresh copy of the base cluster, as a snapshot backend's clone would be."""
    target = root / f"clone-{next(_clones)}"
    subprocess.run(["cp", "-a", str(base), str(target)], check=True)
    yield target
    remove_scratch_dir(target)  # kills servers left on it


@pytest.fixture
def runtime(host: HostRuntime) -> CountingRuntime:
    return CountingRuntime(host)


@pytest.fixture
def actors() -> Iterator[list[pykka.ActorRef[Any]]]:
    refs: list[pykka.ActorRef[Any]] = []
    yield refs
    for ref in refs:
        ref.stop()


def start_actor(
    actors: list[pykka.ActorRef[Any]],
    runtime: CountingRuntime,
    image: str,
    data_dir: Path,
    handle: ServerHandle | None,
) -> InstanceProxy:
    ref = InstanceActor.start(INSTANCE, image, handle, data_dir, runtime)
    actors.append(ref)
    return instance_proxy(ref)


def test_a_running_server_is_returned_as_is(
    actors: list[pykka.ActorRef[Any]], runtime: CountingRuntime, image: str, data_dir: Path
) -> None:
    handle = runtime.real.start(image, data_dir, lambda _line: None, CancelToken())
    proxy = start_actor(actors, runtime, image, data_dir, handle)
    registry = RecordingRegistry()
    logs: list[str] = []
    server: RunningServer = proxy.ensure_running(logs.append, registry).get(timeout=TIMEOUT)
    assert server.handle == handle and server.restarted is False
    assert server.runtime is runtime
    assert logs == [] and registry.runtime_ids == [] and runtime.starts == 0


def test_two_concurrent_runs_against_a_killed_server_start_it_once(
    actors: list[pykka.ActorRef[Any]], runtime: CountingRuntime, image: str, data_dir: Path
) -> None:
    handle = runtime.real.start(image, data_dir, lambda _line: None, CancelToken())
    proxy = start_actor(actors, runtime, image, data_dir, handle)
    assert handle.pid is not None
    os.kill(handle.pid, signal.SIGKILL)  # the postmaster dies; its children are orphaned
    assert procs.wait_dead([handle.pid], 10)

    registry = RecordingRegistry()
    first_logs: list[str] = []
    second_logs: list[str] = []
    runtime.release.clear()
    first = proxy.ensure_running(first_logs.append, registry)
    assert runtime.entered.wait(TIMEOUT), "the first run did not start the server"
    # The first restart is in progress; the second request is now in the actor's mailbox.
    second = proxy.ensure_running(second_logs.append, registry)
    runtime.release.set()
    one: RunningServer = first.get(timeout=TIMEOUT)
    two: RunningServer = second.get(timeout=TIMEOUT)

    assert runtime.starts == 1
    assert (one.restarted, two.restarted) == (True, False)
    assert one.handle.runtime_id == two.handle.runtime_id != handle.runtime_id
    assert first_logs == [RESTARTING, RESTORING, STARTED]
    assert second_logs == []
    assert registry.runtime_ids == [(INSTANCE, one.handle.runtime_id)]
    assert query(one.handle.dsn, "select 1") == "1"
    assert servers_under(data_dir) == [one.handle.pid]
    assert proxy.handle().get(timeout=TIMEOUT) == one.handle


def test_a_stopped_server_is_restarted_from_its_data_dir(
    actors: list[pykka.ActorRef[Any]], runtime: CountingRuntime, image: str, data_dir: Path
) -> None:
    handle = runtime.real.start(image, data_dir, lambda _line: None, CancelToken())
    query(handle.dsn, "create table kept(a int); insert into kept values (7)")
    proxy = start_actor(actors, runtime, image, data_dir, handle)
    proxy.stop_server().get(timeout=TIMEOUT)
    assert proxy.is_running().get(timeout=TIMEOUT) is False
    logs: list[str] = []
    server: RunningServer = proxy.ensure_running(logs.append).get(timeout=TIMEOUT)
    assert server.restarted is True and logs == [RESTARTING, RESTORING, STARTED]
    assert query(server.handle.dsn, "select a from kept") == "7"


def test_a_server_started_behind_the_actors_back_is_adopted_not_restarted(
    actors: list[pykka.ActorRef[Any]], runtime: CountingRuntime, image: str, data_dir: Path
) -> None:
    proxy = start_actor(actors, runtime, image, data_dir, None)  # nothing runs: adopt finds none
    assert proxy.handle().get(timeout=TIMEOUT) is None
    handle = runtime.real.start(image, data_dir, lambda _line: None, CancelToken())
    registry = RecordingRegistry()
    logs: list[str] = []
    server: RunningServer = proxy.ensure_running(logs.append, registry).get(timeout=TIMEOUT)
    assert server.restarted is False and server.handle.runtime_id == handle.runtime_id
    assert logs == [] and runtime.starts == 0
    assert registry.runtime_ids == [(INSTANCE, handle.runtime_id)]


def test_the_password_survives_restarts_and_an_old_instance_gets_one(
    actors: list[pykka.ActorRef[Any]], runtime: CountingRuntime, image: str, data_dir: Path
) -> None:
    """SPEC §0.9: a restart keeps the instance's DSN working (same password); an instance of an
    older engine (no password stored) gets one at its next start, recorded with its runtime."""
    handle = runtime.real.start(image, data_dir, lambda _line: None, CancelToken())
    assert handle.password is not None
    ref = InstanceActor.start(INSTANCE, image, None, data_dir, runtime, None, handle.password)
    actors.append(ref)
    proxy = instance_proxy(ref)
    adopted = proxy.handle().get(timeout=TIMEOUT)
    assert adopted is not None and adopted.password == handle.password  # completed on adopt
    proxy.stop_server().get(timeout=TIMEOUT)
    registry = RecordingRegistry()
    again: RunningServer = proxy.ensure_running(lambda _l: None, registry).get(timeout=TIMEOUT)
    assert again.restarted and again.handle.password == handle.password
    assert query(handle.dsn, "select 1") == "1"
    assert registry.secrets == [handle.password]
    proxy.stop_server().get(timeout=TIMEOUT)
    ref.stop()

    legacy = instance_proxy(InstanceActor.start(INSTANCE, image, None, data_dir, runtime))
    actors.append(legacy.actor_ref)
    registry = RecordingRegistry()
    fresh: RunningServer = legacy.ensure_running(lambda _l: None, registry).get(timeout=TIMEOUT)
    assert fresh.handle.password not in (None, handle.password)
    assert registry.secrets == [fresh.handle.password]
    assert query(fresh.handle.dsn, "select 1") == "1"


def test_a_missing_data_dir_fails_with_a_clear_error(
    actors: list[pykka.ActorRef[Any]], runtime: CountingRuntime, image: str, root: Path
) -> None:
    missing = root / "gone"
    proxy = start_actor(actors, runtime, image, missing, None)
    logs: list[str] = []
    with pytest.raises(JobFailure) as caught:
        proxy.ensure_running(logs.append).get(timeout=TIMEOUT)
    assert caught.value.message == "instance runtime dir is missing"
    assert str(missing) in (caught.value.details or "")
    assert logs == [RESTARTING] and runtime.starts == 0


def test_a_retired_instance_is_never_restarted_until_reinstated(
    actors: list[pykka.ActorRef[Any]], runtime: CountingRuntime, image: str, data_dir: Path
) -> None:
    """Deletion retires the instance before its files go: a run racing the deletion must not
    restart (or, on overlay, remount) its server."""
    handle = runtime.real.start(image, data_dir, lambda _line: None, CancelToken())
    proxy = start_actor(actors, runtime, image, data_dir, handle)
    proxy.retire().get(timeout=TIMEOUT)
    assert proxy.is_running().get(timeout=TIMEOUT) is False
    with pytest.raises(JobFailure) as refused:
        proxy.ensure_running(lambda _line: None).get(timeout=TIMEOUT)
    assert (refused.value.code, refused.value.message) == ("not_found", "instance not found")
    assert "being deleted" in (refused.value.details or "")
    assert runtime.starts == 0 and servers_under(data_dir) == []
    proxy.reinstate().get(timeout=TIMEOUT)  # the deletion failed: the instance stays
    assert proxy.ensure_running(lambda _line: None).get(timeout=TIMEOUT).restarted is True
