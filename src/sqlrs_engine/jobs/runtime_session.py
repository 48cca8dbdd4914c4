"""The runtime a job holds while it builds: one writable clone and the server on it.

A job starts at most one server at a time and keeps it across steps (step i+1 runs on the
server that step i left, after the snapshot restart), then hands it to the instance it
creates. If the job fails or is cancelled, `release` stops the server and removes the clone,
so nothing is left behind; after `hand_over` the instance owns both.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlrs_engine.actors.snapshot import SnapshotClient
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import failures_reported_as
from sqlrs_engine.runtime.base import LogSink, Runtime, ServerHandle

log = logging.getLogger(__name__)


class RuntimeSession:
    """The (at most one) clone + server a job currently holds."""

    def __init__(
        self,
        job_id: str,
        image_id: str,
        runtime: Runtime,
        snapshots: SnapshotClient,
        log_line: LogSink,
        cancel: CancelToken,
    ) -> None:
        self.job_id = job_id
        self.image_id = image_id
        self._runtime = runtime
        self._snapshots = snapshots
        self._log = log_line
        self._cancel = cancel
        self.handle: ServerHandle | None = None
        self.mount_dir: Path | None = None
        self.source: Path | None = None
        self._handed_over = False

    @property
    def runtime_dir(self) -> Path:
        return self._snapshots.layout.job_runtime_dir(self.job_id)

    @property
    def held(self) -> bool:
        return self.handle is not None

    def start_from(self, source: Path, is_state: bool) -> ServerHandle:
        """Clone `source` (base or state dir) into the runtime dir and start a server on it."""
        if self.handle is None:
            self._stop_leftover_server()
        self.release()
        with failures_reported_as("cannot clone state"):
            self.mount_dir = self._snapshots.clone_to_runtime(
                source, self.job_id, require_pg_version=is_state, cancel=self._cancel
            )
        self.source = source
        if not is_state:
            # A state's files are the server user's already (made so when it was built, see
            # StateBuilder._build_state): a cache hit walks none of them. The base is cloned
            # only by builds; `runtime.start` still gives the clone's root its owner.
            self._runtime.prepare_data_dir(self.mount_dir)
        self.handle = self._runtime.start(self.image_id, self.mount_dir, self._log, self._cancel)
        return self.handle

    def discard_leftovers(self) -> None:
        """Stop a server an interrupted run of this job left, and remove its clone."""
        self._stop_leftover_server()
        self._snapshots.remove_runtime_dir(self.job_id)

    def _stop_leftover_server(self) -> None:
        """A job resumed after an engine crash may find its old server still running."""
        if not self.runtime_dir.exists():
            return
        try:
            data_dir = self._snapshots.mount_dir_of(self.runtime_dir)
            leftover = self._runtime.adopt(self.image_id, data_dir)
        except Exception as error:
            log.warning("job %s: cannot inspect old runtime: %s", self.job_id, error)
            return
        if leftover is not None:
            self._log(f"stopping server {leftover.runtime_id} left by an interrupted run")
            self._runtime.kill(leftover)

    def stop_for_snapshot(self) -> Path:
        """Cleanly stop the server (checkpoint; no crash recovery later); returns the data dir."""
        assert self.handle is not None and self.mount_dir is not None
        self._log("pg_ctl: stop for snapshot")
        with failures_reported_as("snapshot prepare failed"):
            self._runtime.stop(self.handle, self._log)
        return self.mount_dir

    def restart(self) -> ServerHandle:
        """Start the server again on the same data dir after a snapshot."""
        assert self.mount_dir is not None
        self._log("pg_ctl: start after snapshot")
        port = self.handle.port if self.handle is not None else None
        with failures_reported_as("snapshot resume failed"):
            self.handle = self._runtime.start(
                self.image_id, self.mount_dir, self._log, self._cancel, port
            )
        return self.handle

    def restart_after_failure(self) -> None:
        """Best effort after a failed snapshot: the original error is what gets reported."""
        try:
            self.restart()
        except Exception as error:
            log.warning("job %s: restart after a failed snapshot failed: %s", self.job_id, error)

    def hand_over(self) -> tuple[ServerHandle, Path]:
        """Give the running server and its clone to an instance; the session forgets them."""
        assert self.handle is not None
        handed = (self.handle, self.runtime_dir)
        self._handed_over = True
        self.handle = None
        self.mount_dir = None
        self.source = None
        return handed

    def release(self) -> None:
        """Stop the server (if any) and remove the clone; safe to call more than once."""
        if self._handed_over:
            return  # the clone and its server belong to an instance now
        handle, self.handle = self.handle, None
        if handle is not None:
            try:
                self._runtime.kill(handle)
            except Exception:
                log.exception("job %s: cannot stop runtime %s", self.job_id, handle.runtime_id)
        if self.mount_dir is not None or self.runtime_dir.exists():
            self.mount_dir = None
            self.source = None
            try:
                self._snapshots.remove_runtime_dir(self.job_id)
            except Exception:
                log.exception("job %s: cannot remove runtime dir %s", self.job_id, self.runtime_dir)
