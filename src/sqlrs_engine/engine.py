"""The engine as a whole: starts the actors and the HTTP server in order, stops them in reverse.

This is the root supervisor (Mopidy's `commands.py` plays the same part): the Registry comes
first because every other actor reports to it; the HTTP server comes last because it only
translates requests into messages for actors that must already exist. Stopping walks the
same list backwards; see `RegistryActor.begin_shutdown` for why children are stopped here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka

from sqlrs_engine.actors.instance import InstanceActor, instance_proxy
from sqlrs_engine.actors.prepare_job import PrepareJobActor
from sqlrs_engine.actors.registry import RegistryProxy, RegistrySettings, start_registry
from sqlrs_engine.actors.snapshot import start_snapshot_actor
from sqlrs_engine.affinity import Pinning, pin_threads
from sqlrs_engine.cache.enforcer import CacheEnforcer, enforce_quietly
from sqlrs_engine.clock import now_rfc3339
from sqlrs_engine.config.store import ConfigStore
from sqlrs_engine.deletion.expiry import ExpiryReaper
from sqlrs_engine.deletion.service import DeletionService
from sqlrs_engine.deletion.uses import StateUses
from sqlrs_engine.discovery import EngineInfo, remove_engine_json, write_engine_json
from sqlrs_engine.errors import StartupRefused
from sqlrs_engine.http.activity import ActivityTracker
from sqlrs_engine.http.app import build_app
from sqlrs_engine.http.context import ApiContext
from sqlrs_engine.http.server import HttpServer, endpoint_text
from sqlrs_engine.ids import new_auth_token, new_engine_instance_id
from sqlrs_engine.jobs.pooled_hit import PooledHitPath
from sqlrs_engine.jobs.services import JobServices
from sqlrs_engine.logsetup import apply_log_level
from sqlrs_engine.persistence.guard import StorageHealth
from sqlrs_engine.persistence.rows import Row
from sqlrs_engine.pool.cleanup import remove_orphan_members
from sqlrs_engine.pool.warm_pool import WarmPool
from sqlrs_engine.runtime.base import Runtime, ServerHandle
from sqlrs_engine.runtime.clients import kill_leftover_clients
from sqlrs_engine.runtime.host import HostRuntime
from sqlrs_engine.runtime.select import select_runtime
from sqlrs_engine.runtime.users import ServerUserError, grant_traversal
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.select import select_backend
from sqlrs_engine.snapshot.store import StateStore

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class EngineOptions:
    """Everything the command line and environment decide (SPEC §1.1, §1.2)."""

    listen_host: str
    listen_port: int
    engine_json: Path
    state_store: Path
    idle_timeout: float
    """Seconds; 0 or less disables idle shutdown."""
    version: str = "dev"
    http_threads: int | None = None
    """Overrides config `http.threads` (tests use small pools to prove streams don't starve)."""
    auth_token: str = field(default_factory=new_auth_token)
    non_loopback: bool = False
    """`--listen` is not a loopback address (allowed by `--allow-non-loopback`)."""


class Engine:
    """One running engine: Registry and its children, HTTP server, engine.json."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.instance_id = new_engine_instance_id()
        self.activity = ActivityTracker()
        self._environ = dict(os.environ)
        self._cwd = Path.cwd()
        self._snapshot_ref: pykka.ActorRef[Any] | None = None
        self._deletion: DeletionService | None = None
        self._reaper: ExpiryReaper | None = None
        self._stopped = threading.Event()
        self._registry_ref: pykka.ActorRef[Any] | None = None
        self._registry: RegistryProxy | None = None
        self._http: HttpServer | None = None
        self._info: EngineInfo | None = None
        self._storage_health = StorageHealth()
        self._cache: CacheEnforcer | None = None
        self._pool: WarmPool | None = None
        self._pooled_hits: PooledHitPath | None = None
        self._pinning: Pinning | None = None

    @property
    def registry(self) -> RegistryProxy:
        assert self._registry is not None, "engine not started"
        return self._registry

    def start(self) -> EngineInfo:
        """Bring everything up; raises with a readable message if any part cannot start.

        Whatever was already started is stopped again before the error propagates, so a
        failed start never leaves actor threads keeping the process alive.
        """
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> EngineInfo:
        root = self.options.state_store
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = ConfigStore.in_root(root)
        apply_log_level(config.log_level())
        # Before any actor starts a thread: all of them inherit the CPU (affinity.py).
        self._pinning = pin_threads(config.pin_threads())
        log.info("%s", self._pinning.reason)
        choice = select_runtime(
            config.container_runtime(),
            config.host_user(),
            config.host_bin_dirs(),
            self._environ,
            store_root=root,
        )
        runtime = choice.runtime
        log.info("%s", choice.reason)
        _kill_leftover_clients(runtime, root)
        _make_reachable(root, runtime)
        backend = select_backend(config.snapshot_backend(), root)
        (log.warning if backend.fallback else log.info)("%s", backend.reason)
        store = StateStore(
            StoreLayout(root), backend.backend, getattr(runtime, "data_dirs_in_use", None)
        )
        snapshot_ref, snapshots = start_snapshot_actor(store)
        self._snapshot_ref = snapshot_ref
        version = self.options.version
        state_uses = StateUses()

        def job_services(registry: RegistryProxy) -> JobServices:
            return JobServices(
                registry,
                runtime,
                snapshots,
                version,
                self._cwd,
                jobs_dir=snapshots.layout.jobs_dir,
                max_task_log_lines=config.max_task_log_lines(),
                trim_jobs=self._trim_jobs,
                check_cache=self._check_cache,
                pool=self._pool,
                state_uses=state_uses,
            )

        def start_job(job_id: str, registry: RegistryProxy) -> pykka.ActorRef[Any]:
            return PrepareJobActor.start(job_id, job_services(registry))

        def start_instance(row: Row, handle: ServerHandle | None) -> pykka.ActorRef[Any]:
            # Through the store: it also finds (and remounts) clones made by another backend.
            # A running server's handle already names its data dir (a hand-out: no Snapshot
            # actor round trip on the Registry's thread).
            runtime_dir = Path(row["runtime_dir"] or root / "missing")
            data_dir = (
                handle.data_dir if handle is not None else snapshots.mount_dir_of(runtime_dir)
            )
            return InstanceActor.start(
                row["instance_id"],
                row["image_id"],
                handle,
                data_dir,
                runtime,
                lambda: snapshots.mount_dir_of(runtime_dir),
                row.get("secret"),
            )

        self._registry_ref, self._registry = start_registry(
            RegistrySettings(
                db_path=root / "state.db",
                config=config,
                job_actor_factory=start_job,
                instance_actor_factory=start_instance,
                children=(snapshot_ref,),
                recover_jobs=False,
                storage_health=self._storage_health,
            )
        )
        # Members a crash left are removed before anything else looks at the store.
        remove_orphan_members(
            snapshots.layout.jobs_dir,
            self._registry.instance_runtime_dirs().get(timeout=STOP_TIMEOUT),
            runtime,
            snapshots,
        )
        self._pool = WarmPool(self._registry, runtime, snapshots)
        registry = self._registry
        self._pooled_hits = PooledHitPath(
            lambda: job_services(registry), self._pool, start_instance
        )
        self._deletion = DeletionService(self._registry, snapshots, self._pool.drained, state_uses)
        # Crash repair before any job resumes: deletions that were under way are completed.
        self._deletion.complete_interrupted()
        _record_adopted_servers(self._registry)
        self._deletion.reconcile_states()
        self._cache = CacheEnforcer(root, self._registry, self._deletion, snapshots)
        enforce_quietly(self._cache, "startup_recovery")
        self._registry.recover_jobs().get(timeout=STOP_TIMEOUT)
        ctx = ApiContext(
            registry=self._registry,
            auth_token=self.options.auth_token,
            version=self.options.version,
            instance_id=self.instance_id,
            pid=os.getpid(),
            cwd=self._cwd,
            runtime=runtime,
            snapshots=snapshots,
            deletion=self._deletion,
            storage=self._storage_health,
            cache=self._cache,
            jobs_dir=snapshots.layout.jobs_dir,
            pool=self._pool,
            pooled_hits=self._pooled_hits,
        )
        app = self.activity.middleware(build_app(ctx))
        threads = self.options.http_threads or config.http_threads()
        self._http = HttpServer(app, self.options.listen_host, self.options.listen_port, threads)
        host, port = self._http.bind()
        self._info = EngineInfo(
            endpoint=endpoint_text(host, port),
            pid=os.getpid(),
            started_at=now_rfc3339(),
            auth_token=self.options.auth_token,
            version=self.options.version,
            instance_id=self.instance_id,
        )
        write_engine_json(self.options.engine_json, self._info)
        self._http.start()
        self._pool.start()
        expiry_interval = config.expiry_interval()
        if expiry_interval > 0:
            self._reaper = ExpiryReaper(self._registry, self._deletion, expiry_interval)
            self._reaper.start()
        else:
            log.info("instances.expiryInterval is 0: expired instances are not deleted")
        self.activity.touch()
        log.info(
            "engine serving endpoint=%s store=%s http_threads=%d",
            self._info.endpoint,
            root,
            threads,
        )
        return self._info

    def _check_cache(self, trigger: str, protected: frozenset[str]) -> None:
        if self._cache is not None:
            self._cache.check(trigger, protected)

    def _trim_jobs(self, signature: str) -> None:
        if self._deletion is not None:
            self._deletion.trim_jobs(signature)

    def wait(self, stop_requested: threading.Event, poll: float = 1.0) -> str:
        """Block until a stop is requested or the idle timeout expires; returns why."""
        while not stop_requested.wait(poll):
            if self._idle_expired():
                return "idle timeout"
        return "signal"

    def _idle_expired(self) -> bool:
        timeout = self.options.idle_timeout
        if timeout <= 0 or self.activity.idle_for() < timeout:
            return False
        try:
            # Instances with a TTL keep the engine up until it has deleted them: servers
            # outlive the engine, and nobody else would ever remove them.
            busy = self.registry.active_job_count().get(timeout=10) > 0 or (
                self._reaper is not None
                and self.registry.expiring_instance_count().get(timeout=10) > 0
            )
        except (pykka.Timeout, pykka.ActorDeadError):
            busy = True
        if busy:
            self.activity.touch()
        return not busy

    def stop(self) -> None:
        """Stop in reverse start order (HTTP, children, Registry), then remove engine.json."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._reaper is not None:
            self._reaper.stop()
        if self._http is not None:
            self._http.stop()
        if self._pooled_hits is not None:
            self._pooled_hits.close()
        if self._pool is not None:
            # Before the children: jobs no longer take members, and the members' servers and
            # clones go away with the engine (a pool never outlives it).
            self._pool.stop()
        if self._registry is not None and self._registry_ref is not None:
            _stop_children(self._registry, self._registry_ref)
            self._registry_ref.stop(block=True, timeout=STOP_TIMEOUT)
        if self._snapshot_ref is not None and self._snapshot_ref.is_alive():
            self._snapshot_ref.stop(block=True, timeout=STOP_TIMEOUT)
        if self._info is not None:
            remove_engine_json(self.options.engine_json, self.instance_id)
        if self._pinning is not None:
            self._pinning.release()
        log.info("engine stopped")


def _kill_leftover_clients(runtime: Runtime, root: Path) -> None:
    """Tag this store's client programs, and kill those an earlier engine left (SPEC §0.9).

    Liquibase runs on the host whatever the runtime, so the sweep does not depend on it."""
    if isinstance(runtime, HostRuntime):
        runtime.client_tag = str(root)
    killed = kill_leftover_clients(str(root))
    if killed:
        log.warning("killed %d client programs left by a previous engine: %s", len(killed), killed)


def _make_reachable(root: Path, runtime: Runtime) -> None:
    """Let an unprivileged server user reach data dirs under the store (SPEC §0.2).

    The `sqlrs` CLI creates the store's parents 0700 (as root: `/root/.local/state/sqlrs`).
    Each directory that blocks the server user gets one ACL entry for that user, logged;
    none gets a wider mode. Where that is impossible the engine refuses to start, naming
    every blocking directory.
    """
    user = getattr(runtime, "user", None)
    if user is None or os.geteuid() != 0 or user.uid == 0:
        return
    try:
        changed = grant_traversal(root, user)
    except ServerUserError as error:
        raise StartupRefused(f"state store {root} is unusable: {error}") from None
    for directory in changed:
        log.info(
            "granted OS user %s search permission on %s (ACL entry u:%s:x) so PostgreSQL "
            "can reach the state store",
            user.name,
            directory,
            user.name,
        )


def _record_adopted_servers(registry: RegistryProxy) -> None:
    """An Instance actor adopts its running server at start; if that server is not the one
    the row names (a crash during a run's restart), the row is brought up to date, with the
    port (and so the DSN of the job's result) if it moved."""
    for row in registry.all_instance_rows().get(timeout=STOP_TIMEOUT):
        ref = registry.instance_actor(row["instance_id"]).get(timeout=STOP_TIMEOUT)
        if ref is None:
            continue
        try:
            handle = instance_proxy(ref).handle().get(timeout=STOP_TIMEOUT)
        except pykka.ActorDeadError:
            continue
        if handle is not None and handle.runtime_id != row.get("runtime_id"):
            log.info(
                "instance %s: recording adopted server %s (was %s)",
                row["instance_id"],
                handle.runtime_id,
                row.get("runtime_id"),
            )
            registry.set_instance_runtime(
                row["instance_id"], handle.runtime_id, handle.port, handle.password
            ).get(timeout=STOP_TIMEOUT)


def _stop_children(registry: RegistryProxy, registry_ref: pykka.ActorRef[Any]) -> None:
    """Stop the Registry's children in the order it gives (jobs, instances, backends).

    A Registry that cannot answer (crashed, stuck) cannot hand them over; then every other
    actor of this process is stopped, jobs first: Pykka threads are not daemons, and one
    left running would keep the engine process alive after SIGTERM.
    """
    try:
        children = registry.begin_shutdown().get(timeout=STOP_TIMEOUT)
    except (pykka.Timeout, pykka.ActorDeadError):
        log.warning("registry did not hand over its children; stopping every other actor")
        others = [ref for ref in pykka.ActorRegistry.get_all() if ref is not registry_ref]
        order: dict[type[Any], int] = {PrepareJobActor: 0, InstanceActor: 1}
        children = sorted(others, key=lambda ref: order.get(ref.actor_class, 2))
    for ref in children:
        try:
            ref.stop(block=True, timeout=STOP_TIMEOUT)
        except pykka.Timeout:
            log.error("actor %s did not stop within %.0fs", ref, STOP_TIMEOUT)


def run_until_stopped(
    engine: Engine,
    stop_requested: threading.Event,
    on_ready: Callable[[EngineInfo], None] | None = None,
) -> str:
    """Start, serve until a signal or idle timeout, stop; returns the reason it stopped."""
    info = engine.start()
    if on_ready is not None:
        on_ready(info)
    try:
        return engine.wait(stop_requested)
    finally:
        engine.stop()
