"""The Registry actor alone, against a temporary SQLite file."""

from __future__ import annotations

import queue
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pykka
import pytest
from sqlalchemy.exc import OperationalError

from sqlrs_engine.actors.events import END
from sqlrs_engine.actors.registry import (
    RegistryProxy,
    RegistrySettings,
    RegistryStartError,
    start_registry,
)
from sqlrs_engine.clock import format_rfc3339, now_rfc3339
from sqlrs_engine.config.store import ConfigStore
from sqlrs_engine.errors import ApiError
from sqlrs_engine.jobs.pooled_hit import PooledHit
from sqlrs_engine.persistence.jobs import JobQueries, JobRecord, RowChange
from sqlrs_engine.persistence.metadata import InstanceRecord, StateRecord
from sqlrs_engine.prepare.plan import PlanTask
from sqlrs_engine.runtime.base import ServerHandle


class _IdleJob(pykka.ThreadingActor):
    """Stands in for a PrepareJob actor: it exists and does nothing."""


class _IdleJobFactory:
    def __init__(self) -> None:
        self.started: list[pykka.ActorRef[Any]] = []

    def __call__(self, job_id: str, registry: RegistryProxy) -> pykka.ActorRef[Any]:
        ref = _IdleJob.start()
        self.started.append(ref)
        return ref


idle_job_actor = _IdleJobFactory()


def settings(tmp_path: Path, **kwargs: Any) -> RegistrySettings:
    return RegistrySettings(
        db_path=tmp_path / "state.db", config=ConfigStore(tmp_path / "config.json"), **kwargs
    )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProxy]:
    ref, proxy = start_registry(settings(tmp_path))
    try:
        yield proxy
    finally:
        ref.stop()


def job(job_id: str = "a" * 32) -> JobRecord:
    return JobRecord(
        job_id, "psql", "postgres:15", False, "-c select 1", "{}", "2026-01-01T00:00:00Z"
    )


def test_state_rows_round_trip(registry: RegistryProxy) -> None:
    record = StateRecord("s" * 64, None, "img@x", "psql", "-c x", "2026-01-01T00:00:00Z", 10)
    assert registry.insert_state(record).get() is True
    assert registry.insert_state(record).get() is False, "INSERT OR IGNORE"
    assert registry.state_exists("s" * 64).get()
    assert registry.get_state("s" * 64).get()["refcount"] == 0


def test_submit_without_a_job_runner_is_an_internal_error(registry: RegistryProxy) -> None:
    with pytest.raises(ApiError) as raised:
        registry.submit_job(job()).get()
    assert raised.value.status == 500
    assert registry.ping().get() is True, "a failing message does not kill the registry"
    assert registry.list_jobs(None).get() == [], "nothing half-created"


def test_events_reach_live_subscribers_in_order(tmp_path: Path) -> None:
    ref, registry = start_registry(settings(tmp_path, job_actor_factory=idle_job_actor))
    try:
        registry.submit_job(job()).get()
        sub = registry.subscribe_events("a" * 32, 0, None).get()
        assert sub is not None and sub.total == 1
        assert [e["status"] for e in sub.backlog] == ["queued"]
        registry.record_event("a" * 32, {"type": "log", "ts": "t1", "message": "one"}).get()
        registry.record_event("a" * 32, {"message": "two", "ts": "t2", "type": "log"}).get()
        registry.finish_job("a" * 32).get()
        received = []
        while (item := sub.mailbox.get(timeout=5)) is not END:
            received.append(item)
        assert [e["message"] for e in received] == ["one", "two"]
        assert list(received[1]) == ["type", "ts", "message"], "canonical field order"
        ranged = registry.subscribe_events("a" * 32, 1, 2).get()
        assert [e["message"] for e in ranged.backlog] == ["one"]
    finally:
        for job_actor in idle_job_actor.started:  # finish_job made the registry forget it
            job_actor.stop()
        ref.stop()


def test_a_batch_of_events_is_stored_and_published_in_order(tmp_path: Path) -> None:
    ref, registry = start_registry(settings(tmp_path, job_actor_factory=idle_job_actor))
    try:
        registry.submit_job(job()).get()
        sub = registry.subscribe_events("a" * 32, 0, None).get()
        assert sub is not None
        batch = [{"message": f"line {n}", "ts": f"t{n}", "type": "log"} for n in range(700)]
        assert registry.record_events("a" * 32, batch).get() == 701, "the next index"
        registry.record_event("a" * 32, {"type": "log", "ts": "t", "message": "after"}).get()
        registry.finish_job("a" * 32).get()
        received = []
        while (item := sub.mailbox.get(timeout=5)) is not END:
            received.append(item["message"])
        assert received == [f"line {n}" for n in range(700)] + ["after"]
        stored = registry.subscribe_events("a" * 32, 699, 702).get()
        assert [e["message"] for e in stored.backlog] == ["line 698", "line 699", "after"]
        assert list(stored.backlog[0]) == ["type", "ts", "message"], "canonical field order"
    finally:
        for job_actor in idle_job_actor.started:
            job_actor.stop()
        ref.stop()


