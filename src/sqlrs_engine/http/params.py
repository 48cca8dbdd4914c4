"""Parsing of query parameters and request bodies into plain values, or a 400."""

from __future__ import annotations

import re
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


def header_value(environ: dict[str, Any], name: str) -> str | None:
    """A request header as sent (bytes as Latin-1 text), or None.

    Bottle's `request.headers` re-decodes header bytes as strict UTF-8, so one non-UTF-8
    byte in `Accept` or `Range` raised; the headers we read only matter as ASCII anyway.
    """
    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    return value if isinstance(value, str) else None


def optional_text(raw: str | None) -> str | None:
    """A trimmed filter value; blank means "no filter"."""
    text = (raw or "").strip()
    return text or None


def read_body(stream: Any, content_length: int | None) -> bytes:
    """Read at most MAX_BODY_BYTES from the request body, or raise a 413.

    A body that ends early or has broken chunked framing is the client's error (400): Cheroot
    raises a timeout for the first and ValueError/OverflowError for the second.
    """
    if content_length is not None and content_length > MAX_BODY_BYTES:
        raise _too_large()
    try:
        data = (
            stream.read(MAX_BODY_BYTES + 1)
            if content_length is None
            else stream.read(content_length)
        )
    except TimeoutError:
        raise invalid_argument(
            "incomplete request body",
            "the client sent fewer bytes than its Content-Length and then nothing more",
        ) from None
    except (ValueError, OverflowError) as error:
        raise invalid_argument("malformed request body", str(error)) from None
    if content_length is not None and len(data) < content_length:
        raise invalid_argument(
            "incomplete request body",
            f"Content-Length is {content_length} but the body ended after {len(data)} bytes",
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
    replaced: dict[str, Any] = _without_lone_surrogates(value, body)
    return replaced


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A `\\uD800`-`\\uDFFF` escape: the only way a lone surrogate gets into a JSON string."""


def _without_lone_surrogates(value: Any, body: bytes) -> Any:
    """`value` with every unpaired UTF-16 surrogate (`"\\ud800"`) replaced by U+FFFD.

    Such a string is valid JSON but not Unicode: it cannot be stored in SQLite, written to a
    file or passed to psql. Go's decoder (the reference engine) makes the same replacement.
    Bodies without a surrogate escape (nearly all) are returned as decoded; the walk is
    iterative because a valid document may nest deeper than Python's recursion limit.
    """
    if not _SURROGATE_ESCAPE.search(body):
        return value
    pending: list[list[Any] | dict[Any, Any]] = [value] if isinstance(value, list | dict) else []
    while pending:
        container = pending.pop()
        if isinstance(container, list):
            for index, item in enumerate(container):
                if isinstance(item, list | dict):
                    pending.append(item)
                else:
                    container[index] = _unicode_text(item)
            continue
        entries = list(container.items())
        container.clear()
        for key, item in entries:
            if isinstance(item, list | dict):
                pending.append(item)
            else:
                item = _unicode_text(item)
            container[_unicode_text(key)] = item
    return value


def _unicode_text(value: Any) -> Any:
    if not isinstance(value, str) or value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
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
