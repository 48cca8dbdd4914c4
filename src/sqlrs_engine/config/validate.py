"""Validation of a config change: the per-path rules of the config contract.

The reference engine validates with explicit per-path code (not with its JSON Schema), and so
do we. Only a handful of paths have rules; `null` is accepted at every one of them (it means
"use the built-in behavior") and every other path accepts any JSON value.

Integers must arrive as integers: values are decoded with `ujson`, which keeps `5` an `int`
and turns `5.0` and `5e0` into `float`, so "no fraction / exponent" is a type check, and `true`
(a `bool`, which Python counts as an `int`) is rejected explicitly.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Callable
from typing import Any

import ujson

from sqlrs_engine.config.defaults import (
    CONTAINER_RUNTIMES,
    LOG_LEVELS,
    MAX_HTTP_THREADS,
    MIN_HTTP_THREADS,
    SNAPSHOT_BACKENDS,
)
from sqlrs_engine.config.merge import effective_tree
from sqlrs_engine.config.paths import ConfigPath, find_value, format_path, get_value, has_value
from sqlrs_engine.durations import DurationError, parse_duration_ns
from sqlrs_engine.pool.settings import MAX_FILL_CONCURRENCY, MAX_MEMBERS_LIMIT
from sqlrs_engine.runtime.users import ServerUserError, server_user

__all__ = [
    "HIGH_WATERMARK",
    "LOW_WATERMARK",
    "MAX_DEPTH",
    "MAX_INT64",
    "RULES",
    "InvalidValue",
    "affected_rule_paths",
    "check_json_value",
    "check_rule",
    "is_integer",
    "is_number",
    "validate_change",
]

MAX_DEPTH = 64
"""Deepest nesting accepted in a value; keeps copying and encoding far from recursion limits."""

MAX_INT64 = (1 << 63) - 1
"""Integer settings are int64 in the reference engine (and in SQLite)."""

HIGH_WATERMARK = ("cache", "capacity", "highWatermark")
LOW_WATERMARK = ("cache", "capacity", "lowWatermark")


class InvalidValue(ValueError):
    """A value a rule rejects; the message names the path and says what is expected."""


def _show(value: Any) -> str:
    """A short JSON rendering of a rejected value for messages."""
    try:
        text = ujson.dumps(value, ensure_ascii=False, escape_forward_slashes=False)
    except (TypeError, ValueError, OverflowError):  # not JSON (UnicodeEncodeError is a ValueError)
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_integer(value: Any) -> bool:
    """A JSON integer as decoded by ujson: `int` but not `bool`."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite JSON number (`int` or `float`, never `bool`)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int)


