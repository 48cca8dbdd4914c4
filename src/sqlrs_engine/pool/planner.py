"""Which states to refill next and which to drain (pure: table-tested).

The pool keeps up to `members_per_state` members of each *wanted* state: a state hit within
the idle expiry, or a pinned one. Slots are shared fairly: each round gives one more member to
the wanted state that has the fewest (most recently hit first), so one hot state never takes
the whole global cap while another hot state has none. Nothing is planned beyond the global
cap, the memory budget or the fill concurrency.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlrs_engine.pool.settings import PoolSettings


@dataclass(frozen=True)
class Demand:
    """Why a state is wanted: its last hit (epoch seconds; 0 for never) and pinning."""

    last_hit: float
    pinned: bool = False


@dataclass(frozen=True)
class Occupancy:
    """What the pool holds right now."""

    ready: Mapping[str, int]
    filling: Mapping[str, int]
    memory_bytes: int
    """Measured memory of the ready members."""
    member_estimate_bytes: int
    """What one more member is expected to cost (the largest measured so far, or a default)."""


@dataclass(frozen=True)
class Plan:
    fills: tuple[str, ...]
    """States to start one fill each for (a state may appear more than once)."""
    expired: tuple[str, ...]
    """States no longer wanted: their members are drained."""


def is_wanted(demand: Demand, settings: PoolSettings, now: float) -> bool:
    return demand.pinned or now - demand.last_hit < settings.idle_expiry_seconds


def plan(
    settings: PoolSettings,
    demands: Mapping[str, Demand],
    occupancy: Occupancy,
    now: float,
) -> Plan:
    """The fills to start now and the states to drain, given what the pool holds."""
    held = set(occupancy.ready) | set(occupancy.filling)
    if not settings.active:
        return Plan((), tuple(sorted(s for s in held if _count(occupancy, s) > 0)))
    wanted = {s: d for s, d in demands.items() if is_wanted(d, settings, now)}
    expired = tuple(sorted(s for s in held if s not in wanted and _count(occupancy, s) > 0))
    counts = {s: _count(occupancy, s) for s in wanted}
    total = sum(_count(occupancy, s) for s in held)
    filling = sum(occupancy.filling.values())
    memory = occupancy.memory_bytes + filling * occupancy.member_estimate_bytes
    fills: list[str] = []
    while filling < settings.fill_concurrency and total < settings.max_members:
        if settings.max_memory_bytes > 0 and (
            memory + occupancy.member_estimate_bytes > settings.max_memory_bytes
        ):
            break
        short = [s for s, n in counts.items() if n < settings.members_per_state]
        if not short:
            break
        state = min(short, key=lambda s: (counts[s], not wanted[s].pinned, -wanted[s].last_hit, s))
        fills.append(state)
        counts[state] += 1
        filling += 1
        total += 1
        memory += occupancy.member_estimate_bytes
    return Plan(tuple(fills), expired)


def _count(occupancy: Occupancy, state: str) -> int:
    return occupancy.ready.get(state, 0) + occupancy.filling.get(state, 0)
