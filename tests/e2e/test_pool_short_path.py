"""The short path of a pooled cache hit end to end (issue 16, jobs/pooled_hit.py).

A hit that finds a ready member is recorded finished without a job actor. What a client sees
must not tell the two paths apart: the same 201, job status, tasks, events (order and
fields), result, log files, listings and deletion as a hit that took its member through a
job (`pool.shortPath: false`). Under a burst larger than the pool each member is handed out
once and the rest run as ordinary jobs; a deletion racing hits leaves a whole store.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.e2e.test_pool import (
    BODY,
    EngineApi,
    configure,
    hit_state,
    pool_status,
    pooled,
    succeeded,
    wait_ready,
)
from tests.support.dirs import servers_under
from tests.support.engine_process import EngineProcess
from tests.support.prepare import JobOutcome, prepare, psql_body, query, submit, wait
from tests.support.store_check import instance_runtime_dirs, settled_store_problems

SHORT = "cache hit served from the warm pool"
"""The engine log line of a hit that took the short path (`job <id>: … (instance <id>)`)."""
SETTINGS_TIMEOUT = 30.0
TIMES = ("created_at", "started_at", "finished_at", "ts", "last_hit_at")


def short_path(engine: EngineProcess, on: bool) -> None:
    """Switch `pool.shortPath` and wait until the pool has read it."""
    configure(engine, enabled=True, membersPerState=1, maxMembers=4, shortPath=on)
    deadline = time.monotonic() + SETTINGS_TIMEOUT
    while pool_status(engine)["settings"]["short_path"] is not on:
        assert time.monotonic() < deadline, "the pool never read pool.shortPath"
        time.sleep(0.05)


def took_short_path(engine: EngineProcess, job_id: str) -> bool:
    return f"job {job_id}: {SHORT}" in engine.stderr_text()


def normalized(value: Any, outcome: JobOutcome) -> Any:
    """`value` with this job's own ids, secrets, ports and times replaced by placeholders."""
    result = outcome.result
    names = {
        outcome.job_id: "<job>",
        result["instance_id"]: "<instance>",
        result["dsn"]: "<dsn>",
        urlsplit(result["dsn"]).password or "<no password>": "<secret>",
    }

    def walk(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: walk(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if key in TIMES and isinstance(node, str):
            return "<time>"
        if isinstance(node, str):
            for real, placeholder in names.items():
                node = node.replace(real, placeholder)
            return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", node)
        return node

    return walk(value)


def observed(engine: EngineProcess, outcome: JobOutcome) -> dict[str, Any]:
    """Everything the API shows of a finished job and its instance, normalized."""
    job_id, instance_id = outcome.job_id, outcome.result["instance_id"]
    listed = [j for j in engine.get("/v1/prepare-jobs").json() if j["job_id"] == job_id]
    ranged = engine.get(f"/v1/prepare-jobs/{job_id}/events", headers={"Range": "events=1-3"})
    logs = {
        task: engine.get(f"/v1/prepare-jobs/{job_id}/tasks/{task}/log").text
        for task in ("job", "plan", "resolve-image", "execute-0", "prepare-instance")
    }
    instance = engine.get(f"/v1/instances/{instance_id}").json()
    facts = {
        "events": outcome.events,
        "status": outcome.status,
        "tasks": engine.get("/v1/tasks", params={"job": job_id}).json(),
        "listed": listed,
        "ranged": [
            ranged.status_code,
            ranged.headers.get("Content-Range"),
            [json.loads(line) for line in ranged.text.splitlines() if line],
        ],
        "logs": logs,
        "instance": {k: v for k, v in instance.items() if k != "runtime_id"},
        "log_files": sorted(
            p.name for p in (engine.state_store / "jobs" / job_id / "logs").iterdir()
        ),
    }
    return dict(normalized(facts, outcome))


def test_a_short_path_hit_is_indistinguishable_from_a_job_hit(engine: EngineProcess) -> None:
    short_path(engine, False)
    state = hit_state(engine)
    wait_ready(engine, state, 1)
    by_job = succeeded(prepare(engine, BODY))
    assert pooled(by_job) and not took_short_path(engine, by_job.job_id)

    short_path(engine, True)
    wait_ready(engine, state, 1)
    response = engine.post("/v1/prepare-jobs", json=BODY)
    assert response.status_code == 201, response.text
    accepted = response.json()
    short = succeeded(wait(engine, accepted["job_id"]))
    assert pooled(short) and took_short_path(engine, short.job_id)
    # The submission is answered as SPEC §2.1 says, whichever path takes it.
    assert accepted == {
        "job_id": short.job_id,
        "status_url": f"/v1/prepare-jobs/{short.job_id}",
        "events_url": f"/v1/prepare-jobs/{short.job_id}/events",
        "status": "queued",
    }
    assert response.headers["Location"] == accepted["status_url"]

    assert observed(engine, short) == observed(engine, by_job)
    assert query(short.dsn, "select count(*) from t") == "1"
    # The job owns its instance: the instance row names it, the job's result names the row.
    dirs = instance_runtime_dirs(engine.state_store)
    assert Path(dirs[short.result["instance_id"]]).parent.name.startswith("pool-")
    # Deleting the jobs' instances and then the jobs behaves the same for both.
    for outcome in (by_job, short):
        deleted = engine.delete(f"/v1/instances/{outcome.result['instance_id']}")
        assert deleted.status_code == 200, deleted.text
    answers = [engine.delete(f"/v1/prepare-jobs/{o.job_id}") for o in (by_job, short)]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert normalized(answers[0].json(), by_job) == normalized(answers[1].json(), short)
    assert engine.get(f"/v1/prepare-jobs/{short.job_id}").status_code == 404
    assert not (engine.state_store / "jobs" / short.job_id).exists()
    assert settled_store_problems(EngineApi(engine), engine.state_store) == []


def test_a_hit_without_a_member_of_its_state_leaves_no_trace_of_the_attempt(
    engine: EngineProcess,
) -> None:
    """Members of another state are ready: the attempt plans, finds none, and the job runs
    as usual — one `plan` log, one miss, no extra event."""
    short_path(engine, True)
    other = psql_body("-c", "create table other(a int)")
    state = hit_state(engine)
    wait_ready(engine, state, 1)
    succeeded(prepare(engine, other))  # builds `other`: no member of it exists
    misses = pool_status(engine)["counters"]["misses"]
    outcome = succeeded(prepare(engine, other))  # a hit of `other`, no member
    assert not pooled(outcome) and not took_short_path(engine, outcome.job_id)
    assert pool_status(engine)["counters"]["misses"] == misses + 1
    plan_log = engine.get(f"/v1/prepare-jobs/{outcome.job_id}/tasks/plan/log").text
    assert plan_log.count("resolve image") == 1, plan_log
    assert [e["status"] for e in outcome.events if e["type"] == "status"] == [
        "queued",
        "running",
        "succeeded",
    ]
    # The ready member of the first state is still there for its own next hit.
    assert [m["state_id"] for m in pool_status(engine)["members"]] == [state]


def test_a_burst_larger_than_the_pool_hands_each_member_out_once(engine: EngineProcess) -> None:
    configure(engine, enabled=True, membersPerState=3, maxMembers=3, fillConcurrency=3)
    state = hit_state(engine)
    members = {m["member_id"] for m in wait_ready(engine, state, 3)["members"]}
    size = 10
    gate = threading.Barrier(size)
    outcomes: list[JobOutcome] = []
    lock = threading.Lock()

    def hit() -> None:
        gate.wait(60)
        outcome = prepare(engine, BODY)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=hit) for _ in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert len(outcomes) == size
    for outcome in outcomes:
        succeeded(outcome)
        assert query(outcome.dsn, "select count(*) from t") == "1"
    taken = [o for o in outcomes if pooled(o)]
    assert len(taken) == 3, "every member once, the rest unpooled"
    assert all(took_short_path(engine, o.job_id) for o in taken)
    dirs = instance_runtime_dirs(engine.state_store)
    handed = {Path(dirs[o.result["instance_id"]]).parent.name for o in taken}
    assert handed == members
    assert len({urlsplit(o.dsn).port for o in outcomes}) == size
    assert len({urlsplit(o.dsn).password for o in outcomes}) == size
    counters = wait_ready(engine, state, 3)["counters"]
    assert counters["hand_outs"] == 3
    assert counters["misses"] == 1 + size - 3
    assert settled_store_problems(EngineApi(engine), engine.state_store) == []


def test_a_state_deletion_racing_short_path_hits(engine: EngineProcess) -> None:
    """Hits keep coming while the state is deleted recursively. Whatever interleaving
    occurs, every job ends, no member outlives the deletion or leaks a server, and every
    instance left is whole (a hit after the deletion rebuilds the state)."""
    configure(engine, enabled=True, membersPerState=4, maxMembers=4, fillConcurrency=2)
    state = hit_state(engine)
    wait_ready(engine, state, 4)
    stop = threading.Event()
    jobs: list[str] = []

    def hits() -> None:
        while not stop.is_set():
            jobs.append(submit(engine, BODY))

    hitters = [threading.Thread(target=hits) for _ in range(2)]
    for thread in hitters:
        thread.start()
    try:
        while len(jobs) < 2:
            time.sleep(0.005)
        deleted = engine.delete(f"/v1/states/{state}", params={"recurse": "true", "force": "true"})
    finally:
        stop.set()
        for thread in hitters:
            thread.join(120)
    outcomes = [wait(engine, job_id) for job_id in jobs]
    if deleted.status_code != 200:
        # Not the pool: an ordinary job (a hit that fell through once the drain closed the
        # state) was running on the state, which blocks its deletion (SPEC §6, api.md).
        assert deleted.status_code == 409, deleted.text
        assert '"blocked":"active_tasks"' in deleted.text.replace(" ", ""), deleted.text
        deleted = engine.delete(f"/v1/states/{state}", params={"recurse": "true", "force": "true"})
        assert deleted.status_code == 200, deleted.text
    for outcome in outcomes:
        assert outcome.status["status"] in ("succeeded", "failed"), outcome.status
    live = {i["instance_id"]: i for i in engine.get("/v1/instances").json()}
    for outcome in outcomes:
        if outcome.status["status"] == "succeeded" and outcome.result["instance_id"] in live:
            assert query(outcome.dsn, "select count(*) from t") == "1"
    assert any(took_short_path(engine, o.job_id) for o in outcomes), "members were taken"
    wait_idle_pool(engine)
    members = {m["member_id"] for m in pool_status(engine)["members"]}
    runtime_dirs = set(instance_runtime_dirs(engine.state_store).values())
    for job_dir in (engine.state_store / "jobs").glob("pool-*"):
        assert job_dir.name in members or str(job_dir / "runtime") in runtime_dirs, job_dir
    assert len(servers_under(engine.state_store)) == len(live) + len(members)
    assert settled_store_problems(EngineApi(engine), engine.state_store) == []


def wait_idle_pool(engine: EngineProcess) -> None:
    deadline = time.monotonic() + 120
    while True:
        status = pool_status(engine)
        if not status["filling_count"] and not status["removing_count"]:
            return
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_a_damaged_cached_state_is_left_to_the_job_that_rebuilds_it(
    engine: EngineProcess,
) -> None:
    """A member of the state is ready, but the state's directory lost its marker: the short
    path refuses, and the job invalidates the state (draining its pool) and rebuilds it."""
    configure(engine, enabled=True, membersPerState=1, maxMembers=1)
    state = hit_state(engine)
    for entry in engine.get("/v1/instances").json():
        assert engine.delete(f"/v1/instances/{entry['instance_id']}").status_code == 200
    member = wait_ready(engine, state, 1)["members"][0]["member_id"]
    state_dir = next((engine.state_store / "engines").glob(f"*/*/states/{state}"))
    (state_dir / ".build.ok").unlink()
    outcome = succeeded(prepare(engine, BODY))
    assert not took_short_path(engine, outcome.job_id)
    assert not pooled(outcome)
    assert any("unusable" in line and state in line for line in outcome.log_lines())
    assert "psql: start" in outcome.log_lines(), "the state was rebuilt"
    assert not (engine.state_store / "jobs" / member).exists()
    assert query(outcome.dsn, "select count(*) from t") == "1"
    assert (state_dir / ".build.ok").is_file()
