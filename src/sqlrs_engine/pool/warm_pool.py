"""The warm pool: running servers on clones of recently hit states, ready to hand out.

A cache hit normally clones the state and starts a server (the server start dominates its
cost). The pool does that work ahead of time: it keeps *members* — each its own clone, its
own server and its own random password — of the states users hit, and a hit that finds one
takes it instead (`take`). A member is handed out once and never comes back: the instance it
becomes is as fresh and isolated as an unpooled one. Its password was generated when the
server started and was never written anywhere (not in state.db, not in a log) before the
hand-out puts it in the instance row and the job's result.

Members are not instances: they have no instance row, appear only in `GET /v1/pool`, and live
in `<root>/jobs/pool-<id>/runtime` (job ids are 32 hex digits, so the prefix cannot collide).
Their lifecycle, and the invariants that keep it safe:

- **Refill** runs on the pool's own threads, one scheduler and at most
  `pool.fillConcurrency` fills at a time, only while no prepare job is queued or running and
  not within `REFILL_QUIET` of the last hit: a fill never competes with a user's job for CPU,
  disk or the snapshot workers, nor with the first queries on the instance just handed out.
- **Drain** (`drained`) closes states to hand-outs, waits for hand-outs already under way to
  finish (their instance rows then exist, and the deletion sees and judges them), stops the
  members and waits for fills of those states to end. Deletion and eviction of a state run
  inside it, so a member never keeps a state (or its overlay lower dir) alive.
- **Expiry**: a state not hit for `pool.idleExpiry` (and not pinned) loses its members.
- **Shutdown** stops every member with the engine; **start-up** removes members a crash left
  (`cleanup.remove_orphan_members`). The engine's idle timeout ignores members: a pool alone
  never keeps an engine running.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlrs_engine.actors.registry import RegistryProxy
from sqlrs_engine.actors.snapshot import SnapshotClient
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.clock import format_rfc3339, utcnow
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.ids import random_hex
from sqlrs_engine.pool.memory import FALLBACK_MEMBER_BYTES, server_memory_bytes
from sqlrs_engine.pool.planner import Demand, Occupancy, plan
from sqlrs_engine.pool.settings import MAX_FILL_CONCURRENCY, PoolSettings
from sqlrs_engine.runtime.base import Runtime, ServerHandle

log = logging.getLogger(__name__)

MEMBER_PREFIX = "pool-"
"""Job-dir name prefix of members (`jobs/pool-<16 hex>/`)."""
MEMBER_FILE = ".pool-member"
"""`jobs/pool-<id>/.pool-member`: the member's state and image, for start-up cleanup."""
ASK_TIMEOUT = 30.0
IDLE_WAKE = 1.0
"""Seconds between scheduler passes when nothing happens (idle expiry, config changes)."""
SETTINGS_TTL = 0.5
"""Seconds a read of the `pool` config is reused: a burst of hits wakes the scheduler once per
hit, and each pass must not cost the Registry (which serves the jobs) a message."""
GATED_WAKE = 0.1
"""Seconds between passes while a fill waits for user jobs to finish."""
REFILL_QUIET = 0.2
"""Seconds after the last cache hit before a refill starts: the client that just got a DSN
connects to it right away, and its first queries should not share the CPU with a refill."""
FAILURE_BACKOFF = 30.0
"""Seconds before a state whose fill failed is filled again (a pinned state, say)."""
DRAIN_TIMEOUT = 120.0
"""Longest a drain waits for hand-outs and fills of its states (a fill's start is bounded)."""


@dataclass(frozen=True)
class Member:
    """One ready server of the pool (never shown to a user before its hand-out)."""

    member_id: str
    state_id: str
    image_id: str
    handle: ServerHandle
    runtime_dir: Path
    created_at: str
    memory_bytes: int
    fill_ms: float
    ready_since: float
    """`time.monotonic()` when it became ready."""

    def public(self) -> dict[str, Any]:
        """What `GET /v1/pool` shows of a member: no DSN, no password."""
        return {
            "member_id": self.member_id,
            "state_id": self.state_id,
            "image_id": self.image_id,
            "created_at": self.created_at,
            "memory_bytes": self.memory_bytes,
            "fill_ms": round(self.fill_ms, 1),
        }


@dataclass
class _Wanted:
    image_id: str
    last_hit: float
    last_hit_at: str
    hits: int = 0


