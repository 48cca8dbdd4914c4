"""Bottle responses: JSON bodies, list shapes by Accept, ErrorResponses, Go's plain 404."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import bottle
import pytest
import ujson

from sqlrs_engine.errors import ApiError
from sqlrs_engine.http.jsonio import JSON, NDJSON
from sqlrs_engine.http.responses import (
    PLAIN_TEXT,
    empty_response,
    error_response,
    json_response,
    list_response,
    plain_not_found,
)

BindRequest = Callable[..., None]


@pytest.fixture
def bind_request() -> Iterator[BindRequest]:
    """Bind Bottle's thread-local request to a test environ, and unbind it afterwards."""

    def bind(**environ: str) -> None:
        bottle.request.bind(environ)

    yield bind
    bottle.request.bind({})


def test_json_response_defaults() -> None:
    response = json_response({"b": 1, "a": "/x"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSON
    assert response.body == b'{"b":1,"a":"/x"}\n'


def test_json_response_status_headers_and_sorted_keys() -> None:
    response = json_response(
        {"b": 1, "a": 2}, status=201, headers={"Location": "/v1/prepare-jobs/x"}, sort_keys=True
    )
    assert response.status_code == 201
    assert response.headers["Location"] == "/v1/prepare-jobs/x"
    assert response.headers["Content-Type"] == JSON, "extra headers do not drop the type"
    assert response.body == b'{"a":2,"b":1}\n'


@pytest.mark.parametrize(
    ("accept", "content_type", "body"),
    [
        (None, JSON, b'[{"id":1},{"id":2}]\n'),
        ("application/json", JSON, b'[{"id":1},{"id":2}]\n'),
        (NDJSON, NDJSON, b'{"id":1}\n{"id":2}\n'),
    ],
)
def test_list_response_follows_the_request_accept(
    bind_request: BindRequest, accept: str | None, content_type: str, body: bytes
) -> None:
    bind_request(**({} if accept is None else {"HTTP_ACCEPT": accept}))
    response = list_response([{"id": 1}, {"id": 2}])
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert response.body == body


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ApiError(409, "conflict", "conflicting psql connection arguments", "-h"),
            {
                "code": "conflict",
                "message": "conflicting psql connection arguments",
                "details": "-h",
            },
        ),
        (
            ApiError(404, "not_found", "job not found"),
            {"code": "not_found", "message": "job not found"},
        ),
        (ApiError(400, "invalid_argument", "x", ""), {"code": "invalid_argument", "message": "x"}),
    ],
)
def test_error_response(error: ApiError, expected: dict[str, Any]) -> None:
    """The ErrorResponse with the error's status; empty details are omitted (Go omitempty)."""
    response = error_response(error)
    assert response.status_code == error.status
    assert response.headers["Content-Type"] == JSON
    assert response.body.endswith(b"\n")
    assert ujson.loads(response.body) == expected
    assert list(ujson.loads(response.body)) == list(expected), "code, message, details order"


def test_plain_not_found_is_gos_http_not_found() -> None:
    response = plain_not_found()
    assert response.status_code == 404
    assert response.body == b"404 page not found\n"
    assert response.headers["Content-Type"] == PLAIN_TEXT == "text/plain; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_empty_response() -> None:
    response = empty_response(307, {"Location": "/v1/instances/abc"})
    assert response.status_code == 307
    assert response.body == b""
    assert response.headers["Location"] == "/v1/instances/abc"
    assert empty_response(202).body == b""
