"""Pieces of the psql job that can be judged without an engine (SPEC §2.9, §2.11, §0.1).

A PsqlJob is driven directly (make_plan, execute, release) against a real Registry and the
copy snapshot backend. The fake runtime's psql "applies" each script to the data dir it runs
on (tests/jobs/conftest.py), so a test can tell which steps' effects a state or an instance
really holds. One test runs real psql on a real server for the text of a real failure.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import ujson

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.clock import now_rfc3339
from sqlrs_engine.deletion.uses import StateUses
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.jobs.builder import StateBuilder as PsqlJob
from sqlrs_engine.jobs.kinds.psql import OUTPUT_TAIL
from sqlrs_engine.persistence.metadata import StateRecord
from sqlrs_engine.runtime.base import OutputSink, pgdata_of
from sqlrs_engine.snapshot.layout import state_build_marker
from tests.jobs.conftest import (
    ASK,
    HostStore,
    Parts,
    ScriptRuntime,
    World,
    applied,
    log_lines,
    make_state_dir,
    psql_request,
    task_events,
)
from tests.support.dirs import servers_under
from tests.support.fake_runtime import RESOLVED, ClientBehaviour
from tests.support.waiting import WaitingToken

TWO_STEPS = psql_request("-c", "create table a()", "-c", "create table b()")
DEFAULTS = ["-X", "-v", "ON_ERROR_STOP=1"]


def run(job: PsqlJob) -> dict[str, Any]:
    """Plan and execute like the supervisor does (without its bookkeeping)."""
    job.make_plan()
    try:
        return job.execute()
    except BaseException:
        job.release()
        raise
    finally:
        job.events.close()  # buffered log lines are stored, as the supervisor does


def outputs(job: PsqlJob) -> list[str]:
    return [t.output_state_id for t in job.plan if t.type == "state_execute"]


def printing(*chunks: tuple[str, bytes], code: int = 0) -> ClientBehaviour:
    def client(_args: Sequence[str], on_output: OutputSink, _cancel: CancelToken) -> int:
        for stream, chunk in chunks:
            on_output(stream, chunk)
        return code

    return client


# -- a failing step --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "exit_code", "code", "details"),
    [
        pytest.param(
            [("stderr", b'ERROR:  relation "t" does not exist\nLINE 1: select * from t\n')],
            3,
            "internal_error",
            # psql's echo of the input line is not recorded (SPEC §0.9: no input contents)
            'ERROR:  relation "t" does not exist',
            id="psql-error",
        ),
        pytest.param(
            [("stdout", b"CREATE TABLE\n"), ("stderr", b"ERROR:  boom\n")],
            3,
            "internal_error",
            "CREATE TABLE\nERROR:  boom",
            id="both-streams-in-order",
        ),
        pytest.param(
            [("stderr", b"ERR"), ("stderr", b"OR:  split\r\n")],
            1,
            "internal_error",
            "ERROR:  split",
            id="chunks-joined-crlf-dropped",
        ),
        pytest.param(
            [("stderr", b"ERROR:  no newline at the end")],
            1,
            "internal_error",
            "ERROR:  no newline at the end",
            id="last-line-flushed",
        ),
        pytest.param([], 2, "internal_error", "psql exited with code 2", id="silent"),
        pytest.param(
            [("stdout", b"\n\n")], 1, "internal_error", "psql exited with code 1", id="blank"
        ),
        pytest.param(
            [("stderr", b"ERROR:  could not extend file: No space left on device\n")],
            1,
            "cache_limit_too_small",
            '{"phase":"prepare_step","error":'
            '"ERROR:  could not extend file: No space left on device"}',
            id="disk-full",
        ),
    ],
)
def test_a_failing_step_is_a_job_failure_with_the_psql_output(
    world: World,
    chunks: list[tuple[str, bytes]],
    exit_code: int,
    code: str,
    details: str,
) -> None:
    """SPEC §2.11: `psql execution failed` with psql's output as details; the output is
    also logged line by line as `psql: <line>`."""
    job_id = world.add_job(psql_request("-c", "select * from t"))
    parts = world.start()
    runtime = ScriptRuntime(printing(*chunks, code=exit_code))
    job = parts.psql_job(job_id, psql_request("-c", "select * from t"), runtime)
    with pytest.raises(JobFailure) as raised:
        run(job)
    failure = raised.value
    assert (failure.code, failure.message, failure.details) == (
        code,
        "psql execution failed",
        details,
    )
    logged = log_lines(parts.events(job_id))
    psql = logged[logged.index("psql: start") + 1 :]
    output = ujson.loads(details)["error"] if code == "cache_limit_too_small" else details
    if details.startswith("psql exited"):
        assert all(line == "psql: " for line in psql)
    else:
        assert psql == [f"psql: {line}" for line in output.split("\n")]
    assert runtime.running == set(), "released"
    assert parts.registry.list_states(None, None, None).get(timeout=ASK) == []
    assert not any(parts.store.layout.states_dir(RESOLVED).glob("*/PG_VERSION"))


def test_only_the_tail_of_a_long_output_is_kept(world: World) -> None:
    lines = [f"{n:04d} " + "x" * 995 for n in range(60)]  # 60 KB of output
    client = printing(*[("stderr", f"{line}\n".encode()) for line in lines], code=3)
    job_id = world.add_job(psql_request("-c", "select 1"))
    parts = world.start()
    with pytest.raises(JobFailure) as raised:
        run(parts.psql_job(job_id, psql_request("-c", "select 1"), ScriptRuntime(client)))
    details = raised.value.details or ""
    assert len(details) <= OUTPUT_TAIL
    assert details.endswith(lines[-1])
    assert lines[0] not in details
    assert details.startswith("00"), "whole lines only"
    assert len(log_lines(parts.events(job_id))) > 60, "the full output is still logged"


# -- how steps run -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "stdin", "calls"),
    [
        pytest.param(
            ["-c", "select 1"], None, [([*DEFAULTS, "-c", "select 1"], None, "")], id="command"
        ),
        pytest.param(
            ["-X", "-c", "select 1"],
            None,
            [([*DEFAULTS, "-c", "select 1"], None, "")],
            id="no-duplicate-default",
        ),
        pytest.param(
            ["-f", "{dir}/a.sql"],
            None,
            [([*DEFAULTS, "-f", "{dir}/a.sql"], None, "{dir}")],
            id="file-runs-in-its-dir",
        ),
        pytest.param(
            ["-c", "select 1", "-f", "-"],
            "select 2;",
            [
                ([*DEFAULTS, "-c", "select 1"], None, ""),
                ([*DEFAULTS, "-f", "-"], b"select 2;", ""),
            ],
            id="stdin-only-for-its-step",
        ),
        pytest.param(
            ["-v", "x=1", "-c", "select :x", "-c", "select 2"],
            None,
            [
                (["-v", "x=1", *DEFAULTS, "-c", "select :x"], None, ""),
                (["-v", "x=1", *DEFAULTS, "-c", "select 2"], None, ""),
            ],
            id="shared-options-on-every-step",
        ),
    ],
)
def test_each_step_runs_psql_with_its_arguments_on_one_server(
    world: World,
    tmp_path: Path,
    args: list[str],
    stdin: str | None,
    calls: list[tuple[list[str], bytes | None, str]],
) -> None:
    """SPEC §0.1, §2.11: every step gets -X and ON_ERROR_STOP=1 and the server's DSN; stdin
    goes only to `-f -`; all steps share the job's one server."""
    (tmp_path / "a.sql").write_text("create table a();\n")

    def fill(text: str) -> str:
        return text.replace("{dir}", str(tmp_path))

    request = psql_request(*[fill(a) for a in args], stdin=stdin)
    job_id = world.add_job(request)
    parts = world.start()
    runtime = ScriptRuntime()
    result = run(parts.psql_job(job_id, request, runtime))
    # psql runs from the job's staging copy (jobs/staging.py): map its paths back.
    stage_root = re.compile(r"/[^ ]*/jobs/[0-9a-f]{32}/stage/root(?=/)")

    def unstage(text: str) -> str:
        return stage_root.sub("", text)

    got = [
        ([unstage(a) for a in c.args], c.stdin, Path(unstage(str(c.cwd)))) for c in runtime.calls
    ]
    assert all("/stage/root/" in str(c.cwd) for c in runtime.calls)
    # The DSN on psql's command line has no password (it goes into PGPASSWORD).
    bare = re.sub(r"//sqlrs:[^@]+@", "//sqlrs@", result["dsn"])
    assert bare != result["dsn"]
    want = [
        ([*map(fill, argv), bare], data, Path(fill(cwd)) if cwd else parts.root)
        for argv, data, cwd in calls
    ]
    assert got == want
    assert {c.program for c in runtime.calls} == {"psql"}
    assert len({c.handle.port for c in runtime.calls}) == 1


