"""The short path of a cache hit that finds a ready pool member (issue 16).

A cache hit with a warm pool does no real work: its server is already running. Through the
ordinary job path it still costs a job actor, a worker thread, a dozen hand-offs between
threads and several Registry messages — most of the hit's latency, and what bounds a burst of
hits. So a submission is first tried here, on the HTTP worker thread that received it:

1. plan it as its job would (planning reads the inputs; it changes nothing), through the
   same kind, event log and task tracker a job uses, but with an event sink that only
   collects. Planning asks, step by step, whether each step's state exists; here it is told
   yes, and the rows of the whole chain are then read in ONE Registry message: if one is
   missing the hit is not all cached and goes to the job, and if all exist the plan is the
   one the job would make (a step's state id never depends on the answer);
2. if every step is cached, every cached state is still valid, and a member of the final
   state is ready, claim the member (`WarmPool.claim`: each member is handed out once);
3. record the whole finished job — job row, task rows, the events a job would have emitted,
   in the same order, and the instance row owned by the job — in ONE Registry message, one
   transaction (`RegistryActor.record_pooled_hit`), which also starts the instance's actor.

The client then sees exactly what a job that took the member would have left: the same 201
body, status, tasks, events, result, log files, listings. Anything else — no ready member for
this state, a step to build, a state whose directory is damaged (the job invalidates and
rebuilds it), plan-only, a kind whose planning needs a server, a planning failure (the job
reports it as its error) — takes the ordinary path, and nothing of the attempt remains: no
row, no event, no log file, no member taken, no hit or miss counted.

Why it is safe:

- **Drain vs claim.** The claim counts as a hand-out under way until the transaction is
  done, exactly like a job's `take`: a deletion or eviction of the state waits for it, then
  sees the instance row (and refuses or deletes it); a state already closed by a drain has no
  member to claim, and the hit goes the ordinary way.
- **Crash.** Before the transaction the member is still a member (no row names its
  directory), and start-up removes it with its server and mount; after it, it is an instance
  like any other, adopted at start-up, and the job is finished (nothing to resume).
- **Isolation.** A claimed member is popped from the pool under its lock and never returns:
  its server, clone and password become the instance's only.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pykka
import ujson

from sqlrs_engine.actors.registry import InstanceActorFactory, RecordedHit
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.clock import format_rfc3339, now_rfc3339, utcnow
from sqlrs_engine.errors import ApiError, JobFailure
from sqlrs_engine.faults import fault_point
from sqlrs_engine.ids import new_instance_id
from sqlrs_engine.jobs.event_log import Item, JobEventLog, Stored
from sqlrs_engine.jobs.kinds import KINDS
from sqlrs_engine.jobs.kinds.base import KindPlan, PlanContext
from sqlrs_engine.jobs.services import ASK_TIMEOUT, JobServices
from sqlrs_engine.jobs.tasks import TaskTracker
from sqlrs_engine.persistence.jobs import JobRecord
from sqlrs_engine.persistence.metadata import InstanceRecord
from sqlrs_engine.persistence.rows import Row
from sqlrs_engine.pool.warm_pool import Member, WarmPool, unmark_member
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.prepare.plan import (
    TASK_PREPARE_INSTANCE,
    TASK_RESOLVE_IMAGE,
    TASK_STATE_EXECUTE,
    PlanTask,
)
from sqlrs_engine.runtime.base import ServerHandle

log = logging.getLogger(__name__)

POOLED_LINE = "instance: ready server taken from the warm pool"
"""The log line of a hit that took a member (the ordinary path logs the same)."""

SERVERLESS_PLANNING = frozenset({"psql"})
"""Kinds whose planning never needs a server: only their hits can take the short path (a
Liquibase plan may ask a live database, which is job work)."""


class NotPooled(Exception):
    """The hit takes the ordinary job path (the reason is for the debug log)."""


@dataclass(frozen=True)
class PooledHit:
    """A finished job that took a pool member: what `record_pooled_hit` stores at once."""

    record: JobRecord
    planning: list[Item]
    """Events and row changes up to the plan (stored before the task rows exist)."""
    tasks: list[Row]
    signature: str
    finishing: list[Item]
    """Events and row changes from the plan's success to the job's result."""
    instance: InstanceRecord
    handle: ServerHandle


def refusal(request: PrepareRequest, kind: str) -> str | None:
    """Why a submission cannot take the short path before planning, or None."""
    if request.plan_only:
        return "plan only"
    if kind not in SERVERLESS_PLANNING:
        return f"planning of kind {kind} may need a server"
    return None


def plan_refusal(tasks: list[PlanTask]) -> str | None:
    """Why a planned job cannot take the short path, or None: every step must be cached
    and the plan must end in exactly one instance."""
    built = [t.task_id for t in tasks if t.type == TASK_STATE_EXECUTE and not t.cached]
    if built:
        return f"steps to build: {', '.join(built)}"
    if not any(t.type == TASK_STATE_EXECUTE for t in tasks):
        return "no step"
    if [t.type for t in tasks].count(TASK_PREPARE_INSTANCE) != 1:
        return "no single prepare-instance task"
    if tasks[-1].type != TASK_PREPARE_INSTANCE:
        return "prepare-instance is not the last task"
    return None


class CollectingSink:
    """An event sink that keeps the batches instead of sending them (one message later)."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def record_batch(self, items: list[Item]) -> Stored:
        self.items.extend(items)
        return _stored

    def take(self) -> list[Item]:
        items, self.items = self.items, []
        return items


