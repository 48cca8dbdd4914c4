"""File-system helpers shared by the snapshot backends and the store.

Copies and removals use the coreutils programs (`cp -a`, `rm -rf`) through `process.run`:
they are the fastest way to copy a data dir while keeping ownership, modes, symlinks and
sparseness, they can reflink, and running them as a child process makes them cancellable.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from sqlrs_engine.cancel import NEVER_CANCELLED, CancelToken
from sqlrs_engine.errors import reports_no_space
from sqlrs_engine.process import ProcessError, run
from sqlrs_engine.snapshot.base import DIRTY_REASON, SnapshotError, data_dir_problem
from sqlrs_engine.snapshot.layout import (
    BUILD_LOCK,
    STORE_METADATA_NAMES,
    is_stale_name,
    stale_name,
)

log = logging.getLogger(__name__)

REMOVE_ATTEMPTS = 3
REMOVE_BACKOFF = 0.1
"""Seconds before the 2nd removal attempt; doubled for each further one."""
_ARGV_CHUNK = 512
"""Entries per `cp` invocation, far below any ARG_MAX."""


def run_tool(argv: Sequence[str], what: str, cancel: CancelToken = NEVER_CANCELLED) -> None:
    """Run a file tool to completion; a failure raises `SnapshotError(what, output)`."""
    try:
        result = run(argv, cancel=cancel, tail_bytes=16 * 1024)
    except ProcessError as exc:
        raise SnapshotError(what, str(exc)) from exc
    if result.exit_code != 0:
        output = result.output.strip() or f"{os.path.basename(argv[0])} exited {result.exit_code}"
        raise SnapshotError(what, output, no_space=reports_no_space(output))


def resolved(path: Path) -> Path:
    """Absolute, symlink-free form of a path that may not exist yet."""
    return Path(os.path.realpath(path))


def check_no_overlap(src: Path, dst: Path, what: str) -> None:
    """Refuse copies where one side is inside the other (a copy would recurse or clobber)."""
    s, d = resolved(src), resolved(dst)
    if s == d or s in d.parents:
        raise SnapshotError(what, f"destination {dst} is inside source {src}")
    if d in s.parents:
        raise SnapshotError(what, f"source {src} is inside destination {dst}")


def data_entries(directory: Path) -> list[Path]:
    """Top-level entries of a data dir, without store metadata (markers, locks)."""
    with os.scandir(directory) as it:
        return sorted(Path(entry.path) for entry in it if entry.name not in STORE_METADATA_NAMES)


def copy_entries(
    entries: Sequence[Path], dst: Path, what: str, cancel: CancelToken = NEVER_CANCELLED
) -> None:
    """`cp -a --reflink=auto` entries into existing directory `dst` (reflinks where possible)."""
    for start in range(0, len(entries), _ARGV_CHUNK):
        chunk = [os.fspath(p) for p in entries[start : start + _ARGV_CHUNK]]
        run_tool(
            ["cp", "-a", "--reflink=auto", f"--target-directory={dst}", "--", *chunk],
            what,
            cancel,
        )


def copy_dir_attrs(src: Path, dst: Path) -> None:
    """Give `dst` the owner, group and mode of `src` (what `cp -a` does for a copied dir)."""
    st = os.stat(src)
    # chown first: it clears set-id bits that chmod then restores.
    with contextlib.suppress(PermissionError):
        os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))


def tree_size(path: Path, *, allocated: bool = False) -> int:
    """Sum of regular-file sizes under `path` (symlinks not followed) — SPEC §9.6.

    `allocated`: count the blocks the files occupy on disk (`st_blocks`) instead of their
    apparent sizes — what a directory of a state's own files really costs the store.
    Files that vanish during the walk are skipped; a missing `path` raises
    FileNotFoundError so callers can tell "empty" from "gone".
    """

    def size_of(st: os.stat_result) -> int:
        return st.st_blocks * 512 if allocated else st.st_size

    total = 0
    stack = [os.fspath(path)]
    root_st = os.lstat(path)
    if stat.S_ISREG(root_st.st_mode):
        return size_of(root_st)
    if not stat.S_ISDIR(root_st.st_mode):
        return 0
    while stack:
        current = stack.pop()
        try:
            it = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += size_of(entry.stat(follow_symlinks=False))
                except FileNotFoundError:
                    continue
    return total


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def remove_tree(
    path: Path,
    *,
    attempts: int = REMOVE_ATTEMPTS,
    backoff: float = REMOVE_BACKOFF,
    remover: Callable[[Path], None] | None = None,
) -> None:
    """Remove `path` (any file type) all or nothing, with retries.

    `remover` is the backend-specific first step (unmount, subvolume delete). Whatever is
    left is then moved aside to `<path>.stale-<ns>` (SPEC §6) by one rename in the same
    directory, and only the moved copy is deleted. The rename is what makes removal
    all-or-nothing for the caller: an immutable or busy parent refuses it before a single
    file is deleted (an `rm -rf` in place would empty the dir and then fail on the dir
    itself, leaving a row that points at a gutted data dir). A moved copy that cannot be
    deleted is logged and left for `StateStore.sweep_stale`; the name is free either way.
    Raises `SnapshotError` only when `path` still exists, untouched by us, at the end.
    """
    if is_stale_name(path.name):
        _delete_in_place(path, remover)  # a leftover being swept: it is aside already
        return
    errors: list[str] = []
    for attempt in range(max(1, attempts)):
        if not _exists(path):
            return
        if attempt:
            time.sleep(backoff * (2 ** (attempt - 1)))
        try:
            if remover is not None:
                remover(path)
            if not _exists(path):
                return
            moved = stale_name(path, time.time_ns())
            os.rename(path, moved)
        except SnapshotError as exc:
            errors.append(exc.details or exc.message)
            continue
        except OSError as exc:
            if not _exists(path):
                return
            errors.append(f"cannot move it aside: {exc}")
            continue
        try:
            _delete_in_place(moved, None)
        except SnapshotError as exc:
            log.warning("stale copy %s left behind: %s", moved, exc.details or exc.message)
        return
    raise SnapshotError(f"cannot remove {path}", "; ".join(errors[-1:]))


def _delete_in_place(path: Path, remover: Callable[[Path], None] | None) -> None:
    """The backend step, then `rm -rf`, on a tree nobody can see under its old name."""
    if remover is not None and _exists(path):
        remover(path)
    if _exists(path):
        run_tool(["rm", "-rf", "--", os.fspath(path)], f"cannot remove {path}")


def clear_dir(directory: Path, keep: Iterable[str], remove: Callable[[Path], None]) -> None:
    """Remove every entry of `directory` except the names in `keep`."""
    keep_names = set(keep)
    with os.scandir(directory) as it:
        victims = [Path(entry.path) for entry in it if entry.name not in keep_names]
    for victim in victims:
        remove(victim)


def write_marker(path: Path, content: str = "ok") -> None:
    """Atomically write a marker file (mode 0600): it appears complete or not at all."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            data = memoryview(content.encode())
            while data:  # a short write (disk nearly full) must not pass for a whole one
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


