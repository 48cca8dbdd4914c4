"""Hostile input against every endpoint of the real engine process (SPEC §0.7, §1.8, §2.2, §5-§8).

The contract (§0.7): bad input never produces a 500, a traceback or a hang, and never loses
persisted data; it gets a 4xx ErrorResponse `{code, message, details?}`, or, for a prepare job,
a failed job with a useful error. Every case below sends one hostile request (raw bytes where
the encoding matters: percent escapes, chunked framing, header values) and then checks:

- the status is not 5xx, and a 4xx body is an ErrorResponse with a non-empty `code` and
  `message` (except the plain-text 404 and the bodiless 401/405 of §1.8);
- the engine still answers `GET /v1/health` with the same pid;
- the engine log written while the request was handled holds no traceback.

One engine and one real prepared instance serve the whole module; at the end the instance, its
state, its data and a config override written at the start must all still be there, and the
log must hold no traceback at all. (The sweep found ten bugs when it was written; each is
fixed, and its cases below now pass.)

What test_http_basics.py covers already (auth, 405, unknown paths, the malformed PATCH
/v1/config bodies, bad booleans on `effective`, 413) is not repeated here.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.engine_process import EngineProcess
from tests.support.prepare import IMAGE, prepare, psql_body, query

JOB_TIMEOUT = 120.0
"""Generous bound for a prepare job to end; a job still running after it is a hang."""

REQUEST_TIMEOUT = 30.0
"""Socket timeout of every request; an engine that does not answer in time hangs."""

PLAN = {"prepare_kind": "psql", "image_id": IMAGE, "psql_args": ["-c", "select 1"]}
"""A valid plan-only prepare body that hostile values are merged into."""

DROP = object()
"""Marks a field to remove from a base body."""

HUGE = "x" * 10_000
NUL = "\u0000"
LONE_SURROGATE = "\ud800"
RTL = "\u202eevil\u202c"
TRAVERSAL = "../../etc/passwd"
DEEP_ARRAY = "[" * 10_000 + "]" * 10_000
DEEP_OBJECT = '{"a":' * 10_000 + "1" + "}" * 10_000
NESTED_600 = "[" * 600 + "]" * 600
"""Below ujson's depth limit (1024), above what a recursive walk in Python survives."""


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(shared_engine: EngineProcess) -> EngineProcess:
    """One engine for the module (e2e/conftest.py); nothing here needs a fresh one."""
    return shared_engine


@dataclass(frozen=True)
class World:
    """What exists in the engine before the hostile requests, and must exist after them."""

    instance_id: str
    state_id: str
    job_id: str
    dsn: str
    files: Path
    """A directory (absolute, readable) holding the hostile input files below."""
    fifo: Path
    long_line: Path
    self_include: Path
    sentinel: Any


@pytest.fixture(scope="module")
def world(engine: EngineProcess) -> World:
    files = engine.engine_json.parent / "hostile-files"
    files.mkdir()
    files.chmod(0o755)
    fifo = files / "pipe.sql"
    os.mkfifo(fifo)
    long_line = files / "long-line.sql"
    long_line.write_text("select '" + "x" * (70 * 1024) + "';\n", encoding="utf-8")
    self_include = files / "loop.sql"
    self_include.write_text("select 1;\n\\ir loop.sql\n", encoding="utf-8")

    outcome = prepare(
        engine, psql_body("-c", "create table keep(v text); insert into keep values ('safe')")
    )
    assert outcome.status["status"] == "succeeded", outcome.status
    sentinel = {"keep": ["safe", 1, None, {"nested": True}]}
    reply = engine.patch("/v1/config", json={"path": "badinput.sentinel", "value": sentinel})
    assert reply.status_code == 200, reply.text
    return World(
        instance_id=outcome.result["instance_id"],
        state_id=outcome.result["state_id"],
        job_id=outcome.job_id,
        dsn=outcome.dsn,
        files=files,
        fifo=fifo,
        long_line=long_line,
        self_include=self_include,
        sentinel=sentinel,
    )


def fill(value: Any, world: World) -> Any:
    """`value` with the placeholders {iid} {sid} {job} {files} {fifo} … replaced."""
    if isinstance(value, str):
        for key, text in {
            "{iid}": world.instance_id,
            "{sid}": world.state_id,
            "{job}": world.job_id,
            "{files}": str(world.files),
            "{fifo}": str(world.fifo),
            "{long_line}": str(world.long_line),
            "{loop}": str(world.self_include),
        }.items():
            value = value.replace(key, text)
        return value
    if isinstance(value, list):
        return [fill(item, world) for item in value]
    if isinstance(value, dict):
        return {key: fill(item, world) for key, item in value.items()}
    return value


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    body = dict(base)
    for key, value in overrides.items():
        if value is DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


# -- raw HTTP ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    def __str__(self) -> str:
        return f"{self.status} {self.body[:400]!r}"


def send(
    engine: EngineProcess,
    method: str,
    target: str,
    body: bytes | None = None,
    *,
    headers: dict[str, str | bytes] | None = None,
    chunked: bool = False,
    timeout: float = REQUEST_TIMEOUT,
) -> Reply:
    """One request with the target sent byte for byte (percent escapes untouched)."""
    host, port = engine.info["endpoint"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        all_headers: dict[str, str | bytes] = {"Authorization": f"Bearer {engine.token}"}
        all_headers.update(headers or {})
        if body is not None:
            if chunked:
                all_headers["Transfer-Encoding"] = "chunked"
            else:
                all_headers.setdefault("Content-Length", str(len(body)))
        for name, value in all_headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        if body is not None:
            if chunked:
                for start in range(0, len(body), 7):
                    piece = body[start : start + 7]
                    connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                connection.send(b"0\r\n\r\n")
            else:
                connection.send(body)
        response = connection.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


def send_raw(engine: EngineProcess, request: bytes, timeout: float = REQUEST_TIMEOUT) -> Reply:
    """Write `request` (request line, headers and body, as is) and read one response."""
    host, port = engine.info["endpoint"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)


def send_json(engine: EngineProcess, method: str, target: str, value: Any, **kwargs: Any) -> Reply:
    data = json.dumps(value, ensure_ascii=True).encode()  # \u escapes keep lone surrogates
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return send(engine, method, target, data, headers=headers, **kwargs)


# -- the engine log ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedTraceback:
    header: str
    """The log record that carries the traceback."""
    exception: str
    """Its last line: `Type: message`."""


def log_path(engine: EngineProcess) -> Path:
    return engine.engine_json.parent / "logs" / "engine.log"


def log_size(engine: EngineProcess) -> int:
    path = log_path(engine)
    return path.stat().st_size if path.exists() else 0


def log_since(engine: EngineProcess, offset: int) -> str:
    with log_path(engine).open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", "replace")


def tracebacks(text: str) -> list[LoggedTraceback]:
    lines = text.splitlines()
    found = []
    for index, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last):"):
            continue
        end = index + 1
        while end < len(lines) and (lines[end].startswith(" ") or not lines[end].strip()):
            end += 1
        header = lines[index - 1] if index > 0 else ""
        found.append(LoggedTraceback(header, lines[end] if end < len(lines) else ""))
    return found


def unexpected_tracebacks(text: str) -> list[LoggedTraceback]:
    return tracebacks(text)


# -- the checks every case makes -----------------------------------------------------------


def assert_healthy(engine: EngineProcess) -> None:
    assert engine.process.poll() is None, "the engine process died"
    health = requests.get(engine.base_url + "/v1/health", timeout=REQUEST_TIMEOUT)
    assert health.status_code == 200
    assert health.json()["pid"] == engine.info["pid"]


def assert_error(
    reply: Reply,
    status: int,
    code: str | None = None,
    message: str | None = None,
    details: str | None = None,
) -> dict[str, Any]:
    """`reply` is an ErrorResponse with this status (and code, message, details substring)."""
    assert reply.status == status, str(reply)
    assert reply.headers.get("content-type", "").startswith("application/json"), str(reply)
    error = reply.json()
    assert isinstance(error, dict), str(reply)
    assert isinstance(error.get("code"), str), str(reply)
    assert error["code"], str(reply)
    assert isinstance(error.get("message"), str), str(reply)
    assert error["message"], str(reply)
    assert set(error) <= {"code", "message", "details"}, str(reply)
    if code is not None:
        assert error["code"] == code, str(reply)
    if message is not None:
        assert error["message"] == message, str(reply)
    if details is not None:
        assert details in error.get("details", ""), str(reply)
    return error


def assert_plain_404(reply: Reply) -> None:
    assert reply.status == 404, str(reply)
    assert reply.body == b"404 page not found\n", str(reply)


def assert_not_5xx(reply: Reply) -> None:
    assert reply.status < 500, f"bad input got a server error: {reply}"
    if 400 <= reply.status < 500 and reply.status not in (401, 405):
        if reply.headers.get("content-type", "").startswith("text/plain"):
            assert_plain_404(reply)
        else:
            assert_error(reply, reply.status)


@dataclass(frozen=True)
class Guard:
    """Checked at the end of a case: the engine is healthy and logged no traceback meanwhile.

    Called from the test body rather than in a fixture teardown, so that a failing case
    fails as one test instead of leaving a teardown error behind.
    """

    engine: EngineProcess
    offset: int

    def check(self) -> None:
        assert_healthy(self.engine)
        unexpected = unexpected_tracebacks(log_since(self.engine, self.offset))
        assert not unexpected, f"the engine logged a traceback: {unexpected}"


@pytest.fixture
def guard(engine: EngineProcess) -> Guard:
    return Guard(engine, log_size(engine))


