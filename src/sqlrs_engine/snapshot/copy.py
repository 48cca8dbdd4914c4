"""The `copy` snapshot backend: states and clones are full copies (reflinked where possible).

`cp -a --reflink=auto` shares extents on filesystems that can (btrfs, XFS with reflink) and
falls back to a plain copy elsewhere (ext4), keeping ownership, modes, symlinks and holes.
It works everywhere, needs no privileges, and is the fallback for the other backends.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from sqlrs_engine.cancel import NEVER_CANCELLED, CancelToken
from sqlrs_engine.snapshot.base import (
    BackendKind,
    SnapshotError,
    data_dir_problem,
    state_problem,
)
from sqlrs_engine.snapshot.extents import added_bytes
from sqlrs_engine.snapshot.fsinfo import REFLINK_MAGICS, statfs_type
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
    tree_size,
)
from sqlrs_engine.snapshot.layout import STORE_METADATA_NAMES, state_build_marker


class CopyBackend:
    """Snapshot backend that copies whole data dirs."""

    kind: Final[BackendKind] = "copy"
    separate_build_meta: Final[bool] = False

    def clone(self, src: Path, dst: Path, *, cancel: CancelToken = NEVER_CANCELLED) -> Path:
        """Copy data dir `src` into new/empty `dst`; `dst` is the mount dir."""
        what = "snapshot clone failed"
        if not src.is_dir():
            raise SnapshotError(what, f"source {src} is not a directory")
        check_no_overlap(src, dst, what)
        created = self._prepare_empty_dst(dst, what)
        try:
            copy_entries(data_entries(src), dst, what, cancel)
            copy_dir_attrs(src, dst)
        except BaseException as exc:
            self._discard(dst, created=created)
            if isinstance(exc, OSError):
                raise os_error_to_snapshot(what, exc) from exc
            raise
        return dst

    def snapshot(
        self,
        src_mount_dir: Path,
        dst: Path,
        parent: Path | None,
        *,
        cancel: CancelToken = NEVER_CANCELLED,
    ) -> None:
        """Copy a stopped server's data dir into state dir `dst` (`parent` is unused)."""
        what = "snapshot failed"
        refuse_unclean_source(src_mount_dir)
        check_no_overlap(src_mount_dir, dst, what)
        check_state_dst(dst, what)
        try:
            dst.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error_to_snapshot(what, exc) from exc
        try:
            copy_entries(data_entries(src_mount_dir), dst, what, cancel)
            copy_dir_attrs(src_mount_dir, dst)
        except BaseException as exc:
            self._discard(dst, created=False)
            if isinstance(exc, OSError):
                raise os_error_to_snapshot(what, exc) from exc
            raise

    def remove(self, path: Path) -> None:
        """`rm -rf` with retries, then rename to `.stale-<ns>` (SPEC §6)."""
        remove_tree(path)

    def ensure_base_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def ensure_state_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def validate_state(self, path: Path) -> str | None:
        return state_problem(path, state_build_marker(path, separate=self.separate_build_meta))

    def size_bytes(self, path: Path) -> int:
        """Sum of regular-file sizes: a copy owns every byte it holds."""
        return tree_size(path)

    def size_bytes_against(self, path: Path, parent: Path | None) -> int:
        """`size_bytes` of a state just copied from a clone of `parent` (issue 14).

        On a filesystem where `cp --reflink=auto` shares extents (btrfs, XFS) the copy
        shares every block its step did not write with `parent`: it adds only the bytes in
        extents the parent's same file does not use (FIEMAP, `extents.py`). Elsewhere, and
        without a parent, every byte is its own: `size_bytes`.
        """
        if parent is None or statfs_type(path) not in REFLINK_MAGICS:
            return self.size_bytes(path)
        return added_bytes(path, parent)

    def mount_dir_of(self, dst: Path) -> Path:
        return dst

    def data_problem(self, path: Path, *, require_pg_version: bool = True) -> str | None:
        """A copy state is a plain data dir."""
        return data_dir_problem(path, require_pg_version=require_pg_version)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _prepare_empty_dst(dst: Path, what: str) -> bool:
        """Create `dst` (True) or accept an existing empty dir (False); refuse anything else."""
        if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
            raise SnapshotError(what, f"destination {dst} exists and is not a directory")
        if dst.is_dir():
            if any(True for _ in os.scandir(dst)):
                raise SnapshotError(what, f"destination {dst} is not empty")
            return False
        try:
            dst.mkdir(parents=True)
        except FileExistsError as exc:
            raise SnapshotError(what, f"destination {dst} appeared concurrently") from exc
        except OSError as exc:
            raise os_error_to_snapshot(what, exc) from exc
        return True

    def _discard(self, dst: Path, *, created: bool) -> None:
        """Best-effort removal of a half-made copy so failures leave nothing behind."""
        try:
            if created:
                self.remove(dst)
            elif dst.is_dir():
                clear_dir(dst, STORE_METADATA_NAMES, self.remove)
        except (OSError, SnapshotError):
            pass


__all__ = ["CopyBackend"]
