"""Prepare-job routes: list, status, tasks, events (SPEC §4)."""

from __future__ import annotations

import logging
from typing import Any

import bottle
import pykka

from sqlrs_engine.errors import ApiError, internal_error, not_found
from sqlrs_engine.http.context import ASK_TIMEOUT, ApiContext
from sqlrs_engine.http.handoff import stream_response
from sqlrs_engine.http.jsonio import NDJSON
from sqlrs_engine.http.params import header_value, json_object_body, optional_text, query_value
from sqlrs_engine.http.responses import (
    PLAIN_TEXT,
    json_response,
    paged_list_response,
    plain_not_found,
)
from sqlrs_engine.http.streams import (
    EventStream,
    content_range,
    parse_events_range,
    range_unsatisfiable,
    whole_response,
)
from sqlrs_engine.http.submission import (
    check_request_size,
    normalized_args,
    validate_submission,
)
from sqlrs_engine.jobs.event_log import JOB_LOG
from sqlrs_engine.jobs.explain import explain_prepare
from sqlrs_engine.prepare.job_request import parse_prepare_request

log = logging.getLogger(__name__)


def register(app: bottle.Bottle, ctx: ApiContext) -> None:
    registry = ctx.registry

    @app.post("/v1/prepare-jobs")
    def submit_job() -> Any:
        body = json_object_body(bottle.request)
        record = validate_submission(body, ctx.cwd)
        # A cache hit that finds a ready pool member is recorded finished at once
        # (jobs/pooled_hit.py); anything else is an ordinary job.
        accepted = ctx.pooled_hits.submit(record) if ctx.pooled_hits is not None else None
        if accepted is None:
            accepted = registry.submit_job(record).get(timeout=ASK_TIMEOUT)
        return json_response(accepted, status=201, headers={"Location": accepted["status_url"]})

    @app.post("/v1/cache/explain/prepare")
    def explain() -> Any:
        body = json_object_body(bottle.request)
        request = parse_prepare_request(body)
        check_request_size(request)
        normalized_args(request, ctx.cwd)
        if ctx.runtime is None:
            raise internal_error(details="no runtime configured")
        answer = explain_prepare(
            request,
            registry=registry,
            runtime=ctx.runtime,
            engine_version=ctx.version,
            cwd=ctx.cwd,
            snapshots=ctx.snapshots,
        )
        return json_response(answer)

    @app.post("/v1/prepare-jobs/<job_id>/cancel")
    def cancel_job(job_id: str) -> Any:
        outcome = registry.cancel_job(job_id).get(timeout=ASK_TIMEOUT)
        if outcome is None:
            raise not_found("job not found")
        status, body = outcome
        return json_response(body, status=status)

    @app.get("/v1/prepare-jobs")
    def list_jobs() -> Any:
        prefix = optional_text(query_value(bottle.request.query, "job"))
        return paged_list_response(
            lambda after, limit: registry.list_jobs_page(prefix, after, limit).get(
                timeout=ASK_TIMEOUT
            )
        )

    @app.get("/v1/prepare-jobs/<job_id>")
    def job_status(job_id: str) -> Any:
        status = registry.job_status(job_id).get(timeout=ASK_TIMEOUT)
        return plain_not_found() if status is None else json_response(status)

    @app.get("/v1/tasks")
    def list_tasks() -> Any:
        job_id = optional_text(query_value(bottle.request.query, "job"))
        return paged_list_response(
            lambda after, limit: registry.list_tasks_page(job_id, after, limit).get(
                timeout=ASK_TIMEOUT
            )
        )

    @app.get("/v1/prepare-jobs/<job_id>/tasks/<task_id>/log")
    def task_log(job_id: str, task_id: str) -> Any:
        """A task's full log (every line, including those past the stored-event bound)."""
        row = registry.job_row(job_id).get(timeout=ASK_TIMEOUT)
        if row is None:
            return plain_not_found()
        known = {task["task_id"] for task in registry.task_rows(job_id).get(timeout=ASK_TIMEOUT)}
        if task_id != JOB_LOG and task_id not in known:
            return plain_not_found()
        bottle.response.set_header("Cache-Control", "no-store")
        if ctx.jobs_dir is None:
            return bottle.HTTPResponse(body=b"", status=200, headers={"Content-Type": PLAIN_TEXT})
        logs = ctx.jobs_dir / job_id / "logs"
        if not (logs / f"{task_id}.log").is_file():
            return bottle.HTTPResponse(body=b"", status=200, headers={"Content-Type": PLAIN_TEXT})
        return bottle.static_file(f"{task_id}.log", root=str(logs), mimetype=PLAIN_TEXT)

    @app.get("/v1/prepare-jobs/<job_id>/events")
    def job_events(job_id: str) -> Any:
        requested = parse_events_range(header_value(bottle.request.environ, "Range"))
        start, stop = (requested.start, requested.stop) if requested else (0, None)
        sub = registry.subscribe_events(job_id, start, stop).get(timeout=ASK_TIMEOUT)
        if sub is None:
            return plain_not_found()

        def close() -> None:
            try:
                signature = registry.unsubscribe_events(job_id, sub.token).get(timeout=ASK_TIMEOUT)
                if signature is not None and ctx.deletion is not None:
                    # Retention skipped this job while it was being read (SPEC §0.1); now
                    # it may apply, so identical jobs still converge to `maxIdentical`.
                    ctx.deletion.trim_jobs(signature)
            except (pykka.ActorDeadError, pykka.Timeout):
                log.info("events stream of job %s closed while the engine stops", job_id)

        headers = {"Content-Type": NDJSON, "Accept-Ranges": "events", "Cache-Control": "no-store"}
        status = 200
        if requested is not None:
            if range_unsatisfiable(requested, sub.total, sub.terminal):
                close()
                error = ApiError(
                    416,
                    "invalid_argument",
                    "requested events range not satisfiable",
                    f"the job has {sub.total} events",
                )
                return json_response(
                    error.to_dict(),
                    status=416,
                    headers={"Content-Range": f"events */{sub.total}", "Accept-Ranges": "events"},
                )
            status = 206
            headers["Content-Range"] = content_range(requested, sub.total, sub.terminal)
        for name, value in headers.items():
            bottle.response.set_header(name, value)
        bottle.response.status = status
        stream = EventStream(sub, start, stop, close)
        body = stream.whole_body()
        if body is not None:
            return whole_response(body, stream.close)
        return stream_response(stream)
