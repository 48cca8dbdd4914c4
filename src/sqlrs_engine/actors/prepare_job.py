"""The PrepareJob actor: supervisor of one job (ARCHITECTURE rules 3 and 4).

The job's work runs on a worker thread that the actor starts and watches, so the actor's
mailbox stays free to answer `cancel` and `is_running` while psql or a copy runs. Whatever
ends the worker — success, a failure, an unexpected exception — is recorded by the
supervisor code it runs; the actor then stops itself. Stopping the actor from outside (engine
shutdown) kills the job's processes and leaves the job to recovery.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from sqlrs_engine.jobs.services import JobServices
from sqlrs_engine.jobs.supervisor import JobSupervisor

log = logging.getLogger(__name__)

SHUTDOWN_JOIN = 20.0
"""Seconds the actor waits at shutdown for its worker to clean up after being cancelled."""


class PrepareJobActor(pykka.ThreadingActor):
    """Owns one job's worker thread and its cancellation."""

    def __init__(self, job_id: str, services: JobServices) -> None:
        super().__init__()
        self.job_id = job_id
        self._supervisor = JobSupervisor(job_id, services)
        self._finished = threading.Event()
        self._worker = threading.Thread(target=self._work, name=f"job-{job_id[:8]}", daemon=True)

    def on_start(self) -> None:
        self._worker.start()

    def _work(self) -> None:
        try:
            self._supervisor.run()
        finally:
            self._finished.set()
            # The job is over: stop this actor without waiting (the worker never waits on it).
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.stop(block=False)

    def cancel(self) -> bool:
        """Ask the job to stop: running programs are killed at once. True if it was running."""
        running = self._worker.is_alive()
        if running:
            self._supervisor.cancel()
        return running

    def is_running(self) -> bool:
        return self._worker.is_alive()

    def on_stop(self) -> None:
        if not self._finished.is_set() and self._worker.is_alive():
            # Engine shutdown: kill the job's processes; the job stays `running` for recovery.
            self._supervisor.cancel(shutdown=True)
            self._worker.join(timeout=SHUTDOWN_JOIN)
            if self._worker.is_alive():
                log.error("job %s worker did not stop within %.0fs", self.job_id, SHUTDOWN_JOIN)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        log.error("job actor %s failed: %s", self.job_id, exception_value)
        self._supervisor.cancel()


class PrepareJobProxy(ActorMemberMixin, pykka.ActorProxy[PrepareJobActor]):
    cancel = proxy_method(PrepareJobActor.cancel)
    is_running = proxy_method(PrepareJobActor.is_running)
