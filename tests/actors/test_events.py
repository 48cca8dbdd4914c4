"""Event mailboxes (`EventHub`, `Subscription`, `END`): how job events reach live streams.

The hub is plain logic owned by the Registry's thread, while readers drain their mailboxes on
HTTP threads; the tests cover both halves: the hub's bookkeeping on its own, and the
subscriptions the Registry hands out (backlog range plus mailbox, with no gap or duplicate).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from sqlrs_engine.actors.events import END, Event, EventHub, Subscription
from sqlrs_engine.actors.registry import RegistryProxy, RegistrySettings, start_registry
from sqlrs_engine.config.store import ConfigStore
from sqlrs_engine.persistence.jobs import JobRecord

JOB = "a" * 32
OTHER = "b" * 32
WAIT = 10.0


def event(n: int) -> Event:
    return {"type": "log", "ts": f"2026-01-01T00:00:{n % 60:02d}Z", "message": f"line {n}"}


def drain(mailbox: queue.Queue[Any]) -> list[Any]:
    """Everything in a mailbox now, without waiting."""
    items = []
    while True:
        try:
            items.append(mailbox.get_nowait())
        except queue.Empty:
            return items


def read_until_end(sub: Subscription) -> list[Event]:
    """What a stream sends after its backlog: mailbox items up to END."""
    received: list[Event] = []
    while (item := sub.mailbox.get(timeout=WAIT)) is not END:
        assert isinstance(item, dict)
        received.append(item)
    return received


# -- EventHub alone -----------------------------------------------------------------------------


def test_a_subscription_carries_its_backlog_and_then_every_later_event_in_order() -> None:
    hub = EventHub()
    backlog = [event(0), event(1)]
    sub = hub.subscribe(JOB, backlog, total=2, terminal=False)
    assert (sub.backlog, sub.total, sub.terminal) == (backlog, 2, False)
    assert sub.mailbox.empty(), "the backlog is not repeated in the mailbox"
    for n in range(2, 6):
        hub.publish(JOB, event(n))
    hub.close(JOB)
    assert read_until_end(sub) == [event(n) for n in range(2, 6)]
    assert sub.mailbox.empty(), "nothing after END"


def test_a_terminal_job_gets_end_at_once_and_no_registration() -> None:
    """A finished job's stream is its backlog only; nothing can be published for it later."""
    hub = EventHub()
    sub = hub.subscribe(JOB, [event(0)], total=1, terminal=True)
    assert hub.subscriber_count(JOB) == 0
    hub.publish(JOB, event(1))
    assert drain(sub.mailbox) == [END]


def test_tokens_are_unique_across_jobs() -> None:
    hub = EventHub()
    tokens = [
        hub.subscribe(job, [], 0, terminal).token
        for job in (JOB, OTHER)
        for terminal in (False, True, False)
    ]
    assert len(set(tokens)) == len(tokens)


def test_events_reach_only_the_subscribers_of_their_job() -> None:
    hub = EventHub()
    mine = hub.subscribe(JOB, [], 0, False)
    theirs = hub.subscribe(OTHER, [], 0, False)
    hub.publish(JOB, event(1))
    hub.publish("c" * 32, event(2))  # nobody listens: a no-op
    assert drain(mine.mailbox) == [event(1)]
    assert drain(theirs.mailbox) == []


@pytest.mark.parametrize(
    ("unsubscribe", "left"),
    [
        ([("first", JOB)], {JOB: 1}),
        ([("first", JOB), ("second", JOB)], {JOB: 0}),
        ([("first", OTHER)], {JOB: 2}),  # a token only counts under its own job
        ([("first", JOB), ("first", JOB)], {JOB: 1}),  # twice: a no-op
        ([("unknown", JOB)], {JOB: 2}),
    ],
)
def test_unsubscribe(unsubscribe: list[tuple[str, str]], left: dict[str, int]) -> None:
    hub = EventHub()
    subs = {"first": hub.subscribe(JOB, [], 0, False), "second": hub.subscribe(JOB, [], 0, False)}
    tokens = {name: sub.token for name, sub in subs.items()} | {"unknown": 999}
    for name, job_id in unsubscribe:
        hub.unsubscribe(job_id, tokens[name])
    assert {job: hub.subscriber_count(job) for job in left} == left
    hub.publish(JOB, event(1))
    gone = {name for name, job_id in unsubscribe if job_id == JOB and name in subs}
    for name, sub in subs.items():
        assert drain(sub.mailbox) == ([] if name in gone else [event(1)])