class WarmPool:
    """Members by state, their refill and drain; safe to call from any thread."""

    def __init__(
        self,
        registry: RegistryProxy,
        runtime: Runtime,
        snapshots: SnapshotClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._runtime = runtime
        self._snapshots = snapshots
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: dict[str, list[Member]] = {}
        self._filling: dict[str, int] = {}
        self._handing: dict[str, int] = {}
        self._removing: dict[str, int] = {}
        """Members taken out of the pool whose server and clone are being removed."""
        self._closed: dict[str, int] = {}
        self._wanted: dict[str, _Wanted] = {}
        self._settings = PoolSettings()
        self._settings_read = -SETTINGS_TTL
        self._estimate = FALLBACK_MEMBER_BYTES
        self._counters = {
            "hand_outs": 0,
            "misses": 0,
            "fills": 0,
            "fill_failures": 0,
            "drained": 0,
            "expired": 0,
        }
        self._retry_after: dict[str, float] = {}
        self._last_hit = 0.0
        """`time.monotonic()` of the last cache hit (refills wait REFILL_QUIET after it)."""
        self._unknown_pinned: set[str] = set()
        self._gated = False
        self._stopping = False
        self._cancel = CancelToken()
        self._scheduler: threading.Thread | None = None
        self._fills = concurrent.futures.ThreadPoolExecutor(
            max_workers=MAX_FILL_CONCURRENCY, thread_name_prefix="pool-fill"
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._settings = self._read_settings()
        self._scheduler = threading.Thread(target=self._schedule, name="pool", daemon=True)
        self._scheduler.start()
        log.info(
            "pool: %s (members per state %d, max members %d, max memory %d bytes, idle "
            "expiry %.0f s)",
            "enabled" if self._settings.active else "disabled",
            self._settings.members_per_state,
            self._settings.max_members,
            self._settings.max_memory_bytes,
            self._settings.idle_expiry_seconds,
        )

    def stop(self) -> None:
        """Stop refilling and stop every member (the engine is stopping)."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        self._cancel.cancel()  # a fill in its clone or server start gives up at once
        if self._scheduler is not None:
            self._scheduler.join(timeout=DRAIN_TIMEOUT)
        self._fills.shutdown(wait=True, cancel_futures=True)
        with self._cond:
            victims = [m for members in self._ready.values() for m in members]
            self._ready.clear()
            self._detach(victims)
        self._destroy_all(victims, "engine stopping")

    # -- the cache-hit hook --------------------------------------------------------------------

    def note_hit(self, state_id: str, image_id: str) -> None:
        """A cache hit on `state_id`: the state is wanted (refilled) for the idle expiry."""
        now = self._clock()
        with self._cond:
            wanted = self._wanted.get(state_id)
            if wanted is None:
                wanted = self._wanted[state_id] = _Wanted(image_id, now, "")
            wanted.last_hit, wanted.image_id = now, image_id
            wanted.last_hit_at = format_rfc3339(utcnow())
            wanted.hits += 1
            self._last_hit = time.monotonic()
            self._cond.notify_all()

    @contextlib.contextmanager
    def take(self, state_id: str, image_id: str, job_id: str) -> Iterator[Member | None]:
        """A ready member of `state_id` for job `job_id`, or None (then clone as usual).

        The caller makes the member an instance inside the block. Until the block ends the
        hand-out counts as under way, so a drain of the state waits for it (and then sees
        the instance row); if the block raises, the member is stopped and removed.
        """
        member = self._pop_running(state_id, image_id)
        if member is None:
            yield None
            return
        with self._handing_out(member, job_id):
            yield member

    @property
    def short_path(self) -> bool:
        """Whether hits that find a member may skip the job (config `pool.shortPath`)."""
        return self._settings.short_path

    def has_ready(self) -> bool:
        """Whether any member is ready: without one, no hit can take the short path."""
        with self._cond:
            return bool(self._ready)

    @contextlib.contextmanager
    def claim(self, state_id: str, image_id: str, job_id: str) -> Iterator[Member | None]:
        """`take` for the short path of a cache hit (jobs/pooled_hit.py).

        A miss counts nothing and notes no hit: the hit then goes on to the ordinary job,
        whose `note_hit` and `take` count it once. A member found notes the hit here. Its
        `.pool-member` file is left to the caller (`unmark_member`, after its answer).
        """
        with self._cond:
            # Before the pop wakes the scheduler: the refill waits REFILL_QUIET after this
            # hit, as after a job's `note_hit` (the client connects to its DSN right away).
            self._last_hit = time.monotonic()
        member = self._pop_running(state_id, image_id, count_miss=False)
        if member is None:
            yield None
            return
        self.note_hit(state_id, image_id)
        with self._handing_out(member, job_id, unmark=False):
            yield member

    @contextlib.contextmanager
    def _handing_out(self, member: Member, job_id: str, unmark: bool = True) -> Iterator[None]:
        """The hand-out of a popped member: removed if the block raises, counted as under
        way (drains wait) until the block ends. `unmark`: remove its member file now (else
        the caller does it later with `unmark`; an instance row already names the clone, so
        start-up cleanup keeps it either way)."""
        state_id = member.state_id
        try:
            yield
        except BaseException:
            with self._cond:
                self._detach([member])
            self._destroy(member, "hand-out failed")
            raise
        else:
            if unmark:
                unmark_member(member)
            log.info(
                "pool: handed out member %s of state %s to job %s (ready for %.1f s)",
                member.member_id,
                state_id,
                job_id,
                time.monotonic() - member.ready_since,
            )
        finally:
            with self._cond:
                self._handing[state_id] -= 1
                if not self._handing[state_id]:
                    del self._handing[state_id]
                self._cond.notify_all()

    def _pop_running(self, state_id: str, image_id: str, count_miss: bool = True) -> Member | None:
        while True:
            with self._cond:
                members = self._ready.get(state_id)
                if not members or state_id in self._closed or self._stopping:
                    if count_miss:
                        self._counters["misses"] += 1
                    return None
                member = members.pop(0)
                if not members:
                    del self._ready[state_id]
                if member.image_id != image_id:
                    stale: Member | None = member
                    self._detach([member])
                else:
                    stale = None
                    self._handing[state_id] = self._handing.get(state_id, 0) + 1
                    self._counters["hand_outs"] += 1
                self._cond.notify_all()  # the scheduler refills
            if stale is not None:
                self._destroy(stale, "image changed")
                continue
            if self._runtime.is_running(member.handle):
                return member
            # Killed from outside while it waited: never hand out a dead server.
            with self._cond:
                self._handing[state_id] -= 1
                if not self._handing[state_id]:
                    del self._handing[state_id]
                self._counters["hand_outs"] -= 1
                self._detach([member])
            self._destroy(member, "its server was no longer running")

    # -- drain (deletion, eviction, invalidation) ----------------------------------------------

    @contextlib.contextmanager
    def drained(self, state_ids: Iterable[str], reason: str) -> Iterator[None]:
        """Inside the block no member of these states exists and none is handed out or made.

        Hand-outs already under way finish first (their instances then exist as rows, which
        the caller reads after entering the block). The states are forgotten as wanted: a
        later hit makes them wanted again.
        """
        states = sorted(set(state_ids))
        with self._cond:
            for state in states:
                self._closed[state] = self._closed.get(state, 0) + 1
                self._wanted.pop(state, None)
        try:
            with self._cond:
                if not self._cond.wait_for(
                    lambda: not any(self._handing.get(s) for s in states), DRAIN_TIMEOUT
                ):
                    raise JobFailure("internal_error", "pool drain timed out", reason)
                victims = [m for s in states for m in self._ready.pop(s, [])]
                self._detach(victims)
            self._destroy_all(victims, reason)
            with self._cond:
                if not self._cond.wait_for(
                    lambda: not any(self._filling.get(s) or self._removing.get(s) for s in states),
                    DRAIN_TIMEOUT,
                ):
                    raise JobFailure("internal_error", "pool drain timed out", reason)
            yield
        finally:
            with self._cond:
                for state in states:
                    self._closed[state] -= 1
                    if not self._closed[state]:
                        del self._closed[state]
                self._cond.notify_all()

    # -- visibility ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """`GET /v1/pool`: settings, per-state occupancy, members and counters."""
        now = self._clock()
        with self._cond:
            settings = self._settings
            names = set(self._ready) | set(self._filling) | set(self._wanted)
            names |= set(settings.pinned_states) if settings.active else set()
            states = []
            for state in sorted(names):
                wanted = self._wanted.get(state)
                pinned = state in settings.pinned_states
                entry: dict[str, Any] = {
                    "state_id": state,
                    "ready": len(self._ready.get(state, [])),
                    "filling": self._filling.get(state, 0),
                    "target": settings.members_per_state if settings.active else 0,
                    "pinned": pinned,
                }
                if wanted is not None:
                    entry["image_id"] = wanted.image_id
                    entry["hits"] = wanted.hits
                    entry["last_hit_at"] = wanted.last_hit_at
                    if not pinned:
                        left = settings.idle_expiry_seconds - (now - wanted.last_hit)
                        entry["expires_in_seconds"] = max(0.0, round(left, 1))
                states.append(entry)
            members = [m.public() for ms in self._ready.values() for m in ms]
            return {
                "enabled": settings.enabled,
                "settings": settings.as_json(),
                "member_count": len(members),
                "filling_count": sum(self._filling.values()),
                "removing_count": sum(self._removing.values()),
                "memory_bytes": sum(m["memory_bytes"] for m in members),
                "refill_waiting_for_jobs": self._gated,
                "states": states,
                "members": members,
                "counters": dict(self._counters),
            }

    # -- scheduler -----------------------------------------------------------------------------

    def _read_settings(self) -> PoolSettings:
        try:
            tree = self._registry.config_get("pool", True).get(timeout=ASK_TIMEOUT)
        except Exception as error:
            log.warning("pool: cannot read its settings (%s); keeping the previous ones", error)
            return self._settings
        return PoolSettings.from_config(tree if isinstance(tree, dict) else None)

    def _schedule(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
            try:
                wake = self._pass()
            except Exception:
                log.exception("pool: scheduler pass failed")
                wake = IDLE_WAKE
            with self._cond:
                if self._stopping:
                    return
                self._cond.wait(wake)

    def _pass(self) -> float:
        """One scheduling pass; returns how long to sleep unless woken earlier."""
        if time.monotonic() - self._settings_read >= SETTINGS_TTL:
            self._settings = self._read_settings()
            self._settings_read = time.monotonic()
        settings = self._settings
        now = self._clock()
        with self._cond:
            demands = {s: Demand(w.last_hit) for s, w in self._wanted.items()}
            for state in settings.pinned_states:
                if state not in self._closed:
                    demands[state] = Demand(demands.get(state, Demand(0.0)).last_hit, True)
            ready = {s: len(ms) for s, ms in self._ready.items()}
            memory = sum(m.memory_bytes for ms in self._ready.values() for m in ms)
            decided = plan(
                settings,
                demands,
                Occupancy(ready, dict(self._filling), memory, self._estimate),
                now,
            )
            victims: list[Member] = []
            for state in decided.expired:
                victims += self._ready.pop(state, [])
            self._detach(victims)
            for state, wanted in list(self._wanted.items()):
                if now - wanted.last_hit >= settings.idle_expiry_seconds:
                    del self._wanted[state]
            if victims:
                self._counters["expired"] += len(victims)
        if victims:
            why = "pool disabled" if not settings.active else "idle expiry"
            self._destroy_all(victims, why)
        with self._cond:
            fills = [
                s
                for s in decided.fills
                if s not in self._closed and self._retry_after.get(s, 0.0) <= now
            ]
        if not fills:
            self._gated = False
            return IDLE_WAKE
        quiet_for = time.monotonic() - self._last_hit
        if quiet_for < REFILL_QUIET or self._user_jobs_active():
            self._gated = True
            return max(GATED_WAKE, REFILL_QUIET - quiet_for)
        self._gated = False
        for state in fills:
            image = self._image_of(state)
            if image is None:
                continue
            with self._cond:
                if self._stopping or state in self._closed:
                    continue
                self._filling[state] = self._filling.get(state, 0) + 1
            self._fills.submit(self._fill, state, image)
        return IDLE_WAKE

    def _user_jobs_active(self) -> bool:
        try:
            count: int = self._registry.active_job_count().get(timeout=ASK_TIMEOUT)
        except Exception:
            return True
        return count > 0

    def _image_of(self, state: str) -> str | None:
        with self._cond:
            wanted = self._wanted.get(state)
        if wanted is not None:
            return wanted.image_id
        try:
            row = self._registry.state_row(state).get(timeout=ASK_TIMEOUT)
        except Exception:
            row = None
        if row is None:
            if state not in self._unknown_pinned:
                self._unknown_pinned.add(state)
                log.warning("pool: pinned state %s has no row; nothing to keep warm", state)
            return None
        self._unknown_pinned.discard(state)
        image: str = row["image_id"]
        return image

    # -- one fill ------------------------------------------------------------------------------

    def _fill(self, state_id: str, image_id: str) -> None:
        member_id = MEMBER_PREFIX + random_hex(8)
        started = time.monotonic()
        member: Member | None = None
        try:
            member = self._make_member(member_id, state_id, image_id, started)
        except Exception as error:
            why = error.message if isinstance(error, JobFailure) else str(error)
            if not self._cancel.cancelled:
                log.warning("pool: fill of state %s failed: %s", state_id, why)
            self._remove_dir(member_id)
            with self._cond:
                self._counters["fill_failures"] += 1
                self._retry_after[state_id] = self._clock() + FAILURE_BACKOFF
        with self._cond:
            self._filling[state_id] -= 1
            if not self._filling[state_id]:
                del self._filling[state_id]
            keep = (
                member is not None
                and not self._stopping
                and state_id not in self._closed
                and self._settings.active
                and (state_id in self._wanted or state_id in self._settings.pinned_states)
            )
            if member is not None and keep:
                self._retry_after.pop(state_id, None)
                self._ready.setdefault(state_id, []).append(member)
                self._counters["fills"] += 1
                self._estimate = max(self._estimate, member.memory_bytes)
            elif member is not None:
                self._detach([member])
            self._cond.notify_all()
        if member is None:
            return
        if keep:
            log.info(
                "pool: filled member %s of state %s in %.0f ms (%d KiB)",
                member_id,
                state_id,
                member.fill_ms,
                member.memory_bytes // 1024,
            )
        else:
            self._destroy(member, "no longer wanted")

    def _make_member(self, member_id: str, state_id: str, image_id: str, started: float) -> Member:
        source = self._snapshots.state_dir(image_id, state_id)
        mount = self._snapshots.clone_to_runtime(
            source, member_id, require_pg_version=True, cancel=self._cancel
        )
        runtime_dir = self._snapshots.layout.job_runtime_dir(member_id)
        _write_member_file(runtime_dir.parent, state_id, image_id)
        self._runtime.prepare_data_dir(mount)
        handle = self._runtime.start(image_id, mount, self._server_log, self._cancel)
        memory = server_memory_bytes(handle.pid)
        return Member(
            member_id=member_id,
            state_id=state_id,
            image_id=image_id,
            handle=handle,
            runtime_dir=runtime_dir,
            created_at=format_rfc3339(utcnow()),
            memory_bytes=memory if memory is not None else FALLBACK_MEMBER_BYTES,
            fill_ms=(time.monotonic() - started) * 1000,
            ready_since=time.monotonic(),
        )

    def _server_log(self, line: str) -> None:
        log.debug("pool: %s", line)

    # -- removal -------------------------------------------------------------------------------

    def _detach(self, members: list[Member]) -> None:
        """Count members as being removed (the caller holds the lock and took them out)."""
        for member in members:
            self._removing[member.state_id] = self._removing.get(member.state_id, 0) + 1

    def _destroy_all(self, members: list[Member], reason: str) -> None:
        if not members:
            return
        for member in members:
            self._destroy(member, reason, quiet=True)
        with self._cond:
            self._counters["drained"] += len(members)
        log.info(
            "pool: drained %d member(s) of state(s) %s (%s)",
            len(members),
            ", ".join(sorted({m.state_id for m in members})),
            reason,
        )

    def _destroy(self, member: Member, reason: str, quiet: bool = False) -> None:
        """Stop a member's server and remove its clone (it never becomes an instance)."""
        try:
            self._runtime.kill(member.handle)
        except Exception:
            log.exception("pool: cannot stop member %s", member.member_id)
        self._remove_dir(member.member_id)
        with self._cond:
            self._removing[member.state_id] -= 1
            if not self._removing[member.state_id]:
                del self._removing[member.state_id]
            self._cond.notify_all()
        if not quiet:
            log.info(
                "pool: removed member %s of state %s (%s)",
                member.member_id,
                member.state_id,
                reason,
            )

    def _remove_dir(self, member_id: str) -> None:
        try:
            self._snapshots.remove_job_dir(member_id)
        except Exception:
            log.exception("pool: cannot remove the clone of member %s", member_id)


def unmark_member(member: Member) -> None:
    """Remove a handed-out member's `.pool-member` file: its clone is an instance's now."""
    with contextlib.suppress(OSError):
        (member.runtime_dir.parent / MEMBER_FILE).unlink()


def _write_member_file(job_dir: Path, state_id: str, image_id: str) -> None:
    (job_dir / MEMBER_FILE).write_text(
        json.dumps({"state_id": state_id, "image_id": image_id}), encoding="utf-8"
    )