def test_states_chain_and_the_instance_holds_every_step(world: World) -> None:
    """SPEC §2.9 steps 9-13 and §2.12: each state snapshots the server after its step; the
    rows chain by parent; the instance gets the running server and its clone."""
    job_id = world.add_job(TWO_STEPS)
    parts = world.start()
    runtime = ScriptRuntime()
    job = parts.psql_job(job_id, TWO_STEPS, runtime)
    result = run(job)
    first, second = outputs(job)
    rows = [parts.state_row(first), parts.state_row(second)]
    assert [r["parent_state_id"] if r else "missing" for r in rows] == [None, first]
    normalized = parts.job_row(job_id)["prepare_args_normalized"]
    for row in rows:
        assert row is not None
        assert row["prepare_args_normalized"] == normalized, "the whole job's args"
        assert row["image_id"] == RESOLVED and row["snapshot_backend"] == "copy"
        assert row["size_bytes"] > 0
        assert parts.store.validate_state(RESOLVED, row["state_id"]) is None, "committed"
    assert applied(parts.state_dir(first)) == ["create table a()"]
    assert applied(parts.state_dir(second)) == ["create table a()", "create table b()"]
    runtime_dir = parts.store.layout.job_runtime_dir(job_id)
    assert result == {
        "dsn": result["dsn"],
        "instance_id": result["instance_id"],
        "state_id": second,
        "image_id": RESOLVED,
        "prepare_kind": "psql",
        "prepare_args_normalized": normalized,
    }
    instance = parts.registry.instance_row(result["instance_id"]).get(timeout=ASK)
    assert instance["state_id"] == second and instance["job_id"] == job_id
    assert instance["runtime_dir"] == str(runtime_dir)
    assert runtime.running == {runtime_dir}, "one server: the instance's"
    assert applied(runtime_dir) == ["create table a()", "create table b()"]
    job.release()
    assert runtime.running == {runtime_dir}, "release leaves a handed-over server alone"
    assert "instance created " + result["instance_id"] in log_lines(parts.events(job_id))


