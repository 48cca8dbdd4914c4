"""Mixed concurrent load against the real engine: prepares, runs, lists, deletes, cancels.

The module starts its own engine on a fresh state store, so that after each scenario the
store can be checked *exactly*: every state and instance row has its directory, every
directory has a row, every PostgreSQL server under the store belongs to an instance row, and
every overlay mount under the store is the clone of an instance. The last test stops that
engine, starts a new one on the same store and checks that it adopts every instance.

The delete storms break things on purpose, so they get engines (and stores) of their own:
whatever they leave behind must not be blamed on the other scenarios. Races the storms hit
intermittently are tolerated by name below (each predicate says what it forgives and why);
everything else they check is asserted.

Concurrency stays around 8-16 client threads (the machine has 2 cores); waits are bounded and
generous, and nothing asserts on timing.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.dirs import make_scratch_dir, remove_scratch_dir, servers_under
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.load import (
    WORKERS_TIMEOUT,
    Api,
    Job,
    Run,
    finish,
    prepare_until,
    run_until,
    storm,
    unexpected_exceptions,
)
from tests.support.prepare import psql_body
from tests.support.store_check import (
    live_pid,
    mount_points_under,
    settled_store_problems,
    stale_leftovers,
    store_problems,
)

# -- the module's engine ---------------------------------------------------------------------------


@dataclass
class Harness:
    workdir: Path
    engine: EngineProcess

    @property
    def store(self) -> Path:
        return self.engine.state_store


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    workdir = make_scratch_dir()
    box = Harness(workdir, start_engine(workdir))
    # The mixed workload checks that retention converges to maxIdentical; without a minimum
    # age it may trim as soon as a job's last events stream ends.
    set_min_age = {"path": "orchestrator.jobs.minAge", "value": "0s"}
    assert box.engine.patch("/v1/config", json=set_min_age).status_code == 200
    try:
        yield box
    finally:
        box.engine.stop()
        remove_scratch_dir(workdir)


@pytest.fixture
def api(harness: Harness) -> Iterator[Api]:
    """A client of the module's engine; the test's part of the engine log must hold no
    unexpected exception."""
    offset = len(harness.engine.stderr_text())
    yield Api(harness.engine)
    failures = unexpected_exceptions(harness.engine.stderr_text()[offset:])
    assert not failures, "unexpected exceptions in the engine log:\n" + "\n".join(failures)


# -- scenario 1: mixed workload --------------------------------------------------------------------

STEP_A = "create table mix_a(id int); insert into mix_a values (1); select pg_sleep(0.3)"
STEP_B = "create table mix_b(id int); insert into mix_b select generate_series(1, 1000)"
STEP_C = "create table mix_c(id int); select pg_sleep(0.3)"
STEP_D = "create table mix_d(id int); insert into mix_d values (4)"
MIX_SCRIPTS = [
    ("-c", STEP_A, "-c", STEP_B),
    ("-c", STEP_A, "-c", STEP_B, "-c", STEP_C),
    ("-c", STEP_A, "-c", STEP_D),
]
"""Shared prefixes: four states (a, a→b, a→b→c, a→d) for twelve jobs."""


def test_mixed_prepares_runs_lists_and_deletes(harness: Harness, api: Api) -> None:
    bodies = [psql_body(*MIX_SCRIPTS[i % 3]) for i in range(12)]
    random.Random(1).shuffle(bodies)
    lock = threading.Lock()
    ready: list[str] = []  # instances that runs may use
    in_use: dict[str, int] = {}
    deleting: set[str] = set()
    prepares_done = threading.Event()
    runs: list[Run] = []
    deletes: list[tuple[str, int]] = []
    dead_servers: list[str] = []

    def prepare(body: dict[str, Any]) -> Job:
        job = api.prepare(body)
        if job.status == "succeeded":
            with lock:
                ready.append(job.result["instance_id"])
        return job

    def prepares() -> list[Job]:
        try:
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                return finish([pool.submit(prepare, body) for body in bodies])
        finally:
            prepares_done.set()

    def runner(seed: int) -> None:
        rng = random.Random(seed)
        while not prepares_done.is_set() or len(runs) < 12:
            with lock:
                choices = [i for i in ready if i not in deleting]
                target = rng.choice(choices) if choices else None
                if target is not None:
                    in_use[target] = in_use.get(target, 0) + 1
            if target is None:
                if prepares_done.is_set():
                    return  # no instance to run against: the prepares' assertion tells why
                time.sleep(0.1)
                continue
            try:
                runs.append(api.run_psql(target, "-At", "-c", "select count(*) from mix_a"))
            finally:
                with lock:
                    in_use[target] -= 1

    def deleter() -> None:
        """Deletes four instances that no run is using, while prepares still finish."""
        deadline = time.monotonic() + WORKERS_TIMEOUT / 2
        while len(deletes) < 4 and time.monotonic() < deadline:
            with lock:
                idle = [i for i in ready if not in_use.get(i)]
                target = idle[0] if len(idle) >= 3 else None
                if target is not None:
                    deleting.add(target)
                    ready.remove(target)
            if target is None:
                time.sleep(0.1)
                continue
            deletes.append((target, api.request("DELETE", f"/v1/instances/{target}").status_code))

    def lister() -> None:
        while not prepares_done.is_set():
            api.get_json("/v1/states")
            api.get_json("/v1/prepare-jobs")
            for entry in api.get_json("/v1/instances"):
                with lock:
                    if entry["instance_id"] in deleting:
                        continue
                alive = live_pid(entry.get("runtime_id", ""))
                with lock:  # a delete that began after the check would explain a dead server
                    if not alive and entry["instance_id"] not in deleting:
                        dead_servers.append(f"{entry['instance_id']} {entry.get('runtime_id')}")
            time.sleep(0.05)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        workers = [pool.submit(prepares), pool.submit(deleter)]
        workers += [pool.submit(runner, seed) for seed in range(2)]
        workers += [pool.submit(lister) for _ in range(2)]
        jobs: list[Job] = finish(workers)[0]

    assert [j.status for j in jobs] == ["succeeded"] * 12, [(j.job_id, j.error) for j in jobs]
    assert api.server_errors() == []
    assert len(runs) >= 12 and all(r.status == 200 for r in runs), [
        r.events for r in runs if r.status != 200
    ]
    for run in runs:
        assert run.last.get("type") == "exit" and run.last["exit_code"] == 0, run.events
        assert run.stdout == "1\n", run.events
    assert [status for _, status in deletes] == [200] * 4, deletes
    assert dead_servers == [], "listed instances whose server was not running"
    # Each of the four states was built exactly once, under its build lock.
    mix_states = [s for s in api.get_json("/v1/states") if "mix_a" in s["prepare_args_normalized"]]
    assert len(mix_states) == 4, mix_states
    executions = [(j.job_id, state) for j in jobs for state in j.executed_states()]
    assert len(executions) == 4, f"step executions (job, state) for 4 states: {executions}"
    # Retention (orchestrator.jobs.maxIdentical = 2) trims the older jobs of each script, as
    # each job finishes: just after its stream ends, so give the last ones a moment.
    deadline = time.monotonic() + 30
    while True:
        per_signature: dict[str, int] = {}
        for entry in api.get_json("/v1/prepare-jobs"):
            per_signature[entry["signature"]] = per_signature.get(entry["signature"], 0) + 1
        if sorted(per_signature.values()) == [2, 2, 2] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(per_signature.values()) == [2, 2, 2], per_signature
    live = {i["instance_id"] for i in api.get_json("/v1/instances")}
    assert live == {j.result["instance_id"] for j in jobs} - {i for i, _ in deletes}
    assert settled_store_problems(api, harness.store) == []


# -- scenario 2: delete storms (engines of their own) -------------------------------------------

ROOT_STEP = "create table storm_root(id int); insert into storm_root values (1)"
STORM_SCRIPTS = [
    ("-c", ROOT_STEP, "-c", "create table storm_x(id int); select pg_sleep(0.2)"),
    (
        "-c",
        ROOT_STEP,
        "-c",
        "create table storm_x(id int); select pg_sleep(0.2)",
        "-c",
        "create table storm_y(id int)",
    ),
    ("-c", ROOT_STEP, "-c", "create table storm_z(id int); select pg_sleep(0.2)"),
]
STORM_SECONDS = 25.0

CLEAR_JOB_ERRORS = {
    "input state not found",
    "cannot clone state",
    "cannot start runtime",
    "snapshot failed",
    "snapshot prepare failed",
    "snapshot resume failed",
    "cannot store state",
}
"""Job errors that name what a concurrent delete took away (docs/api.md, Job errors)."""


def blocked_by_running_jobs(status: int, text: str) -> bool:
    """docs/api.md: a state tree that running jobs rely on (their clones stand on it) answers
    409 blocked, the held states `active_tasks` with the jobs listed — never a 500."""
    if status != 409:
        return False
    body = json.loads(text)

    def held(node: dict[str, Any]) -> bool:
        jobs = [c for c in node.get("children", []) if c["kind"] == "job"]
        here = node.get("blocked") == "active_tasks" and bool(jobs)
        return here or any(held(c) for c in node.get("children", []) if c["kind"] == "state")

    return body.get("outcome") == "blocked" and held(body["root"])


def chain_of_storm(api: Api) -> set[str]:
    return {
        s["state_id"]
        for s in api.get_json("/v1/states")
        if "storm_root" in s["prepare_args_normalized"]
    }


def test_delete_storm_against_prepares_and_runs_of_the_chain(scratch_dir: Path) -> None:
    engine = start_engine(scratch_dir)
    api = Api(engine)
    try:
        first = api.prepare(psql_body(*STORM_SCRIPTS[0]))
        assert first.status == "succeeded", first.error
        root = first.state_ids[0]
        stop = threading.Event()
        jobs: list[Job] = []
        runs: list[Run] = []
        deletes: list[int] = []
        unexplained: list[str] = []

        submitter = prepare_until(stop, api, STORM_SCRIPTS, jobs)
        runner = run_until(stop, api, "select pg_sleep(0.3)", runs)

        def deleter(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                time.sleep(rng.uniform(0.3, 2.0))
                response = api.request(
                    "DELETE", f"/v1/states/{root}", params={"recurse": "true", "force": "true"}
                )
                deletes.append(response.status_code)
                if response.status_code == 409 and not blocked_by_running_jobs(409, response.text):
                    unexplained.append(response.text)

        storm(stop, STORM_SECONDS, (submitter, 4, 0), (runner, 3, 10), (deleter, 3, 20))

        problems: list[str] = []
        if 200 not in deletes:
            problems.append(f"no delete of the chain went through: {deletes}")
        if not set(deletes) <= {200, 404, 409}:
            problems.append(f"unexpected delete answers: {deletes}")
        problems += [f"a 409 not caused by a running job: {text}" for text in unexplained]
        problems += [
            f"{c.method} {c.path} {c.status}: {c.body.strip()}" for c in api.server_errors()
        ]
        for run in runs:
            if run.status == 200:  # exit (2 when the delete killed the server) or `error`
                if run.last.get("type") not in ("exit", "error"):
                    problems.append(f"a run's stream ended without exit/error: {run.events}")
            elif run.status != 404:  # a run whose instance was deleted meanwhile: 404
                problems.append(f"run answered {run.status}: {run.events}")
        if not any(j.status == "succeeded" for j in jobs):
            problems.append("no prepare succeeded during the storm")
        problems += [
            f"job {j.job_id} ended {j.status} without a clear error: {j.error}"
            for j in jobs
            if j.status != "succeeded"
            and (j.status != "failed" or (j.error or {}).get("message") not in CLEAR_JOB_ERRORS)
        ]
        problems += settled_store_problems(api, engine.state_store)
        # Once nothing runs any more, the whole chain goes away.
        final = api.request("DELETE", f"/v1/states/{root}", params={"recurse": "1", "force": "1"})
        if final.status_code not in (200, 404):
            problems.append(f"final delete of the chain: {final.status_code} {final.text}")
        if chain_of_storm(api):
            problems.append(f"states of the chain survived its deletion: {chain_of_storm(api)}")
        problems += settled_store_problems(api, engine.state_store)
        problems += unexpected_exceptions(engine.stderr_text())
        assert problems == [], "\n".join(problems)
        # What the races above may leave (moved-aside runtimes, their mounts) is swept by the
        # next start: after a restart the store is exact, with no exception.
        assert engine.stop() == 0
        engine = start_engine(scratch_dir)
        api = Api(engine)
        assert store_problems(api, engine.state_store) == []
        assert stale_leftovers(engine.state_store) == []
    finally:
        engine.stop()


def test_a_refused_state_delete_leaves_the_state_usable(scratch_dir: Path) -> None:
    """The deterministic core of what the first delete storms ran into: a delete of a state
    a running job's clone stands on (its layer) is refused — 409 blocked `active_tasks`, not
    the 500 it once was — and leaves the state complete and usable, marker included."""
    engine = start_engine(scratch_dir)
    api = Api(engine)
    try:
        root_only = psql_body("-c", ROOT_STEP)
        first = api.prepare(root_only)
        assert first.status == "succeeded", first.error
        root = first.result["state_id"]
        state_dir = next(engine.state_store.glob(f"engines/*/*/states/{root}"))
        deleted = api.request("DELETE", f"/v1/instances/{first.result['instance_id']}")
        assert deleted.status_code == 200
        # A job whose second step runs on a clone of the (cached) root state.
        job_id = api.submit(psql_body("-c", ROOT_STEP, "-c", "select pg_sleep(8)"))
        runtime = engine.state_store / "jobs" / job_id / "runtime"
        deadline = time.monotonic() + 60
        while not (
            servers_under(runtime) and str(runtime / "merged") in mount_points_under(runtime.parent)
        ):
            assert time.monotonic() < deadline, "the job's clone never got a server"
            time.sleep(0.05)

        refused = api.request(
            "DELETE", f"/v1/states/{root}", params={"recurse": "true", "force": "true"}
        )
        assert blocked_by_running_jobs(refused.status_code, refused.text), refused.text
        assert refused.json()["root"]["children"] == [
            {"kind": "job", "id": job_id, "blocked": "active_tasks"}
        ]
        job = api.follow(job_id)
        assert job.status == "succeeded", job.error
        assert api.get_json(f"/v1/states/{root}")["state_id"] == root, "the row is kept"
        again = api.prepare(root_only)
        assert again.status == "succeeded", again.error
        assert (state_dir / ".build.ok").is_file(), "the refused delete removed the marker"
        assert store_problems(api, engine.state_store) == []
    finally:
        engine.stop()


# -- scenario 3: cancel storms ---------------------------------------------------------------------


@dataclass
class Cancel:
    job_id: str
    when: str
    status: int


def test_cancel_storm_with_concurrent_submissions_of_the_same_script(
    harness: Harness, api: Api
) -> None:
    cancels: list[Cancel] = []
    survivors: list[str] = []
    lock = threading.Lock()

    def script(round_no: int, kind: str, sleep: float) -> dict[str, Any]:
        table = f"cancel_{kind}_{round_no}"
        return psql_body(
            "-c",
            f"create table {table}(id int); select pg_sleep({sleep})",
            "-c",
            f"insert into {table} values (1)",
        )

    def record(job_id: str, when: str) -> None:
        status = api.cancel(job_id)
        with lock:
            cancels.append(Cancel(job_id, when, status))

    def survivor(body: dict[str, Any], after: threading.Event | None, delay: float) -> Job:
        """Submits the victim's script once the victim builds (so that the victim, not the
        survivor, holds the state's build lock when it is cancelled)."""
        if after is not None:
            assert after.wait(60), "the victim never started its step"
        time.sleep(delay)
        job_id = api.submit(body)
        with lock:
            survivors.append(job_id)
        return api.follow(job_id)

    def cancel_before_start(body: dict[str, Any]) -> Job:
        job_id = api.submit(body)
        record(job_id, "right after submit")
        return api.follow(job_id)

    def cancel_during_step(body: dict[str, Any], building: threading.Event, seed: int) -> Job:
        job_id = api.submit(body)

        def on_event(event: dict[str, Any]) -> None:
            if event.get("message") == "psql: start" and not building.is_set():
                building.set()
                time.sleep(random.Random(seed).uniform(0.0, 3.0))  # pg_sleep(5) runs
                record(job_id, "during the step")

        job = api.follow(job_id, on_event)
        assert building.is_set(), f"job {job_id} never ran its step: {job.events[-3:]}"
        return job

    def cancel_while_snapshotting(body: dict[str, Any], building: threading.Event) -> Job:
        job_id = api.submit(body)
        fired = threading.Event()

        def on_event(event: dict[str, Any]) -> None:
            if event.get("message") == "psql: start":
                building.set()
            if event.get("message") == "snapshot: start" and not fired.is_set():
                fired.set()
                record(job_id, "while snapshotting")

        job = api.follow(job_id, on_event)
        assert fired.is_set(), f"job {job_id} ended without a snapshot: {job.events[-3:]}"
        return job

    tasks: list[Callable[[], Job]] = []
    for round_no in range(2):
        step, step_building = script(round_no, "step", 5), threading.Event()
        snap, snap_building = script(round_no, "snap", 0.5), threading.Event()
        first = script(round_no, "first", 5)
        tasks += [
            lambda b=step, e=step_building, s=round_no: cancel_during_step(b, e, s),
            lambda b=step, e=step_building: survivor(b, e, 0.2),
            lambda b=snap, e=snap_building: cancel_while_snapshotting(b, e),
            lambda b=snap, e=snap_building: survivor(b, e, 0.1),
            lambda b=first: cancel_before_start(b),
            lambda b=first, d=0.1 * round_no: survivor(b, None, d),
        ]
    with concurrent.futures.ThreadPoolExecutor(len(tasks)) as pool:
        jobs = {job.job_id: job for job in finish([pool.submit(task) for task in tasks])}

    assert api.server_errors() == []
    assert len(cancels) == 6 and len(survivors) == 6
    for cancel in cancels:
        job = jobs[cancel.job_id]
        if cancel.status == 202:  # docs/api.md: the job then fails with `cancelled`
            assert job.status == "failed", (cancel, job.events[-3:])
            assert job.error is not None and job.error["code"] == "cancelled", (cancel, job.error)
        else:
            assert cancel.status == 200 and job.status in ("succeeded", "failed"), cancel
        job_dir = harness.store / "jobs" / cancel.job_id
        if job.status == "failed":
            assert not (job_dir / "runtime").exists(), f"{cancel}: its runtime dir is left"
            assert servers_under(job_dir) == [], f"{cancel}: its server is left"
            mounts = mount_points_under(harness.store)
            assert [p for p in mounts if p.startswith(f"{job_dir}/")] == [], cancel
    assert sum(c.status == 202 for c in cancels) >= 4, cancels
    for job_id in survivors:
        assert jobs[job_id].status == "succeeded", (job_id, jobs[job_id].error)
    assert settled_store_problems(api, harness.store) == []


