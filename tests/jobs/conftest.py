"""Real collaborators for the jobs tests: a Registry on a temporary state.db, a Snapshot actor
with the copy backend, and a runtime that is fake unless a test needs real PostgreSQL.

The fake runtime (`ScriptRuntime`) makes psql "apply" its script to the data dir the server
runs on, so a test can see which steps' effects ended up in a state or an instance, and it
records every client call (arguments, stdin, work dir) for the tests that check them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine.actors.registry import RegistryProxy, RegistrySettings, start_registry
from sqlrs_engine.actors.snapshot import SnapshotClient, start_snapshot_actor
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.clock import now_rfc3339
from sqlrs_engine.config.store import ConfigStore
from sqlrs_engine.ids import new_job_id
from sqlrs_engine.jobs.builder import StateBuilder as PsqlJob
from sqlrs_engine.jobs.event_log import Item, Stored
from sqlrs_engine.jobs.kinds import KINDS
from sqlrs_engine.jobs.services import JobServices
from sqlrs_engine.jobs.supervisor import job_event_log
from sqlrs_engine.jobs.tasks import TaskTracker
from sqlrs_engine.persistence.jobs import JobRecord, RowChange
from sqlrs_engine.persistence.rows import Row, dump_json
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.runtime.base import OutputSink, Runtime, ServerHandle, pgdata_of
from sqlrs_engine.runtime.host import HostRuntime
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.store import StateStore
from tests.support.dirs import kill_servers_under, make_scratch_dir, remove_scratch_dir
from tests.support.fake_runtime import RESOLVED, ClientBehaviour, FakeRuntime, succeed
from tests.support.seed import Seeder

ENGINE_VERSION = "jobs-test"
IMAGE = "postgres:15"
ASK = 30.0
APPLIED = "applied"
"""File in a fake server's PGDATA listing the scripts psql ran on it, one per line."""


def psql_request(
    *args: str, stdin: str | None = None, plan_only: bool = False, image: str = IMAGE
) -> PrepareRequest:
    return PrepareRequest("psql", image, list(args), stdin=stdin, plan_only=plan_only)


def applied(data_dir: Path) -> list[str]:
    """The scripts `ScriptRuntime` ran on a data dir (a clone, a state or an instance)."""
    path = pgdata_of(data_dir) / APPLIED
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


@dataclass(frozen=True)
class ClientCall:
    handle: ServerHandle
    program: str
    args: list[str]
    stdin: bytes | None
    cwd: Path | None


class ScriptRuntime(FakeRuntime):
    """A FakeRuntime whose successful psql runs leave a trace in the server's data dir."""

    def __init__(self, client: ClientBehaviour = succeed) -> None:
        super().__init__(client)
        self.calls: list[ClientCall] = []

    def run_client(
        self,
        handle: ServerHandle,
        program: str,
        args: Sequence[str],
        *,
        stdin: bytes | None,
        cwd: Path | None,
        on_output: OutputSink,
        cancel: CancelToken,
        env: Mapping[str, str] | None = None,
        inputs: Path | None = None,
    ) -> int:
        self.calls.append(ClientCall(handle, program, list(args), stdin, cwd))
        code = self.client(args, on_output, cancel)
        if code == 0:
            with (pgdata_of(handle.data_dir) / APPLIED).open("a", encoding="utf-8") as out:
                out.write(_script_of(args, stdin) + "\n")
        return code


def _script_of(args: Sequence[str], stdin: bytes | None) -> str:
    """What a step ran: its `-c` text, `-f` path, or the stdin text of `-f -`."""
    flag, value = args[-3], args[-2]  # ... <flag> <value> <dsn>
    if flag == "-f" and value == "-":
        return (stdin or b"").decode()
    return value if flag in ("-c", "-f") else "(no input)"


@dataclass
class Parts:
    """The running actors of one test and shortcuts to what they store."""

    root: Path
    store: StateStore
    registry: RegistryProxy
    snapshots: SnapshotClient

    def services(self, runtime: Runtime, **overrides: Any) -> JobServices:
        fields: dict[str, Any] = {"cwd": self.root, "heartbeat": 0.2, **overrides}
        return JobServices(self.registry, runtime, self.snapshots, ENGINE_VERSION, **fields)

    def psql_job(
        self, job_id: str, request: PrepareRequest, runtime: Runtime, **overrides: Any
    ) -> PsqlJob:
        """A PsqlJob wired as the supervisor wires it (events and tasks to the Registry)."""
        services = self.services(runtime, **overrides)
        events = job_event_log(job_id, services)
        tasks = TaskTracker(job_id, events)
        return PsqlJob(job_id, request, services, events, tasks, CancelToken())

    def events(self, job_id: str) -> list[Row]:
        sub = self.registry.subscribe_events(job_id, 0, None).get(timeout=ASK)
        assert sub is not None, f"unknown job {job_id}"
        self.registry.unsubscribe_events(job_id, sub.token).get(timeout=ASK)
        return list(sub.backlog)

    def task_rows(self, job_id: str) -> dict[str, Row]:
        rows = self.registry.task_rows(job_id).get(timeout=ASK)
        return {row["task_id"]: row for row in rows}

    def job_row(self, job_id: str) -> Row:
        row = self.registry.job_row(job_id).get(timeout=ASK)
        assert row is not None
        return dict(row)

    def state_row(self, state_id: str) -> Row | None:
        row = self.registry.state_row(state_id).get(timeout=ASK)
        return None if row is None else dict(row)

    def state_dir(self, state_id: str, image: str = RESOLVED) -> Path:
        return self.store.state_dir(image, state_id)