# -- the cache ---------------------------------------------------------------------------------


def test_cached_steps_run_nothing_and_the_instance_starts_from_the_final_state(
    world: World,
) -> None:
    """SPEC §2.9 step 1: no `running` event, no psql; a missing size is back-filled."""
    first_job, second_job = world.add_job(TWO_STEPS), world.add_job(TWO_STEPS)
    parts = world.start()
    first = parts.psql_job(first_job, TWO_STEPS, ScriptRuntime())
    run(first)
    final = outputs(first)[1]
    parts.registry.set_state_size(final, 0).get(timeout=ASK)
    runtime = ScriptRuntime()
    second = parts.psql_job(second_job, TWO_STEPS, runtime)
    result = run(second)
    assert runtime.calls == []
    assert task_events(parts.events(second_job)) == [
        ("resolve-image", "succeeded"),
        ("execute-0", "succeeded"),
        ("execute-1", "succeeded"),
        ("prepare-instance", "running"),
        ("prepare-instance", "succeeded"),
    ]
    assert result["state_id"] == final
    clone = parts.store.layout.job_runtime_dir(second_job)
    assert runtime.running == {clone}
    assert applied(clone) == ["create table a()", "create table b()"]
    size = (parts.state_row(final) or {}).get("size_bytes")
    assert size == parts.store.state_size(RESOLVED, final) > 0, "back-filled"


