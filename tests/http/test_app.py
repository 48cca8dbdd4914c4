"""The Bottle app in-process over WSGI, with a real Registry actor on a temporary SQLite file.

No HTTP server and no engine process: each test calls the WSGI callable the way Cheroot does
(environ in, iterate, close), so the conventions of docs/api.md are checked in milliseconds.
"""

from __future__ import annotations

import io
import logging
import wsgiref.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
import pytest
import ujson

from sqlrs_engine.actors.registry import RegistryProxy, RegistrySettings, start_registry
from sqlrs_engine.config.store import ConfigStore
from sqlrs_engine.http.activity import ActivityTracker
from sqlrs_engine.http.app import WsgiApp, build_app
from sqlrs_engine.http.context import ApiContext
from sqlrs_engine.http.jsonio import JSON, NDJSON
from sqlrs_engine.http.params import MAX_BODY_BYTES
from sqlrs_engine.persistence.jobs import JobRecord
from sqlrs_engine.persistence.metadata import StateRecord

TOKEN = "0123456789abcdef0123456789abcdef"
JOB = "a" * 32
PLAIN_404 = b"404 page not found\n"


class _IdleJob(pykka.ThreadingActor):
    """Stands in for a PrepareJob actor: the job exists and nothing runs it."""


@dataclass
class AppParts:
    """The parts the app needs: the Registry, its idle job actors, and the app itself."""

    ref: pykka.ActorRef[Any]
    registry: RegistryProxy
    jobs: list[pykka.ActorRef[Any]]
    app: WsgiApp


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[AppParts]:
    jobs: list[pykka.ActorRef[Any]] = []

    def start_job(job_id: str, registry: RegistryProxy) -> pykka.ActorRef[Any]:
        ref = _IdleJob.start()
        jobs.append(ref)
        return ref

    ref, registry = start_registry(
        RegistrySettings(
            db_path=tmp_path / "state.db",
            config=ConfigStore(tmp_path / "config.json"),
            job_actor_factory=start_job,
        )
    )
    ctx = ApiContext(
        registry=registry, auth_token=TOKEN, version="9.9.9-test", instance_id="e-1", pid=4242
    )
    try:
        yield AppParts(ref, registry, jobs, build_app(ctx))
    finally:
        for job in jobs:
            job.stop()
        ref.stop()


@pytest.fixture
def app(engine: AppParts) -> WsgiApp:
    return engine.app


# -- calling the app like a WSGI server ----------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == JSON
        assert self.body.endswith(b"\n")
        return ujson.loads(self.body)


