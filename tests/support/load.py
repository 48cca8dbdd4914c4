"""Many client threads against a real engine: each HTTP call recorded as the client saw it,
prepare jobs and runs followed to their end, a bounded wait for every thread, and the engine
log's unexpected tracebacks — what the concurrent-load and eviction storms share."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.support.engine_process import EngineProcess
from tests.support.prepare import psql_body

STREAM_TIMEOUT = 120
"""Seconds a client waits for the next bytes of a response (job streams heartbeat at 0.5 s)."""

WORKERS_TIMEOUT = 240
"""Seconds a scenario's client threads get to finish once its load has been submitted."""

# -- talking to the engine from many threads -----------------------------------------------------


@dataclass
class Call:
    """One HTTP request as the client saw it (the body is kept for 5xx answers)."""

    method: str
    path: str
    status: int
    body: str = ""


@dataclass
class Job:
    """A prepare job, followed to its end through its events stream."""

    job_id: str
    events: list[dict[str, Any]]
    state_ids: list[str] = field(default_factory=list)
    """Output states of its steps, in order (empty if retention removed the job meanwhile)."""

    @property
    def status(self) -> str | None:
        statuses = [e["status"] for e in self.events if e["type"] == "status"]
        return statuses[-1] if statuses else None

    @property
    def result(self) -> dict[str, Any]:
        return dict(next(e["result"] for e in self.events if e["type"] == "result"))

    @property
    def error(self) -> dict[str, Any] | None:
        errors = [e["error"] for e in self.events if e["type"] == "error"]
        return errors[-1] if errors else None

    def logs(self) -> list[str]:
        return [e.get("message", "") for e in self.events if e["type"] == "log"]

    def executed_states(self) -> list[str]:
        """The output states of the steps whose psql this job ran (not cache hits).

        A step's `psql: start` may appear more than once: the heartbeat repeats the last log
        event every 500 ms while psql is silent."""
        executed: list[str] = []
        task = None
        for event in self.events:
            if event["type"] == "task":
                task = event["task_id"]
            elif event.get("message") == "psql: start" and task is not None:
                position = int(task.rsplit("-", 1)[1])
                state = self.state_ids[position] if position < len(self.state_ids) else task
                if state not in executed:
                    executed.append(state)
        return executed


@dataclass
class Run:
    """One POST /v1/runs: the HTTP status and the events (or the ErrorResponse)."""

    status: int
    events: list[dict[str, Any]]

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1] if self.events else {}

    @property
    def stdout(self) -> str:
        return "".join(e["data"] for e in self.events if e["type"] == "stdout")


class Api:
    """An HTTP client for many threads: one session per thread, every status recorded."""

    def __init__(self, engine: EngineProcess) -> None:
        self.engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self.calls: list[Call] = []

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def request(
        self, method: str, path: str, *, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        kwargs.setdefault("timeout", STREAM_TIMEOUT)
        response = self._session().request(
            method,
            self.engine.base_url + path,
            headers={"Authorization": f"Bearer {self.engine.token}"},
            allow_redirects=False,
            stream=stream,
            **kwargs,
        )
        body = response.text if response.status_code >= 500 else ""
        with self._lock:
            self.calls.append(Call(method, path, response.status_code, body))
        return response

    def get_json(self, path: str, **kwargs: Any) -> Any:
        response = self.request("GET", path, **kwargs)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def server_errors(self, allowed: Callable[[Call], bool] = lambda _: False) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.status >= 500 and not allowed(c)]

    def submit(self, body: dict[str, Any]) -> str:
        response = self.request("POST", "/v1/prepare-jobs", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["job_id"])

    def follow(self, job_id: str, on_event: Callable[[dict[str, Any]], None] | None = None) -> Job:
        """Read the job's events stream to its end (it ends after the job's final event)."""
        events = []
        with self.request("GET", f"/v1/prepare-jobs/{job_id}/events", stream=True) as response:
            assert response.status_code == 200, (job_id, response.status_code)
            for line in response.iter_lines():
                if line:
                    event = json.loads(line)
                    events.append(event)
                    if on_event is not None:
                        on_event(event)
        tasks = self.get_json("/v1/tasks", params={"job": job_id})
        states = [t["output_state_id"] for t in tasks if t["type"] == "state_execute"]
        return Job(job_id, events, states)

    def prepare(self, body: dict[str, Any]) -> Job:
        return self.follow(self.submit(body))

    def cancel(self, job_id: str) -> int:
        return self.request("POST", f"/v1/prepare-jobs/{job_id}/cancel").status_code

    def run_psql(self, instance_id: str, *args: str) -> Run:
        body = {"instance_ref": instance_id, "kind": "psql", "args": list(args)}
        with self.request("POST", "/v1/runs", json=body, stream=True) as response:
            if response.status_code != 200:
                return Run(response.status_code, [response.json()])
            return Run(200, [json.loads(line) for line in response.iter_lines() if line])


def finish(workers: list[concurrent.futures.Future[Any]]) -> list[Any]:
    """Wait (bounded) for every client thread; a hang or an exception fails the test."""
    _, pending = concurrent.futures.wait(workers, timeout=WORKERS_TIMEOUT)
    assert not pending, f"{len(pending)} client thread(s) still busy after {WORKERS_TIMEOUT}s"
    return [worker.result() for worker in workers]


# -- the engine log --------------------------------------------------------------------------------

LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z (\w+) ", re.MULTILINE)


def unexpected_exceptions(log_text: str) -> list[str]:
    """Records with a traceback at WARNING or above (`log.exception`: an error no code path
    expected). Pykka logs the exceptions it hands back to callers at INFO; those are fine."""
    starts = [m.start() for m in LOG_RECORD.finditer(log_text)] + [len(log_text)]
    records = [log_text[a:b] for a, b in itertools.pairwise(starts)]
    return [
        record
        for record in records
        if "Traceback" in record and record.split(" ", 2)[1] in ("WARNING", "ERROR", "CRITICAL")
    ]


def storm(
    stop: threading.Event, seconds: float, *crews: tuple[Callable[[int], Any], int, int]
) -> None:
    """Run crews of client threads — `(worker, how many, first seed)`, each worker called with
    its own seed — for `seconds`, then set `stop` and wait (bounded) for all of them."""
    size = sum(count for _, count, _ in crews)
    with concurrent.futures.ThreadPoolExecutor(size) as pool:
        workers = [
            pool.submit(worker, first + n) for worker, count, first in crews for n in range(count)
        ]
        try:
            stop.wait(seconds)
        finally:
            stop.set()
        finish(workers)


def prepare_until(
    stop: threading.Event, api: Api, scripts: list[tuple[str, ...]], jobs: list[Job]
) -> Callable[[int], None]:
    """A storm worker: prepares of scripts picked at random (by its seed) until `stop`."""

    def work(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            jobs.append(api.prepare(psql_body(*rng.choice(scripts))))

    return work


def run_until(stop: threading.Event, api: Api, sql: str, runs: list[Run]) -> Callable[[int], None]:
    """A storm worker: `psql -c sql` on an instance picked at random until `stop`."""

    def work(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            targets = [i["instance_id"] for i in api.get_json("/v1/instances")]
            if not targets:
                time.sleep(0.1)
                continue
            runs.append(api.run_psql(rng.choice(targets), "-c", sql))

    return work
