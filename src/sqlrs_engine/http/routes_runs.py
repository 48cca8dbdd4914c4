"""`POST /v1/runs` (SPEC §5): validate, then stream the run's events as NDJSON.

Everything that can fail before the program starts is an HTTP error (400/404/409, or a 500
when the instance has no live actor); once validation has passed the answer is a 200 stream
and later failures are `error` events (SPEC §0.1). Bottle sends a generator response with
chunked encoding, one chunk per event, flushed as it is produced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import bottle
import pykka

from sqlrs_engine.actors.instance import RunningServer, instance_proxy
from sqlrs_engine.errors import JobFailure, internal_error, not_found
from sqlrs_engine.http.context import ASK_TIMEOUT, ApiContext
from sqlrs_engine.http.handoff import stream_response
from sqlrs_engine.http.jsonio import NDJSON, json_line
from sqlrs_engine.http.params import json_object_body
from sqlrs_engine.runs.executor import END, RUN_FAILED, RunExecution
from sqlrs_engine.runs.requests import FoundInstance, validate_run_request
from sqlrs_engine.runtime.base import LogSink

log = logging.getLogger(__name__)

ENSURE_RUNNING_TIMEOUT = 180.0
"""Seconds a run waits for its instance's server (a restart starts it, ≤ 60 s)."""


def register(app: bottle.Bottle, ctx: ApiContext) -> None:
    registry = ctx.registry

    def lookup(instance_ref: str) -> FoundInstance | None:
        entry, _by_name = registry.find_instance(instance_ref, True).get(timeout=ASK_TIMEOUT)
        if entry is None:
            return None
        return FoundInstance(str(entry["instance_id"]), entry.get("runtime_id"))

    @app.post("/v1/runs")
    def run() -> Any:
        body = json_object_body(bottle.request)
        plan = validate_run_request(body, lookup)
        ref = registry.instance_actor(plan.instance_id).get(timeout=ASK_TIMEOUT)
        if ref is None and lookup(plan.instance_id) is None:
            raise not_found("instance not found")  # deleted since validation looked it up
        if ref is None:
            raise internal_error(
                RUN_FAILED,
                f"instance {plan.instance_id} has no live instance actor; restart the engine",
            )
        instance = instance_proxy(ref)

        def ensure_running(log_line: LogSink) -> RunningServer:
            try:
                return instance.ensure_running(log_line, registry).get(
                    timeout=ENSURE_RUNNING_TIMEOUT
                )
            except pykka.ActorDeadError:
                raise JobFailure(
                    "internal_error",
                    "instance is gone",
                    "the instance was deleted or the engine is stopping",
                ) from None
            except pykka.Timeout:
                raise JobFailure(
                    "internal_error",
                    "instance did not answer",
                    f"its server was not running after {ENSURE_RUNNING_TIMEOUT:g} s",
                ) from None

        execution = RunExecution(plan, ensure_running)
        bottle.response.content_type = NDJSON
        bottle.response.set_header("Cache-Control", "no-store")
        return stream_response(RunStream(execution))


class RunStream:
    """A run's events as a `StreamSource`; closing it before the end cancels the run.

    The run's bounded channel is the back-pressure: the stream takes events only as fast as
    its client reads them, so a slow client slows the program down instead of growing memory.
    """

    def __init__(self, execution: RunExecution) -> None:
        self._execution = execution
        self._started = False
        self._ended = False

    def attach(self, wake: Callable[[], None]) -> None:
        self._started = True
        self._execution.start(wake)

    def pull(self, limit: int) -> tuple[list[bytes], bool]:
        lines: list[bytes] = []
        for item in self._execution.channel.take(limit):
            if item is END:
                self._ended = True
                return lines, True
            lines.append(json_line(item))
        return lines, False

    def close(self) -> None:
        if self._started and not self._ended:
            log.info("run on %s: client went away, cancelling", self._execution.plan.instance_id)
        # Without waiting: this runs on the stream loop, which serves every other stream too.
        self._execution.abort()
