"""The `overlayfs` snapshot backend: clones are overlay mounts, states are layers (SPEC §9, §0.6).

On disk::

    engines/<e>/<v>/base/                       plain data dir (.init.ok, .init.lock, pgdata/)
    engines/<e>/<v>/states/<id>/.build.lock, .build.ok
    engines/<e>/<v>/states/<id>/layer/          what the state's step changed (an upper dir:
                                                whiteouts and opaque dirs included)
    engines/<e>/<v>/states/<id>/layers.json     {"backend", "id", "lowers": [{"path", "id"}]}
    jobs/<job>/runtime/upper/ work/ merged/     a clone; `merged` is the mount dir
    jobs/<job>/runtime/layers.json              the clone's lower layers, top first

**Clone**: `mount -t overlay -o lowerdir=<state layer>:<its lowers…>:<base>,upperdir,workdir
merged`, run with relative paths (see `mounts.py`). The upper dir is created owned by the owner
of `pgdata` with mode 0700, because the merged root takes the upper root's owner and mode and
PostgreSQL must be able to enter it; nothing else is chowned, so nothing is copied up. Store
metadata that the base shows at its top (`.init.ok`, `.init.lock`) is deleted in the merged
view right after mounting (a whiteout in the upper), so a clone looks like a copy would.

**Snapshot** (server stopped cleanly): the clone is unmounted, its upper dir is *renamed* to
the new state's `layer/` (no copy: O(1) in the database size, and the state stores only what
the step changed), and the clone is mounted again on that layer with a fresh upper, so the job
continues from exactly the new state.

**Depth**: a state whose chain would exceed `max_depth` layers (default 32), or whose clone's
mount options would not fit in one page, is *flattened*: its layer is a full copy of the merged
view and it has no lowers. The kernel allows 500 lower layers, but every lookup that misses the
upper walks the chain, so long chains make PostgreSQL's file opens slower.

**Immutability**: overlay never writes to lower layers, and a layer becomes a lower only after
its state's snapshot. Each state records a random id and the ids of its lowers; a parent that
was rebuilt under the same path (after invalidation) makes its descendants invalid instead of
silently mixing files of two builds. A state whose layer is a lower of a mounted clone is not
removed (`remove` refuses): that would pull files from under a running server.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import stat
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlrs_engine.cancel import NEVER_CANCELLED, CancelToken
from sqlrs_engine.snapshot.base import (
    DIRTY_REASON,
    MISSING_DIR_REASON,
    MISSING_MARKER_REASON,
    MISSING_PG_VERSION_REASON,
    PG_VERSION,
    POSTMASTER_PID,
    BackendKind,
    SnapshotError,
    StateInUse,
    data_dir_problem,
)
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.fsops import (
    check_no_overlap,
    check_state_dst,
    clear_dir,
    copy_dir_attrs,
    copy_entries,
    data_entries,
    os_error_to_snapshot,
    refuse_unclean_source,
    remove_tree,
    run_tool,
    tree_size,
    write_marker,
)
from sqlrs_engine.snapshot.layout import (
    BUILD_LOCK,
    STORE_METADATA_NAMES,
    is_stale_name,
    state_build_marker,
)
from sqlrs_engine.snapshot.mounts import (
    MOUNT_DATA_LIMIT,
    is_mount_point,
    mount_overlay,
    mount_table,
    mounts_under,
    overlay_options,
    release_mount,
    release_mounts_under,
    unmount,
)

log = logging.getLogger(__name__)

META = "layers.json"
LAYER = "layer"
UPPER = "upper"
WORK = "work"
MERGED = "merged"
FORMAT = 1
DEFAULT_MAX_DEPTH = 32
OPTIONS_MARGIN = 128
"""Bytes kept free below the one-page limit when deciding to flatten: a later clone's
upper/work paths may be a little longer than the current one's."""
_OPAQUE_XATTR = "trusted.overlay.opaque"


@dataclass(frozen=True)
class Layer:
    """One directory of an overlay stack and the id it had when it was recorded."""

    path: Path
    id: str


# -- metadata ------------------------------------------------------------------------------------


