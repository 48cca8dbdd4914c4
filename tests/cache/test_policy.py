"""The capacity policy of SPEC §10 as tables: settings, limits, pressure, candidates, errors."""

from __future__ import annotations

from typing import Any

import pytest
import ujson

from sqlrs_engine.cache.policy import (
    FREE_BELOW_RESERVE,
    GIB,
    USAGE_ABOVE_HIGH,
    CacheUnavailable,
    CapacitySettings,
    Measurement,
    StateInfo,
    candidates,
    full_unreclaimable,
    limit_too_small,
    limits,
    pressure_reasons,
    relieved,
)

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
OLD = "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, CapacitySettings()),
        ({"maxBytes": None, "reserveBytes": None}, CapacitySettings()),
        (
            {"maxBytes": 5, "reserveBytes": 7, "highWatermark": 1, "lowWatermark": 0.5},
            CapacitySettings(max_bytes=5, reserve_bytes=7, high=1.0, low=0.5),
        ),
        ({"minStateAge": "0s"}, CapacitySettings(min_state_age_ns=0)),
        ({"minStateAge": "1m30s"}, CapacitySettings(min_state_age_ns=90 * 10**9)),
    ],
)
def test_settings_from_config(config: dict[str, Any] | None, expected: CapacitySettings) -> None:
    assert CapacitySettings.from_config(config) == expected


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"maxBytes": -1}, "maxBytes"),
        ({"maxBytes": 1.5}, "maxBytes"),
        ({"reserveBytes": "x"}, "reserveBytes"),
        ({"highWatermark": 0}, "highWatermark"),
        ({"highWatermark": 1.1}, "highWatermark"),
        ({"lowWatermark": 0.9}, "lowWatermark"),  # not below the default high
        ({"lowWatermark": 0}, "lowWatermark"),
        ({"minStateAge": "-1s"}, "minStateAge"),
        ({"minStateAge": "ten minutes"}, "minStateAge"),
    ],
)
def test_unusable_settings(config: dict[str, Any], says: str) -> None:
    with pytest.raises(CacheUnavailable, match=says):
        CapacitySettings.from_config(config)


@pytest.mark.parametrize(
    ("settings", "total", "reserve", "effective", "high", "low"),
    [
        (CapacitySettings(), 100 * GIB, 10 * GIB, 90 * GIB, int(81 * GIB), int(72 * GIB)),
        (CapacitySettings(), 200 * GIB, 10 * GIB, 190 * GIB, int(171 * GIB), int(152 * GIB)),
        # A small disk keeps 10% free (the reference's 10 GiB would leave nothing usable).
        (
            CapacitySettings(),
            10 * 2**20,
            2**20,
            9 * 2**20,
            int(9 * 2**20 * 0.9),
            int(9 * 2**20 * 0.8),
        ),
        (CapacitySettings(max_bytes=1000), 100 * GIB, 10 * GIB, 1000, 900, 800),
        (CapacitySettings(reserve_bytes=0), 1000, 0, 1000, 900, 800),
        (CapacitySettings(max_bytes=10**15, reserve_bytes=0), 1000, 0, 1000, 900, 800),
    ],
)
def test_limits(
    settings: CapacitySettings, total: int, reserve: int, effective: int, high: int, low: int
) -> None:
    bounds = limits(settings, total)
    assert (bounds.reserve_bytes, bounds.effective_max_bytes) == (reserve, effective)
    assert (bounds.high_bytes, bounds.low_bytes) == (high, low)


BOUNDS = limits(CapacitySettings(max_bytes=1000, reserve_bytes=100), 10_000)


@pytest.mark.parametrize(
    ("usage", "free", "reasons", "done"),
    [
        (900, 5000, [], False),  # at the high watermark: no pressure yet
        (901, 5000, [USAGE_ABOVE_HIGH], False),
        (800, 5000, [], True),
        (500, 99, [FREE_BELOW_RESERVE], False),
        (950, 50, [USAGE_ABOVE_HIGH, FREE_BELOW_RESERVE], False),
    ],
)
def test_pressure_and_relief(usage: int, free: int, reasons: list[str], done: bool) -> None:
    measured = Measurement(10_000, free, usage)
    assert pressure_reasons(measured, BOUNDS) == reasons
    assert relieved(measured, BOUNDS) is done


def state(sid: str, size: int = 10, used: str | None = OLD, **kw: Any) -> StateInfo:
    return StateInfo(sid, "img@x", size, kw.pop("created", OLD), used, **kw)


@pytest.mark.parametrize(
    ("states", "protected", "evictable", "blocked"),
    [
        ([], frozenset(), [], []),
        (
            [
                state("b", used="2026-06-01T00:00:00Z"),
                state("a", used="2026-03-01T00:00:00Z"),
                state("c", used=None, created="2026-02-01T00:00:00Z"),  # never used: created
            ],
            frozenset(),
            ["c", "a", "b"],  # least recently used first
            [],
        ),
        (
            [state("small", 1), state("big", 100), state("mid", 50)],
            frozenset(),
            ["big", "mid", "small"],  # same last use: biggest first
            [],
        ),
        ([state("y", 5), state("x", 5)], frozenset(), ["x", "y"], []),  # then by id
        (
            [
                state("inst", refcount=1),
                state("parent", has_children=True),
                state("job", 10),
                state("kept", min_retention_until="2099-01-01T00:00:00Z"),
                state("young", created="2027-01-15T07:55:00Z", used=None),
                state("free", 10),
                state("expired-retention", min_retention_until="2020-01-01T00:00:00Z"),
            ],
            frozenset({"job"}),
            ["expired-retention", "free"],
            ["inst", "parent", "job", "kept", "young"],
        ),
    ],
)
def test_candidates(
    states: list[StateInfo], protected: frozenset[str], evictable: list[str], blocked: list[str]
) -> None:
    found = candidates(states, now=NOW, min_state_age_seconds=600, protected=protected)
    assert [s.state_id for s in found.evictable] == evictable
    assert [s.state_id for s in found.blocked] == blocked
    assert found.reclaimable_bytes == sum(s.size_bytes for s in found.evictable)
    # Unordered (the cache status): the same states, the same bytes.
    unordered = candidates(
        states, now=NOW, min_state_age_seconds=600, protected=protected, ordered=False
    )
    assert sorted(s.state_id for s in unordered.evictable) == sorted(evictable)
    assert [s.state_id for s in unordered.blocked] == blocked
    assert unordered.reclaimable_bytes == found.reclaimable_bytes


def test_error_details_are_json_objects() -> None:
    too_small = limit_too_small(BOUNDS, [USAGE_ABOVE_HIGH], 4096)
    assert too_small.code == "cache_limit_too_small"
    details = ujson.loads(too_small.details or "")
    assert details["effective_max_bytes"] == 1000
    assert details["observed_required_bytes"] == 4096
    assert details["recommended_min_bytes"] >= 4096
    assert details["reasons"] == [USAGE_ABOVE_HIGH]
    full = full_unreclaimable(Measurement(10_000, 50, 950), BOUNDS, [FREE_BELOW_RESERVE], 2, 3, 0)
    assert full.code == "cache_full_unreclaimable"
    details = ujson.loads(full.details or "")
    assert (details["usage_bytes"], details["free_bytes"]) == (950, 50)
    assert (details["evicted_count"], details["blocked_count"]) == (2, 3)
    assert details["reasons"] == [FREE_BELOW_RESERVE]
