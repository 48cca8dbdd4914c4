"""The warm pool end to end: real engine, real PostgreSQL, real clones (issue 16).

A cache hit takes a ready member and the pool refills; handed-out instances are isolated
from each other; deleting a state drains its pool (and is never blocked by it); a kill -9
with a full pool leaves nothing behind after the restart; a burst larger than the pool falls
back to ordinary clones without ever exceeding the caps; the pool stops with the engine.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlrs_engine.runtime import procs
from tests.support.dirs import servers_under
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.prepare import JobOutcome, prepare, psql_body, query, submit, wait
from tests.support.store_check import (
    instance_runtime_dirs,
    mount_points_under,
    settled_store_problems,
)

FILL_TIMEOUT = 120.0
POOLED = "instance: ready server taken from the warm pool"
BODY = psql_body("-c", "create table t(a int)", "-c", "insert into t values (1)")


class EngineApi:
    def __init__(self, engine: EngineProcess) -> None:
        self.engine = engine

    def get_json(self, path: str) -> Any:
        response = self.engine.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()


def configure(engine: EngineProcess, **pool: Any) -> None:
    response = engine.patch("/v1/config", json={"path": "pool", "value": pool})
    assert response.status_code == 200, response.text


def pool_status(engine: EngineProcess) -> dict[str, Any]:
    response = engine.get("/v1/pool")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_ready(engine: EngineProcess, state_id: str, count: int) -> dict[str, Any]:
    """The pool status once `state_id` has `count` ready members and no fill under way."""
    deadline = time.monotonic() + FILL_TIMEOUT
    while True:
        status = pool_status(engine)
        ready = [m for m in status["members"] if m["state_id"] == state_id]
        if len(ready) == count and status["filling_count"] == status["removing_count"] == 0:
            return status
        assert time.monotonic() < deadline, f"pool never reached {count} members: {status}"
        time.sleep(0.05)


def succeeded(outcome: JobOutcome) -> JobOutcome:
    assert outcome.status["status"] == "succeeded", outcome.status
    return outcome


def pooled(outcome: JobOutcome) -> bool:
    return POOLED in outcome.log_lines()


def hit_state(engine: EngineProcess) -> str:
    """Build the state of BODY, then hit it once (the hit makes it wanted): its id."""
    built = succeeded(prepare(engine, BODY))
    first_hit = succeeded(prepare(engine, BODY))
    assert not pooled(built) and not pooled(first_hit)
    return str(first_hit.result["state_id"])


def secret_of(dsn: str) -> str:
    return urlsplit(dsn).password or ""


def test_a_hit_takes_a_ready_member_and_the_pool_refills(engine: EngineProcess) -> None:
    configure(engine, enabled=True, membersPerState=1, maxMembers=4)
    state = hit_state(engine)
    before = wait_ready(engine, state, 1)
    member_id = before["members"][0]["member_id"]
    assert before["counters"]["hand_outs"] == 0
    assert before["counters"]["misses"] == 1  # the first hit found nothing

    outcome = succeeded(prepare(engine, BODY))
    assert pooled(outcome)
    instance_id = outcome.result["instance_id"]
    # The job's result names the handed-out member, now an ordinary instance of the job.
    assert instance_runtime_dirs(engine.state_store)[instance_id] == str(
        engine.state_store / "jobs" / member_id / "runtime"
    )
    entry = engine.get(f"/v1/instances/{instance_id}").json()
    assert entry["state_id"] == state
    assert not (engine.state_store / "jobs" / member_id / ".pool-member").exists()
    assert query(outcome.dsn, "select count(*) from t") == "1"
    # Fresh credentials: the member's password is its own, not any other instance's.
    others = [i for i in engine.get("/v1/instances").json() if i["instance_id"] != instance_id]
    assert len(others) == 2
    assert secret_of(outcome.dsn)

    after = wait_ready(engine, state, 1)
    assert after["members"][0]["member_id"] != member_id
    assert after["counters"]["hand_outs"] == 1
    assert after["counters"]["fills"] == 2
    # Members are not instances: the listing holds the three jobs' instances only.
    listed = {i["instance_id"] for i in engine.get("/v1/instances").json()}
    assert instance_id in listed and len(listed) == 3
    assert settled_store_problems(EngineApi(engine), engine.state_store) == []
    log = engine.stderr_text()
    assert f"pool: filled member {member_id} of state {state}" in log
    assert f"pool: handed out member {member_id} of state {state} to job {outcome.job_id}" in log


def test_handed_out_instances_are_isolated_and_have_their_own_credentials(
    engine: EngineProcess,
) -> None:
    configure(engine, enabled=True, membersPerState=2, maxMembers=2)
    state = hit_state(engine)
    wait_ready(engine, state, 2)
    first = succeeded(prepare(engine, BODY))
    second = succeeded(prepare(engine, BODY))
    assert pooled(first) and pooled(second)
    query(first.dsn, "insert into t values (2); create table only_first(x int)")
    assert query(first.dsn, "select count(*) from t") == "2"
    assert query(second.dsn, "select count(*) from t") == "1"
    assert query(second.dsn, "select to_regclass('only_first') is null") == "t"
    assert urlsplit(first.dsn).port != urlsplit(second.dsn).port
    assert secret_of(first.dsn) != secret_of(second.dsn)
    dirs = instance_runtime_dirs(engine.state_store)
    assert dirs[first.result["instance_id"]] != dirs[second.result["instance_id"]]
    # The next member (after the refill) is fresh as well: nothing of either use.
    wait_ready(engine, state, 2)
    third = succeeded(prepare(engine, BODY))
    assert pooled(third)
    assert query(third.dsn, "select count(*) from t") == "1"
    assert query(third.dsn, "select to_regclass('only_first') is null") == "t"


def test_deleting_a_state_drains_its_pool_and_is_never_blocked_by_it(
    engine: EngineProcess,
) -> None:
    configure(engine, enabled=True, membersPerState=2, maxMembers=4)
    state = hit_state(engine)
    for entry in engine.get("/v1/instances").json():
        response = engine.delete(f"/v1/instances/{entry['instance_id']}")
        assert response.status_code == 200, response.text
    status = wait_ready(engine, state, 2)
    member_dirs = [engine.state_store / "jobs" / m["member_id"] for m in status["members"]]

    # No instance of the state exists: members alone never block a plain delete.
    response = engine.delete(f"/v1/states/{state}")
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "deleted"
    drained = pool_status(engine)
    assert drained["members"] == [] and drained["filling_count"] == 0
    assert all(s["state_id"] != state for s in drained["states"])
    assert not any(d.exists() for d in member_dirs)
    assert servers_under(engine.state_store) == []
    assert mount_points_under(engine.state_store / "jobs") == []
    assert settled_store_problems(EngineApi(engine), engine.state_store) == []
    assert "pool: drained 2 member(s) of state(s) " + state + " (state deleted)" in (
        engine.stderr_text()
    )


def test_deleting_a_state_with_instances_and_members(engine: EngineProcess) -> None:
    """A recursive delete takes the instances (pooled ones too) and drains the members."""
    configure(engine, enabled=True, membersPerState=1, maxMembers=4)
    state = hit_state(engine)
    wait_ready(engine, state, 1)
    taken = succeeded(prepare(engine, BODY))
    assert pooled(taken)
    wait_ready(engine, state, 1)
    blocked = engine.delete(f"/v1/states/{state}")
    assert blocked.status_code == 409, blocked.text
    response = engine.delete(f"/v1/states/{state}", params={"recurse": "true", "force": "true"})
    assert response.status_code == 200, response.text
    assert engine.get("/v1/instances").json() == []
    assert pool_status(engine)["members"] == []
    assert servers_under(engine.state_store) == []
    assert settled_store_problems(EngineApi(engine), engine.state_store) == []


def test_kill_9_with_a_full_pool_leaves_nothing_after_restart(scratch_dir: Path) -> None:
    engine = start_engine(scratch_dir)
    try:
        configure(engine, enabled=True, membersPerState=3, maxMembers=3)
        state = hit_state(engine)
        status = wait_ready(engine, state, 3)
        member_dirs = [engine.state_store / "jobs" / m["member_id"] for m in status["members"]]
        instances = {i["instance_id"] for i in engine.get("/v1/instances").json()}
        assert len(servers_under(engine.state_store)) == 5  # 2 instances + 3 members
        engine.process.send_signal(signal.SIGKILL)
        engine.process.wait(timeout=30)
    finally:
        engine.stop()
    assert all(d.is_dir() for d in member_dirs)

    restarted = start_engine(scratch_dir)
    try:
        assert not any(d.exists() for d in member_dirs)
        assert {i["instance_id"] for i in restarted.get("/v1/instances").json()} == instances
        assert len(servers_under(restarted.state_store)) == 2
        assert pool_status(restarted)["members"] == []
        assert settled_store_problems(EngineApi(restarted), restarted.state_store) == []
        assert "pool: removed 3 member(s) left by a previous engine" in restarted.stderr_text()
        # The pool works again after the restart (its settings were kept).
        again = succeeded(prepare(restarted, BODY))
        assert not pooled(again)
        wait_ready(restarted, state, 3)
    finally:
        restarted.stop()


def test_a_burst_larger_than_the_pool_respects_the_caps(engine: EngineProcess) -> None:
    configure(engine, enabled=True, membersPerState=2, maxMembers=2, fillConcurrency=2)
    state = hit_state(engine)
    wait_ready(engine, state, 2)
    samples: list[dict[str, Any]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(pool_status(engine))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        jobs = [submit(engine, BODY) for _ in range(6)]
        outcomes = [succeeded(wait(engine, job)) for job in jobs]
    finally:
        done.set()
        sampler.join()
    assert sum(pooled(o) for o in outcomes) == 2
    assert len({o.result["instance_id"] for o in outcomes}) == 6
    assert len({urlsplit(o.dsn).port for o in outcomes}) == 6
    for outcome in outcomes:
        assert query(outcome.dsn, "select count(*) from t") == "1"
    assert samples
    for status in samples:
        assert status["member_count"] + status["filling_count"] <= 2, status
    after = wait_ready(engine, state, 2)
    assert after["counters"]["hand_outs"] == 2
    assert after["counters"]["misses"] == 1 + 4


def test_disabling_the_pool_drains_it_and_the_pool_stops_with_the_engine(
    scratch_dir: Path,
) -> None:
    engine = start_engine(scratch_dir)
    try:
        configure(engine, enabled=True, membersPerState=2, maxMembers=4)
        state = hit_state(engine)
        wait_ready(engine, state, 2)
        configure(engine, enabled=False)
        wait_ready(engine, state, 0)
        assert list((engine.state_store / "jobs").glob("pool-*")) == []
        configure(engine, enabled=True, membersPerState=2, maxMembers=4)
        succeeded(prepare(engine, BODY))  # a hit: the state is wanted again
        wait_ready(engine, state, 2)
        instance_pids = {
            int(i["runtime_id"].removeprefix("host:")) for i in engine.get("/v1/instances").json()
        }
    finally:
        assert engine.stop() == 0
    # Instances outlive the engine (SPEC); members do not.
    assert list((engine.state_store / "jobs").glob("pool-*")) == []
    assert set(servers_under(engine.state_store)) == instance_pids
    assert all(procs.is_alive(pid) for pid in instance_pids)


def test_eviction_drains_the_pool_of_an_evicted_state(engine: EngineProcess) -> None:
    """Members never keep a state from being evicted: eviction goes through the deletion,
    which drains the state's pool first."""
    configure(engine, enabled=True, membersPerState=1, maxMembers=4)
    body_a = psql_body("-c", "create table evict_a(a int)")
    body_b = psql_body("-c", "create table evict_b(a int)")
    states = {}
    for name, body in (("a", body_a), ("b", body_b)):
        succeeded(prepare(engine, body))
        states[name] = succeeded(prepare(engine, body)).result["state_id"]
        wait_ready(engine, states[name], 1)
    for entry in engine.get("/v1/instances").json():
        assert engine.delete(f"/v1/instances/{entry['instance_id']}").status_code == 200
    usage = sum(s["size_bytes"] for s in engine.get("/v1/states").json())
    for path, value in (
        ("cache.capacity.reserveBytes", 0),
        ("cache.capacity.minStateAge", "0s"),
        # Just above the high watermark: the next state's build must evict (a first).
        ("cache.capacity.maxBytes", int(usage / 0.9) - 1),
    ):
        response = engine.patch("/v1/config", json={"path": path, "value": value})
        assert response.status_code == 200, response.text

    outcome = succeeded(prepare(engine, psql_body("-c", "create table evict_c(a int)")))
    left = {s["state_id"] for s in engine.get("/v1/states").json()}
    assert states["a"] not in left, "the least recently used state is evicted, pool or not"
    assert outcome.result["state_id"] in left
    status = pool_status(engine)
    evicted = {s for s in states.values() if s not in left}
    assert not [m for m in status["members"] if m["state_id"] in evicted]
    assert status["counters"]["drained"] >= len(evicted)
    assert "cache eviction (prepare_step)" in engine.stderr_text()
    assert settled_store_problems(EngineApi(engine), engine.state_store) == []