def wait_terminal(engine: EngineProcess, job_id: str) -> dict[str, Any]:
    """Poll the job until it is succeeded/failed; fail (a hang) after JOB_TIMEOUT."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        reply = engine.get(f"/v1/prepare-jobs/{job_id}", timeout=REQUEST_TIMEOUT)
        assert reply.status_code == 200, reply.text
        status: dict[str, Any] = reply.json()
        if status["status"] in ("succeeded", "failed"):
            break
        assert time.monotonic() < deadline, f"job {job_id} hangs in {status['status']}"
        time.sleep(0.05)
    events = list(engine.ndjson(f"/v1/prepare-jobs/{job_id}/events", timeout=REQUEST_TIMEOUT))
    assert events[-1]["type"] in ("error", "result", "status"), events[-1]
    if status["status"] == "failed":
        assert events[-1]["type"] == "error"
        assert events[-1]["error"] == status["error"]
    return status


# == query parameters ======================================================================

ARABIC_DIGITS = "%D9%A1" * 8

QUERY_CASES = [
    # target, expected status, ErrorResponse message (4xx) or list expectation
    # ("empty": `[]`; "world": lists the module's job/instance/state; None: any 200)
    ("/v1/config?effective=%FF", 400, "invalid effective"),
    ("/v1/config?effective=maybe&effective=1", 400, "invalid effective"),
    ("/v1/config?effective=1&effective=maybe", 200, None),
    ("/v1/config?effective", 200, None),
    ("/v1/config?%FF=%FF&%00=%00", 200, None),
    ("/v1/config?path=%FF", 404, "path not found"),
    ("/v1/config?path=%ED%A0%80", 404, "path not found"),
    ("/v1/config?path=%00", 404, "path not found"),
    ("/v1/config?path=badinput.%E2%80%AEsentinel", 404, "path not found"),
    ("/v1/config?path=..&path=badinput.sentinel", 400, "invalid path"),
    ("/v1/config?path=badinput.sentinel&path=..", 200, None),
    ("/v1/config?path=a[99999999999999999999]", 400, "invalid path"),
    ("/v1/config?path=a[" + "9" * 5000 + "]", 400, "invalid path"),
    ("/v1/config?path=a[-1]", 400, "invalid path"),
    ("/v1/config?path=[0]", 400, "invalid path"),
    ("/v1/config?path=a[", 400, "invalid path"),
    ("/v1/config?path=" + "a" * 10_000, 404, "path not found"),
    ("/v1/config?path=..%2F..%2Fetc%2Fpasswd", 400, "invalid path"),
    ("/v1/config/schema?%FF=%FF&path=..", 200, None),
    ("/v1/names?instance=%FF&state=%00&image=%ED%A0%80", 200, "empty"),
    ("/v1/names?instance=&instance=&state=" + "a" * 10_000, 200, "empty"),
    ("/v1/instances?id_prefix=%FF%FF%FF%FF%FF%FF%FF%FF", 400, "invalid id_prefix"),
    ("/v1/instances?id_prefix=%00%00%00%00%00%00%00%00", 400, "invalid id_prefix"),
    ("/v1/instances?id_prefix=" + ARABIC_DIGITS, 400, "invalid id_prefix"),
    ("/v1/instances?id_prefix=%25%25%25%25%25%25%25%25", 400, "invalid id_prefix"),
    ("/v1/instances?id_prefix=________", 400, "invalid id_prefix"),
    ("/v1/instances?id_prefix=abc", 400, "invalid id_prefix"),
    ("/v1/instances?id_prefix={iid}%FF", 400, "invalid id_prefix"),
    ("/v1/instances?id_prefix=zzzzzzzz&id_prefix={iid}", 400, "invalid id_prefix"),
    ("/v1/instances?id_prefix=" + "a" * 10_000, 200, "empty"),
    ("/v1/instances?id_prefix=%20%20{iid}%20", 200, "world"),
    ("/v1/instances?state={sid}&state=nope", 200, "world"),
    ("/v1/instances?state=%FF&image=%00", 200, "empty"),
    ("/v1/instances?state={sid}%00", 200, "empty"),
    ("/v1/states?id_prefix=%FF%FF%FF%FF%FF%FF%FF%FF", 400, "invalid id_prefix"),
    ("/v1/states?id_prefix=________", 400, "invalid id_prefix"),
    ("/v1/states?id_prefix={sid}%25", 400, "invalid id_prefix"),
    ("/v1/states?kind=%FF&image=%00", 200, "empty"),
    ("/v1/states?kind=psql%00", 200, "empty"),
    ("/v1/states?kind=psql&kind=lb", 200, "world"),
    ("/v1/prepare-jobs?job=%25", 200, "empty"),
    ("/v1/prepare-jobs?job=_", 200, "empty"),
    ("/v1/prepare-jobs?job=%5C", 200, "empty"),
    ("/v1/prepare-jobs?job=%FF", 200, "empty"),
    ("/v1/prepare-jobs?job=%00", 200, "empty"),
    ("/v1/prepare-jobs?job=" + "a" * 10_000, 200, "empty"),
    ("/v1/prepare-jobs?job=&job=nope", 200, "world"),
    ("/v1/tasks?job=%25", 200, "empty"),
    ("/v1/tasks?job=%FF", 200, "empty"),
    ("/v1/tasks?job={job}%00", 200, "empty"),
    ("/v1/tasks?job=nope&job={job}", 200, "empty"),
    ("/v1/tasks?job={job}&job=nope", 200, "world"),
    ("/v1/tasks?job=" + "a" * 10_000, 200, "empty"),
]


@pytest.mark.parametrize(("target", "status", "expect"), QUERY_CASES)
def test_query_parameters(
    engine: EngineProcess,
    world: World,
    guard: Guard,
    target: str,
    status: int,
    expect: str | None,
) -> None:
    reply = send(engine, "GET", fill(target, world))
    assert_not_5xx(reply)
    if status >= 400:
        assert_error(reply, status, message=expect)
    else:
        assert reply.status == status, str(reply)
        value = reply.json()
        if expect == "empty":
            assert value == [], str(reply)
        elif expect == "world":
            keys = ("instance_id", "state_id", "job_id")
            listed = {item.get(key) for item in value for key in keys}
            assert listed & {world.instance_id, world.state_id, world.job_id}, str(reply)
    guard.check()


@pytest.mark.parametrize(
    "accept", [b"application/x-ndjson\xff", b"\xc3("], ids=["ndjson-ff", "broken-utf8"]
)
@pytest.mark.parametrize(
    "target",
    [
        "/v1/names",
        "/v1/instances",
        "/v1/states",
        "/v1/prepare-jobs",
        "/v1/tasks",
    ],
)
def test_accept_header_bytes_that_are_not_utf8(
    engine: EngineProcess, guard: Guard, target: str, accept: bytes
) -> None:
    reply = send(engine, "GET", target, headers={"Accept": accept})
    assert_not_5xx(reply)
    guard.check()


# == ids in paths ==========================================================================

HOSTILE_IDS = [
    pytest.param("%00", id="nul"),
    pytest.param("x%00y", id="inner-nul"),
    pytest.param("%2F", id="slash"),
    pytest.param("..%2F..%2Fetc%2Fpasswd", id="traversal"),
    pytest.param("..", id="dotdot"),
    pytest.param("%2e%2e", id="escaped-dotdot"),
    pytest.param("%20", id="space"),
    pytest.param("%25", id="percent"),
    pytest.param("%25%25%25%25%25%25%25%25", id="like-wildcards"),
    pytest.param("_" * 32, id="underscores"),
    pytest.param("%E2%80%AEevil", id="rtl"),
    pytest.param("%F0%9F%92%A9", id="emoji"),
    pytest.param("a" * 10_240, id="10kB"),
    pytest.param("{iid}%00", id="real-id-nul"),
    pytest.param("{iid}%2F..", id="real-id-slash"),
]

ID_ROUTES = [
    # method, target template, expected 404: True (plain text) or the ErrorResponse message
    pytest.param("GET", "/v1/prepare-jobs/{id}", True, id="job-status"),
    pytest.param("GET", "/v1/prepare-jobs/{id}/events", True, id="job-events"),
    pytest.param("POST", "/v1/prepare-jobs/{id}/cancel", "job not found", id="job-cancel"),
    pytest.param("DELETE", "/v1/prepare-jobs/{id}?force=true", "job not found", id="job-delete"),
    pytest.param("DELETE", "/v1/prepare-jobs/{id}?dry_run=1", "job not found", id="job-dry-run"),
    pytest.param("GET", "/v1/instances/{id}", True, id="instance-get"),
    pytest.param(
        "DELETE", "/v1/instances/{id}?force=true", "instance not found", id="instance-delete"
    ),
    pytest.param("GET", "/v1/states/{id}", True, id="state-get"),
    pytest.param(
        "DELETE", "/v1/states/{id}?recurse=1&force=1", "state not found", id="state-delete"
    ),
    pytest.param("GET", "/v1/names/{id}", True, id="name-get"),
]


@pytest.mark.parametrize(("method", "template", "expect"), ID_ROUTES)
@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_hostile_ids_in_paths(
    engine: EngineProcess,
    world: World,
    guard: Guard,
    method: str,
    template: str,
    expect: bool | str,
    hostile: str,
) -> None:
    reply = send(engine, method, template.replace("{id}", fill(hostile, world)))
    assert_not_5xx(reply)
    if expect is True:
        assert_plain_404(reply)
    else:
        assert_error(reply, 404, "not_found", str(expect))
    guard.check()


NON_UTF8_PATHS = [
    # method, target (the real ids with a byte that is not UTF-8 inside), 404 message / plain
    pytest.param(
        "DELETE",
        "/v1/instances/{iid-head}%FF{iid-tail}?dry_run=true",
        "instance not found",
        id="instance-delete-ff",
    ),
    pytest.param(
        "DELETE",
        "/v1/states/{sid-head}%C3{sid-tail}?dry_run=true&recurse=true",
        "state not found",
        id="state-delete-c3",
    ),
    pytest.param(
        "DELETE",
        "/v1/prepare-jobs/{job-head}%ED%A0%80{job-tail}?dry_run=true",
        "job not found",
        id="job-delete-surrogate",
    ),
    pytest.param("GET", "/v1/instances/%FF{iid}", None, id="instance-get-ff"),
    pytest.param("GET", "/v1/states/{sid}%FF", None, id="state-get-ff"),
    pytest.param("DELETE", "/v1/prepare-jobs/%FF", "job not found", id="job-delete-only-ff"),
]


@pytest.mark.parametrize(("method", "template", "message"), NON_UTF8_PATHS)
def test_non_utf8_path_bytes_never_address_another_object(
    engine: EngineProcess,
    world: World,
    guard: Guard,
    method: str,
    template: str,
    message: str | None,
) -> None:
    """An id with a byte that is not UTF-8 names no object: a plain or JSON 404, never a hit.

    The real objects are addressed with `dry_run=true`, so the bug cannot delete them.
    """
    target = template
    for name, value in (
        ("iid", world.instance_id),
        ("sid", world.state_id),
        ("job", world.job_id),
    ):
        target = target.replace(f"{{{name}-head}}", value[:8])
        target = target.replace(f"{{{name}-tail}}", value[8:])
    reply = send(engine, method, fill(target, world))
    assert_not_5xx(reply)
    if message is None:
        assert_plain_404(reply)
    else:
        assert_error(reply, 404, "not_found", message)
    guard.check()


DELETE_FLAGS = [
    # target (real ids: a flag misread as true would delete them), status, message / outcome
    ("/v1/instances/{iid}?force=maybe", 400, "invalid force"),
    ("/v1/instances/{iid}?dry_run=%FF", 400, "invalid dry_run"),
    ("/v1/instances/{iid}?dry_run=yes", 400, "invalid dry_run"),
    ("/v1/instances/{iid}?dry_run=%20true", 400, "invalid dry_run"),
    ("/v1/instances/{iid}?dry_run=true%00", 400, "invalid dry_run"),
    ("/v1/instances/{iid}?dry_run=maybe&dry_run=1", 400, "invalid dry_run"),
    ("/v1/instances/{iid}?dry_run=1&dry_run=maybe", 200, "would_delete"),
    ("/v1/instances/{iid}?force=" + "t" * 10_000 + "&dry_run=1", 400, "invalid force"),
    ("/v1/states/{sid}?recurse=%00&dry_run=1", 400, "invalid recurse"),
    ("/v1/states/{sid}?recurse=true&dry_run=TRUE!", 400, "invalid dry_run"),
    ("/v1/states/{sid}?force=%E2%80%AEtrue&dry_run=true", 400, "invalid force"),
    ("/v1/states/{sid}?dry_run=&force=1", 409, "blocked"),
    ("/v1/states/{sid}?recurse=1&dry_run=T", 200, "would_delete"),
    ("/v1/prepare-jobs/{job}?force=2&dry_run=1", 400, "invalid force"),
    ("/v1/prepare-jobs/{job}?dry_run=%ED%A0%80", 400, "invalid dry_run"),
    ("/v1/prepare-jobs/{job}?dry_run=1&dry_run=0", 200, "would_delete"),
]


@pytest.mark.parametrize(("target", "status", "expect"), DELETE_FLAGS)
def test_delete_flags(
    engine: EngineProcess, world: World, guard: Guard, target: str, status: int, expect: str
) -> None:
    reply = send(engine, "DELETE", fill(target, world))
    assert reply.status < 500, str(reply)
    if status == 400:
        assert_error(reply, 400, "invalid_argument", expect)
    else:
        assert reply.status == status, str(reply)
        assert reply.json()["outcome"] == expect, str(reply)
    guard.check()


# == Range headers on the events stream ====================================================


@pytest.fixture(scope="module")
def world_events(engine: EngineProcess, world: World) -> list[dict[str, Any]]:
    events = list(engine.ndjson(f"/v1/prepare-jobs/{world.job_id}/events", timeout=60))
    assert len(events) > 3
    return events


RANGE_CASES = [
    # Range value (str, or bytes sent as is); expect "full" (ignored), "416", or (206, start)
    pytest.param("events=abc", "full", id="letters"),
    pytest.param("bytes=0-1", "full", id="bytes-unit"),
    pytest.param("events=-3", "full", id="suffix-form"),
    pytest.param("events=3-1", "full", id="reversed"),
    pytest.param("events=0-1,2-3", "full", id="multi-range"),
    pytest.param("events", "full", id="no-equals"),
    pytest.param("events=", "full", id="no-numbers"),
    pytest.param("", "full", id="empty"),
    pytest.param("events=1.5-", "full", id="fraction"),
    pytest.param("events=0x1-", "full", id="hex"),
    pytest.param("events=+1-", "full", id="plus-sign"),
    pytest.param("events=\t1\t-\t2", (206, 1), id="tabs"),
    pytest.param("events=1-2" + " " * 4000, (206, 1), id="long-padding"),
    pytest.param("events=999999-", "416", id="past-the-end"),
    pytest.param("events=9223372036854775807-", "416", id="int64-max"),
    pytest.param(
        "events=9223372036854775808-",
        "416",
        id="int64-max-plus-1",
    ),
    pytest.param(
        "events=0-99999999999999999999",
        (206, 0),
        id="huge-last",
    ),
    pytest.param("events=" + "1" * 5000 + "-", "416", id="5000-digits"),
    pytest.param("events=0-" + "9" * 5000, (206, 0), id="5000-digit-last"),
    pytest.param("events=\u0661-".encode(), "full", id="arabic-indic-digit"),
    pytest.param(b"events=\xff\xfe-", "full", id="latin1-bytes"),
]


@pytest.mark.parametrize(("header", "expect"), RANGE_CASES)
def test_events_range_headers(
    engine: EngineProcess,
    world: World,
    world_events: list[dict[str, Any]],
    guard: Guard,
    header: str | bytes,
    expect: str | tuple[int, int],
) -> None:
    target = f"/v1/prepare-jobs/{world.job_id}/events"
    reply = send(engine, "GET", target, headers={"Range": header})
    assert_not_5xx(reply)
    assert reply.headers.get("accept-ranges") == "events", str(reply)
    total = len(world_events)
    if expect == "full":
        assert reply.status == 200, str(reply)
        assert "content-range" not in reply.headers
        assert reply.lines() == world_events
    elif expect == "416":
        assert_error(reply, 416, "invalid_argument")
        assert reply.headers["content-range"] == f"events */{total}"
    else:
        _, start = expect
        assert reply.status == 206, str(reply)
        assert reply.headers["content-range"].startswith(f"events {start}-")
        assert reply.lines()[0] == world_events[start]
    guard.check()


# == malformed JSON bodies and framing =====================================================

BODY_ENDPOINTS = [
    pytest.param("POST", "/v1/prepare-jobs", id="prepare"),
    pytest.param("POST", "/v1/runs", id="runs"),
    pytest.param("POST", "/v1/cache/explain/prepare", id="explain"),
    pytest.param("PATCH", "/v1/config", id="config"),
]

MALFORMED_BODIES = [
    # (test_http_basics covers "", "{", "[1,2]", "null" and "\xff\xfe" on PATCH /v1/config)
    pytest.param(b"   \n\t", id="whitespace"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'"text"', id="string"),
    pytest.param(b"42", id="number"),
    pytest.param(b"true", id="boolean"),
    pytest.param(b"{} trailing", id="trailing-garbage"),
    pytest.param(b"{}{}", id="two-documents"),
    pytest.param(b'{"a":1,}', id="trailing-comma"),
    pytest.param(b"{'a':1}", id="single-quotes"),
    pytest.param(b'{"a":1', id="truncated"),
    pytest.param(b"\xef\xbb\xbf{}", id="utf8-bom"),
    pytest.param('{"path":"a"}'.encode("utf-16"), id="utf-16"),
    pytest.param(b"\x00", id="nul-byte"),
    pytest.param(b'{"a":"\x00"}', id="raw-nul-in-string"),
    pytest.param(b'{"a":"\xff"}', id="invalid-utf8-in-string"),
    pytest.param(b'{"a":"\\ud800', id="unterminated-escape"),
    pytest.param(b"path=a&value=1", id="form-encoded"),
    pytest.param(b"<xml/>", id="xml"),
    pytest.param(DEEP_ARRAY.encode(), id="10k-nested-arrays"),
    pytest.param(DEEP_OBJECT.encode(), id="10k-nested-objects"),
    pytest.param(b'{"a":' + b"9" * 5000 + b"}", id="5000-digit-number"),
]


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize(("method", "target"), BODY_ENDPOINTS)
@pytest.mark.parametrize("body", MALFORMED_BODIES)
def test_malformed_json_bodies(
    engine: EngineProcess,
    guard: Guard,
    method: str,
    target: str,
    body: bytes,
    chunked: bool,
) -> None:
    json_type = {"Content-Type": "application/json"}
    reply = send(engine, method, target, body, headers=json_type, chunked=chunked)
    assert_not_5xx(reply)
    assert_error(reply, 400, "invalid_argument", "invalid json payload")
    guard.check()


DEEP_IN_VALID_JSON = [
    pytest.param('{"x":' + "[" * 100 + "]" * 100 + "}", id="100-nested-arrays"),
    pytest.param('{"x":' + NESTED_600 + "}", id="600-nested-arrays"),
    pytest.param(
        '{"x":' + '{"a":' * 600 + "1" + "}" * 600 + "}",
        id="600-nested-objects",
    ),
    pytest.param('{"x":' + "[" * 1023 + "]" * 1023 + "}", id="1023-nested"),
]


@pytest.mark.parametrize(("method", "target"), BODY_ENDPOINTS)
@pytest.mark.parametrize("body", DEEP_IN_VALID_JSON)
def test_deep_value_in_an_ignored_field(
    engine: EngineProcess, guard: Guard, method: str, target: str, body: str
) -> None:
    """Valid JSON, nested deep in a field nobody reads; the required fields are missing."""
    reply = send(engine, method, target, body.encode())
    assert_not_5xx(reply)
    error = assert_error(reply, 400, "invalid_argument")
    assert error["message"].endswith("is required"), error
    guard.check()


@pytest.mark.parametrize(("method", "target"), BODY_ENDPOINTS[:3])
@pytest.mark.parametrize("chunked", [False, True], ids=["no-body", "empty-chunked"])
def test_empty_bodies(
    engine: EngineProcess, guard: Guard, method: str, target: str, chunked: bool
) -> None:
    reply = send(engine, method, target, b"" if chunked else None, chunked=chunked)
    assert_error(reply, 400, "invalid_argument", "invalid json payload", "EOF")
    guard.check()


def raw_post(engine: EngineProcess, headers: bytes, body: bytes) -> bytes:
    return (
        b"POST /v1/prepare-jobs HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n"
        + f"Authorization: Bearer {engine.token}\r\n".encode()
        + headers
        + b"\r\n"
        + body
    )


FRAMING_CASES = [
    # extra headers, body, expected status, ErrorResponse message (None: Cheroot's plain 400)
    pytest.param(
        b"Transfer-Encoding: chunked\r\n",
        b"zz\r\n{}\r\n0\r\n\r\n",
        400,
        "malformed request body",
        id="chunk-size-not-hex",
    ),
    pytest.param(
        b"Transfer-Encoding: chunked\r\n",
        b"ffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
        400,
        "malformed request body",
        id="chunk-size-overflow",
    ),
    pytest.param(
        b"Content-Length: 10\r\n",
        b"{}",
        400,
        "incomplete request body",
        id="body-shorter-than-length",
    ),
    pytest.param(
        b"Content-Length: 99999999999\r\n",
        b"{}",
        413,
        "request body too large",
        id="huge-length",
    ),
    pytest.param(b"Content-Length: abc\r\n", b"{}", 400, None, id="length-not-a-number"),
    pytest.param(
        b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
        b"2\r\n{}\r\n0\r\n\r\n",
        400,
        "prepare_kind is required",
        id="chunked-wins-over-length",
    ),
    pytest.param(
        b"Transfer-Encoding: chunked\r\n",
        b"2;ext=1\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n",
        400,
        "prepare_kind is required",
        id="chunk-extension-and-trailer",
    ),
]


@pytest.mark.parametrize(("headers", "body", "status", "message"), FRAMING_CASES)
def test_transport_framing(
    engine: EngineProcess,
    guard: Guard,
    headers: bytes,
    body: bytes,
    status: int,
    message: str | None,
) -> None:
    reply = send_raw(engine, raw_post(engine, headers, body))
    assert reply.status < 500, str(reply)
    if message is None:
        # Broken HTTP framing is refused by Cheroot itself, before any route runs, with a
        # short plain-text 400 (Go's net/http answers the same way).
        assert reply.status == status, str(reply)
    else:
        assert_error(reply, status, message=message)
    guard.check()


def test_malformed_request_line_bytes(engine: EngineProcess, guard: Guard) -> None:
    request = (
        b"GET /v1/states/\xff\x00 HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n"
        + f"Authorization: Bearer {engine.token}\r\n\r\n".encode()
    )
    reply = send_raw(engine, request)
    assert reply.status == 400, str(reply)  # Cheroot's own "Malformed Request-URI"
    guard.check()


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/xml",
        "",
    ],
)
def test_content_type_does_not_change_decoding(
    engine: EngineProcess, guard: Guard, content_type: str
) -> None:
    """A JSON body is decoded as JSON whatever the Content-Type says (as the reference does)."""
    body = merged(PLAN, {"plan_only": True, "psql_args": ["-c", f"select 1 -- {content_type}"]})
    reply = send(
        engine,
        "POST",
        "/v1/prepare-jobs",
        json.dumps(body).encode(),
        headers={"Content-Type": content_type},
    )
    assert reply.status == 201, str(reply)
    assert wait_terminal(engine, reply.json()["job_id"])["status"] == "succeeded"
    guard.check()


# == POST /v1/prepare-jobs: rejected at submit =============================================

CONNECTION_FLAGS_MESSAGE = "connection flags are not allowed"
NUL_ARGS = "arguments must not contain NUL characters"
POSITIONAL_MESSAGE = "positional database arguments are not allowed"

PREPARE_REJECTED = [
    # overrides of a valid plan-only body, expected message, details substring
    pytest.param({"prepare_kind": 5}, "invalid json payload", "prepare_kind", id="kind-number"),
    pytest.param(
        {"prepare_kind": ["psql"]}, "invalid json payload", "prepare_kind", id="kind-list"
    ),
    pytest.param({"prepare_kind": {"a": 1}}, "invalid json payload", "prepare_kind", id="kind-obj"),
    pytest.param({"prepare_kind": True}, "invalid json payload", "prepare_kind", id="kind-bool"),
    pytest.param({"prepare_kind": None}, "prepare_kind is required", None, id="kind-null"),
    pytest.param({"prepare_kind": DROP}, "prepare_kind is required", None, id="kind-missing"),
    pytest.param({"prepare_kind": ""}, "prepare_kind is required", None, id="kind-empty"),
    pytest.param({"prepare_kind": " \t\n"}, "prepare_kind is required", None, id="kind-blank"),
    pytest.param({"prepare_kind": HUGE}, "unsupported prepare_kind", "xxxx", id="kind-huge"),
    pytest.param({"prepare_kind": "psql" + NUL}, "unsupported prepare_kind", None, id="kind-nul"),
    pytest.param(
        {"prepare_kind": LONE_SURROGATE}, "unsupported prepare_kind", "\ufffd", id="kind-surrogate"
    ),
    pytest.param({"prepare_kind": RTL}, "unsupported prepare_kind", "evil", id="kind-rtl"),
    pytest.param(
        {"prepare_kind": TRAVERSAL}, "unsupported prepare_kind", TRAVERSAL, id="kind-path"
    ),
    pytest.param({"prepare_kind": "PSQL"}, "unsupported prepare_kind", "PSQL", id="kind-case"),
    pytest.param({"prepare_kind": "lb"}, "lb command is required", None, id="kind-lb"),
    pytest.param({"image_id": 15}, "invalid json payload", "image_id", id="image-number"),
    pytest.param({"image_id": [IMAGE]}, "invalid json payload", "image_id", id="image-list"),
    pytest.param({"image_id": {}}, "invalid json payload", "image_id", id="image-object"),
    pytest.param({"image_id": False}, "invalid json payload", "image_id", id="image-bool"),
    pytest.param({"image_id": None}, "image_id is required", None, id="image-null"),
    pytest.param({"image_id": ""}, "image_id is required", None, id="image-empty"),
    pytest.param({"image_id": "\u3000 "}, "image_id is required", None, id="image-wide-space"),
    pytest.param({"psql_args": 5}, "invalid json payload", "psql_args", id="args-number"),
    pytest.param({"psql_args": "-c x"}, "invalid json payload", "psql_args", id="args-string"),
    pytest.param({"psql_args": {"-c": "x"}}, "invalid json payload", "psql_args", id="args-obj"),
    pytest.param({"psql_args": True}, "invalid json payload", "psql_args", id="args-bool"),
    pytest.param({"psql_args": [5]}, "invalid json payload", "psql_args[0]", id="arg-number"),
    pytest.param({"psql_args": [["-c"]]}, "invalid json payload", "psql_args[0]", id="arg-list"),
    pytest.param({"psql_args": ["-c", {}]}, "invalid json payload", "psql_args[1]", id="arg-obj"),
    pytest.param({"psql_args": [False]}, "invalid json payload", "psql_args[0]", id="arg-bool"),
    pytest.param({"psql_args": ["-h", "evil"]}, CONNECTION_FLAGS_MESSAGE, "-h", id="flag-h"),
    pytest.param({"psql_args": ["-hevil"]}, CONNECTION_FLAGS_MESSAGE, "-hevil", id="flag-hevil"),
    pytest.param({"psql_args": ["--host=e"]}, CONNECTION_FLAGS_MESSAGE, "--host=e", id="flag-host"),
    pytest.param(
        {"psql_args": ["--host", "e"]}, CONNECTION_FLAGS_MESSAGE, "--host", id="flag-host2"
    ),
    pytest.param({"psql_args": ["-p", "1"]}, CONNECTION_FLAGS_MESSAGE, "-p", id="flag-p"),
    pytest.param({"psql_args": ["--port=1"]}, CONNECTION_FLAGS_MESSAGE, "--port=1", id="flag-port"),
    pytest.param({"psql_args": ["-U", "root"]}, CONNECTION_FLAGS_MESSAGE, "-U", id="flag-U"),
    pytest.param(
        {"psql_args": ["--username=r"]}, CONNECTION_FLAGS_MESSAGE, "--user", id="flag-user"
    ),
    pytest.param({"psql_args": ["-d", "template1"]}, CONNECTION_FLAGS_MESSAGE, "-d", id="flag-d"),
    pytest.param(
        {"psql_args": ["-dpostgres://evil/db"]}, CONNECTION_FLAGS_MESSAGE, "-dpost", id="flag-d-dsn"
    ),
    pytest.param({"psql_args": ["--dbname=x"]}, CONNECTION_FLAGS_MESSAGE, "--dbname", id="flag-db"),
    pytest.param(
        {"psql_args": ["--database", "x"]},
        CONNECTION_FLAGS_MESSAGE,
        "--database",
        id="flag-database",
    ),
    pytest.param(
        {"psql_args": ["-c", "select 1", "-h", "evil"]},
        CONNECTION_FLAGS_MESSAGE,
        "-h",
        id="flag-after-input",
    ),
    pytest.param(
        {"psql_args": ["postgres://evil/db"]}, POSITIONAL_MESSAGE, "postgres://", id="dsn"
    ),
    pytest.param(
        {"psql_args": ["-c", "select 1", "host=evil port=1"]},
        POSITIONAL_MESSAGE,
        "host=evil",
        id="conninfo",
    ),
    pytest.param(
        {"psql_args": ["-c", "select 1", "template1"]}, POSITIONAL_MESSAGE, "template1", id="dbname"
    ),
    pytest.param(
        {"psql_args": ["-o", "/tmp/out", "-c", "select 1"]},
        POSITIONAL_MESSAGE,
        "/tmp/out",
        id="flag-value",
    ),
    pytest.param({"psql_args": [HUGE]}, POSITIONAL_MESSAGE, "xxxx", id="huge-positional"),
    pytest.param({"psql_args": [RTL]}, POSITIONAL_MESSAGE, "evil", id="rtl-positional"),
    pytest.param(
        {"psql_args": ["--", "-c", "x"]}, "positional arguments are not allowed", None, id="dashes"
    ),
    pytest.param({"psql_args": ["-c"]}, "missing value for command flag", None, id="c-no-value"),
    pytest.param({"psql_args": ["-f"]}, "missing value for file flag", "-f", id="f-no-value"),
    pytest.param({"psql_args": ["--file="]}, "missing value for file flag", None, id="file-empty"),
    pytest.param({"psql_args": ["-v"]}, "missing value for variable flag", "-v", id="v-no-value"),
    pytest.param({"psql_args": ["-f", ""]}, "file path is empty", None, id="f-empty-path"),
    pytest.param(
        {"psql_args": ["-f", TRAVERSAL]}, "file path must be absolute", TRAVERSAL, id="f-relative"
    ),
    pytest.param(
        {"psql_args": ["-f", "/nonexistent/x.sql"]}, "cannot read file", "/nonexist", id="f-missing"
    ),
    pytest.param({"psql_args": ["-f", "/tmp/x" + NUL]}, NUL_ARGS, "/tmp/x", id="f-nul"),
    pytest.param(
        {"psql_args": ["-c", "select '" + NUL + "' -- plan"]},
        NUL_ARGS,
        None,
        id="nul-sql-plan-only",
    ),
    pytest.param(
        {"psql_args": ["-f", "/" + LONE_SURROGATE]}, "cannot read file", None, id="f-surrogate"
    ),
    pytest.param({"psql_args": ["-f", "/" + HUGE]}, "cannot read file", None, id="f-huge"),
    pytest.param(
        {"psql_args": ["-f", "-"]}, "stdin is required when using -f -", None, id="f-stdin-missing"
    ),
    pytest.param({"stdin": "select 1"}, "stdin is only valid with -f -", None, id="stdin-no-f"),
    pytest.param({"stdin": 5}, "invalid json payload", "stdin", id="stdin-number"),
    pytest.param({"stdin": ["x"]}, "invalid json payload", "stdin", id="stdin-list"),
    pytest.param(
        {"psql_args": ["-v", "ON_ERROR_STOP=0"]},
        "ON_ERROR_STOP must be set to 1",
        "ON_ERROR_STOP=0",
        id="on-error-stop-0",
    ),
    pytest.param(
        {"psql_args": ["--set=on_error_stop= off"]},
        "ON_ERROR_STOP must be set to 1",
        None,
        id="on-error-stop-off",
    ),
    pytest.param(
        {"psql_args": ["-vON_ERROR_STOP"]},
        "ON_ERROR_STOP must be set to 1",
        None,
        id="on-error-stop-bare",
    ),
    pytest.param({"plan_only": "true"}, "invalid json payload", "plan_only", id="plan-string"),
    pytest.param({"plan_only": 1}, "invalid json payload", "plan_only", id="plan-number"),
    pytest.param({"plan_only": []}, "invalid json payload", "plan_only", id="plan-list"),
    pytest.param({"liquibase_env": []}, "invalid json payload", "liquibase_env", id="lb-env-list"),
    pytest.param(
        {"liquibase_env": {"A": 1}}, "invalid json payload", "liquibase_env.A", id="lb-env-value"
    ),
    pytest.param(
        {"liquibase_args": "x"}, "invalid json payload", "liquibase_args", id="lb-args-string"
    ),
    pytest.param({"work_dir": 5}, "invalid json payload", "work_dir", id="work-dir-number"),
]


@pytest.mark.parametrize(("overrides", "message", "details"), PREPARE_REJECTED)
def test_prepare_rejects_bad_fields(
    engine: EngineProcess,
    guard: Guard,
    overrides: dict[str, Any],
    message: str,
    details: str | None,
) -> None:
    before = engine.get("/v1/prepare-jobs").json()
    body = merged(merged(PLAN, {"plan_only": True}), overrides)
    reply = send_json(engine, "POST", "/v1/prepare-jobs", body)
    assert_not_5xx(reply)
    assert_error(reply, 400, "invalid_argument", message, details)
    assert engine.get("/v1/prepare-jobs").json() == before, "a rejected request created a job"
    guard.check()


# == POST /v1/prepare-jobs: accepted, then the job fails usefully (bounded wait) ===========

HASH_ERROR = "cannot compute psql content hash"
IMAGE_ERROR = "cannot resolve image"

PREPARE_FAILS = [
    # overrides, expected error code, message, details substring, a 400 at submit is fine too
    pytest.param(
        {"psql_args": ["-f", "{files}"]},
        "invalid_argument",
        HASH_ERROR,
        "is a directory",
        False,
        id="f-directory",
    ),
    pytest.param(
        {"psql_args": ["-f", "/dev/zero"]},
        "invalid_argument",
        HASH_ERROR,
        "not a regular file",
        False,
        id="f-dev-zero",
    ),
    pytest.param(
        {"psql_args": ["--file={fifo}"]},
        "invalid_argument",
        HASH_ERROR,
        "not a regular file",
        False,
        id="f-fifo",
    ),
    pytest.param(
        {"psql_args": ["-f", "{long_line}"]},
        "invalid_argument",
        HASH_ERROR,
        "longer than 64 KiB",
        False,
        id="f-line-over-64k",
    ),
    pytest.param(
        {"psql_args": ["-f", "{loop}"]},
        "invalid_argument",
        HASH_ERROR,
        "recursive include",
        False,
        id="f-includes-itself",
    ),
    pytest.param(
        {"psql_args": ["-c", "\\i /nonexistent/x.sql"]},
        "invalid_argument",
        HASH_ERROR,
        "no such file",
        False,
        id="include-missing",
    ),
    pytest.param(
        {"psql_args": ["-c", "\\include {files}"]},
        "invalid_argument",
        HASH_ERROR,
        "is a directory",
        False,
        id="include-directory",
    ),
    pytest.param(
        {"psql_args": ["-c", "\\ir /dev/zero"]},
        "invalid_argument",
        HASH_ERROR,
        "not a regular file",
        False,
        id="include-dev-zero",
    ),
    pytest.param(
        {"psql_args": ["-c", "\\i '{fifo}'"]},
        "invalid_argument",
        HASH_ERROR,
        "not a regular file",
        False,
        id="include-fifo",
    ),
    pytest.param(
        {"psql_args": ["-c", "\\i ../../../../../../../nonexistent/passwd"]},
        "invalid_argument",
        HASH_ERROR,
        "no such file",
        False,
        id="include-traversal",
    ),
    pytest.param(
        {"psql_args": ["-c", "select '" + "y" * (70 * 1024) + "'"]},
        "invalid_argument",
        HASH_ERROR,
        "longer than 64 KiB",
        False,
        id="command-over-64k",
    ),
    pytest.param(
        {"image_id": "postgres:99"},
        "internal_error",
        IMAGE_ERROR,
        "installed PostgreSQL major versions",
        False,
        id="image-not-installed",
    ),
    pytest.param(
        {"image_id": TRAVERSAL},
        "internal_error",
        IMAGE_ERROR,
        "is not a postgres image",
        False,
        id="image-path",
    ),
    pytest.param(
        {"image_id": HUGE},
        "internal_error",
        IMAGE_ERROR,
        "is not a postgres image",
        False,
        id="image-huge",
    ),
    pytest.param(
        {"image_id": "postgres:15" + NUL},
        "internal_error",
        IMAGE_ERROR,
        "postgres:15",
        False,
        id="image-nul",
    ),
    pytest.param(
        {"image_id": LONE_SURROGATE},
        "internal_error",
        IMAGE_ERROR,
        "\ufffd",
        False,
        id="image-surrogate",
    ),
    pytest.param({"image_id": RTL}, "internal_error", IMAGE_ERROR, "evil", False, id="image-rtl"),
    pytest.param(
        {"image_id": "postgres@"},
        "internal_error",
        IMAGE_ERROR,
        "digest",
        False,
        id="image-empty-digest",
    ),
    pytest.param(
        {"image_id": "postgres:99999999999999999999999"},
        "internal_error",
        IMAGE_ERROR,
        "postgres:",
        False,
        id="image-huge-major",
    ),
    pytest.param(
        {"psql_args": ["-c", "select 1/0"], "plan_only": False},
        "internal_error",
        "psql execution failed",
        "division by zero",
        False,
        id="sql-error",
    ),
    pytest.param(
        {"psql_args": ["-f", "-"], "stdin": "select '" + NUL + "';", "plan_only": False},
        "internal_error",
        "psql execution failed",
        "unterminated quoted string",
        False,
        id="stdin-nul",
    ),
    pytest.param(
        {"psql_args": ["-c", "select '" + NUL + "'"], "plan_only": False},
        "invalid_argument",
        None,
        None,
        True,
        id="command-nul",
    ),
    pytest.param(
        {"psql_args": ["-v", "x=" + NUL, "-c", "select 2"], "plan_only": False},
        "invalid_argument",
        None,
        None,
        True,
        id="variable-nul",
    ),
]


@pytest.mark.parametrize(("overrides", "code", "message", "details", "may_400"), PREPARE_FAILS)
def test_prepare_accepted_bad_input_fails_the_job(
    engine: EngineProcess,
    world: World,
    guard: Guard,
    overrides: dict[str, Any],
    code: str,
    message: str | None,
    details: str | None,
    may_400: bool,
) -> None:
    body = fill(merged(merged(PLAN, {"plan_only": True}), overrides), world)
    reply = send_json(engine, "POST", "/v1/prepare-jobs", body)
    assert_not_5xx(reply)
    if may_400 and reply.status == 400:
        assert_error(reply, 400, code)
    else:
        assert reply.status == 201, str(reply)
        status = wait_terminal(engine, reply.json()["job_id"])
        assert status["status"] == "failed", status
        error = status["error"]
        assert error["code"] == code, error
        if message is not None:
            assert error["message"] == message, error
        if details is not None:
            assert details in error.get("details", ""), error
    guard.check()


PREPARE_VALID_ODDITIES = [
    pytest.param({"prepare_kind": " \tpsql\n"}, id="kind-with-spaces"),
    pytest.param({"image_id": "  " + IMAGE + "  "}, id="image-with-spaces"),
    pytest.param({"psql_args": [None, "", "-c", "select 3"]}, id="null-and-empty-args"),
    pytest.param({"psql_args": ["-c", "select 4", "--"]}, id="trailing-double-dash"),
    pytest.param({"psql_args": ["-c", "select '" + LONE_SURROGATE + "'"]}, id="surrogate-sql"),
    pytest.param({"psql_args": ["-c", "select '" + RTL + "'"]}, id="rtl-sql"),
    pytest.param({"psql_args": ["-f", "-"], "stdin": ""}, id="empty-stdin"),
    pytest.param({"psql_args": ["-f", "-"], "stdin": "select 5;\n" * 20_000}, id="big-stdin"),
    pytest.param({"liquibase_env": {"A": None}, "x": {"deep": [[[1]]]}}, id="ignored-fields"),
    pytest.param(
        {"plan_only": None, "psql_args": ["-c", "select 'built, not only planned'"]},
        id="plan-only-null-runs",
    ),
]


@pytest.mark.parametrize("overrides", PREPARE_VALID_ODDITIES)
def test_prepare_odd_but_valid_input_succeeds(
    engine: EngineProcess, world: World, guard: Guard, overrides: dict[str, Any]
) -> None:
    body = fill(merged(merged(PLAN, {"plan_only": True}), overrides), world)
    reply = send_json(engine, "POST", "/v1/prepare-jobs", body)
    assert reply.status == 201, str(reply)
    assert reply.headers["location"] == reply.json()["status_url"]
    status = wait_terminal(engine, reply.json()["job_id"])
    assert status["status"] == "succeeded", status
    guard.check()


def test_duplicate_keys_last_one_wins(engine: EngineProcess, guard: Guard) -> None:
    body = b'{"prepare_kind":"lb","prepare_kind":"psql","image_id":"x","image_id":"postgres:15",'
    body += b'"psql_args":["-c","select 6"],"plan_only":false,"plan_only":true}'
    reply = send(engine, "POST", "/v1/prepare-jobs", body, chunked=True)
    assert reply.status == 201, str(reply)
    status = wait_terminal(engine, reply.json()["job_id"])
    assert status["status"] == "succeeded", status
    assert status.get("plan_only") is True
    assert status["image_id"] == IMAGE
    guard.check()


# == POST /v1/cache/explain/prepare ========================================================

EXPLAIN_CASES = [
    # overrides of a valid body, expected status, ErrorResponse message
    pytest.param({"prepare_kind": DROP}, 400, "prepare_kind is required", id="no-kind"),
    pytest.param({"prepare_kind": 5}, 400, "invalid json payload", id="kind-number"),
    pytest.param({"prepare_kind": "lb"}, 400, "lb command is required", id="lb"),
    pytest.param({"image_id": [1]}, 400, "invalid json payload", id="image-list"),
    pytest.param({"psql_args": ["-h", "evil"]}, 400, CONNECTION_FLAGS_MESSAGE, id="flag-h"),
    pytest.param({"psql_args": ["postgres://evil"]}, 400, POSITIONAL_MESSAGE, id="dsn"),
    pytest.param({"psql_args": ["-f", "/nonexistent"]}, 400, "cannot read file", id="f-missing"),
    pytest.param({"psql_args": ["-f", "/dev/zero"]}, 400, HASH_ERROR, id="f-dev-zero"),
    pytest.param({"psql_args": ["-f", "{files}"]}, 400, HASH_ERROR, id="f-directory"),
    pytest.param({"psql_args": ["-f", "{fifo}"]}, 400, HASH_ERROR, id="f-fifo"),
    pytest.param({"psql_args": ["-f", "{loop}"]}, 400, HASH_ERROR, id="f-loop"),
    pytest.param({"psql_args": ["-c", "\\i /nonexistent"]}, 400, HASH_ERROR, id="include-missing"),
    pytest.param({"psql_args": ["-c", "select '" + NUL + "'"]}, 400, NUL_ARGS, id="nul-sql"),
    pytest.param(
        {"psql_args": ["-c", "select '" + LONE_SURROGATE + RTL + "'"]}, 200, None, id="odd-sql"
    ),
    pytest.param({"image_id": TRAVERSAL}, 400, None, id="image-path"),
    pytest.param({"image_id": NUL}, 400, None, id="image-nul"),
]


@pytest.mark.parametrize(("overrides", "status", "message"), EXPLAIN_CASES)
def test_explain_bad_input(
    engine: EngineProcess,
    world: World,
    guard: Guard,
    overrides: dict[str, Any],
    status: int,
    message: str | None,
) -> None:
    states_before = engine.get("/v1/states").json()
    jobs_before = engine.get("/v1/prepare-jobs").json()
    body = fill(merged(PLAN, overrides), world)
    reply = send_json(engine, "POST", "/v1/cache/explain/prepare", body)
    assert_not_5xx(reply)
    if status == 200:
        assert reply.status == 200, str(reply)
        assert reply.json()["decision"] in ("hit", "miss")
    else:
        assert_error(reply, status, "invalid_argument", message)
    assert engine.get("/v1/states").json() == states_before, "explain created a state"
    assert engine.get("/v1/prepare-jobs").json() == jobs_before, "explain created a job"
    guard.check()


# == POST /v1/runs =========================================================================

PSQL_CONFLICT = "conflicting psql connection arguments"
PGBENCH_CONFLICT = "conflicting pgbench connection arguments"
INVALID = "invalid json payload"


def psql_run(*args: str, **extra: Any) -> dict[str, Any]:
    return {"instance_ref": "{iid}", "kind": "psql", "args": list(args), **extra}


def pgbench_run(*args: str, **extra: Any) -> dict[str, Any]:
    return {"instance_ref": "{iid}", "kind": "pgbench", "args": list(args), **extra}


RUN_REJECTED = [
    # body (placeholders filled in), status, code, message, details substring
    pytest.param(
        {"instance_ref": 5}, 400, "invalid_argument", INVALID, "instance_ref", id="ref-num"
    ),
    pytest.param(
        {"instance_ref": ["{iid}"], "kind": "psql"},
        400,
        "invalid_argument",
        INVALID,
        "instance_ref",
        id="ref-list",
    ),
    pytest.param(
        {"instance_ref": {"id": "{iid}"}},
        400,
        "invalid_argument",
        INVALID,
        "instance_ref",
        id="ref-object",
    ),
    pytest.param(
        {"instance_ref": True}, 400, "invalid_argument", INVALID, "instance_ref", id="ref-bool"
    ),
    pytest.param(
        {"instance_ref": None, "kind": "psql"},
        400,
        "invalid_argument",
        "instance_ref is required",
        None,
        id="ref-null",
    ),
    pytest.param(
        {"kind": "psql"},
        400,
        "invalid_argument",
        "instance_ref is required",
        None,
        id="ref-missing",
    ),
    pytest.param(
        {"instance_ref": " \t", "kind": "psql"},
        400,
        "invalid_argument",
        "instance_ref is required",
        None,
        id="ref-blank",
    ),
    pytest.param(psql_run(kind=5), 400, "invalid_argument", INVALID, "kind", id="kind-number"),
    pytest.param(psql_run(kind=["psql"]), 400, "invalid_argument", INVALID, "kind", id="kind-list"),
    pytest.param(
        {"instance_ref": "{iid}"},
        400,
        "invalid_argument",
        "unknown run kind",
        None,
        id="kind-missing",
    ),
    pytest.param(psql_run(kind="sh"), 400, "invalid_argument", "unknown run kind", "sh", id="sh"),
    pytest.param(
        psql_run(kind="psql" + NUL),
        400,
        "invalid_argument",
        "unknown run kind",
        None,
        id="kind-nul",
    ),
    pytest.param(
        psql_run(kind=HUGE), 400, "invalid_argument", "unknown run kind", None, id="kind-huge"
    ),
    pytest.param(
        psql_run(kind=TRAVERSAL),
        400,
        "invalid_argument",
        "unknown run kind",
        None,
        id="kind-path",
    ),
    pytest.param(
        psql_run(args="-c select 1"), 400, "invalid_argument", INVALID, "args", id="args-string"
    ),
    pytest.param(psql_run(args=[1]), 400, "invalid_argument", INVALID, "args", id="arg-number"),
    pytest.param(psql_run(args=[None]), 400, "invalid_argument", INVALID, "args", id="arg-null"),
    pytest.param(
        psql_run(args={"-c": "x"}), 400, "invalid_argument", INVALID, "args", id="args-object"
    ),
    pytest.param(psql_run(stdin=5), 400, "invalid_argument", INVALID, "stdin", id="stdin-number"),
    pytest.param(
        psql_run(command=5), 400, "invalid_argument", INVALID, "command", id="command-number"
    ),
    pytest.param(psql_run(steps={}), 400, "invalid_argument", INVALID, "steps", id="steps-obj"),
    pytest.param(psql_run(steps="x"), 400, "invalid_argument", INVALID, "steps", id="steps-str"),
    pytest.param(
        psql_run(steps=[1]), 400, "invalid_argument", INVALID, "steps[0]", id="step-number"
    ),
    pytest.param(
        psql_run(steps=[None]), 400, "invalid_argument", INVALID, "steps[0]", id="step-null"
    ),
    pytest.param(
        psql_run(steps=[{"args": "x"}]),
        400,
        "invalid_argument",
        INVALID,
        "steps[0].args",
        id="step-args-string",
    ),
    pytest.param(
        psql_run(steps=[{"args": []}, {"args": [2]}]),
        400,
        "invalid_argument",
        INVALID,
        "steps[1].args",
        id="step-args-number",
    ),
    pytest.param(
        psql_run(steps=[{"args": [], "stdin": []}]),
        400,
        "invalid_argument",
        INVALID,
        "steps[0].stdin",
        id="step-stdin-list",
    ),
    pytest.param(
        psql_run(instance_ref=HUGE), 404, "not_found", "instance not found", None, id="ref-huge"
    ),
    pytest.param(
        psql_run(instance_ref=NUL), 404, "not_found", "instance not found", None, id="ref-nul"
    ),
    pytest.param(
        psql_run(instance_ref="{iid}" + NUL),
        404,
        "not_found",
        "instance not found",
        None,
        id="ref-id-nul",
    ),
    pytest.param(
        psql_run(instance_ref=TRAVERSAL),
        404,
        "not_found",
        "instance not found",
        None,
        id="ref-path",
    ),
    pytest.param(
        psql_run(instance_ref=LONE_SURROGATE),
        404,
        "not_found",
        "instance not found",
        None,
        id="ref-surrogate",
    ),
    pytest.param(
        psql_run(instance_ref="%"),
        404,
        "not_found",
        "instance not found",
        None,
        id="ref-like-wildcard",
    ),
    pytest.param(
        psql_run(instance_ref="{sid}"),
        404,
        "not_found",
        "instance not found",
        None,
        id="ref-state-id",
    ),
    pytest.param(psql_run("-h", "evil"), 409, "conflict", PSQL_CONFLICT, "-h", id="psql-h"),
    pytest.param(psql_run("-hevil"), 409, "conflict", PSQL_CONFLICT, "-hevil", id="psql-hevil"),
    pytest.param(psql_run("--host=e"), 409, "conflict", PSQL_CONFLICT, "--host=e", id="psql-host"),
    pytest.param(psql_run("-p", "1"), 409, "conflict", PSQL_CONFLICT, "-p", id="psql-p"),
    pytest.param(psql_run("--port=1"), 409, "conflict", PSQL_CONFLICT, "--port=1", id="psql-port"),
    pytest.param(psql_run("-U", "root"), 409, "conflict", PSQL_CONFLICT, "-U", id="psql-U"),
    pytest.param(
        psql_run("--username=root"), 409, "conflict", PSQL_CONFLICT, "--username", id="psql-user"
    ),
    pytest.param(psql_run("-d", "template1"), 409, "conflict", PSQL_CONFLICT, "-d", id="psql-d"),
    pytest.param(
        psql_run("--dbname=template1"), 409, "conflict", PSQL_CONFLICT, "--dbname", id="psql-db"
    ),
    pytest.param(
        psql_run("--database", "x"),
        409,
        "conflict",
        PSQL_CONFLICT,
        "--database",
        id="psql-database",
    ),
    pytest.param(
        psql_run("postgres://evil/db"), 409, "conflict", PSQL_CONFLICT, "postgres://", id="psql-dsn"
    ),
    pytest.param(
        psql_run("-c", "select 1", "postgresql://sqlrs@127.0.0.1:1/x"),
        409,
        "conflict",
        PSQL_CONFLICT,
        "postgresql://",
        id="psql-dsn-after-input",
    ),
    pytest.param(
        psql_run("-c", "select 1", "--", "postgres://x"),
        409,
        "conflict",
        PSQL_CONFLICT,
        "postgres://x",
        id="psql-dsn-after-dashes",
    ),
    pytest.param(
        psql_run(steps=[{"args": ["-c", "select 1"]}, {"args": ["--host=evil"]}]),
        409,
        "conflict",
        PSQL_CONFLICT,
        "--host=evil",
        id="step-host",
    ),
    pytest.param(
        psql_run(steps=[{"args": ["postgres://x"]}]),
        409,
        "conflict",
        PSQL_CONFLICT,
        "postgres://x",
        id="step-dsn",
    ),
    pytest.param(pgbench_run("-h", "evil"), 409, "conflict", PGBENCH_CONFLICT, "-h", id="pgb-h"),
    pytest.param(pgbench_run("-hevil"), 409, "conflict", PGBENCH_CONFLICT, "-hevil", id="pgb-hx"),
    pytest.param(pgbench_run("-p1"), 409, "conflict", PGBENCH_CONFLICT, "-p1", id="pgb-p"),
    pytest.param(pgbench_run("-i", "-U", "x"), 409, "conflict", PGBENCH_CONFLICT, "-U", id="pgb-U"),
    pytest.param(pgbench_run("-d"), 409, "conflict", PGBENCH_CONFLICT, "-d", id="pgb-d"),
    pytest.param(
        pgbench_run(steps=[{"args": ["-i"]}]),
        400,
        "invalid_argument",
        "steps are only supported for run:psql",
        None,
        id="pgb-steps",
    ),
    pytest.param(
        psql_run("-c", "select 1", steps=[{"args": ["-c", "select 1"]}]),
        400,
        "invalid_argument",
        "steps cannot be combined with args",
        None,
        id="steps-and-args",
    ),
    pytest.param(
        psql_run(stdin="", steps=[{"args": ["-c", "select 1"]}]),
        400,
        "invalid_argument",
        "steps cannot be combined with stdin",
        None,
        id="steps-and-stdin",
    ),
    pytest.param(
        psql_run(command="/bin/sh"),
        400,
        "invalid_argument",
        "unsupported run command",
        "/bin/sh",
        id="command-sh",
    ),
    pytest.param(
        psql_run(command="../../../usr/bin/psql"),
        400,
        "invalid_argument",
        "unsupported run command",
        None,
        id="command-path",
    ),
    pytest.param(
        psql_run(command="pgbench"),
        400,
        "invalid_argument",
        "unsupported run command",
        None,
        id="command-other-kind",
    ),
    pytest.param(
        psql_run(command="psql" + NUL),
        400,
        "invalid_argument",
        "unsupported run command",
        None,
        id="command-nul",
    ),
    pytest.param(
        psql_run("-c", "select '" + NUL + "'"),
        400,
        "invalid_argument",
        NUL_ARGS,
        None,
        id="psql-arg-nul",
    ),
    pytest.param(
        psql_run(steps=[{"args": ["-c", "x" + NUL]}]),
        400,
        "invalid_argument",
        NUL_ARGS,
        None,
        id="step-arg-nul",
    ),
    pytest.param(
        pgbench_run("-i" + NUL),
        400,
        "invalid_argument",
        NUL_ARGS,
        None,
        id="pgbench-arg-nul",
    ),
    pytest.param(
        psql_run("-c", "select 1", "host=127.0.0.1 port=1 dbname=postgres"),
        409,
        "conflict",
        PSQL_CONFLICT,
        None,
        id="psql-conninfo-positional",
    ),
    pytest.param(
        psql_run("-c", "select 1", "template1"),
        409,
        "conflict",
        PSQL_CONFLICT,
        None,
        id="psql-dbname-positional",
    ),
]


@pytest.mark.parametrize(("body", "status", "code", "message", "details"), RUN_REJECTED)
def test_run_rejects_bad_input(
    engine: EngineProcess,
    world: World,
    guard: Guard,
    body: dict[str, Any],
    status: int,
    code: str,
    message: str | None,
    details: str | None,
) -> None:
    reply = send_json(engine, "POST", "/v1/runs", fill(body, world))
    assert_not_5xx(reply)
    assert_error(reply, status, code, message, details)
    guard.check()


RUN_STREAMS = [
    # body, expected exit code (0, or "nonzero"), stderr substring
    pytest.param(psql_run("-c", "select 1", kind=" PSQL\t"), 0, None, id="kind-case-spaces"),
    pytest.param(psql_run("-c", "select 1", instance_ref="  {iid}\n"), 0, None, id="ref-spaces"),
    pytest.param(psql_run("-c", "select 1", command="  psql "), 0, None, id="command-own"),
    pytest.param(psql_run(steps=[]), 0, None, id="empty-steps"),
    pytest.param(psql_run(steps=[{}]), 0, None, id="empty-step"),
    pytest.param(
        psql_run("-c", "select '" + RTL + LONE_SURROGATE + "'"), 0, None, id="odd-unicode"
    ),
    pytest.param(psql_run("-f", "{files}"), "nonzero", "Is a directory", id="f-directory"),
    pytest.param(psql_run("-f", "/nonexistent/x.sql"), "nonzero", "No such file", id="f-missing"),
    pytest.param(psql_run("-f", "{long_line}"), 0, None, id="f-long-line"),
    pytest.param(
        psql_run("-f", "-", stdin="select '" + NUL + "';"),
        0,  # a script error without ON_ERROR_STOP: psql reports it and exits 0
        "unterminated",
        id="stdin-nul",
    ),
    pytest.param(psql_run("-c", "select 1/0"), "nonzero", "division by zero", id="sql-error"),
    pytest.param(psql_run("-c", "select 1", "--"), 0, None, id="trailing-dashes"),
    pytest.param(
        pgbench_run("-i", "-I", "d", "--host=/nonexistent", "--port=1", "--username=nobody"),
        0,
        None,
        id="pgbench-long-forms-overridden",
    ),
    pytest.param(
        pgbench_run("-i", "-I", "d", "postgres://evil/db"),
        "nonzero",
        "too many command-line arguments",
        id="pgbench-positional-dsn",
    ),
    pytest.param(
        pgbench_run("--bogus-flag"), "nonzero", "unrecognized option", id="pgbench-bad-flag"
    ),
]


@pytest.mark.parametrize(("body", "exit_code", "stderr"), RUN_STREAMS)
def test_run_odd_input_streams_to_an_exit(
    engine: EngineProcess,
    world: World,
    guard: Guard,
    body: dict[str, Any],
    exit_code: int | str,
    stderr: str | None,
) -> None:
    """Input that passes validation runs and ends with an `exit` event, never a 5xx or hang."""
    reply = send_json(engine, "POST", "/v1/runs", fill(body, world))
    assert reply.status == 200, str(reply)
    events = reply.lines()
    assert events[0] == {
        "type": "start",
        "ts": events[0]["ts"],
        "instance_id": world.instance_id,
    }
    assert events[-1]["type"] == "exit", events
    if exit_code == 0:
        assert events[-1]["exit_code"] == 0, events
    else:
        assert events[-1]["exit_code"] != 0, events
    if stderr is not None:
        assert stderr in "".join(e["data"] for e in events if e["type"] == "stderr"), events
    guard.check()


def processes_with(marker: str) -> list[int]:
    """Pids of the processes whose command line contains `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("source", ["/dev/zero", "{fifo}"], ids=["dev-zero", "fifo"])
def test_run_that_never_ends_stops_when_the_client_leaves(
    engine: EngineProcess, world: World, guard: Guard, source: str
) -> None:
    """`psql -f /dev/zero` (or a FIFO nobody writes) never ends by itself; leaving ends it."""
    marker = f"marker={uuid.uuid4().hex}"
    body = psql_run("-v", marker, "-f", source)
    response = engine.post("/v1/runs", json=fill(body, world), stream=True, timeout=60)
    try:
        assert response.status_code == 200, response.text
        # Keep the line iterator referenced: once it is garbage-collected, urllib3 closes the
        # connection, and the engine (which notices a departed client at once) cancels the run.
        lines = response.iter_lines()
        first = json.loads(next(line for line in lines if line))
        assert first["type"] == "start"
        deadline = time.monotonic() + 30
        while not processes_with(marker):
            assert time.monotonic() < deadline, "psql never started"
            time.sleep(0.05)
        assert_healthy(engine)  # the engine serves other requests meanwhile
    finally:
        response.close()
    deadline = time.monotonic() + 60
    while processes_with(marker):
        assert time.monotonic() < deadline, "the run's psql outlived its client"
        time.sleep(0.1)
    guard.check()


# == PATCH / DELETE /v1/config =============================================================

BAD_CONFIG = "invalid config value"
BAD_PATH = "config path is invalid"

CONFIG_REJECTED = [
    # body, expected message, details substring
    pytest.param({"path": ["a"], "value": 1}, BAD_CONFIG, BAD_PATH, id="path-list"),
    pytest.param({"path": {"a": 1}}, BAD_CONFIG, BAD_PATH, id="path-object"),
    pytest.param({"path": True}, BAD_CONFIG, BAD_PATH, id="path-bool"),
    pytest.param({"path": 1.5}, BAD_CONFIG, BAD_PATH, id="path-float"),
    pytest.param({"path": None, "value": 1}, "path is required", None, id="path-null"),
    pytest.param({"value": 1}, "path is required", None, id="path-missing"),
    pytest.param({"path": ""}, "path is required", None, id="path-empty"),
    pytest.param({"path": " \t\n"}, "path is required", None, id="path-blank"),
    pytest.param({"path": ".a"}, BAD_CONFIG, BAD_PATH, id="path-leading-dot"),
    pytest.param({"path": "a..b"}, BAD_CONFIG, BAD_PATH, id="path-double-dot"),
    pytest.param({"path": "a["}, BAD_CONFIG, BAD_PATH, id="path-open-bracket"),
    pytest.param({"path": "a[x]"}, BAD_CONFIG, BAD_PATH, id="path-letter-index"),
    pytest.param({"path": "a[-1]"}, BAD_CONFIG, BAD_PATH, id="path-negative-index"),
    pytest.param({"path": "badinput.a[99999999999999999999]"}, BAD_CONFIG, "larger", id="index"),
    pytest.param({"path": "badinput.a[" + "9" * 5000 + "]"}, BAD_CONFIG, BAD_PATH, id="index-5k"),
    pytest.param({"path": TRAVERSAL}, BAD_CONFIG, BAD_PATH, id="path-traversal"),
    pytest.param(
        {"path": "badinput.deep", "value": json.loads("[" * 65 + "]" * 65)},
        BAD_CONFIG,
        "nested deeper",
        id="value-65-deep",
    ),
    pytest.param({"path": "log.level", "value": 5}, BAD_CONFIG, "log.level", id="level-number"),
    pytest.param({"path": "log.level", "value": NUL}, BAD_CONFIG, "log.level", id="level-nul"),
    pytest.param({"path": "log.level", "value": HUGE}, BAD_CONFIG, "log.level", id="level-huge"),
    pytest.param({"path": "log.level", "value": RTL}, BAD_CONFIG, "log.level", id="level-rtl"),
    pytest.param({"path": "log.level", "value": ["x"]}, BAD_CONFIG, "log.level", id="level-list"),
    pytest.param(
        {"path": "snapshot.backend", "value": TRAVERSAL}, BAD_CONFIG, "backend", id="backend-path"
    ),
    pytest.param(
        {"path": "snapshot.backend", "value": "COPY"}, BAD_CONFIG, "backend", id="backend-case"
    ),
    pytest.param(
        {"path": "container.runtime", "value": "docker" + NUL},
        BAD_CONFIG,
        "container.runtime",
        id="runtime-nul",
    ),
    pytest.param(
        {"path": "orchestrator.jobs.maxIdentical", "value": -1}, BAD_CONFIG, "max", id="max-neg"
    ),
    pytest.param(
        {"path": "orchestrator.jobs.maxIdentical", "value": 1.5}, BAD_CONFIG, "max", id="max-frac"
    ),
    pytest.param(
        {"path": "orchestrator.jobs.maxIdentical", "value": True}, BAD_CONFIG, "max", id="max-bool"
    ),
    pytest.param(
        {"path": "orchestrator.jobs.maxIdentical", "value": "2"}, BAD_CONFIG, "max", id="max-str"
    ),
    pytest.param(
        {"path": "orchestrator.jobs.maxIdentical", "value": 10**23},
        BAD_CONFIG,
        "max",
        id="max-huge",
    ),
    pytest.param(
        {"path": "orchestrator.jobs.maxIdentical", "value": {"a": 1}},
        BAD_CONFIG,
        "max",
        id="max-object",
    ),
    pytest.param(
        {"path": "cache.capacity.maxBytes", "value": -1}, BAD_CONFIG, "maxBytes", id="bytes-neg"
    ),
    pytest.param(
        {"path": "cache.capacity.reserveBytes", "value": "1GB"},
        BAD_CONFIG,
        "reserveBytes",
        id="reserve-string",
    ),
    pytest.param(
        {"path": "cache.capacity.highWatermark", "value": 0}, BAD_CONFIG, "high", id="high-zero"
    ),
    pytest.param(
        {"path": "cache.capacity.highWatermark", "value": 1.5}, BAD_CONFIG, "high", id="high-1.5"
    ),
    pytest.param(
        {"path": "cache.capacity.highWatermark", "value": "0.5"}, BAD_CONFIG, "high", id="high-str"
    ),
    pytest.param(
        {"path": "cache.capacity.lowWatermark", "value": 0.95}, BAD_CONFIG, "low", id="low-high"
    ),
    pytest.param(
        {"path": "cache.capacity.minStateAge", "value": "10"}, BAD_CONFIG, "minStateAge", id="age"
    ),
    pytest.param(
        {"path": "cache.capacity.minStateAge", "value": "9999999999999999999h"},
        BAD_CONFIG,
        "minStateAge",
        id="age-overflow",
    ),
    pytest.param(
        {"path": "cache.capacity.minStateAge", "value": "1e400s"},
        BAD_CONFIG,
        "minStateAge",
        id="age-exponent",
    ),
    pytest.param(
        {"path": "cache.capacity.minStateAge", "value": 600},
        BAD_CONFIG,
        "minStateAge",
        id="age-number",
    ),
    pytest.param(
        {"path": "runtime.host.binDirs", "value": [TRAVERSAL]},
        BAD_CONFIG,
        "binDirs",
        id="bin-dirs-relative",
    ),
    pytest.param({"path": "http.threads", "value": 0}, BAD_CONFIG, "threads", id="threads-zero"),
    pytest.param({"path": "http.threads", "value": "64"}, BAD_CONFIG, "threads", id="threads-str"),
]


@pytest.mark.parametrize(("body", "message", "details"), CONFIG_REJECTED)
def test_config_patch_rejects_bad_input(
    engine: EngineProcess,
    guard: Guard,
    body: dict[str, Any],
    message: str,
    details: str | None,
) -> None:
    before = engine.get("/v1/config").json()
    reply = send_json(engine, "PATCH", "/v1/config", body)
    assert_not_5xx(reply)
    assert_error(reply, 400, "invalid_argument", message, details)
    assert engine.get("/v1/config").json() == before, "a rejected PATCH changed the config"
    guard.check()


CONFIG_STORED = [
    # path (under badinput.), value: stored, read back verbatim, then deleted again
    pytest.param("badinput." + "k" * 10_000, 1, id="path-10k"),
    pytest.param("badinput.x" + NUL + "y", NUL, id="path-nul"),
    pytest.param("badinput." + RTL, RTL, id="path-rtl"),
    pytest.param("badinput.emoji\U0001f4a9", "\U0001f4a9", id="path-emoji"),
    pytest.param("badinput.list[9999]", {"deep": [[[[1]]]]}, id="index-9999"),
    pytest.param("badinput.big", "v" * 100_000, id="value-100k"),
    pytest.param("badinput.numbers", [0, -0.0, 1e308, -(2**63), 2**64, 1.5e-300], id="numbers"),
    pytest.param("badinput.nested", json.loads("[" * 60 + "]" * 60), id="value-60-deep"),
    pytest.param("badinput.a]b", None, id="stray-bracket"),
]


@pytest.mark.parametrize(("path", "value"), CONFIG_STORED)
def test_config_odd_paths_and_values_round_trip(
    engine: EngineProcess, world: World, guard: Guard, path: str, value: Any
) -> None:
    reply = send_json(engine, "PATCH", "/v1/config", {"path": path, "value": value})
    assert reply.status == 200, str(reply)
    stored = json.loads((engine.state_store / "config.json").read_text(encoding="utf-8"))
    assert stored["badinput"]["sentinel"] == world.sentinel
    read = engine.get("/v1/config", params={"path": path})
    assert read.status_code == 200, read.text
    assert read.json() == {"path": path, "value": value}
    removed = engine.delete("/v1/config", params={"path": path})
    assert removed.status_code == 200, removed.text
    assert engine.get("/v1/config", params={"path": path}).status_code == 404
    top = path.removeprefix("badinput.").split("[")[0]
    if top != path.removeprefix("badinput."):  # an index: the padded list stays behind
        assert engine.delete("/v1/config", params={"path": f"badinput.{top}"}).status_code == 200
    guard.check()


CONFIG_DELETE = [
    # query, status, message
    pytest.param("", 400, "path is required", id="no-path"),
    pytest.param("?path=", 400, "path is required", id="empty-path"),
    pytest.param("?path=%20%09", 400, "path is required", id="blank-path"),
    pytest.param("?path=..", 400, "invalid path", id="double-dot"),
    pytest.param("?path=a[99999999999999999999]", 400, "invalid path", id="huge-index"),
    pytest.param("?path=a[" + "9" * 5000 + "]", 400, "invalid path", id="5000-digit-index"),
    pytest.param("?path=%00", 404, "path not found", id="nul"),
    pytest.param("?path=%FF", 404, "path not found", id="non-utf8"),
    pytest.param("?path=badinput.nope", 404, "path not found", id="missing"),
    pytest.param("?path=badinput.sentinel.keep[99]", 404, "path not found", id="index-past-end"),
    pytest.param("?path=badinput.sentinel%00", 404, "path not found", id="sentinel-nul"),
    pytest.param("?path=badinput.%E2%80%AEsentinel", 404, "path not found", id="sentinel-rtl"),
    pytest.param("?path=..&path=badinput.sentinel", 400, "invalid path", id="repeat-first-wins"),
    pytest.param("?path=" + "a" * 10_000, 404, "path not found", id="10k"),
]


@pytest.mark.parametrize(("query_string", "status", "message"), CONFIG_DELETE)
def test_config_delete_bad_input(
    engine: EngineProcess,
    world: World,
    guard: Guard,
    query_string: str,
    status: int,
    message: str,
) -> None:
    reply = send(engine, "DELETE", "/v1/config" + query_string)
    assert_not_5xx(reply)
    assert_error(reply, status, message=message)
    sentinel = engine.get("/v1/config", params={"path": "badinput.sentinel"})
    assert sentinel.json()["value"] == world.sentinel, "a rejected DELETE removed data"
    guard.check()


def test_config_4xx_leaves_no_traceback_in_the_log(engine: EngineProcess) -> None:
    offset = log_size(engine)
    reply = send(engine, "GET", "/v1/config?path=badinput.missing")
    assert_error(reply, 404, "not_found", "path not found")
    reply = send_json(engine, "PATCH", "/v1/config", {"path": "log.level", "value": 5})
    assert_error(reply, 400, "invalid_argument", "invalid config value")
    assert "Traceback" not in log_since(engine, offset)


# == at the end: the engine survived, nothing was lost =====================================


def test_engine_survived_with_data_intact_and_no_unexpected_traceback(
    engine: EngineProcess, world: World
) -> None:
    assert_healthy(engine)
    instance = engine.get(f"/v1/instances/{world.instance_id}")
    assert instance.status_code == 200, instance.text
    assert instance.json()["state_id"] == world.state_id
    assert engine.get(f"/v1/states/{world.state_id}").status_code == 200
    job = engine.get(f"/v1/prepare-jobs/{world.job_id}")
    assert job.status_code == 200, job.text
    assert job.json()["status"] == "succeeded"
    assert query(world.dsn, "select v from keep") == "safe"
    config = engine.get("/v1/config").json()
    assert config == {"badinput": {"sentinel": world.sentinel}}, "the config was changed"

    unexplained = [tb for tb in tracebacks(engine.stderr_text())]
    assert not unexplained, f"the engine logged tracebacks: {unexplained}"
