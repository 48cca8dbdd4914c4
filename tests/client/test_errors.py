"""ErrorResponses and bare error statuses become typed exceptions with code/message/details."""

from __future__ import annotations

from typing import Any

import pytest

from sqlrs_engine.client.errors import (
    ApiError,
    Conflict,
    DeleteBlocked,
    InvalidArgument,
    NotFound,
    api_error,
)


@pytest.mark.parametrize(
    ("status", "body", "cls", "code", "message", "details"),
    [
        (
            400,
            {"code": "invalid_argument", "message": "invalid ttl", "details": "x"},
            InvalidArgument,
            "invalid_argument",
            "invalid ttl",
            "x",
        ),
        (
            404,
            {"code": "not_found", "message": "instance not found"},
            NotFound,
            "not_found",
            "instance not found",
            None,
        ),
        (409, {"code": "conflict", "message": "m", "details": ""}, Conflict, "conflict", "m", None),
        (
            500,
            {"code": "internal_error", "message": "run failed", "details": "exec"},
            ApiError,
            "internal_error",
            "run failed",
            "exec",
        ),
        (404, "404 page not found\n", NotFound, "not_found", "404 page not found", None),
        (500, "", ApiError, "internal_error", "HTTP 500", None),
        (401, "", ApiError, "http_error", "HTTP 401", None),
        (
            503,
            {"code": "unavailable", "message": "engine is shutting down"},
            ApiError,
            "unavailable",
            "engine is shutting down",
            None,
        ),
    ],
)
def test_api_error(
    status: int,
    body: Any,
    cls: type[ApiError],
    code: str,
    message: str,
    details: str | None,
) -> None:
    error = api_error(status, body)
    assert type(error) is cls
    assert (error.status, error.code, error.message, error.details) == (
        status,
        code,
        message,
        details,
    )
    assert message in str(error)


def test_delete_blocked_names_the_blocking_node() -> None:
    result = {
        "dry_run": False,
        "outcome": "blocked",
        "root": {
            "kind": "state",
            "id": "s1",
            "blocked": "blocked_by_descendant",
            "children": [
                {"kind": "instance", "id": "i1", "connections": 2, "blocked": "active_connections"}
            ],
        },
    }
    error = DeleteBlocked(result)
    assert error.result is result
    assert str(error) == "cannot delete state s1: active_connections (instance i1)"
