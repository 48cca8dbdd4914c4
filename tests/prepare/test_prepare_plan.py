"""SPEC §2.8 plan shapes, §4.9 task entries, §4.10 task rows, §3.4 lb chaining."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlrs_engine.prepare.digest import step_task_hashes
from sqlrs_engine.prepare.hashing import lb_task_hash, psql_task_hash, sha256_hex, state_id
from sqlrs_engine.prepare.plan import (
    LbChangeset,
    PlanTask,
    build_lb_plan,
    build_psql_plan,
    execute_tasks,
    final_state_id,
)
from sqlrs_engine.prepare.psql_args import parse_psql_args

DIGEST_IMAGE = "postgres:17@sha256:" + "0" * 64
RESOLVED = "postgres@sha256:" + "1" * 64
VECTOR_TASK = "98c759b26d16aee411a24a6a1784792c227e2646c7af6dfa71002893b3e2603b"
VECTOR_STATE = "244c583aff02ac7a73f50615e87b0db5ec805d53442b385b0ecf9cb5c51b2325"

ROW_COLUMNS = {
    "job_id",
    "task_id",
    "position",
    "type",
    "status",
    "planner_kind",
    "input_kind",
    "input_id",
    "image_id",
    "resolved_image_id",
    "task_hash",
    "output_state_id",
    "cached",
    "instance_mode",
    "changeset_id",
    "changeset_author",
    "changeset_path",
}


def never(_: str) -> bool:
    return False


def test_spec_vector_plan_without_resolve() -> None:
    plan_input = parse_psql_args(["-c", "select 1"], None)
    hashes = step_task_hashes(plan_input, "dev")
    tasks = build_psql_plan(
        requested_image_id=DIGEST_IMAGE,
        effective_image_id=DIGEST_IMAGE,
        step_task_hashes=hashes,
        state_exists=never,
        args_summaries=[s.args_summary for s in plan_input.steps],
    )
    assert [t.to_status_json() for t in tasks] == [
        {"task_id": "plan", "type": "plan", "planner_kind": "psql"},
        {
            "task_id": "execute-0",
            "type": "state_execute",
            "input": {"kind": "image", "id": DIGEST_IMAGE},
            "task_hash": VECTOR_TASK,
            "output_state_id": VECTOR_STATE,
            "cached": False,
        },
        {
            "task_id": "prepare-instance",
            "type": "prepare_instance",
            "input": {"kind": "state", "id": VECTOR_STATE},
            "instance_mode": "ephemeral",
        },
    ]
    assert final_state_id(tasks) == VECTOR_STATE


@pytest.mark.parametrize(
    ("requested", "effective", "task_ids"),
    [
        (DIGEST_IMAGE, DIGEST_IMAGE, ["plan", "execute-0", "prepare-instance"]),
        ("postgres@host-15.18", "postgres@host-15.18", ["plan", "execute-0", "prepare-instance"]),
        ("postgres:17", RESOLVED, ["plan", "resolve-image", "execute-0", "prepare-instance"]),
        ("postgres@", RESOLVED, ["plan", "resolve-image", "execute-0", "prepare-instance"]),
    ],
)
def test_resolve_image_task_only_without_digest(
    requested: str, effective: str, task_ids: list[str]
) -> None:
    tasks = build_psql_plan(
        requested_image_id=requested,
        effective_image_id=effective,
        step_task_hashes=["h0"],
        state_exists=never,
    )
    assert [t.task_id for t in tasks] == task_ids
    assert tasks[-2].input_id == effective
    resolve = [t for t in tasks if t.task_id == "resolve-image"]
    if resolve:
        assert resolve[0].to_status_json() == {
            "task_id": "resolve-image",
            "type": "resolve_image",
            "image_id": requested,
            "resolved_image_id": effective,
        }


def test_multi_step_chaining_and_cached_flags() -> None:
    hashes = ["h0", "h1", "h2"]
    s0 = state_id("image", RESOLVED, "h0")
    s1 = state_id("state", s0, "h1")
    s2 = state_id("state", s1, "h2")
    existing = {s0, s2}
    tasks = build_psql_plan(
        requested_image_id="postgres:17",
        effective_image_id=RESOLVED,
        step_task_hashes=hashes,
        state_exists=existing.__contains__,
        args_summaries=["-c a", "-f /w/b.sql", "-f -"],
    )
    executes = execute_tasks(tasks)
    assert [(t.task_id, t.input_kind, t.input_id, t.output_state_id) for t in executes] == [
        ("execute-0", "image", RESOLVED, s0),
        ("execute-1", "state", s0, s1),
        ("execute-2", "state", s1, s2),
    ]
    assert [t.cached for t in executes] == [True, False, True]
    assert [t.args_summary for t in executes] == ["-c a", "-f /w/b.sql", "-f -"]
    assert tasks[-1].to_status_json()["input"] == {"kind": "state", "id": s2}
    assert executes[1].to_status_json() == {
        "task_id": "execute-1",
        "type": "state_execute",
        "input": {"kind": "state", "id": s0},
        "task_hash": "h1",
        "output_state_id": s1,
        "cached": False,
    }


def test_real_multi_step_psql_plan(tmp_path: Path) -> None:
    script = tmp_path / "a.sql"
    script.write_text("create table t();\n")
    plan_input = parse_psql_args(["-c", "select 1", "-f", str(script)], None)
    hashes = step_task_hashes(plan_input, "dev")
    tasks = build_psql_plan(
        requested_image_id=DIGEST_IMAGE,
        effective_image_id=DIGEST_IMAGE,
        step_task_hashes=hashes,
        state_exists=never,
        args_summaries=[s.args_summary for s in plan_input.steps],
    )
    first, second = execute_tasks(tasks)
    assert first.task_hash == VECTOR_TASK  # a step hash depends on that step's input only
    assert first.output_state_id == VECTOR_STATE
    assert second.input_id == VECTOR_STATE
    assert second.task_hash == psql_task_hash(sha256_hex("create table t();\n"), "dev")
    assert second.output_state_id == state_id("state", VECTOR_STATE, second.task_hash)
    assert second.args_summary == f"-f {script}"


def test_state_exists_is_asked_for_each_output_state() -> None:
    asked: list[str] = []

    def exists(sid: str) -> bool:
        asked.append(sid)
        return False

    tasks = build_psql_plan(
        requested_image_id=DIGEST_IMAGE,
        effective_image_id=DIGEST_IMAGE,
        step_task_hashes=["a", "b"],
        state_exists=exists,
    )
    assert asked == [t.output_state_id for t in execute_tasks(tasks)]


@pytest.mark.parametrize(
    ("hashes", "summaries"),
    [([], None), (["a"], ["x", "y"])],
)
def test_build_psql_plan_rejects_bad_input(hashes: list[str], summaries: list[str] | None) -> None:
    with pytest.raises(ValueError):
        build_psql_plan(
            requested_image_id=DIGEST_IMAGE,
            effective_image_id=DIGEST_IMAGE,
            step_task_hashes=hashes,
            state_exists=never,
            args_summaries=summaries,
        )


# --------------------------------------------------------------------- renderings


def test_task_rows_have_exactly_the_queue_columns() -> None:
    tasks = build_psql_plan(
        requested_image_id="postgres:17",
        effective_image_id=RESOLVED,
        step_task_hashes=["h0"],
        state_exists=lambda _: True,
    )
    rows = [t.to_task_row("job1", i) for i, t in enumerate(tasks)]
    for row in rows:
        assert set(row) == ROW_COLUMNS
        assert row["status"] == "queued"
        assert row["job_id"] == "job1"
    assert [r["position"] for r in rows] == [0, 1, 2, 3]
    plan_row, resolve_row, execute_row, instance_row = rows
    assert plan_row["planner_kind"] == "psql"
    assert plan_row["input_kind"] is None
    assert plan_row["cached"] is None
    assert (resolve_row["image_id"], resolve_row["resolved_image_id"]) == ("postgres:17", RESOLVED)
    assert execute_row["cached"] == 1
    assert (execute_row["input_kind"], execute_row["input_id"]) == ("image", RESOLVED)
    assert execute_row["changeset_id"] is None
    assert instance_row["instance_mode"] == "ephemeral"
    assert instance_row["input_kind"] == "state"


def test_rows_round_trip() -> None:
    tasks = build_lb_plan(
        requested_image_id="postgres:17",
        effective_image_id=RESOLVED,
        changesets=[LbChangeset("1", "me", "db/a.xml", "c1")],
        state_exists=never,
    )
    for position, task in enumerate(tasks):
        row = task.to_task_row("j", position, status="running")
        row["started_at"] = "2026-01-01T00:00:00Z"  # extra columns are ignored
        assert PlanTask.from_task_row(row, args_summary=task.args_summary) == task


def test_cached_always_present_for_state_execute() -> None:
    task = PlanTask(task_id="execute-0", type="state_execute", input_kind="image", input_id="i")
    assert task.to_status_json()["cached"] is False
    assert task.to_task_row("j", 0)["cached"] == 0
    assert task.to_task_entry("j", "queued")["cached"] is False
    other = PlanTask(task_id="plan", type="plan", planner_kind="psql")
    assert "cached" not in other.to_status_json()


def test_task_entries() -> None:
    tasks = build_psql_plan(
        requested_image_id="postgres:17",
        effective_image_id=RESOLVED,
        step_task_hashes=["h0"],
        state_exists=never,
        args_summaries=["-c select 1"],
    )
    entries = [t.to_task_entry("job1", "succeeded") for t in tasks]
    s0 = state_id("image", RESOLVED, "h0")
    assert entries == [
        {
            "task_id": "plan",
            "job_id": "job1",
            "type": "plan",
            "status": "succeeded",
            "planner_kind": "psql",
        },
        {
            "task_id": "resolve-image",
            "job_id": "job1",
            "type": "resolve_image",
            "status": "succeeded",
            "image_id": "postgres:17",
            "resolved_image_id": RESOLVED,
        },
        {
            "task_id": "execute-0",
            "job_id": "job1",
            "type": "state_execute",
            "status": "succeeded",
            "input": {"kind": "image", "id": RESOLVED},
            "args_summary": "-c select 1",
            "task_hash": "h0",
            "output_state_id": s0,
            "cached": False,
        },
        {
            "task_id": "prepare-instance",
            "job_id": "job1",
            "type": "prepare_instance",
            "status": "succeeded",
            "input": {"kind": "state", "id": s0},
            "instance_mode": "ephemeral",
        },
    ]
    # the status shape never carries args_summary or status
    assert all("args_summary" not in t.to_status_json() for t in tasks)
    assert all("status" not in t.to_status_json() for t in tasks)


# ----------------------------------------------------------------------------- lb


def test_lb_plan_without_changesets() -> None:
    tasks = build_lb_plan(
        requested_image_id=DIGEST_IMAGE,
        effective_image_id=DIGEST_IMAGE,
        changesets=[],
        state_exists=never,
    )
    assert [t.task_id for t in tasks] == ["plan", "execute-0", "prepare-instance"]
    execute = tasks[1]
    assert tasks[0].planner_kind == "lb"
    assert execute.task_hash == lb_task_hash(DIGEST_IMAGE, None)
    assert execute.output_state_id == state_id("image", DIGEST_IMAGE, execute.task_hash)
    assert execute.args_summary == ""
    assert tasks[2].input_id == execute.output_state_id


def test_lb_plan_chains_changesets() -> None:
    changesets = [
        LbChangeset("1", "alice", "db/a.xml", "c1"),
        LbChangeset("2", "", "db/a.xml", "c2"),
    ]
    tasks = build_lb_plan(
        requested_image_id="postgres:17",
        effective_image_id=RESOLVED,
        changesets=changesets,
        state_exists=never,
    )
    assert [t.task_id for t in tasks] == [
        "plan",
        "resolve-image",
        "execute-0",
        "execute-1",
        "prepare-instance",
    ]
    first, second = execute_tasks(tasks)
    assert first.task_hash == lb_task_hash(RESOLVED, "c1")
    assert first.output_state_id == state_id("image", RESOLVED, first.task_hash)
    assert second.task_hash == lb_task_hash(first.output_state_id, "c2")
    assert second.output_state_id == state_id("state", first.output_state_id, second.task_hash)
    assert first.args_summary == "1::alice::db/a.xml"
    assert second.args_summary == ""  # all three parts are required
    assert first.to_status_json() == {
        "task_id": "execute-0",
        "type": "state_execute",
        "input": {"kind": "image", "id": RESOLVED},
        "task_hash": first.task_hash,
        "output_state_id": first.output_state_id,
        "cached": False,
        "changeset_id": "1",
        "changeset_author": "alice",
        "changeset_path": "db/a.xml",
    }
    assert "changeset_author" not in second.to_status_json()
    assert final_state_id(tasks) == second.output_state_id


def test_final_state_id_of_no_execute_tasks() -> None:
    assert final_state_id([PlanTask(task_id="plan", type="plan")]) == ""
