"""Planning a psql prepare (SPEC §2.7, §2.8): shared by jobs and by the cache explanation.

Planning reads the inputs (digests with includes) and asks "does this state exist?", but
changes nothing: a job persists the result, `POST /v1/cache/explain/prepare` only reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import ApiError, JobFailure
from sqlrs_engine.prepare.digest import signature_task_hash, step_task_hashes
from sqlrs_engine.prepare.hashing import psql_job_signature
from sqlrs_engine.prepare.images import has_digest
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.prepare.plan import PlanTask, build_psql_plan, final_state_id
from sqlrs_engine.prepare.psql_args import PsqlPlanInput, parse_psql_args
from sqlrs_engine.runtime.base import LogSink, Runtime


@dataclass(frozen=True)
class PsqlPlan:
    """A planned psql prepare: its inputs, effective image, tasks and signature."""

    args: PsqlPlanInput
    effective_image: str
    tasks: list[PlanTask]
    signature: str

    @property
    def final_state_id(self) -> str:
        return final_state_id(self.tasks)


def parse_request_args(request: PrepareRequest, cwd: Path) -> PsqlPlanInput:
    """Re-validate stored arguments (files may have gone since submit) as a job failure."""
    try:
        return parse_psql_args(request.psql_args, request.stdin, cwd)
    except ApiError as error:
        raise JobFailure(error.code, error.message, error.details) from None


def plan_psql(
    request: PrepareRequest,
    *,
    runtime: Runtime,
    engine_version: str,
    state_exists: Callable[[str], bool],
    cwd: Path,
    log: LogSink,
    cancel: CancelToken,
) -> PsqlPlan:
    """Resolve the image, hash every step, chain state ids, mark cached steps."""
    args = parse_request_args(request, cwd)
    effective = request.image_id
    if has_digest(request.image_id):
        runtime.check_image(request.image_id)
    else:
        effective = runtime.resolve_image(request.image_id, log, cancel)
    tasks = build_psql_plan(
        requested_image_id=request.image_id,
        effective_image_id=effective,
        step_task_hashes=step_task_hashes(args, engine_version),
        state_exists=state_exists,
        args_summaries=[step.args_summary for step in args.steps],
    )
    signature = psql_job_signature(
        signature_task_hash(args, engine_version), effective, request.plan_only
    )
    return PsqlPlan(args, effective, tasks, signature)