def log_lines(events: Sequence[Row]) -> list[str]:
    return [str(e["message"]) for e in events if e["type"] == "log"]


def task_events(events: Sequence[Row]) -> list[tuple[str, str]]:
    return [(e["task_id"], e["status"]) for e in events if e["type"] == "task"]


def make_state_dir(store: StateStore, state_id: str, image: str = RESOLVED) -> Path:
    """A complete state dir built through the store (snapshot of a fake data dir, marker)."""
    source = store.layout.root / "sources" / state_id
    (pgdata_of(source)).mkdir(parents=True)
    (pgdata_of(source) / "PG_VERSION").write_text("15\n")
    with store.build_state(image, state_id) as build:
        build.snapshot(source, None)
        build.commit()
    return build.state_dir


class World:
    """A state store root: seed its state.db first, then `start()` the actors on it.

    Seeding goes through the engine's persistence layer (tests/support/seed.py) while no
    Registry has the database open, as the Seeder requires.
    """

    def __init__(self, root: Path, db_dir: Path | None = None) -> None:
        self.root = root
        self.db_dir = db_dir or root
        self.store = StateStore(StoreLayout(root), CopyBackend())
        self.image = RESOLVED
        self._seeder: Seeder | None = None
        self._stack = contextlib.ExitStack()
        self.parts: Parts | None = None

    @property
    def seed(self) -> Seeder:
        assert self.parts is None, "seed before start()"
        if self._seeder is None:
            self._seeder = Seeder(self.db_dir)
        return self._seeder

    def add_job(self, request: PrepareRequest, job_id: str | None = None) -> str:
        """A queued job row holding `request` as the submit route stores it."""
        job_id = job_id or new_job_id()
        normalized = KINDS[request.prepare_kind].normalize(request, self.root)
        self.seed.jobs.insert_job(
            JobRecord(
                job_id,
                request.prepare_kind,
                request.image_id,
                request.plan_only,
                normalized,
                dump_json(request.to_request_json()) or "{}",
                now_rfc3339(),
            )
        )
        return job_id

    def add_raw_job(self, request_json: str, job_id: str | None = None) -> str:
        """A job row whose stored request is whatever text the test gives."""
        job_id = job_id or new_job_id()
        self.seed.jobs.insert_job(
            JobRecord(job_id, "psql", IMAGE, False, "-c x", request_json, now_rfc3339())
        )
        return job_id

    def start(self) -> Parts:
        if self._seeder is not None:
            self._seeder.close()
            self._seeder = None
        self.root.mkdir(parents=True, exist_ok=True)
        snapshot_ref, snapshots = start_snapshot_actor(self.store)
        self._stack.callback(snapshot_ref.stop)
        ref, registry = start_registry(
            RegistrySettings(self.db_dir / "state.db", ConfigStore(self.root / "config.json"))
        )
        self._stack.callback(ref.stop)
        self.parts = Parts(self.root, self.store, registry, snapshots)
        return self.parts

    def close(self) -> None:
        self._stack.close()
        if self._seeder is not None:
            self._seeder.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A fresh store under tmp_path (enough for the fake runtime, whose servers are handles)."""
    result = World(tmp_path / "store")
    try:
        yield result
    finally:
        result.close()


@dataclass(frozen=True)
class HostStore:
    """A store on a scratch dir the `postgres` user can traverse, with an initdb'ed base."""

    root: Path
    runtime: HostRuntime
    image: str
    base: Path


@pytest.fixture(scope="session")
def host_store() -> Iterator[HostStore]:
    """One real base cluster for the session's host-runtime tests (initdb runs once)."""
    scratch = make_scratch_dir("sqlrs-jobs-")
    try:
        run_root = scratch / "run"
        run_root.mkdir(mode=0o711)
        runtime = HostRuntime(run_root=run_root)
        if not runtime.installed_majors():
            pytest.skip("no PostgreSQL server binaries installed on this machine")
        image = runtime.resolve_image(IMAGE, lambda _line: None, CancelToken())
        root = scratch / "store"
        store = StateStore(StoreLayout(root), CopyBackend())
        base = store.ensure_base(
            image, lambda path: runtime.init_base(image, path, lambda _l: None, CancelToken())
        )
        yield HostStore(root, runtime, image, base)
    finally:
        remove_scratch_dir(scratch)


@pytest.fixture
def host_world(host_store: HostStore, tmp_path: Path) -> Iterator[World]:
    """Actors over the shared host store, with this test's own state.db."""
    result = World(host_store.root, db_dir=tmp_path)
    result.image = host_store.image
    try:
        yield result
    finally:
        result.close()
        kill_servers_under(host_store.root / "jobs")


@dataclass
class Recorded:
    """An `EventSink` that keeps what it was given: the events, each with whether the caller
    has waited for its batch to be stored, and the row changes sent with them."""

    events: list[tuple[dict[str, Any], bool]] = field(default_factory=list)
    rows: list[RowChange] = field(default_factory=list)
    sent: list[list[Item]] = field(default_factory=list)
    on_record: Callable[[dict[str, Any]], None] = lambda _event: None

    def record_batch(self, items: list[Item]) -> Stored:
        self.sent.append(list(items))
        start = len(self.events)
        for item in items:
            if isinstance(item, RowChange):
                self.rows.append(item)
            else:
                self.events.append((dict(item), False))
                self.on_record(item)
        end = len(self.events)

        def stored(timeout: float | None) -> bool:
            if timeout is None:
                for n in range(start, end):
                    self.events[n] = (self.events[n][0], True)
            return True

        return stored
