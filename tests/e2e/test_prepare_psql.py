"""prepare:psql end to end: real engine, real PostgreSQL (SPEC §2, §4)."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import pwd
import re
import time
from pathlib import Path

import pytest

from tests.support.dirs import servers_under
from tests.support.engine_process import EngineProcess
from tests.support.prepare import (
    postgres_processes,
    prepare,
    psql_body,
    query,
    release_file,
    submit,
    wait,
    wait_for_running_step,
    waits_for,
)


@pytest.fixture(scope="module")
def engine(shared_engine: EngineProcess) -> EngineProcess:
    """One engine for the module: the tests use distinct scripts, so they don't interfere."""
    return shared_engine


def test_single_command_step_builds_a_state_and_an_instance(engine: EngineProcess) -> None:
    outcome = prepare(
        engine, psql_body("-c", "create table t(a int); insert into t values (1), (2)")
    )
    assert outcome.status["status"] == "succeeded", outcome.status
    assert query(outcome.dsn, "select sum(a) from t") == "3"
    result = outcome.result
    assert result["image_id"] == "postgres@host-15.18"
    assert result["prepare_args_normalized"].endswith("-X -v ON_ERROR_STOP=1")
    # SPEC §0.9: the DSN carries the instance's own 32-character secret.
    assert re.fullmatch(
        r"postgres://sqlrs:[A-Za-z0-9_-]{32}@127\.0\.0\.1:\d+/postgres", result["dsn"]
    )
    types = [e["type"] for e in outcome.events]
    assert types[:2] == ["status", "status"] and types[-2:] == ["status", "result"]
    assert outcome.task_events("execute-0") == ["running", "succeeded"]
    assert "snapshot: complete" in outcome.log_lines()
    state = engine.get(f"/v1/states/{result['state_id']}").json()
    assert state["refcount"] >= 1 and state["size_bytes"] > 1_000_000
    instance = engine.get(f"/v1/instances/{result['instance_id']}").json()
    assert instance["state_id"] == result["state_id"]


def test_second_identical_prepare_is_a_cache_hit_with_a_new_instance(engine: EngineProcess) -> None:
    body = psql_body("-c", "create table hit(a int); insert into hit values (42)")
    first = prepare(engine, body)
    second = prepare(engine, body)
    assert second.status["status"] == "succeeded"
    execute = next(t for t in second.status["tasks"] if t["task_id"] == "execute-0")
    assert execute["cached"] is True
    assert second.task_events("execute-0") == ["succeeded"]
    assert "psql: start" not in second.log_lines()
    assert second.result["state_id"] == first.result["state_id"]
    assert second.result["instance_id"] != first.result["instance_id"]
    assert second.dsn != first.dsn
    query(second.dsn, "insert into hit values (1)")
    assert query(first.dsn, "select count(*) from hit") == "1"
    assert query(second.dsn, "select count(*) from hit") == "2"
    third = prepare(engine, body)
    assert query(third.dsn, "select count(*) from hit") == "1", "writes leaked into the state"


def test_multi_step_files_with_includes_and_stdin(engine: EngineProcess, scratch_dir: Path) -> None:
    (scratch_dir / "lib").mkdir()
    (scratch_dir / "lib" / "table.sql").write_text("create table items(id int, name text);\n")
    (scratch_dir / "schema.sql").write_text(
        "\\ir lib/table.sql\ninsert into items values (1, 'a');\n"
    )
    (scratch_dir / "more.sql").write_text("insert into items values (2, 'b');\n")
    outcome = prepare(
        engine,
        psql_body(
            "-f",
            str(scratch_dir / "schema.sql"),
            "-f",
            str(scratch_dir / "more.sql"),
            "-f",
            "-",
            stdin="insert into items values (3, 'c');",
        ),
    )
    assert outcome.status["status"] == "succeeded", outcome.status
    assert query(outcome.dsn, "select string_agg(name, ',' order by id) from items") == "a,b,c"
    executes = [t for t in outcome.status["tasks"] if t["type"] == "state_execute"]
    assert len(executes) == 3
    assert executes[1]["input"] == {"kind": "state", "id": executes[0]["output_state_id"]}
    states = {s["state_id"]: s for s in engine.get("/v1/states").json()}
    assert (
        states[executes[2]["output_state_id"]]["parent_state_id"] == executes[1]["output_state_id"]
    )
    tasks = engine.get("/v1/tasks", params={"job": outcome.job_id}).json()
    summaries = [t.get("args_summary") for t in tasks if t["type"] == "state_execute"]
    assert summaries == [
        f"-f {scratch_dir / 'schema.sql'}",
        f"-f {scratch_dir / 'more.sql'}",
        "-f -",
    ]