def damage(state_dir: Path, how: str) -> None:
    """Break a committed state dir the way `how` says."""
    if how == "marker":
        state_build_marker(state_dir).unlink()
    elif how == "postmaster.pid":
        (pgdata_of(state_dir) / "postmaster.pid").write_text("4242\n")
    elif how == "PG_VERSION":
        (pgdata_of(state_dir) / "PG_VERSION").unlink()
    else:
        shutil.rmtree(state_dir)


def damage_reason(how: str) -> str:
    """What the job's log must give as the reason for each kind of damage."""
    return {
        "marker": "build marker missing",
        "postmaster.pid": "postmaster.pid present",
        "PG_VERSION": "missing PG_VERSION",
        "directory": "state directory is missing",
    }[how]


def build_then_damage(world: World, how: str, *, keep_instance: bool) -> tuple[Parts, str, str]:
    """Job A builds `create table a()`, then its state dir is damaged; job B is stored.

    Without `keep_instance` A's instance is deleted first (rows and server), as a user's
    `sqlrs rm` would; returns the parts, the state id and job B's id.
    """
    request = psql_request("-c", "create table a()")
    first_job, second_job = world.add_job(request), world.add_job(request)
    parts = world.start()
    runtime = ScriptRuntime()
    first = parts.psql_job(first_job, request, runtime)
    instance_id = run(first)["instance_id"]
    (state,) = outputs(first)
    if not keep_instance:
        parts.registry.delete_metadata([instance_id], []).get(timeout=ASK)
        runtime.running.clear()
    damage(parts.state_dir(state), how)
    return parts, state, second_job


