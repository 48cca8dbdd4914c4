"""Submitting prepare jobs and waiting for them, as the `sqlrs` CLI does; querying results."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.engine_process import EngineProcess

PSQL = "/usr/lib/postgresql/15/bin/psql"
IMAGE = "postgres:15"


@dataclass
class JobOutcome:
    job_id: str
    events: list[dict[str, Any]]
    status: dict[str, Any]

    @property
    def result(self) -> dict[str, Any]:
        return dict(self.status["result"])

    @property
    def dsn(self) -> str:
        return str(self.result["dsn"])

    def log_lines(self) -> list[str]:
        return [e["message"] for e in self.events if e["type"] == "log"]

    def without_heartbeats(self) -> list[dict[str, Any]]:
        """The events with heartbeats dropped: a heartbeat re-appends the previous event (a
        `task running` or a log line) when nothing else happened for 500 ms (SPEC §4.4), so
        it is an event identical, but for its `ts`, to the one right before it."""
        kept: list[dict[str, Any]] = []
        previous: dict[str, Any] | None = None
        for event in self.events:
            bare = {k: v for k, v in event.items() if k != "ts"}
            if bare != previous:
                kept.append(event)
            previous = bare
        return kept

    def task_events(self, task_id: str) -> list[str]:
        """The statuses a task went through (heartbeat repeats left out)."""
        return [
            e["status"]
            for e in self.without_heartbeats()
            if e["type"] == "task" and e["task_id"] == task_id
        ]


def psql_body(
    *args: str, stdin: str | None = None, plan_only: bool = False, image: str = IMAGE
) -> dict[str, Any]:
    body: dict[str, Any] = {"prepare_kind": "psql", "image_id": image, "psql_args": list(args)}
    if stdin is not None:
        body["stdin"] = stdin
    if plan_only:
        body["plan_only"] = True
    return body


def submit(engine: EngineProcess, body: dict[str, Any]) -> str:
    response = engine.post("/v1/prepare-jobs", json=body)
    assert response.status_code == 201, response.text
    accepted = response.json()
    assert response.headers["Location"] == accepted["status_url"]
    return str(accepted["job_id"])


def wait(engine: EngineProcess, job_id: str) -> JobOutcome:
    """Follow the events stream to its end, then read the job status."""
    events = list(engine.ndjson(f"/v1/prepare-jobs/{job_id}/events", timeout=300))
    status = engine.get(f"/v1/prepare-jobs/{job_id}").json()
    return JobOutcome(job_id, events, status)


def prepare(engine: EngineProcess, body: dict[str, Any]) -> JobOutcome:
    return wait(engine, submit(engine, body))


def assert_succeeded(engine: EngineProcess, outcome: JobOutcome) -> None:
    """The job succeeded; if not, the failure names its error and the engine's log lines (a
    job status alone, shortened by pytest, hides why)."""
    if outcome.status.get("status") == "succeeded":
        return
    raise AssertionError(
        f"job {outcome.job_id} ended {outcome.status.get('status')!r}: "
        f"{outcome.status.get('error')!r}\n--- engine log ---\n{engine.log_excerpt()}"
    )


def wait_for_running_step(engine: EngineProcess, job_id: str, timeout: float = 60.0) -> None:
    """Block until one of the job's `state_execute` tasks is running (its psql has a server)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = engine.get("/v1/tasks", params={"job": job_id}).json()
        if any(t["type"] == "state_execute" and t["status"] == "running" for t in tasks):
            return
        assert time.monotonic() < deadline, f"no step of job {job_id} started in {timeout}s"
        time.sleep(0.05)


@contextlib.contextmanager
def release_file() -> Iterator[Path]:
    """A path the job's server (the unprivileged server user) can see appear: a step
    that `waits_for` it runs until the test creates it — no sleeping, no timing."""
    directory = Path(tempfile.mkdtemp(prefix="sqlrs-release-"))
    try:
        directory.chmod(0o755)
        yield directory / "go"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def waits_for(path: Path) -> str:
    """A psql step (needs the server's superuser, which steps run as) that runs until
    `path` exists."""
    return (
        f"do $$ begin while pg_stat_file('{path}', true) is null loop "
        "perform pg_sleep(0.05); end loop; end $$"
    )


def files_of(directory: Path) -> list[tuple[str, int]]:
    """Every path under `directory` with its size (0 for directories)."""
    return sorted(
        (str(path.relative_to(directory)), path.lstat().st_size if path.is_file() else 0)
        for path in directory.rglob("*")
    )


def query(dsn: str, sql: str) -> str:
    """Run one statement with the real psql client; its unaligned output."""
    result = subprocess.run(
        [PSQL, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def postgres_processes() -> list[str]:
    """Command lines of every running postgres server process on the machine."""
    out = subprocess.run(
        ["ps", "-eww", "-o", "pid,user,args"], capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if "postgres -D" in line or "bin/postgres" in line]
