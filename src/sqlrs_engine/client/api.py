"""`Client`: typed calls over the engine's HTTP API (the one the `sqlrs` CLI speaks).

HTTP goes through `requests` (a pooled keep-alive session: a pytest suite makes several calls
per test, and reconnecting for each would be most of the fixture's cost; NDJSON streams are
read line by line as they arrive). The engine is found or started lazily, on the first call,
by `EngineLocator`; if it goes away later (idle timeout) a request that never reached it is
retried once against a newly located engine, and reads are retried once on any connection
error. Instances survive that: their servers outlive the engine that made them.

DSNs are handed back to the caller and never logged or put in exception messages.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
import ujson
import urllib3

from sqlrs_engine.client.bodies import lb_request, psql_request
from sqlrs_engine.client.errors import (
    ApiError,
    DeleteBlocked,
    EngineUnavailable,
    JobFailed,
    NotFound,
    RunFailed,
    UnsupportedEndpoint,
    api_error,
)
from sqlrs_engine.client.locate import DEFAULT_IDLE_TIMEOUT, EngineEndpoint, EngineLocator
from sqlrs_engine.client.models import (
    Event,
    Instance,
    InstanceEntry,
    JobEntry,
    RunResult,
    StateEntry,
    Task,
)
from sqlrs_engine.client.progress import JobProgress, Reporter, reporter_for

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "postgres"
"""The highest installed PostgreSQL major on the host runtime, `postgres:latest` in Docker."""

REQUEST_TIMEOUT = 120.0
"""Seconds for one non-streaming request (a DELETE stops a server and removes a clone)."""

STREAM_READ_TIMEOUT = 600.0
"""Seconds without a byte on a stream before giving up (heartbeats come every ≤ 1 s)."""

CANCEL_TIMEOUT = 10.0

TERMINAL = ("succeeded", "failed")


class Client:
    """A connection to one engine (found through `engine.json`, started when needed)."""

    def __init__(
        self,
        *,
        state_dir: Path | str | None = None,
        engine_path: str | None = None,
        idle_timeout: str = DEFAULT_IDLE_TIMEOUT,
        autostart: bool = True,
        endpoint: EngineEndpoint | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        locator = EngineLocator(
            engine_path=engine_path, idle_timeout=idle_timeout, autostart=autostart, env=env
        )
        if state_dir is not None:
            locator.state_dir = Path(state_dir)
        self.locator = locator
        self._engine = endpoint
        self._session = requests.Session()

    # -- connection ------------------------------------------------------------------------

    @property
    def engine(self) -> EngineEndpoint:
        """The engine in use; located (and started if allowed) on first use."""
        if self._engine is None:
            self._engine = self.locator.ensure()
        return self._engine

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        data = None if body is None else ujson.dumps(body, escape_forward_slashes=False)
        timeout = (10.0, STREAM_READ_TIMEOUT if stream else REQUEST_TIMEOUT)
        for attempt in (1, 2):
            engine = self.engine
            all_headers = {"Authorization": f"Bearer {engine.auth_token}", **(headers or {})}
            if data is not None:
                all_headers["Content-Type"] = "application/json"
            try:
                response = self._session.request(
                    method,
                    engine.base_url + path,
                    data=data,
                    params=params,
                    headers=all_headers,
                    stream=stream,
                    timeout=timeout,
                    allow_redirects=False,
                )
            except requests.ConnectionError as error:
                retry = method == "GET" or _never_sent(error)
                if attempt == 1 and retry:
                    self._engine = None  # find it again (or start a new one)
                    continue
                raise EngineUnavailable(
                    f"{method} {path}: engine at {engine.endpoint}: {error}"
                ) from error
            if response.status_code == 401 and attempt == 1:
                # engine.json changed under us (a new engine with a new token): look again.
                response.close()
                self._engine = None
                continue
            return response
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, ok: Sequence[int] = (200,), **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code not in ok:
            raise _error_of(response)
        return response.json()

    # -- health, cache ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """`GET /v1/health`: `{ok, version, instanceId, pid}`."""
        result: dict[str, Any] = self._json("GET", "/v1/health")
        return result

    def cache_status(self) -> dict[str, Any]:
        """`GET /v1/cache/status` (SPEC §10.3); `UnsupportedEndpoint` if the engine lacks it."""
        response = self._request("GET", "/v1/cache/status")
        if response.status_code == 404 and not _is_json(response):
            raise UnsupportedEndpoint(
                404,
                "not_found",
                "this engine does not serve GET /v1/cache/status",
                f"engine version {self.engine.version}",
            )
        if response.status_code != 200:
            raise _error_of(response)
        result: dict[str, Any] = response.json()
        return result

    # -- config ----------------------------------------------------------------------------

    def get_config(self, path: str | None = None, *, effective: bool = False) -> Any:
        """`GET /v1/config` (SPEC §8): the overrides, or the value at `path`."""
        params = _params(path=path, effective="true" if effective else None)
        return self._json("GET", "/v1/config", params=params)

    def set_config(self, path: str, value: Any) -> Any:
        """`PATCH /v1/config`: set one key (validated by the engine); `{path, value}`."""
        return self._json("PATCH", "/v1/config", body={"path": path, "value": value})

    # -- prepare ---------------------------------------------------------------------------

    def prepare_psql(
        self,
        args: Sequence[str],
        *,
        image: str = DEFAULT_IMAGE,
        stdin: str | None = None,
        ttl: str | None = None,
        progress: str | Reporter | None = None,
    ) -> Instance:
        """Prepare from psql arguments (`-f file`, `-c sql`, `-f -` with `stdin`).

        Relative `-f` paths are taken relative to this process's working directory.
        `ttl` (a Go duration such as `30m`) makes the engine delete the instance after it.
        """
        return self.prepare(psql_request(args, image, stdin), ttl=ttl, progress=progress)

    def prepare_lb(
        self,
        args: Sequence[str],
        *,
        image: str = DEFAULT_IMAGE,
        liquibase_exec: str | None = None,
        exec_mode: str | None = None,
        env: Mapping[str, str] | None = None,
        work_dir: str | Path | None = None,
        ttl: str | None = None,
        progress: str | Reporter | None = None,
    ) -> Instance:
        """Prepare from Liquibase arguments (SPEC §3); `work_dir` defaults to the cwd."""
        request = lb_request(
            args,
            image,
            liquibase_exec=liquibase_exec,
            exec_mode=exec_mode,
            env=env,
            work_dir=work_dir,
        )
        return self.prepare(request, ttl=ttl, progress=progress)

    def prepare(
        self,
        request: Mapping[str, Any],
        *,
        ttl: str | None = None,
        progress: str | Reporter | None = None,
    ) -> Instance:
        """Submit a prepare request, follow it to the end, return its instance.

        Ctrl-C (KeyboardInterrupt) while waiting cancels the job before re-raising.
        """
        body = dict(request)
        if ttl:
            body["ttl"] = ttl
        job_id = self.submit_prepare(body)
        return self.wait(job_id, progress=progress)

    def submit_prepare(self, request: Mapping[str, Any]) -> str:
        """`POST /v1/prepare-jobs`; the new job's id."""
        accepted = self._json("POST", "/v1/prepare-jobs", ok=(201,), body=dict(request))
        return str(accepted["job_id"])

    def wait(self, job_id: str, *, progress: str | Reporter | None = None) -> Instance:
        """Follow a job's events until it ends; its instance, or `JobFailed`.

        Everything is taken from the stream, plus one status read while the stream is still
        open: a finished job may be removed at any time afterwards by retention (§4.11).
        """
        tracker = JobProgress(job_id, lambda: self.tasks(job_id), reporter_for(progress))
        outcome = "interrupted"
        seen: list[Event] = []
        status: dict[str, Any] | None = None
        try:
            for event in self.events(job_id):
                tracker.on_event(event)
                seen.append(event)
                if event.type == "result":
                    with contextlib.suppress(NotFound):
                        status = self.job_status(job_id)
            outcome = _outcome(seen)
        except KeyboardInterrupt:
            self._cancel_quietly(job_id)
            raise
        finally:
            tracker.close(outcome)
        return _instance_of(job_id, seen, status)

    def _cancel_quietly(self, job_id: str) -> None:
        with contextlib.suppress(Exception):
            self._request("POST", f"/v1/prepare-jobs/{job_id}/cancel").close()

    def events(self, job_id: str, start: int = 0) -> Iterator[Event]:
        """The job's events from index `start` until the job has ended.

        A dropped stream is resumed where it stopped (`Range: events=N-`; an engine that
        answers 200 instead of 206 is handled by skipping the events already seen).
        """
        index = start
        ended = False
        while True:
            headers = {"Range": f"events={index}-"} if index else {}
            response = self._request(
                "GET", f"/v1/prepare-jobs/{job_id}/events", headers=headers, stream=True
            )
            if response.status_code not in (200, 206):
                raise _error_of(response)
            skip = index if response.status_code == 200 else 0
            position = 0 if response.status_code == 200 else index
            try:
                with response:
                    for line in response.iter_lines():
                        if not line:
                            continue
                        if skip:
                            skip -= 1
                            position += 1
                            continue
                        event = Event.from_json(position, ujson.loads(line))
                        ended = (
                            ended
                            or event.type in ("result", "error")
                            or (event.type == "status" and event.status in TERMINAL)
                        )
                        yield event
                        position += 1
                        index = position
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                log.debug("events stream of %s dropped at %d: %s", job_id, index, error)
                continue
            if ended:
                return  # the engine ends a stream only after the job's final event (§0.1)
            try:
                if self.job_status(job_id).get("status") in TERMINAL:
                    return
            except NotFound:
                return  # the job was deleted while we followed it

    def job_status(self, job_id: str) -> dict[str, Any]:
        """`GET /v1/prepare-jobs/{id}` (SPEC §4.2)."""
        result: dict[str, Any] = self._json("GET", f"/v1/prepare-jobs/{job_id}")
        return result

    def tasks(self, job_id: str) -> list[Task]:
        """The job's tasks in plan order, with status and what each runs."""
        rows = self._json("GET", "/v1/tasks", params={"job": job_id})
        return [Task.from_json(row) for row in rows or []]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """`POST /v1/prepare-jobs/{id}/cancel`; the job status (SPEC §4.6)."""
        result: dict[str, Any] = self._json(
            "POST", f"/v1/prepare-jobs/{job_id}/cancel", ok=(200, 202)
        )
        return result

    def list_jobs(self, job: str | None = None) -> list[JobEntry]:
        params = {"job": job} if job else None
        return [
            JobEntry.from_json(row)
            for row in self._json("GET", "/v1/prepare-jobs", params=params) or []
        ]

    # -- runs ------------------------------------------------------------------------------

    def run(
        self,
        instance_id: str,
        args: Sequence[str] = (),
        *,
        kind: str = "psql",
        stdin: str | None = None,
        command: str | None = None,
    ) -> RunResult:
        """`POST /v1/runs`: run psql/pgbench against an instance, collect its output."""
        request: dict[str, Any] = {"instance_ref": instance_id, "kind": kind, "args": list(args)}
        if stdin is not None:
            request["stdin"] = stdin
        if command:
            request["command"] = command
        response = self._request("POST", "/v1/runs", body=request, stream=True)
        if response.status_code != 200:
            raise _error_of(response)
        stdout: list[str] = []
        stderr: list[str] = []
        events: list[dict[str, Any]] = []
        exit_code: int | None = None
        with response:
            for line in response.iter_lines():
                if not line:
                    continue
                event = ujson.loads(line)
                events.append(event)
                kind_of = event.get("type")
                if kind_of == "stdout":
                    stdout.append(str(event.get("data", "")))
                elif kind_of == "stderr":
                    stderr.append(str(event.get("data", "")))
                elif kind_of == "exit":
                    exit_code = int(event.get("exit_code", 0))
                elif kind_of == "error":
                    error = event.get("error") or {}
                    raise RunFailed(
                        200,
                        str(error.get("code", "internal_error")),
                        str(error.get("message", "run failed")),
                        error.get("details"),
                    )
        if exit_code is None:
            raise EngineUnavailable(f"run on {instance_id}: stream ended without an exit event")
        return RunResult(instance_id, exit_code, "".join(stdout), "".join(stderr), events)

    # -- registry --------------------------------------------------------------------------

    def list_instances(
        self, *, state: str | None = None, image: str | None = None, id_prefix: str | None = None
    ) -> list[InstanceEntry]:
        params = _params(state=state, image=image, id_prefix=id_prefix)
        rows = self._json("GET", "/v1/instances", params=params)
        return [InstanceEntry.from_json(row) for row in rows or []]

    def get_instance(self, instance_id: str) -> InstanceEntry:
        """The instance entry; `NotFound` when there is none."""
        return InstanceEntry.from_json(self._json("GET", f"/v1/instances/{instance_id}"))

    def list_states(
        self, *, kind: str | None = None, image: str | None = None, id_prefix: str | None = None
    ) -> list[StateEntry]:
        params = _params(kind=kind, image=image, id_prefix=id_prefix)
        rows = self._json("GET", "/v1/states", params=params)
        return [StateEntry.from_json(row) for row in rows or []]

    # -- deletion --------------------------------------------------------------------------

    def delete_instance(
        self, instance_id: str, *, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]:
        """`DELETE /v1/instances/{id}`; `DeleteBlocked` when connections block it."""
        return self._delete(f"/v1/instances/{instance_id}", force=force, dry_run=dry_run)

    def delete_state(
        self, state_id: str, *, recurse: bool = False, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]:
        return self._delete(f"/v1/states/{state_id}", recurse=recurse, force=force, dry_run=dry_run)

    def delete_job(
        self, job_id: str, *, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]:
        return self._delete(f"/v1/prepare-jobs/{job_id}", force=force, dry_run=dry_run)

    def _delete(self, path: str, **flags: bool) -> dict[str, Any]:
        params = {name: "true" for name, value in flags.items() if value}
        response = self._request("DELETE", path, params=params)
        if response.status_code == 409 and _is_json(response):
            body = response.json()
            if isinstance(body, dict) and "outcome" in body:
                raise DeleteBlocked(body)
        if response.status_code != 200:
            raise _error_of(response)
        result: dict[str, Any] = response.json()
        return result


