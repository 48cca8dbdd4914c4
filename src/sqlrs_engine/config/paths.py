"""Config path syntax (`a.b`, `a.b[0].c`, `a[1][2]`) and get / set / delete on JSON values.

`GET/PATCH/DELETE /v1/config` address one value inside the config document by such a path.
Everything here is pure: functions take plain JSON values (dict / list / str / int / float /
bool / None) and return new ones, never changing the caller's objects, so the store can build
the next overrides document, validate and persist it, and only then swap it in.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "MAX_INDEX",
    "MAX_SEGMENTS",
    "ConfigPath",
    "PathError",
    "PathNotFound",
    "Segment",
    "delete_value",
    "find_value",
    "format_path",
    "get_value",
    "has_value",
    "parse_path",
    "set_value",
]

Segment = str | int
"""A map key (str) or an array index (int)."""

ConfigPath = tuple[Segment, ...]
"""A parsed path; `()` is the whole document."""

# Limits that keep hostile input from costing memory or recursion depth: setting `a[N]` pads
# the array to N+1 items, and every segment is one level of nesting.
MAX_INDEX = 9999
MAX_SEGMENTS = 32


class PathError(ValueError):
    """The path text is not valid config path syntax; the message says where and why."""


class PathNotFound(LookupError):
    """Nothing is stored at the path."""


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def parse_path(text: str) -> ConfigPath:
    """Parse path text into key / index segments; `""` is the whole document (`()`).

    Keys are case-sensitive and may contain any character except `.` and `[` (which
    separate segments). Rejected: a leading `.`, an empty key (`..`, a trailing `.`, `.[`),
    `[` without digits or without `]`, text right after `]`, a leading index (the document
    root is always an object), indexes above `MAX_INDEX` and more than `MAX_SEGMENTS` parts.
    """
    segments: list[Segment] = []
    n = len(text)
    if n == 0:
        return ()
    if text[0] == ".":
        raise PathError("path must not start with '.'")
    if text[0] == "[":
        raise PathError("path must start with a key (the config document is an object)")
    i = 0
    while i < n:
        ch = text[i]
        if ch == "[":
            j = i + 1
            while j < n and _is_digit(text[j]):
                j += 1
            if j == i + 1:
                raise PathError(f"'[' at position {i} must be followed by digits")
            if j >= n or text[j] != "]":
                raise PathError(f"'[' at position {i} is missing its closing ']'")
            digits = text[i + 1 : j]
            if len(digits) > len(str(MAX_INDEX)) or int(digits) > MAX_INDEX:
                raise PathError(f"array index {digits} is larger than {MAX_INDEX}")
            segments.append(int(digits))
            i = j + 1
            if i < n and text[i] not in ".[":
                raise PathError(f"expected '.' or '[' after ']' at position {i}")
        else:
            if ch == ".":
                i += 1  # a separator; a key must follow it
                if i >= n or text[i] in ".[":
                    raise PathError(f"empty key at position {i}")
            start = i
            while i < n and text[i] not in ".[":
                i += 1
            segments.append(text[start:i])
        if len(segments) > MAX_SEGMENTS:
            raise PathError(f"path has more than {MAX_SEGMENTS} parts")
    return tuple(segments)


def format_path(path: ConfigPath) -> str:
    """Render segments back to path text (for messages), e.g. `runtime.host.binDirs[0]`."""
    out: list[str] = []
    for seg in path:
        if isinstance(seg, int):
            out.append(f"[{seg}]")
        else:
            out.append(("." if out else "") + seg)
    return "".join(out)


def _child(node: Any, seg: Segment) -> Any:
    """The child at one segment, or raise `PathNotFound` (wrong container type included)."""
    if isinstance(seg, int):
        if isinstance(node, list) and seg < len(node):
            return node[seg]
    elif isinstance(node, dict) and seg in node:
        return node[seg]
    raise PathNotFound


def get_value(doc: Any, path: ConfigPath) -> Any:
    """A deep copy of the value at `path`; `PathNotFound` if it is absent.

    A key on a non-object, an index on a non-array and an index past the end are all
    "not found"; a stored `null` is found (and returned as `None`).
    """
    node = doc
    for seg in path:
        node = _child(node, seg)
    return copy.deepcopy(node)


def has_value(doc: Any, path: ConfigPath) -> bool:
    """Whether `get_value(doc, path)` would find something."""
    node = doc
    try:
        for seg in path:
            node = _child(node, seg)
    except PathNotFound:
        return False
    return True


def find_value(doc: Any, path: ConfigPath) -> Any:
    """Like `get_value`, but `None` when absent (for readers to whom absent and null agree)."""
    return get_value(doc, path) if has_value(doc, path) else None


def set_value(doc: Any, path: ConfigPath, value: Any) -> Any:
    """A copy of `doc` with `value` at `path`; `()` replaces the whole document.

    Missing maps are created; an intermediate value of the wrong kind (a scalar, or a map
    where an index follows / an array where a key follows) is replaced by an empty one;
    arrays are padded with `null` up to the index.
    """
    new_value = copy.deepcopy(value)
    if not path:
        return new_value
    result = _container_for(path[0], copy.deepcopy(doc))
    node: Any = result
    for pos, seg in enumerate(path):
        if isinstance(seg, int):
            if len(node) <= seg:
                node.extend([None] * (seg + 1 - len(node)))
            current = node[seg]
        else:
            current = node.get(seg)
        if pos == len(path) - 1:
            node[seg] = new_value
            break
        child = _container_for(path[pos + 1], current)
        node[seg] = child
        node = child
    return result


def _container_for(seg: Segment, current: Any) -> Any:
    """`current` if it can hold `seg` (an array for an index, a map for a key), else a new one."""
    if isinstance(seg, int):
        return current if isinstance(current, list) else []
    return current if isinstance(current, dict) else {}


def delete_value(doc: Any, path: ConfigPath) -> Any:
    """A copy of `doc` without the value at `path`; array items after it shift down.

    Raises `PathNotFound` if nothing is stored there, `PathError` for the empty path (the
    whole document cannot be deleted). Emptied parent maps and arrays are kept.
    """
    if not path:
        raise PathError("cannot delete the whole document")
    result = copy.deepcopy(doc)
    parent: Any = result
    for seg in path[:-1]:
        parent = _child(parent, seg)
    last = path[-1]
    _child(parent, last)  # raises PathNotFound when absent
    del parent[last]
    return result
