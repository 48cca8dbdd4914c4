"""State-store operations on top of a snapshot backend and the cross-process locks.

This is what a prepare job (and deletion, eviction, run recovery) uses instead of touching
directories itself: base init under `base/.init.lock` (SPEC §9.3), state builds under the
per-state build lock (§9.4), clones into `jobs/<id>/runtime` with the checks of §2.10, and
removal of dirty states (§0.1, §9.5). Locks are `locks.FileLock` (flock + a per-path thread
lock), so everything here is safe across threads and across engine processes sharing a root.

Lock files are never deleted on purpose except together with their state dir while the lock
is held; `FileLock` notices a replaced/removed lock file and retries on the new one, and the
acquire loops below re-create a directory that vanished while they waited.

**Layouts.** Each backend lays states and clones out its own way (a plain copy, an overlay
layer with `layers.json`, a btrfs subvolume), and the backend is chosen again at every engine
start. The store therefore recognizes what made a state dir (`detect_layout`): a state made by
another backend is reported as unusable with that reason (the job logs it and rebuilds the
state with the current backend), and removal of a state or clone always goes through the
backend that made it (unmount, subvolume delete). Nothing silently mixes layouts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlrs_engine.cancel import NEVER_CANCELLED, CancelToken
from sqlrs_engine.faults import fault_point
from sqlrs_engine.locks import FileLock, LockTimeout
from sqlrs_engine.runtime.procs import kill_processes_using
from sqlrs_engine.snapshot.base import (
    MISSING_DIR_REASON,
    PG_VERSION,
    POSTMASTER_PID,
    BackendKind,
    SnapshotBackend,
    SnapshotError,
    find_data_file,
)
from sqlrs_engine.snapshot.btrfs import BtrfsBackend
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.fsinfo import is_subvolume
from sqlrs_engine.snapshot.fsops import (
    clear_dir,
    os_error_to_snapshot,
    resolved,
    sync_filesystem,
    write_marker,
)
from sqlrs_engine.snapshot.layout import (
    BASE_STAGING,
    INIT_LOCK,
    INIT_MARKER,
    SEPARATE_BUILD_DIR,
    STORE_METADATA_NAMES,
    StoreLayout,
    is_stale_name,
    state_build_lock,
    state_build_marker,
)
from sqlrs_engine.snapshot.overlay import (
    LAYER,
    META,
    MountSweep,
    OverlayBackend,
    sweep_mounts,
)
from sqlrs_engine.snapshot.perms import PASSAGE, ensure_mode, is_sealed, make_dirs, seal
from sqlrs_engine.snapshot.shared_checks import SharedChecks

log = logging.getLogger(__name__)

ORPHAN_LOCK_WAIT = 0.2
"""Seconds a start-up sweep waits for a row-less state's build lock before leaving it."""

_LOCK_ATTEMPTS = 20
"""How often to re-create a lock's directory that keeps being removed under us."""

BaseInit = Callable[[Path], None]
"""Initializes a cluster into `pgdata_of(base_dir)` (the runtime's initdb + pg_hba setup)."""


class StateBuild:
    """A held per-state build lock and what its holder may do with the state dir.

    Created by `StateStore.build_state`; valid only inside its `with` block.
    """

    def __init__(self, store: StateStore, image_id: str, state_id: str) -> None:
        self._store = store
        self.image_id = image_id
        self.state_id = state_id
        self.state_dir = store.layout.state_dir(image_id, state_id)
        self.problem: str | None = store._state_problem(self.state_dir)
        """Why the state dir was not a complete state when the lock was taken (None: it was)."""
        self.committed = False
        self._active = True
        self._touched = False
        self._parent: Path | None = None

    @property
    def already_built(self) -> bool:
        """True when a previous holder completed this state (marker, PG_VERSION, no pid)."""
        return self.problem is None

    def reset(self) -> None:
        """Empty the state dir (data and marker; the held lock stays) before rebuilding."""
        self._check_active()
        self._touched = True
        self._store._clear_state(self.image_id, self.state_id, keep_lock=True)
        self.problem = MISSING_DIR_REASON
        self.committed = False

    def snapshot(
        self, mount_dir: Path, parent: Path | None, *, cancel: CancelToken = NEVER_CANCELLED
    ) -> None:
        """Reset the state dir, then snapshot a stopped server's data dir into it.

        `parent` is the state/base dir the runtime was cloned from (layered backends store
        only the difference).
        """
        self.reset()
        self._store.backend.snapshot(mount_dir, self.state_dir, parent, cancel=cancel)
        self._parent = parent

    def size_bytes(self) -> int:
        """The state's `size_bytes` (SPEC §9.6), measured right after the snapshot: what it
        occupies itself (a reflinked copy: not the extents it shares with its parent)."""
        backend = self._store.backend
        if isinstance(backend, CopyBackend):
            return backend.size_bytes_against(self.state_dir, self._parent)
        return backend.size_bytes(self.state_dir)

    def commit(self) -> None:
        """Write the build marker: the state is complete (after its row is stored)."""
        self._check_active()
        self._store.commit_state(self.image_id, self.state_id)
        self.committed = True
        self.problem = None

    def _check_active(self) -> None:
        if not self._active:
            raise RuntimeError(f"build lock of state {self.state_id} is no longer held")

    def _finish(self, failed: bool) -> None:
        self._active = False
        if failed and self._touched and not self.committed:
            # A half-built state must not linger (and must never get a marker later).
            try:
                self._store._clear_state(self.image_id, self.state_id, keep_lock=True)
            except (OSError, SnapshotError) as exc:
                log.warning("cannot clean up failed build of %s: %s", self.state_id, exc)