# -- scenario 4: restart after the load ------------------------------------------------------------


def test_a_restarted_engine_adopts_every_instance(harness: Harness, api: Api) -> None:
    instances = api.get_json("/v1/instances")
    if len(instances) < 3:  # the module's other tests did not run: make a few
        for i in range(3):
            assert api.prepare(psql_body("-c", f"select {i}")).status == "succeeded"
        instances = api.get_json("/v1/instances")
    before = {i["instance_id"]: i["runtime_id"] for i in instances}
    assert store_problems(api, harness.store) == []

    assert harness.engine.stop() == 0, "the engine stops cleanly after the load"
    assert all(live_pid(runtime_id) for runtime_id in before.values()), "servers outlive it"
    harness.engine = start_engine(harness.workdir)
    restarted = Api(harness.engine)

    after = {i["instance_id"]: i["runtime_id"] for i in restarted.get_json("/v1/instances")}
    assert after == before, "every instance was adopted with its running server"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = finish(
            [pool.submit(restarted.run_psql, i, "-At", "-c", "select 1") for i in before]
        )
    for instance_id, result in zip(before, results, strict=True):
        assert result.status == 200, (instance_id, result.events)
        assert [e["type"] for e in result.events] == ["start", "stdout", "exit"], result.events
        assert result.stdout == "1\n" and result.last["exit_code"] == 0
    assert restarted.server_errors() == []
    assert store_problems(restarted, harness.store) == []
    assert stale_leftovers(harness.store) == []
