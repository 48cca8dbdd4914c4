"""NDJSON stream helpers: event ranges, disconnect detection on real sockets, mailbox draining."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import pytest
import ujson

from sqlrs_engine.actors.events import END, Event, EventHub, Subscription
from sqlrs_engine.http import streams
from sqlrs_engine.http.server import SOCKET_KEY
from sqlrs_engine.http.streams import (
    KEEPALIVE_IDLE_SECONDS,
    KEEPALIVE_INTERVAL_SECONDS,
    KEEPALIVE_PROBES,
    EventRange,
    client_gone,
    content_range,
    drain_events,
    parse_events_range,
    range_unsatisfiable,
    wait_for_slow_readers,
)

JOB = "a" * 32


# -- sockets -------------------------------------------------------------------------------


def _tcp_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """(the engine's side, the client's side) of one real loopback TCP connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, 0), family=family) as listener:
        client = socket.create_connection(listener.getsockname()[:2], timeout=5)
        server, _ = listener.accept()
    return server, client


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = _tcp_pair("127.0.0.1")
    try:
        yield server, client
    finally:
        server.close()
        client.close()


@pytest.fixture
def unix_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def _settle() -> None:
    """Loopback delivery is asynchronous by a hair; give the kernel a moment."""
    time.sleep(0.05)


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


# -- client_gone ---------------------------------------------------------------------------


def test_client_gone_without_a_socket_is_false() -> None:
    """Environs without our socket (tests, another server) must never end a stream."""
    assert client_gone({}) is False


