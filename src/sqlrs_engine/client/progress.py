"""Showing a long prepare while it runs: which task, step n of m, cached or running, elapsed.

`JobProgress` turns the job's event stream into `ProgressView`s (it asks for the task list
once a task appears that it does not know, because events name tasks but not their order).
A reporter shows the views: a `rich` progress bar on a terminal (`BarReporter`), one plain
line per change otherwise (`LinesReporter`, for CI logs), nothing when quiet.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol

from sqlrs_engine.client.models import Event, Task

MODES = ("auto", "bar", "lines", "quiet")


@dataclass(frozen=True)
class ProgressView:
    """What a reporter shows at one moment."""

    job_id: str
    step: int
    """1-based position of the current task in the plan (0 before any task started)."""
    total: int
    task: str
    """Task id with its psql/Liquibase summary when it has one (`execute-0 -f schema.sql`)."""
    state: str
    """`queued`, `running`, `cached`, `succeeded`, `failed`."""
    elapsed: float
    done: int
    """Tasks finished so far."""

    def text(self) -> str:
        position = f"[{self.step}/{self.total}] " if self.total else ""
        return f"{position}{self.task or 'prepare'}: {self.state} ({self.elapsed:.1f}s)"


class Reporter(Protocol):
    def update(self, view: ProgressView) -> None: ...

    def close(self, view: ProgressView | None, outcome: str) -> None: ...


class JobProgress:
    """Folds events of one job into views; `tasks` fetches the job's plan when needed."""

    def __init__(self, job_id: str, tasks: Callable[[], list[Task]], reporter: Reporter) -> None:
        self.job_id = job_id
        self._fetch_tasks = tasks
        self._reporter = reporter
        self._started = time.monotonic()
        self._tasks: list[Task] = []
        self._states: dict[str, str] = {}
        self._current = ""
        self._job_state = "queued"
        self.last: ProgressView | None = None

    def on_event(self, event: Event) -> None:
        if isinstance(self._reporter, QuietReporter):
            return  # nothing to show: no task list to fetch either
        if event.type == "status" and event.status:
            self._job_state = event.status
            return  # shown with the next task event, or by close()
        elif event.type == "task" and event.task_id:
            if event.task_id not in {task.task_id for task in self._tasks}:
                try:
                    self._tasks = self._fetch_tasks()
                except Exception:  # a progress display never fails the prepare
                    self._tasks = []
            state = event.status or "running"
            if state == "succeeded" and self._cached(event.task_id):
                state = "cached"
            self._states[event.task_id] = state
            self._current = event.task_id
        else:
            return
        self._show()

    def close(self, outcome: str) -> None:
        self._reporter.close(self.last, outcome)

    def _cached(self, task_id: str) -> bool:
        task = next((t for t in self._tasks if t.task_id == task_id), None)
        # A step cached at planning time succeeds without ever having been `running`.
        return (
            task is not None
            and task.type == "state_execute"
            and (task.cached is True or self._states.get(task_id) != "running")
        )

    def _show(self) -> None:
        ids = [task.task_id for task in self._tasks]
        step = ids.index(self._current) + 1 if self._current in ids else 0
        task = next((t for t in self._tasks if t.task_id == self._current), None)
        label = self._current
        if task is not None and task.args_summary:
            label = f"{label} {task.args_summary}"
        done = sum(1 for s in self._states.values() if s in ("succeeded", "cached", "failed"))
        view = ProgressView(
            job_id=self.job_id,
            step=step,
            total=len(ids),
            task=label,
            state=self._states.get(self._current, self._job_state),
            elapsed=time.monotonic() - self._started,
            done=done,
        )
        if self.last is not None and (view.step, view.task, view.state) == (
            self.last.step,
            self.last.task,
            self.last.state,
        ):
            return  # a heartbeat repeats the last event: nothing new to show
        self.last = view
        self._reporter.update(view)


class QuietReporter:
    def update(self, view: ProgressView) -> None:
        pass

    def close(self, view: ProgressView | None, outcome: str) -> None:
        pass


class LinesReporter:
    """One line per change, for logs: `sqlrs: [2/3] execute-1 -f data.sql: running (0.4s)`."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self._write = write or (lambda line: print(line, file=sys.stderr, flush=True))

    def update(self, view: ProgressView) -> None:
        self._write(f"sqlrs: {view.text()}")

    def close(self, view: ProgressView | None, outcome: str) -> None:
        elapsed = f" in {view.elapsed:.1f}s" if view is not None else ""
        self._write(f"sqlrs: prepare {outcome}{elapsed}")


class BarReporter:
    """A transient `rich` progress bar on the terminal (gone when the prepare ends)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress: Any = Progress(
            TextColumn("sqlrs"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(file=stream or sys.stderr),
            transient=True,
        )
        self._bar: Any = None

    def update(self, view: ProgressView) -> None:
        if self._bar is None:
            self._progress.start()
            self._bar = self._progress.add_task(view.text(), total=view.total or None)
        self._progress.update(
            self._bar,
            total=view.total or None,
            completed=view.done,
            description=f"{view.task}: {view.state}",
        )

    def close(self, view: ProgressView | None, outcome: str) -> None:
        if self._bar is not None:
            self._progress.stop()
            console = self._progress.console
            elapsed = f" in {view.elapsed:.1f}s" if view is not None else ""
            console.print(f"sqlrs: prepare {outcome}{elapsed}")


def reporter_for(mode: str | Reporter | None, stream: IO[str] | None = None) -> Reporter:
    """`auto` (bar on a terminal, lines otherwise), `bar`, `lines`, `quiet`/None, or your own."""
    if mode is None or mode == "quiet":
        return QuietReporter()
    if not isinstance(mode, str):
        return mode
    if mode not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)}, got {mode!r}")
    out = stream or sys.stderr
    if mode == "bar" or (mode == "auto" and out.isatty()):
        return BarReporter(out)

    def write(line: str) -> None:
        print(line, file=out, flush=True)

    return LinesReporter(write)
