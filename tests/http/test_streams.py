"""Job event streams: event ranges, and the stream source over a subscription."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import ujson

from sqlrs_engine.actors.events import END, Event, EventHub, Subscription
from sqlrs_engine.http.handoff import stream_response
from sqlrs_engine.http.streams import (
    EventRange,
    EventStream,
    content_range,
    parse_events_range,
    range_unsatisfiable,
    whole_response,
)

JOB = "a" * 32


# -- ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("events=3-", EventRange(3, None)),
        ("events=0-", EventRange(0, None)),
        ("events=2-4", EventRange(2, 5)),
        ("events=3-3", EventRange(3, 4)),
        ("events=4-2", None),  # M < N is malformed, so ignored
        ("EVENTS=1-2", EventRange(1, 3)),
        ("Events=7-", EventRange(7, None)),
        ("  events = 1 - 2  ", EventRange(1, 3)),
        ("events=123456789012345678-", EventRange(123456789012345678, None)),
        # Longer numbers mean "past every event" and stay a valid SQLite INTEGER.
        ("events=12345678901234567890-", EventRange(2**62, None)),
        ("events=0-99999999999999999999", EventRange(0, 2**62 + 1)),
        ("events=" + "1" * 5000 + "-", EventRange(2**62, None)),
        ("events=\u0661-", None),  # an Arabic-Indic digit is not an ASCII digit
        ("bytes=0-10", None),
        ("events=", None),
        ("events=-5", None),
        ("events=a-b", None),
        ("events=1", None),
        ("events=1-2,4-5", None),
        ("events=-1-", None),
        ("events 1-2", None),
    ],
)
def test_parse_events_range(header: str | None, expected: EventRange | None) -> None:
    """A malformed header must be ignored (None → full 200), never a 4xx."""
    assert parse_events_range(header) == expected


@pytest.mark.parametrize(
    ("start", "total", "terminal", "unsatisfiable"),
    [
        (0, 5, False, False),
        (4, 5, True, False),
        (5, 5, False, False),  # a running job: the next event will be index 5
        (5, 5, True, True),  # a finished job: no event 5 will ever exist
        (6, 5, False, True),  # past the next event, even for a running job
        (6, 5, True, True),
        (0, 0, False, False),
        (0, 0, True, True),
    ],
)
def test_range_unsatisfiable(start: int, total: int, terminal: bool, unsatisfiable: bool) -> None:
    """416 only when no event of the range exists now and (if finished) never will."""
    assert range_unsatisfiable(EventRange(start, None), total, terminal) is unsatisfiable


@pytest.mark.parametrize(
    ("requested", "total", "terminal", "header"),
    [
        (EventRange(2, 5), 10, False, "events 2-4/10"),
        (EventRange(2, 5), 10, True, "events 2-4/10"),
        (EventRange(2, 5), 5, False, "events 2-4/5"),  # end exactly at the last event
        (EventRange(2, 10), 5, True, "events 2-4/5"),  # finished: the end is known
        (EventRange(2, 10), 5, False, "events 2-*/5"),  # running: the end is not known yet
        (EventRange(2, None), 5, True, "events 2-4/5"),
        (EventRange(2, None), 5, False, "events 2-*/5"),
        (EventRange(5, None), 5, False, "events 5-*/5"),
        (EventRange(0, 1), 1, True, "events 0-0/1"),
    ],
)
def test_content_range(requested: EventRange, total: int, terminal: bool, header: str) -> None:
    """`events N-M/total`, with `*` for M only while the job may still add events."""
    assert content_range(requested, total, terminal) == header


# -- EventStream ---------------------------------------------------------------------------


def event(n: int) -> Event:
    return {"type": "log", "ts": f"2026-01-01T00:00:0{n}Z", "message": f"line {n}"}


class CloseCounter:
    """The `on_close` callback of a stream: in the engine it unsubscribes the mailbox."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def decoded(chunks: list[bytes]) -> list[Any]:
    lines = b"".join(chunks).splitlines(keepends=True)
    assert all(line.endswith(b"\n") for line in lines)
    return [ujson.loads(line) for line in lines]


