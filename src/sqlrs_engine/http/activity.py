"""In-flight request tracking for the idle timeout (SPEC §1.5).

A request is in flight from the moment it arrives until its response iterable is closed, so
an open events or run stream keeps the engine alive for as long as it is being read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ActivityTracker:
    """Counts in-flight requests and remembers when the count last dropped to zero."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._idle_since = clock()

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle_since = self._clock()

    def touch(self) -> None:
        """Treat now as the last activity (start-up, or work that is not an HTTP request)."""
        with self._lock:
            self._idle_since = self._clock()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def idle_for(self) -> float:
        """Seconds since the engine last became idle; 0 while a request is in flight."""
        with self._lock:
            return 0.0 if self._in_flight else self._clock() - self._idle_since

    def middleware(self, app: WsgiApp) -> WsgiApp:
        """Wrap a WSGI app so every request counts until its response is closed."""

        def tracked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            self.enter()
            try:
                result = app(environ, start_response)
            except BaseException:
                self.leave()
                raise
            return _ClosingIterable(result, self.leave)

        return tracked


class _ClosingIterable:
    """Calls `on_close` exactly once when the server closes the response."""

    def __init__(self, inner: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._inner = inner
        self._on_close = on_close
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()
