"""Per-path validation rules, fed with values decoded by ujson from the JSON text a client sends."""

from __future__ import annotations

import getpass
import os
from typing import Any

import pytest
import ujson

from sqlrs_engine.config.paths import parse_path, set_value
from sqlrs_engine.config.validate import (
    InvalidValue,
    affected_rule_paths,
    check_json_value,
    validate_change,
)

PG_BIN = "/usr/lib/postgresql/15/bin"
"""An installation's bin dir on this machine (ENVIRONMENT.md): a valid `binDirs` entry."""
SERVER_USER = "postgres" if os.geteuid() == 0 else getpass.getuser()
"""A `runtime.host.user` the next start can use."""

INTEGER_PATHS = [
    "orchestrator.jobs.maxIdentical",
    "cache.capacity.maxBytes",
    "cache.capacity.reserveBytes",
]
WATERMARKS = ["cache.capacity.highWatermark", "cache.capacity.lowWatermark"]


def change(path: str, raw: str, overrides: dict[str, Any] | None = None) -> None:
    """Validate setting `path` to the JSON text `raw` on top of `overrides`."""
    parsed = parse_path(path)
    updated = set_value(overrides or {}, parsed, ujson.loads(raw))
    validate_change(updated, parsed)


ACCEPT: list[tuple[str, str]] = [
    *[(p, raw) for p in INTEGER_PATHS for raw in ["0", "1", "2", "1073741824", "null"]],
    ("cache.capacity.maxBytes", "9223372036854775807"),
    # watermarks: (0, 1]; integers count as numbers; the other one stays default
    ("cache.capacity.highWatermark", "1"),
    ("cache.capacity.highWatermark", "1.0"),
    ("cache.capacity.highWatermark", "0.95"),
    ("cache.capacity.highWatermark", "0.81"),
    ("cache.capacity.highWatermark", "null"),
    ("cache.capacity.lowWatermark", "0.5"),
    ("cache.capacity.lowWatermark", "1e-1"),
    ("cache.capacity.lowWatermark", "0.89"),
    ("cache.capacity.lowWatermark", "null"),
    ("cache.capacity.minStateAge", '"10m"'),
    ("cache.capacity.minStateAge", '"0"'),
    ("cache.capacity.minStateAge", '"1h30m"'),
    ("cache.capacity.minStateAge", '"1.5h"'),
    ("cache.capacity.minStateAge", '"500ms"'),
    ("cache.capacity.minStateAge", '"-1s"'),
    ("cache.capacity.minStateAge", "null"),
    *[("snapshot.backend", f'"{v}"') for v in ["auto", "overlay", "btrfs", "copy"]],
    ("snapshot.backend", "null"),
    *[("container.runtime", f'"{v}"') for v in ["auto", "docker", "podman", "host"]],
    ("container.runtime", "null"),
    *[("log.level", f'"{v}"') for v in ["debug", "info", "warn", "error"]],
    ("log.level", '"INFO"'),
    ("log.level", '"Warn"'),
    ("log.level", "null"),
    ("runtime.host.user", '"postgres"'),
    ("runtime.host.user", f'"{SERVER_USER}"'),
    ("runtime.host.user", "null"),
    ("runtime.host.binDirs", f'["{PG_BIN}"]'),
    ("runtime.host.binDirs", f'["{PG_BIN}", "{PG_BIN}/../bin"]'),
    ("runtime.host.binDirs", "[]"),
    ("runtime.host.binDirs", "null"),
    ("runtime.host.binDirs[0]", f'"{PG_BIN}"'),
    ("liquibase.exec", '"/opt/liquibase/liquibase"'),
    ("liquibase.exec", "null"),
    ("liquibase.warmJvm", "false"),
    ("engine.pinThreads", "false"),
    ("engine.pinThreads", "null"),
    ("http.threads", "4"),
    ("http.threads", "64"),
    ("http.threads", "4096"),
    ("http.threads", "null"),
    # anything else is accepted, whatever its type
    ("unknown.key", '{"x": [1, 2.5, "s", null, true]}'),
    ("log.format", "1.5"),
    ("cache.other", '"x"'),
    ("container", '{"runtime": "docker", "extra": 1}'),
    ("cache", '{"capacity": {"maxBytes": 5, "highWatermark": 0.7, "lowWatermark": 0.6}}'),
    ("orchestrator", "null"),
]


@pytest.mark.parametrize(("path", "raw"), ACCEPT)
def test_accepts(path: str, raw: str) -> None:
    change(path, raw)


