"""Deletion-tree rules of SPEC §6, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from sqlrs_engine.deletion.tree import (
    DeleteNode,
    instance_node,
    job_node,
    result,
    state_node,
)


def inst(instance_id: str, runtime_id: str | None = "host:1") -> dict[str, Any]:
    return {"instance_id": instance_id, "runtime_id": runtime_id}


def state(state_id: str) -> dict[str, Any]:
    return {"state_id": state_id}


@pytest.mark.parametrize(
    ("connections", "force", "dry_run", "status", "outcome", "blocked"),
    [
        (0, False, False, 200, "deleted", None),
        (0, False, True, 200, "would_delete", None),
        (2, False, False, 409, "blocked", "active_connections"),
        (2, False, True, 200, "blocked", "active_connections"),
        (2, True, False, 200, "deleted", None),
        (2, True, True, 200, "would_delete", None),
    ],
)
def test_instance_rules(
    connections: int, force: bool, dry_run: bool, status: int, outcome: str, blocked: str | None
) -> None:
    code, body = result(instance_node(inst("i1"), connections, force), dry_run)
    assert (code, body["outcome"], body["dry_run"]) == (status, outcome, dry_run)
    assert body["root"].get("blocked") == blocked
    assert body["root"]["connections"] == connections
    assert body["root"]["runtime_id"] == "host:1"


def test_instance_without_runtime_id_has_no_field() -> None:
    node = instance_node(inst("i1", None), 0, False).to_json()
    assert node == {"kind": "instance", "id": "i1", "connections": 0}


@pytest.mark.parametrize(
    ("children", "status", "blocked"),
    [
        ([], 200, None),
        ([instance_node(inst("i1"), 0, False)], 409, "has_descendants"),
        ([state_node(state("c"), [], False)], 409, "has_descendants"),
    ],
)
def test_state_without_recurse_is_blocked_by_any_descendant(
    children: list[DeleteNode], status: int, blocked: str | None
) -> None:
    code, body = result(state_node(state("s"), children, recurse=False), dry_run=False)
    assert code == status
    assert body["root"].get("blocked") == blocked
    assert "children" not in body["root"]


def test_recurse_lists_instances_then_child_states_and_propagates_blocks() -> None:
    busy = instance_node(inst("busy"), 1, force=False)
    grandchild = state_node(state("g"), [busy], recurse=True)
    child = state_node(state("c"), [grandchild], recurse=True)
    root = state_node(state("s"), [instance_node(inst("idle"), 0, False), child], recurse=True)
    code, body = result(root, dry_run=False)
    assert code == 409 and body["outcome"] == "blocked"
    tree = body["root"]
    assert tree["blocked"] == "blocked_by_descendant"
    assert [c["kind"] for c in tree["children"]] == ["instance", "state"]
    assert "blocked" not in tree["children"][0]
    assert tree["children"][1]["blocked"] == "blocked_by_descendant"
    assert tree["children"][1]["children"][0]["children"][0]["blocked"] == "active_connections"
    assert [n.id for n in root.post_order()] == ["idle", "busy", "g", "c", "s"]


def test_recurse_with_force_deletes_everything() -> None:
    busy = instance_node(inst("busy"), 3, force=True)
    root = state_node(state("s"), [state_node(state("c"), [busy], True)], True)
    code, body = result(root, dry_run=False)
    assert (code, body["outcome"]) == (200, "deleted")


@pytest.mark.parametrize(
    ("running", "force", "dry_run", "status", "outcome"),
    [
        (False, False, False, 200, "deleted"),
        (True, False, False, 409, "blocked"),
        (True, False, True, 200, "blocked"),
        (True, True, False, 200, "deleted"),
        (False, False, True, 200, "would_delete"),
    ],
)
def test_job_rules(running: bool, force: bool, dry_run: bool, status: int, outcome: str) -> None:
    code, body = result(job_node({"job_id": "j"}, running, force), dry_run)
    assert (code, body["outcome"]) == (status, outcome)
    assert ("blocked" in body["root"]) == (outcome == "blocked")
    assert "connections" not in body["root"]


JOB_J = {"kind": "job", "id": "j", "blocked": "active_tasks"}


@pytest.mark.parametrize(
    ("case", "recurse", "children", "used_by", "dry_run", "status", "expected"),
    [
        (
            "held, no descendants",
            False,
            [],
            ["j"],
            False,
            409,
            {"kind": "state", "id": "s", "blocked": "active_tasks", "children": [JOB_J]},
        ),
        (
            "held: the dry run says blocked too",
            False,
            [],
            ["j"],
            True,
            200,
            {"kind": "state", "id": "s", "blocked": "active_tasks", "children": [JOB_J]},
        ),
        (
            "held and with descendants: the job is named, descendants are not listed",
            False,
            [instance_node(inst("i1"), 0, False)],
            ["j"],
            False,
            409,
            {"kind": "state", "id": "s", "blocked": "active_tasks", "children": [JOB_J]},
        ),
        (
            "held, recurse: its own reason, jobs after its instances",
            True,
            [instance_node(inst("i1"), 0, False)],
            ["j", "k"],
            False,
            409,
            {
                "kind": "state",
                "id": "s",
                "blocked": "active_tasks",
                "children": [
                    {"kind": "instance", "id": "i1", "connections": 0, "runtime_id": "host:1"},
                    JOB_J,
                    {"kind": "job", "id": "k", "blocked": "active_tasks"},
                ],
            },
        ),
        (
            "held, recurse, a busy instance too: active_tasks wins",
            True,
            [instance_node(inst("i1"), 2, False)],
            ["j"],
            False,
            409,
            {
                "kind": "state",
                "id": "s",
                "blocked": "active_tasks",
                "children": [
                    {
                        "kind": "instance",
                        "id": "i1",
                        "connections": 2,
                        "runtime_id": "host:1",
                        "blocked": "active_connections",
                    },
                    JOB_J,
                ],
            },
        ),
        (
            "not held: the SPEC rules as before",
            True,
            [instance_node(inst("i1"), 0, False)],
            [],
            False,
            200,
            {
                "kind": "state",
                "id": "s",
                "children": [
                    {"kind": "instance", "id": "i1", "connections": 0, "runtime_id": "host:1"}
                ],
            },
        ),
    ],
)
def test_a_state_held_by_running_jobs_is_blocked_and_names_them(
    case: str,
    recurse: bool,
    children: list[DeleteNode],
    used_by: list[str],
    dry_run: bool,
    status: int,
    expected: dict[str, Any],
) -> None:
    code, body = result(state_node(state("s"), children, recurse, used_by), dry_run)
    assert (code, body["root"]) == (status, expected), case
    assert body["outcome"] == ("blocked" if used_by else "deleted")


def test_a_held_descendant_blocks_every_ancestor() -> None:
    """Even with `force`: no flag lifts `active_tasks` on a state."""
    grandchild = state_node(state("g"), [], recurse=True, used_by=["j"])
    child = state_node(state("c"), [instance_node(inst("i1"), 3, force=True), grandchild], True)
    root = state_node(state("s"), [child], recurse=True)
    code, body = result(root, dry_run=False)
    assert (code, body["outcome"]) == (409, "blocked")
    tree = body["root"]
    assert tree["blocked"] == child.to_json()["blocked"] == "blocked_by_descendant"
    assert "blocked" not in tree["children"][0]["children"][0], "the forced instance is not"
    assert tree["children"][0]["children"][1]["blocked"] == "active_tasks"
    assert tree["children"][0]["children"][1]["children"] == [JOB_J]