def subscribe(hub: EventHub, backlog: list[Event], total: int, terminal: bool) -> Subscription:
    return hub.subscribe(JOB, backlog, total, terminal)


def served(sub: Subscription, start: int, stop: int | None, closed: CloseCounter) -> list[bytes]:
    """The whole body, served in place (no stream loop takes the handoff here)."""
    return list(stream_response(EventStream(sub, start, stop, closed)))


def test_sends_backlog_then_live_events_until_end() -> None:
    hub = EventHub()
    sub = subscribe(hub, [event(0), event(1)], total=2, terminal=False)
    hub.publish(JOB, event(2))
    hub.publish_many(JOB, [event(3)])
    hub.close(JOB)
    closed = CloseCounter()
    assert decoded(served(sub, 0, None, closed)) == [event(0), event(1), event(2), event(3)]
    assert closed.calls == 1


def test_a_finished_job_sends_only_the_backlog() -> None:
    """A terminal subscription already holds END: the stream ends without waiting."""
    sub = subscribe(EventHub(), [event(0), event(1)], total=2, terminal=True)
    closed = CloseCounter()
    assert decoded(served(sub, 0, None, closed)) == [event(0), event(1)]
    assert closed.calls == 1


def test_stops_at_the_range_end_inside_the_backlog() -> None:
    """events=0-1 of a running job: the mailbox (no END in it) must not be read at all."""
    hub = EventHub()
    sub = subscribe(hub, [event(0), event(1)], total=5, terminal=False)
    hub.publish(JOB, event(5))
    closed = CloseCounter()
    assert decoded(served(sub, 0, 2, closed)) == [event(0), event(1)]
    assert sub.mailbox.qsize() == 1, "the live event was left alone"
    assert closed.calls == 1


def test_stops_at_the_range_end_among_live_events() -> None:
    """events=1-3 with two events stored: one from the backlog, then live ones up to index 3."""
    hub = EventHub()
    sub = subscribe(hub, [event(1)], total=2, terminal=False)
    for n in (2, 3, 4):
        hub.publish(JOB, event(n))
    assert decoded(served(sub, 1, 4, CloseCounter())) == [event(1), event(2), event(3)]


def test_from_the_next_event_follows_live_ones() -> None:
    """events=2- with two stored: empty backlog, live events count from index 2."""
    hub = EventHub()
    sub = subscribe(hub, [], total=2, terminal=False)
    for n in (2, 3, 4):
        hub.publish(JOB, event(n))
    assert decoded(served(sub, 2, 4, CloseCounter())) == [event(2), event(3)]


def test_pull_respects_its_limit_and_keeps_the_order() -> None:
    hub = EventHub()
    sub = subscribe(hub, [event(0), event(1), event(2)], total=3, terminal=False)
    hub.publish_many(JOB, [event(3), event(4)])
    hub.close(JOB)
    stream = EventStream(sub, 0, None, CloseCounter())
    pulls = [stream.pull(2) for _ in range(3)]
    assert [(len(lines), done) for lines, done in pulls] == [(2, False), (2, False), (1, True)]
    assert decoded([line for lines, _ in pulls for line in lines]) == [event(n) for n in range(5)]


def test_a_publish_wakes_the_attached_reader() -> None:
    """The stream loop sleeps until a mailbox wakes it; every publish must."""
    hub = EventHub()
    sub = subscribe(hub, [], total=0, terminal=False)
    woken = threading.Event()
    EventStream(sub, 0, None, CloseCounter()).attach(woken.set)
    assert not woken.is_set()
    hub.publish(JOB, event(0))
    assert woken.is_set()
    woken.clear()
    hub.publish_many(JOB, [event(1), event(2)])
    assert woken.is_set()


