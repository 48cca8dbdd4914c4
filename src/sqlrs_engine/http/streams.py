"""NDJSON streaming helpers: event ranges, client-disconnect detection, mailbox draining."""

from __future__ import annotations

import contextlib
import queue
import re
import select
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlrs_engine.actors.events import END, Subscription
from sqlrs_engine.http.jsonio import json_line
from sqlrs_engine.http.server import SOCKET_KEY

POLL_SECONDS = 0.25
"""How often a waiting stream checks whether its client is still there."""

_RANGE = re.compile(r"^\s*events\s*=\s*([0-9]+)\s*-\s*([0-9]*)\s*$", re.IGNORECASE)
"""ASCII digits only (`\\d` would take any Unicode digit)."""

_BEYOND_ANY_JOB = 2**62
"""What an index too long to be real counts as: past every event, yet a valid SQLite INTEGER."""


def _event_index(digits: str) -> int:
    # int() of thousands of digits is slow (and refused past 4300); nothing has 10**18 events.
    return _BEYOND_ANY_JOB if len(digits) > 18 else min(int(digits), _BEYOND_ANY_JOB)


@dataclass(frozen=True)
class EventRange:
    """`Range: events=N-` (stop None) or `events=N-M` (stop = M + 1, exclusive)."""

    start: int
    stop: int | None


def parse_events_range(header: str | None) -> EventRange | None:
    """The requested range, or None when absent or malformed (a malformed header is ignored)."""
    if not header:
        return None
    match = _RANGE.match(header)
    if not match:
        return None
    start = _event_index(match.group(1))
    if not match.group(2):
        return EventRange(start, None)
    last = _event_index(match.group(2))
    return EventRange(start, last + 1) if last >= start else None


def range_unsatisfiable(requested: EventRange, total: int, terminal: bool) -> bool:
    """No event of the range exists now, and for a terminal job none ever will."""
    return requested.start > total or (terminal and requested.start >= total)


def content_range(requested: EventRange, total: int, terminal: bool) -> str:
    """`events N-M/total`, or `events N-*/total` while the end is still unknown."""
    if requested.stop is not None and requested.stop <= total:
        return f"events {requested.start}-{requested.stop - 1}/{total}"
    if terminal:
        return f"events {requested.start}-{total - 1}/{total}"
    return f"events {requested.start}-*/{total}"


def client_gone(environ: dict[str, Any]) -> bool:
    """True when the client closed its end of the connection (checked without blocking)."""
    sock: socket.socket | None = environ.get(SOCKET_KEY)
    if sock is None:
        return False
    try:
        readable, _, errored = select.select([sock], [], [sock], 0)
        if errored:
            return True
        if readable:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return False


KEEPALIVE_IDLE_SECONDS = 60
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_PROBES = 6
"""TCP keepalive while a stream waits on a slow reader: a vanished peer is noticed in ~2 min."""


def wait_for_slow_readers(environ: dict[str, Any]) -> Callable[[], None]:
    """Let a stream block on a reader that pauses, instead of dropping it after 10 s.

    Cheroot applies one socket timeout (`Server.timeout`, 10 s) to every read and write, so a
    client that stops reading for a while (output piped into a pager, a suspended process)
    would lose its run or event stream with a write timeout. While a stream lasts, its socket
    blocks without a timeout, like a pipe: a slow reader slows the producer down. A client that
    closes is still noticed at once (the write fails), and TCP keepalive notices a peer that
    vanished without closing. Returns the function that restores the previous timeout.
    """
    sock: socket.socket | None = environ.get(SOCKET_KEY)
    if sock is None:
        return lambda: None
    previous = sock.gettimeout()
    try:
        sock.settimeout(None)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    except OSError:
        return lambda: None  # the client is already gone; the next write says so

    def restore() -> None:
        with contextlib.suppress(OSError):
            sock.settimeout(previous)

    return restore


def drain_events(
    sub: Subscription,
    start: int,
    stop: int | None,
    environ: dict[str, Any],
    on_close: Callable[[], None],
    is_shutting_down: Callable[[], bool] = lambda: False,
) -> Iterator[bytes]:
    """Yield the backlog, then mailbox events until END, the range end, or the client leaves."""
    restore_timeout = wait_for_slow_readers(environ)
    try:
        index = start
        for event in sub.backlog:
            yield json_line(event)
            index += 1
        if stop is not None and index >= stop:
            return
        # Events published after the subscription have indexes from `total` on.
        index = max(index, sub.total)
        while True:
            try:
                item = sub.mailbox.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if client_gone(environ) or is_shutting_down():
                    return
                continue
            if item is END:
                return
            yield json_line(item)
            index += 1
            if stop is not None and index >= stop:
                return
    finally:
        restore_timeout()
        on_close()