def check_json_value(value: Any) -> None:
    """Reject what is not storable JSON: other Python types, non-string keys, NaN/Infinity
    (ujson decodes them, but they are not JSON), lone UTF-16 surrogates, nesting deeper
    than `MAX_DEPTH`."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidValue(f"value is nested deeper than {MAX_DEPTH} levels")
        if node is None or isinstance(node, bool | int):
            continue
        if isinstance(node, float):
            if not math.isfinite(node):
                raise InvalidValue("NaN and Infinity are not JSON numbers")
        elif isinstance(node, str):
            _check_text(node)
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, dict):
            for key, item in node.items():
                if not isinstance(key, str):
                    raise InvalidValue(f"object key {key!r} is not a string")
                _check_text(key)
                stack.append((item, depth + 1))
        else:
            raise InvalidValue(f"{type(node).__name__} is not a JSON value")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue("string contains an unpaired UTF-16 surrogate") from None


def _non_negative_int(name: str, value: Any) -> None:
    if not is_integer(value):
        raise InvalidValue(
            f"{name} must be an integer without fraction or exponent (got {_show(value)})"
        )
    if value < 0:
        raise InvalidValue(f"{name} must be >= 0 (got {value})")
    if value > MAX_INT64:
        raise InvalidValue(f"{name} must be at most {MAX_INT64} (got {value})")


def _watermark(name: str, value: Any) -> None:
    if not is_number(value):
        raise InvalidValue(f"{name} must be a number in (0, 1] (got {_show(value)})")
    if not 0 < value <= 1:
        raise InvalidValue(f"{name} must be a number in (0, 1] (got {_show(value)})")


def _duration(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise InvalidValue(
            f"{name} must be a Go duration string such as 10m, 1h30m or 90s (got {_show(value)})"
        )
    try:
        parse_duration_ns(value)
    except DurationError as err:
        raise InvalidValue(
            f"{name} must be a Go duration string such as 10m, 1h30m or 90s ({err})"
        ) from None


def _one_of(choices: tuple[str, ...], *, ignore_case: bool = False) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        word = value.lower() if ignore_case and isinstance(value, str) else value
        if not isinstance(word, str) or word not in choices:
            hint = " (case-insensitive)" if ignore_case else ""
            raise InvalidValue(
                f"{name} must be one of {', '.join(choices)}{hint} (got {_show(value)})"
            )

    return check


SERVER_PROGRAMS = ("postgres", "pg_ctl", "initdb")
"""What a `runtime.host.binDirs` entry must hold to serve as an installation (runtime/host.py)."""


def _user_name(name: str, value: Any) -> None:
    """A user the next start can run PostgreSQL as (the check `server_user` makes at start):
    as root an existing unprivileged user, otherwise the engine's own user."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue(f"{name} must be a non-empty OS user name (got {_show(value)})")
    try:
        server_user(value)
    except ServerUserError as error:
        raise InvalidValue(f"{name} {_show(value)} would stop the next start: {error}") from None


def _abs_dirs(name: str, value: Any) -> None:
    if not isinstance(value, list):
        raise InvalidValue(
            f"{name} must be an array of absolute directory paths (got {_show(value)})"
        )
    for pos, item in enumerate(value):
        if not isinstance(item, str) or not posixpath.isabs(item):
            raise InvalidValue(
                f"{name}[{pos}] must be an absolute directory path (got {_show(item)})"
            )
    for pos, item in enumerate(value):
        missing = [
            program
            for program in SERVER_PROGRAMS
            if not (os.path.isfile(f"{item}/{program}") and os.access(f"{item}/{program}", os.X_OK))
        ]
        if missing:
            raise InvalidValue(
                f"{name}[{pos}] {_show(item)} holds no PostgreSQL server binaries (missing "
                f"{', '.join(missing)}); give the bin directory of an installation, for example "
                "/usr/lib/postgresql/15/bin"
            )


def _boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidValue(f"{name} must be true or false (got {_show(value)})")


def _abs_file(name: str, value: Any) -> None:
    if not isinstance(value, str) or not posixpath.isabs(value):
        raise InvalidValue(f"{name} must be an absolute file path (got {_show(value)})")


def _http_threads(name: str, value: Any) -> None:
    if not is_integer(value) or not MIN_HTTP_THREADS <= value <= MAX_HTTP_THREADS:
        raise InvalidValue(
            f"{name} must be an integer from {MIN_HTTP_THREADS} to {MAX_HTTP_THREADS} "
            f"(got {_show(value)})"
        )


def _int_range(low: int, high: int) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if not is_integer(value) or not low <= value <= high:
            raise InvalidValue(
                f"{name} must be an integer from {low} to {high} (got {_show(value)})"
            )

    return check


def _positive_duration(name: str, value: Any) -> None:
    _duration(name, value)
    if parse_duration_ns(value) <= 0:
        raise InvalidValue(
            f"{name} must be a positive Go duration such as 10m (got {_show(value)})"
        )


def _state_ids(name: str, value: Any) -> None:
    if not isinstance(value, list):
        raise InvalidValue(f"{name} must be an array of state ids (got {_show(value)})")
    for pos, item in enumerate(value):
        if not isinstance(item, str) or not item.strip() or "/" in item or item.startswith("."):
            raise InvalidValue(f"{name}[{pos}] must be a state id (got {_show(item)})")


