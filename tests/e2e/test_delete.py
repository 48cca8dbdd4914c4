"""Deletion end to end: real engine, real PostgreSQL (SPEC §6, §4.7, §4.11)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from sqlrs_engine.runtime import procs
from tests.support.dirs import servers_under
from tests.support.engine_process import EngineProcess
from tests.support.prepare import (
    PSQL,
    JobOutcome,
    files_of,
    prepare,
    psql_body,
    query,
    release_file,
    submit,
    wait,
    wait_for_running_step,
    waits_for,
)
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def engine(shared_engine: EngineProcess) -> EngineProcess:
    """One engine for the module: the tests use distinct scripts, so they don't interfere."""
    return shared_engine


def data_dir_of(engine: EngineProcess, outcome: JobOutcome) -> Path:
    return engine.state_store / "jobs" / outcome.job_id / "runtime"


def open_session(dsn: str) -> subprocess.Popen[bytes]:
    """An interactive psql that stays connected until its stdin closes."""
    session = subprocess.Popen(
        [PSQL, "-X", dsn],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        count = query(
            dsn,
            "select count(*) from pg_stat_activity "
            "where backend_type = 'client backend' and pid <> pg_backend_pid()",
        )
        if count == "1":
            return session
        time.sleep(0.05)
    raise AssertionError("psql session did not connect")


def test_delete_idle_instance(engine: EngineProcess) -> None:
    outcome = prepare(engine, psql_body("-c", "create table del1(a int)"))
    instance = outcome.result["instance_id"]
    response = engine.delete(f"/v1/instances/{instance}")
    assert response.status_code == 200
    body = response.json()
    assert body["outcome"] == "deleted" and body["dry_run"] is False
    assert body["root"]["kind"] == "instance" and body["root"]["connections"] == 0
    assert body["root"]["runtime_id"].startswith("host:")
    assert engine.get(f"/v1/instances/{instance}").status_code == 404
    assert not data_dir_of(engine, outcome).exists()
    assert servers_under(engine.state_store / "jobs" / outcome.job_id) == []
    assert engine.get(f"/v1/states/{outcome.result['state_id']}").json()["refcount"] == 0
    again = engine.delete(f"/v1/instances/{instance}")
    assert again.status_code == 404
    assert again.json() == {"code": "not_found", "message": "instance not found"}


def test_open_session_blocks_until_forced(engine: EngineProcess) -> None:
    outcome = prepare(engine, psql_body("-c", "create table del2(a int)"))
    instance = outcome.result["instance_id"]
    session = open_session(outcome.dsn)
    try:
        blocked = engine.delete(f"/v1/instances/{instance}")
        assert blocked.status_code == 409
        assert blocked.json()["outcome"] == "blocked"
        assert blocked.json()["root"]["blocked"] == "active_connections"
        assert blocked.json()["root"]["connections"] == 1
        dry = engine.delete(f"/v1/instances/{instance}", params={"dry_run": "true"})
        assert dry.status_code == 200 and dry.json()["outcome"] == "blocked"
        assert query(outcome.dsn, "select 1") == "1", "nothing was stopped"
        forced = engine.delete(f"/v1/instances/{instance}", params={"force": "true"})
        assert forced.status_code == 200 and forced.json()["outcome"] == "deleted"
        assert servers_under(engine.state_store / "jobs" / outcome.job_id) == []
    finally:
        session.kill()
        session.wait()


def test_state_with_descendants_then_recursive_delete_of_a_chain(engine: EngineProcess) -> None:
    chain = prepare(
        engine,
        psql_body(
            "-c",
            "create table l1(a int)",
            "-c",
            "create table l2(a int)",
            "-c",
            "create table l3(a int)",
        ),
    )
    ids = [t["output_state_id"] for t in chain.status["tasks"] if t["type"] == "state_execute"]
    # A second instance on the middle state: prepare just the first two steps.
    middle = prepare(
        engine, psql_body("-c", "create table l1(a int)", "-c", "create table l2(a int)")
    )
    assert middle.result["state_id"] == ids[1]
    root = ids[0]
    blocked = engine.delete(f"/v1/states/{root}")
    assert blocked.status_code == 409
    assert blocked.json()["root"] == {"kind": "state", "id": root, "blocked": "has_descendants"}
    forced_without_recurse = engine.delete(f"/v1/states/{root}", params={"force": "1"})
    assert forced_without_recurse.status_code == 409, "force does not override has_descendants"

    before_dirs = sorted(p.name for p in (engine.state_store / "jobs").iterdir())
    dry = engine.delete(f"/v1/states/{root}", params={"recurse": "true", "dry_run": "true"})
    assert dry.status_code == 200 and dry.json()["outcome"] == "would_delete"
    tree = dry.json()["root"]
    assert [c["id"] for c in tree["children"]] == [ids[1]]
    level2 = tree["children"][0]
    assert [c["kind"] for c in level2["children"]] == ["instance", "state"]
    assert level2["children"][1]["children"][0]["id"] == chain.result["instance_id"]
    assert sorted(p.name for p in (engine.state_store / "jobs").iterdir()) == before_dirs
    assert query(chain.dsn, "select 1") == "1" and query(middle.dsn, "select 1") == "1"
    assert engine.get(f"/v1/states/{ids[2]}").status_code == 200

    deleted = engine.delete(f"/v1/states/{root}", params={"recurse": "true"})
    assert deleted.status_code == 200 and deleted.json()["outcome"] == "deleted"
    for state_id in ids:
        assert engine.get(f"/v1/states/{state_id}").status_code == 404
        assert list((engine.state_store / "engines").glob(f"*/*/states/{state_id}")) == []
    for outcome in (chain, middle):
        assert engine.get(f"/v1/instances/{outcome.result['instance_id']}").status_code == 404
        assert servers_under(engine.state_store / "jobs" / outcome.job_id) == []


def test_recursive_delete_is_blocked_by_a_connected_instance(engine: EngineProcess) -> None:
    outcome = prepare(
        engine, psql_body("-c", "create table rb1(a int)", "-c", "create table rb2(a int)")
    )
    root = outcome.status["tasks"][2]["output_state_id"]
    session = open_session(outcome.dsn)
    try:
        blocked = engine.delete(f"/v1/states/{root}", params={"recurse": "true"})
        assert blocked.status_code == 409
        tree = blocked.json()["root"]
        assert tree["blocked"] == "blocked_by_descendant"
        assert tree["children"][0]["blocked"] == "blocked_by_descendant"
        assert tree["children"][0]["children"][0]["blocked"] == "active_connections"
        assert engine.get(f"/v1/states/{root}").status_code == 200, "nothing was deleted"
        assert query(outcome.dsn, "select 1") == "1"
        forced = engine.delete(f"/v1/states/{root}", params={"recurse": "true", "force": "true"})
        assert forced.status_code == 200
    finally:
        session.kill()
        session.wait()


@pytest.mark.parametrize(
    "path", ["/v1/instances/" + "0" * 32, "/v1/states/" + "0" * 64, "/v1/prepare-jobs/" + "0" * 32]
)
def test_delete_unknown_is_404(engine: EngineProcess, path: str) -> None:
    response = engine.delete(path)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_bad_flag_is_400(engine: EngineProcess) -> None:
    response = engine.delete("/v1/states/" + "0" * 64, params={"recurse": "maybe"})
    assert response.status_code == 400


def test_delete_running_job_blocked_then_forced(engine: EngineProcess) -> None:
    job_id = submit(engine, psql_body("-c", "select pg_sleep(60)"))
    wait_for_running_step(engine, job_id)
    blocked = engine.delete(f"/v1/prepare-jobs/{job_id}")
    assert blocked.status_code == 409
    assert blocked.json() == {
        "dry_run": False,
        "outcome": "blocked",
        "root": {"kind": "job", "id": job_id, "blocked": "active_tasks"},
    }
    dry = engine.delete(f"/v1/prepare-jobs/{job_id}", params={"dry_run": "true"})
    assert dry.status_code == 200 and dry.json()["outcome"] == "blocked"
    forced = engine.delete(f"/v1/prepare-jobs/{job_id}", params={"force": "true"})
    assert forced.status_code == 200 and forced.json()["outcome"] == "deleted"
    assert engine.get(f"/v1/prepare-jobs/{job_id}").status_code == 404
    assert engine.get("/v1/tasks", params={"job": job_id}).json() == []
    assert not (engine.state_store / "jobs" / job_id).exists()
    assert servers_under(engine.state_store / "jobs" / job_id) == []


def test_a_state_a_running_job_stands_on_is_blocked_until_the_job_ends(
    engine: EngineProcess,
) -> None:
    """docs/api.md, Deletion: a state a running job relies on (here its clone stands on the
    state: on overlay, its layer is a lower of the job's mounted clone) answers 409
    `active_tasks` naming the job — with `recurse` and `force` too — and changes nothing;
    the job then succeeds, and a delete after it removes the state."""
    step = "create table used_by_job(a int)"
    first = prepare(engine, psql_body("-c", step))
    root = first.result["state_id"]
    assert engine.delete(f"/v1/instances/{first.result['instance_id']}").status_code == 200
    state_dir = next((engine.state_store / "engines").glob(f"*/*/states/{root}"))
    files = files_of(state_dir)
    with release_file() as go:
        job_id = submit(engine, psql_body("-c", step, "-c", waits_for(go)))
        runtime = engine.state_store / "jobs" / job_id / "runtime"
        wait_for_running_step(engine, job_id)
        assert wait_for(lambda: servers_under(runtime) != []), "the job's server never started"

        refused = [
            engine.delete(f"/v1/states/{root}", params=params)
            for params in ({}, {"force": "true"}, {"recurse": "true", "force": "true"})
        ]
        dry = engine.delete(f"/v1/states/{root}", params={"dry_run": "true"})

        root_node = {
            "kind": "state",
            "id": root,
            "blocked": "active_tasks",
            "children": [{"kind": "job", "id": job_id, "blocked": "active_tasks"}],
        }
        for response in refused:
            assert response.status_code == 409, response.text
            assert response.json() == {"dry_run": False, "outcome": "blocked", "root": root_node}
        assert dry.status_code == 200
        assert dry.json() == {"dry_run": True, "outcome": "blocked", "root": root_node}
        assert engine.get(f"/v1/states/{root}").status_code == 200
        assert files_of(state_dir) == files, "a refused delete touched the state's files"
        assert servers_under(runtime) != [], "the job's server is still running"
        go.touch()
        job = wait(engine, job_id)
    assert job.status["status"] == "succeeded", job.status
    child = job.result["state_id"]
    assert engine.get(f"/v1/states/{child}").json()["parent_state_id"] == root
    assert query(job.dsn, "select count(*) from used_by_job") == "0"

    deleted = engine.delete(f"/v1/states/{root}", params={"recurse": "true"})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["outcome"] == "deleted"
    for state_id in (root, child):
        assert engine.get(f"/v1/states/{state_id}").status_code == 404
    assert not state_dir.exists()
    assert engine.get(f"/v1/instances/{job.result['instance_id']}").status_code == 404
    assert servers_under(engine.state_store / "jobs" / job_id) == []


def test_deleting_a_job_keeps_its_instance(engine: EngineProcess) -> None:
    outcome = prepare(
        engine, psql_body("-c", "create table keepme(a int); insert into keepme values (5)")
    )
    response = engine.delete(f"/v1/prepare-jobs/{outcome.job_id}")
    assert response.status_code == 200
    assert query(outcome.dsn, "select a from keepme") == "5"
    assert data_dir_of(engine, outcome).is_dir()
    instance = engine.get(f"/v1/instances/{outcome.result['instance_id']}")
    assert instance.status_code == 200
    assert engine.delete(f"/v1/instances/{outcome.result['instance_id']}").status_code == 200
    assert not (engine.state_store / "jobs" / outcome.job_id).exists()


def test_retention_keeps_exactly_n_identical_jobs(engine: EngineProcess) -> None:
    assert (
        engine.patch(
            "/v1/config", json={"path": "orchestrator.jobs.maxIdentical", "value": 2}
        ).status_code
        == 200
    )
    no_min_age = {"path": "orchestrator.jobs.minAge", "value": "0s"}
    assert engine.patch("/v1/config", json=no_min_age).status_code == 200
    body = psql_body("-c", "select 'retention'", plan_only=True)
    outcomes = [prepare(engine, body) for _ in range(4)]
    signature = engine.get("/v1/prepare-jobs", params={"job": outcomes[3].job_id}).json()[0][
        "signature"
    ]
    kept = [
        j["job_id"]
        for j in engine.get("/v1/prepare-jobs").json()
        if j.get("signature") == signature
    ]
    assert kept == [outcomes[2].job_id, outcomes[3].job_id]
    prepare(engine, psql_body("-c", "select 'retention'"))  # plan_only differs: not trimmed
    kept_after = [
        j for j in engine.get("/v1/prepare-jobs").json() if j.get("signature") == signature
    ]
    assert len(kept_after) == 2


def test_concurrent_deletes_of_the_same_instance(engine: EngineProcess) -> None:
    outcome = prepare(engine, psql_body("-c", "create table conc(a int)"))
    path = f"/v1/instances/{outcome.result['instance_id']}"
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        codes = sorted(pool.map(lambda _: engine.delete(path).status_code, range(4)))
    assert codes == [200, 404, 404, 404]


def test_full_cycle_leaves_nothing_behind(engine: EngineProcess) -> None:
    body = psql_body("-c", "create table cycle(a int)", "-c", "insert into cycle values (1)")
    first, second = prepare(engine, body), prepare(engine, body)
    for outcome in (first, second):
        run = engine.post(
            "/v1/runs",
            json={
                "instance_ref": outcome.result["instance_id"],
                "kind": "psql",
                "args": ["-c", "insert into cycle values (2)"],
            },
        )
        events = [json.loads(line) for line in run.text.splitlines()]
        assert events[-1] == {"type": "exit", "ts": events[-1]["ts"], "exit_code": 0}
    root = first.status["tasks"][2]["output_state_id"]
    assert (
        engine.delete(f"/v1/states/{root}", params={"recurse": "1", "force": "1"}).status_code
        == 200
    )
    for outcome in (first, second):
        assert engine.delete(f"/v1/prepare-jobs/{outcome.job_id}").status_code == 200
        assert not (engine.state_store / "jobs" / outcome.job_id).exists()
        assert servers_under(engine.state_store / "jobs" / outcome.job_id) == []
    states = {s["state_id"] for s in engine.get("/v1/states").json()}
    assert root not in states
    leftovers = [p for p in (engine.state_store / "engines").glob(f"*/*/states/{root}*")]
    assert leftovers == []
    mounts = Path("/proc/self/mounts").read_text()
    assert str(engine.state_store / "jobs" / first.job_id) not in mounts
    assert str(engine.state_store / "jobs" / second.job_id) not in mounts


def test_a_hung_instance_holds_up_no_other_deletion_and_is_a_clear_409(
    engine: EngineProcess,
) -> None:
    """Issue 14: its server stopped with SIGSTOP, an instance's connection probe hangs
    (~10 s). Deleting an unrelated instance meanwhile must not wait for it; the hung one's
    own delete is a 409 that says what to do, and force deletes it."""
    hung = prepare(engine, psql_body("-c", "create table hung(a int)")).result["instance_id"]
    other = prepare(engine, psql_body("-c", "create table other(a int)")).result["instance_id"]
    pid = int(engine.get(f"/v1/instances/{hung}").json()["runtime_id"].removeprefix("host:"))
    os.kill(pid, signal.SIGSTOP)
    try:
        finished: dict[str, float] = {}

        def delete(instance_id: str, force: bool) -> requests.Response:
            response = engine.delete(
                f"/v1/instances/{instance_id}", params={"force": str(force).lower()}
            )
            finished[instance_id] = time.monotonic()
            return response

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = pool.submit(delete, hung, False)
            time.sleep(0.5)  # let the hung probe start first
            fast = pool.submit(delete, other, True)
            assert fast.result().status_code == 200
            answer = slow.result()
        assert finished[other] < finished[hung], "the unrelated delete waited for the hung probe"
        assert answer.status_code == 409
        assert answer.json()["message"] == "instance is not responding"
        assert "force=true" in answer.json()["details"]
        forced = engine.delete(f"/v1/instances/{hung}", params={"force": "true"})
        assert forced.status_code == 200 and forced.json()["outcome"] == "deleted"
        assert procs.wait_dead([pid], 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
