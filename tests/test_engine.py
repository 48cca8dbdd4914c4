"""The engine as root supervisor, driven in-process: start order, stop order, failed starts.

tests/e2e/test_process.py checks the real process from outside (flags, engine.json contents,
signals, exit codes); here `Engine` runs in the test process so the order in which its parts
stop, and what a failed start leaves behind, can be observed directly. The runtime is the
host's PostgreSQL (nothing is started: no test here runs a server) and the snapshot backend
is `copy`, both configured, so no probing makes the tests slow or machine-dependent.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pykka
import pytest
import requests
import ujson

from sqlrs_engine.actors.registry import RegistryStartError
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.discovery import EngineInfo
from sqlrs_engine.engine import Engine, EngineOptions, run_until_stopped
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.locks import FileLock
from sqlrs_engine.runtime.host import HostRuntime
from sqlrs_engine.snapshot.layout import StoreLayout
from tests.support.cpus import EVERY_CPU, needs_two_cpus, thread_cpus
from tests.support.seed import Seeder

CONFIG = {"container": {"runtime": "host"}, "snapshot": {"backend": "copy"}}
STATE = "5" * 64
INSTANCE = "6" * 32
WAIT = 10.0


@pytest.fixture(autouse=True)
def keep_root_logger() -> Iterator[None]:
    """`Engine.start` applies config `log.level` to the root logger; give it back."""
    root = logging.getLogger()
    level = root.level
    try:
        yield
    finally:
        root.setLevel(level)


@pytest.fixture
def store(scratch_dir: Path) -> Path:
    """A state store the server user can traverse, configured for host + copy."""
    root = scratch_dir / "store"
    root.mkdir()
    (root / "config.json").write_text(ujson.dumps(CONFIG))
    return root


def options(store: Path, *, port: int = 0, idle_timeout: float = 0) -> EngineOptions:
    return EngineOptions(
        listen_host="127.0.0.1",
        listen_port=port,
        engine_json=store.parent / "engine.json",
        state_store=store,
        idle_timeout=idle_timeout,
        version="9.9.9-test",
        http_threads=4,
    )


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def port_of(info: EngineInfo) -> int:
    return int(info.endpoint.rsplit(":", 1)[1])


def seed_instance(store: Path) -> None:
    """An instance row from a previous engine: start gives it an Instance actor."""
    seeder = Seeder(store)
    try:
        seeder.state(STATE)
        seeder.instance(INSTANCE, STATE, runtime_id=None)
    finally:
        seeder.close()


@pytest.fixture
def held_base_lock(store: Path) -> Iterator[None]:
    """Hold the base's init lock, so a prepare job waits (running, cancellable) at its step."""
    try:
        image = HostRuntime().resolve_image("postgres:15", lambda _line: None, CancelToken())
    except JobFailure as error:
        pytest.skip(f"PostgreSQL 15 server binaries are needed: {error}")
    path = StoreLayout(store).init_lock(image)
    path.parent.mkdir(parents=True)
    lock = FileLock(path)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def submit_blocked_job(engine: Engine, info: EngineInfo) -> str:
    """POST a prepare job as the CLI does; return once its step waits for the base lock."""
    response = requests.post(
        f"http://{info.endpoint}/v1/prepare-jobs",
        json={"prepare_kind": "psql", "image_id": "postgres:15", "psql_args": ["-c", "select 1"]},
        headers={"Authorization": f"Bearer {info.auth_token}"},
        timeout=WAIT,
    )
    assert response.status_code == 201, response.text
    job_id = str(response.json()["job_id"])
    deadline = time.monotonic() + WAIT
    while not any(
        task["task_id"] == "execute-0" and task.get("status") == "running"
        for task in engine.registry.list_tasks(job_id).get(timeout=WAIT)
    ):
        assert time.monotonic() < deadline, "the job never reached its step"
        time.sleep(0.02)
    return job_id


