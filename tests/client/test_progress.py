"""What a prepare's progress shows: task, step n/m, cached or running; nothing when quiet."""

from __future__ import annotations

import io

import pytest

from sqlrs_engine.client.models import Event, Task
from sqlrs_engine.client.progress import (
    BarReporter,
    JobProgress,
    LinesReporter,
    ProgressView,
    QuietReporter,
    reporter_for,
)

TASKS = [
    Task("plan", "plan", "succeeded"),
    Task("resolve-image", "resolve_image", "succeeded"),
    Task("execute-0", "state_execute", "succeeded", True, "-f /s/schema.sql"),
    Task("execute-1", "state_execute", "running", False, "-f /s/data.sql"),
    Task("prepare-instance", "prepare_instance", "queued"),
]


def events(*specs: tuple[str, str | None, str | None]) -> list[Event]:
    return [
        Event(index, kind, "2026-01-01T00:00:00Z", status=status, task_id=task)
        for index, (kind, task, status) in enumerate(specs)
    ]


class Recorder:
    def __init__(self) -> None:
        self.views: list[ProgressView] = []
        self.closed: str | None = None

    def update(self, view: ProgressView) -> None:
        self.views.append(view)

    def close(self, view: ProgressView | None, outcome: str) -> None:
        self.closed = outcome


def test_views_follow_the_tasks() -> None:
    recorder = Recorder()
    fetches: list[int] = []

    def fetch() -> list[Task]:
        fetches.append(1)
        return TASKS

    progress = JobProgress("j1", fetch, recorder)
    for event in events(
        ("status", None, "running"),
        ("task", "resolve-image", "succeeded"),
        ("task", "execute-0", "succeeded"),  # no `running` before: cached at planning time
        ("task", "execute-1", "running"),
        ("task", "execute-1", "running"),  # heartbeat: nothing new
        ("log", None, None),
        ("task", "execute-1", "succeeded"),
        ("task", "prepare-instance", "running"),
    ):
        progress.on_event(event)
    progress.close("succeeded")
    shown = [(v.step, v.total, v.task, v.state, v.done) for v in recorder.views]
    assert shown == [
        (2, 5, "resolve-image", "succeeded", 1),
        (3, 5, "execute-0 -f /s/schema.sql", "cached", 2),
        (4, 5, "execute-1 -f /s/data.sql", "running", 2),
        (4, 5, "execute-1 -f /s/data.sql", "succeeded", 3),
        (5, 5, "prepare-instance", "running", 3),
    ]
    assert recorder.closed == "succeeded"
    assert len(fetches) == 1  # the plan is fetched once, when the first unknown task shows up
    assert recorder.views[2].text().startswith("[4/5] execute-1 -f /s/data.sql: running (")


def test_quiet_fetches_and_shows_nothing() -> None:
    def fetch() -> list[Task]:
        raise AssertionError("a quiet prepare does not read the task list")

    progress = JobProgress("j1", fetch, QuietReporter())
    for event in events(("task", "execute-0", "running")):
        progress.on_event(event)
    progress.close("succeeded")


def test_a_failing_task_list_does_not_fail_the_prepare() -> None:
    recorder = Recorder()

    def fetch() -> list[Task]:
        raise OSError("engine went away")

    progress = JobProgress("j1", fetch, recorder)
    progress.on_event(events(("task", "execute-0", "running"))[0])
    assert [(v.step, v.total, v.task) for v in recorder.views] == [(0, 0, "execute-0")]
    assert recorder.views[0].text().startswith("execute-0: running (")


def test_lines_reporter_writes_one_line_per_view() -> None:
    lines: list[str] = []
    reporter = LinesReporter(lines.append)
    view = ProgressView("j", 3, 5, "execute-0 -f s.sql", "running", 1.25, 2)
    reporter.update(view)
    reporter.close(view, "succeeded")
    assert lines == [
        "sqlrs: [3/5] execute-0 -f s.sql: running (1.2s)",
        "sqlrs: prepare succeeded in 1.2s",
    ]


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("mode", "stream", "expected"),
    [
        (None, io.StringIO(), QuietReporter),
        ("quiet", FakeTty(), QuietReporter),
        ("auto", io.StringIO(), LinesReporter),
        ("auto", FakeTty(), BarReporter),
        ("lines", FakeTty(), LinesReporter),
        ("bar", io.StringIO(), BarReporter),
    ],
)
def test_reporter_for(mode: str | None, stream: io.StringIO, expected: type) -> None:
    assert type(reporter_for(mode, stream)) is expected


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="progress must be one of"):
        reporter_for("fancy")


def test_bar_reporter_draws_and_clears() -> None:
    stream = FakeTty()
    reporter = BarReporter(stream)
    view = ProgressView("j", 1, 2, "execute-0", "running", 0.5, 0)
    reporter.update(view)
    reporter.update(ProgressView("j", 2, 2, "prepare-instance", "running", 0.9, 1))
    reporter.close(view, "succeeded")
    assert "sqlrs: prepare succeeded" in stream.getvalue()