def test_plan_only_plans_without_executing(engine: EngineProcess) -> None:
    outcome = prepare(engine, psql_body("-c", "select 'plan only'", plan_only=True))
    assert outcome.status["status"] == "succeeded"
    assert outcome.status["plan_only"] is True
    assert "result" not in outcome.status
    assert [e["status"] for e in outcome.events if e["type"] == "task"] == ["succeeded"] * 4
    assert all(e["type"] != "result" for e in outcome.events)
    execute = outcome.status["tasks"][2]
    assert engine.get(f"/v1/states/{execute['output_state_id']}").status_code == 404


def test_failing_sql_fails_the_job_with_psql_output(engine: EngineProcess) -> None:
    outcome = prepare(
        engine, psql_body("-c", "create table ok(a int)", "-c", "select * from missing_table")
    )
    assert outcome.status["status"] == "failed"
    error = outcome.status["error"]
    assert error["code"] == "internal_error"
    assert error["message"] == "psql execution failed"
    assert 'relation "missing_table" does not exist' in error["details"]
    assert outcome.events[-1]["type"] == "error"
    assert outcome.task_events("execute-1") == ["running", "failed"]
    ok_state = outcome.status["tasks"][2]["output_state_id"]
    assert engine.get(f"/v1/states/{ok_state}").status_code == 200, "step 0 state is kept"
    assert not (engine.state_store / "jobs" / outcome.job_id / "runtime").exists()
    assert servers_under(engine.state_store / "jobs" / outcome.job_id) == []
    # One line in engine.log says what failed where (SPEC §0.1).
    lines = [ln for ln in engine.stderr_text().splitlines() if f"job {outcome.job_id}" in ln]
    failed = [ln for ln in lines if " failed:" in ln]
    assert len(failed) == 1, lines
    assert (
        f"job {outcome.job_id} failed: task=execute-1 code=internal_error "
        "message='psql execution failed' details="
    ) in failed[0]
    assert "missing_table" in failed[0]


def test_on_error_stop_is_enforced_on_every_step(engine: EngineProcess) -> None:
    outcome = prepare(engine, psql_body("-c", "select 1/0; create table after_error(a int)"))
    assert outcome.status["status"] == "failed"
    assert "division by zero" in outcome.status["error"]["details"]


def test_cancel_kills_a_long_step_quickly(engine: EngineProcess) -> None:
    job_id = submit(engine, psql_body("-c", "select pg_sleep(60)"))
    wait_for_running_step(engine, job_id)
    events = engine.get(f"/v1/prepare-jobs/{job_id}/events", stream=True)
    time.sleep(1.0)
    started = time.monotonic()
    response = engine.post(f"/v1/prepare-jobs/{job_id}/cancel")
    assert response.status_code == 202
    outcome = wait(engine, job_id)
    elapsed = time.monotonic() - started
    events.close()
    assert outcome.status["status"] == "failed"
    assert outcome.status["error"]["code"] == "cancelled"
    assert elapsed < 5, f"cancel took {elapsed:.1f}s"
    assert not (engine.state_store / "jobs" / job_id / "runtime").exists()
    assert servers_under(engine.state_store / "jobs" / job_id) == []
    again = engine.post(f"/v1/prepare-jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "failed"
    logged = [ln for ln in engine.stderr_text().splitlines() if f"job {job_id} cancelled:" in ln]
    assert len(logged) == 1 and "task=execute-0 code=cancelled" in logged[0], logged


def test_cancel_unknown_job_is_404(engine: EngineProcess) -> None:
    response = engine.post("/v1/prepare-jobs/" + "0" * 32 + "/cancel")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "job not found"}


def test_events_range(engine: EngineProcess) -> None:
    outcome = prepare(engine, psql_body("-c", "select 'range'"))
    total = len(outcome.events)
    partial = engine.get(
        f"/v1/prepare-jobs/{outcome.job_id}/events", headers={"Range": "events=2-4"}
    )
    assert partial.status_code == 206
    assert partial.headers["Content-Range"] == f"events 2-4/{total}"
    assert partial.headers["Accept-Ranges"] == "events"
    assert len(partial.text.splitlines()) == 3
    tail = engine.get(f"/v1/prepare-jobs/{outcome.job_id}/events", headers={"Range": "events=3-"})
    assert tail.status_code == 206
    assert len(tail.text.splitlines()) == total - 3
    beyond = engine.get(
        f"/v1/prepare-jobs/{outcome.job_id}/events", headers={"Range": f"events={total}-"}
    )
    assert beyond.status_code == 416
    assert beyond.json()["code"] == "invalid_argument"
    ignored = engine.get(f"/v1/prepare-jobs/{outcome.job_id}/events", headers={"Range": "bytes=0-"})
    assert ignored.status_code == 200
    assert len(ignored.text.splitlines()) == total
    missing = engine.get("/v1/prepare-jobs/" + "0" * 32 + "/events")
    assert missing.status_code == 404