def _params(**values: str | None) -> dict[str, str]:
    return {name: value for name, value in values.items() if value}


def _is_json(response: requests.Response) -> bool:
    return "json" in response.headers.get("Content-Type", "")


def _error_of(response: requests.Response) -> ApiError:
    try:
        body: object = response.json() if _is_json(response) else response.text
    except ValueError:
        body = response.text
    return api_error(response.status_code, body)


def _never_sent(error: requests.ConnectionError) -> bool:
    """True when the connection was refused: the request cannot have reached any engine."""
    reason: object = error.args[0] if error.args else None
    reason = getattr(reason, "reason", reason)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


_NO_STEP_TASKS = ("plan", "resolve-image", "prepare-instance")


def _outcome(events: Sequence[Event]) -> str:
    for event in reversed(events):
        if event.type == "result":
            return "succeeded"
        if event.type == "error":
            return "failed"
    return "ended"


def _instance_of(job_id: str, events: Sequence[Event], status: dict[str, Any] | None) -> Instance:
    """The instance of a finished job's `result` event, or `JobFailed` with its error."""
    result = next((e.result for e in reversed(events) if e.type == "result"), None)
    if result is None:
        error = next((e.error for e in reversed(events) if e.type == "error"), None) or {
            "code": "internal_error",
            "message": "job ended without a result",
        }
        raise JobFailed(
            job_id,
            str(error.get("code", "internal_error")),
            str(error.get("message", "job failed")),
            error.get("details"),
        )
    if status is not None and status.get("tasks"):
        steps = [task for task in status["tasks"] if task.get("type") == "state_execute"]
        cached = bool(steps) and all(task.get("cached") for task in steps)
    else:
        # The job is already gone: no task but planning ones ran means every step was cached.
        ran = {e.task_id for e in events if e.type == "task" and e.status == "running"}
        cached = ran <= set(_NO_STEP_TASKS)
    return Instance(
        instance_id=str(result["instance_id"]),
        state_id=str(result.get("state_id", "")),
        image_id=str(result.get("image_id", "")),
        cached=cached,
        job_id=job_id,
        dsn=str(result["dsn"]),
        expires_at=result.get("expires_at"),
        raw={key: value for key, value in result.items() if key != "dsn"},
    )