def plain_layer_id(path: Path) -> str:
    """Identity of a plain data dir used as a layer (the base): its cluster's system id.

    initdb draws a new system identifier (the first 8 bytes of `global/pg_control`), so a
    re-initialized base gets a new id and the layers recorded on top of the old one are
    recognized as stale.
    """
    for control in (path / "pgdata" / "global" / "pg_control", path / "global" / "pg_control"):
        try:
            with open(control, "rb") as f:
                head = f.read(8)
        except OSError:
            continue
        if len(head) == 8:
            return f"sysid:{int.from_bytes(head, 'little')}"
    return "plain"


def read_meta(path: Path) -> dict[str, Any]:
    """A `layers.json`; SnapshotError when it is unreadable or not ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SnapshotError("overlay metadata unreadable", f"{path}: {exc}") from exc
    if (
        not isinstance(data, dict)
        or data.get("backend") != "overlayfs"
        or not isinstance(data.get("lowers"), list)
    ):
        raise SnapshotError("overlay metadata unreadable", f"{path}: not an overlay layer record")
    return data


def _write_meta(owner: Path, data: dict[str, Any]) -> None:
    write_marker(owner / META, json.dumps(data, sort_keys=True))


def _lowers_of(owner: Path, data: dict[str, Any]) -> list[Layer]:
    """The recorded lowers of a state/clone dir, as absolute paths (stored relative to it)."""
    lowers: list[Layer] = []
    for item in data["lowers"]:
        if not isinstance(item, dict) or "path" not in item or "id" not in item:
            raise SnapshotError("overlay metadata unreadable", f"{owner / META}: bad lower {item}")
        lowers.append(Layer(Path(os.path.normpath(owner / str(item["path"]))), str(item["id"])))
    return lowers


def _lowers_json(owner: Path, lowers: Sequence[Layer]) -> list[dict[str, str]]:
    return [{"path": os.path.relpath(layer.path, owner), "id": layer.id} for layer in lowers]


def current_layer_id(path: Path) -> str | None:
    """The id the layer at `path` has now (None when it is gone)."""
    if not path.is_dir():
        return None
    meta = path.parent / META
    if path.name == LAYER and meta.is_file():
        with contextlib.suppress(SnapshotError):
            return str(read_meta(meta).get("id"))
        return None
    return plain_layer_id(path)


def is_overlay_state(path: Path) -> bool:
    """A state dir in this backend's layout (has `layers.json` and `layer/`)."""
    return (path / META).is_file() and (path / LAYER).is_dir()


def is_overlay_clone(path: Path) -> bool:
    """A runtime dir holding an overlay clone (has `layers.json` and `upper/`)."""
    return (path / META).is_file() and (path / UPPER).is_dir()


# -- lookups through a stack ---------------------------------------------------------------------


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, _OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def lookup(stack: Sequence[Path], rel: str) -> Path | None:
    """Where `rel` comes from in the merged view of `stack` (top first), as overlay resolves it.

    Honors whiteouts (a char device 0/0 hides the name below) and opaque directories (hide
    everything below them). None when the merged view has no such entry.
    """
    parts = [p for p in rel.split("/") if p]
    for layer in stack:
        current = layer
        opaque = False
        for i, part in enumerate(parts):
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                if opaque:
                    return None
                break  # not in this layer: look in the next one
            except OSError:
                return None
            if _is_whiteout(st):
                return None
            if i == len(parts) - 1:
                return current
            if not stat.S_ISDIR(st.st_mode):
                return None  # a non-directory hides everything below its name
            opaque = opaque or _is_opaque(current)
    return None


# -- the backend ----------------------------------------------------------------------------------


