"""Parsing of query parameters and request bodies into plain values, or a 400."""

from __future__ import annotations

from typing import Any

import ujson

from sqlrs_engine.errors import ApiError, invalid_argument

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}

MAX_BODY_BYTES = 32 * 1024 * 1024
"""Largest request body accepted; prepare scripts travel as files, not bodies."""


def parse_bool(name: str, raw: str | None) -> bool:
    """Go `strconv.ParseBool` semantics; empty or absent is false, anything else is a 400."""
    if raw is None or raw == "":
        return False
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise invalid_argument(f"invalid {name}", f"{name} must be a boolean, got {raw!r}")


def optional_text(raw: str | None) -> str | None:
    """A trimmed filter value; blank means "no filter"."""
    text = (raw or "").strip()
    return text or None


def read_body(stream: Any, content_length: int | None) -> bytes:
    """Read at most MAX_BODY_BYTES from the request body, or raise a 413."""
    if content_length is not None and content_length > MAX_BODY_BYTES:
        raise _too_large()
    data = (
        stream.read(MAX_BODY_BYTES + 1) if content_length is None else stream.read(content_length)
    )
    if len(data) > MAX_BODY_BYTES:
        raise _too_large()
    return bytes(data)


def _too_large() -> ApiError:
    return ApiError(
        413,
        "invalid_argument",
        "request body too large",
        f"the limit is {MAX_BODY_BYTES} bytes",
    )


def decode_json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object body; a bad or non-object body is `invalid json payload`."""
    if not body.strip():
        raise invalid_argument("invalid json payload", "EOF")
    try:
        value = ujson.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise invalid_argument("invalid json payload", str(error)) from None
    if not isinstance(value, dict):
        raise invalid_argument(
            "invalid json payload", f"expected a JSON object, got {type(value).__name__}"
        )
    return value


def json_object_body(request: Any) -> dict[str, Any]:
    """The request's body as a JSON object, size-limited; every 4xx of the two steps above."""
    return decode_json_object(read_body(request.body, request.content_length))
