"""Carrying out deletions: build the tree, count connections, remove files, then rows.

Runs on the HTTP thread that asked. It talks to the Registry (rows), to Instance actors
(connections, stopping servers) and to the Snapshot actor (removing directories). Order is
what keeps the store consistent:

1. the whole tree is built and checked first; a blocked tree changes nothing;
2. nodes are removed children first: an instance's server is stopped, then its data
   directory removed; a state's directory is removed under its build lock;
3. the rows of every node whose files are gone are deleted in one transaction.

Before step 2 the whole tree is marked `deleting` in state.db (one transaction). A crash
between the first removed file and the last deleted row is completed at the next start
(`complete_interrupted`): never a row that points at removed files. An instance is *retired*
before its files go, so a concurrent run cannot restart its server in a dir being removed.

States that running prepare jobs rely on (`deletion/uses.py`) block a state deletion in
step 1 (`active_tasks`, naming the jobs), and the states a deletion goes on to remove are
fenced against new holds until it ends: a job never mounts a clone of a state between the
check and its removal.

If removing a directory fails (a busy mount, say), the rows of the nodes already removed are
still deleted, the failing node keeps both its row and its files, and the request answers
500 with what failed: never a row pointing nowhere, never files without a row. The one
foreseeable refusal — an overlay layer that a clone this engine does not track stands on
(another engine's job, a leftover of a crashed run) — answers 409 `conflict` instead.

Deletions claim exactly the objects of their tree (`deletion/claims.py`): two deletions that
share an object are serialized — so concurrent DELETEs of the same object answer "deleted"
once and 404 afterwards — while deletions of independent objects run at the same time (a hung
instance's connection probe holds up nothing else).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pykka

from sqlrs_engine.actors.registry import RegistryProxy
from sqlrs_engine.actors.snapshot import SnapshotClient
from sqlrs_engine.cancel import NEVER_CANCELLED
from sqlrs_engine.deletion.claims import Claims
from sqlrs_engine.deletion.tree import (
    DeleteNode,
    instance_node,
    job_node,
    result,
    state_node,
)
from sqlrs_engine.deletion.uses import StateUses, Users
from sqlrs_engine.errors import ApiError, JobFailure, not_found
from sqlrs_engine.faults import fault_point
from sqlrs_engine.snapshot.base import StateInUse

log = logging.getLogger(__name__)

ASK_TIMEOUT = 60.0
PROBE_TIMEOUT = 15.0
"""Seconds to wait for an instance's connection count (its probe gives up after 10 s)."""
CLAIM_ATTEMPTS = 10
JOB_STOP_TIMEOUT = 60.0

DeleteResult = tuple[int, dict[str, Any]]

StateDrain = Callable[[Iterable[str], str], contextlib.AbstractContextManager[None]]
"""Given state ids and a reason: a context inside which no pool member of them exists."""


