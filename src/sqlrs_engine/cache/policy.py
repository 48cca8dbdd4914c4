"""Cache capacity policy (SPEC §10), as pure functions over plain values.

What the store may hold (`effective_max`), when it is under pressure, which states may be
evicted and in which order, and the errors (with their JSON details) when eviction cannot
relieve the pressure. The enforcer (`cache/enforcer.py`) measures, locks and removes; every
decision it takes is made here, so it is table-tested without a filesystem.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple

import ujson

from sqlrs_engine.durations import DurationError, parse_duration_ns
from sqlrs_engine.errors import JobFailure, reports_no_space

GIB = 1024**3
DEFAULT_HIGH = 0.9
DEFAULT_LOW = 0.8
DEFAULT_MIN_STATE_AGE = "10m"

USAGE_ABOVE_HIGH = "usage_above_high_watermark"
FREE_BELOW_RESERVE = "physical_free_below_reserve"

TRIGGERS = ("startup_recovery", "prepare_step", "snapshot", "metadata_commit")


class CacheUnavailable(Exception):
    """Capacity cannot be enforced (bad settings, the store cannot be measured or locked)."""


@dataclass(frozen=True)
class CapacitySettings:
    """`cache.capacity.*` of the effective config, validated."""

    max_bytes: int = 0
    reserve_bytes: int | None = None
    """None: the default, 10% of the store's filesystem, at most 10 GiB."""
    high: float = DEFAULT_HIGH
    low: float = DEFAULT_LOW
    min_state_age_ns: int = 600 * 10**9

    @property
    def min_state_age_seconds(self) -> float:
        return self.min_state_age_ns / 1e9

    @classmethod
    def from_config(cls, capacity: Mapping[str, Any] | None) -> CapacitySettings:
        """Read and check the settings; `CacheUnavailable` says which one is unusable."""
        values = dict(capacity or {})

        def integer(name: str, default: int | None) -> int | None:
            value = values.get(name)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CacheUnavailable(f"cache.capacity.{name} must be an integer >= 0")
            return value

        def ratio(name: str, default: float) -> float:
            value = values.get(name)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CacheUnavailable(f"cache.capacity.{name} must be a number")
            return float(value)

        high = ratio("highWatermark", DEFAULT_HIGH)
        low = ratio("lowWatermark", DEFAULT_LOW)
        if not 0 < high <= 1:
            raise CacheUnavailable("cache.capacity.highWatermark must be in (0, 1]")
        if not 0 < low < high:
            raise CacheUnavailable("cache.capacity.lowWatermark must be in (0, highWatermark)")
        age = values.get("minStateAge")
        age_text = DEFAULT_MIN_STATE_AGE if age is None else age
        try:
            nanos = parse_duration_ns(age_text) if isinstance(age_text, str) else -1
        except DurationError:
            nanos = -1
        if nanos < 0:
            raise CacheUnavailable("cache.capacity.minStateAge must be a Go duration >= 0")
        return cls(
            max_bytes=integer("maxBytes", 0) or 0,
            reserve_bytes=integer("reserveBytes", None),
            high=high,
            low=low,
            min_state_age_ns=nanos,
        )


@dataclass(frozen=True)
class Measurement:
    """The store's filesystem and what its states occupy, at one moment."""

    total_bytes: int
    free_bytes: int
    usage_bytes: int


@dataclass(frozen=True)
class Limits:
    reserve_bytes: int
    effective_max_bytes: int
    high_bytes: int
    low_bytes: int


def limits(settings: CapacitySettings, total_bytes: int) -> Limits:
    """SPEC §10.1: reserve, effective maximum and the two watermarks in bytes."""
    reserve = settings.reserve_bytes
    if reserve is None:
        # The reference keeps max(10 GiB, 10%) free, which makes every prepare fail on a
        # filesystem under ~11 GiB (a CI disk, a loop image). We keep 10%, at most 10 GiB.
        reserve = min(10 * GIB, total_bytes // 10)
    effective = max(0, total_bytes - reserve)
    if settings.max_bytes > 0:
        effective = min(settings.max_bytes, effective)
    return Limits(
        reserve_bytes=reserve,
        effective_max_bytes=effective,
        high_bytes=math.floor(effective * settings.high),
        low_bytes=math.floor(effective * settings.low),
    )


def pressure_reasons(measured: Measurement, bounds: Limits) -> list[str]:
    """Why the store is under pressure (empty: it is not)."""
    reasons = []
    if measured.usage_bytes > bounds.high_bytes:
        reasons.append(USAGE_ABOVE_HIGH)
    if measured.free_bytes < bounds.reserve_bytes:
        reasons.append(FREE_BELOW_RESERVE)
    return reasons


def relieved(measured: Measurement, bounds: Limits) -> bool:
    """Eviction may stop: usage at or below the low watermark and the reserve free."""
    return measured.usage_bytes <= bounds.low_bytes and measured.free_bytes >= bounds.reserve_bytes


class StateInfo(NamedTuple):
    """What the policy needs of one state row.

    A named tuple, not a frozen dataclass: a cache status builds one per state, and with
    10 000 states a frozen dataclass's `__init__` alone took tens of milliseconds.
    """

    state_id: str
    image_id: str
    size_bytes: int
    created_at: str
    last_used_at: str | None = None
    refcount: int = 0
    has_children: bool = False
    min_retention_until: str | None = None

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], has_children: bool) -> StateInfo:
        return cls(
            str(entry["state_id"]),
            str(entry["image_id"]),
            int(entry.get("size_bytes") or 0),
            str(entry["created_at"]),
            entry.get("last_used_at"),
            int(entry.get("refcount") or 0),
            has_children,
            entry.get("min_retention_until"),
        )


