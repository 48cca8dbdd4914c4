"""`POST /v1/cache/explain/prepare` (SPEC §10.4): would this prepare be a cache hit?

Plans exactly as a job would (jobs/planning.py) and reports the decision for the final
state, without creating a job, an instance or a state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlrs_engine.actors.registry import RegistryProxy
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import ApiError, JobFailure, invalid_argument
from sqlrs_engine.jobs.planning import plan_psql
from sqlrs_engine.jobs.services import ASK_TIMEOUT
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.runtime.base import CANNOT_RESOLVE_IMAGE, Runtime


def explain_prepare(
    request: PrepareRequest,
    *,
    registry: RegistryProxy,
    runtime: Runtime,
    engine_version: str,
    cwd: Path,
) -> dict[str, Any]:
    """The explanation object; input problems are a 400, like a submit's validation."""

    def state_exists(state_id: str) -> bool:
        exists: bool = registry.state_exists(state_id).get(timeout=ASK_TIMEOUT)
        return exists

    try:
        plan = plan_psql(
            request,
            runtime=runtime,
            engine_version=engine_version,
            state_exists=state_exists,
            cwd=cwd,
            log=lambda _line: None,
            cancel=CancelToken(),
        )
    except JobFailure as failure:
        if failure.code == "invalid_argument":
            raise invalid_argument(failure.message, failure.details) from None
        if failure.message == CANNOT_RESOLVE_IMAGE:
            # The image the client named cannot be used here: its input, not our failure.
            raise invalid_argument(failure.message, failure.details) from None
        reason = f"{failure.message}: {failure.details}" if failure.details else failure.message
        raise ApiError(500, "internal_error", "internal error", reason) from None
    final = plan.final_state_id
    hit = state_exists(final)
    answer: dict[str, Any] = {
        "decision": "hit" if hit else "miss",
        "reason_code": "exact_state_match" if hit else "no_matching_state",
        "signature": plan.signature,
        "resolved_image_id": plan.effective_image,
    }
    if hit:
        answer["matched_state_id"] = final
    return answer