REJECT: list[tuple[str, str, str]] = [
    *[
        (p, raw, "must be an integer without fraction or exponent")
        for p in INTEGER_PATHS
        for raw in ["1.0", "1e3", "1E3", "2.5", "true", "false", '"5"', "[1]", "{}"]
    ],
    *[(p, "-1", "must be >= 0") for p in INTEGER_PATHS],
    ("cache.capacity.maxBytes", "9223372036854775808", "must be at most 9223372036854775807"),
    *[
        (p, raw, "must be a number in (0, 1]")
        for p in WATERMARKS
        for raw in ["0", "0.0", "-0.1", "1.01", "2", "true", '"0.5"', "[]"]
    ],
    ("cache.capacity.minStateAge", '"10"', "Go duration"),
    ("cache.capacity.minStateAge", '""', 'time: invalid duration ""'),
    ("cache.capacity.minStateAge", '"10x"', 'unknown unit "x"'),
    ("cache.capacity.minStateAge", '"1 m"', "Go duration"),
    ("cache.capacity.minStateAge", "600", "Go duration string"),
    ("snapshot.backend", '"zfs"', "must be one of auto, overlay, btrfs, copy"),
    ("snapshot.backend", '"Copy"', "must be one of auto, overlay, btrfs, copy"),
    ("snapshot.backend", '"overlayfs"', "must be one of"),
    ("snapshot.backend", "1", "must be one of"),
    ("container.runtime", '"Docker"', "must be one of auto, docker, podman, host"),
    ("container.runtime", '"containerd"', "must be one of auto, docker, podman, host"),
    ("container.runtime", '""', "must be one of"),
    ("container.runtime", "true", "must be one of"),
    ("log.level", '"trace"', "must be one of debug, info, warn, error (case-insensitive)"),
    ("log.level", '"warning"', "must be one of"),
    ("log.level", "0", "must be one of"),
    ("runtime.host.user", '""', "non-empty OS user name"),
    ("runtime.host.user", '"  "', "non-empty OS user name"),
    ("runtime.host.user", "0", "non-empty OS user name"),
    ("runtime.host.user", '["postgres"]', "non-empty OS user name"),
    ("runtime.host.binDirs", '"/usr/bin"', "must be an array of absolute directory paths"),
    ("runtime.host.binDirs", '["bin"]', "binDirs[0] must be an absolute directory path"),
    ("runtime.host.binDirs", '["/ok", "./rel"]', "binDirs[1] must be an absolute"),
    ("runtime.host.binDirs", '["/ok", null]', "binDirs[1] must be an absolute"),
    # Values that would stop the next start (SPEC §0.9, issue 10).
    ("runtime.host.binDirs", '["/tmp"]', "holds no PostgreSQL server binaries"),
    ("runtime.host.binDirs[0]", '"/usr/bin"', "missing postgres, pg_ctl, initdb"),
    ("runtime.host.user", '"no-such-user-sqlrs"', "would stop the next start"),
    ("runtime.host.user", '"root"', "would stop the next start"),
    ("runtime.host.binDirs", '[""]', "binDirs[0] must be an absolute"),
    ("liquibase.exec", '"liquibase"', "liquibase.exec must be an absolute file path"),
    ("liquibase.exec", '["/x"]', "liquibase.exec must be an absolute file path"),
    ("liquibase.warmJvm", '"yes"', "liquibase.warmJvm must be true or false"),
    ("engine.pinThreads", "0", "engine.pinThreads must be true or false"),
    ("runtime.host.binDirs", "[1]", "binDirs[0] must be an absolute"),
    ("runtime.host.binDirs[1]", '"/x"', "binDirs[0] must be an absolute"),  # padded null
    ("http.threads", "3", "integer from 4 to 4096"),
    ("http.threads", "0", "integer from 4 to 4096"),
    ("http.threads", "4097", "integer from 4 to 4096"),
    ("http.threads", "64.0", "integer from 4 to 4096"),
    ("http.threads", "true", "integer from 4 to 4096"),
    # nested writes reach the rules too
    ("cache", '{"capacity": {"maxBytes": 1.5}}', "cache.capacity.maxBytes must be an integer"),
    ("snapshot", '{"backend": "zfs"}', "snapshot.backend must be one of"),
    ("log.level.x", '"debug"', "log.level must be one of"),
    ("cache.capacity.maxBytes[0]", "1", "cache.capacity.maxBytes must be an integer"),
]


