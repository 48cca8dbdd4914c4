"""Run a validated `RunPlan` on a worker thread and stream its events (SPEC §5, §0.1).

Shape: the worker produces events into a small bounded `EventChannel`; the HTTP response
generator (`RunExecution.stream`) drains it. Nothing is buffered until exit:

- **Bounded memory.** The channel holds at most `capacity` events and one event carries at
  most one read of the program's pipe (64 KiB, `process.run`). When the client reads slower
  than the program writes, `put` blocks the reading thread, the pipe fills, and the program
  blocks in `write` — back-pressure all the way down instead of a growing buffer.
- **Disconnect kills.** When the consumer stops (the client went away, the response was
  closed) it closes the channel and cancels the token: the program's process group is
  SIGTERMed (SIGKILLed after a grace period) by `process.run`, and a producer blocked on the
  full channel wakes up and aborts the run. The server backend of the killed psql ends its
  query when it notices the lost client (servers run with `client_connection_check_interval`,
  see `dbms/postgres.py`), so a disconnect leaves neither a client nor a query behind.

Event mapping:

- `log` (`data` = message): the recovery lines of the Instance actor, before `start`;
- `start` (`instance_id`) once the server is known to run, before the first step;
- `stdout` / `stderr` (`data`): one event per chunk read from that pipe, in the order the
  engine read them (the two pipes are read by one thread, so the order between them is the
  order their data arrived, not necessarily the order the program wrote it). Bytes are
  decoded as UTF-8 with an incremental decoder per pipe, so a character split across two
  reads is not mangled; invalid bytes become U+FFFD (psql and pgbench write text). A chunk
  that decodes to nothing yet (half a character) produces no event;
- `exit` (`exit_code`): the exit code of the last step that ran — the first non-zero one
  (later steps are skipped), else 0; a program killed by signal N reports 128+N;
- `error` (`error` = ErrorResponse `internal_error` / `run failed` / details): anything that
  went wrong after the stream started (the server cannot be restarted, the program cannot be
  started), instead of `exit`. Every event has `ts`.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from sqlrs_engine.actors.instance import RunningServer
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.clock import now_rfc3339
from sqlrs_engine.errors import ApiError, JobFailure, cancelled, error_response
from sqlrs_engine.runs.requests import RunPlan, step_args
from sqlrs_engine.runtime.base import LogSink

log = logging.getLogger(__name__)

Event = dict[str, Any]
EnsureRunning = Callable[[LogSink], RunningServer]
"""Asks the Instance actor for a running server (restarting it if needed)."""

DEFAULT_CAPACITY = 16
"""Events in flight between the worker and the response (≤ 64 KiB of output each)."""

POLL_SECONDS = 0.25
"""How often a stream without new events checks whether its client is still there."""

JOIN_SECONDS = 10.0
"""How long closing a stream waits for its worker (the program's group is being killed)."""

RUN_FAILED = "run failed"


class _End:
    """The marker after the last event of a run."""


END = _End()


class ChannelClosed(Exception):
    """The consumer is gone: nobody will read what the producer has left to say."""


class EventChannel:
    """A bounded, closeable hand-over from one producer thread to one consumer."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = max(1, capacity)
        self._items: deque[Event | _End] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._waker: Callable[[], None] | None = None
        self.high_water = 0
        """The most items ever waiting at once (tests check the bound with it)."""

    def put(self, item: Event | _End, *, force: bool = False) -> None:
        """Append `item`, waiting while the channel is full (unless `force`).

        Raises `ChannelClosed` once the consumer has closed the channel. `force` is for the
        few small items that must not wait: recovery log lines (sent from the Instance
        actor's thread, which must not block on a client) and the END marker.
        """
        with self._cond:
            while not force and not self._closed and len(self._items) >= self.capacity:
                self._cond.wait()
            if self._closed:
                raise ChannelClosed()
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()
            waker = self._waker
        if waker is not None:
            waker()

    def offer(self, item: Event | _End) -> bool:
        """`put(item, force=True)` that reports a closed channel as False instead."""
        try:
            self.put(item, force=True)
        except ChannelClosed:
            return False
        return True

    def get(self, timeout: float) -> Event | _End | None:
        """The next item, or None when nothing arrived within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def set_waker(self, waker: Callable[[], None]) -> None:
        """Call `waker()` after every put from now on (for a consumer that does not block)."""
        with self._cond:
            self._waker = waker
            pending = bool(self._items)
        if pending:
            waker()

    def take(self, limit: int) -> list[Event | _End]:
        """Up to `limit` items, without waiting; frees room for a waiting producer."""
        with self._cond:
            count = min(limit, len(self._items))
            items = [self._items.popleft() for _ in range(count)]
            if items:
                self._cond.notify_all()
            return items

    def close(self) -> None:
        """The consumer leaves: drop what is queued and wake a waiting producer."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed


class RunExecution:
    """One run: a worker thread producing events, consumed through `stream()`."""

    def __init__(
        self,
        plan: RunPlan,
        ensure_running: EnsureRunning,
        *,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], str] = now_rfc3339,
    ) -> None:
        self.plan = plan
        self._ensure_running = ensure_running
        self._clock = clock
        self.channel = EventChannel(capacity)
        self.cancel_token = CancelToken()
        self._thread = threading.Thread(
            target=self._work, name=f"run-{plan.instance_id[:8]}", daemon=True
        )

    # -- consumer side -----------------------------------------------------------------------

    def stream(
        self, client_gone: Callable[[], bool] = lambda: False, poll: float = POLL_SECONDS
    ) -> Generator[Event, None, None]:
        """Start the run and yield its events until the last one or until the client leaves.

        However the iteration ends (END, `client_gone()`, the generator closed because a write
        to the client failed), the run is cancelled and its processes are dead on return.
        """
        self._thread.start()
        try:
            while True:
                item = self.channel.get(poll)
                if item is None:
                    if client_gone():
                        log.info("run on %s: client went away, cancelling", self.plan.instance_id)
                        return
                    continue
                if isinstance(item, _End):
                    return
                yield item
        finally:
            self.close()

    def start(self, wake: Callable[[], None]) -> None:
        """Start the run for a consumer that does not block: `wake()` says events are ready."""
        self.channel.set_waker(wake)
        self._thread.start()

    def abort(self) -> None:
        """Stop the run without waiting: its processes are being killed when this returns."""
        self.channel.close()
        self.cancel_token.cancel()

    def close(self) -> None:
        """Stop the run (no-op once it has finished) and wait for its worker."""
        self.abort()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(JOIN_SECONDS)
            if self._thread.is_alive():
                log.warning("run on %s: worker still busy after close", self.plan.instance_id)

    def join(self, timeout: float) -> bool:
        """Wait for the worker; True once it has finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- producer side -----------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._run()
        except ChannelClosed:
            pass
        except JobFailure as failure:
            if failure.code == "cancelled" and self.cancel_token.cancelled:
                return
            self._fail(str(failure))
        except ApiError as error:
            self._fail(str(error))
        except Exception as error:
            log.exception("run on %s failed", self.plan.instance_id)
            self._fail(f"{type(error).__name__}: {error}")
        finally:
            self.channel.offer(END)

    def _run(self) -> None:
        plan = self.plan
        server = self._ensure_running(self._log)
        self._check_cancelled()
        self._emit({"type": "start", "ts": self._clock(), "instance_id": plan.instance_id})
        exit_code = 0
        for step in plan.steps:
            self._check_cancelled()
            exit_code = self._run_step(server, step.args, step.stdin)
            if exit_code != 0:
                break
        self._emit({"type": "exit", "ts": self._clock(), "exit_code": exit_code})

    def _run_step(self, server: RunningServer, args: tuple[str, ...], stdin: str | None) -> int:
        decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for name in ("stdout", "stderr")
        }

        def on_output(stream: str, chunk: bytes) -> None:
            self._output(stream, decoders[stream].decode(chunk))

        code = server.runtime.run_client(
            server.handle,
            self.plan.program,
            step_args(self.plan.kind, args, server.handle),
            stdin=stdin.encode("utf-8") if stdin is not None else None,
            cwd=None,
            on_output=on_output,
            cancel=self.cancel_token,
        )
        for name, decoder in decoders.items():
            self._output(name, decoder.decode(b"", final=True))
        return code

    def _output(self, stream: str, text: str) -> None:
        if text:
            self._emit({"type": stream, "ts": self._clock(), "data": text})

    def _log(self, message: str) -> None:
        """Recovery lines; called on the Instance actor's thread, so it never waits."""
        self.channel.offer({"type": "log", "ts": self._clock(), "data": message})

    def _emit(self, event: Event) -> None:
        """Hand an event to the consumer; a gone consumer aborts the run (kills the program)."""
        try:
            self.channel.put(event)
        except ChannelClosed:
            raise cancelled("run cancelled: the client went away") from None

    def _check_cancelled(self) -> None:
        if self.cancel_token.cancelled:
            raise cancelled("run cancelled: the client went away")

    def _fail(self, details: str) -> None:
        error = error_response("internal_error", RUN_FAILED, details)
        self.channel.offer({"type": "error", "ts": self._clock(), "error": error})


__all__ = [
    "DEFAULT_CAPACITY",
    "END",
    "ChannelClosed",
    "EnsureRunning",
    "Event",
    "EventChannel",
    "RunExecution",
]
