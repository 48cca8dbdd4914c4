"""The deletion tree of SPEC §6: which nodes a DELETE would remove and what blocks it.

Pure: built from rows and connection counts, so every rule is table-tested. The executor
(deletion/service.py) only acts on a tree whose outcome is `deleted`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

ACTIVE_CONNECTIONS = "active_connections"
HAS_DESCENDANTS = "has_descendants"
BLOCKED_BY_DESCENDANT = "blocked_by_descendant"
ACTIVE_TASKS = "active_tasks"


@dataclass
class DeleteNode:
    """One node: an instance, a state or a job, with its children."""

    kind: str
    id: str
    connections: int | None = None
    runtime_id: str | None = None
    blocked: str | None = None
    children: list[DeleteNode] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict, repr=False)
    """The database row the node stands for (not part of the JSON)."""

    def to_json(self) -> dict[str, Any]:
        node: dict[str, Any] = {"kind": self.kind, "id": self.id}
        if self.kind == "instance":
            node["connections"] = self.connections or 0
        if self.blocked:
            node["blocked"] = self.blocked
        if self.runtime_id:
            node["runtime_id"] = self.runtime_id
        if self.children:
            node["children"] = [child.to_json() for child in self.children]
        return node

    def post_order(self) -> Iterator[DeleteNode]:
        """Children before parents: the order in which nodes are removed."""
        for child in self.children:
            yield from child.post_order()
        yield self

    @property
    def is_blocked(self) -> bool:
        return self.blocked is not None or any(child.is_blocked for child in self.children)


def instance_node(row: dict[str, Any], connections: int, force: bool) -> DeleteNode:
    """An instance is blocked by client connections unless forced (§0.5)."""
    return DeleteNode(
        kind="instance",
        id=row["instance_id"],
        connections=connections,
        runtime_id=row.get("runtime_id") or None,
        blocked=ACTIVE_CONNECTIONS if connections > 0 and not force else None,
        row=row,
    )


def state_node(
    row: dict[str, Any],
    children: list[DeleteNode],
    recurse: bool,
    used_by: Sequence[str] = (),
) -> DeleteNode:
    """A state without `recurse` is blocked by any descendant (children are not listed);
    with `recurse` it lists them and is blocked when any of them is (§6).

    A state that running prepare jobs rely on (`used_by`: their ids, see deletion/uses.py)
    is blocked `active_tasks` whatever the flags — its own reason, ahead of the others,
    since neither `recurse` nor `force` can lift it — and lists those jobs as `job` nodes
    (blocked `active_tasks` too) after its other children, so the answer names them.
    """
    node = DeleteNode(kind="state", id=row["state_id"], row=row)
    jobs = [using_job_node(job_id) for job_id in used_by]
    if not recurse:
        if jobs:
            node.blocked, node.children = ACTIVE_TASKS, jobs
        else:
            node.blocked = HAS_DESCENDANTS if children else None
        return node
    node.children = children + jobs
    if jobs:
        node.blocked = ACTIVE_TASKS
    elif any(child.is_blocked for child in children):
        node.blocked = BLOCKED_BY_DESCENDANT
    return node


def using_job_node(job_id: str) -> DeleteNode:
    """A running job that relies on a state being deleted: what blocks it (never removed)."""
    return DeleteNode(kind="job", id=job_id, blocked=ACTIVE_TASKS)


def job_node(row: dict[str, Any], has_running_task: bool, force: bool) -> DeleteNode:
    return DeleteNode(
        kind="job",
        id=row["job_id"],
        blocked=ACTIVE_TASKS if has_running_task and not force else None,
        row=row,
    )


def outcome(root: DeleteNode, dry_run: bool) -> str:
    if root.is_blocked:
        return "blocked"
    return "would_delete" if dry_run else "deleted"


def result(root: DeleteNode, dry_run: bool) -> tuple[int, dict[str, Any]]:
    """(HTTP status, DeleteResult): 409 only for a blocked real delete."""
    verdict = outcome(root, dry_run)
    status = 409 if verdict == "blocked" and not dry_run else 200
    return status, {"dry_run": dry_run, "outcome": verdict, "root": root.to_json()}