@pytest.mark.parametrize(("path", "raw", "reason"), REJECT)
def test_rejects(path: str, raw: str, reason: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        change(path, raw)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "path", "raw"),
    [
        ({}, "cache.capacity.highWatermark", "0.85"),  # low default 0.8
        ({}, "cache.capacity.lowWatermark", "0.1"),
        ({"cache": {"capacity": {"lowWatermark": 0.3}}}, "cache.capacity.highWatermark", "0.4"),
        ({"cache": {"capacity": {"highWatermark": 0.5}}}, "cache.capacity.lowWatermark", "0.4"),
        ({}, "cache.capacity", '{"highWatermark": 0.5, "lowWatermark": 0.25}'),
        # null is always allowed and leaves nothing to compare
        ({"cache": {"capacity": {"highWatermark": 0.5}}}, "cache.capacity.lowWatermark", "null"),
        ({"cache": {"capacity": {"lowWatermark": None}}}, "cache.capacity.highWatermark", "0.1"),
        ({"cache": {"capacity": {"highWatermark": None}}}, "cache.capacity.lowWatermark", "0.95"),
    ],
)
def test_watermark_cross_check_accepts(overrides: dict[str, Any], path: str, raw: str) -> None:
    change(path, raw, overrides)


@pytest.mark.parametrize(
    ("overrides", "path", "raw", "reason"),
    [
        ({}, "cache.capacity.highWatermark", "0.8", "lowWatermark (0.8) must be less than"),
        ({}, "cache.capacity.highWatermark", "0.5", "highWatermark (0.5)"),
        ({}, "cache.capacity.lowWatermark", "0.9", "lowWatermark (0.9) must be less than"),
        ({}, "cache.capacity.lowWatermark", "1", "highWatermark (0.9)"),
        (
            {"cache": {"capacity": {"highWatermark": 0.5}}},
            "cache.capacity.lowWatermark",
            "0.6",
            "lowWatermark (0.6) must be less than cache.capacity.highWatermark (0.5)",
        ),
        (
            {"cache": {"capacity": {"lowWatermark": 0.3}}},
            "cache.capacity.highWatermark",
            "0.3",
            "must be less than",
        ),
        ({}, "cache", '{"capacity": {"highWatermark": 0.5}}', "must be less than"),
    ],
)
def test_watermark_cross_check_rejects(
    overrides: dict[str, Any], path: str, raw: str, reason: str
) -> None:
    with pytest.raises(InvalidValue) as caught:
        change(path, raw, overrides)
    assert reason in str(caught.value)


def test_cross_check_only_runs_for_watermark_writes() -> None:
    # An inconsistent pair already on disk does not block unrelated writes.
    overrides = {"cache": {"capacity": {"highWatermark": 0.5, "lowWatermark": 0.6}}}
    change("log.level", '"info"', overrides)
    change("cache.capacity.maxBytes", "10", overrides)


def test_only_affected_rules_are_checked() -> None:
    overrides = {"snapshot": {"backend": "zfs"}}  # e.g. hand-edited on disk
    change("log.level", '"info"', overrides)
    with pytest.raises(InvalidValue):
        change("snapshot", '{"backend": "zfs", "x": 1}', overrides)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("log.level", [("log", "level")]),
        ("log", [("log", "level")]),
        ("log.level.x", [("log", "level")]),
        ("runtime.host.binDirs[0]", [("runtime", "host", "binDirs")]),
        ("unknown", []),
        ("log.format", []),
        (
            "cache.capacity",
            [
                ("cache", "capacity", "maxBytes"),
                ("cache", "capacity", "reserveBytes"),
                ("cache", "capacity", "highWatermark"),
                ("cache", "capacity", "lowWatermark"),
                ("cache", "capacity", "minStateAge"),
            ],
        ),
    ],
)
def test_affected_rule_paths(path: str, expected: list[tuple[str, ...]]) -> None:
    assert sorted(affected_rule_paths(parse_path(path))) == sorted(expected)


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -1, 2**70, 1.5, "s", "\U0001f600", [], {}, {"a": [1, {"b": None}]}],
)
def test_check_json_value_accepts(value: Any) -> None:
    check_json_value(value)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "NaN and Infinity"),
        (float("inf"), "NaN and Infinity"),
        ([1, {"x": float("-inf")}], "NaN and Infinity"),
        ("\ud800", "unpaired UTF-16 surrogate"),
        ({"\udc00": 1}, "unpaired UTF-16 surrogate"),
        ({1: "x"}, "is not a string"),
        ((1, 2), "tuple is not a JSON value"),
        ({"a": {1, 2}}, "set is not a JSON value"),
        (nested(65), "nested deeper than 64"),
    ],
)
def test_check_json_value_rejects(value: Any, reason: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        check_json_value(value)
    assert reason in str(caught.value)


def test_ujson_decodes_what_the_rules_rely_on() -> None:
    # The integer rule is a type check; it holds because ujson keeps these distinctions.
    assert type(ujson.loads("1")) is int
    assert type(ujson.loads("1.0")) is float
    assert type(ujson.loads("1e3")) is float
    assert type(ujson.loads("true")) is bool
    check_json_value(nested(64))