DAMAGE = ["marker", "postmaster.pid", "PG_VERSION", "directory"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_dirty_cached_state_is_invalidated_and_rebuilt(world: World, how: str) -> None:
    """SPEC §0.1: the state's dir and row are removed, with a `log` event, and the step
    runs again instead of failing the job."""
    parts, state, job_id = build_then_damage(world, how, keep_instance=False)
    created = (parts.state_row(state) or {})["created_at"]
    reason = damage_reason(how)
    runtime = ScriptRuntime()
    job = parts.psql_job(job_id, psql_request("-c", "create table a()"), runtime)
    job.make_plan()
    assert job.plan[2].cached is True, "the row still exists at planning time"
    job.execute()
    logs = log_lines(parts.events(job_id))
    unusable = [line for line in logs if line.startswith(f"cached state {state} is unusable")]
    assert len(unusable) == 1 and reason in unusable[0] and unusable[0].endswith("rebuilding it")
    assert len(runtime.calls) == 1
    assert ("execute-0", "running") in task_events(parts.events(job_id))
    assert parts.store.validate_state(RESOLVED, state) is None
    assert (parts.state_row(state) or {})["created_at"] >= created
    assert applied(parts.state_dir(state)) == ["create table a()"]


@pytest.mark.parametrize("how", ["marker", "directory"])
def test_a_dirty_cached_state_with_an_instance_is_rebuilt(world: World, how: str) -> None:
    parts, state, job_id = build_then_damage(world, how, keep_instance=True)
    runtime = ScriptRuntime()
    job = parts.psql_job(job_id, psql_request("-c", "create table a()"), runtime)
    run(job)
    assert len(runtime.calls) == 1
    assert parts.store.validate_state(RESOLVED, state) is None


# A dirty parent rebuilt while its child state is intact: the server the rebuild leaves
# holds the parent only, so it must be replaced before it is handed over or built upon
# (it once was handed over as the final state, and a later step stored a wrong state).


def test_a_rebuilt_step_followed_by_a_cached_one_gives_the_final_state(world: World) -> None:
    first_job, second_job = world.add_job(TWO_STEPS), world.add_job(TWO_STEPS)
    parts = world.start()
    first = parts.psql_job(first_job, TWO_STEPS, ScriptRuntime())
    run(first)
    parent, child = outputs(first)
    damage(parts.state_dir(parent), "marker")
    second = parts.psql_job(second_job, TWO_STEPS, ScriptRuntime())
    result = run(second)
    assert result["state_id"] == child
    handed = parts.store.layout.job_runtime_dir(second_job)
    assert applied(parts.state_dir(child)) == ["create table a()", "create table b()"]
    assert applied(handed) == applied(parts.state_dir(child))


def test_a_step_after_a_cached_one_runs_on_the_cached_state(world: World) -> None:
    three = psql_request("-c", "create table a()", "-c", "create table b()", "-c", "create c")
    first_job, second_job = world.add_job(TWO_STEPS), world.add_job(three)
    parts = world.start()
    first = parts.psql_job(first_job, TWO_STEPS, ScriptRuntime())
    run(first)
    damage(parts.state_dir(outputs(first)[0]), "marker")
    second = parts.psql_job(second_job, three, ScriptRuntime())
    run(second)
    built = outputs(second)[2]
    assert (parts.state_row(built) or {})["parent_state_id"] == outputs(first)[1]
    assert applied(parts.state_dir(built)) == [
        "create table a()",
        "create table b()",
        "create c",
    ]


def test_a_state_built_meanwhile_by_another_job_is_reused(world: World) -> None:
    """SPEC §2.9 step 5: under the build lock the cache is checked again; a state another
    job completed is used as is and this job's runtime is dropped."""
    request = psql_request("-c", "create table a()")
    job_id = world.add_job(request)
    parts = world.start()
    runtime = ScriptRuntime()
    job = parts.psql_job(job_id, request, runtime)
    job.make_plan()
    (state,) = outputs(job)
    assert job.plan[2].cached is False
    # Another job finishes the same state after this one planned.
    make_state_dir(parts.store, state)
    record = StateRecord(state, None, RESOLVED, "psql", "-c x", now_rfc3339(), 1)
    parts.registry.insert_state(record).get(timeout=ASK)
    result = job.execute()
    assert runtime.calls == [], "psql never ran"
    assert f"state {state} was built by another job" in log_lines(parts.events(job_id))
    assert parts.task_rows(job_id)["execute-0"]["cached"] == 1
    assert result["state_id"] == state
    assert (parts.state_row(state) or {})["prepare_args_normalized"] == "-c x", "kept as is"


# -- holds on the states a job relies on (deletion/uses.py) ---------------------------------


def test_a_job_holds_the_states_it_relies_on_until_it_ends(world: World) -> None:
    """While step b runs on a clone of the cached state of step a, the job holds both a
    (its clone stands on it) and b (held before its build lock): deleting either is blocked.
    Its release lets go of every hold."""
    one = psql_request("-c", "create table a()")
    two = psql_request("-c", "create table a()", "-c", "create table b()")
    first_job, second_job = world.add_job(one), world.add_job(two)
    parts = world.start()
    uses = StateUses()
    run(parts.psql_job(first_job, one, ScriptRuntime()))
    seen: list[dict[str, list[str]]] = []
    job: PsqlJob

    def client(_args: Sequence[str], on_output: OutputSink, _cancel: CancelToken) -> int:
        seen.append(uses.users(outputs(job)))
        return 0

    job = parts.psql_job(second_job, two, ScriptRuntime(client), state_uses=uses)
    run(job)
    a, b = outputs(job)
    assert seen == [{a: [second_job], b: [second_job]}]
    assert uses.users([a, b]) == {a: [second_job], b: [second_job]}, "the instance names b"
    job.release()
    assert uses.users([a, b]) == {}


def test_a_cached_state_deleted_while_the_job_waited_is_rebuilt(world: World) -> None:
    """A job that comes to rely on a state while a deletion of it is under way waits for the
    deletion to end, finds the state gone, says so, and builds it again."""
    first_job, second_job = world.add_job(TWO_STEPS), world.add_job(TWO_STEPS)
    parts = world.start()
    run(parts.psql_job(first_job, TWO_STEPS, ScriptRuntime()))
    uses = StateUses()
    runtime = ScriptRuntime()
    job = parts.psql_job(second_job, TWO_STEPS, runtime, state_uses=uses)
    token = job.cancel = WaitingToken()
    job.make_plan()
    a, b = outputs(job)
    assert [t.cached for t in job.plan if t.type == "state_execute"] == [True, True]
    results: list[dict[str, Any]] = []
    with uses.fenced([a]) as users:  # what a deletion of `a` holds while it removes it
        assert users == {}
        worker = threading.Thread(target=lambda: results.append(job.execute()))
        worker.start()
        assert token.waiting.wait(ASK), "the job did not wait for the deletion"
        parts.store.remove_state(RESOLVED, a)
        parts.registry.delete_metadata([], [a]).get(timeout=ASK)
    worker.join(ASK)
    job.events.close()
    assert [r["state_id"] for r in results] == [b]
    assert f"waited for a deletion of state {a} to end" in log_lines(parts.events(second_job))
    assert [call.args[-2] for call in runtime.calls] == ["create table a()"], "a rebuilt"
    assert parts.state_row(a) is not None and parts.store.validate_state(RESOLVED, a) is None
    job.release()


def test_a_script_edited_after_planning_is_re_hashed(world: World, tmp_path: Path) -> None:
    """SPEC §2.9 step 2: the step digest is taken again under the file locks; a changed
    script renames the step's state and the chain after it, in the task rows too."""
    script = tmp_path / "a.sql"
    script.write_text("create table a();\n")
    request = psql_request("-f", str(script), "-c", "create table b()")
    job_id = world.add_job(request)
    parts = world.start()
    job = parts.psql_job(job_id, request, ScriptRuntime())
    job.make_plan()
    planned = outputs(job)
    script.write_text("create table changed();\n")
    result = job.execute()
    rebuilt = outputs(job)
    assert rebuilt[0] != planned[0] and rebuilt[1] != planned[1]
    assert "inputs of execute-0 changed since planning; re-hashing" in log_lines(
        parts.events(job_id)
    )
    rows = parts.task_rows(job_id)
    assert [rows[f"execute-{n}"]["output_state_id"] for n in (0, 1)] == rebuilt
    assert rows["execute-1"]["input_id"] == rebuilt[0]
    assert rows["prepare-instance"]["input_id"] == rebuilt[1] == result["state_id"]
    assert parts.state_row(planned[0]) is None and parts.state_row(rebuilt[0]) is not None


def test_a_cancelled_job_stops_before_its_next_step(world: World) -> None:
    job_id = world.add_job(TWO_STEPS)
    parts = world.start()
    runtime = ScriptRuntime()
    job = parts.psql_job(job_id, TWO_STEPS, runtime)
    job.make_plan()
    job.cancel.cancel()
    with pytest.raises(JobFailure) as raised:
        job.execute()
    assert (raised.value.code, raised.value.message) == ("cancelled", "job cancelled")
    assert runtime.calls == []


def test_the_plan_and_signature_are_persisted(world: World) -> None:
    """SPEC §2.8: the task rows replace whatever was stored; the signature goes on the job."""
    job_id = world.add_job(TWO_STEPS)
    parts = world.start()
    job = parts.psql_job(job_id, TWO_STEPS, ScriptRuntime())
    plan = job.make_plan()
    rows = parts.registry.task_rows(job_id).get(timeout=ASK)
    assert [r["task_id"] for r in rows] == [t.task_id for t in plan]
    assert [r["position"] for r in rows] == list(range(len(plan)))
    assert {r["status"] for r in rows} == {"queued"}
    assert parts.job_row(job_id)["signature"] == job.signature
    job.make_plan()
    assert len(parts.registry.task_rows(job_id).get(timeout=ASK)) == len(plan)


# -- real PostgreSQL -----------------------------------------------------------------------------


def test_a_real_psql_error_reaches_the_failure_details(
    host_store: HostStore, host_world: World
) -> None:
    request = psql_request("-c", "select * from missing_table_for_jobs_test")
    job_id = host_world.add_job(request)
    parts: Parts = host_world.start()
    job = parts.psql_job(job_id, request, host_store.runtime)
    with pytest.raises(JobFailure) as raised:
        run(job)
    failure = raised.value
    assert (failure.code, failure.message) == ("internal_error", "psql execution failed")
    assert 'relation "missing_table_for_jobs_test" does not exist' in (failure.details or "")
    runtime_dir = parts.store.layout.job_runtime_dir(job_id)
    assert servers_under(runtime_dir) == [] and not runtime_dir.exists()