@dataclass
class Candidates:
    evictable: list[StateInfo] = field(default_factory=list)
    """In eviction order."""
    blocked: list[StateInfo] = field(default_factory=list)

    @property
    def reclaimable_bytes(self) -> int:
        return sum(state.size_bytes for state in self.evictable)


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        # What `clock.parse_rfc3339` accepts ("Z" included, Python >= 3.11), without its
        # time zone conversion: twice as fast, and it runs for every state of a status.
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def candidates(
    states: Iterable[StateInfo],
    *,
    now: float,
    min_state_age_seconds: float,
    protected: frozenset[str] = frozenset(),
    ordered: bool = True,
) -> Candidates:
    """SPEC §10.2: which states may go, oldest use first, then biggest, then by id.

    Blocked: protected (a running job is about to use it, or just built it), used by an
    instance, parent of another state, under `min_retention_until`, or younger than
    `minStateAge`. `ordered=False` leaves the evictable states unsorted: the cache status
    needs only their count and bytes.
    """
    found = Candidates()
    keyed: list[tuple[tuple[float, int, str], StateInfo]] = []
    for state in states:
        created = _epoch(state.created_at)
        retained = _epoch(state.min_retention_until) if state.min_retention_until else None
        if (
            state.state_id in protected
            or state.refcount > 0
            or state.has_children
            or (retained is not None and retained > now)
            or now - (created or now) < min_state_age_seconds
        ):
            found.blocked.append(state)
        elif not ordered:
            found.evictable.append(state)
        else:
            used = _epoch(state.last_used_at) or created or 0.0
            keyed.append(((used, -state.size_bytes, state.state_id), state))
    if ordered:
        keyed.sort(key=itemgetter(0))
        found.evictable = [state for _, state in keyed]
    return found


def limit_too_small(
    bounds: Limits, reasons: list[str], smallest_state_bytes: int | None
) -> JobFailure:
    required = smallest_state_bytes or 0
    details = {
        "effective_max_bytes": bounds.effective_max_bytes,
        "observed_required_bytes": required,
        "recommended_min_bytes": max(required * 2, required + bounds.reserve_bytes),
        "reasons": reasons,
    }
    return JobFailure(
        "cache_limit_too_small",
        "cache limit is too small for the states this prepare needs",
        ujson.dumps(details),
    )


def full_unreclaimable(
    measured: Measurement,
    bounds: Limits,
    reasons: list[str],
    evicted_count: int,
    blocked_count: int,
    reclaimable_bytes: int,
) -> JobFailure:
    details = {
        "reasons": reasons,
        "usage_bytes": measured.usage_bytes,
        "free_bytes": measured.free_bytes,
        "effective_max_bytes": bounds.effective_max_bytes,
        "high_watermark_bytes": bounds.high_bytes,
        "low_watermark_bytes": bounds.low_bytes,
        "reserve_bytes": bounds.reserve_bytes,
        "evicted_count": evicted_count,
        "blocked_count": blocked_count,
        "reclaimable_bytes": reclaimable_bytes,
    }
    return JobFailure(
        "cache_full_unreclaimable",
        "the state cache is full and nothing more can be evicted",
        ujson.dumps(details),
    )


def unavailable(reason: str) -> JobFailure:
    return JobFailure("cache_enforcement_unavailable", "cache capacity cannot be enforced", reason)


def no_space(phase: str, error: str) -> JobFailure:
    """ENOSPC during a step, snapshot or metadata commit (SPEC §10.2)."""
    return JobFailure(
        "cache_limit_too_small",
        "no space left on the state store",
        ujson.dumps({"phase": phase, "error": error}),
    )


@contextlib.contextmanager
def no_space_as_cache_error(phase: str) -> Iterator[None]:
    """A job failure caused by ENOSPC during `phase` becomes `cache_limit_too_small` (§10.2):
    a snapshot backend's `no_space` flag, or a tool's own disk-full message."""
    try:
        yield
    except JobFailure as failure:
        if failure.code == "cancelled":
            raise
        text = f"{failure.message}: {failure.details or ''}"
        if getattr(failure, "no_space", False) or reports_no_space(text):
            details = ujson.dumps({"phase": phase, "error": failure.details or failure.message})
            raise JobFailure("cache_limit_too_small", failure.message, details) from None
        raise
