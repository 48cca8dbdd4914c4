"""Wall-clock time in the one format the API uses: RFC 3339 UTC with a `Z` suffix.

Go's RFC3339Nano drops trailing zeros of the fraction and the fraction itself when it is zero;
clients compare these strings, so we produce exactly that shape (with microseconds).
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def format_rfc3339(moment: datetime) -> str:
    """Format as RFC3339Nano-style UTC: `2026-01-02T03:04:05.1234Z`, `2026-01-02T03:04:05Z`."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_rfc3339(text: str) -> datetime:
    """Parse a timestamp written by `format_rfc3339` (or any RFC 3339 UTC/offset form)."""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text).astimezone(UTC)


def now_rfc3339() -> str:
    """`format_rfc3339(utcnow())`."""
    return format_rfc3339(utcnow())
