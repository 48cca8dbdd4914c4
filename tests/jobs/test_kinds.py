"""The state builder (jobs/builder.py) is kind-independent: the same tests, both kinds.

Each test runs one scenario against psql and against lb with a real server and, for lb, real
Liquibase: a two-step prepare whose steps create tables `a` and `b`. Whatever the kind, the
builder must store one state per step, reuse them, rebuild a dirty one, keep the states
before a failing step, and never store a state whose inputs changed after planning under the
planned name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.jobs.builder import StateBuilder
from sqlrs_engine.jobs.event_log import JobEventLog
from sqlrs_engine.jobs.kinds.lb import UNPLANNED_CHANGESET
from sqlrs_engine.jobs.supervisor import RegistrySink
from sqlrs_engine.jobs.tasks import TaskTracker
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.runtime.base import pgdata_of
from tests.jobs.conftest import ASK, HostStore, Parts, World, log_lines, task_events
from tests.support.prepare import query

LIQUIBASE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "liquibase"


@dataclass
class Scenario:
    """Two steps of a kind; `edit(i, sql)` rewrites step i's input on disk."""

    request: PrepareRequest
    edit: Callable[[int, str], None]


def psql_scenario(directory: Path, steps: list[str]) -> Scenario:
    files = []
    for index, sql in enumerate(steps):
        path = directory / f"step{index}.sql"
        path.write_text(sql + "\n")
        files += ["-f", str(path)]

    def edit(index: int, sql: str) -> None:
        (directory / f"step{index}.sql").write_text(sql + "\n")

    return Scenario(PrepareRequest("psql", "postgres:15", files), edit)


def lb_scenario(directory: Path, steps: list[str]) -> Scenario:
    changelog = directory / "changelog.sql"

    def write(current: list[str]) -> None:
        body = ["--liquibase formatted sql"]
        for index, sql in enumerate(current):
            body += [f"--changeset t:{index}", sql]
        changelog.write_text("\n".join(body) + "\n")

    write(steps)

    def edit(index: int, sql: str) -> None:
        steps[index] = sql
        write(steps)

    request = PrepareRequest(
        "lb",
        "postgres:15",
        liquibase_args=["update", "--changelog-file", str(changelog)],
        liquibase_exec=str(LIQUIBASE),
    )
    return Scenario(request, edit)


SCENARIOS = {"psql": psql_scenario, "lb": lb_scenario}
TWO_TABLES = ["create table a(x int);", "create table b(x int);"]


