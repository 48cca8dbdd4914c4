"""A job's event log: typed appends, task bookkeeping, and the heartbeat (SPEC §4.3, §4.4).

Events go to the Registry (which persists and publishes them) in the order they are
appended here; one lock orders the worker's appends and the heartbeat's repeats. Log lines
are sent without waiting for an answer (they can be many); status changes are waited for,
so a job never reports itself finished before its events are stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlrs_engine.clock import now_rfc3339

Event = dict[str, Any]

DEFAULT_HEARTBEAT = 0.5
MIN_HEARTBEAT = 0.2
MAX_HEARTBEAT = 1.0


class EventSink(Protocol):
    """Where events go: `record(event, wait)` persists and publishes one event."""

    def record(self, event: Event, wait: bool) -> None: ...


def clamp_heartbeat(seconds: float) -> float:
    return min(MAX_HEARTBEAT, max(MIN_HEARTBEAT, seconds))


class JobEventLog:
    """Appends a job's events and repeats the last one while a task runs quietly."""

    def __init__(
        self,
        sink: EventSink,
        heartbeat: float = DEFAULT_HEARTBEAT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._period = clamp_heartbeat(heartbeat)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_append = clock()
        self._repeatable: Event | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- appends ---------------------------------------------------------------------------

    def status(self, status: str, wait: bool = True) -> None:
        self._append({"type": "status", "status": status}, wait=wait, running_task=False)

    def task(self, task_id: str, status: str, error: dict[str, Any] | None = None) -> None:
        event: Event = {"type": "task", "task_id": task_id, "status": status}
        if error is not None:
            event["message"] = error.get("message", "")
            event["error"] = error
        self._append(event, wait=True, running_task=status == "running")

    def log(self, message: str) -> None:
        self._append({"type": "log", "message": message}, wait=False, running_task=None)

    def result(self, result: dict[str, Any]) -> None:
        self._append({"type": "result", "result": result}, wait=True, running_task=False)

    def error(self, error: dict[str, Any]) -> None:
        self._append({"type": "error", "error": error}, wait=True, running_task=False)

    def _append(self, event: Event, *, wait: bool, running_task: bool | None) -> None:
        """Append with a fresh `ts`; `running_task` True/False starts/stops the heartbeat."""
        with self._lock:
            event["ts"] = now_rfc3339()
            self._sink.record(event, wait)
            self._last_append = self._clock()
            if running_task is True:
                self._repeatable = dict(event)
            elif running_task is False:
                self._repeatable = None
            elif self._repeatable is not None:
                self._repeatable = dict(event)

    # -- heartbeat -------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="job-heartbeat", daemon=True)
            self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def tick(self) -> bool:
        """Repeat the last running-task or log event if nothing was appended for a period."""
        with self._lock:
            if self._repeatable is None or self._clock() - self._last_append < self._period:
                return False
            event = dict(self._repeatable)
            event["ts"] = now_rfc3339()
            self._sink.record(event, False)
            self._last_append = self._clock()
            return True

    def _beat(self) -> None:
        while not self._stop.wait(self._period / 4):
            self.tick()
