"""Job event streams: `Range: events=…` handling and the stream source over a subscription."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlrs_engine.actors.events import END, Subscription
from sqlrs_engine.http.jsonio import json_line, json_lines

_RANGE = re.compile(r"^\s*events\s*=\s*([0-9]+)\s*-\s*([0-9]*)\s*$", re.IGNORECASE)
"""ASCII digits only (`\\d` would take any Unicode digit)."""

WHOLE_BODY_EVENTS = 1000
"""A finished job with at most this many events (in the range asked for) is answered with
one ordinary body instead of a stream (`EventStream.whole_body`)."""

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


class EventStream:
    """A job's events as a `StreamSource`: the backlog, then the mailbox to END or range end."""

    def __init__(
        self, sub: Subscription, start: int, stop: int | None, on_close: Callable[[], None]
    ) -> None:
        self._sub = sub
        self._backlog = sub.backlog
        self._position = 0
        self._index = start
        self._stop = stop
        self._live = False
        self._on_close = on_close
        self._closed = False

    def whole_body(self, max_events: int = WHOLE_BODY_EVENTS) -> bytes | None:
        """The whole stream at once, when nothing of it is still to come — the events of a
        finished job (its backlog already holds the range asked for), at most `max_events`
        of them — else None (it streams).

        Such a body needs neither the stream loop nor the end of the connection: a client
        that submits hit after hit and reads each one's events keeps its connection, and
        nothing is handed between threads."""
        if not self._sub.terminal or self._position or len(self._backlog) > max_events:
            return None
        body = json_lines(self._backlog)
        self._position = len(self._backlog)
        self._live = True
        return body

    def attach(self, wake: Callable[[], None]) -> None:
        self._sub.mailbox.set_waker(wake)

    def pull(self, limit: int) -> tuple[list[bytes], bool]:
        lines: list[bytes] = []
        while not self._live:
            if self._position >= len(self._backlog) or len(lines) >= limit:
                break
            lines.append(json_line(self._backlog[self._position]))
            self._position += 1
            self._index += 1
        if not self._live:
            if self._position < len(self._backlog):
                return lines, False
            self._backlog = []  # sent: let it go
            if self._stop is not None and self._index >= self._stop:
                return lines, True
            # Events published after the subscription have indexes from `total` on.
            self._index = max(self._index, self._sub.total)
            self._live = True
        for item in self._sub.mailbox.take(limit - len(lines)):
            if item is END:
                return lines, True
            lines.append(json_line(item))
            self._index += 1
            if self._stop is not None and self._index >= self._stop:
                return lines, True
        return lines, False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close()


def whole_response(body: bytes, on_close: Callable[[], None]) -> Iterator[bytes]:
    """A WSGI body of `body` that calls `on_close` once it is sent (or abandoned): the
    events stream counts as open — retention spares its job — until then."""
    try:
        yield body
    finally:
        on_close()