def environ_for(
    method: str,
    path: str,
    *,
    body: bytes | io.BytesIO = b"",
    query: str = "",
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    environ: dict[str, Any] = {}
    wsgiref.util.setup_testing_defaults(environ)
    stream = body if isinstance(body, io.BytesIO) else io.BytesIO(body)
    environ.update(
        {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_LENGTH": str(len(stream.getbuffer())),
            "wsgi.input": stream,
        }
    )
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    for name, value in (headers or {}).items():
        environ[name] = value
    return environ


class Started:
    """The status and headers the app passed to start_response."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        self.status = int(status.split(" ", 1)[0])
        self.headers = {name.lower(): value for name, value in headers}


def close(result: Iterable[bytes]) -> None:
    closer = getattr(result, "close", None)
    if closer is not None:
        closer()


def call(app: WsgiApp, method: str, path: str, **kwargs: Any) -> Reply:
    """One whole request: iterate the body, then close the response, as Cheroot does."""
    started = Started()
    result = app(environ_for(method, path, **kwargs), started)
    try:
        body = b"".join(result)
    finally:
        close(result)
    return Reply(started.status, started.headers, body)


def assert_error(reply: Reply, status: int, code: str, message: str) -> dict[str, Any]:
    assert reply.status == status
    error: dict[str, Any] = reply.json()
    assert (error["code"], error["message"]) == (code, message)
    assert set(error) <= {"code", "message", "details"}
    return error


# -- health, auth, 404/405 -----------------------------------------------------------------


def test_health_needs_no_token(app: WsgiApp) -> None:
    reply = call(app, "GET", "/v1/health", token=None)
    assert reply.status == 200
    assert reply.json() == {"ok": True, "version": "9.9.9-test", "instanceId": "e-1", "pid": 4242}


def test_health_only_allows_get(app: WsgiApp) -> None:
    reply = call(app, "POST", "/v1/health", token=None)
    assert (reply.status, reply.body) == (405, b"")


PROTECTED = [
    ("GET", "/v1/config"),
    ("GET", "/v1/config/schema"),
    ("GET", "/v1/states"),
    ("GET", "/v1/states/abc"),
    ("GET", "/v1/prepare-jobs"),
    ("POST", "/v1/prepare-jobs"),
    ("GET", f"/v1/prepare-jobs/{JOB}/events"),
    ("POST", "/v1/runs"),
    ("DELETE", "/v1/instances/abc"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_without_a_token_are_401_with_an_empty_body(
    app: WsgiApp, method: str, path: str
) -> None:
    reply = call(app, method, path, token=None)
    assert (reply.status, reply.body) == (401, b"")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", f"Basic {TOKEN}", "Bearer", f"bearer {TOKEN}", f"Bearer {TOKEN}x", TOKEN],
)
def test_a_wrong_token_is_401_with_an_empty_body(app: WsgiApp, authorization: str) -> None:
    reply = call(
        app, "GET", "/v1/states", token=None, headers={"HTTP_AUTHORIZATION": authorization}
    )
    assert (reply.status, reply.body) == (401, b"")


def test_the_token_is_trimmed(app: WsgiApp) -> None:
    headers = {"HTTP_AUTHORIZATION": f"  Bearer {TOKEN} \t"}
    assert call(app, "GET", "/v1/states", token=None, headers=headers).status == 200


def test_auth_is_checked_before_the_method(app: WsgiApp) -> None:
    assert call(app, "PUT", "/v1/states", token=None).status == 401
    reply = call(app, "PUT", "/v1/states")
    assert (reply.status, reply.body) == (405, b"")
    assert reply.headers["allow"] == "GET"


def test_a_post_only_route_answers_405_to_get(app: WsgiApp) -> None:
    """`/v1/runs` exists (POST): GET is a 405, not an unknown-path 404."""
    reply = call(app, "GET", "/v1/runs")
    assert (reply.status, reply.body) == (405, b"")


@pytest.mark.parametrize(
    "path", ["/v1/nope", "/", "/v2/states", "/v1/states/a/b", "/v1/prepare-jobs/x/y/z"]
)
@pytest.mark.parametrize("token", [TOKEN, None])
def test_unknown_paths_are_a_plain_404_even_without_a_token(
    app: WsgiApp, path: str, token: str | None
) -> None:
    reply = call(app, "GET", path, token=token)
    assert (reply.status, reply.body) == (404, PLAIN_404)
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    "path",
    ["/v1/states/abc", f"/v1/prepare-jobs/{JOB}", "/v1/names/nobody", f"/v1/instances/{JOB}"],
)
def test_unknown_ids_are_the_same_plain_404(app: WsgiApp, path: str) -> None:
    reply = call(app, "GET", path)
    assert (reply.status, reply.body) == (404, PLAIN_404)
    assert reply.headers["x-content-type-options"] == "nosniff"


def test_an_unknown_path_404_has_the_headers_of_an_unknown_id_404(app: WsgiApp) -> None:
    unknown_path = call(app, "GET", "/v1/nope")
    unknown_id = call(app, "GET", "/v1/states/abc")
    assert unknown_path.headers.get("x-content-type-options") == "nosniff"
    assert unknown_path.headers["content-type"] == unknown_id.headers["content-type"]


# -- bodies and parameters -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "details"),
    [
        (b"", "EOF"),
        (b"{", None),
        (b"\xff\xfe", None),
        (b'{"path": "log.level", "value": ', None),
        (b"[1,2]", "expected a JSON object, got list"),
        (b"null", "expected a JSON object, got NoneType"),
        (b'"log.level"', "expected a JSON object, got str"),
    ],
)
@pytest.mark.parametrize(("method", "path"), [("PATCH", "/v1/config"), ("POST", "/v1/runs")])
def test_a_bad_json_body_is_a_400_error_response(
    app: WsgiApp, method: str, path: str, body: bytes, details: str | None
) -> None:
    error = assert_error(
        call(app, method, path, body=body), 400, "invalid_argument", "invalid json payload"
    )
    assert error["details"]
    if details is not None:
        assert error["details"] == details


def test_a_declared_body_over_the_limit_is_413(app: WsgiApp) -> None:
    headers = {"CONTENT_LENGTH": str(MAX_BODY_BYTES + 1)}
    reply = call(app, "PATCH", "/v1/config", body=b"{}", headers=headers)
    error = assert_error(reply, 413, "invalid_argument", "request body too large")
    assert error["details"] == f"the limit is {MAX_BODY_BYTES} bytes"


def test_a_body_over_the_limit_is_refused_without_reading_it(app: WsgiApp) -> None:
    source = io.BytesIO(b" " * (MAX_BODY_BYTES + 1024 * 1024))
    reply = call(app, "PATCH", "/v1/config", body=source)
    assert reply.status == 413
    assert source.tell() <= MAX_BODY_BYTES + 1, "read no more than one byte past the cap"


def test_a_lone_surrogate_in_the_body_still_gets_an_error_response(app: WsgiApp) -> None:
    """Valid JSON (ASCII only) whose string is not Unicode: replaced by U+FFFD, as Go does."""
    body = b'{"prepare_kind": "\\ud800", "image_id": "postgres:15"}'
    reply = call(app, "POST", "/v1/prepare-jobs", body=body)
    error = assert_error(reply, 400, "invalid_argument", "unsupported prepare_kind")
    assert "\ufffd" in error["details"]


def test_a_lone_surrogate_in_a_valid_request_is_no_500(app: WsgiApp) -> None:
    """It used to reach SQLite (and psql) and fail there with an encoding error."""
    body = b'{"instance_ref": "\\ud800x", "kind": "psql", "args": ["-c", "select 1"]}'
    reply = call(app, "POST", "/v1/runs", body=body)
    assert_error(reply, 404, "not_found", "instance not found")


@pytest.mark.parametrize("value", ["maybe", "2", "yes", "TRUE!"])
def test_a_bad_boolean_query_is_400(app: WsgiApp, value: str) -> None:
    reply = call(app, "GET", "/v1/config", query=f"effective={value}")
    error = assert_error(reply, 400, "invalid_argument", "invalid effective")
    assert value in error["details"]


def test_config_is_sorted_like_a_go_map(app: WsgiApp) -> None:
    reply = call(app, "GET", "/v1/config", query="effective=true")
    assert reply.status == 200
    config = reply.json()
    assert list(config) == sorted(config)
    assert "snapshot" in config


def test_config_patch_round_trip(app: WsgiApp) -> None:
    body = b'{"path": "log.level", "value": "info"}'
    reply = call(app, "PATCH", "/v1/config", body=body)
    assert reply.status == 200
    assert reply.json() == {"path": "log.level", "value": "info"}
    reply = call(app, "GET", "/v1/config", query="path=log.level")
    assert reply.json() == {"path": "log.level", "value": "info"}


# -- lists ---------------------------------------------------------------------------------


def add_states(registry: RegistryProxy, *ids: str) -> None:
    for state_id in ids:
        record = StateRecord(
            state_id, None, "postgres@host-15", "psql", "-c x", "2026-01-01T00:00:00Z", 1
        )
        assert registry.insert_state(record).get(timeout=10)


def test_a_list_is_a_json_array(engine: AppParts) -> None:
    add_states(engine.registry, "1" * 64, "2" * 64)
    reply = call(engine.app, "GET", "/v1/states")
    assert reply.status == 200
    states = reply.json()
    assert sorted(state["state_id"] for state in states) == ["1" * 64, "2" * 64]


@pytest.mark.parametrize("accept", [NDJSON, "application/json, application/x-ndjson"])
def test_a_list_as_ndjson_when_accept_asks_for_it(engine: AppParts, accept: str) -> None:
    add_states(engine.registry, "1" * 64, "2" * 64)
    reply = call(engine.app, "GET", "/v1/states", headers={"HTTP_ACCEPT": accept})
    assert reply.status == 200
    assert reply.headers["content-type"] == NDJSON
    lines = reply.body.splitlines(keepends=True)
    assert len(lines) == 2
    assert all(line.endswith(b"\n") for line in lines)
    assert sorted(ujson.loads(line)["state_id"] for line in lines) == ["1" * 64, "2" * 64]


@pytest.mark.parametrize(
    ("accept", "body", "content_type"), [(None, b"[]\n", JSON), (NDJSON, b"", NDJSON)]
)
@pytest.mark.parametrize("path", ["/v1/names", "/v1/instances", "/v1/prepare-jobs", "/v1/tasks"])
def test_empty_lists(
    app: WsgiApp, path: str, accept: str | None, body: bytes, content_type: str
) -> None:
    """Empty is `[]`, never `null`; as NDJSON it has no lines."""
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    reply = call(app, "GET", path, headers=headers)
    assert (reply.status, reply.body, reply.headers["content-type"]) == (200, body, content_type)


# -- job events ----------------------------------------------------------------------------


def job() -> JobRecord:
    return JobRecord(JOB, "psql", "postgres:15", False, "-c select 1", "{}", "2026-01-01T00:00:00Z")


def log(n: int) -> dict[str, Any]:
    return {"type": "log", "ts": f"2026-01-01T00:00:0{n}Z", "message": f"line {n}"}


def finished_job(registry: RegistryProxy) -> None:
    """A job with 4 events (queued, two logs, succeeded) that ended."""
    registry.submit_job(job()).get(timeout=10)
    for n in (1, 2):
        registry.record_event(JOB, log(n)).get(timeout=10)
    registry.update_job(JOB, {"status": "succeeded"}).get(timeout=10)
    registry.record_event(JOB, {"type": "status", "ts": "t", "status": "succeeded"}).get(timeout=10)
    registry.finish_job(JOB).get(timeout=10)


def lines_of(reply: Reply) -> list[dict[str, Any]]:
    assert reply.headers["content-type"] == NDJSON
    return [ujson.loads(line) for line in reply.body.splitlines()]


EVENTS = f"/v1/prepare-jobs/{JOB}/events"


def test_events_of_a_finished_job(engine: AppParts) -> None:
    finished_job(engine.registry)
    reply = call(engine.app, "GET", EVENTS)
    assert reply.status == 200
    assert reply.headers["accept-ranges"] == "events"
    assert "content-range" not in reply.headers
    events = lines_of(reply)
    assert [e.get("status") or e.get("message") for e in events] == [
        "queued",
        "line 1",
        "line 2",
        "succeeded",
    ]


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "messages"),
    [
        ("events=1-", 206, "events 1-3/4", ["line 1", "line 2", "succeeded"]),
        ("events=1-2", 206, "events 1-2/4", ["line 1", "line 2"]),
        ("events=3-10", 206, "events 3-3/4", ["succeeded"]),
        ("events=2-1", 200, None, ["queued", "line 1", "line 2", "succeeded"]),
        ("bytes=0-", 200, None, ["queued", "line 1", "line 2", "succeeded"]),
    ],
)
def test_event_ranges_of_a_finished_job(
    engine: AppParts,
    range_header: str,
    status: int,
    content_range: str | None,
    messages: list[str],
) -> None:
    finished_job(engine.registry)
    reply = call(engine.app, "GET", EVENTS, headers={"HTTP_RANGE": range_header})
    assert reply.status == status
    assert reply.headers.get("content-range") == content_range
    assert reply.headers["accept-ranges"] == "events"
    assert [e.get("message") or e.get("status") for e in lines_of(reply)] == messages


@pytest.mark.parametrize("range_header", ["events=4-", "events=9-12"])
def test_an_event_range_past_the_end_is_416(engine: AppParts, range_header: str) -> None:
    finished_job(engine.registry)
    reply = call(engine.app, "GET", EVENTS, headers={"HTTP_RANGE": range_header})
    error = assert_error(reply, 416, "invalid_argument", "requested events range not satisfiable")
    assert error["details"] == "the job has 4 events"
    assert reply.headers["content-range"] == "events */4"
    assert reply.headers["accept-ranges"] == "events"


def test_events_of_an_unknown_job_are_a_plain_404(app: WsgiApp) -> None:
    reply = call(app, "GET", EVENTS)
    assert (reply.status, reply.body) == (404, PLAIN_404)


def test_a_live_stream_follows_the_job_and_counts_as_activity(engine: AppParts) -> None:
    """As the engine wires it: the tracker counts the open stream until Cheroot closes it."""
    engine.registry.submit_job(job()).get(timeout=10)
    tracker = ActivityTracker()
    app = tracker.middleware(engine.app)
    started = Started()
    result = app(environ_for("GET", EVENTS), started)
    try:
        # The first chunk is the (empty) handoff that nobody takes here: served in place.
        chunks = (chunk for chunk in result if len(chunk))
        first = ujson.loads(next(chunks))
        assert started.status == 200
        assert first["status"] == "queued"
        assert tracker.in_flight == 1
        engine.registry.record_event(JOB, log(1)).get(timeout=10)
        assert ujson.loads(next(chunks))["message"] == "line 1"
        engine.registry.finish_job(JOB).get(timeout=10)
        assert list(chunks) == [], "END ends the stream"
        assert tracker.in_flight == 1, "until the server closes the response"
    finally:
        close(result)
    assert tracker.in_flight == 0


# -- faults and the access log -------------------------------------------------------------


def test_a_stopped_registry_is_a_503(engine: AppParts) -> None:
    """During shutdown the Registry is gone: an ErrorResponse, not a traceback."""
    engine.ref.stop()
    reply = call(engine.app, "GET", "/v1/states")
    assert_error(reply, 503, "unavailable", "engine is shutting down")


def test_deletes_without_a_deletion_service_are_a_500_error_response(app: WsgiApp) -> None:
    reply = call(app, "DELETE", "/v1/instances/abc")
    error = assert_error(reply, 500, "internal_error", "internal error")
    assert error["details"] == "deletion is not configured"


def test_every_request_is_logged(app: WsgiApp, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sqlrs_engine.http.app"):
        call(app, "GET", "/v1/health", token=None)
        call(app, "GET", "/v1/states", token=None)
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        m.startswith("http request method=GET path=/v1/health status=200 bytes=") for m in messages
    )
    assert any("path=/v1/states status=401 bytes=0" in m for m in messages)