class DeletionService:
    """DELETE of instances, states and jobs; also trims jobs by signature (retention)."""

    def __init__(
        self,
        registry: RegistryProxy,
        snapshots: SnapshotClient,
        drain: StateDrain | None = None,
        uses: StateUses | None = None,
    ) -> None:
        self._registry = registry
        self._snapshots = snapshots
        self._claims = Claims()
        self._drain = drain
        """Empties the warm pool of states about to go (`WarmPool.drained`)."""
        self._uses = uses if uses is not None else StateUses()
        """The states running jobs rely on; the jobs of this engine share it."""

    # -- instances -------------------------------------------------------------------------

    def delete_instance(self, instance_id: str, force: bool, dry_run: bool) -> DeleteResult:
        row = self._registry.instance_row(instance_id).get(timeout=ASK_TIMEOUT)
        if row is None:
            raise not_found("instance not found")
        with self._claims.hold(_instance_keys(row)):
            row = self._registry.instance_row(instance_id).get(timeout=ASK_TIMEOUT)
            if row is None:  # deleted by the deletion we waited for
                raise not_found("instance not found")
            root = instance_node(row, self._connections(instance_id, force), force)
            return self._finish(root, dry_run, "delete instance failed")

    # -- states ----------------------------------------------------------------------------

    def delete_state(
        self,
        state_id: str,
        recurse: bool,
        force: bool,
        dry_run: bool,
        *,
        faults: str = "delete",
    ) -> DeleteResult:
        """`faults` names the crash points on the way (`<faults>:marked`, …): eviction
        passes "evict", so that a crash test can stop an eviction, not any deletion."""
        for _ in range(CLAIM_ATTEMPTS):
            subtree = self._registry.state_subtree(state_id).get(timeout=ASK_TIMEOUT)
            if subtree is None:
                raise not_found("state not found")
            keys = _subtree_keys(subtree)
            with self._claims.hold(keys), self._drained(subtree, dry_run):
                # Read again inside the drain: a pooled hand-out that was under way is an
                # instance row now, and blocks (or joins) this deletion like any other.
                subtree = self._registry.state_subtree(state_id).get(timeout=ASK_TIMEOUT)
                if subtree is None:
                    raise not_found("state not found")
                if not _subtree_keys(subtree) <= keys:
                    continue  # the tree grew while we waited: claim the new one
                # Without `recurse` only the root could go (descendants block it).
                removed = _subtree_state_ids(subtree) if recurse else [state_id]
                with self._uses.fenced(removed, fence=not dry_run) as users:
                    root = self._state_tree(subtree, recurse, force, users)
                    return self._finish(root, dry_run, "delete state failed", faults)
        raise ApiError(
            503,
            "unavailable",
            "delete state failed",
            f"the tree of state {state_id} kept changing; retry",
        )

    def _drained(
        self, subtree: dict[str, Any], dry_run: bool
    ) -> contextlib.AbstractContextManager[None]:
        """No warm-pool member of the subtree's states exists (or is handed out) inside."""
        if self._drain is None or dry_run:
            return contextlib.nullcontext()
        return self._drain(_subtree_state_ids(subtree), "state deleted")

    def _state_tree(
        self, subtree: dict[str, Any], recurse: bool, force: bool, users: Users
    ) -> DeleteNode:
        """`users`: the running jobs that hold states of the subtree (they block those)."""
        children: list[DeleteNode] = [
            instance_node(
                row, self._connections(row["instance_id"], force) if recurse else 0, force
            )
            for row in subtree["instances"]
        ]
        children += [
            self._state_tree(child, recurse, force, users) for child in subtree["children"]
        ]
        row = subtree["row"]
        return state_node(row, children, recurse, users.get(row["state_id"], ()))

    # -- jobs ------------------------------------------------------------------------------

    def delete_job(self, job_id: str, force: bool, dry_run: bool) -> DeleteResult:
        row = self._registry.job_row(job_id).get(timeout=ASK_TIMEOUT)
        if row is None:
            raise not_found("job not found")
        running = self._registry.has_running_task(job_id).get(timeout=ASK_TIMEOUT)
        root = job_node(row, running, force)
        status, body = result(root, dry_run)
        if dry_run or root.is_blocked:
            return status, body
        # Not under the claim: the job's own last act (retention) takes it too.
        self._stop_job(job_id)
        with self._claims.hold({f"job:{job_id}"}):
            if self._registry.job_row(job_id).get(timeout=ASK_TIMEOUT) is None:
                raise not_found("job not found")
            try:
                self._remove_job_dir(job_id)
            except JobFailure as failure:
                raise ApiError(500, "internal_error", "delete job failed", _why(failure)) from None
            self._registry.delete_job_rows([job_id]).get(timeout=ASK_TIMEOUT)
            return status, body

    def trim_jobs(self, signature: str) -> list[str]:
        """Retention (§4.11): remove terminal jobs with `signature` beyond the configured N."""
        victims: list[str] = self._registry.retention_victims(signature).get(timeout=ASK_TIMEOUT)
        removed = []
        for job_id in victims:
            with self._claims.hold({f"job:{job_id}"}):
                try:
                    self._remove_job_dir(job_id)
                except JobFailure as failure:
                    log.warning("retention: cannot remove job %s: %s", job_id, _why(failure))
                    continue
                removed.append(job_id)
        if removed:
            self._registry.delete_job_rows(removed).get(timeout=ASK_TIMEOUT)
            log.info("retention removed %d job(s) with signature %s", len(removed), signature)
        return removed

    def _stop_job(self, job_id: str) -> None:
        """Force on an active job: cancel it and wait until its actor has stopped."""
        ref: pykka.ActorRef[Any] | None = self._registry.job_actor(job_id).get(timeout=ASK_TIMEOUT)
        if ref is None:
            return
        try:
            ref.proxy().cancel().get(timeout=ASK_TIMEOUT)
        except pykka.ActorDeadError:
            return
        deadline = time.monotonic() + JOB_STOP_TIMEOUT
        while ref.is_alive():
            if time.monotonic() > deadline:
                raise ApiError(500, "internal_error", "delete job failed", "job did not stop")
            time.sleep(0.05)

    def _remove_job_dir(self, job_id: str) -> None:
        """Remove `jobs/<id>`, keeping the data directory of an instance that lives there."""
        keep = self._registry.instance_runtime_dirs().get(timeout=ASK_TIMEOUT)
        job_dir = self._snapshots.layout.job_dir(job_id)
        if not job_dir.exists():
            return
        for entry in sorted(job_dir.iterdir()):
            if str(entry) not in keep:
                self._snapshots.remove_path(entry)
        if not any(job_dir.iterdir()):
            job_dir.rmdir()

    # -- common ----------------------------------------------------------------------------

    def _connections(self, instance_id: str, force: bool) -> int:
        """Client connections of an instance (SPEC §0.5), asked of its actor.

        A server that does not answer (hung, stopped with SIGSTOP) cannot be counted: without
        `force` that is a 409 saying so; with `force` the deletion goes on (it stops the
        server anyway) and the node reports 0.
        """
        ref = self._registry.instance_actor(instance_id).get(timeout=ASK_TIMEOUT)
        if ref is None:
            return 0
        try:
            count: int = ref.proxy().connections().get(timeout=PROBE_TIMEOUT)
        except pykka.ActorDeadError:
            return 0
        except (pykka.Timeout, JobFailure) as error:
            why = (
                f"no answer within {PROBE_TIMEOUT:.0f} s"
                if isinstance(error, pykka.Timeout)
                else _why(error)
            )
            if force:
                log.warning(
                    "instance %s: connections unknown (%s); forced delete", instance_id, why
                )
                return 0
            raise ApiError(
                409,
                "conflict",
                "instance is not responding",
                f"its client connections cannot be counted ({why}); delete it with "
                "force=true to stop its server anyway",
            ) from None
        return count

    def _finish(
        self, root: DeleteNode, dry_run: bool, failure_message: str, faults: str = "delete"
    ) -> DeleteResult:
        status, body = result(root, dry_run)
        if dry_run or root.is_blocked:
            return status, body
        nodes = list(root.post_order())
        planned = (
            [n.id for n in nodes if n.kind == "instance"],
            [n.id for n in nodes if n.kind == "state"],
        )
        # The intent goes to state.db before any file: a crash from here on is completed at
        # the next start (`complete_interrupted`), never left as rows without files.
        self._registry.mark_deleting(*planned, True).get(timeout=ASK_TIMEOUT)
        fault_point(f"{faults}:marked")
        instances: list[str] = []
        states: list[str] = []
        try:
            for node in nodes:
                if node.kind == "instance":
                    self._remove_instance(node.row)
                    instances.append(node.id)
                elif node.kind == "state":
                    self._snapshots.remove_state(node.row["image_id"], node.id, NEVER_CANCELLED)
                    states.append(node.id)
                fault_point(f"{faults}:node-removed")
        except StateInUse as failure:
            # A clone this engine does not track stands on the layer: not an engine fault.
            log.warning("%s at %s: %s", failure_message, node.kind, _why(failure))
            raise ApiError(409, "conflict", "state is in use", _why(failure)) from None
        except (JobFailure, OSError) as failure:
            log.error("%s at %s: %s", failure_message, node.kind, failure)
            raise ApiError(500, "internal_error", failure_message, _why(failure)) from None
        finally:
            if instances or states:
                self._registry.delete_metadata(instances, states).get(timeout=ASK_TIMEOUT)
            left = (
                [i for i in planned[0] if i not in instances],
                [s for s in planned[1] if s not in states],
            )
            if left[0] or left[1]:
                # Not a crash: the failure was answered; what was not removed stays usable.
                self._registry.mark_deleting(*left, False).get(timeout=ASK_TIMEOUT)
                self._reinstate(left[0])
        return status, body

    def complete_interrupted(self) -> tuple[list[str], list[str]]:
        """At start-up: finish the deletions a crash interrupted (rows marked `deleting`).

        Instances first, then states children first, as a deletion would have gone on.
        Returns what was removed; whatever still cannot be removed keeps its mark and is
        logged (the next start tries again).
        """
        instance_rows, state_rows = self._registry.rows_marked_deleting().get(timeout=ASK_TIMEOUT)
        keys = {key for row in instance_rows for key in _instance_keys(row)}
        keys |= {f"state:{row['state_id']}" for row in state_rows}
        with self._claims.hold(keys):
            instances: list[str] = []
            states: list[str] = []
            for row in instance_rows:
                try:
                    self._remove_instance(row)
                    instances.append(row["instance_id"])
                except (JobFailure, OSError) as failure:
                    log.error(
                        "interrupted deletion of instance %s: %s",
                        row["instance_id"],
                        _why(failure),
                    )
            for row in children_first(state_rows):
                try:
                    self._snapshots.remove_state(row["image_id"], row["state_id"], NEVER_CANCELLED)
                    states.append(row["state_id"])
                except (JobFailure, OSError) as failure:
                    log.error(
                        "interrupted deletion of state %s: %s", row["state_id"], _why(failure)
                    )
            if instances or states:
                self._registry.delete_metadata(instances, states).get(timeout=ASK_TIMEOUT)
                log.info(
                    "completed an interrupted deletion: %d instance(s), %d state(s)",
                    len(instances),
                    len(states),
                )
            return instances, states

    def reconcile_states(self) -> tuple[list[str], list[Path]]:
        """At start-up: state rows and state dirs agree afterwards (issue 14).

        A row whose directory is missing or incomplete (a crash between storing the row and
        writing the marker) is invalidated and deleted when nothing uses it — else it is kept
        and rebuilt by the next job that needs it. A state dir without a row (a crash between
        a snapshot and its row) is removed unless something is building it. Returns (deleted
        rows, removed dirs).
        """
        entries, _in_use = self._registry.cache_inventory().get(timeout=ASK_TIMEOUT)
        parents = {e.get("parent_state_id") for e in entries}
        rows: list[str] = []
        for entry in entries:
            state_id, image_id = entry["state_id"], entry["image_id"]
            problem = self._snapshots.validate_state(image_id, state_id)
            if problem is None:
                continue
            if entry.get("refcount") or state_id in parents:
                log.warning("state %s is incomplete (%s); kept: it is in use", state_id, problem)
                continue
            with self._claims.hold({f"state:{state_id}"}):
                try:
                    invalid = self._snapshots.invalidate_state(image_id, state_id, NEVER_CANCELLED)
                except (JobFailure, OSError) as failure:
                    # A clone of an interrupted job may still stand on it: the resumed job
                    # rebuilds it (the row alone never makes it served).
                    log.warning("incomplete state %s kept for now: %s", state_id, _why(failure))
                    continue
                if invalid:
                    self._registry.delete_metadata([], [state_id]).get(timeout=ASK_TIMEOUT)
                    rows.append(state_id)
                    log.warning("removed incomplete state %s (%s)", state_id, problem)
        known = {e["state_id"] for e in entries}
        dirs: list[Path] = []
        for state_dir in self._snapshots.state_dirs():
            if state_dir.name in known:
                continue
            try:
                removed = self._snapshots.remove_orphan_state_dir(state_dir)
            except (JobFailure, OSError) as failure:
                log.warning("cannot remove state dir %s without a row: %s", state_dir, failure)
                continue
            if removed:
                dirs.append(state_dir)
                log.warning("removed state dir %s: it had no row", state_dir)
        return rows, dirs

    def _reinstate(self, instance_ids: list[str]) -> None:
        for instance_id in instance_ids:
            ref = self._registry.instance_actor(instance_id).get(timeout=ASK_TIMEOUT)
            if ref is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    ref.proxy().reinstate().get(timeout=ASK_TIMEOUT)

    def _remove_instance(self, row: dict[str, Any]) -> None:
        ref = self._registry.instance_actor(row["instance_id"]).get(timeout=ASK_TIMEOUT)
        if ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                # Retired, not just stopped: a concurrent run must not restart (and remount)
                # the server while its files are being removed.
                ref.proxy().retire().get(timeout=ASK_TIMEOUT)
        if row.get("runtime_dir"):
            runtime_dir = Path(row["runtime_dir"])
            self._snapshots.remove_path(runtime_dir)
            job_dir = runtime_dir.parent
            if job_dir.is_dir() and not any(job_dir.iterdir()):
                job_dir.rmdir()


