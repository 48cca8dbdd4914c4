"""What every route needs: the actors to talk to and the engine's identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlrs_engine.actors.registry import RegistryProxy
from sqlrs_engine.actors.snapshot import SnapshotClient
from sqlrs_engine.cache.enforcer import CacheEnforcer
from sqlrs_engine.deletion.service import DeletionService
from sqlrs_engine.jobs.pooled_hit import PooledHitPath
from sqlrs_engine.persistence.guard import StorageHealth
from sqlrs_engine.pool.warm_pool import WarmPool
from sqlrs_engine.runtime.base import Runtime

ASK_TIMEOUT = 30.0
"""Seconds a route waits for an actor's answer before giving up with a 503."""


@dataclass
class ApiContext:
    """Shared, read-only state of the HTTP layer."""

    registry: RegistryProxy
    auth_token: str
    version: str
    instance_id: str
    pid: int
    cwd: Path = field(default_factory=Path.cwd)
    """The engine's working directory: the psql work dir fallback (SPEC §2.2)."""
    runtime: Runtime | None = None
    """The container runtime, for routes that plan without a job (cache explain)."""
    snapshots: SnapshotClient | None = None
    """The state store, for planners that need a server on a base (lb cache explain)."""
    deletion: DeletionService | None = None
    """Carries out DELETEs (instances, states, jobs)."""
    cache: CacheEnforcer | None = None
    """Cache capacity status and enforcement (SPEC §10)."""
    storage: StorageHealth = field(default_factory=StorageHealth)
    """Whether state.db can be written (reported by `/v1/health`)."""
    jobs_dir: Path | None = None
    """`<root>/jobs`: where each job keeps its full task logs (`<job_id>/logs/<task>.log`)."""
    pool: WarmPool | None = None
    """The warm pool of ready instances (`GET /v1/pool`)."""
    pooled_hits: PooledHitPath | None = None
    """The short path of a cache hit that finds a ready pool member (prepare submissions)."""