def test_a_state_page_is_read_by_keyset(registry: RegistryProxy) -> None:
    for n in range(5):
        registry.insert_state(
            StateRecord(f"{n}" * 64, None, "img", "psql", "", "2026-01-01T00:00:00Z", n)
        ).get()
    first = registry.list_states_page({"image": "img"}, 0, 3).get()
    rest = registry.list_states_page({"image": "img"}, first.next_key, 3).get()
    assert rest.next_key is None
    assert [s["state_id"][0] for s in first.rows + rest.rows] == list("01234")


def test_subscribe_to_unknown_job_is_none(registry: RegistryProxy) -> None:
    assert registry.subscribe_events("0" * 32, 0, None).get() is None


def test_cancel_of_a_job_without_worker_fails_it(tmp_path: Path) -> None:
    ref, registry = start_registry(settings(tmp_path, job_actor_factory=idle_job_actor))
    try:
        registry.submit_job(job()).get()
        idle_job_actor.started[-1].stop()  # the worker is gone (as before recovery)
        check_cancel_without_worker(registry)
    finally:
        ref.stop()


def check_cancel_without_worker(registry: RegistryProxy) -> None:
    status, body = registry.cancel_job("a" * 32).get()
    assert status == 202
    assert body["status"] == "failed"
    assert body["error"] == {"code": "cancelled", "message": "job cancelled"}
    status, _ = registry.cancel_job("a" * 32).get()
    assert status == 200
    assert registry.cancel_job("b" * 32).get() is None


def test_unusable_database_fails_start_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_text("this is not sqlite")
    with pytest.raises(RegistryStartError) as raised:
        start_registry(
            RegistrySettings(tmp_path / "state.db", ConfigStore(tmp_path / "config.json"))
        )
    assert "database" in str(raised.value).lower()
    assert pykka.ActorRegistry.get_by_class_name("RegistryActor") == []


def test_begin_shutdown_orders_children(tmp_path: Path) -> None:
    stopped: queue.Queue[str] = queue.Queue()

    class Child(pykka.ThreadingActor):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def on_stop(self) -> None:
            stopped.put(self.name)

    first = Child.start("snapshot-a")
    second = Child.start("snapshot-b")
    ref, proxy = start_registry(
        RegistrySettings(
            tmp_path / "state.db", ConfigStore(tmp_path / "config.json"), children=(first, second)
        )
    )
    try:
        children = proxy.begin_shutdown().get()
        for child in children:
            child.stop()
        assert [stopped.get(timeout=5) for _ in range(2)] == ["snapshot-b", "snapshot-a"]
        with pytest.raises(ApiError) as raised:
            proxy.submit_job(job()).get()
        assert raised.value.status == 503
    finally:
        ref.stop()


# -- retention keeps what clients may still read (SPEC §0.1) ---------------------------------


def _finished_jobs(registry: RegistryProxy, finished: list[str]) -> list[str]:
    """One terminal job per `finished_at` stamp, all with signature `sig`, oldest first."""
    ids = []
    for index, stamp in enumerate(finished):
        job_id = f"{index:032x}"
        registry.submit_job(job(job_id)).get()
        registry.update_job(
            job_id, {"status": "succeeded", "finished_at": stamp, "signature": "sig"}
        ).get()
        ids.append(job_id)
    return ids


@pytest.mark.parametrize(
    ("min_age", "expected"),
    [
        ("0s", [1, 0]),  # beyond the newest two: both older ones go (newest first)
        ("5m", [0]),  # the one that finished a minute ago is kept for its client
        ("2h", []),
    ],
)
def test_retention_spares_recently_finished_jobs(
    tmp_path: Path, min_age: str, expected: list[int]
) -> None:
    ref, registry = start_registry(settings(tmp_path, job_actor_factory=idle_job_actor))
    try:
        registry.config_patch("orchestrator.jobs.minAge", min_age).get()
        now = time.time()
        ages = (3600, 60, 10, 5)
        stamps = [format_rfc3339(datetime.fromtimestamp(now - age, UTC)) for age in ages]
        ids = _finished_jobs(registry, stamps)
        assert registry.retention_victims("sig").get() == [ids[i] for i in expected]
    finally:
        ref.stop()
        _stop_idle_jobs()