def test_a_finished_jobs_events_keep_the_connection(engine: EngineProcess) -> None:
    """They are one ordinary body: a client that submits hit after hit and reads each one's
    events goes on on one connection. A running job's events stream, and the stream ends
    the connection (the stream loop marks the end of the body by closing)."""
    outcome = prepare(engine, psql_body("-c", "select 'keep-alive'"))
    host, port = engine.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        for _ in range(2):
            connection.request(
                "GET", f"/v1/prepare-jobs/{outcome.job_id}/events", headers=engine.auth
            )
            response = connection.getresponse()
            lines = response.read().splitlines()
            assert response.status == 200
            assert response.getheader("Connection") != "close"
            assert [json.loads(line) for line in lines] == outcome.events
        with release_file() as gate:
            job_id = submit(engine, psql_body("-c", waits_for(gate)))
            wait_for_running_step(engine, job_id)
            connection.request("GET", f"/v1/prepare-jobs/{job_id}/events", headers=engine.auth)
            streamed = connection.getresponse()
            assert streamed.getheader("Connection") == "close"
            gate.touch()
            last = json.loads(streamed.read().splitlines()[-1])
        assert last["type"] == "result", last
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"image_id": "postgres:15"}, "prepare_kind is required"),
        ({"prepare_kind": "psql"}, "image_id is required"),
        ({"prepare_kind": "xml", "image_id": "x"}, "unsupported prepare_kind"),
        (
            {"prepare_kind": "psql", "image_id": "postgres:15", "psql_args": ["-h", "x"]},
            "connection flags are not allowed",
        ),
        (
            {"prepare_kind": "psql", "image_id": "postgres:15", "psql_args": ["-f", "rel.sql"]},
            "file path must be absolute",
        ),
        (
            {"prepare_kind": "psql", "image_id": "postgres:15", "psql_args": ["-f", "-"]},
            "stdin is required when using -f -",
        ),
        (
            {"prepare_kind": "psql", "image_id": "postgres:15", "psql_args": "select 1"},
            "invalid json payload",
        ),
    ],
)
def test_submit_validation(engine: EngineProcess, body: dict[str, object], message: str) -> None:
    response = engine.post("/v1/prepare-jobs", json=body)
    assert response.status_code == 400
    assert response.json()["message"] == message


def test_unknown_image_fails_the_job_naming_installed_majors(engine: EngineProcess) -> None:
    outcome = prepare(engine, psql_body("-c", "select 1", image="postgres:9"))
    assert outcome.status["status"] == "failed"
    assert outcome.status["error"]["message"] == "cannot resolve image"
    assert "15" in outcome.status["error"]["details"]


DIGEST_IMAGE = "postgres@sha256:" + "0" * 64


def test_a_digest_image_the_host_cannot_serve_fails_at_planning(engine: EngineProcess) -> None:
    """Like an unknown tag: `cannot resolve image` naming what is installed, before any base
    init is attempted (not a late `cannot initialize base state`)."""
    outcome = prepare(engine, psql_body("-c", "select 1", image=DIGEST_IMAGE))
    assert outcome.status["status"] == "failed"
    error = outcome.status["error"]
    assert error["message"] == "cannot resolve image"
    assert "sha256" in error["details"] and "15" in error["details"]
    assert outcome.task_events("plan") == ["running", "failed"]
    assert not (engine.state_store / "engines" / "postgres" / ("sha256_" + "0" * 64)).exists()
    explained = engine.post(
        "/v1/cache/explain/prepare", json=psql_body("-c", "select 1", image=DIGEST_IMAGE)
    )
    assert explained.status_code == 400
    assert explained.json()["message"] == "cannot resolve image"


def test_eight_concurrent_jobs_mixing_same_and_different_states(engine: EngineProcess) -> None:
    bodies = [
        psql_body("-c", f"create table c{i % 3}(a int); insert into c{i % 3} values ({i % 3})")
        for i in range(8)
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda b: prepare(engine, b), bodies))
    assert [o.status["status"] for o in outcomes] == ["succeeded"] * 8
    for i, outcome in enumerate(outcomes):
        assert query(outcome.dsn, f"select a from c{i % 3}") == str(i % 3)
    assert len({o.result["state_id"] for o in outcomes}) == 3
    assert len({o.dsn for o in outcomes}) == 8
    assert len({o.result["instance_id"] for o in outcomes}) == 8
    builds = [o for o in outcomes if "psql: start" in o.log_lines()]
    assert len(builds) == 3, "each state is built exactly once"


