"""Cache capacity end to end (SPEC §10): the status endpoint and eviction of real states."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.engine_process import EngineProcess, start_engine
from tests.support.load import Api as LoadApi
from tests.support.load import Job, Run, prepare_until, run_until, storm, unexpected_exceptions
from tests.support.prepare import prepare, psql_body
from tests.support.store_check import settled_store_problems, stale_leftovers, store_problems

STATUS_FIELDS = {
    "usage_bytes": int,
    "effective_max_bytes": int,
    "reserve_bytes": int,
    "high_watermark": float,
    "low_watermark": float,
    "min_state_age": str,
    "store_total_bytes": int,
    "store_free_bytes": int,
    "state_count": int,
    "reclaimable_bytes": int,
    "blocked_count": int,
    "pressure_reasons": list,
}


class EngineApi:
    def __init__(self, engine: EngineProcess) -> None:
        self.engine = engine

    def get_json(self, path: str) -> Any:
        return self.engine.get(path).json()


def set_config(engine: EngineProcess, path: str, value: object) -> None:
    assert engine.patch("/v1/config", json={"path": path, "value": value}).status_code == 200


def test_cache_status_reports_the_store(engine: EngineProcess) -> None:
    outcome = prepare(engine, psql_body("-c", "create table cached(a int)"))
    status = engine.get("/v1/cache/status").json()
    for name, kind in STATUS_FIELDS.items():
        assert isinstance(status[name], kind), (name, status)
    assert "configured_max_bytes" not in status and "last_eviction" not in status
    assert status["min_state_age"] == "10m0s"
    assert (status["high_watermark"], status["low_watermark"]) == (0.9, 0.8)
    states = engine.get("/v1/states").json()
    assert status["state_count"] == len(states) == 1
    assert status["usage_bytes"] == sum(s["size_bytes"] for s in states) > 0
    assert 0 < status["store_free_bytes"] <= status["store_total_bytes"]
    assert status["blocked_count"] == 1  # in use by the instance (and younger than 10m)
    engine.delete(f"/v1/instances/{outcome.result['instance_id']}")
    set_config(engine, "cache.capacity.maxBytes", 12345)
    assert engine.get("/v1/cache/status").json()["configured_max_bytes"] == 12345


def test_start_up_evicts_unused_states_least_recently_used_first(scratch_dir: Path) -> None:
    engine = start_engine(scratch_dir)
    try:
        outcomes = [prepare(engine, psql_body("-c", f"create table e{i}(a int)")) for i in range(4)]
        for outcome in outcomes[:3]:  # the last state keeps its instance
            assert engine.delete(f"/v1/instances/{outcome.result['instance_id']}").ok
        states = {s["state_id"]: s for s in engine.get("/v1/states").json()}
        usage = sum(s["size_bytes"] for s in states.values())
        set_config(engine, "cache.capacity.reserveBytes", 0)
        set_config(engine, "cache.capacity.minStateAge", "0s")
        # Just above the high watermark; down to the low one means evicting about a fifth.
        set_config(engine, "cache.capacity.maxBytes", int(usage / 0.9) - 1)
    finally:
        assert engine.stop() == 0

    restarted = start_engine(scratch_dir)  # the startup_recovery trigger
    try:
        status = restarted.get("/v1/cache/status").json()
        last = status["last_eviction"]
        assert last["trigger"] == "startup_recovery"
        assert last["evicted_count"] >= 1 and last["freed_bytes"] > 0
        assert last["usage_bytes_before"] == usage
        assert last["usage_bytes_after"] == status["usage_bytes"] == usage - last["freed_bytes"]
        assert status["usage_bytes"] <= int(status["effective_max_bytes"] * 0.8)
        assert status["pressure_reasons"] == []
        left = {s["state_id"] for s in restarted.get("/v1/states").json()}
        kept_state = outcomes[3].result["state_id"]
        assert kept_state in left, "a state with an instance is never evicted"
        evicted = [o.result["state_id"] for o in outcomes[:3] if o.result["state_id"] not in left]
        # Least recently used first: the first prepares' states went first.
        assert evicted == [o.result["state_id"] for o in outcomes[: len(evicted)]]
        assert store_problems(EngineApi(restarted), restarted.state_store) == []
        assert "cache eviction (startup_recovery)" in restarted.stderr_text()
    finally:
        assert restarted.stop() == 0


EVICTION_STORM_SECONDS = 25.0
EVICTION_STORM_SCRIPTS = [
    *[("-c", f"create table storm{n}(a int); insert into storm{n} values ({n})") for n in range(6)],
    ("-c", "create table storm0(a int); insert into storm0 values (0)", "-c", "select 1"),
    ("-c", "create table storm1(a int); insert into storm1 values (1)", "-c", "select 2"),
]
CAPACITY_FAILURES = {"cache_full_unreclaimable", "cache_limit_too_small"}


def test_eviction_storm_against_prepares_runs_and_deletes(scratch_dir: Path) -> None:
    """Issue 14: evictions at every build (capacity of about four states) race prepares of
    eight scripts, runs on their instances and deletes of those instances. Every job succeeds
    or fails with a SPEC §10 code (everything was in use), no request answers 5xx, and the
    store is exact afterwards — and after a restart — with no allowance."""
    engine = start_engine(scratch_dir)
    api = LoadApi(engine)
    try:
        first = api.prepare(psql_body(*EVICTION_STORM_SCRIPTS[0]))
        assert first.status == "succeeded", first.error
        size = max(s["size_bytes"] for s in api.get_json("/v1/states"))
        set_config(engine, "cache.capacity.reserveBytes", 0)
        set_config(engine, "cache.capacity.minStateAge", "0s")
        set_config(engine, "cache.capacity.maxBytes", int(4 * size / 0.9))
        stop = threading.Event()
        jobs: list[Job] = []
        runs: list[Run] = []
        deletes: list[int] = []

        submitter = prepare_until(stop, api, EVICTION_STORM_SCRIPTS, jobs)
        runner = run_until(stop, api, "select 1", runs)

        def instances() -> list[str]:
            return [i["instance_id"] for i in api.get_json("/v1/instances")]

        def deleter(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                time.sleep(rng.uniform(0.2, 1.0))
                targets = instances()
                if targets:
                    target = rng.choice(targets)
                    response = api.request(
                        "DELETE", f"/v1/instances/{target}", params={"force": "true"}
                    )
                    deletes.append(response.status_code)

        storm(stop, EVICTION_STORM_SECONDS, (submitter, 3, 0), (runner, 2, 10), (deleter, 2, 20))

        problems = [
            f"{c.method} {c.path} {c.status}: {c.body.strip()}" for c in api.server_errors()
        ]
        if not set(deletes) <= {200, 404}:
            problems.append(f"unexpected delete answers: {deletes}")
        for run in runs:
            if run.status == 200:
                if run.last.get("type") not in ("exit", "error"):
                    problems.append(f"a run's stream ended without exit/error: {run.events}")
            elif run.status != 404:  # its instance was deleted meanwhile
                problems.append(f"run answered {run.status}: {run.events}")
        if not any(j.status == "succeeded" for j in jobs):
            problems.append("no prepare succeeded during the storm")
        problems += [
            f"job {j.job_id} ended {j.status}: {j.error}"
            for j in jobs
            if j.status != "succeeded"
            and (j.status != "failed" or (j.error or {}).get("code") not in CAPACITY_FAILURES)
        ]
        log = engine.stderr_text()
        if "cache eviction (" not in log:
            problems.append("no eviction ran during the storm")
        problems += settled_store_problems(api, engine.state_store)
        problems += unexpected_exceptions(log)
        status = api.get_json("/v1/cache/status")
        states = api.get_json("/v1/states")
        if status["usage_bytes"] != sum(s["size_bytes"] for s in states):
            problems.append(f"cache status usage disagrees with the rows: {status}")
        assert problems == [], "\n".join(problems)
        assert engine.stop() == 0
        engine = start_engine(scratch_dir)
        api = LoadApi(engine)
        assert store_problems(api, engine.state_store) == []
        assert stale_leftovers(engine.state_store) == []
    finally:
        engine.stop()