def test_close_ends_every_stream_of_the_job_once() -> None:
    hub = EventHub()
    subs = [hub.subscribe(JOB, [], 0, False) for _ in range(3)]
    other = hub.subscribe(OTHER, [], 0, False)
    hub.close(JOB)
    hub.close(JOB)
    hub.publish(JOB, event(1))
    assert [drain(sub.mailbox) for sub in subs] == [[END]] * 3
    assert hub.subscriber_count(JOB) == 0
    assert drain(other.mailbox) == [] and hub.subscriber_count(OTHER) == 1


def test_close_all_ends_every_stream_of_every_job() -> None:
    """What the Registry does when it stops: no stream waits forever for a dead engine."""
    hub = EventHub()
    jobs = [f"{n:032x}" for n in range(5)]
    subs = [hub.subscribe(job, [], 0, False) for job in jobs for _ in range(2)]
    hub.close_all()
    assert all(drain(sub.mailbox) == [END] for sub in subs)
    assert all(hub.subscriber_count(job) == 0 for job in jobs)
    hub.close_all()  # nothing left: a no-op
    assert all(sub.mailbox.empty() for sub in subs)


def test_many_subscribers_each_receive_every_event() -> None:
    hub = EventHub()
    subs = [hub.subscribe(JOB, [], 0, False) for _ in range(200)]
    for n in range(20):
        hub.publish(JOB, event(n))
    hub.close(JOB)
    expected = [event(n) for n in range(20)] + [END]
    assert all(drain(sub.mailbox) == expected for sub in subs)


def test_readers_on_other_threads_see_every_event_in_order() -> None:
    """The real split: one thread publishes (the Registry), each stream reads on its own."""
    hub = EventHub()
    subs = [hub.subscribe(JOB, [], 0, False) for _ in range(8)]
    results: list[list[Event]] = [[] for _ in subs]

    def reader(i: int) -> None:
        results[i] = read_until_end(subs[i])

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(len(subs))]
    for thread in threads:
        thread.start()
    for n in range(2000):
        hub.publish(JOB, event(n))
    hub.close(JOB)
    for thread in threads:
        thread.join(WAIT)
    assert all(result == [event(n) for n in range(2000)] for result in results)


def test_a_reader_that_never_reads_does_not_block_publishing() -> None:
    """By design the mailbox is unbounded: publishing never waits for a reader, so a stalled
    stream only grows its own queue (until it unsubscribes) and others are unaffected."""
    hub = EventHub()
    stalled = hub.subscribe(JOB, [], 0, False)
    live = hub.subscribe(JOB, [], 0, False)
    assert stalled.mailbox.maxsize == 0, "unbounded"
    received: list[Event] = []
    reader = threading.Thread(target=lambda: received.extend(read_until_end(live)))
    reader.start()
    count = 50_000
    for n in range(count):
        hub.publish(JOB, event(n))
    hub.close(JOB)
    reader.join(WAIT)
    assert len(received) == count
    assert stalled.mailbox.qsize() == count + 1, "every event and END, held for the reader"
    hub.unsubscribe(JOB, stalled.token)  # already closed: a no-op, the queue is the reader's


# -- subscriptions as the Registry hands them out -----------------------------------------------


class _IdleJob(pykka.ThreadingActor):
    """Stands in for a PrepareJob actor, so a submitted job stays live."""


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProxy]:
    jobs: list[pykka.ActorRef[Any]] = []

    def start_job(_job_id: str, _registry: RegistryProxy) -> pykka.ActorRef[Any]:
        ref = _IdleJob.start()
        jobs.append(ref)
        return ref

    ref, proxy = start_registry(
        RegistrySettings(
            tmp_path / "state.db",
            ConfigStore(tmp_path / "config.json"),
            job_actor_factory=start_job,
        )
    )
    try:
        yield proxy
    finally:
        ref.stop()
        for job in jobs:
            job.stop()