_libc = ctypes.CDLL(None, use_errno=True)


def sync_filesystem(path: Path) -> None:
    """Flush every dirty page of the filesystem holding `path` to disk (syncfs(2)).

    A marker (`.init.ok`, `.build.ok`) promises that the data beside it survives a power
    loss; the data was written without fsync (initdb `--no-sync`, copies, renames), so the
    whole filesystem is flushed once before the marker is written: one call instead of an
    fsync per file. Falls back to sync(2) where syncfs is unavailable.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    except AttributeError:
        os.sync()
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_unclean_source(src: Path) -> None:
    """Refuse to snapshot a data dir with `postmaster.pid` (dirty) or without `PG_VERSION`."""
    problem = data_dir_problem(src, require_pg_version=True)
    if problem == DIRTY_REASON:
        raise SnapshotError(
            "snapshot refused",
            f"postmaster.pid present in {src}: the server was not stopped cleanly (a snapshot "
            "would be a dirty state); stop it with pg_ctl stop -m fast first",
        )
    if problem is not None:
        raise SnapshotError("snapshot refused", f"{problem} ({src})")


def check_state_dst(dst: Path, what: str) -> None:
    """A state dir to snapshot into must be absent or hold nothing but its build lock."""
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise SnapshotError(what, f"state dir {dst} exists and is not a directory")
    if dst.exists():
        leftovers = sorted(p.name for p in dst.iterdir() if p.name != BUILD_LOCK)
        if leftovers:
            raise SnapshotError(
                what,
                f"state dir {dst} is not empty ({', '.join(leftovers[:5])}); "
                "reset it before taking a new snapshot",
            )


def os_error_to_snapshot(what: str, exc: OSError) -> SnapshotError:
    """Wrap an OSError, keeping the ENOSPC signal."""
    return SnapshotError(what, str(exc), no_space=exc.errno == errno.ENOSPC)


__all__ = [
    "check_no_overlap",
    "check_state_dst",
    "clear_dir",
    "copy_dir_attrs",
    "copy_entries",
    "data_entries",
    "fsync_dir",
    "os_error_to_snapshot",
    "refuse_unclean_source",
    "remove_tree",
    "resolved",
    "run_tool",
    "sync_filesystem",
    "tree_size",
    "write_marker",
]
