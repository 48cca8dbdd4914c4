"""The Registry actor: the coordinator and the only owner of `state.db`.

Like Mopidy's core actor it is thin: each message delegates to a plain object (the metadata
and job queries, the event hub, the config store), each tested alone. It also owns the map
from ids to live child actors (one PrepareJob per running job, one Instance per live
instance) and is the only place that creates or forgets them.

It never waits on a child (children may wait on it), so no ask can deadlock. Shutdown is
two-phase: `begin_shutdown` hands the engine the children in stop order, the engine stops
them while the Registry still answers their last messages, then stops the Registry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from sqlrs_engine.actors.events import Event, EventHub, Subscription
from sqlrs_engine.clock import now_rfc3339
from sqlrs_engine.config.store import ConfigStore
from sqlrs_engine.errors import ApiError, internal_error
from sqlrs_engine.jobs.failure_log import log_job_failure
from sqlrs_engine.persistence.database import open_database
from sqlrs_engine.persistence.guard import StorageGuard, StorageHealth, guard_public_methods
from sqlrs_engine.persistence.jobs import (
    JobKey,
    JobQueries,
    JobRecord,
    RowChange,
    TaskKey,
    canonical_event,
    is_terminal,
)
from sqlrs_engine.persistence.metadata import InstanceRecord, MetadataQueries, StateRecord
from sqlrs_engine.persistence.pages import Page
from sqlrs_engine.persistence.rows import Row
from sqlrs_engine.runtime.base import ServerHandle

if TYPE_CHECKING:
    from sqlrs_engine.jobs.pooled_hit import PooledHit

log = logging.getLogger(__name__)

ListFilters = dict[str, str | None]
"""A list endpoint's query filters by name (absent or None: no filter)."""

JobActorFactory = Callable[[str, "RegistryProxy"], pykka.ActorRef[Any]]
"""Starts the actor that runs job `job_id`; given the Registry's own proxy to talk back."""

InstanceActorFactory = Callable[[Row, "ServerHandle | None"], pykka.ActorRef[Any]]
"""Starts the actor of an instance row, with its running server's handle when known."""


@dataclass(frozen=True)
class RegistrySettings:
    """Where the Registry keeps its data and how it starts job actors."""

    db_path: Path
    config: ConfigStore
    job_actor_factory: JobActorFactory | None = None
    instance_actor_factory: InstanceActorFactory | None = None
    children: tuple[pykka.ActorRef[Any], ...] = ()
    """Actors started before the Registry (snapshot backends), stopped after its own children."""
    recover_jobs: bool = True
    storage_health: StorageHealth | None = None
    """Shared with `/v1/health`, which reports a database that cannot be written."""


