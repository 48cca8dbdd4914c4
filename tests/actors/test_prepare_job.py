"""The PrepareJob actor with a real Registry and Snapshot actor and a fake runtime.

The fake runtime provokes what real PostgreSQL won't do on demand: a client that raises,
a client that hangs forever. Each case proves the fault stays inside its own job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
import pytest

from sqlrs_engine.actors.prepare_job import PrepareJobActor
from sqlrs_engine.actors.registry import RegistryProxy, RegistrySettings, start_registry
from sqlrs_engine.actors.snapshot import SnapshotClient, start_snapshot_actor
from sqlrs_engine.clock import now_rfc3339, parse_rfc3339
from sqlrs_engine.config.store import ConfigStore
from sqlrs_engine.ids import new_job_id
from sqlrs_engine.jobs.services import JobServices
from sqlrs_engine.persistence.jobs import JobRecord
from sqlrs_engine.persistence.rows import dump_json
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.store import StateStore
from tests.support.fake_runtime import FakeRuntime, hang, raise_error, succeed


@dataclass
class Harness:
    registry: RegistryProxy
    snapshots: SnapshotClient
    runtimes: dict[str, FakeRuntime]
    root: Path
    behaviour_of: dict[str, str]

    def submit(self, sql: str) -> str:
        """Submit a job whose runtime behaves as the `-- <name>` comment in `sql` says."""
        job_id = new_job_id()
        self.behaviour_of[job_id] = sql.rsplit("-- ", 1)[1]
        request = {"prepare_kind": "psql", "image_id": "postgres:15", "psql_args": ["-c", sql]}
        record = JobRecord(
            job_id,
            "psql",
            "postgres:15",
            False,
            f"-c {sql}",
            dump_json(request) or "{}",
            now_rfc3339(),
        )
        self.registry.submit_job(record).get()
        return job_id

    def wait_terminal(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.registry.job_status(job_id).get()
            if (
                status["status"] in ("succeeded", "failed")
                and self.registry.job_actor(job_id).get() is None
            ):
                return dict(status)
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """Jobs whose SQL text names the fake runtime behaviour they get."""
    store = StateStore(StoreLayout(tmp_path / "store"), CopyBackend())
    snapshot_ref, snapshots = start_snapshot_actor(store)
    behaviours: dict[str, Callable[..., int]] = {"ok": succeed, "raise": raise_error, "hang": hang}
    runtimes = {name: FakeRuntime(fn) for name, fn in behaviours.items()}

    behaviour_of: dict[str, str] = {}

    def start_job(job_id: str, registry: RegistryProxy) -> pykka.ActorRef[Any]:
        # Runs on the Registry's thread: it must not ask the Registry anything.
        runtime = runtimes[behaviour_of[job_id]]
        services = JobServices(registry, runtime, snapshots, "dev", tmp_path, 0.2)
        return PrepareJobActor.start(job_id, services)

    ref, registry = start_registry(
        RegistrySettings(
            tmp_path / "state.db",
            ConfigStore(tmp_path / "config.json"),
            job_actor_factory=start_job,
            children=(snapshot_ref,),
        )
    )
    try:
        yield Harness(registry, snapshots, runtimes, tmp_path / "store", behaviour_of)
    finally:
        for child in registry.begin_shutdown().get():
            child.stop()
        ref.stop()


def test_a_successful_job_hands_its_server_to_an_instance(harness: Harness) -> None:
    status = harness.wait_terminal(harness.submit("select 1 -- ok"))
    assert status["status"] == "succeeded", status
    instance_id = status["result"]["instance_id"]
    assert harness.registry.find_instance(instance_id, True).get()[0]["instance_id"] == instance_id
    assert len(harness.runtimes["ok"].running) == 1, "the instance's server keeps running"


def test_an_exception_in_the_runtime_fails_only_that_job(harness: Harness) -> None:
    bad = harness.submit("select 1 -- raise")
    good = harness.submit("select 2 -- ok")
    bad_status = harness.wait_terminal(bad)
    assert bad_status["status"] == "failed"
    assert bad_status["error"]["code"] == "internal_error"
    assert "runtime exploded" in bad_status["error"]["details"]
    assert harness.wait_terminal(good)["status"] == "succeeded"
    assert harness.runtimes["raise"].running == set(), "the failed job's server was released"
    assert not (harness.root / "jobs" / bad / "runtime").exists()
    assert harness.registry.ping().get() is True


def test_a_hanging_step_is_cancelled_promptly_and_cleaned_up(harness: Harness) -> None:
    job_id = harness.submit("select pg_sleep(600) -- hang")
    deadline = time.monotonic() + 10
    while not any(
        t["status"] == "running" and t["task_id"] == "execute-0"
        for t in harness.registry.list_tasks(job_id).get()
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    other = harness.submit("select 3 -- ok")
    started = time.monotonic()
    status, _ = harness.registry.cancel_job(job_id).get()
    assert status == 202
    final = harness.wait_terminal(job_id)
    assert time.monotonic() - started < 5
    assert final["error"] == {"code": "cancelled", "message": "task cancelled"}
    events = harness.registry.subscribe_events(job_id, 0, None).get().backlog
    assert [e["type"] for e in events[-2:]] == ["status", "error"]
    assert any(e["type"] == "task" and e["status"] == "failed" for e in events)
    assert harness.runtimes["hang"].running == set()
    assert harness.wait_terminal(other)["status"] == "succeeded"


def test_heartbeat_repeats_the_running_task_event(harness: Harness) -> None:
    job_id = harness.submit("select pg_sleep(600) -- hang")
    time.sleep(1.5)
    harness.registry.cancel_job(job_id).get()
    harness.wait_terminal(job_id)
    events = harness.registry.subscribe_events(job_id, 0, None).get().backlog
    # The step logs `psql: start` and then stays quiet: that line is what gets repeated.
    repeats = [e for e in events if e.get("message") == "psql: start"]
    assert len(repeats) >= 4, [e.get("message") or e.get("status") for e in events]
    # Compared as times: RFC 3339 text drops a fraction's trailing zeros, so `…12.519Z` sorts
    # after `…12.519423Z` as a string (a flake seen under load).
    stamps = [parse_rfc3339(e["ts"]) for e in events]
    assert stamps == sorted(stamps)


def test_shutdown_leaves_a_running_job_for_recovery(harness: Harness) -> None:
    job_id = harness.submit("select pg_sleep(600) -- hang")
    deadline = time.monotonic() + 10
    while harness.registry.job_status(job_id).get()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    ref = harness.registry.job_actor(job_id).get()
    ref.stop(timeout=10)
    status = harness.registry.job_status(job_id).get()
    assert status["status"] == "running", "recovery resumes it at the next start"
    assert harness.runtimes["hang"].running == set(), "its processes were stopped"
