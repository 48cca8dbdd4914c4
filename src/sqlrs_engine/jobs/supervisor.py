"""Running one job from start to terminal status, and turning any failure into its error.

This is the body of a PrepareJob actor's worker thread. Whatever happens inside (a
`JobFailure`, an unexpected exception, a killed process), the job ends `failed` with an
ErrorResponse and its runtime released, or — when the engine is shutting down — stays
`running` in the database so that recovery resumes it at the next start (SPEC §1.5, §4.8).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
import ujson

from sqlrs_engine.actors.instance import instance_proxy
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.clock import now_rfc3339
from sqlrs_engine.errors import JobFailure, error_response
from sqlrs_engine.jobs.builder import StateBuilder
from sqlrs_engine.jobs.event_log import Item, JobEventLog, Stored
from sqlrs_engine.jobs.failure_log import log_job_failure
from sqlrs_engine.jobs.resume import StoredPlan
from sqlrs_engine.jobs.services import ASK_TIMEOUT, JobServices
from sqlrs_engine.jobs.tasks import TaskTracker
from sqlrs_engine.persistence.guard import StorageError
from sqlrs_engine.prepare.job_request import PrepareRequest

log = logging.getLogger(__name__)

ADOPT_TIMEOUT = 180.0
"""Seconds to wait for an adopted instance's server (a restart starts it again)."""

RECORD_RETRY_SECONDS = 60.0
"""How long a job keeps trying to record how it ended while state.db refuses writes."""


class RegistrySink:
    """Sends a job's batches of events and row changes to the Registry, one message each."""

    def __init__(self, job_id: str, services: JobServices) -> None:
        self._job_id = job_id
        self._registry = services.registry

    def record_batch(self, items: list[Item]) -> Stored:
        future = self._registry.record_events(self._job_id, items)

        def stored(timeout: float | None) -> bool:
            # No timeout by default: this is flow control. A dead Registry fails the future.
            try:
                future.get(timeout=timeout)
            except pykka.Timeout:
                return False
            return True

        return stored


def job_event_log(job_id: str, services: JobServices) -> JobEventLog:
    """The event log of a job, its full task logs under `<jobs dir>/<job_id>/logs/`."""
    log_dir = services.jobs_dir / job_id / "logs" if services.jobs_dir is not None else None
    return JobEventLog(
        RegistrySink(job_id, services),
        services.heartbeat,
        job_id=job_id,
        log_dir=log_dir,
        max_task_lines=services.max_task_log_lines,
    )


