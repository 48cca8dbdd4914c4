"""Defaults tree, deep merge into the effective tree, and the served JSON Schema."""

from __future__ import annotations

from typing import Any

import pytest
import ujson

from sqlrs_engine.config.defaults import DEFAULTS, defaults
from sqlrs_engine.config.merge import deep_merge, effective_tree
from sqlrs_engine.config.paths import get_value, parse_path
from sqlrs_engine.config.schema import SCHEMA, config_schema


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("log.level", "info"),
        ("cache.capacity.maxBytes", 0),
        ("cache.capacity.reserveBytes", None),
        ("cache.capacity.highWatermark", 0.9),
        ("cache.capacity.lowWatermark", 0.8),
        ("cache.capacity.minStateAge", "10m"),
        ("container.runtime", "auto"),
        ("snapshot.backend", "auto"),
        ("orchestrator.jobs.maxIdentical", 2),
        ("orchestrator.jobs.minAge", "5m"),
        ("instances.expiryInterval", "1s"),
        ("runtime.host.user", None),
        ("runtime.host.binDirs", None),
        ("http.threads", 8),
        ("engine.pinThreads", True),
        ("orchestrator.jobs.maxTaskLogLines", 10_000),
    ],
)
def test_default_values(path: str, value: Any) -> None:
    assert get_value(DEFAULTS, parse_path(path)) == value


def test_defaults_have_sorted_keys_and_nothing_else() -> None:
    assert list(DEFAULTS) == sorted(DEFAULTS)
    leaves = {
        "cache.capacity.highWatermark",
        "cache.capacity.lowWatermark",
        "cache.capacity.maxBytes",
        "cache.capacity.minStateAge",
        "cache.capacity.reserveBytes",
        "container.runtime",
        "engine.pinThreads",
        "http.threads",
        "instances.expiryInterval",
        "liquibase.exec",
        "liquibase.warmJvm",
        "log.level",
        "orchestrator.jobs.maxIdentical",
        "orchestrator.jobs.minAge",
        "orchestrator.jobs.maxTaskLogLines",
        "pool.enabled",
        "pool.fillConcurrency",
        "pool.idleExpiry",
        "pool.maxMembers",
        "pool.maxMemoryBytes",
        "pool.membersPerState",
        "pool.pinnedStates",
        "pool.shortPath",
        "runtime.host.binDirs",
        "runtime.host.user",
        "snapshot.backend",
    }

    def walk(node: Any, prefix: str) -> set[str]:
        if not isinstance(node, dict):
            return {prefix}
        found: set[str] = set()
        for key, child in node.items():
            found |= walk(child, f"{prefix}.{key}" if prefix else key)
        return found

    assert walk(DEFAULTS, "") == leaves


def test_defaults_returns_an_independent_copy() -> None:
    copy = defaults()
    copy["log"]["level"] = "error"
    assert DEFAULTS["log"]["level"] == "info"


@pytest.mark.parametrize(
    ("base", "override", "expected"),
    [
        ({"a": 1}, {}, {"a": 1}),
        ({"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}}, {"a": {"x": 1, "y": 3}}),
        ({"a": {"b": {"c": 1, "d": 2}}}, {"a": {"b": {"d": 5}}}, {"a": {"b": {"c": 1, "d": 5}}}),
        # non-map values replace, including null, arrays and a scalar over a map
        ({"a": {"x": 1}}, {"a": None}, {"a": None}),
        ({"a": {"x": 1}}, {"a": 5}, {"a": 5}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": 1}, {"a": {"x": 1}}, {"a": {"x": 1}}),
        ({"a": None}, {"a": {"x": 1}}, {"a": {"x": 1}}),
    ],
)
def test_deep_merge(base: Any, override: Any, expected: Any) -> None:
    before = (ujson.dumps(base), ujson.dumps(override))
    assert deep_merge(base, override) == expected
    assert (ujson.dumps(base), ujson.dumps(override)) == before


def test_effective_tree_without_overrides_is_the_defaults() -> None:
    assert effective_tree({}) == DEFAULTS


def test_effective_tree_merges_overrides() -> None:
    tree = effective_tree(
        {"cache": {"capacity": {"maxBytes": 5}}, "log": {"level": None}, "extra": [1]}
    )
    assert tree["cache"]["capacity"] == {**DEFAULTS["cache"]["capacity"], "maxBytes": 5}
    assert tree["log"] == {"level": None}
    assert tree["extra"] == [1]
    assert tree["snapshot"] == {"backend": "auto"}


def test_effective_tree_does_not_share_objects_with_defaults() -> None:
    tree = effective_tree({})
    tree["cache"]["capacity"]["maxBytes"] = 99
    assert DEFAULTS["cache"]["capacity"]["maxBytes"] == 0


def schema_node(path: str) -> Any:
    node: Any = SCHEMA
    for key in path.split("."):
        node = node["properties"][key]
    return node


def test_schema_header() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["type"] == "object"
    ujson.dumps(SCHEMA)  # serializable as is


def test_schema_allows_additional_properties_at_every_object() -> None:
    def objects(node: Any) -> list[Any]:
        found = [node] if node.get("type") == "object" else []
        for child in node.get("properties", {}).values():
            found += objects(child)
        return found

    nodes = objects(SCHEMA)
    # root, cache, capacity, container, http, instances, liquibase, log, orchestrator, jobs,
    # pool, runtime, host, snapshot
    assert len(nodes) == 15
    assert all(node["additionalProperties"] is True for node in nodes)


@pytest.mark.parametrize(
    ("path", "types", "enum"),
    [
        ("log.level", ["string", "null"], ["debug", "info", "warn", "error", None]),
        ("container.runtime", ["string", "null"], ["auto", "docker", "podman", "host", None]),
        ("snapshot.backend", ["string", "null"], ["auto", "overlay", "btrfs", "copy", None]),
        ("cache.capacity.maxBytes", ["integer", "null"], None),
        ("cache.capacity.reserveBytes", ["integer", "null"], None),
        ("cache.capacity.highWatermark", ["number", "null"], None),
        ("cache.capacity.lowWatermark", ["number", "null"], None),
        ("cache.capacity.minStateAge", ["string", "null"], None),
        ("orchestrator.jobs.maxIdentical", ["integer", "null"], None),
        ("runtime.host.user", ["string", "null"], None),
        ("runtime.host.binDirs", ["array", "null"], None),
        ("http.threads", ["integer", "null"], None),
    ],
)
def test_schema_properties(path: str, types: list[str], enum: list[Any] | None) -> None:
    node = schema_node(path)
    assert node["type"] == types
    assert node.get("enum") == enum
    assert node["default"] == get_value(DEFAULTS, parse_path(path))


@pytest.mark.parametrize(
    ("path", "bounds"),
    [
        ("cache.capacity.maxBytes", {"minimum": 0}),
        ("orchestrator.jobs.maxIdentical", {"minimum": 0}),
        ("cache.capacity.highWatermark", {"exclusiveMinimum": 0, "maximum": 1}),
        ("http.threads", {"minimum": 4, "maximum": 4096}),
    ],
)
def test_schema_bounds(path: str, bounds: dict[str, int]) -> None:
    node = schema_node(path)
    assert {key: node[key] for key in bounds} == bounds


def test_config_schema_returns_a_copy() -> None:
    schema = config_schema()
    schema["properties"].clear()
    assert SCHEMA["properties"]
