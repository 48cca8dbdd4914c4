"""Start-up: remove the members a crashed engine left (servers, mounts, clones).

Members have no rows, so the store is the record: every `jobs/pool-*` directory is a member
unless an instance row names its runtime dir — the engine died after handing it out, and it
is an instance now (only its `.pool-member` file is left to remove). Everything else is
stopped and removed: its server (servers outlive the engine), its overlay mount, its clone.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from sqlrs_engine.actors.snapshot import SnapshotClient
from sqlrs_engine.pool.warm_pool import MEMBER_FILE, MEMBER_PREFIX
from sqlrs_engine.runtime.base import Runtime

log = logging.getLogger(__name__)


def remove_orphan_members(
    jobs_dir: Path, instance_runtime_dirs: set[str], runtime: Runtime, snapshots: SnapshotClient
) -> list[str]:
    """Stop and remove every member left in `jobs_dir`; returns their ids."""
    removed: list[str] = []
    try:
        entries = sorted(p for p in jobs_dir.iterdir() if p.name.startswith(MEMBER_PREFIX))
    except FileNotFoundError:
        return removed
    for job_dir in entries:
        runtime_dir = job_dir / "runtime"
        if str(runtime_dir) in instance_runtime_dirs:
            with contextlib.suppress(OSError):
                (job_dir / MEMBER_FILE).unlink()
            continue
        try:
            _stop_server(job_dir, runtime_dir, runtime, snapshots)
            snapshots.remove_job_dir(job_dir.name)
        except Exception as error:
            log.error("pool: cannot remove member %s left by a crash: %s", job_dir.name, error)
            continue
        removed.append(job_dir.name)
    if removed:
        log.warning(
            "pool: removed %d member(s) left by a previous engine: %s", len(removed), removed
        )
    return removed


def _stop_server(
    job_dir: Path, runtime_dir: Path, runtime: Runtime, snapshots: SnapshotClient
) -> None:
    if not runtime_dir.is_dir():
        return
    image_id = _image_of(job_dir)
    data_dir = snapshots.mount_dir_of(runtime_dir)
    handle = runtime.adopt(image_id, data_dir)
    if handle is not None:
        runtime.kill(handle)


def _image_of(job_dir: Path) -> str:
    """The member's image (a crash right after its clone may have left no member file)."""
    try:
        value = json.loads((job_dir / MEMBER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    image = value.get("image_id") if isinstance(value, dict) else None
    return image if isinstance(image, str) else ""
