"""The one error type that crosses layers: an ErrorResponse with the HTTP status it maps to.

Pure code raises `ApiError` for bad input; the HTTP layer renders it as `{code, message,
details?}`; a job that fails stores the same triple. Keeping one type means a message written
in `prepare/` reaches the user unchanged, whichever path reported it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class ApiError(Exception):
    """An error the user can act on, with its ErrorResponse code and HTTP status."""

    def __init__(self, status: int, code: str, message: str, details: str | None = None) -> None:
        super().__init__(message if details is None else f"{message}: {details}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The ErrorResponse object; `details` is absent when empty (Go `omitempty`)."""
        return error_response(self.code, self.message, self.details)


def error_response(code: str, message: str, details: str | None = None) -> dict[str, Any]:
    """Build an ErrorResponse dict, omitting empty details."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return body


def invalid_argument(message: str, details: str | None = None) -> ApiError:
    return ApiError(400, "invalid_argument", message, details)


def not_found(message: str, details: str | None = None) -> ApiError:
    return ApiError(404, "not_found", message, details)


def conflict(message: str, details: str | None = None) -> ApiError:
    return ApiError(409, "conflict", message, details)


def internal_error(message: str = "internal error", details: str | None = None) -> ApiError:
    return ApiError(500, "internal_error", message, details)


class JobFailure(Exception):
    """A prepare job or task failed; carries the ErrorResponse stored on the job.

    Unlike `ApiError` it has no HTTP status: a job failure is reported through the job's
    status and events, never as the status of the request that observes it.
    """

    def __init__(self, code: str, message: str, details: str | None = None) -> None:
        super().__init__(message if details is None else f"{message}: {details}")
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return error_response(self.code, self.message, self.details)


def cancelled(message: str = "task cancelled") -> JobFailure:
    return JobFailure("cancelled", message)


@contextmanager
def failures_reported_as(message: str) -> Iterator[None]:
    """Report a collaborator's `JobFailure` as this step's (`internal_error` / `message`),
    keeping its reason (message and details) in the details; a cancellation stays one."""
    try:
        yield
    except JobFailure as failure:
        if failure.code == "cancelled":
            raise
        raise JobFailure("internal_error", message, _reason(failure, message)) from None


def _reason(failure: JobFailure, outer: str) -> str:
    """`message: details` of a wrapped failure, without repeating what the outer one says."""
    if not failure.details:
        return failure.message
    if failure.message in (outer, ""):
        return failure.details
    return f"{failure.message}: {failure.details}"


NO_SPACE_SIGNS = ("no space left on device", "check free disk space")
"""How a full filesystem shows in tool output: the OS's ENOSPC text, and PostgreSQL's hint
when a write came back short (`could not extend file …: wrote only 4096 of 8192 bytes`)."""


def reports_no_space(text: str) -> bool:
    """Whether a tool's message says the filesystem is full (mapped per SPEC §10.2)."""
    lowered = text.lower()
    return any(sign in lowered for sign in NO_SPACE_SIGNS)


class StartupRefused(Exception):
    """The engine cannot start as configured; the message says why and what to do.

    An expected outcome, not a crash: it is logged as one line (no traceback) and printed on
    stderr, and the process exits 1 (SPEC §1.1).
    """
