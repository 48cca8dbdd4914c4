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


def query_value(query: Any, name: str) -> str | None:
    """The first value of query parameter `name`, decoded as UTF-8, or None when absent.

    Go's `URL.Query().Get` (what the CLI is written against) takes the first of repeated
    values; Bottle's `query.get` takes the last, and decodes the bytes as Latin-1.
    """
    values = query.getall(name)
    if not values:
        return None
    raw: str = values[0]
    return raw.encode("latin-1").decode("utf-8", errors="replace")


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
    replaced: dict[str, Any] = _without_lone_surrogates(value)
    return replaced


def _without_lone_surrogates(value: Any) -> Any:
    """`value` with every unpaired UTF-16 surrogate (`"\\ud800"`) replaced by U+FFFD.

    Such a string is valid JSON but not Unicode: it cannot be stored in SQLite, written to a
    file or passed to psql. Go's decoder (the reference engine) makes the same replacement.
    """
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return value
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            _without_lone_surrogates(key): _without_lone_surrogates(item)
            for key, item in value.items()
        }
    return value


def json_object_body(request: Any) -> dict[str, Any]:
    """The request's body as a JSON object, size-limited; every 4xx of the two steps above.

    Read straight from `wsgi.input`, not through Bottle's `request.body`: Bottle would read
    (and spool to disk) a body of any size before our limit is checked, and it parses chunked
    framing again although Cheroot has already removed it (a chunked POST became a 400 HTML
    page). Cheroot's `wsgi.input` is bounded by Content-Length, or de-chunked until its end.
    """
    environ = request.environ
    declared = environ.get("CONTENT_LENGTH") or ""
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    length = None if chunked or not declared.isdigit() else int(declared)
    if length is None and not chunked:
        length = 0  # no body announced: nothing to read (reading could wait for the client)
    return decode_json_object(read_body(environ["wsgi.input"], length))
