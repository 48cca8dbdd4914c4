"""`pool.*` config: the typed settings (defaults for anything unusable) and the API's rules."""

from __future__ import annotations

from typing import Any

import pytest
import ujson

from sqlrs_engine.config.defaults import DEFAULTS
from sqlrs_engine.config.paths import parse_path, set_value
from sqlrs_engine.config.validate import InvalidValue, validate_change
from sqlrs_engine.pool.settings import PoolSettings


def change(path: str, raw: str) -> None:
    parsed = parse_path(path)
    validate_change(set_value({}, parsed, ujson.loads(raw)), parsed)


def test_defaults_tree_gives_the_default_settings() -> None:
    assert PoolSettings.from_config(DEFAULTS["pool"]) == PoolSettings()
    assert PoolSettings.from_config(None) == PoolSettings()


def test_default_is_off_and_inactive() -> None:
    assert PoolSettings().enabled is False
    assert PoolSettings().active is False


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({"enabled": True}, {"enabled": True, "active": True}),
        ({"enabled": True, "maxMembers": 0}, {"max_members": 0, "active": False}),
        ({"enabled": True, "membersPerState": 0}, {"members_per_state": 0, "active": False}),
        ({"enabled": "yes"}, {"enabled": False}),
        ({"membersPerState": 16, "maxMembers": 16}, {"members_per_state": 16, "max_members": 16}),
        ({"membersPerState": 257}, {"members_per_state": 2}),
        ({"membersPerState": -1}, {"members_per_state": 2}),
        ({"membersPerState": True}, {"members_per_state": 2}),
        ({"membersPerState": 2.0}, {"members_per_state": 2}),
        ({"maxMemoryBytes": 0}, {"max_memory_bytes": 0}),
        ({"maxMemoryBytes": None}, {"max_memory_bytes": 1 << 30}),
        ({"idleExpiry": "90s"}, {"idle_expiry_seconds": 90.0}),
        ({"idleExpiry": "0"}, {"idle_expiry_seconds": 600.0}),
        ({"idleExpiry": "soon"}, {"idle_expiry_seconds": 600.0}),
        ({"fillConcurrency": 4}, {"fill_concurrency": 4}),
        ({"fillConcurrency": 0}, {"fill_concurrency": 1}),
        ({"fillConcurrency": 9}, {"fill_concurrency": 1}),
        ({"pinnedStates": ["a", " a ", "", 3, "b"]}, {"pinned_states": ("a", "b")}),
        ({"pinnedStates": "a"}, {"pinned_states": ()}),
        ({}, {"short_path": True}),
        ({"shortPath": False}, {"short_path": False}),
        ({"shortPath": "no"}, {"short_path": True}),
        ({"shortPath": None}, {"short_path": True}),
    ],
)
def test_from_config(tree: dict[str, Any], expected: dict[str, Any]) -> None:
    settings = PoolSettings.from_config(tree)
    for name, value in expected.items():
        assert getattr(settings, name) == value, name


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("pool.enabled", "true"),
        ("pool.enabled", "false"),
        ("pool.enabled", "null"),
        ("pool.membersPerState", "0"),
        ("pool.membersPerState", "256"),
        ("pool.maxMembers", "16"),
        ("pool.maxMemoryBytes", "0"),
        ("pool.maxMemoryBytes", "9223372036854775807"),
        ("pool.idleExpiry", '"10m"'),
        ("pool.idleExpiry", '"1h30m"'),
        ("pool.fillConcurrency", "1"),
        ("pool.fillConcurrency", "8"),
        ("pool.pinnedStates", "[]"),
        ("pool.pinnedStates", '["0123abcd"]'),
        ("pool", '{"enabled": true, "membersPerState": 4, "maxMembers": 16}'),
    ],
)
def test_api_accepts(path: str, raw: str) -> None:
    change(path, raw)


@pytest.mark.parametrize(
    ("path", "raw", "reason"),
    [
        ("pool.enabled", '"yes"', "pool.enabled must be true or false"),
        ("pool.enabled", "1", "pool.enabled must be true or false"),
        ("pool.membersPerState", "-1", "must be an integer from 0 to 256"),
        ("pool.membersPerState", "257", "must be an integer from 0 to 256"),
        ("pool.membersPerState", "2.0", "must be an integer from 0 to 256"),
        ("pool.membersPerState", "true", "must be an integer from 0 to 256"),
        ("pool.maxMembers", '"8"', "pool.maxMembers must be an integer from 0 to 256"),
        ("pool.maxMemoryBytes", "-1", "pool.maxMemoryBytes must be >= 0"),
        ("pool.maxMemoryBytes", "1.5", "must be an integer without fraction"),
        ("pool.idleExpiry", "600", "must be a Go duration string"),
        ("pool.idleExpiry", '"soon"', "must be a Go duration string"),
        ("pool.idleExpiry", '"0"', "must be a positive Go duration"),
        ("pool.idleExpiry", '"-5m"', "must be a positive Go duration"),
        ("pool.fillConcurrency", "0", "must be an integer from 1 to 8"),
        ("pool.fillConcurrency", "9", "must be an integer from 1 to 8"),
        ("pool.pinnedStates", '"abc"', "must be an array of state ids"),
        ("pool.pinnedStates", '["ok", ""]', "pool.pinnedStates[1] must be a state id"),
        ("pool.pinnedStates", '["../x"]', "pool.pinnedStates[0] must be a state id"),
        ("pool", '{"maxMembers": -3}', "pool.maxMembers must be an integer"),
    ],
)
def test_api_rejects(path: str, raw: str, reason: str) -> None:
    with pytest.raises(InvalidValue, match=reason.replace("[", r"\[").replace("]", r"\]")):
        change(path, raw)
