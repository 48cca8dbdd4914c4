"""Exceptions of the Python client: every failure the engine reports keeps its code.

An ErrorResponse `{code, message, details?}` becomes an `ApiError` (or a subclass picked by
status) carrying the three fields and the HTTP status, so callers branch on `code` as the
`sqlrs` CLI does. A prepare job that ends `failed` raises `JobFailed` with the job's error.
No message here ever contains a DSN: DSNs carry per-instance secrets.
"""

from __future__ import annotations

from typing import Any


class SqlrsError(Exception):
    """Base class of every error raised by `sqlrs_engine.client`."""


class EngineUnavailable(SqlrsError):
    """No usable engine: none running and it could not be started, or it stopped answering."""


class ApiError(SqlrsError):
    """The engine answered with an error status (an ErrorResponse when it sent one)."""

    def __init__(self, status: int, code: str, message: str, details: str | None = None) -> None:
        text = f"{message} ({code}, HTTP {status})"
        super().__init__(text if not details else f"{text}: {details}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class InvalidArgument(ApiError):
    """400: the request was wrong; `message`/`details` say what (never retried)."""


class NotFound(ApiError):
    """404: no such job, instance or state."""


class Conflict(ApiError):
    """409 with an ErrorResponse (a run with connection arguments, a missing runtime)."""


class RunFailed(ApiError):
    """A run that failed after its stream started (an `error` event; HTTP status was 200)."""


class UnsupportedEndpoint(ApiError):
    """The engine does not serve this endpoint (a plain 404 for a route it lacks)."""


class DeleteBlocked(SqlrsError):
    """A DELETE was refused (409); `result` is the engine's DeleteResult tree."""

    def __init__(self, result: dict[str, Any]) -> None:
        root = result.get("root", {})
        reason = _first_block(root) or "blocked"
        super().__init__(f"cannot delete {root.get('kind', 'object')} {root.get('id')}: {reason}")
        self.result = result


class JobFailed(SqlrsError):
    """A prepare job ended `failed`; `code` is `cancelled` when it was cancelled."""

    def __init__(self, job_id: str, code: str, message: str, details: str | None = None) -> None:
        text = f"prepare job {job_id} failed: {message} ({code})"
        super().__init__(text if not details else f"{text}: {details}")
        self.job_id = job_id
        self.code = code
        self.message = message
        self.details = details


def _first_block(node: dict[str, Any]) -> str | None:
    if node.get("blocked") and node.get("blocked") != "blocked_by_descendant":
        return f"{node['blocked']} ({node.get('kind')} {node.get('id')})"
    for child in node.get("children", []) or []:
        found = _first_block(child)
        if found:
            return found
    blocked = node.get("blocked")
    return str(blocked) if blocked else None


def api_error(status: int, body: object) -> ApiError:
    """The exception for an error response: its ErrorResponse fields, or the bare status."""
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        code = str(body["code"])
        message = str(body.get("message") or code)
        details = body.get("details")
        details_text = None if details in (None, "") else str(details)
    else:
        code = {400: "invalid_argument", 404: "not_found", 409: "conflict"}.get(
            status, "internal_error" if status >= 500 else "http_error"
        )
        message = body.strip() if isinstance(body, str) and body.strip() else f"HTTP {status}"
        details_text = None
    cls: type[ApiError] = {400: InvalidArgument, 404: NotFound, 409: Conflict}.get(status, ApiError)
    return cls(status, code, message, details_text)
