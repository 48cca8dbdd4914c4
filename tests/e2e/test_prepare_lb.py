"""prepare:lb end to end: real engine over HTTP, real PostgreSQL, real Liquibase 4.28 (SPEC §3).

Every Liquibase run starts a JVM (~2.5 s), so each test checks several things per run.
`scripts/bootstrap` installs Liquibase and links it into `.venv/bin`; the engines here get
that directory on their PATH, which is how a user's engine finds it too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.prepare import IMAGE, prepare, psql_body, query, submit, wait
from tests.support.waiting import wait_for_log

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
LIQUIBASE = VENV_BIN / "liquibase"
WITH_LIQUIBASE = {"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    assert LIQUIBASE.exists(), "Liquibase is missing: run scripts/bootstrap"
    workdir = make_scratch_dir()
    running = start_engine(workdir, env=WITH_LIQUIBASE)
    try:
        yield running
    finally:
        running.stop()
        remove_scratch_dir(workdir)


def lb_body(*args: str, plan_only: bool = False, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"prepare_kind": "lb", "image_id": IMAGE, "liquibase_args": list(args)}
    if plan_only:
        body["plan_only"] = True
    body.update(fields)
    return body


def sql_changelog(path: Path, changesets: list[str]) -> Path:
    lines = ["--liquibase formatted sql", ""]
    for index, sql in enumerate(changesets, start=1):
        lines += [f"--changeset dev:{index}", sql, ""]
    path.write_text("\n".join(lines))
    return path


def execute_states(status: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(t["task_id"], t["cached"]) for t in status["tasks"] if t["type"] == "state_execute"]


def ran(outcome: Any) -> list[str]:
    """The execute tasks that really ran (a `running` event), in order."""
    return [
        e["task_id"]
        for e in outcome.without_heartbeats()
        if e["type"] == "task" and e["status"] == "running" and e["task_id"].startswith("execute")
    ]


def jvm_runs(outcome: Any) -> int:
    return sum(
        1
        for e in outcome.without_heartbeats()
        if e["type"] == "log" and e["message"].startswith("liquibase: exec ")
    )


def test_one_state_per_changeset_and_caching_users_can_see(
    engine: EngineProcess, scratch_dir: Path
) -> None:
    # psql first: the lb prepare on the same image must reuse its base, not initdb again
    psql = prepare(engine, psql_body("-c", "select 1"))
    assert psql.status["status"] == "succeeded", psql.status
    changes = [
        "create table t(a int);",
        "insert into t values (1);",
        "insert into t values (2);",
        "insert into t values (3);",
        "create index t_a on t(a);",
    ]
    changelog = sql_changelog(scratch_dir / "changelog.sql", changes)
    body = lb_body("update", "--changelog-file", str(changelog))

    first = prepare(engine, body)
    assert first.status["status"] == "succeeded", first.status
    assert not any(line.startswith("host: init base") for line in first.log_lines())
    assert ran(first) == [f"execute-{i}" for i in range(5)]
    assert jvm_runs(first) == 6  # updateSQL + one update-count per changeset
    tasks = [t for t in first.status["tasks"] if t["type"] == "state_execute"]
    assert [t["changeset_id"] for t in tasks] == ["1", "2", "3", "4", "5"]
    assert {t["changeset_path"] for t in tasks} == {"changelog.sql"}
    lines = first.log_lines()
    plan_exec = next(i for i, line in enumerate(lines) if line.startswith("liquibase: exec"))
    assert (
        "updateSQL" in lines[plan_exec] and "--url=jdbc:postgresql://127.0.0.1:" in lines[plan_exec]
    )
    assert lines[plan_exec + 1] == "liquibase: start"
    assert "liquibase: -- Changeset changelog.sql::1::dev" in lines
    assert any("update-count --count 1" in line for line in lines)
    assert query(first.dsn, "select sum(a) from t") == "6"
    assert query(first.dsn, "select count(*) from databasechangelog") == "5"
    assert first.result["prepare_kind"] == "lb"
    assert first.result["prepare_args_normalized"] == f"--changelog-file {changelog} update"
    entries = engine.get("/v1/tasks", params={"job": first.job_id}).json()
    summaries = [e.get("args_summary") for e in entries if e["type"] == "state_execute"]
    assert summaries == [f"{i}::dev::changelog.sql" for i in range(1, 6)]
    state = engine.get(f"/v1/states/{first.result['state_id']}").json()
    assert state["prepare_kind"] == "lb"

    again = prepare(engine, body)
    assert execute_states(again.status) == [(f"execute-{i}", True) for i in range(5)]
    assert ran(again) == [] and jvm_runs(again) == 0, "a fully cached prepare starts no JVM"
    assert again.result["state_id"] == first.result["state_id"]

    changes[2] = "insert into t values (20);"
    sql_changelog(changelog, changes)
    edited = prepare(engine, body)
    assert edited.status["status"] == "succeeded", edited.status
    assert [c for _, c in execute_states(edited.status)] == [True, True, False, False, False]
    assert ran(edited) == ["execute-2", "execute-3", "execute-4"]
    assert jvm_runs(edited) == 4
    assert query(edited.dsn, "select sum(a) from t") == "24"

    sql_changelog(changelog, [*changes, "insert into t values (100);"])
    appended = prepare(engine, body)
    assert [c for _, c in execute_states(appended.status)] == [True] * 5 + [False]
    assert ran(appended) == ["execute-5"]
    assert query(appended.dsn, "select sum(a) from t") == "124"
    # the instance of the first prepare is untouched by everything since
    assert query(first.dsn, "select sum(a) from t") == "6"


def test_plan_only_explain_and_contexts_with_a_yaml_changelog(
    engine: EngineProcess, scratch_dir: Path
) -> None:
    changelog = scratch_dir / "db.yaml"
    changelog.write_text(
        "databaseChangeLog:\n"
        "  - changeSet: {id: base, author: ann, changes: [{sql: {sql: create table y(a int)}}]}\n"
        "  - changeSet:\n"
        "      id: dev-data\n"
        "      author: ann\n"
        "      context: dev\n"
        "      changes: [{sql: {sql: insert into y values (7)}}]\n"
    )
    # relative paths are resolved against the engine's cwd (§3.2); work_dir is where
    # Liquibase runs, so the recorded changeset paths are relative to it
    dev = ["update", "--changelog-file", str(changelog), "--contexts=dev"]
    body = lb_body(*dev, work_dir=str(scratch_dir))

    planned = prepare(engine, {**body, "plan_only": True})
    assert planned.status["status"] == "succeeded", planned.status
    assert planned.status["plan_only"] is True and "result" not in planned.status
    assert [t["changeset_id"] for t in planned.status["tasks"] if "changeset_id" in t] == [
        "base",
        "dev-data",
    ]
    assert planned.status["prepare_args_normalized"] == (
        f"--changelog-file {scratch_dir}/db.yaml update --contexts=dev"
    )
    assert not [e for e in planned.events if e["type"] == "task" and e["status"] == "running"]
    assert any(
        line.startswith("liquibase: exec") and " --changelog-file db.yaml updateSQL" in line
        for line in planned.log_lines()
    )
    assert {t.get("changeset_path") for t in planned.status["tasks"]} >= {"db.yaml"}

    miss = engine.post("/v1/cache/explain/prepare", json=body)
    assert miss.status_code == 200, miss.text
    assert miss.json()["decision"] == "miss"
    jobs = engine.state_store / "jobs"
    assert not list(jobs.glob(".explain-lb-*")), "explain's staging copy is removed"

    built = prepare(engine, body)
    assert built.status["status"] == "succeeded", built.status
    assert query(built.dsn, "select sum(a) from y") == "7"
    hit = engine.post("/v1/cache/explain/prepare", json=body).json()
    assert hit["decision"] == "hit" and hit["matched_state_id"] == built.result["state_id"]
    assert hit["signature"] == miss.json()["signature"]

    prod = prepare(
        engine,
        lb_body(
            "update",
            "--changelog-file",
            str(changelog),
            "--contexts=prod",
            work_dir=str(scratch_dir),
        ),
    )
    assert prod.status["status"] == "succeeded", prod.status
    assert [c for _, c in execute_states(prod.status)] == [True], "shares the first state"
    assert query(prod.dsn, "select count(*) from y") == "0"


BAD_REQUESTS = [
    (["update", "--url=jdbc:postgresql://evil/db"], "connection flags are not allowed"),
    (["update", "--password", "x"], "connection flags are not allowed"),
    (["update", "--classpath=/tmp/x.jar"], "runtime flags are not allowed"),
    (["rollback-count", "--count=1"], "unsupported lb command"),
    (["--log-level=info", "--"], "lb command is required"),
    (["update", "--changelog-file", "/nonexistent/x.xml"], "path does not exist"),
    (["update", "--searchPath", "/nonexistent"], "searchPath path does not exist"),
    (["update", "--changelog-file"], "missing value for flag"),
]


@pytest.mark.parametrize(("args", "message"), BAD_REQUESTS)
def test_bad_requests_are_400_for_submit_and_explain(
    engine: EngineProcess, args: list[str], message: str
) -> None:
    for path in ("/v1/prepare-jobs", "/v1/cache/explain/prepare"):
        reply = engine.post(path, json=lb_body(*args))
        assert reply.status_code == 400, reply.text
        assert reply.json()["code"] == "invalid_argument"
        assert reply.json()["message"] == message


def test_windows_mode_is_refused(engine: EngineProcess) -> None:
    reply = engine.post(
        "/v1/prepare-jobs", json=lb_body("update", liquibase_exec_mode="windows-bat")
    )
    assert reply.status_code == 400
    assert reply.json()["message"] == "unsupported liquibase_exec_mode"


def test_liquibase_not_installed_fails_the_job_saying_how_to_fix_it(scratch_dir: Path) -> None:
    changelog = sql_changelog(scratch_dir / "c.sql", ["select 1;"])
    bare = start_engine(scratch_dir, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    try:
        outcome = prepare(bare, lb_body("update", "--changelog-file", str(changelog)))
        assert outcome.status["status"] == "failed"
        error = outcome.status["error"]
        assert error["message"] == "liquibase is not installed"
        assert "liquibase_exec" in error["details"] and "liquibase.exec" in error["details"]
        missing = prepare(
            bare,
            lb_body("update", "--changelog-file", str(changelog), liquibase_exec="/opt/no/lb"),
        )
        assert "/opt/no/lb" in missing.status["error"]["details"]
        # the config key is the documented fallback
        patched = bare.patch("/v1/config", json={"path": "liquibase.exec", "value": str(LIQUIBASE)})
        assert patched.status_code == 200, patched.text
        # and with the warm JVM switched off, each command is its own liquibase process
        off = bare.patch("/v1/config", json={"path": "liquibase.warmJvm", "value": False})
        assert off.status_code == 200, off.text
        fixed = prepare(bare, lb_body("update", "--changelog-file", str(changelog), plan_only=True))
        assert fixed.status["status"] == "succeeded", fixed.status
        assert "liquibase: -- Changeset c.sql::1::dev" in fixed.log_lines()
        store = scratch_dir / "state-store"
        assert not (store / "tools").exists(), "no warm JVM was prepared"
    finally:
        bare.stop()


def test_a_failing_changeset_keeps_the_earlier_states(
    engine: EngineProcess, scratch_dir: Path
) -> None:
    changes = ["create table f(a int);", "insert into nowhere values (1);", "select 1;"]
    changelog = sql_changelog(scratch_dir / "failing.sql", changes)
    body = lb_body("update", "--changelog-file", str(changelog))
    failed = prepare(engine, body)
    assert failed.status["status"] == "failed"
    error = failed.status["error"]
    assert (error["code"], error["message"]) == ("internal_error", "liquibase execution failed")
    assert 'relation "nowhere" does not exist' in error["details"]
    first_state = next(t for t in failed.status["tasks"] if t["task_id"] == "execute-0")
    assert engine.get(f"/v1/states/{first_state['output_state_id']}").status_code == 200

    changes[1] = "insert into f values (1);"
    sql_changelog(changelog, changes)
    fixed = prepare(engine, body)
    assert fixed.status["status"] == "succeeded", fixed.status
    assert [c for _, c in execute_states(fixed.status)] == [True, False, False]
    assert query(fixed.dsn, "select count(*) from f") == "1"


def _processes_in(directory: Path) -> list[str]:
    """Command lines of processes working in `directory` or in its staging copy (Liquibase
    runs next to its changelog, in `<job>/lb-stage/root/<directory>`)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if not os.readlink(f"/proc/{pid}/cwd").endswith(str(directory)):
                continue
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def test_cancel_during_a_liquibase_run_kills_its_process_tree(
    engine: EngineProcess, scratch_dir: Path
) -> None:
    marker = scratch_dir / "cancel-me"
    marker.mkdir()
    changelog = sql_changelog(marker / "slow.sql", ["select pg_sleep(300);"])
    job_id = submit(engine, lb_body("update", "--changelog-file", str(changelog)))
    wait_for_log(engine, job_id, lambda line: line.startswith("liquibase: Running Changeset"))
    running = _processes_in(marker)
    assert any("liquibase" in line for line in running), "Liquibase runs while it sleeps"
    reply = engine.post(f"/v1/prepare-jobs/{job_id}/cancel")
    assert reply.status_code in (200, 202)
    outcome = wait(engine, job_id)
    assert outcome.status["status"] == "failed"
    assert outcome.status["error"]["code"] == "cancelled"
    assert _processes_in(marker) == [], "no JVM (or its launcher script) left behind"