def test_cache_explain_reports_miss_then_hit(engine: EngineProcess) -> None:
    body = psql_body("-c", "create table explained(a int)")
    miss = engine.post("/v1/cache/explain/prepare", json=body)
    assert miss.status_code == 200
    assert miss.json()["decision"] == "miss"
    assert miss.json()["reason_code"] == "no_matching_state"
    assert miss.json()["resolved_image_id"] == "postgres@host-15.18"
    assert "matched_state_id" not in miss.json()
    outcome = prepare(engine, body)
    hit = engine.post("/v1/cache/explain/prepare", json=body).json()
    assert hit["decision"] == "hit"
    assert hit["matched_state_id"] == outcome.result["state_id"]
    jobs = engine.get("/v1/prepare-jobs").json()
    assert hit["signature"] == next(j for j in jobs if j["job_id"] == outcome.job_id)["signature"]
    bad = engine.post("/v1/cache/explain/prepare", json={"prepare_kind": "psql"})
    assert bad.status_code == 400
    assert len(engine.get("/v1/prepare-jobs").json()) == len(jobs), "explain creates no job"


def test_missing_include_fails_the_job_with_invalid_argument(
    engine: EngineProcess, scratch_dir: Path
) -> None:
    script = scratch_dir / "main.sql"
    script.write_text("\\i missing.sql\n")
    outcome = prepare(engine, psql_body("-f", str(script)))
    assert outcome.status["status"] == "failed"
    assert outcome.status["error"]["code"] == "invalid_argument"
    assert outcome.status["error"]["message"] == "cannot compute psql content hash"
    assert "missing.sql" in outcome.status["error"]["details"]


def test_dirty_cached_state_is_invalidated_and_rebuilt(engine: EngineProcess) -> None:
    body = psql_body("-c", "create table dirty_me(a int); insert into dirty_me values (7)")
    first = prepare(engine, body)
    state_id = first.result["state_id"]
    state_dir = next((engine.state_store / "engines").glob(f"*/*/states/{state_id}"))
    # Layered backends pin a state while an instance mounts it: free it first.
    assert engine.delete(f"/v1/instances/{first.result['instance_id']}").status_code == 200
    (state_dir / ".build.ok").unlink()  # an interrupted build leaves no marker (§0.1)
    second = prepare(engine, body)
    assert second.status["status"] == "succeeded", second.status
    assert any("unusable" in line and state_id in line for line in second.log_lines())
    assert "psql: start" in second.log_lines(), "the state was rebuilt"
    assert query(second.dsn, "select a from dirty_me") == "7"
    assert (state_dir / ".build.ok").is_file()


def test_servers_run_as_the_unprivileged_user(engine: EngineProcess) -> None:
    if os.geteuid() != 0:
        pytest.skip("the engine runs servers as itself when it is not root")
    outcome = prepare(engine, psql_body("-c", "select 'whoami'"))
    owners = {line.split()[1] for line in postgres_processes() if str(engine.state_store) in line}
    assert owners == {"postgres"}
    data = Path(query(outcome.dsn, "show data_directory"))
    assert data.is_relative_to(engine.state_store / "jobs" / outcome.job_id)
    assert data.stat().st_uid == pwd.getpwnam("postgres").pw_uid
    assert query(outcome.dsn, "select current_setting('is_superuser')") == "on"


def test_a_file_changed_between_planning_and_its_step_is_re_hashed(
    engine: EngineProcess, scratch_dir: Path
) -> None:
    first, second = scratch_dir / "first.sql", scratch_dir / "second.sql"
    first.write_text("select pg_sleep(1.5);\ncreate table replanned(a int);\n")
    second.write_text("insert into replanned values (1);\n")
    job_id = submit(engine, psql_body("-f", str(first), "-f", str(second)))
    wait_for_running_step(engine, job_id)
    planned = next(
        t
        for t in engine.get("/v1/tasks", params={"job": job_id}).json()
        if t["task_id"] == "execute-1"
    )
    second.write_text("insert into replanned values (2);\n")  # step 1's file changes meanwhile
    outcome = wait(engine, job_id)
    assert outcome.status["status"] == "succeeded", outcome.status
    assert query(outcome.dsn, "select a from replanned") == "2"
    final = next(t for t in outcome.status["tasks"] if t["task_id"] == "execute-1")
    assert final["task_hash"] != planned["task_hash"]
    assert outcome.result["state_id"] == final["output_state_id"]
    assert any("changed since planning" in line for line in outcome.log_lines())
