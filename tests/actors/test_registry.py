"""The Registry actor alone, against a temporary SQLite file."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pykka
import pytest

from sqlrs_engine.actors.events import END
from sqlrs_engine.actors.registry import (
    RegistryProxy,
    RegistrySettings,
    RegistryStartError,
    start_registry,
)
from sqlrs_engine.clock import format_rfc3339
from sqlrs_engine.config.store import ConfigStore
from sqlrs_engine.errors import ApiError
from sqlrs_engine.persistence.jobs import JobRecord
from sqlrs_engine.persistence.metadata import StateRecord


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
