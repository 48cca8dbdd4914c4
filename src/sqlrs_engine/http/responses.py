"""Building Bottle responses: JSON, lists, ErrorResponses, and Go-style plain errors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import bottle

from sqlrs_engine.errors import ApiError
from sqlrs_engine.http.jsonio import JSON, json_line, render_list
from sqlrs_engine.http.params import header_value


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


def list_response(items: Iterable[Any]) -> bottle.HTTPResponse:
    body, content_type = render_list(items, header_value(bottle.request.environ, "Accept"))
    return bottle.HTTPResponse(body=body, status=200, headers={"Content-Type": content_type})


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