def test_client_gone_on_an_open_connection_is_false(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _client = tcp_pair
    assert client_gone({SOCKET_KEY: server}) is False


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_client_gone_after_the_peer_closed_is_true(kind: str) -> None:
    server, client = _tcp_pair("127.0.0.1") if kind == "tcp" else socket.socketpair()
    try:
        client.close()
        _settle()
        assert client_gone({SOCKET_KEY: server}) is True
    finally:
        server.close()


def test_client_gone_after_a_reset_is_true(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    """An abortive close (RST) makes the peek fail with ECONNRESET: that is gone too."""
    server, client = tcp_pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    _settle()
    assert client_gone({SOCKET_KEY: server}) is True


def test_client_gone_with_unread_data_is_false(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """Readable because of data is not EOF; the peek must not consume the data either."""
    server, client = tcp_pair
    client.sendall(b"GET /next HTTP/1.1\r\n")
    _settle()
    assert client_gone({SOCKET_KEY: server}) is False
    assert server.recv(100) == b"GET /next HTTP/1.1\r\n", "the peek left the bytes in place"


def test_client_gone_keeps_the_socket_timeout(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """The non-blocking peek must not switch the connection to non-blocking mode."""
    server, client = tcp_pair
    server.settimeout(7.5)
    client.sendall(b"x")
    _settle()
    client_gone({SOCKET_KEY: server})
    assert server.gettimeout() == 7.5


# -- wait_for_slow_readers -----------------------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1",
            marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here"),
        ),
    ],
)
def test_wait_for_slow_readers_on_tcp(host: str) -> None:
    """No timeout and keepalive while streaming; the returned function brings the timeout back."""
    server, client = _tcp_pair(host)
    try:
        server.settimeout(10.0)
        restore = wait_for_slow_readers({SOCKET_KEY: server})
        assert server.gettimeout() is None
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        tcp = socket.IPPROTO_TCP
        assert server.getsockopt(tcp, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE_SECONDS
        assert server.getsockopt(tcp, socket.TCP_KEEPINTVL) == KEEPALIVE_INTERVAL_SECONDS
        assert server.getsockopt(tcp, socket.TCP_KEEPCNT) == KEEPALIVE_PROBES
        restore()
        assert server.gettimeout() == 10.0
    finally:
        server.close()
        client.close()


def test_wait_for_slow_readers_on_a_unix_socket_only_clears_the_timeout(
    unix_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _client = unix_pair
    server.settimeout(3.0)
    restore = wait_for_slow_readers({SOCKET_KEY: server})
    assert server.gettimeout() is None
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    restore()
    assert server.gettimeout() == 3.0


def test_wait_for_slow_readers_without_a_socket_is_a_no_op() -> None:
    restore = wait_for_slow_readers({})
    restore()  # must not raise


def test_wait_for_slow_readers_on_a_closed_socket_does_not_raise() -> None:
    """The client may already be gone; the stream then learns it from its next write."""
    server, client = socket.socketpair()
    client.close()
    server.close()
    restore = wait_for_slow_readers({SOCKET_KEY: server})
    restore()


def test_restore_after_the_socket_was_closed_does_not_raise(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _client = tcp_pair
    restore = wait_for_slow_readers({SOCKET_KEY: server})
    server.close()
    restore()


# -- drain_events --------------------------------------------------------------------------


def event(n: int) -> Event:
    return {"type": "log", "ts": f"2026-01-01T00:00:0{n}Z", "message": f"line {n}"}


class CloseCounter:
    """The `on_close` callback of a stream: in the engine it unsubscribes the mailbox."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Poll every 20 ms instead of 250 ms so that the waiting cases stay fast."""
    monkeypatch.setattr(streams, "POLL_SECONDS", 0.02)


def decoded(lines: list[bytes]) -> list[Any]:
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    return [ujson.loads(line) for line in lines]


def subscribe(hub: EventHub, backlog: list[Event], total: int, terminal: bool) -> Subscription:
    return hub.subscribe(JOB, backlog, total, terminal)


def test_drain_sends_backlog_then_live_events_until_end(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    hub = EventHub()
    sub = subscribe(hub, [event(0), event(1)], total=2, terminal=False)
    hub.publish(JOB, event(2))
    hub.publish(JOB, event(3))
    hub.close(JOB)
    closed = CloseCounter()
    server, _client = tcp_pair
    lines = list(drain_events(sub, 0, None, {SOCKET_KEY: server}, closed))
    assert decoded(lines) == [event(0), event(1), event(2), event(3)]
    assert closed.calls == 1


def test_drain_of_a_finished_job_sends_only_the_backlog() -> None:
    """A terminal subscription already holds END: the stream ends without waiting."""
    sub = subscribe(EventHub(), [event(0), event(1)], total=2, terminal=True)
    closed = CloseCounter()
    assert decoded(list(drain_events(sub, 0, None, {}, closed))) == [event(0), event(1)]
    assert closed.calls == 1


def test_drain_stops_at_the_range_end_inside_the_backlog() -> None:
    """events=0-1 of a running job: the mailbox (no END in it) must not be read at all."""
    hub = EventHub()
    sub = subscribe(hub, [event(0), event(1)], total=5, terminal=False)
    hub.publish(JOB, event(5))
    closed = CloseCounter()
    lines = list(drain_events(sub, 0, 2, {}, closed))
    assert decoded(lines) == [event(0), event(1)]
    assert sub.mailbox.qsize() == 1, "the live event was left alone"
    assert closed.calls == 1


def test_drain_stops_at_the_range_end_among_live_events() -> None:
    """events=1-3 with two events stored: one from the backlog, then live ones up to index 3."""
    hub = EventHub()
    sub = subscribe(hub, [event(1)], total=2, terminal=False)
    for n in (2, 3, 4):
        hub.publish(JOB, event(n))
    closed = CloseCounter()
    lines = list(drain_events(sub, 1, 4, {}, closed))
    assert decoded(lines) == [event(1), event(2), event(3)]
    assert closed.calls == 1


def test_drain_from_the_next_event_follows_live_ones() -> None:
    """events=2- with two stored: empty backlog, live events count from index 2."""
    hub = EventHub()
    sub = subscribe(hub, [], total=2, terminal=False)
    for n in (2, 3, 4):
        hub.publish(JOB, event(n))
    lines = list(drain_events(sub, 2, 4, {}, CloseCounter()))
    assert decoded(lines) == [event(2), event(3)]


def test_drain_waits_while_the_client_is_there(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """Empty polls with a connected client keep the stream open for later events."""
    hub = EventHub()
    sub = subscribe(hub, [event(0)], total=1, terminal=False)
    server, _client = tcp_pair

    def later() -> None:
        hub.publish(JOB, event(1))
        hub.close(JOB)

    timer = threading.Timer(0.2, later)  # about ten empty polls first
    timer.start()
    try:
        lines = list(drain_events(sub, 0, None, {SOCKET_KEY: server}, CloseCounter()))
    finally:
        timer.join()
    assert decoded(lines) == [event(0), event(1)]


def test_drain_ends_when_the_client_goes_away(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    hub = EventHub()
    sub = subscribe(hub, [event(0)], total=1, terminal=False)
    server, client = tcp_pair
    server.settimeout(10.0)
    client.close()
    _settle()
    closed = CloseCounter()
    started = time.monotonic()
    lines = list(drain_events(sub, 0, None, {SOCKET_KEY: server}, closed))
    assert decoded(lines) == [event(0)]
    assert time.monotonic() - started < 2, "noticed at the first empty poll"
    assert closed.calls == 1
    assert server.gettimeout() == 10.0


def test_drain_ends_when_the_engine_shuts_down() -> None:
    sub = subscribe(EventHub(), [], total=0, terminal=False)
    closed = CloseCounter()
    assert list(drain_events(sub, 0, None, {}, closed, is_shutting_down=lambda: True)) == []
    assert closed.calls == 1


def test_drain_restores_the_timeout_it_lifted(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """While streaming the socket has no timeout; afterwards Cheroot's timeout is back."""
    server, _client = tcp_pair
    server.settimeout(10.0)
    sub = subscribe(EventHub(), [event(0), event(1)], total=2, terminal=True)
    stream = drain_events(sub, 0, None, {SOCKET_KEY: server}, CloseCounter())
    next(stream)
    assert server.gettimeout() is None
    assert list(stream)
    assert server.gettimeout() == 10.0


def test_drain_closed_early_by_the_server_still_cleans_up(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """The WSGI server closes the generator when the write fails: unsubscribe anyway."""
    server, _client = tcp_pair
    server.settimeout(10.0)
    hub = EventHub()
    sub = subscribe(hub, [event(0), event(1)], total=2, terminal=False)
    closed = CloseCounter()
    stream = drain_events(sub, 0, None, {SOCKET_KEY: server}, closed)
    assert isinstance(stream, Generator), "closable, as WSGI servers expect"
    next(stream)
    stream.close()
    assert closed.calls == 1
    assert server.gettimeout() == 10.0


def test_drain_cleans_up_when_an_event_cannot_be_encoded(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _client = tcp_pair
    server.settimeout(10.0)
    sub = subscribe(EventHub(), [{"type": "log", "bad": object()}], total=1, terminal=True)
    closed = CloseCounter()
    with pytest.raises(TypeError):
        list(drain_events(sub, 0, None, {SOCKET_KEY: server}, closed))
    assert closed.calls == 1
    assert server.gettimeout() == 10.0


def test_end_marker_is_never_sent() -> None:
    """END is a sentinel object, not an event: it must not reach the client as a line."""
    sub = Subscription(token=1, total=0, terminal=False, backlog=[])
    sub.mailbox.put(event(0))
    sub.mailbox.put(END)
    sub.mailbox.put(event(1))
    assert decoded(list(drain_events(sub, 0, None, {}, CloseCounter()))) == [event(0)]
