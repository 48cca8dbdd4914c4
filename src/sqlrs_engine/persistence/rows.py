"""Small helpers shared by the query modules: row shaping and LIKE escaping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ujson

Row = dict[str, Any]


def compact(entry: Mapping[str, Any]) -> Row:
    """Drop absent values (None, empty string): Go `omitempty` for the API's optional fields."""
    return {key: value for key, value in entry.items() if value is not None and value != ""}


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching strings that start with `prefix` (escape char `\\`)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def dump_json(value: Any) -> str | None:
    return None if value is None else ujson.dumps(value, ensure_ascii=False)


def load_json(text: str | None) -> Any:
    return None if text is None else ujson.loads(text)