@pytest.fixture(params=sorted(SCENARIOS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def builder(parts: Parts, job_id: str, request: PrepareRequest, store: HostStore) -> StateBuilder:
    services = parts.services(store.runtime)
    events = JobEventLog(RegistrySink(job_id, services), services.heartbeat)
    return StateBuilder(
        job_id,
        request,
        services,
        events,
        TaskTracker(job_id, events),
        CancelToken(),
    )


def run(job: StateBuilder) -> dict[str, object]:
    try:
        job.make_plan()
        return job.execute()
    finally:
        job.release()


def outputs(job: StateBuilder) -> list[str]:
    return [t.output_state_id for t in job.plan if t.type == "state_execute"]


def test_one_state_per_step_then_all_cached(
    kind: str, host_store: HostStore, host_world: World, scratch_dir: Path
) -> None:
    scenario = SCENARIOS[kind](scratch_dir, list(TWO_TABLES))
    first_id = host_world.add_job(scenario.request)
    second_id = host_world.add_job(scenario.request)
    parts = host_world.start()
    first = builder(parts, first_id, scenario.request, host_store)
    result = run(first)
    states = outputs(first)
    assert len(states) == 2 and result["state_id"] == states[-1]
    for state in states:
        row = parts.state_row(state)
        assert row is not None and row["prepare_kind"] == kind
    assert parts.state_row(states[1])["parent_state_id"] == states[0]  # type: ignore[index]
    assert query(str(result["dsn"]), "select count(*) from b") == "0"

    second = builder(parts, second_id, scenario.request, host_store)
    again = run(second)
    assert outputs(second) == states
    assert [t.cached for t in second.plan if t.type == "state_execute"] == [True, True]
    assert ("execute-0", "running") not in task_events(parts.events(second_id))
    assert again["state_id"] == result["state_id"] and again["dsn"] != result["dsn"]


def test_a_dirty_cached_state_is_rebuilt(
    kind: str, host_store: HostStore, host_world: World, scratch_dir: Path
) -> None:
    scenario = SCENARIOS[kind](scratch_dir, list(TWO_TABLES))
    first_id = host_world.add_job(scenario.request)
    second_id = host_world.add_job(scenario.request)
    parts = host_world.start()
    first = builder(parts, first_id, scenario.request, host_store)
    run(first)
    dirty = outputs(first)[1]
    (pgdata_of(parts.state_dir(dirty, host_store.image)) / "postmaster.pid").write_text("1\n")
    second = builder(parts, second_id, scenario.request, host_store)
    result = run(second)
    events = parts.events(second_id)
    assert any(f"cached state {dirty} is unusable" in line for line in log_lines(events))
    assert task_events(events).count(("execute-1", "running")) == 1
    assert ("execute-0", "running") not in task_events(events)
    assert query(str(result["dsn"]), "select count(*) from b") == "0"


def test_a_failing_step_keeps_the_state_before_it(
    kind: str, host_store: HostStore, host_world: World, scratch_dir: Path
) -> None:
    scenario = SCENARIOS[kind](
        scratch_dir, ["create table a(x int);", "insert into nope values (1);"]
    )
    job_id = host_world.add_job(scenario.request)
    parts = host_world.start()
    job = builder(parts, job_id, scenario.request, host_store)
    with pytest.raises(JobFailure) as raised:
        run(job)
    assert raised.value.message == f"{'psql' if kind == 'psql' else 'liquibase'} execution failed"
    assert 'relation "nope" does not exist' in (raised.value.details or "")
    first, second = outputs(job)
    assert parts.state_row(first) is not None
    assert parts.state_row(second) is None
    runtime_dir = parts.store.layout.job_runtime_dir(job_id)
    assert not runtime_dir.exists(), "the failed job's clone is removed"


def test_inputs_changed_after_planning_never_store_a_misnamed_state(
    kind: str, host_store: HostStore, host_world: World, scratch_dir: Path
) -> None:
    scenario = SCENARIOS[kind](scratch_dir, list(TWO_TABLES))
    job_id = host_world.add_job(scenario.request)
    parts = host_world.start()
    job = builder(parts, job_id, scenario.request, host_store)
    try:
        job.make_plan()
        planned = outputs(job)
        scenario.edit(1, "create table c(x int);")
        if kind == "psql":
            # psql re-hashes the step under its locks and re-chains the plan
            result = job.execute()
            assert outputs(job)[0] == planned[0] and outputs(job)[1] != planned[1]
            assert parts.state_row(planned[1]) is None
            assert query(str(result["dsn"]), "select count(*) from c") == "0"
        else:
            # Liquibase runs from the staging copy of what it planned: the edit is the next
            # prepare's business, and each state holds what its name says
            result = job.execute()
            assert outputs(job) == planned
            assert query(str(result["dsn"]), "select count(*) from b") == "0"
            assert parts.state_row(planned[1]) is not None
    finally:
        job.release()
    rows = parts.registry.task_rows(job_id).get(timeout=ASK)
    assert [row["task_id"] for row in rows] == [
        "plan",
        "resolve-image",
        "execute-0",
        "execute-1",
        "prepare-instance",
    ]


def test_a_changeset_liquibase_did_not_plan_to_apply_stores_no_state(
    host_store: HostStore, host_world: World, scratch_dir: Path
) -> None:
    """A `runAlways` changeset is pending again at the next step, so `update-count --count 1`
    applies it instead of the planned one: the check after the step fails the job."""
    scenario = lb_scenario(scratch_dir, ["create table a(x int);", "create table b(x int);"])
    changelog = scratch_dir / "changelog.sql"
    changelog.write_text(
        changelog.read_text().replace("--changeset t:0", "--changeset t:0 runAlways:true")
    )
    changelog.write_text(changelog.read_text().replace("create table a(x int);", "select 1;"))
    job_id = host_world.add_job(scenario.request)
    parts = host_world.start()
    job = builder(parts, job_id, scenario.request, host_store)
    try:
        job.make_plan()
        planned = outputs(job)
        with pytest.raises(JobFailure) as raised:
            job.execute()
        assert (raised.value.code, raised.value.message) == (
            "invalid_argument",
            UNPLANNED_CHANGESET,
        )
        assert "execute-1 left 0::t::changelog.sql" in (raised.value.details or "")
        assert parts.state_row(planned[0]) is not None
        assert parts.state_row(planned[1]) is None
    finally:
        job.release()
