"""Engine lifecycle with work in flight: recovery, idle timeout, many open streams."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from pathlib import Path

import requests

from tests.support.dirs import servers_under
from tests.support.engine_process import start_engine
from tests.support.prepare import prepare, psql_body, query, submit, wait, wait_for_running_step


def test_restart_resumes_an_interrupted_job(scratch_dir: Path) -> None:
    first = start_engine(scratch_dir)
    job_id = submit(first, psql_body("-c", "select pg_sleep(2); create table resumed(a int)"))
    wait_for_running_step(first, job_id)
    assert first.stop() == 0, "a running job does not prevent a clean shutdown"
    second = start_engine(scratch_dir)
    try:
        outcome = wait(second, job_id)
        assert outcome.status["status"] == "succeeded", outcome.status
        assert "engine restarted: resuming job" in outcome.log_lines()
        assert "resuming with the stored plan" in outcome.log_lines()
        assert query(outcome.dsn, "select count(*) from resumed") == "0"
    finally:
        second.stop()


def test_a_resumed_job_keeps_finished_steps_and_replans_when_its_inputs_drifted(
    scratch_dir: Path,
) -> None:
    """SPEC §4.8: the first step finished before the stop is not run again; a changed script
    file (new signature) drops the stored tasks and the job runs what the file says now."""
    first_script = scratch_dir / "first.sql"
    first_script.write_text("create table kept(a int);\n")
    second_script = scratch_dir / "second.sql"
    second_script.write_text("select pg_sleep(30);\n")
    body = psql_body("-f", str(first_script), "-f", str(second_script))
    first = start_engine(scratch_dir)
    job_id = submit(first, body)
    deadline = time.monotonic() + 60
    while True:
        statuses = [
            t["status"]
            for t in first.get("/v1/tasks", params={"job": job_id}).json()
            if t["type"] == "state_execute"
        ]
        if statuses == ["succeeded", "running"]:
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.05)
    assert first.stop() == 0
    second_script.write_text("create table changed(a int);\n")
    second = start_engine(scratch_dir)
    try:
        outcome = wait(second, job_id)
        assert outcome.status["status"] == "succeeded", outcome.status
        lines = outcome.log_lines()
        assert any(line.startswith("stored plan dropped: its inputs changed") for line in lines)
        assert "resuming with the stored plan" not in lines
        assert query(outcome.dsn, "select count(*) from kept, changed") == "0"
        first_step = "execute-0"
        restarted = outcome.events[
            next(
                i
                for i, e in enumerate(outcome.events)
                if e.get("message", "").startswith("engine restarted")
            ) :
        ]
        assert [
            e["status"] for e in restarted if e["type"] == "task" and e["task_id"] == first_step
        ] == ["succeeded"], "the first step's state was reused, not rebuilt"
    finally:
        second.stop()


def test_instances_survive_an_engine_restart(scratch_dir: Path) -> None:
    first = start_engine(scratch_dir)
    outcome = prepare(
        first, psql_body("-c", "create table survives(a int); insert into survives values (9)")
    )
    runtime_id = first.get(f"/v1/instances/{outcome.result['instance_id']}").json()["runtime_id"]
    first.stop()
    assert query(outcome.dsn, "select a from survives") == "9", "servers outlive the engine"
    second = start_engine(scratch_dir)
    try:
        instance = second.get(f"/v1/instances/{outcome.result['instance_id']}").json()
        assert instance["runtime_id"] == runtime_id
        deleted = second.delete(f"/v1/instances/{outcome.result['instance_id']}")
        assert deleted.status_code == 200, "the restarted engine adopted and stopped the server"
    finally:
        second.stop()


def test_idle_timeout_waits_for_running_jobs(scratch_dir: Path) -> None:
    engine = start_engine(scratch_dir, idle_timeout="1s")
    job_id = submit(engine, psql_body("-c", "select pg_sleep(4)"))
    started = time.monotonic()
    code = engine.process.wait(timeout=60)
    assert code == 0
    assert time.monotonic() - started > 3.5, "it did not shut down while the job ran"
    second = start_engine(scratch_dir)
    try:
        assert second.get(f"/v1/prepare-jobs/{job_id}").json()["status"] == "succeeded"
    finally:
        second.stop()


def test_open_streams_do_not_starve_short_requests(scratch_dir: Path) -> None:
    engine = start_engine(scratch_dir, "--http-threads", "16")
    try:
        job_id = submit(engine, psql_body("-c", "select pg_sleep(5)"))
        streams = [engine.get(f"/v1/prepare-jobs/{job_id}/events", stream=True) for _ in range(10)]
        try:
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                codes = list(
                    pool.map(
                        lambda _: (
                            requests.get(
                                engine.base_url + "/v1/states", headers=engine.auth, timeout=10
                            ).status_code
                        ),
                        range(20),
                    )
                )
            assert codes == [200] * 20
            assert time.monotonic() - started < 5
        finally:
            for stream in streams:
                stream.close()
        assert wait(engine, job_id).status["status"] == "succeeded"
    finally:
        engine.stop()


def test_a_crashed_engine_leaves_no_orphan_server_after_recovery(scratch_dir: Path) -> None:
    first = start_engine(scratch_dir)
    job_id = submit(first, psql_body("-c", "select pg_sleep(3); create table after_crash(a int)"))
    wait_for_running_step(first, job_id)
    deadline = time.monotonic() + 30
    while not servers_under(first.state_store / "jobs" / job_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    orphans = servers_under(first.state_store / "jobs" / job_id)
    first.stop(signal.SIGKILL)
    second = start_engine(scratch_dir)
    try:
        outcome = wait(second, job_id)
        assert outcome.status["status"] == "succeeded", outcome.status
        assert any("left by an interrupted run" in line for line in outcome.log_lines())
        live = servers_under(second.state_store / "jobs" / job_id)
        assert len(live) == 1 and not set(live) & set(orphans)
        assert query(outcome.dsn, "select count(*) from after_crash") == "0"
    finally:
        second.stop()


def test_polling_clients_all_get_their_result_despite_retention(scratch_dir: Path) -> None:
    """16 clients submit the same prepare and poll its status instead of streaming. Retention
    (maxIdentical 2) must not remove a finished job before its client has read it (SPEC §0.1:
    `orchestrator.jobs.minAge`): every client gets its own DSN, and no instance is left that
    no client knows about."""
    engine = start_engine(scratch_dir)
    body = psql_body("-c", "create table polled(a int)")
    try:
        prepare(engine, body)  # the state exists: the 16 are cache hits finishing together

        def submit_and_poll(_: int) -> dict[str, object]:
            job_id = submit(engine, body)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                response = engine.get(f"/v1/prepare-jobs/{job_id}")
                assert response.status_code == 200, f"job {job_id} gone: {response.text}"
                status = response.json()
                if status["status"] in ("succeeded", "failed"):
                    return dict(status)
                time.sleep(0.2)
            raise AssertionError(f"job {job_id} did not finish")

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            finished = list(pool.map(submit_and_poll, range(16)))
        assert [s["status"] for s in finished] == ["succeeded"] * 16
        received = {str(s["result"]["instance_id"]) for s in finished}  # type: ignore[index]
        assert len(received) == 16
        for status in finished:
            assert query(str(status["result"]["dsn"]), "select count(*) from polled") == "0"  # type: ignore[index]
        listed = {i["instance_id"] for i in engine.get("/v1/instances").json()}
        assert received <= listed
        assert len(listed) == 17  # the 16 above and the first prepare's
    finally:
        engine.stop()
