"""Crash safety (issue 11): the engine is frozen at a named phase boundary, killed there — the
engine alone (`kill -9`), or with every process it started (a power loss) — restarted on the
same store, and the store must then be whole: every job terminal, no orphan process or
mount, no incomplete state served, no row without files or files without row, no instance
lost, `PRAGMA integrity_check` ok, and a new prepare works.

Phase points are chosen deterministically: the engine runs with `SQLRS_FAULT_POINT=<name>`
and stops itself with SIGSTOP when it reaches that point (`sqlrs_engine/faults.py`, inert in
production); the test waits for the stopped state, then kills.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine.runtime import procs
from sqlrs_engine.snapshot.btrfs import subvolumes_below
from tests.snapshot import btrfs_loop
from tests.support.dirs import kill_servers_under, servers_under
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.frozen import all_threads_stopped
from tests.support.prepare import assert_succeeded, prepare, psql_body, query, submit, wait
from tests.support.store_check import settled_store_problems, stale_leftovers

FREEZE_TIMEOUT = 120.0


class EngineApi:
    """`get_json` over an engine, for the shared store checks."""

    def __init__(self, engine: EngineProcess) -> None:
        self.engine = engine

    def get_json(self, path: str) -> Any:
        response = self.engine.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()


def descendants(pid: int) -> list[int]:
    """Every live process whose parent chain leads to `pid`."""
    children: dict[int, list[int]] = {}
    for candidate in procs.all_pids():
        try:
            fields = Path(f"/proc/{candidate}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(candidate)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def freeze_then_kill(engine: EngineProcess, power_loss: bool, store: Path) -> None:
    """Wait until the engine froze at its fault point, then kill it (and, for a power loss,
    every process it started and every server of the store)."""
    pid = engine.process.pid
    deadline = time.monotonic() + FREEZE_TIMEOUT
    while not all_threads_stopped(pid):
        assert engine.process.poll() is None, "the engine exited before its fault point"
        assert time.monotonic() < deadline, "the engine never reached its fault point"
        time.sleep(0.02)
    victims = [pid]
    if power_loss:
        victims += descendants(pid) + servers_under(store)
    for victim in victims:
        procs.send(victim, signal.SIGKILL)
    engine.process.wait(timeout=30)
    procs.wait_dead(victims, 30)


@dataclass
class Scenario:
    point: str
    setup: Callable[[EngineProcess], dict[str, Any]]
    """Runs before the fault: returns what `act` needs."""
    act: Callable[[EngineProcess, dict[str, Any]], None]
    """Reaches the fault point (on a thread: it blocks when the engine freezes)."""
    check: Callable[[EngineProcess, dict[str, Any]], None]
    """What must hold after the restart, besides the store invariants."""


def nothing(_engine: EngineProcess) -> dict[str, Any]:
    return {}


def submit_prepare(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    ctx["jobs_before"] = {job["job_id"] for job in engine.get("/v1/prepare-jobs").json()}
    ctx["job_id"] = submit(engine, psql_body("-c", "create table crashed(a int)"))


def submitted_job(engine: EngineProcess, ctx: dict[str, Any]) -> str:
    """The job `submit_prepare` submitted. The engine can freeze at a crash point of that job
    before the HTTP worker has sent the 201 (on a busy machine the job thread gets there
    first), so the id may never have reached the client: then it is the one job the
    restarted engine lists that was not there before."""
    if "job_id" in ctx:
        return str(ctx["job_id"])
    listed = engine.get("/v1/prepare-jobs").json()
    new = [job["job_id"] for job in listed if job["job_id"] not in ctx["jobs_before"]]
    assert len(new) == 1, (new, listed)
    return str(new[0])


def job_resumed(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    outcome = wait(engine, submitted_job(engine, ctx))
    assert_succeeded(engine, outcome)
    assert query(outcome.dsn, "select count(*) from crashed") == "0"


def chain_with_instance(engine: EngineProcess) -> dict[str, Any]:
    outcome = prepare(
        engine, psql_body("-c", "create table a(x int)", "-c", "create table b(x int)")
    )
    assert_succeeded(engine, outcome)
    steps = [t for t in outcome.status["tasks"] if t["type"] == "state_execute"]
    root_state = steps[0]["output_state_id"]
    return {"root": root_state, "instance": outcome.result["instance_id"]}


def delete_chain(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    engine.delete(f"/v1/states/{ctx['root']}", params={"recurse": "true", "force": "true"})


def chain_gone(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    assert engine.get(f"/v1/states/{ctx['root']}").status_code == 404
    assert engine.get(f"/v1/instances/{ctx['instance']}").status_code == 404
    assert engine.get("/v1/states").json() == []


def instance_adopted(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    """The job resumed after its instance was created: it hands out that very instance."""
    outcome = wait(engine, submitted_job(engine, ctx))
    assert_succeeded(engine, outcome)
    instances = engine.get("/v1/instances").json()
    assert [i["instance_id"] for i in instances] == [outcome.result["instance_id"]]
    assert any("was created before a restart" in line for line in outcome.log_lines())
    assert query(outcome.dsn, "select count(*) from crashed") == "0"


def instance_with_stopped_server(engine: EngineProcess) -> dict[str, Any]:
    outcome = prepare(
        engine, psql_body("-c", "create table ran(a int); insert into ran values (1)")
    )
    assert_succeeded(engine, outcome)
    instance_id = outcome.result["instance_id"]
    runtime_id = engine.get(f"/v1/instances/{instance_id}").json()["runtime_id"]
    pid = int(runtime_id.removeprefix("host:"))
    procs.send(pid, signal.SIGKILL)
    assert procs.wait_dead([pid], 10)
    return {"instance": instance_id, "job_id": outcome.job_id}


def run_on_instance(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    body = {"instance_ref": ctx["instance"], "kind": "psql", "args": ["-c", "select 1"]}
    engine.post("/v1/runs", json=body, timeout=60)


def instance_still_usable(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    body = {
        "instance_ref": ctx["instance"],
        "kind": "psql",
        "args": ["-At", "-c", "select a from ran"],
    }
    response = engine.post("/v1/runs", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert '"data":"1\\n"' in response.text.replace(" ", ""), response.text
    status = engine.get(f"/v1/prepare-jobs/{ctx['job_id']}").json()
    assert query(status["result"]["dsn"], "select a from ran") == "1"


SEEDS = 4


def unused_states_under_pressure(engine: EngineProcess) -> dict[str, Any]:
    """Four unused states (their instances deleted), oldest first, and a capacity that the
    next prepare's `prepare_step` check finds exceeded: its pass evicts about half of them,
    one by one, so a crash can stop it between two victims."""
    seeds = []
    for i in range(SEEDS):
        outcome = prepare(engine, psql_body("-c", f"create table seed{i}(a int)"))
        assert_succeeded(engine, outcome)
        assert engine.delete(f"/v1/instances/{outcome.result['instance_id']}").ok
        seeds.append(outcome.result["state_id"])
    usage = sum(s["size_bytes"] for s in engine.get("/v1/states").json())
    for path, value in (
        ("cache.capacity.reserveBytes", 0),
        ("cache.capacity.minStateAge", "0s"),
        # high = 0.79 x usage: under pressure now; low = 0.7 x usage: two of four go.
        ("cache.capacity.maxBytes", int(usage * 0.875)),
    ):
        response = engine.patch("/v1/config", json={"path": path, "value": value})
        assert response.status_code == 200, response.text
    return {"seeds": seeds, "usage": usage}


def eviction_repaired(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    """The interrupted job resumed; the victims are wholly gone, least recently used first;
    the cache status agrees with the rows; an evicted state is rebuilt, never served half."""
    job_resumed(engine, ctx)
    states = {s["state_id"]: s for s in engine.get("/v1/states").json()}
    left = [seed for seed in ctx["seeds"] if seed in states]
    assert ctx["seeds"][0] not in states, "the first victim is gone (marked ones completed)"
    assert left == ctx["seeds"][SEEDS - len(left) :], "least recently used first"
    status = engine.get("/v1/cache/status").json()
    assert status["state_count"] == len(states)
    assert status["usage_bytes"] == sum(s["size_bytes"] for s in states.values())
    assert status["pressure_reasons"] == [], status
    last = status.get("last_eviction")  # in memory only: a pass of this engine, if any
    if last is not None:
        assert last["trigger"] in (
            "startup_recovery",
            "prepare_step",
            "snapshot",
            "metadata_commit",
        )
        assert last["evicted_count"] >= 0 and last["freed_bytes"] >= 0
        assert last["usage_bytes_after"] == last["usage_bytes_before"] - last["freed_bytes"]
    # The evicted state's script again: built anew (not a cache hit on a half-removed dir).
    again = prepare(engine, psql_body("-c", "create table seed0(a int)"))
    assert_succeeded(engine, again)
    steps = [t for t in again.status["tasks"] if t["type"] == "state_execute"]
    assert [t["cached"] for t in steps] == [False], steps
    assert steps[0]["output_state_id"] == ctx["seeds"][0], "same content, same state id"
    assert query(again.dsn, "select count(*) from seed0") == "0"


def marked_victim_completed(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    """The victim was marked `deleting` when the engine died: the start completed it."""
    eviction_repaired(engine, ctx)
    line = "completed an interrupted deletion: 0 instance(s), 1 state(s)"
    assert line in engine.stderr_text(), engine.log_excerpt()


POOL_BODY = psql_body("-c", "create table pooled(a int); insert into pooled values (1)")


def warm_member(engine: EngineProcess) -> dict[str, Any]:
    """A state with one ready pool member, so that the next hit takes the short path."""
    response = engine.patch(
        "/v1/config", json={"path": "pool", "value": {"enabled": True, "maxMembers": 1}}
    )
    assert response.status_code == 200, response.text
    for _ in range(2):  # built, then hit: the hit makes the state wanted
        outcome = prepare(engine, POOL_BODY)
        assert outcome.status["status"] == "succeeded", outcome.status
        # Its instance goes (a power loss would leave it to be restarted): the store then
        # holds only what the crash is about.
        assert engine.delete(f"/v1/instances/{outcome.result['instance_id']}").ok
    deadline = time.monotonic() + FREEZE_TIMEOUT
    while not (members := engine.get("/v1/pool").json()["members"]):
        assert time.monotonic() < deadline, "the pool never filled"
        time.sleep(0.05)
    return {
        "member": members[0]["member_id"],
        "jobs": [j["job_id"] for j in engine.get("/v1/prepare-jobs").json()],
    }


def submit_pooled_hit(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    engine.post("/v1/prepare-jobs", json=POOL_BODY)


def claimed_member_removed(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    """Died between claiming a member and recording the hit: no job, no instance, and the
    member (server, mount, clone) was removed at start-up like any member."""
    assert [j["job_id"] for j in engine.get("/v1/prepare-jobs").json()] == ctx["jobs"]
    assert engine.get("/v1/instances").json() == []
    assert not (engine.state_store / "jobs" / ctx["member"]).exists()
    assert servers_under(engine.state_store) == []
    assert re.search(
        rf"pool: removed 1 member\(s\) left by a previous engine: \['{ctx['member']}'\]",
        engine.stderr_text(),
    )


def pooled_hit_adopted(engine: EngineProcess, ctx: dict[str, Any]) -> None:
    """Died right after recording the hit: the job is finished, and its instance (the
    member's server and clone) is an instance like any other, adopted at start-up."""
    [job_id] = [j["job_id"] for j in engine.get("/v1/prepare-jobs").json()][len(ctx["jobs"]) :]
    outcome = wait(engine, job_id)
    assert outcome.status["status"] == "succeeded", outcome.status
    assert "instance: ready server taken from the warm pool" in outcome.log_lines()
    instance_id = outcome.result["instance_id"]
    assert [i["instance_id"] for i in engine.get("/v1/instances").json()] == [instance_id]
    member_dir = engine.state_store / "jobs" / ctx["member"]
    assert member_dir.is_dir() and not (member_dir / ".pool-member").exists()
    body = {
        "instance_ref": instance_id,
        "kind": "psql",
        "args": ["-At", "-c", "select a from pooled"],
    }
    response = engine.post("/v1/runs", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert '"data":"1\\n"' in response.text.replace(" ", ""), response.text


SCENARIOS = {
    "during-initdb": Scenario("spawned:initdb", nothing, submit_prepare, job_resumed),
    "base-initialized": Scenario("base:initialized", nothing, submit_prepare, job_resumed),
    "base-published": Scenario("base:published", nothing, submit_prepare, job_resumed),
    "during-step-psql": Scenario("spawned:psql", nothing, submit_prepare, job_resumed),
    "snapshotted": Scenario("build:snapshotted", nothing, submit_prepare, job_resumed),
    "row-stored": Scenario("build:row-stored", nothing, submit_prepare, job_resumed),
    "instance-created": Scenario("job:instance-created", nothing, submit_prepare, instance_adopted),
    "run-restarting-server": Scenario(
        "run:server-restarted", instance_with_stopped_server, run_on_instance, instance_still_usable
    ),
    "delete-marked": Scenario("delete:marked", chain_with_instance, delete_chain, chain_gone),
    "delete-midway": Scenario("delete:node-removed", chain_with_instance, delete_chain, chain_gone),
    # Eviction (issue 14): a prepare's capacity check evicts; the engine dies in its pass.
    "evict-chosen": Scenario(
        "evict:chosen", unused_states_under_pressure, submit_prepare, eviction_repaired
    ),
    "evict-marked": Scenario(
        "evict:marked", unused_states_under_pressure, submit_prepare, marked_victim_completed
    ),
    "evict-midway": Scenario(
        "evict:node-removed",
        unused_states_under_pressure,
        submit_prepare,
        marked_victim_completed,
    ),
    "evict-between-victims": Scenario(
        "evict:evicted", unused_states_under_pressure, submit_prepare, eviction_repaired
    ),
    # The pooled-hit short path (issue 16): a member claimed, then the hit recorded.
    "pool-hit-claimed": Scenario(
        "pool:hit-claimed", warm_member, submit_pooled_hit, claimed_member_removed
    ),
    "pool-hit-recorded": Scenario(
        "pool:hit-recorded", warm_member, submit_pooled_hit, pooled_hit_adopted
    ),
}


@pytest.mark.parametrize("power_loss", [False, True], ids=["engine-killed", "power-loss"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_crash_point(scratch_dir: Path, name: str, power_loss: bool) -> None:
    crash_restart_check(scratch_dir, SCENARIOS[name], power_loss)


@pytest.fixture(scope="module")
def loop_btrfs() -> Iterator[Path]:
    reason = btrfs_loop.unavailable()
    if reason is not None:
        pytest.skip(reason)
    fs = btrfs_loop.make_loop_btrfs("2G")
    try:
        yield fs.mount_point
    finally:
        btrfs_loop.remove_loop_btrfs(fs)


@pytest.mark.parametrize("backend", ["copy", "btrfs"])
@pytest.mark.parametrize("name", [name for name in SCENARIOS if name.startswith("evict-")])
def test_eviction_crash_on_other_backends(
    request: pytest.FixtureRequest, scratch_dir: Path, name: str, backend: str
) -> None:
    """The eviction scenarios (the default store is overlay) on copy — marker inside the state
    dir, data copied — and on btrfs — marker beside it, a subvolume delete — power loss."""
    parent = request.getfixturevalue("loop_btrfs") if backend == "btrfs" else scratch_dir
    store = Path(tempfile.mkdtemp(prefix="store-", dir=parent))
    store.chmod(0o711)
    (store / "config.json").write_text(json.dumps({"snapshot": {"backend": backend}}))
    try:
        crash_restart_check(scratch_dir, SCENARIOS[name], True, store)
    finally:
        if backend == "btrfs":
            remove_store_on_btrfs(store)


def remove_store_on_btrfs(store: Path) -> None:
    """Its servers stopped, its read-only state subvolumes deleted (`rmtree` cannot), then
    the rest: the loop filesystem is shared by this module's tests."""
    kill_servers_under(store)
    for subvolume in subvolumes_below(store):  # deepest first
        subprocess.run(["btrfs", "property", "set", "-ts", str(subvolume), "ro", "false"])
        subprocess.run(["btrfs", "subvolume", "delete", str(subvolume)], capture_output=True)
    shutil.rmtree(store, ignore_errors=True)


def crash_restart_check(
    scratch_dir: Path, scenario: Scenario, power_loss: bool, store: Path | None = None
) -> None:
    first = start_engine(scratch_dir, env={"SQLRS_FAULT_POINT": scenario.point}, state_store=store)
    store = first.state_store
    try:
        ctx = scenario.setup(first)
        actor = threading.Thread(target=_quietly, args=(scenario.act, first, ctx), daemon=True)
        actor.start()
        freeze_then_kill(first, power_loss, store)
        actor.join(timeout=30)
    finally:
        if first.process.poll() is None:
            first.process.kill()
            first.process.wait()
    second = start_engine(scratch_dir, state_store=store)
    try:
        scenario.check(second, ctx)
        assert settled_store_problems(EngineApi(second), store) == []
        assert stale_leftovers(store) == []
        # The store keeps working: a new prepare (a new base init after an initdb crash).
        again = prepare(second, psql_body("-c", "create table after_crash(a int)"))
        assert_succeeded(second, again)
        assert settled_store_problems(EngineApi(second), store) == []
    finally:
        assert second.stop() == 0
    with sqlite3.connect(f"file:{store / 'state.db'}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        marked = db.execute(
            "SELECT (SELECT COUNT(*) FROM instances WHERE status = 'deleting') + "
            "(SELECT COUNT(*) FROM states WHERE status = 'deleting')"
        ).fetchone()
        assert marked == (0,)


def _quietly(act: Callable[[EngineProcess, dict[str, Any]], None], *args: Any) -> None:
    """The action's request dies with the engine: its connection error is expected."""
    with contextlib.suppress(Exception):
        act(*args)
