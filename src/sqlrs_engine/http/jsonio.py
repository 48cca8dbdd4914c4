"""JSON and NDJSON encoding with `ujson`, in the byte shapes clients expect.

Every JSON body ends with `\\n` (Go's json.Encoder does this, and the CLI is written against
it). Lists are a JSON array unless the client's `Accept` asks for NDJSON.
"""

from __future__ import annotations

import functools
from typing import Any

import ujson

JSON = "application/json"
NDJSON = "application/x-ndjson"


def dumps(value: Any, sort_keys: bool = False) -> str:
    return ujson.dumps(value, ensure_ascii=False, escape_forward_slashes=False, sort_keys=sort_keys)


def json_line(value: Any, sort_keys: bool = False) -> bytes:
    """One JSON document followed by a newline, UTF-8 (`sort_keys` for Go-encoded maps).

    A lone surrogate (`"\\ud800"` in a request, echoed in an error) cannot be UTF-8; such a
    document is written with `\\u` escapes instead, which is still valid JSON.
    """
    try:
        return (dumps(value, sort_keys) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        escaped = ujson.dumps(
            value, ensure_ascii=True, escape_forward_slashes=False, sort_keys=sort_keys
        )
        return (escaped + "\n").encode("ascii")


_dump_line = functools.partial(ujson.dumps, ensure_ascii=False, escape_forward_slashes=False)


def json_lines(values: list[Any]) -> bytes:
    """NDJSON: every value as its `json_line`, encoded to UTF-8 once for all of them (a
    listing page: per-value calls and encodes were a third of an NDJSON listing's time)."""
    if not values:
        return b""
    try:
        return ("\n".join(map(_dump_line, values)) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return b"".join([json_line(value) for value in values])


def wants_ndjson(accept: str | None) -> bool:
    return NDJSON in (accept or "").lower()