def test_restart_resumes_an_lb_job(scratch_dir: Path) -> None:
    changelog = sql_changelog(
        scratch_dir / "resume.sql", ["create table r(a int);", "select pg_sleep(3);"]
    )
    body = lb_body("update", "--changelog-file", str(changelog))
    first = start_engine(scratch_dir, env=WITH_LIQUIBASE)
    job_id = submit(first, body)
    wait_for_log(first, job_id, lambda line: "Running Changeset: resume.sql::2::dev" in line)
    assert first.stop() == 0
    second = start_engine(scratch_dir, env=WITH_LIQUIBASE)
    try:
        outcome = wait(second, job_id)
        assert outcome.status["status"] == "succeeded", outcome.status
        assert "resuming with the stored plan" in outcome.log_lines()
        assert "liquibase: plan reused (changelog, arguments and input unchanged)" in (
            outcome.log_lines()
        )
        assert query(outcome.dsn, "select count(*) from databasechangelog") == "2"
    finally:
        second.stop()


def test_a_changelog_edited_during_the_job_does_not_change_what_it_applies(
    engine: EngineProcess, scratch_dir: Path
) -> None:
    """The job runs from the staging copy of what it planned: an edit after planning is
    the next prepare's business, and no state is named for content that did not run."""
    changes = ["create table e(a int); select pg_sleep(2);", "insert into e values (1);"]
    changelog = sql_changelog(scratch_dir / "edited.sql", changes)
    job_id = submit(engine, lb_body("update", "--changelog-file", str(changelog)))
    wait_for_log(engine, job_id, lambda line: "Running Changeset: edited.sql::1::dev" in line)
    sql_changelog(changelog, [changes[0], "insert into e values (2);"])
    outcome = wait(engine, job_id)
    assert outcome.status["status"] == "succeeded", outcome.status
    assert query(outcome.dsn, "select sum(a) from e") == "1", "the planned changeset ran"
    again = prepare(engine, lb_body("update", "--changelog-file", str(changelog)))
    assert again.status["status"] == "succeeded", again.status
    assert [c for _, c in execute_states(again.status)] == [True, False]
    assert query(again.dsn, "select sum(a) from e") == "2"
    assert query(outcome.dsn, "select sum(a) from e") == "1"
