"""The kind-independent state builder: plan a prepare job, build its states, make the instance.

Runs on the job's worker thread (SPEC §2.8 to §2.12, §4.8). A prepare kind (jobs/kinds/)
supplies the plan and runs each step against a server; everything else is here, once: the
cache check with dirty-state invalidation (§0.1), the state build lock (§9.4), a server on
exactly the state a step starts from, stop/snapshot/restart, the state row, and handing the
running server to the instance. Every failure is raised as `JobFailure` and turned into the
job's error by the supervisor (jobs/supervisor.py).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlrs_engine.cache.policy import no_space, no_space_as_cache_error
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.clock import format_rfc3339, now_rfc3339, utcnow
from sqlrs_engine.errors import JobFailure, failures_reported_as
from sqlrs_engine.faults import fault_point
from sqlrs_engine.ids import new_instance_id
from sqlrs_engine.jobs.event_log import JobEventLog
from sqlrs_engine.jobs.kinds import kind_for
from sqlrs_engine.jobs.kinds.base import KindPlan, PlanContext
from sqlrs_engine.jobs.resume import Resumption, StoredPlan, resume_stored_plan
from sqlrs_engine.jobs.runtime_session import RuntimeSession
from sqlrs_engine.jobs.services import ASK_TIMEOUT, JobServices
from sqlrs_engine.jobs.tasks import TaskTracker
from sqlrs_engine.persistence.guard import StorageError
from sqlrs_engine.persistence.metadata import InstanceRecord, StateRecord
from sqlrs_engine.prepare.hashing import state_id
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.prepare.plan import (
    TASK_PREPARE_INSTANCE,
    TASK_RESOLVE_IMAGE,
    TASK_STATE_EXECUTE,
    PlanTask,
)
from sqlrs_engine.runtime.base import ServerHandle

log = logging.getLogger(__name__)


class StateBuilder:
    """One prepare job's plan and execution, whatever its kind, on its worker thread."""

    def __init__(
        self,
        job_id: str,
        request: PrepareRequest,
        services: JobServices,
        events: JobEventLog,
        tasks: TaskTracker,
        cancel: CancelToken,
    ) -> None:
        self.job_id = job_id
        self.request = request
        self.kind = kind_for(request.prepare_kind)
        self.services = services
        self.events = events
        self.tasks = tasks
        self.cancel = cancel
        self.registry = services.registry
        self.effective_image = request.image_id
        self.plan: list[PlanTask] = []
        self.session: RuntimeSession | None = None
        self.signature: str | None = None
        self._planned: KindPlan | None = None
        self.done: frozenset[str] = frozenset()
        """Tasks a resumed job completed before the engine stopped (not run again)."""

    # -- planning --------------------------------------------------------------------------

    def plan_context(self) -> PlanContext:
        """What the kind may use while planning (a planning server comes from this job)."""
        return PlanContext(
            runtime=self.services.runtime,
            engine_version=self.services.engine_version,
            state_exists=self._state_exists,
            cwd=self.services.cwd,
            log=self.events.log,
            cancel=self.cancel,
            planning_server=self._planning_server,
            store_root=self.services.snapshots.layout.root,
            config_value=self._config_value,
            job_dir=self.services.snapshots.layout.job_dir(self.job_id),
        )

    def make_plan(self, stored: StoredPlan | None = None) -> list[PlanTask]:
        """Plan (through the kind) and persist the tasks and the signature (§2.8).

        A recovered job passes what it had `stored`: without drift its stored tasks are
        reused instead of replaced (§4.8, jobs/resume.py).
        """
        planned = self._planned = self.kind.plan(self.request, self.plan_context())
        self.effective_image = planned.effective_image
        self.plan = planned.tasks
        self.signature = planned.signature
        resumption = None
        if stored is not None:
            resumption = resume_stored_plan(
                stored, planned.signature, planned.tasks, self._state_exists
            )
        if resumption is not None and resumption.drift is None:
            self._resume(resumption)
            return self.plan
        if resumption is not None:
            self.events.log(f"stored plan dropped: {resumption.drift}; re-planning")
        rows = []
        for position, task in enumerate(self.plan):
            row = task.to_task_row(self.job_id, position)
            row["args_summary"] = task.args_summary or None
            rows.append(row)
        # `plan running` is already stored or on its way (a running task is sent at once),
        # so replacing the rows cannot be overtaken by it.
        self.registry.store_plan(self.job_id, rows, self.signature).get(timeout=ASK_TIMEOUT)
        return self.plan

    def _resume(self, resumption: Resumption) -> None:
        self.events.log("resuming with the stored plan")
        if resumption.failed_task is not None:
            raise JobFailure("internal_error", "task failed", resumption.failed_task)
        for task_id in resumption.mark_queued:
            self.tasks.update(task_id, status="queued", started_at=None)
        for task_id in resumption.mark_succeeded:
            self.tasks.succeed(task_id)
        self.done = resumption.done

    def _state_exists(self, state: str) -> bool:
        exists: bool = self.registry.state_exists(state).get(timeout=ASK_TIMEOUT)
        return exists

    def _config_value(self, path: str) -> object:
        try:
            return self.registry.config_get(path, True).get(timeout=ASK_TIMEOUT)
        except Exception:
            return None

    def _planning_server(self, image: str) -> ServerHandle:
        """A server on `image`'s base; kept for `execute-0` when the job goes on (§3.3)."""
        self.effective_image = image
        return self._server_on(self._base_dir(), is_state=False)

    # -- execution -------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        """Run every task after planning; returns the job result (§2.12)."""
        for position in range(len(self.plan)):
            task = self.plan[position]  # re-read: a step may re-plan the tasks after it
            if task.type == TASK_RESOLVE_IMAGE:
                if task.task_id not in self.done:
                    self.tasks.succeed(task.task_id)
            elif task.type == TASK_STATE_EXECUTE:
                self.cancel.raise_if_cancelled("job cancelled")
                self._execute_step(task)
            elif task.type == TASK_PREPARE_INSTANCE:
                self.cancel.raise_if_cancelled("job cancelled")
                return self._prepare_instance(task)
        raise JobFailure("internal_error", "plan has no prepare-instance task")

    def _execute_step(self, task: PlanTask) -> None:
        assert self._planned is not None
        resumed = task.task_id in self.done
        if (task.cached or resumed) and self._cached_state_usable(task):
            if not resumed:
                self.tasks.succeed(task.task_id)
            return
        self.tasks.start(task.task_id)
        with self._planned.steps.inputs(task) as task_hash:
            output = state_id(task.input_kind, task.input_id, task_hash)
            if task_hash != task.task_hash or output != task.output_state_id:
                self._replan_from(task, task_hash, output)
                task = next(t for t in self.plan if t.task_id == task.task_id)
            self._build_state(task)
        self.tasks.succeed(task.task_id)

    def _replan_from(self, task: PlanTask, task_hash: str, output: str) -> None:
        """An input changed since planning: rewrite this task and the chain after it."""
        self.events.log(f"inputs of {task.task_id} changed since planning; re-hashing")
        updated: list[PlanTask] = []
        previous_output = None
        for planned in self.plan:
            if planned.task_id == task.task_id:
                planned = replace(
                    planned,
                    task_hash=task_hash,
                    output_state_id=output,
                    cached=self._state_exists(output),
                )
                previous_output = output
            elif previous_output is not None and planned.type == TASK_STATE_EXECUTE:
                new_output = state_id("state", previous_output, planned.task_hash)
                planned = replace(
                    planned,
                    input_id=previous_output,
                    output_state_id=new_output,
                    cached=self._state_exists(new_output),
                )
                previous_output = new_output
            elif previous_output is not None and planned.type == TASK_PREPARE_INSTANCE:
                planned = replace(planned, input_id=previous_output)
            if planned != next(t for t in self.plan if t.task_id == planned.task_id):
                self.tasks.update(
                    planned.task_id,
                    input_id=planned.input_id or None,
                    task_hash=planned.task_hash or None,
                    output_state_id=planned.output_state_id or None,
                    cached=planned.cached,
                )
            updated.append(planned)
        self.plan = updated

    def _cached_state_usable(self, task: PlanTask) -> bool:
        """A cached state is used only if its row and a complete directory still exist (§0.1).

        Held first: from here on a deletion of the state is blocked, and one under way has
        ended (the row read next then says it is gone, and the step rebuilds it).
        """
        self._hold(task.output_state_id)
        row = self.registry.state_row(task.output_state_id).get(timeout=ASK_TIMEOUT)
        if row is None:
            return False
        problem = self.services.snapshots.validate_state(self.effective_image, task.output_state_id)
        if problem is None:
            self._backfill_size(row)
            return True
        self._invalidate(task.output_state_id, problem)
        return False

    def _invalidate(self, state: str, problem: str) -> None:
        pool = self.services.pool
        drained = pool.drained([state], "state invalidated") if pool else contextlib.nullcontext()
        with drained:
            reason = self.services.snapshots.invalidate_state(
                self.effective_image, state, self.cancel
            )
        if reason is None:
            return  # another job completed it meanwhile: it is valid after all
        # Instances and child states may still reference the row; it then stays, and the
        # rebuild (same content, same id) refreshes it.
        self.registry.forget_state(state).get(timeout=ASK_TIMEOUT)
        self.events.log(f"cached state {state} is unusable ({problem}); rebuilding it")

    def _backfill_size(self, row: dict[str, Any]) -> None:
        if not row.get("size_bytes"):
            size = self.services.snapshots.state_size(self.effective_image, row["state_id"])
            self.registry.set_state_size(row["state_id"], size)

    def _base_dir(self) -> Path:
        snapshots = self.services.snapshots
        return snapshots.ensure_base(self.effective_image, self._init_base, self.cancel)

    def _input_source(self, task: PlanTask) -> tuple[Path, bool]:
        """The directory a runtime for `task` starts from: the base, or the input state."""
        if task.input_kind == "image":
            return self._base_dir(), False
        row = self.registry.state_row(task.input_id).get(timeout=ASK_TIMEOUT)
        if row is None:
            raise JobFailure("internal_error", "input state not found", task.input_id)
        return self.services.snapshots.state_dir(self.effective_image, task.input_id), True

    def _init_base(self, base_dir: Path) -> None:
        # `docker: init base <image>` as the reference engine logs it; `host:` on host.
        self.events.log(f"{self.services.runtime.kind}: init base {self.effective_image}")
        with failures_reported_as("cannot initialize base state"):
            self.services.runtime.init_base(
                self.effective_image, base_dir, self.events.log, self.cancel
            )

    def _ensure_runtime(self, task: PlanTask) -> ServerHandle:
        source, is_state = self._input_source(task)
        return self._server_on(source, is_state)

    def _server_on(self, source: Path, is_state: bool) -> ServerHandle:
        """The job's server, on a clone of exactly `source` (the base or a state dir).

        The server is kept from step to step only while it holds what the next task starts
        from. After a rebuilt step, a cached step does not touch the server, which then still
        holds the earlier state: it is replaced rather than handed over or built upon.
        """
        if self.session is None:
            self.session = self._new_session()
        if self.session.handle is not None and self.session.source == source:
            return self.session.handle
        return self.session.start_from(source, is_state)

    def _new_session(self) -> RuntimeSession:
        return RuntimeSession(
            self.job_id,
            self.effective_image,
            self.services.runtime,
            self.services.snapshots,
            self.events.log,
            self.cancel,
        )

    def discard_interrupted_runtime(self) -> None:
        """A job resumed after a crash may find its old clone (and server) still there.

        Called before planning (which may start this run's own server): a clone standing on a
        state the crash left incomplete would keep that state from being invalidated and
        rebuilt. (An instance the job created is
        never here: a job with an instance was finished by adopting it.)
        """
        if self.services.snapshots.layout.job_runtime_dir(self.job_id).exists():
            self._new_session().discard_leftovers()

    def _build_state(self, task: PlanTask) -> None:
        """Under the state's build lock: run the step, snapshot, store the row (§2.9.5-13).

        The state is held before its build lock is taken (never after: a deletion that
        fenced it waits for that lock), so that once its row exists it cannot be deleted
        from under the clone that stands on it.
        """
        assert self._planned is not None
        snapshots = self.services.snapshots
        self._hold(task.output_state_id)
        self.services.check_cache("prepare_step", self._chain())
        with snapshots.build_state(
            self.effective_image, task.output_state_id, self.cancel
        ) as build:
            if build.already_built and self._state_exists(task.output_state_id):
                # Another job built it while we waited: reuse it, drop our runtime (§2.9.3).
                self.events.log(f"state {task.output_state_id} was built by another job")
                if self.session is not None:
                    self.session.release()
                self.tasks.update(task.task_id, cached=True)
                return
            handle = self._ensure_runtime(task)
            assert self.session is not None
            with no_space_as_cache_error("prepare_step"):
                self._planned.steps.run(task, handle)
            self.services.check_cache("snapshot", self._chain())
            data_dir = self.session.stop_for_snapshot()
            try:
                # Ownership is made right once, here, for every clone of the state to come
                # (a no-op walk unless the step left a file the server user does not own).
                with failures_reported_as("snapshot prepare failed"):
                    self.services.runtime.prepare_data_dir(data_dir)
                self.events.log("snapshot: start")
                with no_space_as_cache_error("snapshot"):
                    size = snapshots.snapshot(build, data_dir, self.session.source, self.cancel)
                self.events.log("snapshot: complete")
            except BaseException:
                self.session.restart_after_failure()
                raise
            self.session.restart()
            fault_point("build:snapshotted")
            self._store_state(task, size)
            fault_point("build:row-stored")
            try:
                build.commit()
            except BaseException:
                # Row and marker go together: a failed commit leaves neither (issue 14). A
                # row that outlived an invalidation (still referenced) stays, as before.
                with contextlib.suppress(Exception):
                    self.registry.forget_state(task.output_state_id).get(timeout=ASK_TIMEOUT)
                raise
            # The running server now holds exactly this state: the next step's parent.
            self.session.source = build.state_dir
        self.services.check_cache("metadata_commit", self._chain() | {task.output_state_id})

    def _chain(self) -> frozenset[str]:
        """The states this job starts from or builds: never evicted while it runs."""
        ids = {t.input_id for t in self.plan if t.input_kind == "state" and t.input_id}
        ids |= {t.output_state_id for t in self.plan if t.output_state_id}
        return frozenset(ids)

    def _store_state(self, task: PlanTask, size: int) -> None:
        record = StateRecord(
            state_id=task.output_state_id,
            parent_state_id=task.input_id if task.input_kind == "state" else None,
            image_id=self.effective_image,
            prepare_kind=self.kind.name,
            prepare_args_normalized=self._planned.normalized if self._planned else "",
            created_at=now_rfc3339(),
            size_bytes=size,
            snapshot_backend=self.services.snapshots.kind,
        )
        try:
            self.registry.store_built_state(record).get(timeout=ASK_TIMEOUT)
        except StorageError as error:
            if error.code == "storage_full":
                raise no_space("metadata_commit", str(error)) from None
            raise JobFailure("internal_error", "cannot store state", str(error)) from None
        except Exception as error:
            raise JobFailure("internal_error", "cannot store state", str(error)) from None

    def _prepare_instance(self, task: PlanTask) -> dict[str, Any]:
        """Hand a running server to a new instance: the one this job's last step left, else
        a ready member of the warm pool (a cache hit), else a new clone and server."""
        assert self._planned is not None
        self.tasks.start(task.task_id)
        final_state = task.input_id
        self._hold(final_state)  # held since its step already; the instance row will name it
        source = self.services.snapshots.state_dir(self.effective_image, final_state)
        pool = self.services.pool
        if pool is not None and not self._holds(source):
            pool.note_hit(final_state, self.effective_image)
            with pool.take(final_state, self.effective_image, self.job_id) as member:
                if member is not None:
                    self.events.log("instance: ready server taken from the warm pool")
                    return self._create_instance(
                        task, member.handle, member.runtime_dir, pooled=True
                    )
        self._server_on(source, is_state=True)
        assert self.session is not None
        handle, runtime_dir = self.session.hand_over()
        return self._create_instance(task, handle, runtime_dir, pooled=False)

    def _holds(self, source: Path) -> bool:
        """Whether this job's own server stands on `source` (it built that state itself)."""
        return self.session is not None and self.session.held and self.session.source == source

    def _create_instance(
        self, task: PlanTask, handle: ServerHandle, runtime_dir: Path, pooled: bool
    ) -> dict[str, Any]:
        """The instance row and actor for a running server; the job's result.

        If recording fails, an unpooled server and clone are removed here; a pooled one by
        the pool (`WarmPool.take` sees the exception).
        """
        assert self._planned is not None
        final_state = task.input_id
        instance_id = new_instance_id()
        created = utcnow()
        record = InstanceRecord(
            instance_id=instance_id,
            state_id=final_state,
            image_id=self.effective_image,
            created_at=format_rfc3339(created),
            runtime_id=handle.runtime_id,
            runtime_dir=str(runtime_dir),
            job_id=self.job_id,
            expires_at=self.request.expires_at(created),
            secret=handle.password,
        )
        try:
            self.registry.create_instance(record, handle).get(timeout=ASK_TIMEOUT)
        except Exception:
            if not pooled:
                self.services.runtime.kill(handle)
                self.services.snapshots.remove_runtime_dir(self.job_id)
            raise
        fault_point("job:instance-created")
        self.events.log(f"instance created {instance_id}")
        self.tasks.succeed(task.task_id)
        result = {
            "dsn": handle.dsn,
            "instance_id": instance_id,
            "state_id": final_state,
            "image_id": self.effective_image,
            "prepare_kind": self.kind.name,
            "prepare_args_normalized": self._planned.normalized,
        }
        if record.expires_at:
            result["expires_at"] = record.expires_at
        return result

    def _hold(self, state: str) -> None:
        """Rely on `state` until the job ends: deleting it is blocked (deletion/uses.py)."""
        if self.services.state_uses.hold(self.job_id, state, self.cancel):
            self.events.log(f"waited for a deletion of state {state} to end")

    def release(self) -> None:
        """Stop and remove what the job still holds: steps, clone, then its state holds
        (after the clone: a state is never deletable while a clone of it stands)."""
        try:
            if self._planned is not None:
                self._planned.steps.close()
            if self.session is not None:
                self.session.release()
        finally:
            self.services.state_uses.release(self.job_id)
