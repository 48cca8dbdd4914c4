"""The client's typed calls against the real engine process (HTTP, real PostgreSQL)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from sqlrs_engine.client import (
    Client,
    Conflict,
    DeleteBlocked,
    InvalidArgument,
    JobFailed,
    NotFound,
    UnsupportedEndpoint,
)
from sqlrs_engine.client.progress import ProgressView

IMAGE = "postgres:15"


def test_prepare_builds_once_then_hits_the_cache(client: Client) -> None:
    args = ["-c", "create table t(a int); insert into t values (1), (2)"]
    first = client.prepare_psql(args, image=IMAGE)
    second = client.prepare_psql(args, image=IMAGE)
    try:
        assert (first.cached, second.cached) == (False, True)
        assert first.state_id == second.state_id
        assert first.instance_id != second.instance_id
        assert first.image_id.startswith("postgres@")
        assert first.expires_at is None
        assert first.dsn not in repr(first)  # DSNs carry secrets: never in a repr
        with psycopg.connect(second.dsn) as conn:
            assert conn.execute("select count(*) from t").fetchone() == (2,)
            conn.execute("insert into t values (3)")
        with psycopg.connect(first.dsn) as conn:  # instances are independent
            assert conn.execute("select count(*) from t").fetchone() == (2,)
    finally:
        client.delete_instance(first.instance_id, force=True)
        client.delete_instance(second.instance_id, force=True)


def test_relative_files_are_relative_to_the_caller(
    client: Client, client_engine: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = Path(client.locator.state_dir) / "project"
    workdir.mkdir()
    (workdir / "schema.sql").write_text("create table from_file(x int);\n")
    monkeypatch.chdir(workdir)
    instance = client.prepare_psql(["-f", "schema.sql"], image=IMAGE)
    try:
        result = client.run(instance.instance_id, ["-c", "select count(*) from from_file"])
        assert result.ok and "0" in result.stdout
    finally:
        client.delete_instance(instance.instance_id, force=True)


def test_run_list_get_delete(client: Client) -> None:
    instance = client.prepare_psql(["-c", "create table r(a int)"], image=IMAGE, ttl="1h")
    try:
        ok = client.run(instance.instance_id, ["-c", "select 40 + 2 as answer"])
        assert (ok.exit_code, ok.stderr) == (0, "")
        assert "42" in ok.stdout
        failed = client.run(instance.instance_id, ["-v", "ON_ERROR_STOP=1", "-c", "select nope"])
        assert failed.exit_code != 0 and "nope" in failed.stderr
        entries = {entry.instance_id: entry for entry in client.list_instances()}
        assert entries[instance.instance_id].expires_at == instance.expires_at
        assert entries[instance.instance_id].status == "orphaned"
        assert client.get_instance(instance.instance_id).state_id == instance.state_id
        assert instance.state_id in {state.state_id for state in client.list_states()}
        with psycopg.connect(instance.dsn) as conn:
            conn.execute("select 1")
            with pytest.raises(DeleteBlocked) as blocked:
                client.delete_instance(instance.instance_id)
            assert blocked.value.result["root"]["connections"] >= 1
            dry = client.delete_instance(instance.instance_id, force=True, dry_run=True)
            assert dry["outcome"] == "would_delete"
    finally:
        deleted = client.delete_instance(instance.instance_id, force=True)
    assert deleted["outcome"] == "deleted"
    with pytest.raises(NotFound) as missing:
        client.delete_instance(instance.instance_id)
    assert (missing.value.code, missing.value.message) == ("not_found", "instance not found")
    with pytest.raises(NotFound):
        client.get_instance(instance.instance_id)


def test_error_responses_become_exceptions(client: Client) -> None:
    with pytest.raises(InvalidArgument) as bad_ttl:
        client.prepare_psql(["-c", "select 1"], image=IMAGE, ttl="soon")
    assert (bad_ttl.value.status, bad_ttl.value.code, bad_ttl.value.message) == (
        400,
        "invalid_argument",
        "invalid ttl",
    )
    assert 'invalid duration "soon"' in (bad_ttl.value.details or "")
    with pytest.raises(InvalidArgument) as bad_kind:
        client.prepare({"prepare_kind": "flyway", "image_id": IMAGE})
    assert (bad_kind.value.message, bad_kind.value.details) == (
        "unsupported prepare_kind",
        "flyway",
    )
    with pytest.raises(NotFound) as no_instance:
        client.run("0" * 32, ["-c", "select 1"])
    assert no_instance.value.message == "instance not found"


def test_run_with_connection_arguments_is_a_conflict(client: Client) -> None:
    instance = client.prepare_psql(["-c", "select 1"], image=IMAGE)
    try:
        with pytest.raises(Conflict) as conflict:
            client.run(instance.instance_id, ["-h", "elsewhere", "-c", "select 1"])
        assert conflict.value.message == "conflicting psql connection arguments"
    finally:
        client.delete_instance(instance.instance_id, force=True)


def test_a_failed_job_raises_job_failed(client: Client) -> None:
    with pytest.raises(JobFailed) as failed:
        client.prepare_psql(["-c", "select * from no_such_table"], image=IMAGE)
    assert (failed.value.code, failed.value.message) == ("internal_error", "psql execution failed")
    assert "no_such_table" in (failed.value.details or "")
    assert client.job_status(failed.value.job_id)["status"] == "failed"


def test_events_and_resuming_from_an_index(client: Client) -> None:
    job_id = client.submit_prepare(
        {"prepare_kind": "psql", "image_id": IMAGE, "psql_args": ["-c", "select 2"]}
    )
    events = list(client.events(job_id))
    assert [e.index for e in events] == list(range(len(events)))
    assert (events[0].type, events[0].status) == ("status", "queued")
    assert events[-1].type == "result"
    tail = list(client.events(job_id, start=3))
    assert [(e.index, e.type, e.ts) for e in tail] == [(e.index, e.type, e.ts) for e in events[3:]]
    instance_id = events[-1].result["instance_id"] if events[-1].result else ""
    client.delete_instance(instance_id, force=True)
    assert job_id in {job.job_id for job in client.list_jobs(job_id[:8])}


class InterruptWhenRunning:
    """A progress reporter that presses Ctrl-C once the slow step is running."""

    def update(self, view: ProgressView) -> None:
        if view.task.startswith("execute-0") and view.state == "running":
            raise KeyboardInterrupt

    def close(self, view: ProgressView | None, outcome: str) -> None:
        pass


def test_ctrl_c_cancels_the_job(client: Client) -> None:
    with pytest.raises(KeyboardInterrupt):
        client.prepare_psql(
            ["-c", "select pg_sleep(120)"], image=IMAGE, progress=InterruptWhenRunning()
        )
    jobs = [job for job in client.list_jobs() if "pg_sleep(120)" in str(job.raw)]
    assert len(jobs) == 1
    deadline = time.monotonic() + 60
    status = client.job_status(jobs[0].job_id)
    while status["status"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.1)
        status = client.job_status(jobs[0].job_id)
    assert status["error"]["code"] == "cancelled"


def test_cache_status_or_a_clear_unsupported_error(client: Client) -> None:
    try:
        status = client.cache_status()
    except UnsupportedEndpoint as error:
        assert (error.status, error.code) == (404, "not_found")
        assert "GET /v1/cache/status" in error.message
    else:
        assert "usage_bytes" in status and isinstance(status["pressure_reasons"], list)


def test_health(client: Client) -> None:
    health = client.health()
    assert health["ok"] is True and health["instanceId"] == client.engine.instance_id


def test_config_read_and_write(client: Client) -> None:
    assert client.set_config("orchestrator.jobs.maxIdentical", 3) == {
        "path": "orchestrator.jobs.maxIdentical",
        "value": 3,
    }
    assert client.get_config("orchestrator.jobs.maxIdentical")["value"] == 3
    with pytest.raises(InvalidArgument):
        client.set_config("orchestrator.jobs.maxIdentical", "many")
    assert client.get_config()["orchestrator"]["jobs"]["maxIdentical"] == 3