class StateStore:
    """The state store of one root, operated through one snapshot backend."""

    def __init__(
        self,
        layout: StoreLayout,
        backend: SnapshotBackend,
        mounts_in_use: Callable[[], Collection[Path]] | None = None,
    ) -> None:
        """`mounts_in_use`: data dirs that servers outside this mount namespace use (a
        container runtime's bind mounts), which the start-up sweep must not unmount."""
        self.layout = layout
        self.backend = backend
        self.mounts_in_use = mounts_in_use
        self._validations: SharedChecks[str | None] = SharedChecks()

    # -- locks ---------------------------------------------------------------------------------

    @contextmanager
    def _lock(
        self,
        path: Path,
        ensure_dir: Callable[[], None],
        cancel: CancelToken,
        timeout: float | None,
    ) -> Iterator[None]:
        """Hold FileLock `path`, re-creating its directory if it is removed while we wait.

        `ensure_dir` runs outside the lock, so it can race with a holder removing the same
        directory: `mkdir` then fails with EEXIST for a directory that is gone a moment later
        (or ENOENT for a parent). Both mean "removed under us", so we start over.
        """
        last: OSError | None = None
        for _ in range(_LOCK_ATTEMPTS):
            lock = FileLock(path, cancel=cancel, timeout=timeout)
            try:
                ensure_dir()
                lock.acquire()
            except (FileExistsError, FileNotFoundError) as exc:
                last = exc  # the directory was removed by the previous holder: start over
                continue
            try:
                yield
            finally:
                lock.release()
            return
        raise SnapshotError("cannot take lock", f"{path.parent} keeps disappearing: {last}")

    def _build_lock(
        self, image_id: str, state_id: str, cancel: CancelToken, timeout: float | None
    ) -> contextlib.AbstractContextManager[None]:
        state_dir = self.layout.state_dir(image_id, state_id)
        lock_path = self.layout.build_lock(
            image_id, state_id, separate=self.backend.separate_build_meta
        )

        def ensure() -> None:
            self._seal_states_dir(state_dir.parent)
            self._drop_unlockable_state(state_dir)
            self.backend.ensure_state_dir(state_dir)
            lock_path.parent.mkdir(parents=True, exist_ok=True)

        return self._lock(lock_path, ensure, cancel, timeout)

    # -- base (SPEC §9.3) -------------------------------------------------------------------------

    def ensure_base(
        self, image_id: str, init: BaseInit, cancel: CancelToken = NEVER_CANCELLED
    ) -> Path:
        """The initialized base dir of an image; runs `init` at most once per root.

        Crash-safe by construction (issue 11): `init` builds the cluster in a staging dir
        inside the base dir, the result is checked (a `PG_VERSION`, no `postmaster.pid`: the
        initdb processes have ended cleanly) and published by one rename to `pgdata/`, and
        only then is the marker (`ok`, 0600, fsynced) written. Without the marker nothing in
        the base dir is trusted: a half-initialized cluster from a crash, a staging dir, or a
        cluster published just before the crash are all removed — after killing any process
        still working in the base dir (an orphaned `initdb`) — and the base is built again.
        """
        base = self.layout.base_dir(image_id)
        marker = self.layout.init_marker(image_id)
        if marker.is_file():
            if not is_sealed(base):
                seal(base)  # a base of an older engine
            return base

        def ensure() -> None:
            # initdb runs as the server user inside base/: it must pass through until sealed.
            make_dirs(base.parent, PASSAGE)
            self.backend.ensure_base_dir(base)

        with self._lock(self.layout.init_lock(image_id), ensure, cancel, None):
            if marker.is_file():
                return base
            self._discard_unfinished_base(base)
            ensure_mode(base, PASSAGE)  # initdb (the server user) works below until sealed
            staging = base / BASE_STAGING
            staging.mkdir(mode=0o755)
            cancel.raise_if_cancelled()
            init(staging)
            built = find_data_file(staging, PG_VERSION)
            if built is None:
                raise SnapshotError("base init failed", f"init left no PG_VERSION in {staging}")
            if find_data_file(staging, POSTMASTER_PID) is not None:
                raise SnapshotError(
                    "base init failed",
                    f"postmaster.pid present in {staging} after init: a server process is "
                    "still running on the new cluster",
                )
            pgdata = built.parent
            fault_point("base:initialized")
            try:
                os.rename(pgdata, base / pgdata.relative_to(staging))
                sync_filesystem(base)  # the cluster's files and the rename, before the marker
            except OSError as error:
                raise os_error_to_snapshot("base init failed", error) from None
            fault_point("base:published")
            self.remove_path(staging)
            try:
                seal(base)  # from now on the server user reaches it only through clones
            except OSError as exc:
                raise os_error_to_snapshot("base init failed", exc) from exc
            self._write_marker(marker, "base init failed")
        return base

    def _discard_unfinished_base(self, base: Path) -> None:
        """Under the init lock, without a marker: empty the base dir (except the lock)."""
        leftovers = kill_processes_using(base)
        if leftovers:
            log.warning(
                "base %s: killed %d process(es) of an interrupted init (pids %s)",
                base,
                len(leftovers),
                ", ".join(map(str, leftovers)),
            )
        names = [entry.name for entry in os.scandir(base) if entry.name != INIT_LOCK]
        if names:
            log.warning("base %s: discarding an unfinished init (%s)", base, ", ".join(names))
            clear_dir(base, {INIT_LOCK}, self.remove_path)

    # -- states (SPEC §9.4, §9.5) --------------------------------------------------------------

    @contextmanager
    def build_state(
        self,
        image_id: str,
        state_id: str,
        cancel: CancelToken = NEVER_CANCELLED,
        *,
        timeout: float | None = None,
    ) -> Iterator[StateBuild]:
        """Hold the build lock of one state; yields what the holder may do.

        Inside, the caller re-checks its cache: `build.already_built` is True when another
        job finished the state while we waited (treat it as built). Otherwise it builds and
        calls `build.snapshot(...)`, stores the row, then `build.commit()`. If the block
        raises after touching the dir and before committing, the partial state is removed.
        """
        with self._build_lock(image_id, state_id, cancel, timeout):
            build = StateBuild(self, image_id, state_id)
            failed = True
            try:
                yield build
                failed = False
            finally:
                build._finish(failed)

    def commit_state(self, image_id: str, state_id: str) -> None:
        """Write `.build.ok` for a snapshotted state (caller holds its build lock)."""
        state_dir = self.layout.state_dir(image_id, state_id)
        problem = self.backend.data_problem(state_dir, require_pg_version=True)
        if problem is not None:
            raise SnapshotError("cannot commit state", f"{problem} ({state_dir})")
        marker = self.layout.build_marker(
            image_id, state_id, separate=self.backend.separate_build_meta
        )
        try:
            # The snapshot was written without fsync (copies, renames, a layer's files): a
            # marker must never outlive its data across a power loss.
            sync_filesystem(state_dir)
        except OSError as error:
            raise os_error_to_snapshot("cannot commit state", error) from None
        self._write_marker(marker, "cannot commit state")

    def state_dir(self, image_id: str, state_id: str) -> Path:
        return self.layout.state_dir(image_id, state_id)

    def validate_state(self, image_id: str, state_id: str) -> str | None:
        """None when the state dir is complete and clean, else why not (unlocked check).

        Callers that ask about one state at once share a look that starts after each of them
        asked (`SharedChecks`): a burst of hits looks at the files twice, not once per hit."""
        state_dir = self.layout.state_dir(image_id, state_id)
        return self._validations.run(state_dir, lambda: self._state_problem(state_dir))

    def _state_problem(self, state_dir: Path) -> str | None:
        """The backend's verdict, after refusing a state laid out by another backend."""
        found = detect_layout(state_dir)
        if found is not None and found != self.backend.kind:
            return (
                f"state was made by the {found} snapshot backend, but this engine uses "
                f"{self.backend.kind}"
            )
        return self.backend.validate_state(state_dir)

    def invalidate_state(
        self, image_id: str, state_id: str, cancel: CancelToken = NEVER_CANCELLED
    ) -> str | None:
        """Remove a dirty/incomplete state dir; returns the reason, or None if it was valid.

        Re-checked under the build lock: a state that looked incomplete because another job
        was still building it is left alone (None), so the caller deletes the state row only
        when a reason is returned.
        """
        state_dir = self.layout.state_dir(image_id, state_id)
        marker = self.layout.build_marker(
            image_id, state_id, separate=self.backend.separate_build_meta
        )
        if not state_dir.exists() and not marker.exists():
            return f"{MISSING_DIR_REASON}: {state_dir}"
        with self._build_lock(image_id, state_id, cancel, None):
            problem = self._state_problem(state_dir)
            if problem is None:
                return None
            self._clear_state(image_id, state_id, keep_lock=False)
            return problem

    def remove_state(
        self,
        image_id: str,
        state_id: str,
        cancel: CancelToken = NEVER_CANCELLED,
        *,
        timeout: float | None = None,
    ) -> None:
        """Remove a state dir for deletion/eviction (under its build lock; idempotent)."""
        state_dir = self.layout.state_dir(image_id, state_id)
        marker = self.layout.build_marker(
            image_id, state_id, separate=self.backend.separate_build_meta
        )
        if not state_dir.exists() and not marker.exists():
            return
        with self._build_lock(image_id, state_id, cancel, timeout):
            self._clear_state(image_id, state_id, keep_lock=False)

    def state_size(self, image_id: str, state_id: str) -> int:
        """Live `size_bytes` of a state (back-fill, eviction fallback)."""
        return self.backend.size_bytes(self.layout.state_dir(image_id, state_id))

    def _clear_state(self, image_id: str, state_id: str, *, keep_lock: bool) -> None:
        state_dir = self.layout.state_dir(image_id, state_id)
        separate = self.backend.separate_build_meta
        marker = self.layout.build_marker(image_id, state_id, separate=separate)
        lock = self.layout.build_lock(image_id, state_id, separate=separate)
        # A marker a backend with the other placement left (the store changed backends).
        other = self.layout.build_marker(image_id, state_id, separate=not separate)
        if keep_lock and not separate:
            # Emptied in place around its lock: the marker goes first, so that a half-emptied
            # dir never claims to be complete.
            for stale_marker in (marker, other):
                with contextlib.suppress(OSError):
                    stale_marker.unlink()
            if state_dir.is_dir():
                clear_dir(state_dir, {lock.name}, self.remove_path)
            return
        # Removed whole: the backend either refuses before touching anything (a mounted clone
        # stands on an overlay layer) or takes the dir away at once (one rename, a subvolume
        # delete), so a refused removal leaves the state complete, marker included.
        self.remove_path(state_dir)
        for stale_marker in (marker, other):
            with contextlib.suppress(OSError):
                stale_marker.unlink()
        if separate and not keep_lock:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    def _drop_unlockable_state(self, state_dir: Path) -> None:
        """Remove a read-only btrfs state when this backend keeps its lock *inside* the dir.

        A lock file cannot be created in a read-only snapshot, so a store that moved from
        btrfs to another backend could never lock (and so never rebuild) such a state.
        """
        if self.backend.separate_build_meta or not is_subvolume(state_dir):
            return
        if os.access(state_dir, os.W_OK):
            return
        log.warning(
            "removing state %s: a read-only btrfs snapshot, but this engine uses the %s "
            "snapshot backend; it is rebuilt when needed",
            state_dir.name,
            self.backend.kind,
        )
        self.remove_path(state_dir)

    # -- runtime clones (SPEC §2.10) -------------------------------------------------------------

    def new_runtime_dir(self, job_id: str) -> Path:
        """An empty `jobs/<job_id>/runtime`, removing (or renaming aside) a leftover one."""
        runtime = self.layout.job_runtime_dir(job_id)
        self.remove_path(runtime)
        try:
            make_dirs(runtime.parent, PASSAGE)
            runtime.mkdir()
        except OSError as exc:
            raise os_error_to_snapshot("cannot create runtime dir", exc) from exc
        return runtime

    def clone_to_runtime(
        self,
        source: Path,
        job_id: str,
        *,
        require_pg_version: bool,
        cancel: CancelToken = NEVER_CANCELLED,
    ) -> Path:
        """Clone a base/state dir into the job's runtime dir; returns the mount dir.

        The source is refused when dirty (postmaster.pid) or, for state inputs
        (`require_pg_version`), without PG_VERSION; so is the resulting mount dir. A runtime
        dir inside the source is refused before anything is touched.
        """
        problem = self.backend.data_problem(source, require_pg_version=require_pg_version)
        if problem is not None:
            raise SnapshotError(problem, str(source))
        runtime = self.layout.job_runtime_dir(job_id)
        src, dst = resolved(source), resolved(runtime)
        if src == dst or src in dst.parents:
            raise SnapshotError(
                "snapshot clone failed", f"runtime dir {runtime} is inside source {source}"
            )
        self.new_runtime_dir(job_id)
        mount = self.backend.clone(source, runtime, cancel=cancel)
        problem = self.backend.data_problem(mount, require_pg_version=require_pg_version)
        if problem is not None:
            self.backend.remove(runtime)
            raise SnapshotError(problem, f"clone {mount} of {source}")
        return mount

    def runtime_mount_dir(self, job_id: str) -> Path:
        """Where the server of a job's runtime clone keeps its data (run recovery)."""
        return self.mount_dir_of(self.layout.job_runtime_dir(job_id))

    def mount_dir_of(self, runtime_dir: Path) -> Path:
        """The data dir of the clone at `runtime_dir`, whichever backend made it.

        Like `backend.mount_dir_of`, but an overlay clone left by an engine that used overlay
        is found (and remounted) even when this engine uses another backend.
        """
        if detect_layout(runtime_dir) == "overlayfs" and self.backend.kind != "overlayfs":
            return OverlayBackend(self.layout.root).mount_dir_of(runtime_dir)
        return self.backend.mount_dir_of(runtime_dir)

    def remove_runtime_dir(self, job_id: str) -> None:
        """Remove a job's runtime clone (the caller ensures no instance still uses it)."""
        self.remove_path(self.layout.job_runtime_dir(job_id))

    def remove_job_dir(self, job_id: str) -> None:
        """Remove `jobs/<job_id>` entirely (runtime first, through the backend)."""
        self.remove_runtime_dir(job_id)
        self.remove_path(self.layout.job_dir(job_id))

    def remove_path(self, path: Path) -> None:
        """Remove a state, clone or leftover through the backend whose layout it has.

        An overlay clone or layer needs unmounting and a btrfs snapshot a subvolume delete,
        whichever backend this engine uses now; anything else goes to the current backend.
        """
        found = detect_layout(path)
        if path.name == LAYER and (path.parent / META).is_file():
            found = "overlayfs"  # a layer alone looks like a plain dir
        if found in ("overlayfs", "btrfs") and found != self.backend.kind:
            self._backend_for(found).remove(path)
            return
        self.backend.remove(path)

    def _backend_for(self, kind: BackendKind) -> SnapshotBackend:
        if kind == "overlayfs":
            return OverlayBackend(self.layout.root)
        if kind == "btrfs":
            return BtrfsBackend()
        return self.backend

    # -- directory modes (snapshot/perms.py) ---------------------------------------------------

    def _seal_states_dir(self, states: Path) -> None:
        """`engines/<e>/<v>/states/`: created (with passable parents) and kept sealed."""
        if is_sealed(states):
            return
        make_dirs(states.parent, PASSAGE)
        seal(states)

    def secure_layout(self) -> list[Path]:
        """Give the store's directories their modes (start-up; fixes stores of older engines).

        Returns the directories that were sealed just now (states/ and initialized bases that
        the server user could still enter).
        """
        sealed: list[Path] = []
        for directory in (self.layout.engines_dir, self.layout.jobs_dir):
            if directory.is_dir():
                ensure_mode(directory, PASSAGE)
        for engine in _subdirs(self.layout.engines_dir):
            ensure_mode(engine, PASSAGE)
            for version in _subdirs(engine):
                ensure_mode(version, PASSAGE)
                candidates = [version / "states"]
                if (version / "base" / INIT_MARKER).is_file():
                    candidates.append(version / "base")
                for directory in candidates:
                    if directory.is_dir() and not is_sealed(directory):
                        seal(directory)
                        sealed.append(directory)
        return sealed

    # -- housekeeping --------------------------------------------------------------------------

    def sweep_stale(self) -> list[Path]:
        """Remove `*.stale-<ns>` leftovers of failed removals; returns what was removed.

        Looks where removals happen: `jobs/`, `jobs/<id>/`, `engines/*/*/` and their
        `states/`. Failures are logged and skipped (they are retried by the next sweep).
        """
        roots: list[Path] = [self.layout.jobs_dir]
        roots += _subdirs(self.layout.jobs_dir)
        for engine in _subdirs(self.layout.engines_dir):
            for version in _subdirs(engine):
                roots += [version, version / "states"]
        removed: list[Path] = []
        for directory in roots:
            try:
                names = [e.name for e in os.scandir(directory)]
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if not is_stale_name(name):
                    continue
                path = directory / name
                try:
                    self.remove_path(path)
                except SnapshotError as exc:
                    log.warning("cannot sweep %s: %s", path, exc)
                    continue
                removed.append(path)
        return removed

    def sweep_mounts(self) -> MountSweep:
        """Unmount overlay mounts under the root that nothing uses (engine start).

        See `overlay.sweep_mounts`: mounts of running servers stay, idle clones are
        unmounted (an instance's is remounted by `mount_dir_of`), leftovers are detached.
        Runs for every backend, so a store that moved away from overlay is cleaned too.
        """
        keep = self.mounts_in_use() if self.mounts_in_use is not None else ()
        return sweep_mounts(self.layout.root, keep)

    def state_dirs(self) -> list[Path]:
        """Every state dir on disk, whatever made it (`.build/` and stale leftovers aside)."""
        found = []
        for engine in _subdirs(self.layout.engines_dir):
            for version in _subdirs(engine):
                for state in _subdirs(version / "states"):
                    if state.name != SEPARATE_BUILD_DIR and not is_stale_name(state.name):
                        found.append(state)
        return found

    def remove_orphan_state_dir(self, state_dir: Path) -> bool:
        """Remove a state dir that has no row, if nobody is building it (its build lock is
        free right now); False when it is busy and was left alone."""
        lock = FileLock(
            state_build_lock(state_dir, separate=self.backend.separate_build_meta),
            timeout=ORPHAN_LOCK_WAIT,
        )
        try:
            lock.acquire()
        except (LockTimeout, OSError):
            return False
        try:
            marker = state_build_marker(state_dir, separate=self.backend.separate_build_meta)
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()  # first: a half-removed dir must never look complete
            self.remove_path(state_dir)
        finally:
            lock.release()
        return True

    def foreign_states(self) -> dict[str, int]:
        """How many state dirs each *other* backend made (kind → count), for the start log."""
        counts: dict[str, int] = {}
        for engine in _subdirs(self.layout.engines_dir):
            for version in _subdirs(engine):
                for state in _subdirs(version / "states"):
                    if state.name == SEPARATE_BUILD_DIR or is_stale_name(state.name):
                        continue
                    found = detect_layout(state)
                    if found is not None and found != self.backend.kind:
                        counts[found] = counts.get(found, 0) + 1
        return counts

    @staticmethod
    def _write_marker(marker: Path, what: str) -> None:
        try:
            write_marker(marker)
        except OSError as exc:
            raise os_error_to_snapshot(what, exc) from exc


def detect_layout(path: Path) -> BackendKind | None:
    """Which backend made the state or clone dir `path`, judged from what is on disk.

    `overlayfs`: an overlay layer record (`layers.json`) or a `layer/` dir; `btrfs`: a btrfs
    subvolume; `copy`: a plain dir with data; None: absent, or nothing but store metadata.
    """
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    if (path / META).is_file() or (path / LAYER).is_dir():
        return "overlayfs"
    if is_subvolume(path):
        return "btrfs"
    try:
        with os.scandir(path) as it:
            has_data = any(entry.name not in STORE_METADATA_NAMES for entry in it)
    except OSError:
        return None
    return "copy" if has_data else None


def _subdirs(directory: Path) -> list[Path]:
    try:
        with os.scandir(directory) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


__all__ = ["BaseInit", "StateBuild", "StateStore", "detect_layout"]