@guard_public_methods
class RegistryActor(pykka.ThreadingActor):
    """Owner of persistence, event mailboxes and the id → actor map.

    Every message runs through a `StorageGuard`: a failing state.db (full disk, I/O error,
    foreign lock) is answered with a 507/503 ErrorResponse and the connection rolled back,
    so the next message after the fault works again.
    """

    def __init__(
        self,
        settings: RegistrySettings,
        report_failure: Callable[[BaseException], None] = lambda _error: None,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._report_failure = report_failure
        self._config = settings.config
        self._hub = EventHub()
        self._job_refs: dict[str, pykka.ActorRef[Any]] = {}
        self._instance_refs: dict[str, pykka.ActorRef[Any]] = {}
        self._event_counts: dict[str, int] = {}
        self._children: list[pykka.ActorRef[Any]] = list(settings.children)
        self._stopping = False
        self._metadata: MetadataQueries
        self._jobs: JobQueries

    # -- lifecycle -------------------------------------------------------------------------

    def on_start(self) -> None:
        try:
            self._start()
        except Exception as error:
            # Pykka does not call on_failure for on_start; tell start_registry why we died.
            self._report_failure(error)
            raise

    def _start(self) -> None:
        # The dataset connection is created here, on the actor's own thread, and used only here.
        self._db = open_database(self._settings.db_path)
        self._storage = StorageGuard(
            self._db, self._settings.db_path, self._settings.storage_health
        )
        self._metadata = MetadataQueries(self._db)
        self._jobs = JobQueries(self._db)
        log.info("registry started db=%s", self._settings.db_path)
        # Children in dependency order: instances (they own running servers), then jobs.
        if self._settings.instance_actor_factory is not None:
            for row in self._metadata.all_instance_rows():
                self._start_instance_actor(row, None)
        if self._settings.recover_jobs and self._settings.job_actor_factory is not None:
            self.recover_jobs()

    def recover_jobs(self) -> None:
        """Jobs left queued/running by a previous engine run again from the start (§4.8).

        Called at start unless the settings defer it: the engine first completes deletions
        a crash interrupted, so no resumed job starts from a state that is going away.
        """
        if self._settings.job_actor_factory is None:
            return
        for row in self._jobs.unfinished_job_rows():
            if self.job_actor(row["job_id"]) is not None:
                continue  # already running (recovery asked twice)
            log.info("recovering job %s (was %s)", row["job_id"], row["status"])
            self._append(
                row["job_id"],
                {"type": "log", "ts": now_rfc3339(), "message": "engine restarted: resuming job"},
            )
            self._start_job_actor(row["job_id"])

    def on_stop(self) -> None:
        self._hub.close_all()
        self._db.close()
        log.info("registry stopped")

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        log.error("registry failed: %s", exception_value, exc_info=exception_value)
        self._hub.close_all()

    def probe_storage(self) -> None:
        """After a storage failure: check (by writing) whether state.db works again."""
        self._storage.probe()

    def ping(self) -> bool:
        """Answered once `on_start` succeeded; used to fail engine start-up early."""
        return True

    def adopt_child(self, ref: pykka.ActorRef[Any]) -> None:
        """Record a child actor started by the engine (snapshot backends) for ordered stop."""
        self._children.append(ref)

    def begin_shutdown(self) -> list[pykka.ActorRef[Any]]:
        """Refuse new work; return live children in stop order (jobs first, then the rest)."""
        self._stopping = True
        jobs = [ref for ref in self._job_refs.values() if ref.is_alive()]
        instances = [ref for ref in self._instance_refs.values() if ref.is_alive()]
        rest = [ref for ref in reversed(self._children) if ref.is_alive()]
        return jobs + instances + rest

    def child_failed(self, kind: str, child_id: str, message: str) -> None:
        """A child reports an unexpected failure: log it and forget the dead actor."""
        log.error("%s actor %s failed: %s", kind, child_id, message)
        if kind == "job":
            self._job_refs.pop(child_id, None)

    # -- reads (SPEC §7, §4.9) -------------------------------------------------------------

    def list_names(self, instance: str | None, state: str | None, image: str | None) -> list[Row]:
        return self._metadata.list_names(instance=instance, state=state, image=image)

    def get_name(self, name: str) -> Row | None:
        return self._metadata.get_name(name)

    def list_instances(
        self, state: str | None, image: str | None, id_prefix: str | None
    ) -> list[Row]:
        return self._metadata.list_instances(state=state, image=image, id_prefix=id_prefix)

    def find_instance(self, id_or_name: str, by_id_first: bool) -> tuple[Row | None, bool]:
        """(entry, found_by_name): exact id first when the text looks like an id, then name."""
        if by_id_first:
            entry = self._metadata.get_instance(id_or_name)
            if entry is not None:
                return entry, False
        instance_id = self._metadata.instance_id_by_name(id_or_name)
        if instance_id is None:
            return None, False
        return self._metadata.get_instance(instance_id), True

    def instance_row(self, instance_id: str) -> Row | None:
        return self._metadata.instance_row(instance_id)

    def list_states(self, kind: str | None, image: str | None, id_prefix: str | None) -> list[Row]:
        return self._metadata.list_states(kind=kind, image=image, id_prefix=id_prefix)

    def cache_inventory(self) -> tuple[list[Row], set[str]]:
        """Every state entry (with `refcount`) and the ids unfinished jobs are about to use:
        what cache enforcement decides on, read in one message."""
        return self._metadata.cache_inventory(), self._jobs.states_used_by_unfinished_jobs()

    def cache_usage(self) -> Row:
        """Summed state sizes (see `MetadataQueries.cache_usage`)."""
        return self._metadata.cache_usage()

    def get_state(self, state_id: str) -> Row | None:
        return self._metadata.get_state(state_id)

    # Listings are read a page per message: a big list never blocks the Registry for long,
    # and the HTTP side streams each page before asking for the next.

    def list_states_page(self, filters: ListFilters, after: int | None, limit: int) -> Page[int]:
        return self._metadata.list_states_page(
            kind=filters.get("kind"),
            image=filters.get("image"),
            id_prefix=filters.get("id_prefix"),
            after=after,
            limit=limit,
        )

    def list_instances_page(self, filters: ListFilters, after: int | None, limit: int) -> Page[int]:
        return self._metadata.list_instances_page(
            state=filters.get("state"),
            image=filters.get("image"),
            id_prefix=filters.get("id_prefix"),
            after=after,
            limit=limit,
        )

    def list_names_page(self, filters: ListFilters, after: int | None, limit: int) -> Page[int]:
        return self._metadata.list_names_page(
            instance=filters.get("instance"),
            state=filters.get("state"),
            image=filters.get("image"),
            after=after,
            limit=limit,
        )

    def list_jobs(self, job_prefix: str | None) -> list[Row]:
        return self._jobs.list_jobs(job_prefix)

    def list_jobs_page(
        self, job_prefix: str | None, after: JobKey | None, limit: int
    ) -> Page[JobKey]:
        return self._jobs.list_jobs_page(job_prefix, after, limit)

    def job_status(self, job_id: str) -> Row | None:
        return self._jobs.job_status(job_id)

    def list_tasks(self, job_id: str | None) -> list[Row]:
        return self._jobs.list_tasks(job_id)

    def list_tasks_page(
        self, job_id: str | None, after: TaskKey | None, limit: int
    ) -> Page[TaskKey]:
        return self._jobs.list_tasks_page(job_id, after, limit)

    # -- config (SPEC §8) ------------------------------------------------------------------

    def config_get(self, path: str | None, effective: bool) -> Any:
        return self._config.get(path, effective)

    def config_patch(self, path: str, value: Any) -> Any:
        return self._config.patch(path, value)

    def config_delete(self, path: str) -> Any:
        return self._config.delete(path)

    # -- states and instances (written by jobs) --------------------------------------------

    def state_row(self, state_id: str) -> Row | None:
        return self._metadata.state_row(state_id)

    def state_rows(self, state_ids: list[str]) -> dict[str, Row]:
        """Rows of the states of `state_ids` that exist: a whole plan's chain in one message."""
        return self._metadata.state_rows(state_ids)

    def state_exists(self, state_id: str) -> bool:
        return self._metadata.state_exists(state_id)

    def insert_state(self, record: StateRecord) -> bool:
        return self._metadata.insert_state(record)

    def set_state_size(self, state_id: str, size_bytes: int) -> None:
        self._metadata.set_state_size(state_id, size_bytes)

    def forget_state(self, state_id: str) -> bool:
        """Delete an invalidated state's row unless instances or child states reference it."""
        return self._metadata.delete_state_if_unreferenced(state_id)

    def store_built_state(self, record: StateRecord) -> None:
        """Record a state a job just built (or rebuilt: its row may have outlived its dir)."""
        if not self._metadata.insert_state(record):
            self._metadata.refresh_state(record)

    def create_instance(self, record: InstanceRecord, handle: ServerHandle | None) -> None:
        """Record a new instance and start the actor that owns its server."""
        self._metadata.insert_instance(record)
        row = self._metadata.instance_row(record.instance_id)
        assert row is not None
        self._start_instance_actor(row, handle)

    def all_instance_rows(self) -> list[Row]:
        return self._metadata.all_instance_rows()

    def instance_of_job(self, job_id: str) -> Row | None:
        """The instance a job created, if any (a resumed job adopts it)."""
        return self._metadata.instance_of_job(job_id)

    def _start_instance_actor(self, row: Row, handle: ServerHandle | None) -> None:
        factory = self._settings.instance_actor_factory
        if factory is not None:
            self._instance_refs[row["instance_id"]] = factory(row, handle)

    # -- deletion (SPEC §6, §4.7, §4.11) ---------------------------------------------------

    def state_subtree(self, state_id: str) -> Row | None:
        """`{"row", "instances", "children"}` for a state and, recursively, its child states."""
        row = self._metadata.state_row(state_id)
        if row is None:
            return None
        children = [self.state_subtree(child) for child in self._metadata.child_state_ids(state_id)]
        return {
            "row": row,
            "instances": self._metadata.instance_rows_of_state(state_id),
            "children": [child for child in children if child is not None],
        }

    def delete_metadata(self, instance_ids: list[str], state_ids: list[str]) -> None:
        """Rows of removed instances and states go in one transaction; their actors stop."""
        self._metadata.delete_many(instance_ids, state_ids)
        for instance_id in instance_ids:
            ref = self._instance_refs.pop(instance_id, None)
            if ref is not None:
                ref.stop(block=False)

    def mark_deleting(self, instance_ids: list[str], state_ids: list[str], on: bool) -> None:
        """Record (on) or take back (off) the intent to delete these rows."""
        self._metadata.mark_deleting(instance_ids, state_ids, on)

    def rows_marked_deleting(self) -> tuple[list[Row], list[Row]]:
        """Instance and state rows of deletions that a crash interrupted."""
        return self._metadata.rows_marked_deleting()

    def instance_runtime_dirs(self) -> set[str]:
        return self._metadata.runtime_dirs()

    def expired_instance_ids(self) -> list[str]:
        """Instances past their `expires_at` (TTL): the expiry reaper deletes them."""
        return self._metadata.expired_instance_ids()

    def expiring_instance_count(self) -> int:
        """Instances that have an expiry, passed or not (they keep an idle engine alive)."""
        return len(self._metadata.expiring_instances())

    def has_running_task(self, job_id: str) -> bool:
        return self._jobs.has_running_task(job_id)

    def delete_job_rows(self, job_ids: list[str]) -> None:
        """Delete jobs (their tasks and events cascade) and end any stream still open."""
        for job_id in job_ids:
            self._jobs.delete_job(job_id)
            self._hub.close(job_id)
            self._job_refs.pop(job_id, None)
            self._event_counts.pop(job_id, None)

    def retention_victims(self, signature: str) -> list[str]:
        """Terminal jobs with this signature beyond `orchestrator.jobs.maxIdentical` (§4.11).

        Never one that finished less than `orchestrator.jobs.minAge` ago, nor one whose
        events are being streamed (SPEC §0.1): its client may not have read its result yet.
        """
        limit = self._config.max_identical()
        if limit <= 0:
            return []
        finished_before = time.time() - self._config.job_min_age()
        old = self._jobs.retention_candidates(signature, limit, finished_before)
        return [job_id for job_id in old if not self._hub.has_open_stream(job_id)]

    def instance_actor(self, instance_id: str) -> pykka.ActorRef[Any] | None:
        ref = self._instance_refs.get(instance_id)
        return ref if ref is not None and ref.is_alive() else None

    def set_instance_runtime(
        self,
        instance_id: str,
        runtime_id: str | None,
        port: int | None = None,
        secret: str | None = None,
    ) -> None:
        """Record a restarted server; a new `port` also goes into the DSN of the result of
        the job that created the instance, so every later answer hands out the working one;
        `secret` is the server's password when it changed (SPEC §0.9)."""
        before = self._metadata.instance_row(instance_id)
        self._metadata.set_instance_runtime(instance_id, runtime_id, secret)
        job_id = before.get("job_id") if before else None
        if not job_id:
            return
        if secret is not None and before is not None and before.get("secret") != secret:
            self._jobs.set_result_password(job_id, secret)
        if port is not None:
            self._jobs.move_result_port(job_id, port)

    # -- jobs (SPEC §2.1, §4) --------------------------------------------------------------

    def submit_job(self, record: JobRecord) -> Row:
        """Persist a validated job and its `queued` event, start its actor; the 201 body."""
        if self._stopping:
            raise ApiError(503, "unavailable", "engine is shutting down")
        if self._settings.job_actor_factory is None:
            raise internal_error(details="this engine was started without a job runner")
        self._jobs.insert_job(record)
        self._append(record.job_id, {"type": "status", "ts": now_rfc3339(), "status": "queued"})
        self._start_job_actor(record.job_id)
        return accepted_body(record.job_id)

    def record_pooled_hit(
        self, hit: PooledHit, actor: pykka.ActorRef[Any] | None = None
    ) -> RecordedHit:
        """A cache hit that took a pool member, recorded finished (jobs/pooled_hit.py): the
        job row, its events and task rows in the order a job stores them, and the instance
        row owned by the job, in ONE transaction; then the instance's actor — `actor` when
        the caller started it already (a thread start on this thread would make every other
        message wait for it), else one started here. The 201 body of `submit_job` (SPEC
        §2.1: the submission is answered `queued` either way), and whether retention has a
        job of the hit's signature to trim now: in a burst of hits it seldom has, and then
        nobody asks again."""
        if self._stopping:
            raise ApiError(503, "unavailable", "engine is shutting down")
        job_id = hit.record.job_id
        with self._db:
            self._jobs.insert_job(hit.record)
            self._jobs.apply(job_id, hit.planning)
            self._jobs.replace_tasks(job_id, hit.tasks)
            self._jobs.update_job(job_id, signature=hit.signature)
            self._jobs.apply(job_id, hit.finishing)
            self._metadata.insert_instance(hit.instance)
        if actor is not None:
            self._instance_refs[hit.instance.instance_id] = actor
        else:
            row = self._metadata.instance_row(hit.instance.instance_id)
            assert row is not None
            self._start_instance_actor(row, hit.handle)
        return RecordedHit(accepted_body(job_id), self._retention_due(hit.signature))

    def _start_job_actor(self, job_id: str) -> None:
        factory = self._settings.job_actor_factory
        assert factory is not None
        proxy = self.actor_ref.proxy()
        self._job_refs[job_id] = factory(job_id, proxy)  # type: ignore[arg-type]

    def job_row(self, job_id: str) -> Row | None:
        return self._jobs.job_row(job_id)

    def update_job(self, job_id: str, fields: dict[str, Any]) -> None:
        self._jobs.update_job(job_id, **fields)

    def store_plan(self, job_id: str, tasks: list[Row], signature: str | None) -> None:
        """A job's planned task rows and its plan signature, in one transaction."""
        with self._db:
            self._jobs.replace_tasks(job_id, tasks)
            self._jobs.update_job(job_id, signature=signature)

    def update_task(self, job_id: str, task_id: str, fields: dict[str, Any]) -> None:
        self._jobs.update_task(job_id, task_id, **fields)

    def task_rows(self, job_id: str) -> list[Row]:
        return self._jobs.task_rows(job_id)

    def record_event(self, job_id: str, event: Event) -> int:
        """Persist and publish one event; returns its index."""
        return self._append(job_id, event)

    def record_events(self, job_id: str, items: list[Event | RowChange]) -> int:
        """Persist a batch of events and the job's row changes among them (one transaction),
        then publish the events; returns the next event index."""
        index = self._event_count(job_id)
        batch = self._jobs.apply(job_id, items)
        self._event_counts[job_id] = index + len(batch)
        self._hub.publish_many(job_id, batch)
        return index + len(batch)

    def finish_job(self, job_id: str) -> None:
        """The job's final event was recorded: end its streams and forget its actor."""
        self._hub.close(job_id)
        self._job_refs.pop(job_id, None)
        self._event_counts.pop(job_id, None)

    def _append(self, job_id: str, event: Event) -> int:
        event = canonical_event(event)
        index = self._event_count(job_id)
        self._jobs.append_event(job_id, event)
        self._event_counts[job_id] = index + 1
        self._hub.publish(job_id, event)
        return index

    def _event_count(self, job_id: str) -> int:
        # Cached so appending stays O(1) for jobs with many log lines.
        count = self._event_counts.get(job_id)
        if count is None:
            count = self._event_counts[job_id] = self._jobs.event_count(job_id)
        return count

    def cancel_job(self, job_id: str) -> tuple[int, Row] | None:
        """Cancel a job (SPEC §4.6); (HTTP status, job status) or None when unknown.

        A running job's actor is told to cancel (its processes are killed at once) and the
        answer does not wait for it: 202 with the current status. A job without a worker is
        failed here directly.
        """
        row = self._jobs.job_row(job_id)
        if row is None:
            return None
        if is_terminal(row["status"]):
            return 200, self._job_status(job_id)
        ref = self.job_actor(job_id)
        if ref is not None:
            ref.proxy().cancel()
            return 202, self._job_status(job_id)
        error = {"code": "cancelled", "message": "job cancelled"}
        log_job_failure(job_id, error)
        self._jobs.update_job(job_id, status="failed", finished_at=now_rfc3339(), error=error)
        self._append(job_id, {"type": "status", "ts": now_rfc3339(), "status": "failed"})
        self._append(job_id, {"type": "error", "ts": now_rfc3339(), "error": error})
        self.finish_job(job_id)
        return 202, self._job_status(job_id)

    def _job_status(self, job_id: str) -> Row:
        status = self._jobs.job_status(job_id)
        assert status is not None
        return status

    def job_actor(self, job_id: str) -> pykka.ActorRef[Any] | None:
        ref = self._job_refs.get(job_id)
        return ref if ref is not None and ref.is_alive() else None

    def active_job_count(self) -> int:
        """Jobs queued or running (the idle timeout never fires while there are any)."""
        return len(self._jobs.unfinished_job_rows())

    def subscribe_events(self, job_id: str, start: int, stop: int | None) -> Subscription | None:
        """Backlog `[start, stop)` plus a mailbox for later events; None for an unknown job."""
        row = self._jobs.job_row(job_id)
        if row is None:
            return None
        total = self._event_count(job_id)
        backlog = self._jobs.events(job_id, start, stop)
        terminal = is_terminal(row["status"]) and job_id not in self._job_refs
        return self._hub.subscribe(job_id, backlog, total, terminal)

    def unsubscribe_events(self, job_id: str, token: int) -> str | None:
        """End a stream; returns the job's signature when the job is finished, this was its
        last open stream and retention has a job of that signature to trim now, so that the
        caller runs the retention the stream held back."""
        self._hub.unsubscribe(job_id, token)
        if self._hub.has_open_stream(job_id):
            return None
        row = self._jobs.job_row(job_id)
        if row is None or not is_terminal(row["status"]):
            return None
        signature: str | None = row.get("signature")
        if not signature or not self._retention_due(signature):
            return None  # nothing to trim: spare the caller a second message
        return signature

    def _retention_due(self, signature: str) -> bool:
        """Whether retention of `signature` has a job to trim now. Asked after a write that
        is already committed, so a failure to tell must not undo it: then the caller trims,
        and the trim asks (and reports) again."""
        try:
            return bool(self.retention_victims(signature))
        except Exception as error:
            log.warning("retention of signature %s: cannot tell what to trim: %s", signature, error)
            return True


class RegistryProxy(ActorMemberMixin, pykka.ActorProxy[RegistryActor]):
    """Typed proxy: every public method of `RegistryActor` as a message returning a Future."""

    ping = proxy_method(RegistryActor.ping)
    probe_storage = proxy_method(RegistryActor.probe_storage)
    recover_jobs = proxy_method(RegistryActor.recover_jobs)
    adopt_child = proxy_method(RegistryActor.adopt_child)
    begin_shutdown = proxy_method(RegistryActor.begin_shutdown)
    child_failed = proxy_method(RegistryActor.child_failed)
    list_names = proxy_method(RegistryActor.list_names)
    get_name = proxy_method(RegistryActor.get_name)
    list_instances = proxy_method(RegistryActor.list_instances)
    find_instance = proxy_method(RegistryActor.find_instance)
    instance_row = proxy_method(RegistryActor.instance_row)
    list_states = proxy_method(RegistryActor.list_states)
    get_state = proxy_method(RegistryActor.get_state)
    cache_inventory = proxy_method(RegistryActor.cache_inventory)
    cache_usage = proxy_method(RegistryActor.cache_usage)
    instance_of_job = proxy_method(RegistryActor.instance_of_job)
    all_instance_rows = proxy_method(RegistryActor.all_instance_rows)
    list_states_page = proxy_method(RegistryActor.list_states_page)
    list_instances_page = proxy_method(RegistryActor.list_instances_page)
    list_names_page = proxy_method(RegistryActor.list_names_page)
    list_jobs = proxy_method(RegistryActor.list_jobs)
    list_jobs_page = proxy_method(RegistryActor.list_jobs_page)
    job_status = proxy_method(RegistryActor.job_status)
    list_tasks = proxy_method(RegistryActor.list_tasks)
    list_tasks_page = proxy_method(RegistryActor.list_tasks_page)
    config_get = proxy_method(RegistryActor.config_get)
    config_patch = proxy_method(RegistryActor.config_patch)
    config_delete = proxy_method(RegistryActor.config_delete)
    state_row = proxy_method(RegistryActor.state_row)
    state_rows = proxy_method(RegistryActor.state_rows)
    state_exists = proxy_method(RegistryActor.state_exists)
    insert_state = proxy_method(RegistryActor.insert_state)
    set_state_size = proxy_method(RegistryActor.set_state_size)
    forget_state = proxy_method(RegistryActor.forget_state)
    store_built_state = proxy_method(RegistryActor.store_built_state)
    create_instance = proxy_method(RegistryActor.create_instance)
    instance_actor = proxy_method(RegistryActor.instance_actor)
    set_instance_runtime = proxy_method(RegistryActor.set_instance_runtime)
    submit_job = proxy_method(RegistryActor.submit_job)
    record_pooled_hit = proxy_method(RegistryActor.record_pooled_hit)
    job_row = proxy_method(RegistryActor.job_row)
    update_job = proxy_method(RegistryActor.update_job)
    store_plan = proxy_method(RegistryActor.store_plan)
    update_task = proxy_method(RegistryActor.update_task)
    task_rows = proxy_method(RegistryActor.task_rows)
    record_event = proxy_method(RegistryActor.record_event)
    record_events = proxy_method(RegistryActor.record_events)
    finish_job = proxy_method(RegistryActor.finish_job)
    job_actor = proxy_method(RegistryActor.job_actor)
    cancel_job = proxy_method(RegistryActor.cancel_job)
    state_subtree = proxy_method(RegistryActor.state_subtree)
    delete_metadata = proxy_method(RegistryActor.delete_metadata)
    instance_runtime_dirs = proxy_method(RegistryActor.instance_runtime_dirs)
    mark_deleting = proxy_method(RegistryActor.mark_deleting)
    rows_marked_deleting = proxy_method(RegistryActor.rows_marked_deleting)
    expired_instance_ids = proxy_method(RegistryActor.expired_instance_ids)
    expiring_instance_count = proxy_method(RegistryActor.expiring_instance_count)
    has_running_task = proxy_method(RegistryActor.has_running_task)
    delete_job_rows = proxy_method(RegistryActor.delete_job_rows)
    retention_victims = proxy_method(RegistryActor.retention_victims)
    active_job_count = proxy_method(RegistryActor.active_job_count)
    subscribe_events = proxy_method(RegistryActor.subscribe_events)
    unsubscribe_events = proxy_method(RegistryActor.unsubscribe_events)


class RegistryStartError(RuntimeError):
    """The Registry could not open or migrate its database."""


def start_registry(
    settings: RegistrySettings, timeout: float = 60.0
) -> tuple[pykka.ActorRef[RegistryActor], RegistryProxy]:
    """Start the Registry and wait until it serves; raise `RegistryStartError` if it cannot."""
    failures: list[BaseException] = []
    ref = RegistryActor.start(settings, failures.append)
    try:
        # Inside the try: a Registry whose on_start fails may be gone before proxy() runs.
        proxy: RegistryProxy = ref.proxy()  # type: ignore[assignment]
        proxy.ping().get(timeout=timeout)
    except pykka.ActorDeadError as error:
        reason = str(failures[0]) if failures else "registry stopped during start-up"
        raise RegistryStartError(reason) from error
    return ref, proxy


@dataclass(frozen=True)
class RecordedHit:
    """The answer to `record_pooled_hit`."""

    accepted: Row
    """The 201 body of the submission."""
    retention_due: bool
    """Whether a finished job of the hit's signature may be trimmed now (SPEC §4.11)."""


def accepted_body(job_id: str) -> Row:
    """The 201 answer to a prepare submission (SPEC §2.1)."""
    return {
        "job_id": job_id,
        "status_url": f"/v1/prepare-jobs/{job_id}",
        "events_url": f"/v1/prepare-jobs/{job_id}/events",
        "status": "queued",
    }