RULES: dict[tuple[str, ...], Callable[[str, Any], None]] = {
    ("orchestrator", "jobs", "maxIdentical"): _non_negative_int,
    ("orchestrator", "jobs", "minAge"): _duration,
    ("instances", "expiryInterval"): _duration,
    ("orchestrator", "jobs", "maxTaskLogLines"): _non_negative_int,
    ("cache", "capacity", "maxBytes"): _non_negative_int,
    ("cache", "capacity", "reserveBytes"): _non_negative_int,
    HIGH_WATERMARK: _watermark,
    LOW_WATERMARK: _watermark,
    ("cache", "capacity", "minStateAge"): _duration,
    ("snapshot", "backend"): _one_of(SNAPSHOT_BACKENDS),
    ("container", "runtime"): _one_of(CONTAINER_RUNTIMES),
    ("log", "level"): _one_of(LOG_LEVELS, ignore_case=True),
    ("runtime", "host", "user"): _user_name,
    ("runtime", "host", "binDirs"): _abs_dirs,
    ("http", "threads"): _http_threads,
    ("engine", "pinThreads"): _boolean,
    ("liquibase", "exec"): _abs_file,
    ("liquibase", "warmJvm"): _boolean,
    ("pool", "enabled"): _boolean,
    ("pool", "membersPerState"): _int_range(0, MAX_MEMBERS_LIMIT),
    ("pool", "maxMembers"): _int_range(0, MAX_MEMBERS_LIMIT),
    ("pool", "maxMemoryBytes"): _non_negative_int,
    ("pool", "idleExpiry"): _positive_duration,
    ("pool", "fillConcurrency"): _int_range(1, MAX_FILL_CONCURRENCY),
    ("pool", "pinnedStates"): _state_ids,
    ("pool", "shortPath"): _boolean,
}
"""Checks by path; each gets the path text and a non-null value and raises `InvalidValue`."""


def check_rule(path: tuple[str, ...], value: Any) -> None:
    """Apply the rule for `path` (if it has one) to `value`; `null` always passes."""
    rule = RULES.get(path)
    if rule is not None and value is not None:
        rule(format_path(path), value)


def _is_prefix(short: ConfigPath, long: ConfigPath) -> bool:
    return len(short) <= len(long) and long[: len(short)] == short


def affected_rule_paths(path: ConfigPath) -> list[tuple[str, ...]]:
    """Rule paths whose value a write at `path` can change.

    Those at or under `path` (writing `cache` may bring a new `cache.capacity.maxBytes`) and
    those above it (writing `runtime.host.binDirs[0]` changes the whole `binDirs` list;
    writing `log.level.x` turns `log.level` into an object).
    """
    return [rule for rule in RULES if _is_prefix(path, rule) or _is_prefix(rule, path)]


def validate_change(overrides: dict[str, Any], path: ConfigPath) -> None:
    """Check a proposed overrides document after a write at `path`; raise `InvalidValue`.

    Applies the rule of every affected rule path that holds a value in `overrides`, and when
    a watermark is affected, requires effective low < effective high (both numbers).
    """
    affected = affected_rule_paths(path)
    for rule_path in affected:
        if has_value(overrides, rule_path):
            check_rule(rule_path, get_value(overrides, rule_path))
    if HIGH_WATERMARK in affected or LOW_WATERMARK in affected:
        # Absent overrides show the defaults here; an explicit null is always allowed and
        # leaves nothing to compare, so the check needs two numbers.
        tree = effective_tree(overrides)
        high = find_value(tree, HIGH_WATERMARK)
        low = find_value(tree, LOW_WATERMARK)
        if is_number(high) and is_number(low) and not low < high:
            raise InvalidValue(
                f"{format_path(LOW_WATERMARK)} ({_show(low)}) must be less than "
                f"{format_path(HIGH_WATERMARK)} ({_show(high)})"
            )
