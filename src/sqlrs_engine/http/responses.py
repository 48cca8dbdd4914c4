"""Building Bottle responses: JSON, lists, ErrorResponses, and Go-style plain errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import bottle

from sqlrs_engine.errors import ApiError
from sqlrs_engine.http.jsonio import JSON, NDJSON, json_line, json_lines, wants_ndjson
from sqlrs_engine.http.params import header_value
from sqlrs_engine.persistence.pages import Page

PAGE_ROWS = 500
"""Rows per Registry message when a list is streamed."""

K = TypeVar("K")

PageReader = Callable[[K | None, int], Page[K]]
"""Reads the page after keyset `after` (None: the first page) with at most `limit` rows
(one Registry ask)."""


def json_response(
    value: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    sort_keys: bool = False,
) -> bottle.HTTPResponse:
    all_headers = {"Content-Type": JSON}
    all_headers.update(headers or {})
    body = json_line(value, sort_keys)
    return bottle.HTTPResponse(body=body, status=status, headers=all_headers)


def paged_list_response(read_page: PageReader[K]) -> bottle.HTTPResponse:
    """A list written page by page as it is read: memory stays at one page, whatever the size.

    The first page is read before anything is sent, so a busy or stopping Registry is still
    an ErrorResponse. The JSON array is byte-for-byte the whole list encoded at once (`[]`
    when empty); NDJSON is one line per entry (nothing when empty).
    """
    first = read_page(None, PAGE_ROWS)
    ndjson = wants_ndjson(header_value(bottle.request.environ, "Accept"))
    body = _ndjson_pages(first, read_page) if ndjson else _json_array_pages(first, read_page)
    content_type = NDJSON if ndjson else JSON
    return bottle.HTTPResponse(body=body, status=200, headers={"Content-Type": content_type})


def _pages(first: Page[K], read_page: PageReader[K]) -> Iterator[list[Any]]:
    page = first
    while True:
        yield page.rows
        if page.next_key is None:
            return
        page = read_page(page.next_key, PAGE_ROWS)


def _ndjson_pages(first: Page[K], read_page: PageReader[K]) -> Iterator[bytes]:
    for rows in _pages(first, read_page):
        if rows:
            yield json_lines(rows)


def _json_array_pages(first: Page[K], read_page: PageReader[K]) -> Iterator[bytes]:
    """Each page is encoded as one array (one call into ujson) and sent without its
    brackets; the pages' elements are joined by commas inside one pair of brackets."""
    yield b"["
    separator = b""
    for rows in _pages(first, read_page):
        if rows:
            yield separator + json_line(rows)[1:-2]
            separator = b","
    yield b"]\n"


def error_response(error: ApiError) -> bottle.HTTPResponse:
    return json_response(error.to_dict(), status=error.status)


PLAIN_TEXT = "text/plain; charset=utf-8"


def plain_not_found() -> bottle.HTTPResponse:
    """Go's `http.NotFound`: the body `404 page not found` (SPEC §1.8)."""
    return bottle.HTTPResponse(
        body=b"404 page not found\n",
        status=404,
        headers={"Content-Type": PLAIN_TEXT, "X-Content-Type-Options": "nosniff"},
    )


def empty_response(status: int, headers: dict[str, str] | None = None) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(body=b"", status=status, headers=headers or {})