def _stored(_timeout: float | None) -> bool:
    return True


def _no_planning_server(image: str) -> ServerHandle:
    raise NotPooled(f"planning needs a server on {image}")


class PooledHitPath:
    """Tries each prepare submission as a pooled cache hit; thread-safe (HTTP workers)."""

    def __init__(
        self,
        services: Callable[[], JobServices],
        pool: WarmPool,
        instance_actor: InstanceActorFactory | None = None,
    ) -> None:
        """`services`: the collaborators a job gets now (config such as the task log bound
        is read per job). `instance_actor`: starts the actor of an instance row, here rather
        than on the Registry's thread (None: the Registry starts it)."""
        self._services = services
        self._pool = pool
        self._instance_actor = instance_actor
        self._after = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pooled-hit")
        self._closed = threading.Event()

    def close(self) -> None:
        """The engine stops: no more short paths; what is left to settle is done first."""
        self._closed.set()
        self._after.shutdown(wait=True)

    def submit(self, record: JobRecord) -> Row | None:
        """The 201 body of `record` recorded as a finished pooled hit, or None: then submit
        it as an ordinary job (nothing of the attempt is left)."""
        if self._closed.is_set() or not self._pool.short_path or not self._pool.has_ready():
            return None
        try:
            request = PrepareRequest.from_request_json(ujson.loads(record.request_json))
        except Exception:
            return None  # the job reports what is wrong with it
        why = refusal(request, record.prepare_kind)
        if why is not None:
            log.debug("job %s: no short path (%s)", record.job_id, why)
            return None
        services = self._services()
        attempt = _Attempt(record, request, services, self._pool, self._instance_actor)
        try:
            accepted = attempt.run()
        except (NotPooled, JobFailure) as error:
            # JobFailure: planning failed; the job fails with the same error, as a job.
            log.debug("job %s: no short path (%s)", record.job_id, error)
            attempt.discard()
            return None
        except ApiError:
            attempt.discard()
            raise
        except pykka.Timeout:
            # The Registry may still store it: never submit the same job id a second time.
            attempt.discard()
            raise ApiError(503, "unavailable", "the engine is too busy to accept jobs") from None
        except Exception:
            log.exception("job %s: the short path failed; running it as a job", record.job_id)
            attempt.discard()
            return None
        try:
            self._after.submit(_settle, services, attempt, record.job_id)
        except RuntimeError:  # the engine is stopping: settle now
            _settle(services, attempt, record.job_id)
        return accepted


