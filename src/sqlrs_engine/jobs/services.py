"""What a job needs from the rest of the engine, in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlrs_engine.actors.registry import RegistryProxy
from sqlrs_engine.actors.snapshot import SnapshotClient
from sqlrs_engine.deletion.uses import StateUses
from sqlrs_engine.jobs.event_log import DEFAULT_HEARTBEAT, DEFAULT_MAX_TASK_LOG_LINES
from sqlrs_engine.runtime.base import Runtime

if TYPE_CHECKING:
    from sqlrs_engine.pool.warm_pool import WarmPool

ASK_TIMEOUT = 60.0
"""Seconds a job worker waits for the Registry to answer."""


@dataclass(frozen=True)
class JobServices:
    """The collaborators every job gets (real ones in the engine, fakes in tests)."""

    registry: RegistryProxy
    runtime: Runtime
    snapshots: SnapshotClient
    engine_version: str
    cwd: Path = field(default_factory=Path.cwd)
    heartbeat: float = DEFAULT_HEARTBEAT
    jobs_dir: Path | None = None
    """`<root>/jobs`: each job keeps its full task logs in `<job_id>/logs/`."""
    max_task_log_lines: int = DEFAULT_MAX_TASK_LOG_LINES
    """Log lines a task stores as events (config `orchestrator.jobs.maxTaskLogLines`)."""
    trim_jobs: Callable[[str], object] = lambda _signature: None
    """Retention by signature (SPEC §4.11), run when a job is planned and when it ends."""
    check_cache: Callable[[str, frozenset[str]], object] = lambda _trigger, _protected: None
    """Cache capacity enforcement (SPEC §10.2) with a trigger name and states to protect;
    raises a `JobFailure` with a §10 code when the store cannot make room."""
    pool: WarmPool | None = None
    """The warm pool: a cache hit takes a ready instance from it (None: no pool)."""
    state_uses: StateUses = field(default_factory=StateUses)
    """Where a job holds the states it relies on, so that a deletion of one is blocked
    (shared with the engine's `DeletionService`)."""
