"""The Snapshot actor: the one way a backend's directories change (ARCHITECTURE rule 1).

Copying or mounting a data directory can take seconds, so the actor does not do it on its
own thread (its mailbox must stay responsive): each operation runs on the actor's bounded
worker pool and the caller waits on the returned future. The pool bounds how much heavy
disk I/O runs at once.

At start the actor cleans up after a previous engine: overlay mounts under the store root
that nothing uses are unmounted *before* `start_snapshot_actor` returns (so before the
Registry sets up instances, whose idle clones `mount_dir_of` mounts again), states made by
another snapshot backend are reported, and leftovers of interrupted removals (`.stale-*`) are
swept in the background.

Jobs use `SnapshotClient`, which turns those futures back into plain blocking calls.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from sqlrs_engine.cancel import NEVER_CANCELLED, CancelToken
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.store import StateBuild, StateStore

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WORKERS = 4


class SnapshotActor(pykka.ThreadingActor):
    """Owns one `StateStore` (one backend) and runs its operations on a worker pool."""

    def __init__(self, store: StateStore, workers: int = DEFAULT_WORKERS) -> None:
        super().__init__()
        self._store = store
        self._workers = workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def on_start(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix=f"snapshot-{self._store.backend.kind}"
        )
        self._startup_cleanup()
        self._pool.submit(self._sweep)
        log.info("snapshot actor started backend=%s", self._store.backend.kind)

    def _startup_cleanup(self) -> None:
        """Directory modes, stale mounts, foreign layouts; never fatal (the engine must start)."""
        try:
            opened = self._store.secure_layout()
            if opened:
                log.info(
                    "sealed %d state-store directories against the server user: %s",
                    len(opened),
                    [str(p) for p in opened],
                )
        except Exception:
            log.exception("cannot secure the state store's directory modes")
        try:
            swept = self._store.sweep_mounts()
            if swept.released:
                log.info(
                    "unmounted %d idle or leftover overlay mounts under the store: %s",
                    len(swept.released),
                    [str(p) for p in swept.released],
                )
            if swept.kept:
                log.info("kept %d overlay mounts in use by running servers", len(swept.kept))
        except Exception:
            log.exception("cannot sweep stale mounts")
        try:
            foreign = self._store.foreign_states()
            if foreign:
                log.warning(
                    "the state store holds states made by other snapshot backends (%s); this "
                    "engine uses %s, so they are rebuilt with it when a prepare needs them",
                    ", ".join(f"{kind}: {count}" for kind, count in sorted(foreign.items())),
                    self._store.backend.kind,
                )
        except Exception:
            log.exception("cannot check state layouts")

    def on_stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        log.info("snapshot actor stopped backend=%s", self._store.backend.kind)

    def _sweep(self) -> None:
        removed = self._store.sweep_stale()
        if removed:
            log.info("removed %d stale leftovers: %s", len(removed), removed)

    def backend_kind(self) -> str:
        return str(self._store.backend.kind)

    def submit(self, operation: Callable[[StateStore], T]) -> concurrent.futures.Future[T]:
        """Run `operation(store)` on the pool; the caller waits on the returned future."""
        if self._pool is None:
            raise RuntimeError("snapshot actor is not running")
        return self._pool.submit(operation, self._store)


class SnapshotProxy(ActorMemberMixin, pykka.ActorProxy[SnapshotActor]):
    backend_kind = proxy_method(SnapshotActor.backend_kind)
    submit = proxy_method(SnapshotActor.submit)


class SnapshotClient:
    """Blocking, typed calls into a Snapshot actor, for job and instance workers."""

    def __init__(self, proxy: SnapshotProxy, store: StateStore) -> None:
        self._proxy = proxy
        self._store = store

    @property
    def layout(self) -> StoreLayout:
        return self._store.layout

    @property
    def kind(self) -> str:
        return str(self._store.backend.kind)

    def _call(self, operation: Callable[[StateStore], T]) -> T:
        future: concurrent.futures.Future[T] = self._proxy.submit(operation).get()
        return future.result()

    def ensure_base(
        self, image_id: str, init: Callable[[Path], None], cancel: CancelToken = NEVER_CANCELLED
    ) -> Path:
        return self._call(lambda store: store.ensure_base(image_id, init, cancel))

    def clone_to_runtime(
        self, source: Path, job_id: str, require_pg_version: bool, cancel: CancelToken
    ) -> Path:
        return self._call(
            lambda store: store.clone_to_runtime(
                source, job_id, require_pg_version=require_pg_version, cancel=cancel
            )
        )

    @contextmanager
    def build_state(
        self, image_id: str, state_id: str, cancel: CancelToken
    ) -> Iterator[StateBuild]:
        """Hold a state's build lock (a lock, not a change: taken on the caller's thread)."""
        with self._store.build_state(image_id, state_id, cancel) as build:
            yield build

    def snapshot(
        self, build: StateBuild, mount_dir: Path, parent: Path | None, cancel: CancelToken
    ) -> int:
        """Snapshot a stopped server's data dir into the held state; returns `size_bytes`."""

        def operation(_store: StateStore) -> int:
            build.snapshot(mount_dir, parent, cancel=cancel)
            return build.size_bytes()

        return self._call(operation)

    def validate_state(self, image_id: str, state_id: str) -> str | None:
        return self._store.validate_state(image_id, state_id)

    def state_dir(self, image_id: str, state_id: str) -> Path:
        return self._store.state_dir(image_id, state_id)

    def state_size(self, image_id: str, state_id: str) -> int:
        return self._call(lambda store: store.state_size(image_id, state_id))

    # Operations that wait for a state's build lock run on the caller's thread: a pool
    # thread blocked on a lock whose holder needs the pool for its snapshot would deadlock.

    def invalidate_state(self, image_id: str, state_id: str, cancel: CancelToken) -> str | None:
        return self._store.invalidate_state(image_id, state_id, cancel)

    def remove_state(self, image_id: str, state_id: str, cancel: CancelToken) -> None:
        self._store.remove_state(image_id, state_id, cancel)

    def state_dirs(self) -> list[Path]:
        return self._call(lambda store: store.state_dirs())

    def remove_orphan_state_dir(self, state_dir: Path) -> bool:
        return self._call(lambda store: store.remove_orphan_state_dir(state_dir))

    def remove_runtime_dir(self, job_id: str) -> None:
        self._call(lambda store: store.remove_runtime_dir(job_id))

    def remove_job_dir(self, job_id: str) -> None:
        self._call(lambda store: store.remove_job_dir(job_id))

    def remove_path(self, path: Path) -> None:
        self._call(lambda store: store.remove_path(path))

    def mount_dir_of(self, runtime_dir: Path) -> Path:
        """The data dir of the clone at `runtime_dir`, whatever backend made it; an overlay
        clone whose mount is gone (reboot, start sweep, an admin's umount) is mounted again.
        For run recovery: call it before restarting an instance's server."""
        return self._call(lambda store: store.mount_dir_of(runtime_dir))


STARTUP_TIMEOUT = 300.0


def start_snapshot_actor(
    store: StateStore, workers: int = DEFAULT_WORKERS
) -> tuple[pykka.ActorRef[Any], SnapshotClient]:
    """Start the actor and wait until its start-up cleanup is done (see the module doc)."""
    ref = SnapshotActor.start(store, workers)
    proxy: SnapshotProxy = ref.proxy()  # type: ignore[assignment]
    proxy.backend_kind().get(timeout=STARTUP_TIMEOUT)  # answered only after on_start
    return ref, SnapshotClient(proxy, store)
