"""Planning a psql prepare against a real state.db (SPEC §2.7, §2.8).

`cached` must come from the `states` table as the engine's persistence layer sees it, so the
states are seeded through it (tests/support/seed.py) and looked up through MetadataQueries.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.jobs.planning import PsqlPlan, plan_psql
from sqlrs_engine.prepare.digest import signature_task_hash
from sqlrs_engine.prepare.hashing import psql_job_signature
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.prepare.plan import TASK_STATE_EXECUTE
from tests.jobs.conftest import ENGINE_VERSION, ScriptRuntime, psql_request
from tests.support.fake_runtime import RESOLVED
from tests.support.seed import Seeder

THREE_STEPS = ("-c", "create table a()", "-c", "create table b()", "-c", "create table c()")


@dataclass
class Planner:
    """Plans requests against one temporary state.db; records the planning log."""

    seeder: Seeder
    cwd: Path
    lines: list[str]

    def plan(self, request: PrepareRequest, engine_version: str = ENGINE_VERSION) -> PsqlPlan:
        return plan_psql(
            request,
            runtime=ScriptRuntime(),
            engine_version=engine_version,
            state_exists=self.seeder.metadata.state_exists,
            cwd=self.cwd,
            log=self.lines.append,
            cancel=CancelToken(),
        )

    def outputs(self, request: PrepareRequest) -> list[str]:
        return [t.output_state_id for t in self.plan(request).tasks if t.output_state_id]


@pytest.fixture
def planner(tmp_path: Path) -> Iterator[Planner]:
    seeder = Seeder(tmp_path / "store")
    try:
        yield Planner(seeder, tmp_path, [])
    finally:
        seeder.close()


@pytest.mark.parametrize(
    ("image", "task_ids", "effective", "resolved_log"),
    [
        (
            "postgres:15",
            ["plan", "resolve-image", "execute-0", "execute-1", "prepare-instance"],
            RESOLVED,
            True,
        ),
        (
            "postgres@host-15.18",
            ["plan", "execute-0", "execute-1", "prepare-instance"],
            "postgres@host-15.18",
            False,
        ),
        (
            "postgres@sha256:abc",
            ["plan", "execute-0", "execute-1", "prepare-instance"],
            "postgres@sha256:abc",
            False,
        ),
    ],
)
def test_the_image_is_resolved_only_without_a_digest(
    planner: Planner, image: str, task_ids: list[str], effective: str, resolved_log: bool
) -> None:
    plan = planner.plan(psql_request("-c", "select 1", "-c", "select 2", image=image))
    assert [t.task_id for t in plan.tasks] == task_ids
    assert plan.effective_image == effective
    assert any("resolved image" in line for line in planner.lines) is resolved_log
    first = next(t for t in plan.tasks if t.type == TASK_STATE_EXECUTE)
    assert (first.input_kind, first.input_id) == ("image", effective)
    if resolved_log:
        resolve = plan.tasks[1]
        assert (resolve.image_id, resolve.resolved_image_id) == (image, RESOLVED)


def test_steps_chain_their_states_into_the_instance(planner: Planner) -> None:
    plan = planner.plan(psql_request(*THREE_STEPS))
    steps = [t for t in plan.tasks if t.type == TASK_STATE_EXECUTE]
    assert [t.input_kind for t in steps] == ["image", "state", "state"]
    assert [t.input_id for t in steps[1:]] == [t.output_state_id for t in steps[:-1]]
    assert len({t.output_state_id for t in steps}) == 3
    assert len({t.task_hash for t in steps}) == 3
    instance = plan.tasks[-1]
    assert (instance.input_kind, instance.input_id) == ("state", steps[-1].output_state_id)
    assert instance.instance_mode == "ephemeral"
    assert plan.final_state_id == steps[-1].output_state_id


@pytest.mark.parametrize(
    ("seeded", "cached"),
    [
        pytest.param((), [False, False, False], id="empty-store"),
        pytest.param((0,), [True, False, False], id="first-step"),
        pytest.param((0, 1), [True, True, False], id="prefix"),
        pytest.param((1,), [False, True, False], id="row-of-a-later-step-alone"),
        pytest.param((0, 1, 2), [True, True, True], id="everything"),
    ],
)
def test_cached_means_a_state_row_exists(
    planner: Planner, seeded: tuple[int, ...], cached: list[bool]
) -> None:
    """SPEC §2.8: `cached` = a row with that state id exists at planning time (per task)."""
    request = psql_request(*THREE_STEPS)
    outputs = planner.outputs(request)
    for index in seeded:
        parent = outputs[index - 1] if index else None
        planner.seeder.state(outputs[index], parent, image=RESOLVED)
    plan = planner.plan(request)
    assert [t.cached for t in plan.tasks if t.type == TASK_STATE_EXECUTE] == cached
    assert [t.cached for t in plan.tasks if t.type != TASK_STATE_EXECUTE] == [None] * 3
    assert planner.outputs(request) == outputs, "existing states never change the ids"


def test_states_of_another_image_or_engine_version_do_not_count(planner: Planner) -> None:
    request = psql_request("-c", "select 1")
    for state in planner.outputs(request):
        planner.seeder.state(state, image=RESOLVED)
    assert planner.plan(request).tasks[2].cached is True
    other_image = psql_request("-c", "select 1", image="postgres@host-16.4")
    assert planner.plan(other_image).tasks[1].cached is False
    assert planner.plan(request, engine_version="other").tasks[2].cached is False


def test_ids_follow_content_not_paths(planner: Planner, tmp_path: Path) -> None:
    """Editing a script (or a file it includes) names a new state; the same text under
    another path in another directory names the same one."""
    first, other = tmp_path / "one", tmp_path / "two"
    for directory in (first, other):
        directory.mkdir()
        (directory / "main.sql").write_text("\\ir part.sql\n")
        (directory / "part.sql").write_text("create table t();\n")
    request = psql_request("-f", str(first / "main.sql"))
    original = planner.outputs(request)
    assert planner.outputs(psql_request("-f", str(other / "main.sql"))) == original
    (first / "part.sql").write_text("create table u();\n")
    changed = planner.outputs(request)
    assert changed != original
    (first / "part.sql").write_text("create table t();\n")
    assert planner.outputs(request) == original


@pytest.mark.parametrize(
    ("other", "same"),
    [
        pytest.param(psql_request("-c", "select 1"), True, id="identical"),
        pytest.param(psql_request("-c", "select 1", plan_only=True), False, id="plan-only"),
        pytest.param(psql_request("-c", "select 2"), False, id="other-sql"),
        pytest.param(psql_request("-c", "select 1", image="postgres@host-16.4"), False, id="image"),
        pytest.param(psql_request("-c", "select 1", image=RESOLVED), True, id="same-effective"),
    ],
)
def test_signature(planner: Planner, other: PrepareRequest, same: bool) -> None:
    """The job signature (§4.11) is the all-inputs hash + effective image + plan_only."""
    base = planner.plan(psql_request("-c", "select 1"))
    assert base.signature == psql_job_signature(
        signature_task_hash(base.args, ENGINE_VERSION), RESOLVED, False
    )
    assert (planner.plan(other).signature == base.signature) is same


def test_signature_does_not_depend_on_the_cache(planner: Planner) -> None:
    request = psql_request(*THREE_STEPS)
    before = planner.plan(request)
    for state in planner.outputs(request):
        planner.seeder.state(state, image=RESOLVED)
    after = planner.plan(request)
    assert after.signature == before.signature
    assert [t.cached for t in after.tasks if t.type == TASK_STATE_EXECUTE] == [True] * 3


@pytest.mark.parametrize(
    ("args", "stdin", "message", "details"),
    [
        pytest.param(
            ["-f", "{dir}/gone.sql"], None, "cannot read file", "{dir}/gone.sql", id="file-gone"
        ),
        pytest.param(
            ["-f", "{dir}/main.sql"],
            None,
            "cannot compute psql content hash",
            "missing.sql",
            id="include-gone",
        ),
        pytest.param(["-c", "x"], "y", "stdin is only valid with -f -", None, id="stray-stdin"),
    ],
)
def test_inputs_that_went_bad_since_submit_fail_as_invalid_argument(
    planner: Planner,
    tmp_path: Path,
    args: list[str],
    stdin: str | None,
    message: str,
    details: str | None,
) -> None:
    """A stored request is validated again at planning; problems are job failures (not
    HTTP errors) with the same ErrorResponse a submit would have given."""
    (tmp_path / "main.sql").write_text("\\ir missing.sql\n")
    request = psql_request(*[a.replace("{dir}", str(tmp_path)) for a in args], stdin=stdin)
    with pytest.raises(JobFailure) as raised:
        planner.plan(request)
    assert (raised.value.code, raised.value.message) == ("invalid_argument", message)
    if details is None:
        assert raised.value.details is None
    else:
        assert details.replace("{dir}", str(tmp_path)) in (raised.value.details or "")
