"""Which states the pool refills and drains: caps, fairness, memory, expiry (table tests)."""

from __future__ import annotations

import pytest

from sqlrs_engine.pool.planner import Demand, Occupancy, plan
from sqlrs_engine.pool.settings import PoolSettings

NOW = 10_000.0
MIB = 1 << 20
ON = PoolSettings(enabled=True, members_per_state=2, max_members=8, fill_concurrency=8)


def occupancy(
    ready: dict[str, int] | None = None,
    filling: dict[str, int] | None = None,
    memory: int = 0,
    estimate: int = 20 * MIB,
) -> Occupancy:
    return Occupancy(ready or {}, filling or {}, memory, estimate)


@pytest.mark.parametrize(
    ("settings", "demands", "held", "fills", "expired"),
    [
        # disabled: nothing filled, everything held drained
        (PoolSettings(), {"a": Demand(NOW)}, occupancy({"a": 1}), (), ("a",)),
        # one hot state: filled up to membersPerState
        (ON, {"a": Demand(NOW)}, occupancy(), ("a", "a"), ()),
        (ON, {"a": Demand(NOW)}, occupancy({"a": 1}), ("a",), ()),
        (ON, {"a": Demand(NOW)}, occupancy({"a": 1}, {"a": 1}), (), ()),
        # fairness: one each (most recent first) before a second for anyone
        (
            ON,
            {"a": Demand(NOW - 5), "b": Demand(NOW)},
            occupancy(),
            ("b", "a", "b", "a"),
            (),
        ),
        # global cap counts ready and filling members of every state
        (
            PoolSettings(enabled=True, members_per_state=4, max_members=3, fill_concurrency=8),
            {"a": Demand(NOW), "b": Demand(NOW - 1)},
            occupancy({"a": 1}, {"b": 1}),
            ("a",),
            (),
        ),
        # fill concurrency bounds fills in flight
        (
            PoolSettings(enabled=True, members_per_state=4, max_members=8, fill_concurrency=1),
            {"a": Demand(NOW)},
            occupancy(),
            ("a",),
            (),
        ),
        (
            PoolSettings(enabled=True, members_per_state=4, max_members=8, fill_concurrency=1),
            {"a": Demand(NOW)},
            occupancy(filling={"a": 1}),
            (),
            (),
        ),
        # memory budget: ready members' measured memory plus an estimate per fill
        (
            PoolSettings(
                enabled=True,
                members_per_state=8,
                max_members=8,
                fill_concurrency=8,
                max_memory_bytes=100 * MIB,
            ),
            {"a": Demand(NOW)},
            occupancy({"a": 2}, memory=50 * MIB, estimate=20 * MIB),
            ("a", "a"),
            (),
        ),
        (
            PoolSettings(
                enabled=True,
                members_per_state=8,
                max_members=8,
                fill_concurrency=8,
                max_memory_bytes=0,
            ),
            {"a": Demand(NOW)},
            occupancy({"a": 2}, memory=50 * MIB, estimate=20 * MIB),
            ("a",) * 6,
            (),
        ),
        # idle expiry: a state not hit for idleExpiry is drained and not refilled
        (ON, {"a": Demand(NOW - 600)}, occupancy({"a": 2}), (), ("a",)),
        (ON, {"a": Demand(NOW - 599)}, occupancy({"a": 2}), (), ()),
        # held members of a state nobody wants any more (a deleted state's demand is gone)
        (ON, {}, occupancy({"a": 1}), (), ("a",)),
        # pinned states are wanted forever, and come first among equals
        (
            PoolSettings(enabled=True, members_per_state=1, max_members=1, fill_concurrency=1),
            {"a": Demand(NOW), "p": Demand(0.0, pinned=True)},
            occupancy(),
            ("p",),
            (),
        ),
    ],
)
def test_plan(
    settings: PoolSettings,
    demands: dict[str, Demand],
    held: Occupancy,
    fills: tuple[str, ...],
    expired: tuple[str, ...],
) -> None:
    decided = plan(settings, demands, held, NOW)
    assert decided.fills == fills
    assert decided.expired == expired