class JobSupervisor:
    """Runs one job on the calling thread; `cancel` may be called from any thread."""

    def __init__(self, job_id: str, services: JobServices) -> None:
        self.job_id = job_id
        self.services = services
        self.token = CancelToken()
        self.shutting_down = threading.Event()
        self.events = job_event_log(job_id, services)
        self.tasks = TaskTracker(job_id, self.events)
        self._job: StateBuilder | None = None

    def cancel(self, shutdown: bool = False) -> None:
        if shutdown:
            self.shutting_down.set()
        self.token.cancel()

    def run(self) -> None:
        registry = self.services.registry
        try:
            row = registry.job_row(self.job_id).get(timeout=ASK_TIMEOUT)
            if row is None:
                log.warning("job %s vanished before it started", self.job_id)
                return
            request = self._load_request(row)
            stored = StoredPlan(
                row.get("signature"), registry.task_rows(self.job_id).get(timeout=ASK_TIMEOUT)
            )
            self._mark_running()
            self.events.start_heartbeat()
            adopted = self._adopt_created_instance(row, stored)
            if adopted is not None:
                self._succeed(adopted)
                return
            self._run(request, stored)
        except JobFailure as failure:
            self._fail(failure.to_dict())
        except StorageError as error:
            # state.db refused a write the job needed (a full disk): the job fails with that
            # reason, recorded once space is back (see `_durably`).
            self._fail(error.to_dict())
        except Exception as error:
            log.exception("job %s failed unexpectedly", self.job_id)
            self._fail(error_response("internal_error", "internal error", str(error)))
        finally:
            self.events.stop_heartbeat()
            self._close_log()
            if self._job is not None:
                self._job.release()
            self._finish()

    def _close_log(self) -> None:
        try:
            self.events.close()
        except StorageError as error:
            log.warning("job %s: its last log lines were not stored: %s", self.job_id, error)
        except Exception:
            log.exception("job %s: cannot store its last log lines", self.job_id)

    def _load_request(self, row: dict[str, Any]) -> PrepareRequest:
        try:
            return PrepareRequest.from_request_json(ujson.loads(row["request_json"] or "{}"))
        except Exception as error:
            raise JobFailure("internal_error", "cannot restore job request", str(error)) from None

    def _mark_running(self) -> None:
        self.events.job_row({"status": "running", "started_at": now_rfc3339()})
        self.events.status("running")  # with the row, in one transaction

    def _adopt_created_instance(
        self, row: dict[str, Any], stored: StoredPlan
    ) -> dict[str, Any] | None:
        """A resumed job whose instance already exists (the engine died between creating
        it and recording the job's success) finishes by handing out *that* instance: never
        a rebuild over its data directory, never a second instance row (issue 11)."""
        registry = self.services.registry
        instance = registry.instance_of_job(self.job_id).get(timeout=ASK_TIMEOUT)
        if instance is None:
            return None
        instance_id = instance["instance_id"]
        ref = registry.instance_actor(instance_id).get(timeout=ASK_TIMEOUT)
        if ref is None:
            raise JobFailure(
                "internal_error", "instance not found", f"instance {instance_id} has no actor"
            )
        self.events.log(f"instance {instance_id} was created before a restart: handing it out")
        server = (
            instance_proxy(ref).ensure_running(self.events.log, registry).get(timeout=ADOPT_TIMEOUT)
        )
        for task in stored.rows:
            if task.get("status") != "succeeded":
                self.tasks.succeed(task["task_id"])
        result: dict[str, Any] = {
            "dsn": server.handle.dsn,
            "instance_id": instance_id,
            "state_id": instance["state_id"],
            "image_id": instance["image_id"],
            "prepare_kind": row["prepare_kind"],
            "prepare_args_normalized": row["prepare_args_normalized"],
        }
        if instance.get("expires_at"):
            result["expires_at"] = instance["expires_at"]
        return result

    def _run(self, request: PrepareRequest, stored: StoredPlan) -> None:
        job = self._job = StateBuilder(
            self.job_id, request, self.services, self.events, self.tasks, self.token
        )
        job.discard_interrupted_runtime()
        if not request.plan_only:
            self.tasks.start("plan")  # its row is written by planning itself
        job.make_plan(stored)
        self.tasks.succeed("plan")
        self._trim(job.signature)
        if request.plan_only:
            for task in job.plan[1:]:
                self.tasks.succeed(task.task_id)
            self._succeed(None)
            return
        result = job.execute()
        self._succeed(result)

    def _succeed(self, result: dict[str, Any] | None) -> None:
        fields: dict[str, Any] = {"status": "succeeded", "finished_at": now_rfc3339()}
        if result is not None:
            fields["result"] = result
        # The job's row, its status and result events and every task change still pending
        # (a cache hit's whole bookkeeping after planning): one transaction.
        self.events.job_row(fields)
        self.events.status("succeeded", wait=False)
        if result is not None:
            self.events.result(result, wait=False)
        self._durably("its success", self.events.flush)

    def _fail(self, error: dict[str, Any]) -> None:
        if self.shutting_down.is_set():
            log.info("job %s interrupted by shutdown; recovery resumes it", self.job_id)
            return
        if self.token.cancelled and error.get("code") != "cancelled":
            error = error_response("cancelled", "job cancelled")
        failing_task = self.tasks.running
        log_job_failure(self.job_id, error, failing_task)
        fields = {"status": "failed", "finished_at": now_rfc3339(), "error": error}
        try:
            if failing_task is not None:
                self.tasks.fail(failing_task, error)
            self.events.job_row(fields)
            self.events.status("failed", wait=False)
            self.events.error(error, wait=False)
            self._durably("its failure", self.events.flush)
        except StorageError as still:
            log.error(
                "job %s: cannot record its failure (%s); it stays running in state.db and "
                "the next engine start resumes it",
                self.job_id,
                still,
            )
        except Exception:
            log.exception("job %s: cannot record its failure", self.job_id)

    def _durably(self, what: str, write: Callable[[], object]) -> None:
        """Run a final write of the job, retrying while state.db refuses it (a full disk may
        be freed meanwhile) for up to RECORD_RETRY_SECONDS; then the error propagates."""
        deadline = time.monotonic() + RECORD_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                write()
                return
            except StorageError as error:
                if time.monotonic() + delay > deadline or self.shutting_down.is_set():
                    raise
                log.info("job %s: cannot record %s yet (%s); retrying", self.job_id, what, error)
                self.shutting_down.wait(delay)
                delay = min(delay * 2, 5.0)

    def _finish(self) -> None:
        try:
            self.services.registry.finish_job(self.job_id).get(timeout=ASK_TIMEOUT)
        except Exception:
            log.exception("job %s: cannot report its end to the registry", self.job_id)
        if not self.shutting_down.is_set() and self._job is not None:
            self._trim(self._job.signature)

    def _trim(self, signature: str | None) -> None:
        if signature is None:
            return
        try:
            self.services.trim_jobs(signature)
        except Exception:
            log.exception("job %s: retention failed", self.job_id)
