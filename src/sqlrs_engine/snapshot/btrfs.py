"""The `btrfs` snapshot backend: subvolumes and snapshots (SPEC §9.2).

- base: a subvolume (`btrfs subvolume create`; a leftover plain dir without a cluster is
  replaced; a plain dir that already holds a cluster — made by another backend — is kept and
  cloned by reflink copy instead).
- clone: a writable snapshot of the base/state (`btrfs subvolume snapshot src dst`); the
  store's markers and locks that a base snapshot carries are deleted from the clone.
- state: a read-only snapshot of the stopped clone (`btrfs subvolume snapshot -r`). A state
  cannot hold files of its own, so its build lock and marker live in `states/.build/`
  (`separate_build_meta`), next to `<id>.json`, which records the parent it was cloned from.
- removal: `btrfs subvolume delete` for every subvolume at or below the path (read-only
  snapshots cannot be emptied by `rm`), then `rm -rf` for what remains.

All of it is O(1) in the database size: btrfs shares extents and copies a block only when it
is written. `size_bytes` is what the state adds to its parent on disk: the bytes of its files
in extents the parent's same file does not use (FIEMAP, see `extents.py`).

Every operation first checks that the store root is still on btrfs (a loop or removable
filesystem can disappear between engine start and a job); if not, it fails with
`state store not ready`, as SPEC §9.2 asks before each job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Final

from sqlrs_engine.cancel import NEVER_CANCELLED, CancelToken
from sqlrs_engine.snapshot.base import (
    PG_VERSION,
    BackendKind,
    SnapshotError,
    data_dir_problem,
    find_data_file,
    state_problem,
)
from sqlrs_engine.snapshot.extents import added_bytes
from sqlrs_engine.snapshot.fsinfo import (
    BTRFS_SUBVOLUME_INO,
    fs_type_name,
    is_btrfs,
    is_subvolume,
    statfs_type,
)
from sqlrs_engine.snapshot.fsops import (
    check_no_overlap,
    copy_dir_attrs,
    copy_entries,
    data_entries,
    os_error_to_snapshot,
    refuse_unclean_source,
    remove_tree,
    run_tool,
    write_marker,
)
from sqlrs_engine.snapshot.layout import (
    INIT_MARKER,
    SEPARATE_BUILD_DIR,
    STORE_METADATA_NAMES,
    state_build_marker,
)
from sqlrs_engine.snapshot.mounts import release_mounts_under

log = logging.getLogger(__name__)

SUBVOLUME_SEARCH_DEPTH = 3
"""How deep `remove` looks for subvolumes below a path (`jobs/<id>/runtime` is 2 deep)."""


def state_record(state_dir: Path) -> Path:
    """`states/.build/<id>.json`: backend and parent of a btrfs state."""
    return state_dir.parent / SEPARATE_BUILD_DIR / f"{state_dir.name}.json"


def subvolumes_below(path: Path, depth: int = SUBVOLUME_SEARCH_DEPTH) -> list[Path]:
    """Subvolumes at or below `path` (up to `depth` levels), deepest first."""
    if not is_btrfs(path):
        return []
    found: list[Path] = []
    if is_subvolume(path):
        found.append(path)
    level = [path]
    for _ in range(depth):
        nxt: list[Path] = []
        for directory in level:
            try:
                with os.scandir(directory) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            child = Path(entry.path)
                            nxt.append(child)
                            # (readdir's d_ino of a subvolume is not 256; stat's st_ino is)
                            if entry.stat(follow_symlinks=False).st_ino == BTRFS_SUBVOLUME_INO:
                                found.append(child)
            except OSError:
                continue
        level = nxt
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


class BtrfsBackend:
    """Snapshot backend on btrfs subvolumes."""

    kind: Final[BackendKind] = "btrfs"
    separate_build_meta: Final[bool] = True

    def __init__(self, root: Path | None = None) -> None:
        """`root`: the store root, checked to still be btrfs before every change."""
        self.root = root

    def _check_ready(self) -> None:
        if self.root is None or is_btrfs(self.root):
            return
        try:
            found = fs_type_name(statfs_type(self.root))
        except OSError as exc:
            found = f"unreachable ({exc})"
        raise SnapshotError(
            "state store not ready",
            f"the btrfs snapshot backend was chosen at start, but store root {self.root} is "
            f"now {found}, not btrfs (was its btrfs filesystem unmounted?); mount it again or "
            "restart the engine",
        )

    @staticmethod
    def _btrfs(args: list[str], what: str, cancel: CancelToken = NEVER_CANCELLED) -> None:
        run_tool(["btrfs", *args], what, cancel)

    # -- clone ---------------------------------------------------------------------------------

    def clone(self, src: Path, dst: Path, *, cancel: CancelToken = NEVER_CANCELLED) -> Path:
        """A writable snapshot of `src` at `dst` (the mount dir)."""
        what = "snapshot clone failed"
        if not src.is_dir():
            raise SnapshotError(what, f"source {src} is not a directory")
        check_no_overlap(src, dst, what)
        self._check_ready()
        self._free_destination(dst, what)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            cancel.raise_if_cancelled()
            self._materialize(src, dst, what, cancel)
            _drop_store_metadata(dst)
        except BaseException as exc:
            self._discard(dst)
            if isinstance(exc, OSError):
                raise os_error_to_snapshot(what, exc) from exc
            raise
        return dst

    def _materialize(self, src: Path, dst: Path, what: str, cancel: CancelToken) -> None:
        """`dst` = writable subvolume with `src`'s data (snapshot, else reflink copy)."""
        if is_subvolume(src):
            try:
                self._btrfs(["subvolume", "snapshot", os.fspath(src), os.fspath(dst)], what)
                return
            except SnapshotError as exc:
                if "cross-device" not in (exc.details or "").lower():
                    raise
                log.info("%s is on another btrfs filesystem; copying it instead", src)
        else:
            log.info("%s is not a btrfs subvolume; cloning it by reflink copy", src)
        self._btrfs(["subvolume", "create", os.fspath(dst)], what)
        copy_entries(data_entries(src), dst, what, cancel)
        copy_dir_attrs(src, dst)

    @staticmethod
    def _free_destination(dst: Path, what: str) -> None:
        """btrfs creates the snapshot itself: an existing empty `dst` dir is removed first."""
        if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
            raise SnapshotError(what, f"destination {dst} exists and is not a directory")
        if dst.is_dir():
            if any(True for _ in os.scandir(dst)):
                raise SnapshotError(what, f"destination {dst} is not empty")
            if is_subvolume(dst):
                run_tool(["btrfs", "subvolume", "delete", os.fspath(dst)], what)
            else:
                dst.rmdir()

    def _discard(self, dst: Path) -> None:
        try:
            self.remove(dst)
        except (OSError, SnapshotError) as exc:
            log.warning("cannot clean up %s: %s", dst, exc)

    # -- snapshot ------------------------------------------------------------------------------

    def snapshot(
        self,
        src_mount_dir: Path,
        dst: Path,
        parent: Path | None,
        *,
        cancel: CancelToken = NEVER_CANCELLED,
    ) -> None:
        """A read-only snapshot of the stopped clone at state dir `dst`."""
        what = "snapshot failed"
        refuse_unclean_source(src_mount_dir)
        check_no_overlap(src_mount_dir, dst, what)
        self._check_ready()
        self._free_destination(dst, "snapshot failed")
        has_metadata = any(
            (src_mount_dir / name).is_file() or (src_mount_dir / name).is_symlink()
            for name in STORE_METADATA_NAMES
        )
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            cancel.raise_if_cancelled()
            if is_subvolume(src_mount_dir) and not has_metadata:
                self._btrfs(
                    ["subvolume", "snapshot", "-r", os.fspath(src_mount_dir), os.fspath(dst)], what
                )
            else:
                self._materialize(src_mount_dir, dst, what, cancel)
                _drop_store_metadata(dst)
                self._btrfs(["property", "set", "-ts", os.fspath(dst), "ro", "true"], what)
            record = state_record(dst)
            record.parent.mkdir(parents=True, exist_ok=True)
            write_marker(
                record,
                json.dumps(
                    {
                        "backend": self.kind,
                        "parent": os.path.relpath(parent, dst.parent) if parent else None,
                    }
                ),
            )
        except BaseException as exc:
            self._discard(dst)
            if isinstance(exc, OSError):
                raise os_error_to_snapshot(what, exc) from exc
            raise

    # -- removal and dirs ----------------------------------------------------------------------

    def remove(self, path: Path) -> None:
        """Delete subvolumes at/below `path`, then `rm -rf` the rest (with retries)."""
        release_mounts_under(path, fs_type="overlay")
        remove_tree(path, remover=self._delete_subvolumes)
        if path.parent.name == "states":
            with contextlib.suppress(FileNotFoundError):
                state_record(path).unlink()

    @staticmethod
    def _delete_subvolumes(path: Path) -> None:
        for subvolume in subvolumes_below(path):
            run_tool(
                ["btrfs", "subvolume", "delete", os.fspath(subvolume)],
                f"cannot remove {subvolume}",
            )

    def ensure_base_dir(self, path: Path) -> None:
        """Make the base a subvolume (a plain dir that already holds a cluster is kept)."""
        if is_subvolume(path):
            return
        self._check_ready()
        if path.exists():
            if find_data_file(path, PG_VERSION) is not None or (path / INIT_MARKER).exists():
                return
            remove_tree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._btrfs(["subvolume", "create", os.fspath(path)], "cannot create base dir")
        except SnapshotError:
            if not is_subvolume(path):  # another process may have created it meanwhile
                raise

    def ensure_state_dir(self, path: Path) -> None:
        """Only the parent: the snapshot creates the state dir itself."""
        path.parent.mkdir(parents=True, exist_ok=True)

    def validate_state(self, path: Path) -> str | None:
        return state_problem(path, state_build_marker(path, separate=self.separate_build_meta))

    def data_problem(self, path: Path, *, require_pg_version: bool = True) -> str | None:
        return data_dir_problem(path, require_pg_version=require_pg_version)

    def size_bytes(self, path: Path) -> int:
        """Bytes in the state's extents that its parent does not share (all when no parent)."""
        return added_bytes(path, self.parent_of(path))

    @staticmethod
    def parent_of(path: Path) -> Path | None:
        """The base/state dir a state was cloned from, if recorded and still present."""
        try:
            data = json.loads(state_record(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        parent = data.get("parent") if isinstance(data, dict) else None
        if not isinstance(parent, str):
            return None
        resolved = Path(os.path.normpath(path.parent / parent))
        return resolved if resolved.is_dir() else None

    def mount_dir_of(self, dst: Path) -> Path:
        return dst


def _drop_store_metadata(dst: Path) -> None:
    """Markers and locks of the source are not part of a clone or a state."""
    for name in STORE_METADATA_NAMES:
        path = dst / name
        if path.is_file() or path.is_symlink():
            path.unlink()


__all__ = ["BtrfsBackend", "state_record", "subvolumes_below"]
