"""Bottle responses: JSON bodies, list shapes by Accept, ErrorResponses, Go's plain 404."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import bottle
import pytest
import ujson

from sqlrs_engine.errors import ApiError
from sqlrs_engine.http.jsonio import JSON, NDJSON, json_line
from sqlrs_engine.http.responses import (
    PLAIN_TEXT,
    PageReader,
    empty_response,
    error_response,
    json_response,
    paged_list_response,
    plain_not_found,
)
from sqlrs_engine.persistence.pages import Page

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


def reader_over(items: list[dict[str, Any]], size: int, reads: list[int | None]) -> PageReader[int]:
    """A PageReader over `items` in pages of `size` (whatever the limit), keyed by index;
    records the key of every read."""

    def read(after: int | None, limit: int) -> Page[int]:
        reads.append(after)
        start = 0 if after is None else after + 1
        rows = items[start : start + size]
        more = start + size < len(items)
        return Page(rows, start + size - 1 if more else None)

    return read


ITEMS: list[dict[str, Any]] = [{"id": f"a/{n}", "n": n, "é": None} for n in range(7)]


@pytest.mark.parametrize(
    ("accept", "content_type", "items", "body"),
    [
        (
            None,
            JSON,
            ITEMS,
            ujson.dumps(ITEMS, ensure_ascii=False, escape_forward_slashes=False).encode() + b"\n",
        ),
        ("application/json", JSON, [], b"[]\n"),
        (None, JSON, [], b"[]\n"),
        (NDJSON, NDJSON, ITEMS, b"".join(json_line(item) for item in ITEMS)),
        (NDJSON, NDJSON, [], b""),
        ("application/json, application/x-ndjson;q=0.9", NDJSON, ITEMS[:1], json_line(ITEMS[0])),
    ],
)
@pytest.mark.parametrize("size", [1, 2, 3, 7, 500])
def test_a_paged_list_is_the_whole_list_in_the_requested_shape(
    bind_request: BindRequest,
    accept: str | None,
    content_type: str,
    items: list[dict[str, Any]],
    body: bytes,
    size: int,
) -> None:
    """Whatever the page boundaries, the bytes are those of the whole list encoded at once:
    a JSON array (`[]` when empty) or one NDJSON line per entry."""
    bind_request(**({} if accept is None else {"HTTP_ACCEPT": accept}))
    reads: list[int | None] = []
    response = paged_list_response(reader_over(items, size, reads))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert reads == [None], "only the first page is read before the body is iterated"
    assert b"".join(response.body) == body
    pages = max(1, -(-len(items) // size))
    assert len(reads) == pages, "every page read once, resuming after the previous one"


def test_pages_are_sent_as_they_are_read(bind_request: BindRequest) -> None:
    """The body yields a page before the next is read: memory stays at one page."""
    bind_request(HTTP_ACCEPT=NDJSON)
    reads: list[int | None] = []
    body = iter(paged_list_response(reader_over(ITEMS, 3, reads)).body)
    assert next(body) == b"".join(json_line(item) for item in ITEMS[:3])
    assert reads == [None]
    assert next(body) == b"".join(json_line(item) for item in ITEMS[3:6])
    assert reads == [None, 2]


def test_a_failing_first_page_is_raised_before_anything_is_sent(bind_request: BindRequest) -> None:
    """A busy Registry on the first page is still an ErrorResponse, not a cut-off body."""
    bind_request()

    def busy(after: int | None, limit: int) -> Page[int]:
        raise ApiError(503, "unavailable", "engine is busy")

    with pytest.raises(ApiError):
        paged_list_response(busy)


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
