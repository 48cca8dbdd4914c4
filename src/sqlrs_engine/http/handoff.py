"""Long-lived NDJSON responses that do not hold an HTTP worker thread while they wait.

An events or run stream can stay open for minutes while it mostly waits. Serving it from a
Cheroot worker would park that worker for as long (64 open streams once froze the engine). So
a streaming route returns `stream_response(source)`: a response whose first chunk is a
`Handoff`. Our Cheroot gateway (`http/server.py`) recognises it, sends the status line and
headers, and hands the connection and the source to the `StreamLoop` (`http/stream_loop.py`),
one thread that serves every open stream with a selector. The worker returns to the pool at
once. The loop ends the response by closing it, which runs every middleware's clean-up (access
log, activity tracking) and then `source.close()`.

Under any other WSGI server (or a test calling the app directly) nobody takes the handoff: it
is an empty chunk, and the same response goes on to serve the source in blocking mode.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Protocol

PULL_LIMIT = 512
"""Lines a stream takes from its source at a time."""

BLOCKING_POLL_SECONDS = 0.25
"""How often the blocking fallback re-checks its source without a wake-up (a safety net)."""


class StreamSource(Protocol):
    """Where a stream's lines come from; every method is non-blocking."""

    def attach(self, wake: Callable[[], None]) -> None:
        """Start producing; call `wake()` (from any thread) whenever new lines may be ready."""

    def pull(self, limit: int) -> tuple[list[bytes], bool]:
        """Up to `limit` ready lines, and True once the source has nothing more to give."""

    def close(self) -> None:
        """The stream is over (finished, client gone, engine stopping): release everything."""


class Handoff(bytes):
    """The first chunk of a streaming response: empty, yet true, so it is never skipped.

    Bottle and WSGI servers skip empty chunks; this one is empty bytes (a foreign server
    writes nothing for it) whose truth value is True, so it reaches our gateway.
    """

    source: StreamSource
    taken: bool
    bytes_sent: int
    """Body bytes the stream loop wrote (for the access log)."""

    def __new__(cls, source: StreamSource) -> Handoff:
        chunk = super().__new__(cls, b"")
        chunk.source = source
        chunk.taken = False
        chunk.bytes_sent = 0
        return chunk

    def __bool__(self) -> bool:
        return True


def stream_response(source: StreamSource) -> Iterator[bytes]:
    """A WSGI body serving `source`: handed off to the stream loop, or served right here."""
    handoff = Handoff(source)
    try:
        yield handoff
        if not handoff.taken:
            yield from _serve_blocking(source)
    finally:
        source.close()


def _serve_blocking(source: StreamSource) -> Iterator[bytes]:
    ready = threading.Event()
    source.attach(ready.set)
    while True:
        ready.clear()
        lines, done = source.pull(PULL_LIMIT)
        if lines:
            yield b"".join(lines)
        if done:
            return
        if not lines:
            ready.wait(BLOCKING_POLL_SECONDS)
