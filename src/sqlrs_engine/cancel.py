"""Cooperative cancellation shared by a job's worker and the processes it runs.

A job actor owns one `CancelToken` per job. Blocking work registers a kill callback (for
example "kill this process group") while it runs; `cancel()` sets the flag and runs every
registered callback at once, so cancelling never waits for the work to notice on its own.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from sqlrs_engine.errors import JobFailure, cancelled


class CancelToken:
    """A thread-safe cancellation flag with kill callbacks."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next = 0

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        """Set the flag and run every registered kill callback (each at most once)."""
        with self._lock:
            self._event.set()
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
        for callback in callbacks:
            # A kill that races with the work's natural end may fail; that is fine.
            with contextlib.suppress(Exception):
                callback()

    def register(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` on cancel (immediately if already cancelled); returns an unregister."""
        with self._lock:
            if not self._event.is_set():
                key = self._next
                self._next += 1
                self._callbacks[key] = callback

                def unregister() -> None:
                    with self._lock:
                        self._callbacks.pop(key, None)

                return unregister
        callback()
        return lambda: None

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early on cancel; True when cancelled."""
        return self._event.wait(timeout)

    def raise_if_cancelled(self, message: str = "task cancelled") -> None:
        if self._event.is_set():
            raise cancelled(message)


NEVER_CANCELLED = CancelToken()
"""A token nobody cancels, for callers with nothing to cancel (tests, one-shot tools)."""

__all__ = ["NEVER_CANCELLED", "CancelToken", "JobFailure"]