def children_first(state_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """State rows ordered so that no state comes before one of its descendants."""
    remaining = {row["state_id"]: row for row in state_rows}
    ordered: list[dict[str, Any]] = []
    while remaining:
        parents = {row.get("parent_state_id") for row in remaining.values()}
        leaves = [sid for sid in remaining if sid not in parents]
        if not leaves:  # a cycle cannot happen in a tree; take the rest as they come
            leaves = list(remaining)
        for sid in leaves:
            ordered.append(remaining.pop(sid))
    return ordered


def _why(failure: Exception) -> str:
    if isinstance(failure, JobFailure):
        return failure.message + (f": {failure.details}" if failure.details else "")
    return str(failure)


def _instance_keys(row: dict[str, Any]) -> set[str]:
    """An instance, and the job dir its data dir lives in (removed when it empties)."""
    keys = {f"instance:{row['instance_id']}"}
    if row.get("runtime_dir"):
        keys.add(f"job:{Path(row['runtime_dir']).parent.name}")
    return keys


def _subtree_state_ids(subtree: dict[str, Any]) -> list[str]:
    ids = [subtree["row"]["state_id"]]
    for child in subtree["children"]:
        ids += _subtree_state_ids(child)
    return ids


def _subtree_keys(subtree: dict[str, Any]) -> set[str]:
    keys = {f"state:{subtree['row']['state_id']}"}
    for row in subtree["instances"]:
        keys |= _instance_keys(row)
    for child in subtree["children"]:
        keys |= _subtree_keys(child)
    return keys
