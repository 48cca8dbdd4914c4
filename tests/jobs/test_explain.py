"""Cache explanation (SPEC §10.4): hit exactly when the final state's row exists.

A real Registry on a temporary state.db answers `state_exists`; states are seeded through the
persistence layer before it starts. The runtime only resolves images, so the fake one serves,
except where a real resolution failure is wanted (the host runtime and an image it cannot
serve).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import ApiError, JobFailure
from sqlrs_engine.jobs.explain import explain_prepare
from sqlrs_engine.jobs.planning import plan_psql
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.runtime.base import LogSink, Runtime
from sqlrs_engine.runtime.host import HostRuntime
from tests.jobs.conftest import ASK, ENGINE_VERSION, Parts, ScriptRuntime, World, psql_request
from tests.support.fake_runtime import RESOLVED

TWO_STEPS = psql_request("-c", "create table a()", "-c", "create table b()")


def explain(
    parts: Parts, request: PrepareRequest, runtime: Runtime | None = None
) -> dict[str, Any]:
    return explain_prepare(
        request,
        registry=parts.registry,
        runtime=runtime or ScriptRuntime(),
        engine_version=ENGINE_VERSION,
        cwd=parts.root,
    )


def outputs(request: PrepareRequest, cwd: Path) -> list[str]:
    """The output state of each step, as a job would plan them on an empty store."""
    plan = plan_psql(
        request,
        runtime=ScriptRuntime(),
        engine_version=ENGINE_VERSION,
        state_exists=lambda _state: False,
        cwd=cwd,
        log=lambda _line: None,
        cancel=CancelToken(),
    )
    return [t.output_state_id for t in plan.tasks if t.output_state_id]


@pytest.mark.parametrize(
    ("seeded", "hit"),
    [
        pytest.param((), False, id="empty-store"),
        pytest.param((0,), False, id="only-an-intermediate-state"),
        pytest.param((0, 1), True, id="whole-chain"),
        pytest.param((1,), True, id="final-row-alone"),
    ],
)
def test_hit_exactly_when_the_final_state_row_exists(
    world: World, seeded: tuple[int, ...], hit: bool
) -> None:
    states = outputs(TWO_STEPS, world.root)
    for index in seeded:
        world.seed.state(states[index], states[index - 1] if index else None, image=RESOLVED)
    answer = explain(world.start(), TWO_STEPS)
    expected: dict[str, Any] = {
        "decision": "hit" if hit else "miss",
        "reason_code": "exact_state_match" if hit else "no_matching_state",
        "signature": answer["signature"],
        "resolved_image_id": RESOLVED,
    }
    if hit:
        expected["matched_state_id"] = states[1]
    assert answer == expected
    assert len(answer["signature"]) == 64


@pytest.mark.parametrize("plan_only", [False, True])
def test_the_signature_is_the_one_a_job_stores(world: World, plan_only: bool) -> None:
    """Explain plans exactly as a job would: same signature for the same request."""
    request = psql_request("-c", "select 1", plan_only=plan_only)
    job_id = world.add_job(request)
    parts = world.start()
    parts.psql_job(job_id, request, ScriptRuntime()).make_plan()
    stored = parts.job_row(job_id)["signature"]
    assert explain(parts, request)["signature"] == stored


def test_a_digest_image_is_used_as_is(world: World) -> None:
    request = psql_request("-c", "select 1", image="postgres@host-15.18")

    class NoResolve(ScriptRuntime):
        def resolve_image(self, image_id: str, log: Any, cancel: CancelToken) -> str:
            raise AssertionError("an image with a digest must not be resolved")

    answer = explain(world.start(), request, NoResolve())
    assert answer["resolved_image_id"] == "postgres@host-15.18"
    assert answer["decision"] == "miss"


def test_explain_creates_nothing(world: World) -> None:
    """No job, task, state or instance row, and no directory in the store."""
    states = outputs(TWO_STEPS, world.root)
    world.seed.state(states[0], image=RESOLVED)
    parts = world.start()
    before = sorted(p.relative_to(world.root) for p in world.root.rglob("*"))
    explain(parts, TWO_STEPS)
    explain(parts, psql_request("-c", "select 3"))
    assert parts.registry.list_jobs(None).get(timeout=ASK) == []
    assert parts.registry.list_tasks(None).get(timeout=ASK) == []
    assert parts.registry.list_instances(None, None, None).get(timeout=ASK) == []
    listed = parts.registry.list_states(None, None, None).get(timeout=ASK)
    assert [s["state_id"] for s in listed] == [states[0]]
    after = sorted(p.relative_to(world.root) for p in world.root.rglob("*"))
    assert [p for p in after if not p.name.startswith("state.db")] == [
        p for p in before if not p.name.startswith("state.db")
    ]


@pytest.mark.parametrize(
    ("args", "message", "details"),
    [
        pytest.param(["-f", "{dir}/gone.sql"], "cannot read file", "gone.sql", id="file-gone"),
        pytest.param(
            ["-f", "{dir}/main.sql"],
            "cannot compute psql content hash",
            "missing.sql",
            id="include-gone",
        ),
    ],
)
def test_input_problems_are_a_400(
    world: World, tmp_path: Path, args: list[str], message: str, details: str
) -> None:
    (tmp_path / "main.sql").write_text("\\i missing.sql\n")
    request = psql_request(*[a.replace("{dir}", str(tmp_path)) for a in args])
    with pytest.raises(ApiError) as raised:
        explain(world.start(), request)
    error = raised.value
    assert (error.status, error.code, error.message) == (400, "invalid_argument", message)
    assert details in (error.details or "")


def unresolvable(world: World) -> ApiError:
    """Explain an image the real host runtime cannot serve (nothing is started)."""
    runtime = HostRuntime(run_root=world.root)
    with pytest.raises(ApiError) as raised:
        explain(world.start(), psql_request("-c", "select 1", image="postgres:99"), runtime)
    return raised.value


def test_an_image_the_runtime_cannot_serve_is_the_clients_error(world: World) -> None:
    error = unresolvable(world)
    assert (error.status, error.code, error.message) == (
        400,
        "invalid_argument",
        "cannot resolve image",
    )
    assert "postgres:99" in (error.details or "")


class VanishedBinaries(HostRuntime):
    """The binaries disappear between start-up and the request (a package removal)."""

    def resolve_image(self, image_id: str, log: LogSink, cancel: CancelToken) -> str:
        raise JobFailure("internal_error", "cannot find PostgreSQL", "no binaries left")


def test_any_other_failure_is_a_500_with_the_spec_message(world: World) -> None:
    """SPEC §10.4: `internal_error` / `internal error`, the reason in the details."""
    runtime = VanishedBinaries(run_root=world.root)
    with pytest.raises(ApiError) as raised:
        explain(world.start(), psql_request("-c", "select 1"), runtime)
    error = raised.value
    assert (error.status, error.code, error.message) == (500, "internal_error", "internal error")
    assert error.details == "cannot find PostgreSQL: no binaries left"