def subscribe(registry: RegistryProxy, start: int = 0, stop: int | None = None) -> Subscription:
    sub = registry.subscribe_events(JOB, start, stop).get(timeout=WAIT)
    assert sub is not None, "the job exists"
    return sub


def submit(registry: RegistryProxy, log_lines: int) -> list[Event]:
    """A live job with its `queued` event and `log_lines` log events; returns all of them."""
    record = JobRecord(
        JOB, "psql", "postgres:15", False, "-c select 1", "{}", "2026-01-01T00:00:00Z"
    )
    registry.submit_job(record).get(timeout=WAIT)
    for n in range(log_lines):
        registry.record_event(JOB, event(n)).get(timeout=WAIT)
    sub = subscribe(registry)
    registry.unsubscribe_events(JOB, sub.token).get(timeout=WAIT)
    return list(sub.backlog)


def finish(registry: RegistryProxy) -> None:
    """What a job's worker does last: a terminal status, then `finish_job` (ends streams)."""
    fields = {"status": "succeeded", "finished_at": "2026-01-01T00:01:00Z"}
    registry.update_job(JOB, fields).get(timeout=WAIT)
    registry.finish_job(JOB).get(timeout=WAIT)


@pytest.mark.parametrize(
    ("start", "stop", "indexes"),
    [
        (0, None, [0, 1, 2, 3, 4]),
        (2, None, [2, 3, 4]),
        (5, None, []),  # from the end: only later events
        (1, 3, [1, 2]),  # stop is exclusive (events=1-2)
        (3, 4, [3]),
        (4, 99, [4]),  # a stop past the end is cut at what exists
        (9, None, []),
    ],
)
def test_the_backlog_is_the_requested_range_and_total_counts_everything(
    registry: RegistryProxy, start: int, stop: int | None, indexes: list[int]
) -> None:
    stored = submit(registry, log_lines=4)
    sub = subscribe(registry, start, stop)
    assert sub.backlog == [stored[i] for i in indexes]
    assert (sub.total, sub.terminal) == (5, False)
    registry.record_event(JOB, event(99)).get(timeout=WAIT)
    assert drain(sub.mailbox)[0]["message"] == "line 99", "live events whatever the range"


def test_backlog_and_mailbox_have_no_gap_and_no_duplicate_under_concurrent_writes(
    registry: RegistryProxy,
) -> None:
    """Subscribing while a worker keeps appending: the backlog is exactly what was stored
    before, the mailbox exactly what came after (the Registry does both in one message)."""
    submit(registry, log_lines=0)
    count = 300
    subs: list[Subscription] = [subscribe(registry)]

    def writer() -> None:
        for n in range(count):
            registry.record_event(JOB, event(n)).get(timeout=WAIT)
        finish(registry)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive() and len(subs) < 500:  # subscriptions land between the writes
        subs.append(subscribe(registry))
    thread.join(WAIT)
    messages = ["queued"] + [f"line {n}" for n in range(count)]
    for sub in subs:
        seen = sub.backlog + read_until_end(sub)
        assert [e.get("message", e.get("status")) for e in seen] == messages
        assert sub.total == len(sub.backlog)


def test_subscribing_to_a_finished_job_is_backlog_then_end(registry: RegistryProxy) -> None:
    stored = submit(registry, log_lines=2)
    finish(registry)
    sub = subscribe(registry, 1)
    assert sub.terminal and sub.total == 3
    assert sub.backlog == stored[1:]
    assert drain(sub.mailbox) == [END]


def test_a_stopping_registry_ends_open_streams(tmp_path: Path) -> None:
    ref, registry = start_registry(
        RegistrySettings(
            tmp_path / "state.db",
            ConfigStore(tmp_path / "config.json"),
            job_actor_factory=lambda _job, _reg: _IdleJob.start(),
        )
    )
    try:
        submit(registry, log_lines=1)
        sub = subscribe(registry)
    finally:
        ref.stop()
        for job in pykka.ActorRegistry.get_by_class(_IdleJob):
            job.stop()
    assert sub.mailbox.get(timeout=WAIT) is END