def test_retention_spares_a_job_whose_events_are_being_read(tmp_path: Path) -> None:
    ref, registry = start_registry(settings(tmp_path, job_actor_factory=idle_job_actor))
    try:
        registry.config_patch("orchestrator.jobs.minAge", "0s").get()
        ids = _finished_jobs(registry, [f"2026-01-01T00:00:0{i}Z" for i in range(4)])
        reading = registry.subscribe_events(ids[0], 0, None).get()
        assert reading is not None
        assert registry.retention_victims("sig").get() == [ids[1]]
        # The reader finishes: its job may go now, and unsubscribing says which signature
        # to trim again; a second unsubscribe of the same stream changes nothing.
        assert registry.unsubscribe_events(ids[0], reading.token).get() == "sig"
        assert registry.unsubscribe_events(ids[0], reading.token).get() == "sig"
        assert registry.retention_victims("sig").get() == [ids[1], ids[0]]
        # Nothing left to trim: the last stream's end asks for nothing.
        registry.delete_job_rows([ids[1], ids[0]]).get()
        again = registry.subscribe_events(ids[2], 0, None).get()
        assert registry.unsubscribe_events(ids[2], again.token).get() is None
        # A stream of an unfinished job never asks for trimming.
        registry.submit_job(job("f" * 32)).get()
        live = registry.subscribe_events("f" * 32, 0, None).get()
        assert registry.unsubscribe_events("f" * 32, live.token).get() is None
    finally:
        ref.stop()
        _stop_idle_jobs()


def _stop_idle_jobs() -> None:
    for started in idle_job_actor.started:
        started.stop()


def pooled_hit(job_id: str, instance_id: str, ts: str = "2026-01-01T00:00:01Z") -> PooledHit:
    """A finished cache hit as jobs/pooled_hit.py hands it over (one step, one instance),
    every stamp `ts`."""
    state = "s" * 64
    plan = PlanTask(task_id="plan", type="plan", planner_kind="psql")
    step = PlanTask(
        task_id="execute-0",
        type="state_execute",
        input_kind="image",
        input_id="img@x",
        task_hash="h" * 64,
        output_state_id=state,
        cached=True,
    )
    instance_task = PlanTask(
        task_id="prepare-instance",
        type="prepare_instance",
        input_kind="state",
        input_id=state,
        instance_mode="ephemeral",
    )
    rows = [task.to_task_row(job_id, i) for i, task in enumerate([plan, step, instance_task])]
    result = {"dsn": "postgres://sqlrs:pw@127.0.0.1:5999/postgres", "instance_id": instance_id}
    done = {"status": "succeeded", "finished_at": ts}
    return PooledHit(
        record=job(job_id),
        planning=[
            {"type": "status", "ts": ts, "status": "queued"},
            RowChange({"status": "running", "started_at": ts}),
            {"type": "status", "ts": ts, "status": "running"},
            RowChange({"status": "running", "started_at": ts}, "plan"),
            {"type": "task", "ts": ts, "task_id": "plan", "status": "running"},
        ],
        tasks=rows,
        signature="g" * 64,
        finishing=[
            *(
                item
                for task in ("plan", "execute-0", "prepare-instance")
                for item in (
                    RowChange(done, task),
                    {"type": "task", "ts": ts, "task_id": task, "status": "succeeded"},
                )
            ),
            RowChange({**done, "result": result}),
            {"type": "status", "ts": ts, "status": "succeeded"},
            {"type": "result", "ts": ts, "result": result},
        ],
        instance=InstanceRecord(
            instance_id, state, "img@x", ts, "host:1", "/x/runtime", job_id, secret="pw"
        ),
        handle=ServerHandle("host:1", Path("/x/runtime/data"), "127.0.0.1", 5999, password="pw"),
    )


def seed_state(registry: RegistryProxy) -> None:
    record = StateRecord("s" * 64, None, "img@x", "psql", "-c x", "2026-01-01T00:00:00Z", 10)
    assert registry.insert_state(record).get()


def test_a_pooled_hit_is_recorded_finished_in_one_message(registry: RegistryProxy) -> None:
    seed_state(registry)
    job_id, instance_id = "a" * 32, "i" * 32
    recorded = registry.record_pooled_hit(pooled_hit(job_id, instance_id)).get()
    assert not recorded.retention_due, "the signature has no other job"
    assert recorded.accepted == {
        "job_id": job_id,
        "status_url": f"/v1/prepare-jobs/{job_id}",
        "events_url": f"/v1/prepare-jobs/{job_id}/events",
        "status": "queued",
    }
    status = registry.job_status(job_id).get()
    assert status["status"] == "succeeded"
    assert status["result"]["instance_id"] == instance_id
    assert [t["task_id"] for t in status["tasks"]] == ["plan", "execute-0", "prepare-instance"]
    assert {t["status"] for t in registry.task_rows(job_id).get()} == {"succeeded"}
    # The plan's `running` row change came before its row existed, as in a job: no start.
    assert registry.task_rows(job_id).get()[0]["started_at"] is None
    assert registry.job_row(job_id).get()["signature"] == "g" * 64
    sub = registry.subscribe_events(job_id, 0, None).get()
    assert sub.terminal, "no job actor: the stream ends after the backlog"
    assert [(e["type"], e.get("status"), e.get("task_id")) for e in sub.backlog] == [
        ("status", "queued", None),
        ("status", "running", None),
        ("task", "running", "plan"),
        ("task", "succeeded", "plan"),
        ("task", "succeeded", "execute-0"),
        ("task", "succeeded", "prepare-instance"),
        ("status", "succeeded", None),
        ("result", None, None),
    ]
    registry.unsubscribe_events(job_id, sub.token).get()
    instance = registry.instance_row(instance_id).get()
    assert instance["job_id"] == job_id and instance["secret"] == "pw"
    assert registry.get_state("s" * 64).get()["refcount"] == 1
    assert registry.active_job_count().get() == 0