class OverlayBackend:
    """Snapshot backend on overlayfs: mounted clones, layered states (needs root)."""

    kind: Final[BackendKind] = "overlayfs"
    separate_build_meta: Final[bool] = False

    def __init__(
        self,
        root: Path | None = None,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        options_limit: int = MOUNT_DATA_LIMIT,
    ) -> None:
        """`root`: the store root (informational); `max_depth`/`options_limit`: flattening."""
        if not 1 <= max_depth <= 500:
            raise ValueError("max_depth must be between 1 and 500 (the kernel's layer limit)")
        self.root = root
        self.max_depth = max_depth
        self.options_limit = options_limit
        self._layers = threading.RLock()
        """The layer lock: "is this layer in use" (a mounted clone stands on it) is decided
        and acted on under it — removal checks and removes, clones mount, a job's snapshot
        unmounts and remounts its clone — so no removal can slip into the moment a clone is
        briefly unmounted, nor pull a layer from under a clone being mounted (issue 14).
        Within this process; engines sharing a store also serialize on the build locks."""

    # -- stacks --------------------------------------------------------------------------------

    def stack_of(self, src: Path) -> list[Layer]:
        """The layers of base/state dir `src`, top first (a plain dir is one layer)."""
        meta = src / META
        if not meta.is_file():
            return [Layer(src, plain_layer_id(src))]
        data = read_meta(meta)
        return [Layer(src / LAYER, str(data.get("id"))), *_lowers_of(src, data)]

    def depth_of(self, src: Path) -> int:
        """Number of layers a clone of `src` mounts."""
        return len(self.stack_of(src))

    @staticmethod
    def _stack_problem(stack: Sequence[Layer]) -> str | None:
        top, *lowers = stack
        if not top.path.is_dir():
            return f"{MISSING_DIR_REASON}: {top.path}"
        for layer in lowers:
            current = current_layer_id(layer.path)
            if current is None:
                return f"{MISSING_DIR_REASON}: parent layer {layer.path}"
            if current != layer.id:
                return f"parent layer {layer.path} was rebuilt after this state was made"
        return None

    def data_problem(self, path: Path, *, require_pg_version: bool = True) -> str | None:
        if not path.is_dir():
            return f"{MISSING_DIR_REASON}: {path}"
        if not (path / META).is_file():
            return data_dir_problem(path, require_pg_version=require_pg_version)
        try:
            stack = self.stack_of(path)
        except SnapshotError as exc:
            return f"{exc.message}: {exc.details}"
        problem = self._stack_problem(stack)
        if problem is not None:
            return problem
        dirs = [layer.path for layer in stack]
        if any(lookup(dirs, name) for name in (POSTMASTER_PID, f"pgdata/{POSTMASTER_PID}")):
            return DIRTY_REASON
        if require_pg_version and not any(
            lookup(dirs, name) for name in (PG_VERSION, f"pgdata/{PG_VERSION}")
        ):
            return MISSING_PG_VERSION_REASON
        return None

    def validate_state(self, path: Path) -> str | None:
        problem = self.data_problem(path, require_pg_version=True)
        if problem is not None:
            return problem
        marker = state_build_marker(path, separate=self.separate_build_meta)
        if not marker.is_file():
            return f"{MISSING_MARKER_REASON}: {marker.name}"
        return None

    def size_bytes(self, path: Path) -> int:
        """Bytes on disk of the state's own layer: the blocks of the files its step changed
        (all of them when flattened); the lower layers it shares are counted once, by theirs."""
        if (path / META).is_file():
            return tree_size(path / LAYER, allocated=True)
        return tree_size(path, allocated=True)

    # -- clone ---------------------------------------------------------------------------------

    def clone(self, src: Path, dst: Path, *, cancel: CancelToken = NEVER_CANCELLED) -> Path:
        """Mount an overlay of `src`'s layers with a new upper at `dst/merged`."""
        what = "snapshot clone failed"
        if not src.is_dir():
            raise SnapshotError(what, f"source {src} is not a directory")
        check_no_overlap(src, dst, what)
        stack = self.stack_of(src)
        problem = self._stack_problem(stack)
        if problem is not None:
            raise SnapshotError(what, f"{problem} ({src})")
        created = CopyBackend._prepare_empty_dst(dst, what)
        try:
            self._make_clone_dirs(dst, self._data_owner(stack))
            _write_meta(
                dst, {"backend": self.kind, "format": FORMAT, "lowers": _lowers_json(dst, stack)}
            )
            cancel.raise_if_cancelled()
            with self._layers:
                problem = self._stack_problem(stack)  # again: a removal may have won the race
                if problem is not None:
                    raise SnapshotError(what, f"{problem} ({src})")
                mount_overlay(
                    [layer.path for layer in stack], dst / UPPER, dst / WORK, dst / MERGED
                )
            self._hide_store_metadata(dst / MERGED)
        except BaseException as exc:
            self._discard(dst, created=created)
            if isinstance(exc, OSError):
                raise os_error_to_snapshot(what, exc) from exc
            raise
        return dst / MERGED

    @staticmethod
    def _data_owner(stack: Sequence[Layer]) -> tuple[int, int]:
        """uid/gid the clone's root gets: those of `pgdata` (the server user), else the top's."""
        found = lookup([layer.path for layer in stack], "pgdata")
        st = os.stat(found if found is not None else stack[0].path)
        return st.st_uid, st.st_gid

    @staticmethod
    def _make_clone_dirs(dst: Path, owner: tuple[int, int]) -> None:
        upper = dst / UPPER
        upper.mkdir(mode=0o700)
        with contextlib.suppress(PermissionError):
            os.chown(upper, *owner)
        os.chmod(upper, 0o700)
        (dst / WORK).mkdir(mode=0o700)
        (dst / MERGED).mkdir(mode=0o700, exist_ok=True)

    @staticmethod
    def _hide_store_metadata(merged: Path) -> None:
        """Delete the base's markers/locks in the merged view (whiteouts in the upper only)."""
        for name in sorted(STORE_METADATA_NAMES):
            path = merged / name
            if path.is_symlink() or path.is_file():
                path.unlink()

    def _discard(self, dst: Path, *, created: bool) -> None:
        """Best-effort cleanup of a half-made clone, mounts first."""
        try:
            release_mounts_under(dst, fs_type="overlay")
            if created:
                remove_tree(dst)
            elif dst.is_dir():
                clear_dir(dst, (), remove_tree)
        except (OSError, SnapshotError) as exc:
            log.warning("cannot clean up failed clone %s: %s", dst, exc)

    # -- snapshot ------------------------------------------------------------------------------

    def snapshot(
        self,
        src_mount_dir: Path,
        dst: Path,
        parent: Path | None,
        *,
        cancel: CancelToken = NEVER_CANCELLED,
    ) -> None:
        """Make state `dst` from a stopped clone: its upper becomes the state's layer.

        `parent` is not needed: the clone's own record says which layers it stands on (after
        a snapshot that is the state just made, which is what the job passes as `parent`).
        A source that is not one of our mounted clones is stored flattened (a full copy).
        """
        what = "snapshot failed"
        refuse_unclean_source(src_mount_dir)
        check_no_overlap(src_mount_dir, dst, what)
        check_state_dst(dst, what)
        try:
            dst.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error_to_snapshot(what, exc) from exc
        cancel.raise_if_cancelled()
        lowers = self._mounted_clone_lowers(src_mount_dir)
        try:
            if lowers is None:
                self._flatten_into(src_mount_dir, dst, cancel)
            elif self._must_flatten(dst, lowers, src_mount_dir.parent):
                log.info(
                    "flattening state %s (chain of %d layers would exceed the limits)",
                    dst.name,
                    len(lowers) + 1,
                )
                layer = self._flatten_into(src_mount_dir, dst, cancel)
                with self._layers:
                    self._rebase_clone(src_mount_dir.parent, [layer])
            else:
                with self._layers:
                    self._promote(src_mount_dir.parent, dst, lowers)
        except BaseException as exc:
            with contextlib.suppress(OSError, SnapshotError):
                clear_dir(dst, {BUILD_LOCK}, self.remove)
            if isinstance(exc, OSError):
                raise os_error_to_snapshot(what, exc) from exc
            raise

    def _mounted_clone_lowers(self, mount_dir: Path) -> list[Layer] | None:
        """The lowers of the clone mounted at `mount_dir`, or None if it is not such a clone."""
        runtime = mount_dir.parent
        if mount_dir.name != MERGED or not is_overlay_clone(runtime):
            return None
        if not is_mount_point(mount_dir):
            return None
        return _lowers_of(runtime, read_meta(runtime / META))

    def _must_flatten(self, dst: Path, lowers: Sequence[Layer], runtime: Path) -> bool:
        """Would a clone of the new state exceed the depth or the mount-option limit?"""
        if len(lowers) + 1 > self.max_depth:
            return True
        chain = [dst / LAYER, *(layer.path for layer in lowers)]
        _cwd, options = overlay_options(chain, runtime / UPPER, runtime / WORK)
        return len(options.encode()) + OPTIONS_MARGIN > self.options_limit

    def _flatten_into(self, src: Path, dst: Path, cancel: CancelToken) -> Layer:
        """A full copy of the data dir `src` as `dst`'s layer, with no lowers."""
        layer = dst / LAYER
        layer.mkdir()
        copy_entries(data_entries(src), layer, "snapshot failed", cancel)
        copy_dir_attrs(src, layer)
        state_id = secrets.token_hex(16)
        _write_meta(
            dst,
            {
                "backend": self.kind,
                "format": FORMAT,
                "id": state_id,
                "lowers": [],
                "flattened": True,
            },
        )
        return Layer(layer, state_id)

    def _promote(self, runtime: Path, dst: Path, lowers: list[Layer]) -> None:
        """Turn the stopped clone's upper into `dst`'s layer and remount the clone on it.

        Not cancellable: it is a handful of fast system calls, and stopping half-way would
        leave the clone unmounted.
        """
        merged, upper = runtime / MERGED, runtime / UPPER
        layer = dst / LAYER
        state_id = secrets.token_hex(16)
        meta = {
            "backend": self.kind,
            "format": FORMAT,
            "id": state_id,
            "lowers": _lowers_json(dst, lowers),
            "flattened": False,
        }
        try:
            unmount(merged)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise SnapshotError("snapshot failed", f"cannot unmount {merged}: {exc}") from exc
            # Something still has files open in the clone: copy the upper instead (the clone
            # keeps standing on the old lowers, whose merged view is the same state).
            log.warning("clone %s is busy; copying its upper layer instead of moving it", merged)
            _copy_tree(upper, layer)
            _write_meta(dst, meta)
            return
        try:
            try:
                os.rename(upper, layer)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _copy_tree(upper, layer)
                remove_tree(upper)
        except BaseException:
            if upper.is_dir():  # nothing moved: put the clone back as it was
                with contextlib.suppress(OSError, SnapshotError):
                    mount_overlay([lw.path for lw in lowers], upper, runtime / WORK, merged)
            raise
        _write_meta(dst, meta)
        self._rebase_clone(runtime, [Layer(layer, state_id), *lowers], unmounted=True)

    def _rebase_clone(self, runtime: Path, lowers: list[Layer], *, unmounted: bool = False) -> None:
        """Remount the clone on `lowers` with a fresh upper (its merged view is unchanged)."""
        merged, upper, work = runtime / MERGED, runtime / UPPER, runtime / WORK
        if not unmounted:
            try:
                unmount(merged)
            except OSError as exc:
                log.warning("clone %s stays on its old layers: cannot unmount (%s)", merged, exc)
                return
            remove_tree(upper)
        owner = os.stat(lowers[0].path)
        remove_tree(work)
        self._make_clone_dirs(runtime, (owner.st_uid, owner.st_gid))
        _write_meta(
            runtime,
            {"backend": self.kind, "format": FORMAT, "lowers": _lowers_json(runtime, lowers)},
        )
        mount_overlay([layer.path for layer in lowers], upper, work, merged)

    # -- removal -------------------------------------------------------------------------------

    def remove(self, path: Path) -> None:
        """Unmount what is mounted at or below `path`, then `rm -rf` (SPEC §9.2 Destroy).

        Refused for a state whose layer a mounted clone stands on (a running instance or
        job): removing it would pull files from under a live server.
        """
        with self._layers:
            self._refuse_if_in_use(path)
            release_mounts_under(path, fs_type="overlay")
            remove_tree(path)

    @staticmethod
    def _refuse_if_in_use(path: Path) -> None:
        targets: set[str] = set()
        if path.name == LAYER and path.is_dir():
            targets.add(os.path.realpath(path))
        if (path / LAYER).is_dir():
            targets.add(os.path.realpath(path / LAYER))
        if not targets:
            return
        for entry in mount_table():
            if entry.fs_type != "overlay" or entry.mount_point.name != MERGED:
                continue
            runtime = entry.mount_point.parent
            if not is_overlay_clone(runtime):
                continue
            try:
                lowers = _lowers_of(runtime, read_meta(runtime / META))
            except SnapshotError:
                continue
            if any(os.path.realpath(layer.path) in targets for layer in lowers):
                raise StateInUse(
                    f"cannot remove {path}",
                    f"its layer is a lower layer of the mounted clone {runtime} (made by job "
                    f"{runtime.parent.name}); remove the instance or job that uses it first",
                )

    # -- dirs, mounts --------------------------------------------------------------------------

    def ensure_base_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def ensure_state_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def mount_dir_of(self, dst: Path) -> Path:
        """`dst/merged`, remounted if the clone exists but is not mounted; `dst` for a plain
        clone made by another backend (so a store that changed backends still finds it)."""
        if is_overlay_clone(dst):
            try:
                self.ensure_mounted(dst)
            except (OSError, SnapshotError) as exc:
                log.error("cannot remount overlay clone %s: %s", dst, exc)
            return dst / MERGED
        if (dst / "pgdata").is_dir() and not (dst / MERGED).exists():
            return dst
        return dst / MERGED

    def ensure_mounted(self, dst: Path) -> bool:
        """Mount the clone at `dst` again if it is not mounted (True when it mounted it)."""
        merged = dst / MERGED
        with self._layers:
            if is_mount_point(merged):
                return False
            lowers = _lowers_of(dst, read_meta(dst / META))
            problem = self._stack_problem([Layer(dst / UPPER, ""), *lowers])
            if problem is not None:
                raise SnapshotError("cannot remount clone", f"{problem} ({dst})")
            (dst / WORK).mkdir(mode=0o700, exist_ok=True)
            merged.mkdir(mode=0o700, exist_ok=True)
            mount_overlay([layer.path for layer in lowers], dst / UPPER, dst / WORK, merged)
            log.info("remounted overlay clone %s (%d lower layers)", dst, len(lowers))
            return True