def test_attaching_to_a_mailbox_with_items_wakes_at_once() -> None:
    hub = EventHub()
    sub = subscribe(hub, [], total=0, terminal=False)
    hub.publish(JOB, event(0))
    woken = threading.Event()
    EventStream(sub, 0, None, CloseCounter()).attach(woken.set)
    assert woken.is_set()


def test_waits_for_later_events() -> None:
    hub = EventHub()
    sub = subscribe(hub, [event(0)], total=1, terminal=False)

    def later() -> None:
        hub.publish(JOB, event(1))
        hub.close(JOB)

    timer = threading.Timer(0.2, later)
    timer.start()
    try:
        lines = served(sub, 0, None, CloseCounter())
    finally:
        timer.join()
    assert decoded(lines) == [event(0), event(1)]


def test_closed_early_by_the_server_still_cleans_up_once() -> None:
    """The WSGI server closes the body when the client leaves: unsubscribe, exactly once."""
    hub = EventHub()
    sub = subscribe(hub, [event(0), event(1)], total=2, terminal=False)
    closed = CloseCounter()
    body = stream_response(EventStream(sub, 0, None, closed))
    next(body)
    body.close()
    body.close()
    assert closed.calls == 1


def test_cleans_up_when_an_event_cannot_be_encoded() -> None:
    sub = subscribe(EventHub(), [{"type": "log", "bad": object()}], total=1, terminal=True)
    closed = CloseCounter()
    with pytest.raises(TypeError):
        served(sub, 0, None, closed)
    assert closed.calls == 1


def test_end_marker_is_never_sent() -> None:
    """END is a sentinel object, not an event: it must not reach the client as a line."""
    sub = Subscription(token=1, total=0, terminal=False, backlog=[])
    sub.mailbox.put(event(0))
    sub.mailbox.put(END)
    sub.mailbox.put(event(1))
    assert decoded(served(sub, 0, None, CloseCounter())) == [event(0)]


# -- a finished job's events in one body ------------------------------------------------------


@pytest.mark.parametrize(
    ("backlog", "terminal", "max_events", "whole"),
    [
        (2, True, 1000, True),  # a finished job: everything is known now
        (0, True, 1000, True),  # ... even nothing (a range past its events is a 416 before)
        (3, True, 3, True),
        (4, True, 3, False),  # too many to hold as one body: streamed
        (2, False, 1000, False),  # a running job: more may come
    ],
)
def test_whole_body_only_when_nothing_is_still_to_come(
    backlog: int, terminal: bool, max_events: int, whole: bool
) -> None:
    events = [event(n) for n in range(backlog)]
    sub = subscribe(EventHub(), events, total=backlog, terminal=terminal)
    body = EventStream(sub, 0, None, CloseCounter()).whole_body(max_events)
    assert (body is not None) == whole
    if body is not None:
        assert decoded([body]) == events


def test_a_whole_body_is_what_the_stream_would_send() -> None:
    """The backlog of a range (what the Registry read for it) is the whole answer."""
    hub = EventHub()
    events = [event(2), event(3)]  # events=2-3 of a finished job of six
    streamed = served(subscribe(hub, events, total=6, terminal=True), 2, 4, CloseCounter())
    whole = EventStream(subscribe(hub, events, total=6, terminal=True), 2, 4, CloseCounter())
    assert whole.whole_body() == b"".join(streamed)


def test_a_whole_response_closes_its_stream_once_sent_or_abandoned() -> None:
    sub = subscribe(EventHub(), [event(0)], total=1, terminal=True)
    closed = CloseCounter()
    stream = EventStream(sub, 0, None, closed)
    body = stream.whole_body()
    assert body is not None
    response = whole_response(body, stream.close)
    assert next(response) == body
    assert closed.calls == 0, "open (retention spares the job) until the body is sent"
    assert list(response) == []
    assert closed.calls == 1
    abandoned = whole_response(body, CloseCounter())
    next(abandoned)
    abandoned.close()  # the client left: the server closes the body
    stream.close()
    assert closed.calls == 1
