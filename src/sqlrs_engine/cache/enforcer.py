"""Enforcing the cache capacity (SPEC §10.2) and reporting it (§10.3).

`check(trigger)` measures the store, and under pressure evicts unused states — through the
`DeletionService`, the one place that removes state files and rows, so eviction never races
a delete — until the low watermark is reached, re-measuring after each removal. Concurrent
checks, of this engine or of another process on the same store, are serialized by
`<root>/.evict.lock`.

Usage is what the states really occupy on the backend in use: their `size_bytes`, which each
backend measures as the state's own disk use (a copy's files, an overlay layer's own files,
a btrfs snapshot's unshared extents — docs/snapshots.md), not apparent sizes that would count
shared data once per state.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlrs_engine.actors.registry import RegistryProxy
from sqlrs_engine.actors.snapshot import SnapshotClient
from sqlrs_engine.cache.policy import (
    CacheUnavailable,
    CapacitySettings,
    Limits,
    Measurement,
    StateInfo,
    candidates,
    full_unreclaimable,
    limit_too_small,
    limits,
    pressure_reasons,
    relieved,
    unavailable,
)
from sqlrs_engine.clock import now_rfc3339
from sqlrs_engine.deletion.service import DeletionService
from sqlrs_engine.durations import format_duration_ns
from sqlrs_engine.errors import ApiError, JobFailure
from sqlrs_engine.faults import fault_point
from sqlrs_engine.locks import FileLock, LockTimeout

log = logging.getLogger(__name__)

ASK_TIMEOUT = 60.0
EVICT_LOCK = ".evict.lock"
EVICT_LOCK_TIMEOUT = 300.0
"""SPEC §9.4 calls the eviction lock stale after 5 minutes: nobody waits longer."""


@dataclass(frozen=True)
class EvictionSummary:
    """`last_eviction` of the cache status (in memory only, SPEC §10.3)."""

    completed_at: str
    trigger: str
    evicted_count: int
    freed_bytes: int
    blocked_count: int
    reclaimable_bytes: int
    usage_bytes_before: int
    usage_bytes_after: int
    free_bytes_before: int
    free_bytes_after: int


class CacheEnforcer:
    """Capacity checks, eviction and status of one state store."""

    def __init__(
        self,
        root: Path,
        registry: RegistryProxy,
        deletion: DeletionService,
        snapshots: SnapshotClient,
    ) -> None:
        self._root = root
        self._registry = registry
        self._deletion = deletion
        self._snapshots = snapshots
        self._last: EvictionSummary | None = None
        self._last_lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------------

    def settings(self) -> CapacitySettings:
        capacity = self._registry.config_get("cache.capacity", True).get(timeout=ASK_TIMEOUT)
        return CapacitySettings.from_config(capacity if isinstance(capacity, dict) else None)

    def _inventory(self) -> tuple[list[StateInfo], frozenset[str]]:
        entries, in_use = self._registry.cache_inventory().get(timeout=ASK_TIMEOUT)
        parents = {e.get("parent_state_id") for e in entries if e.get("parent_state_id")}
        states = []
        for entry in entries:
            info = StateInfo.from_entry(entry, entry["state_id"] in parents)
            if info.size_bytes <= 0:  # not measured yet (SPEC §9.6): measure it live
                size = self._snapshots.state_size(info.image_id, info.state_id)
                info = info._replace(size_bytes=size)
            states.append(info)
        return states, frozenset(in_use)

    def _filesystem(self) -> tuple[int, int]:
        """(total, free) bytes of the filesystem holding the store (its nearest existing
        ancestor, before the store exists)."""
        path = self._root
        while not path.exists() and path != path.parent:
            path = path.parent
        found = os.statvfs(path)
        return found.f_blocks * found.f_frsize, found.f_bavail * found.f_frsize

    def _measure(self, states: list[StateInfo]) -> Measurement:
        total, free = self._filesystem()
        return Measurement(total, free, sum(s.size_bytes for s in states))

    def _quick_measure(self) -> tuple[Measurement, int | None]:
        """The measurement and the smallest state size, from one aggregate over the rows
        when every state has its size (the usual case: no per-state work, however many
        states); else from the inventory, measuring the others live."""
        usage = self._registry.cache_usage().get(timeout=ASK_TIMEOUT)
        if usage["unmeasured"]:
            states, _in_use = self._inventory()
            smallest = min((s.size_bytes for s in states if s.size_bytes > 0), default=None)
            return self._measure(states), smallest
        total, free = self._filesystem()
        return Measurement(total, free, int(usage["usage_bytes"])), usage["smallest_bytes"]

    def status(self) -> dict[str, Any]:
        """`GET /v1/cache/status` (SPEC §10.3)."""
        settings = self.settings()
        states, in_use = self._inventory()
        measured = self._measure(states)
        bounds = limits(settings, measured.total_bytes)
        found = candidates(
            states,
            now=time.time(),
            min_state_age_seconds=settings.min_state_age_seconds,
            protected=in_use,
            ordered=False,
        )
        body: dict[str, Any] = {
            "usage_bytes": measured.usage_bytes,
            "effective_max_bytes": bounds.effective_max_bytes,
            "reserve_bytes": bounds.reserve_bytes,
            "high_watermark": settings.high,
            "low_watermark": settings.low,
            "min_state_age": format_duration_ns(settings.min_state_age_ns),
            "store_total_bytes": measured.total_bytes,
            "store_free_bytes": measured.free_bytes,
            "state_count": len(states),
            "reclaimable_bytes": found.reclaimable_bytes,
            "blocked_count": len(found.blocked),
            "pressure_reasons": pressure_reasons(measured, bounds),
        }
        if settings.max_bytes > 0:
            body["configured_max_bytes"] = settings.max_bytes
        with self._last_lock:
            if self._last is not None:
                body["last_eviction"] = asdict(self._last)
        return body

    # -- enforcing -----------------------------------------------------------------------------

    def check(
        self, trigger: str, protected: frozenset[str] = frozenset()
    ) -> EvictionSummary | None:
        """Enforce the capacity now; raises a `JobFailure` with a §10 code when the store
        cannot be brought under its limits. Returns the eviction summary, if one ran."""
        try:
            settings = self.settings()
            measured, smallest = self._quick_measure()
        except (CacheUnavailable, OSError) as error:
            raise unavailable(str(error)) from None
        bounds = limits(settings, measured.total_bytes)
        if bounds.effective_max_bytes <= 0:
            raise limit_too_small(bounds, pressure_reasons(measured, bounds), smallest)
        if not pressure_reasons(measured, bounds):
            return None
        try:
            with FileLock(self._root / EVICT_LOCK, timeout=EVICT_LOCK_TIMEOUT):
                return self._evict(trigger, settings, protected)
        except LockTimeout:
            raise unavailable(
                f"{self._root / EVICT_LOCK} is held by another eviction for more than "
                f"{EVICT_LOCK_TIMEOUT:.0f} s"
            ) from None
        except OSError as error:
            raise unavailable(str(error)) from None

    def _evict(
        self, trigger: str, settings: CapacitySettings, protected: frozenset[str]
    ) -> EvictionSummary | None:
        started = time.monotonic()
        states, in_use = self._inventory()  # again: under the lock, things may have changed
        before = measured = self._measure(states)
        bounds = limits(settings, measured.total_bytes)
        if not pressure_reasons(measured, bounds):
            # A concurrent check's pass, which held the lock meanwhile, made the room: this
            # one has nothing to do, and `last_eviction` keeps describing that real pass.
            return None
        found = candidates(
            states,
            now=time.time(),
            min_state_age_seconds=settings.min_state_age_seconds,
            protected=protected | in_use,
        )
        evicted, freed, blocked = 0, 0, len(found.blocked)
        fault_point("evict:chosen")  # crash tests: the lock is held, nothing removed yet
        for state in found.evictable:
            if relieved(measured, bounds):
                break
            if not self._evict_one(state):
                blocked += 1
                continue
            evicted += 1
            freed += state.size_bytes
            states = [s for s in states if s.state_id != state.state_id]
            measured = self._measure(states)
            fault_point("evict:evicted")  # crash tests: one victim wholly gone, the pass not
        summary = EvictionSummary(
            completed_at=now_rfc3339(),
            trigger=trigger,
            evicted_count=evicted,
            freed_bytes=freed,
            blocked_count=blocked,
            reclaimable_bytes=found.reclaimable_bytes - freed,
            usage_bytes_before=before.usage_bytes,
            usage_bytes_after=measured.usage_bytes,
            free_bytes_before=before.free_bytes,
            free_bytes_after=measured.free_bytes,
        )
        with self._last_lock:
            self._last = summary
        log.info(
            "cache eviction (%s): %d state(s) evicted, %d bytes freed, %d blocked; usage %d -> "
            "%d bytes, free %d -> %d bytes; took %.3f s",
            trigger,
            evicted,
            freed,
            blocked,
            before.usage_bytes,
            measured.usage_bytes,
            before.free_bytes,
            measured.free_bytes,
            time.monotonic() - started,
        )
        reasons = pressure_reasons(measured, bounds)
        if reasons:
            self._refuse(measured, bounds, reasons, states, summary)
        return summary

    def _evict_one(self, state: StateInfo) -> bool:
        """Remove one state through the deletion service; False if it could not go (it got
        an instance or a child meanwhile, or its removal failed)."""
        try:
            code, body = self._deletion.delete_state(
                state.state_id, recurse=False, force=False, dry_run=False, faults="evict"
            )
        except ApiError as error:
            if error.status == 404:
                return True  # deleted by someone else: its space is free all the same
            log.warning("eviction of state %s failed: %s", state.state_id, error)
            return False
        return code == 200 and body.get("outcome") == "deleted"

    @staticmethod
    def _refuse(
        measured: Measurement,
        bounds: Limits,
        reasons: list[str],
        states: list[StateInfo],
        summary: EvictionSummary,
    ) -> None:
        smallest = min((s.size_bytes for s in states if s.size_bytes > 0), default=None)
        if smallest is not None and bounds.effective_max_bytes < smallest:
            raise limit_too_small(bounds, reasons, smallest)
        if summary.reclaimable_bytes <= 0 and summary.blocked_count == 0:
            raise limit_too_small(bounds, reasons, smallest)
        raise full_unreclaimable(
            measured,
            bounds,
            reasons,
            summary.evicted_count,
            summary.blocked_count,
            summary.reclaimable_bytes,
        )


def enforce_quietly(enforcer: CacheEnforcer | None, trigger: str) -> None:
    """A check whose failure is only logged (the start-up trigger, SPEC §4.8)."""
    if enforcer is None:
        return
    try:
        enforcer.check(trigger)
    except JobFailure as failure:
        log.warning("cache check (%s): %s", trigger, failure)