# -- start-up sweep --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountSweep:
    """What `sweep_mounts` did."""

    released: list[Path]
    """Mounts unmounted (idle clones, leftovers of interrupted operations)."""
    kept: list[Path]
    """Clone mounts left alone because something uses them (a running server)."""


def sweep_mounts(root: Path, keep: Collection[Path] = ()) -> MountSweep:
    """Unmount overlay mounts under the store root that nothing uses (engine start).

    A clone mount at `jobs/<job>/runtime/merged` is unmounted only when the kernel says
    nothing uses it (umount2 without force fails with EBUSY while a server's working directory
    or an open file is inside), so the mounts of running instance servers stay. An idle
    clone's files stay on disk: an instance whose server is stopped is mounted again by
    `mount_dir_of` when the engine sets up its instance, and job recovery or deletion removes
    the rest. Any other overlay under the root (a renamed `.stale-*` runtime, an interrupted
    operation) is garbage: it is detached even when busy. Clone mounts in `keep` stay too: a
    container's bind mount of a clone lives in another mount namespace, so the kernel would
    let us unmount the host's mount under a running containerized server.
    """
    jobs = os.path.realpath(root / "jobs")
    kept_paths = {os.path.realpath(p) for p in keep}
    released: list[Path] = []
    kept: list[Path] = []
    for entry in mounts_under(root, fs_type="overlay"):
        mount_point = entry.mount_point
        runtime = mount_point.parent
        canonical = (
            mount_point.name == MERGED
            and runtime.name == "runtime"
            and str(runtime.parent.parent) == jobs
            and not is_stale_name(runtime.parent.name)
            and is_overlay_clone(runtime)
        )
        try:
            if canonical and os.path.realpath(mount_point) in kept_paths:
                kept.append(mount_point)
                continue
            if canonical:
                try:
                    unmount(mount_point)
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        kept.append(mount_point)
                    elif exc.errno != errno.EINVAL:
                        log.warning("cannot unmount idle clone %s: %s", mount_point, exc)
                    continue
                released.append(mount_point)
            elif release_mount(mount_point):
                released.append(mount_point)
        except SnapshotError as exc:
            log.warning("cannot unmount %s: %s", mount_point, exc.details or exc.message)
    return MountSweep(released, kept)


# -- helpers ---------------------------------------------------------------------------------------


def _copy_tree(src: Path, dst: Path) -> None:
    """`cp -a src dst`: everything, whiteouts (char devices) and opaque xattrs included."""
    run_tool(["cp", "-a", "--reflink=auto", "--", f"{src}/.", os.fspath(dst)], "snapshot failed")


__all__ = [
    "DEFAULT_MAX_DEPTH",
    "LAYER",
    "MERGED",
    "META",
    "UPPER",
    "WORK",
    "Layer",
    "MountSweep",
    "OverlayBackend",
    "current_layer_id",
    "is_overlay_clone",
    "is_overlay_state",
    "lookup",
    "plain_layer_id",
    "read_meta",
    "sweep_mounts",
]