class StopObserver(logging.Handler):
    """Records, as each actor stops (pykka logs it on the actor's thread), which actors are
    still alive and whether the HTTP port still accepts connections."""

    def __init__(self, port: int) -> None:
        super().__init__(logging.DEBUG)
        self.port = port
        self.stops: list[tuple[str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Stopped "):
            self.stops.append((message.split()[1], port_open(self.port)))


@pytest.fixture
def observe_stops() -> Iterator[list[StopObserver]]:
    pykka_log = logging.getLogger("pykka")
    level = pykka_log.level
    observers: list[StopObserver] = []
    pykka_log.setLevel(logging.DEBUG)
    try:
        yield observers
    finally:
        for observer in observers:
            pykka_log.removeHandler(observer)
        pykka_log.setLevel(level)


def job_status_in_db(store: Path, job_id: str) -> str:
    seeder = Seeder(store)
    try:
        row = seeder.jobs.job_row(job_id)
        assert row is not None
        return str(row["status"])
    finally:
        seeder.close()


# -- start and stop ------------------------------------------------------------------------------


def test_stop_closes_http_stops_every_actor_and_removes_engine_json(store: Path) -> None:
    engine = Engine(options(store))
    info = engine.start()
    engine_json = store.parent / "engine.json"
    assert ujson.loads(engine_json.read_text()) == info.to_json()
    health = requests.get(f"http://{info.endpoint}/v1/health", timeout=WAIT).json()
    assert health["instanceId"] == info.instance_id == engine.instance_id
    names = {ref.actor_class.__name__ for ref in pykka.ActorRegistry.get_all()}
    assert names == {"SnapshotActor", "RegistryActor"}
    engine.stop()
    assert not engine_json.exists()
    assert not port_open(port_of(info))
    assert pykka.ActorRegistry.get_all() == []
    engine.stop()  # a second stop (signal after idle timeout) is a no-op


def _cpus_by_thread() -> dict[str, frozenset[int]]:
    """Each live thread's CPUs, by name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    return {names.get(tid, str(tid)): cpus for tid, cpus in thread_cpus().items()}


@needs_two_cpus
def test_the_engines_threads_share_one_cpu_until_it_stops(store: Path) -> None:
    engine = Engine(options(store))
    engine.start()
    try:
        running = {n: c for n, c in _cpus_by_thread().items() if not n.startswith("spawner")}
        assert len(set(running.values())) == 1
        (cpus,) = set(running.values())
        assert len(cpus) == 1 and cpus <= EVERY_CPU
        assert any(name.startswith("RegistryActor") for name in running)
    finally:
        engine.stop()
    assert set(_cpus_by_thread().values()) == {EVERY_CPU}


def test_engine_pin_threads_false_leaves_every_thread_on_every_cpu(store: Path) -> None:
    (store / "config.json").write_text(ujson.dumps({**CONFIG, "engine": {"pinThreads": False}}))
    engine = Engine(options(store))
    engine.start()
    try:
        assert set(_cpus_by_thread().values()) == {EVERY_CPU}
    finally:
        engine.stop()


def test_children_stop_in_reverse_dependency_order(
    store: Path, held_base_lock: None, observe_stops: list[StopObserver]
) -> None:
    """HTTP first (no new requests reach a stopping actor), then jobs (they use instances'
    servers and the store), instances, the Snapshot actor, and the Registry last; a job
    interrupted this way stays `running` so the next start resumes it."""
    seed_instance(store)
    engine = Engine(options(store))
    info = engine.start()
    try:
        job_id = submit_blocked_job(engine, info)
        observer = StopObserver(port_of(info))
        observe_stops.append(observer)
        logging.getLogger("pykka").addHandler(observer)
    finally:
        engine.stop()
    assert observer.stops == [
        ("PrepareJobActor", False),
        ("InstanceActor", False),
        ("SnapshotActor", False),
        ("RegistryActor", False),
    ]
    assert job_status_in_db(store, job_id) == "running"
    assert not (store.parent / "engine.json").exists()


def test_idle_timeout_waits_while_a_job_runs(store: Path, held_base_lock: None) -> None:
    engine = Engine(options(store, idle_timeout=0.01))
    info = engine.start()
    stop_requested = threading.Event()
    reasons: list[str] = []
    try:
        submit_blocked_job(engine, info)
        waiter = threading.Thread(target=lambda: reasons.append(engine.wait(stop_requested, 0.01)))
        waiter.start()
        time.sleep(0.3)  # dozens of idle checks; a busy engine must not stop in any of them
        stop_requested.set()
        waiter.join(WAIT)
    finally:
        engine.stop()
    assert reasons == ["signal"]


def test_an_unused_engine_stops_on_idle_timeout(store: Path) -> None:
    engine = Engine(options(store, idle_timeout=0.05))
    engine.start()
    try:
        assert engine.wait(threading.Event(), poll=0.01) == "idle timeout"
    finally:
        engine.stop()


def test_run_until_stopped_reports_ready_then_stops(store: Path) -> None:
    stop_requested = threading.Event()
    stop_requested.set()  # a signal that arrived during start-up
    ready: list[EngineInfo] = []

    def on_ready(info: EngineInfo) -> None:
        ready.append(info)
        assert ujson.loads((store.parent / "engine.json").read_text())["pid"] == info.pid

    reason = run_until_stopped(Engine(options(store)), stop_requested, on_ready)
    assert reason == "signal"
    assert len(ready) == 1
    assert not (store.parent / "engine.json").exists()
    assert pykka.ActorRegistry.get_all() == []


# -- failed starts ---------------------------------------------------------------------------------


def _garbage_database(store: Path) -> dict[str, Any]:
    (store / "state.db").write_text("this is not sqlite")
    return {}


def _port_in_use(store: Path) -> dict[str, Any]:
    holder = socket.create_server(("127.0.0.1", 0))
    return {"port": holder.getsockname()[1], "holder": holder}


def _engine_json_unwritable(store: Path) -> dict[str, Any]:
    (store.parent / "blocker").write_text("a file where a directory should be")
    return {"engine_json": store.parent / "blocker" / "engine.json"}


@pytest.mark.parametrize(
    ("fault", "error", "started_before_failing"),
    [
        (_garbage_database, RegistryStartError, "snapshot actor"),
        (_port_in_use, OSError, "snapshot and registry actors"),
        (_engine_json_unwritable, OSError, "actors and the bound HTTP server"),
    ],
    ids=["registry", "http-bind", "engine-json"],
)
def test_a_failed_start_stops_what_it_started(
    store: Path,
    fault: Any,
    error: type[BaseException] | tuple[type[BaseException], ...],
    started_before_failing: str,
) -> None:
    """Whatever started before the failure is stopped again, so nothing keeps the process
    alive and `main` can exit 1 (SPEC §1.1); no engine.json advertises a dead engine."""
    setup = fault(store)
    default_json = store.parent / "engine.json"
    engine_json = setup.get("engine_json", default_json)
    engine = Engine(replace(options(store, port=setup.get("port", 0)), engine_json=engine_json))
    http_threads_before = {t for t in threading.enumerate() if t.name.startswith("CP Server")}
    try:
        with pytest.raises(error):
            engine.start()
    finally:
        if "holder" in setup:
            setup["holder"].close()
    assert pykka.ActorRegistry.get_all() == [], f"{started_before_failing} left running"
    assert not engine_json.exists() and not default_json.exists()
    leftover = {t for t in threading.enumerate() if t.name.startswith("CP Server")}
    assert leftover <= http_threads_before, "HTTP worker threads left running"
    engine.stop()  # after a failed start: a no-op


def test_an_unusable_database_always_fails_start_with_the_reason(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's stderr must say what was wrong (SPEC §0.7). The Registry fails in
    on_start on its own thread; how far the starting thread got by then is up to the
    scheduler, so the losing interleaving is forced: the proxy is made after the death."""
    (store / "state.db").write_text("this is not sqlite")
    make_proxy = pykka.ActorRef.proxy

    def late_proxy(ref: pykka.ActorRef[Any]) -> Any:
        if ref.actor_class.__name__ == "RegistryActor":
            ref.actor_stopped.wait(WAIT)
        return make_proxy(ref)

    monkeypatch.setattr(pykka.ActorRef, "proxy", late_proxy)
    with pytest.raises(RegistryStartError, match="database"):
        Engine(options(store)).start()


def test_a_dead_registry_does_not_leave_children_running(store: Path) -> None:
    """If the Registry died (or did not answer begin_shutdown in time), the engine still
    has to stop the Instance actors: their non-daemon threads would keep the process alive
    after SIGTERM."""
    seed_instance(store)
    engine = Engine(options(store))
    engine.start()
    try:
        for registry in pykka.ActorRegistry.get_by_class_name("RegistryActor"):
            registry.stop()  # stands in for a crash of the Registry actor
        engine.stop()
        leaked = sorted(ref.actor_class.__name__ for ref in pykka.ActorRegistry.get_all())
    finally:
        pykka.ActorRegistry.stop_all(block=True, timeout=WAIT)
    assert leaked == []
