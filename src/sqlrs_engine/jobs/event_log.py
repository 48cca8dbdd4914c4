"""A job's event log: typed appends, bounded task logs, and the heartbeat (SPEC §4.3, §4.4).

Events go to the Registry (which persists and publishes them) in the order they are
appended here; one lock orders the worker's appends and the heartbeat's repeats.

Output can be huge (a script printing a line per statement), so log lines are cheap:

- **Batched.** Log lines are collected and sent as one Registry message (one transaction)
  per `BATCH_LINES` lines, before any other event, and at every heartbeat tick (so a live
  stream sees them within a fraction of the period).
- **Flow-controlled, not timed out.** At most `MAX_BATCHES_IN_FLIGHT` batches wait for the
  Registry; the job then waits for the oldest one to be stored, however long that takes. A
  busy Registry slows the job down; it never fails it.
- **Bounded.** A task stores at most `max_task_lines` log lines as events (config
  `orchestrator.jobs.maxTaskLogLines`); the next line becomes one `log` event saying the log
  was truncated and where the full output is, and later lines are not stored as events.
- **Complete on disk.** Every log line is also appended to a plain-text file per task
  (`<job dir>/logs/<task_id>.log`; lines outside a task go to `job.log`), served by
  `GET /v1/prepare-jobs/{id}/tasks/{task_id}/log`.

Bookkeeping is batched too (issue 16): a task's row change travels with its `task` event,
and the job's row changes with its status events (`RowChange`), all in the pending batch. A
batch goes to the Registry as one message, stored in one transaction:

- when a status, result or error is appended with `wait` (the batch is then waited for: a
  job never reports itself finished before its events and rows are stored),
- when a task starts running (sent, not waited for: the work that follows may be long, and
  a stream should see it begin),
- at every heartbeat tick, every `BATCH_LINES` log lines, and on `send`/`flush`.

So a cache hit, whose tasks succeed one after the other without work between them, records
its task changes in the message that also carries the job's next status.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from sqlrs_engine.clock import now_rfc3339
from sqlrs_engine.persistence.jobs import RowChange
from sqlrs_engine.snapshot.perms import PASSAGE, make_dirs

log = logging.getLogger(__name__)

Event = dict[str, Any]
Item = Event | RowChange
Stored = Callable[[float | None], bool]

DEFAULT_HEARTBEAT = 0.5
MIN_HEARTBEAT = 0.2
MAX_HEARTBEAT = 1.0

DEFAULT_MAX_TASK_LOG_LINES = 10_000
"""Log lines a task stores as events (config `orchestrator.jobs.maxTaskLogLines`)."""

MAX_STORED_LINE = 16 * 1024
"""Characters of one log line stored in its event; the file keeps the whole line."""

BATCH_LINES = 500
MAX_BATCHES_IN_FLIGHT = 4

JOB_LOG = "job"
"""The log file name (`job.log`) for lines written outside any task."""


def log_url(job_id: str, task_id: str) -> str:
    return f"/v1/prepare-jobs/{job_id}/tasks/{task_id}/log"


class EventSink(Protocol):
    """Where events go: persisted and published by the Registry, in call order."""

    def record_batch(self, items: list[Item]) -> Stored:
        """Events and row changes in one message (one transaction); returns a call that
        tells whether they are stored (waiting up to its timeout; None: until they are) and
        raises what the Registry refused."""


def clamp_heartbeat(seconds: float) -> float:
    return min(MAX_HEARTBEAT, max(MIN_HEARTBEAT, seconds))


class JobEventLog:
    """Appends a job's events and repeats the last one while a task runs quietly."""

    def __init__(
        self,
        sink: EventSink,
        heartbeat: float = DEFAULT_HEARTBEAT,
        clock: Callable[[], float] = time.monotonic,
        *,
        job_id: str = "",
        log_dir: Path | None = None,
        max_task_lines: int = DEFAULT_MAX_TASK_LOG_LINES,
    ) -> None:
        self._sink = sink
        self._period = clamp_heartbeat(heartbeat)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_append = clock()
        self._repeatable: Event | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._job_id = job_id
        self._log_dir = log_dir
        self._max_task_lines = max(0, max_task_lines)
        self._pending: list[Item] = []
        self._in_flight: collections.deque[tuple[list[Item], Stored]] = collections.deque()
        self._task = JOB_LOG
        self._task_lines = 0
        self._file: IO[str] | None = None
        self._file_failed = False

    # -- appends ---------------------------------------------------------------------------

    def status(self, status: str, wait: bool = True) -> None:
        """A job status change, after everything pending; `wait`: sent and stored now."""
        self._append({"type": "status", "status": status}, wait=wait, running_task=False)

    def task(
        self,
        task_id: str,
        status: str,
        error: dict[str, Any] | None = None,
        row: dict[str, Any] | None = None,
    ) -> None:
        """A task status change, with the change of its row (`row`) when given: both are
        stored together. A running task is sent at once; other changes go with the next
        batch."""
        event: Event = {"type": "task", "task_id": task_id, "status": status}
        if error is not None:
            event["message"] = error.get("message", "")
            event["error"] = error
        running = status == "running"
        self._append(event, wait=False, running_task=running, row=row, send=running)
        with self._lock:
            if status == "running":
                self._switch_file(task_id)
            elif task_id == self._task:
                self._switch_file(JOB_LOG)

    def log(self, message: str) -> None:
        """A log line: always written to the task's file, stored as an event within bounds."""
        with self._lock:
            self._write_file(message)
            self._task_lines += 1
            if self._task_lines > self._max_task_lines + 1:
                return
            if self._task_lines > self._max_task_lines:
                message = self._truncation_notice()
            elif len(message) > MAX_STORED_LINE:
                message = (
                    f"{message[:MAX_STORED_LINE]}… [line cut at {MAX_STORED_LINE} of "
                    f"{len(message)} characters; the task's log file has all of it]"
                )
            event: Event = {"type": "log", "ts": now_rfc3339(), "message": message}
            self._pending.append(event)
            self._last_append = self._clock()
            if self._repeatable is not None:
                self._repeatable = dict(event)
            if len(self._pending) >= BATCH_LINES:
                self._flush()

    def result(self, result: dict[str, Any], wait: bool = True) -> None:
        self._append({"type": "result", "result": result}, wait=wait, running_task=False)

    def error(self, error: dict[str, Any], wait: bool = True) -> None:
        self._append({"type": "error", "error": error}, wait=wait, running_task=False)

    def job_row(self, fields: dict[str, Any]) -> None:
        """A change of the job's row, stored with the next batch (with the status event that
        follows it, when there is one)."""
        with self._lock:
            self._pending.append(RowChange(dict(fields)))

    def task_row(self, task_id: str, fields: dict[str, Any]) -> None:
        """A change of a task's row without an event, stored with the next batch."""
        with self._lock:
            self._pending.append(RowChange(dict(fields), task_id))

    def send(self) -> None:
        """Send what is pending now, without waiting for it to be stored (keeps the order
        with a Registry write that follows)."""
        with self._lock:
            self._flush()

    def flush(self) -> None:
        """Send what is pending now and wait until everything sent is stored."""
        with self._lock:
            self._flush()
            self._wait_all()
            self._flush_file()

    def close(self) -> None:
        """Flush, and close the current log file."""
        self.flush()
        with self._lock:
            self._close_file()

    def _append(
        self,
        event: Event,
        *,
        wait: bool,
        running_task: bool | None,
        row: dict[str, Any] | None = None,
        send: bool = False,
    ) -> None:
        """Append with a fresh `ts` (and the task row change `row` before it); `running_task`
        True/False starts/stops the heartbeat; `wait` sends and waits, `send` only sends."""
        with self._lock:
            if row is not None:
                self._pending.append(RowChange(dict(row), event["task_id"]))
            event["ts"] = now_rfc3339()
            self._pending.append(event)
            if wait or send:
                self._flush()
            if wait:
                self._wait_all()
            self._last_append = self._clock()
            if running_task is True:
                self._repeatable = dict(event)
            elif running_task is False:
                self._repeatable = None
            elif self._repeatable is not None:
                self._repeatable = dict(event)

    def _flush(self) -> None:
        """Send what is pending as one batch; wait while too many batches are unstored.

        Batches already answered are looked at first, so a refused one (a full disk) fails
        this write of the job instead of vanishing (issue 11).
        """
        self._settle(0)
        if self._pending:
            batch, self._pending = self._pending, []
            self._in_flight.append((batch, self._sink.record_batch(batch)))
            self._flush_file()
        while len(self._in_flight) > MAX_BATCHES_IN_FLIGHT:
            self._settle(None, limit=1)

    def _wait_all(self) -> None:
        self._settle(None)

    def _settle(self, timeout: float | None, limit: int | None = None) -> None:
        """Drop stored batches from the head of `_in_flight` (waiting up to `timeout` for
        each; at most `limit`). A refused batch is put back in front of what is pending,
        with the refused ones after it, so a retry (`flush`) stores them, still in order;
        then the refusal is raised."""
        refused: list[Item] = []
        first: BaseException | None = None
        settled = 0
        while self._in_flight and (limit is None or settled < limit or first is not None):
            batch, stored = self._in_flight[0]
            try:
                if not stored(None if first is not None else timeout):
                    break
            except BaseException as error:
                refused += batch
                first = first or error
            self._in_flight.popleft()
            settled += 1
        if first is not None:
            self._pending[:0] = refused
            raise first

    # -- the full log on disk ----------------------------------------------------------------

    def _truncation_notice(self) -> str:
        where = f"GET {log_url(self._job_id, self._task)}"
        if self._log_dir is not None:
            where += f" (file {self._log_dir / (self._task + '.log')})"
        scope = "the job" if self._task == JOB_LOG else f"task {self._task}"
        return (
            f"log truncated: {scope} printed more than {self._max_task_lines} lines; later "
            f"lines are not stored as events. Full output: {where}"
        )

    def _switch_file(self, task_id: str) -> None:
        self._flush_file()
        self._close_file()
        self._task = task_id
        self._task_lines = 0

    def _write_file(self, message: str) -> None:
        if self._log_dir is None or self._file_failed:
            return
        try:
            if self._file is None:
                # jobs/ and jobs/<job>/ are passages for the job's server (0711, as the store
                # makes them); the logs themselves are private to the engine's user.
                make_dirs(self._log_dir.parent, PASSAGE)
                make_dirs(self._log_dir, 0o700)
                path = self._log_dir / f"{self._task}.log"
                self._file = path.open("a", encoding="utf-8", errors="replace")
            self._file.write(message + "\n")
        except OSError as error:
            # A full disk must not fail the job: the events still carry the bounded log.
            log.warning("job %s: cannot write its log file: %s", self._job_id, error)
            self._file_failed = True
            self._close_file()

    def _flush_file(self) -> None:
        """Flush the log file; a full disk stops the file, never the job or its events."""
        if self._file is None:
            return
        try:
            self._file.flush()
        except OSError as error:
            log.warning("job %s: cannot write its log file: %s", self._job_id, error)
            self._file_failed = True
            self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

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
        """Send pending log lines; repeat the last running-task or log event if quiet a period."""
        with self._lock:
            self._flush()
            if self._repeatable is None or self._clock() - self._last_append < self._period:
                return False
            event = dict(self._repeatable)
            event["ts"] = now_rfc3339()
            self._pending.append(event)
            self._flush()
            self._last_append = self._clock()
            return True

    def _beat(self) -> None:
        while not self._stop.wait(self._period / 4):
            try:
                self.tick()
            except Exception as error:
                # The Registry refused a batch (a full disk): the job's own next append fails
                # the job with that reason; the heartbeat just tries again next tick.
                log.warning("job %s: heartbeat could not store events: %s", self._job_id, error)