def test_a_pooled_hit_says_when_retention_has_a_job_to_trim(tmp_path: Path) -> None:
    """Only then does the short path ask the deletion service to trim (SPEC §4.11)."""
    ref, registry = start_registry(settings(tmp_path, job_actor_factory=idle_job_actor))
    try:
        seed_state(registry)
        registry.config_patch("orchestrator.jobs.minAge", "0s").get()
        signature = pooled_hit("a" * 32, "i" * 32).signature
        stamps = ("2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z")
        ids = [f"{n:032x}" for n in (1, 2)]
        for job_id, stamp in zip(ids, stamps, strict=True):
            registry.submit_job(job(job_id)).get()
            registry.update_job(
                job_id, {"status": "succeeded", "finished_at": stamp, "signature": signature}
            ).get()
        first = registry.record_pooled_hit(pooled_hit("a" * 32, "i" * 32)).get()
        assert first.retention_due, "three finished jobs of one signature: the oldest may go"
        assert registry.retention_victims(signature).get() == [ids[0]]
        registry.delete_job_rows([*ids, "a" * 32]).get()
        registry.config_patch("orchestrator.jobs.minAge", "1h").get()
        now = now_rfc3339()
        registry.record_pooled_hit(pooled_hit("b" * 32, "j" * 32, now)).get()
        third = registry.record_pooled_hit(pooled_hit("c" * 32, "k" * 32, now)).get()
        assert not third.retention_due, "the job beyond the newest two finished just now"
    finally:
        ref.stop()
        _stop_idle_jobs()


def test_a_recorded_hit_stays_recorded_when_retention_cannot_be_read(
    registry: RegistryProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The question comes after the commit: a failure answers "trim" (the trim asks again
    and reports), never undoes the hit."""

    def broken(*_args: object) -> list[str]:
        raise OperationalError("SELECT", {}, sqlite3.OperationalError("disk I/O error"))

    seed_state(registry)
    monkeypatch.setattr(JobQueries, "retention_candidates", broken)
    recorded = registry.record_pooled_hit(pooled_hit("a" * 32, "i" * 32)).get()
    assert recorded.retention_due
    assert registry.job_row("a" * 32).get()["status"] == "succeeded"
    assert registry.instance_row("i" * 32).get() is not None


def test_a_refused_pooled_hit_leaves_nothing(registry: RegistryProxy) -> None:
    """The instance row is written last: when it is refused (here: its id exists), the job,
    its tasks and events are rolled back with it."""
    seed_state(registry)
    registry.record_pooled_hit(pooled_hit("a" * 32, "i" * 32)).get()
    with pytest.raises(Exception):  # noqa: B017 - whatever the database raises
        registry.record_pooled_hit(pooled_hit("b" * 32, "i" * 32)).get()
    assert registry.job_row("b" * 32).get() is None
    assert registry.task_rows("b" * 32).get() == []
    assert registry.subscribe_events("b" * 32, 0, None).get() is None
    assert [j["job_id"] for j in registry.list_jobs(None).get()] == ["a" * 32]
    assert registry.ping().get() is True


def test_no_pooled_hit_is_recorded_while_the_engine_stops(registry: RegistryProxy) -> None:
    seed_state(registry)
    registry.begin_shutdown().get()
    with pytest.raises(ApiError) as raised:
        registry.record_pooled_hit(pooled_hit("a" * 32, "i" * 32)).get()
    assert raised.value.status == 503
    assert registry.list_jobs(None).get() == []
    assert registry.instance_row("i" * 32).get() is None


def test_a_pooled_hit_adopts_the_instance_actor_its_caller_started(
    registry: RegistryProxy,
) -> None:
    seed_state(registry)
    actor = _IdleJob.start()
    try:
        registry.record_pooled_hit(pooled_hit("a" * 32, "i" * 32), actor).get()
        assert registry.instance_actor("i" * 32).get() is actor
    finally:
        actor.stop()
