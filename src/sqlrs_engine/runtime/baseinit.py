"""Base state initialization, once per image, safe across threads and processes (SPEC §9.3).

`engines/<engine>/<version>/base/` holds an initialized cluster (`pgdata/`) and the marker
`.init.ok` once it is complete. Initialization happens under `base/.init.lock`, a `FileLock`
(flock: released by the kernel if the engine dies mid-init, so no staleness rule is needed).
Differences from the reference: the lock file is left in place (harmless, see locks.py), and a
waiter does not poll the marker while waiting — it gets the lock right after the initializer
wrote the marker and released it, then sees the marker and returns.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.dbms.postgres import has_pg_version
from sqlrs_engine.locks import FileLock
from sqlrs_engine.runtime.base import LogSink, Runtime

INIT_MARKER = ".init.ok"
INIT_LOCK = ".init.lock"


def base_ready(base_dir: Path) -> bool:
    return (base_dir / INIT_MARKER).is_file()


def write_marker(path: Path, content: str = "ok") -> None:
    """Write a marker file atomically (temp file + rename), mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_base(
    runtime: Runtime,
    resolved_image_id: str,
    base_dir: Path,
    log: LogSink,
    cancel: CancelToken,
    *,
    ensure_dir: Callable[[Path], None] | None = None,
    lock_timeout: float | None = None,
) -> bool:
    """Make `base_dir` an initialized base for `resolved_image_id`; True if this call ran initdb.

    `ensure_dir` creates the base dir (a snapshot backend's EnsureBaseDir, e.g. a btrfs
    subvolume); default `mkdir -p`. Raises what `runtime.init_base` raises (JobFailure
    `cannot initialize base state`), JobFailure `cancelled`, or `LockTimeout`.
    """
    if base_ready(base_dir):
        return False
    if ensure_dir is not None:
        ensure_dir(base_dir)
    else:
        base_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(base_dir / INIT_LOCK, cancel=cancel, timeout=lock_timeout):
        if base_ready(base_dir):
            return False
        if has_pg_version(base_dir):
            write_marker(base_dir / INIT_MARKER)
            return False
        for child in base_dir.iterdir():
            if child.name == INIT_LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        runtime.init_base(resolved_image_id, base_dir, log, cancel)
        write_marker(base_dir / INIT_MARKER)
        return True