def _settle(services: JobServices, attempt: _Attempt, job_id: str) -> None:
    """After the answer: the member's file goes (an instance row names its clone now) and
    retention by signature runs (SPEC §4.11), as a job runs it when it ends — if the
    recording found a job to trim."""
    if attempt.member is not None:
        unmark_member(attempt.member)
    if not attempt.retention_due:
        return
    try:
        services.trim_jobs(attempt.signature)
    except Exception:
        log.exception("job %s: retention failed", job_id)


class _Attempt:
    """One submission tried as a pooled hit: the job's bookkeeping, collected, not sent."""

    def __init__(
        self,
        record: JobRecord,
        request: PrepareRequest,
        services: JobServices,
        pool: WarmPool,
        instance_actor: InstanceActorFactory | None,
    ) -> None:
        self.instance_actor = instance_actor
        self.record = record
        self.job_id = record.job_id
        self.request = request
        self.services = services
        self.pool = pool
        self.registry = services.registry
        self.sink = CollectingSink()
        jobs_dir = services.jobs_dir
        self.job_dir = jobs_dir / self.job_id if jobs_dir is not None else None
        self.events = JobEventLog(
            self.sink,
            job_id=self.job_id,
            log_dir=self.job_dir / "logs" if self.job_dir is not None else None,
            max_task_lines=services.max_task_log_lines,
        )
        self.tasks = TaskTracker(self.job_id, self.events)
        self.signature = ""
        self.retention_due = False
        self.member: Member | None = None
        self.state_rows: dict[str, Row | None] = {}
        """The states planning asked about, in order, and (after `_read_state_rows`) their
        rows, checked before the claim."""

    def discard(self) -> None:
        """Leave nothing: the job path starts afresh (its own log files included)."""
        try:
            self.events.close()
        except Exception:
            log.debug("job %s: cannot close the attempt's log", self.job_id, exc_info=True)
        if self.job_dir is not None:
            shutil.rmtree(self.job_dir, ignore_errors=True)

    def run(self) -> Row:
        """The job's events in the order a job appends them (jobs/supervisor.py and
        jobs/builder.py): queued, running, planning, each task, the instance, the result."""
        self.events.status("queued")  # what `submit_job` appends
        self.events.job_row({"status": "running", "started_at": now_rfc3339()})
        self.events.status("running")
        self.tasks.start("plan")  # sent before the plan's rows exist: only its event stays
        with self._planned() as planned:
            self.events.send()
            planning = self.sink.take()
            self.signature = planned.signature
            rows = [self._task_row(task, i) for i, task in enumerate(planned.tasks)]
            final = planned.final_state_id
            self.tasks.succeed("plan")
            for task in planned.tasks:
                if task.type == TASK_RESOLVE_IMAGE:
                    self.tasks.succeed(task.task_id)
                elif task.type == TASK_STATE_EXECUTE:
                    self._check_usable(planned.effective_image, task.output_state_id)
                    self.tasks.succeed(task.task_id)
            instance_task = planned.tasks[-1]
            with self.pool.claim(final, planned.effective_image, self.job_id) as member:
                if member is None:
                    raise NotPooled(f"no ready member of state {final}")
                self.member = member
                fault_point("pool:hit-claimed")
                hit = self._finish(planned, instance_task, member, planning, rows)
                accepted = self._record(hit)
                fault_point("pool:hit-recorded")
        log.info(
            "job %s: cache hit served from the warm pool (instance %s)",
            self.job_id,
            hit.instance.instance_id,
        )
        return accepted

    def _record(self, hit: PooledHit) -> Row:
        """The one Registry message; the instance's actor is started first, on this thread,
        and stopped again (its server untouched: the pool removes the member) if refused."""
        actor = None
        if self.instance_actor is not None:
            actor = self.instance_actor(dataclasses.asdict(hit.instance), hit.handle)
        try:
            recorded: RecordedHit = self.registry.record_pooled_hit(hit, actor).get(
                timeout=ASK_TIMEOUT
            )
        except BaseException:
            if actor is not None:
                actor.stop(block=False)
            raise
        self.retention_due = recorded.retention_due
        return recorded.accepted

    @contextmanager
    def _planned(self) -> Iterator[KindPlan]:
        kind = KINDS[self.request.prepare_kind]
        snapshots = self.services.snapshots
        context = PlanContext(
            runtime=self.services.runtime,
            engine_version=self.services.engine_version,
            state_exists=self._state_exists,
            cwd=self.services.cwd,
            log=self.events.log,
            cancel=CancelToken(),
            planning_server=_no_planning_server,
            store_root=snapshots.layout.root,
            config_value=self._config_value,
            job_dir=snapshots.layout.job_dir(self.job_id),
        )
        planned = kind.plan(self.request, context)
        try:
            self._read_state_rows()
            why = plan_refusal(planned.tasks)
            if why is not None:
                raise NotPooled(why)
            yield planned
        finally:
            planned.steps.close()

    def _task_row(self, task: PlanTask, position: int) -> Row:
        row = task.to_task_row(self.job_id, position)
        row["args_summary"] = task.args_summary or None
        return row

    def _state_exists(self, state: str) -> bool:
        """Yes, for now: `_read_state_rows` checks every state asked about at once."""
        self.state_rows[state] = None
        return True

    def _read_state_rows(self) -> None:
        asked = list(self.state_rows)
        rows: dict[str, Row] = self.registry.state_rows(asked).get(timeout=ASK_TIMEOUT)
        missing = [state for state in asked if state not in rows]
        if missing:
            raise NotPooled(f"states to build: {', '.join(missing)}")
        self.state_rows.update(rows)

    def _config_value(self, path: str) -> object:
        try:
            return self.registry.config_get(path, True).get(timeout=ASK_TIMEOUT)
        except Exception:
            return None

    def _check_usable(self, image: str, state: str) -> None:
        """A cached state as the job checks it (jobs/builder.py `_cached_state_usable`); what
        the job would repair (invalidate, backfill a size) is left to it."""
        row = self.state_rows.get(state)
        if row is None:
            raise NotPooled(f"state {state} has no row")
        if not row.get("size_bytes"):
            raise NotPooled(f"state {state} has no size yet")
        problem = self.services.snapshots.validate_state(image, state)
        if problem is not None:
            raise NotPooled(f"state {state} is unusable: {problem}")

    def _finish(
        self,
        planned: KindPlan,
        task: PlanTask,
        member: Member,
        planning: list[Item],
        rows: list[Row],
    ) -> PooledHit:
        """The rest of the job, as `StateBuilder._prepare_instance` and `JobSupervisor.
        _succeed` record it for a member: collected, then closed (log files written)."""
        self.tasks.start(task.task_id)
        self.events.log(POOLED_LINE)
        created = utcnow()
        handle = member.handle
        instance = InstanceRecord(
            instance_id=new_instance_id(),
            state_id=task.input_id,
            image_id=planned.effective_image,
            created_at=format_rfc3339(created),
            runtime_id=handle.runtime_id,
            runtime_dir=str(member.runtime_dir),
            job_id=self.job_id,
            expires_at=self.request.expires_at(created),
            secret=handle.password,
        )
        self.events.log(f"instance created {instance.instance_id}")
        self.tasks.succeed(task.task_id)
        result: dict[str, Any] = {
            "dsn": handle.dsn,
            "instance_id": instance.instance_id,
            "state_id": task.input_id,
            "image_id": planned.effective_image,
            "prepare_kind": self.request.prepare_kind,
            "prepare_args_normalized": planned.normalized,
        }
        if instance.expires_at:
            result["expires_at"] = instance.expires_at
        self.events.job_row({"status": "succeeded", "finished_at": now_rfc3339(), "result": result})
        self.events.status("succeeded", wait=False)
        self.events.result(result, wait=False)
        self.events.close()
        return PooledHit(
            record=self.record,
            planning=planning,
            tasks=rows,
            signature=planned.signature,
            finishing=self.sink.take(),
            instance=instance,
            handle=handle,
        )
