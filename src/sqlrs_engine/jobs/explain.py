"""`POST /v1/cache/explain/prepare` (SPEC §10.4): would this prepare be a cache hit?

Plans exactly as a job would (through the kind table) and reports the decision for the final
state, without creating a job, an instance or a state. A kind that plans against a live
database (lb) gets a temporary server on the image's base, removed before the answer.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from sqlrs_engine.actors.registry import RegistryProxy
from sqlrs_engine.actors.snapshot import SnapshotClient
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import ApiError, JobFailure, failures_reported_as, invalid_argument
from sqlrs_engine.jobs.kinds import KINDS
from sqlrs_engine.jobs.kinds.base import PlanContext
from sqlrs_engine.jobs.runtime_session import RuntimeSession
from sqlrs_engine.jobs.services import ASK_TIMEOUT
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.runtime.base import CANNOT_RESOLVE_IMAGE, Runtime, ServerHandle


class _TemporaryServer:
    """A planning server for one explanation, on a clone under `jobs/cache-explain-<hex>`."""

    def __init__(self, runtime: Runtime, snapshots: SnapshotClient | None) -> None:
        self._runtime = runtime
        self._snapshots = snapshots
        self._cancel = CancelToken()
        self._session: RuntimeSession | None = None

    def __call__(self, image: str) -> ServerHandle:
        if self._snapshots is None:
            raise JobFailure("internal_error", "no state store to plan against")
        snapshots = self._snapshots

        def init_base(base_dir: Path) -> None:
            with failures_reported_as("cannot initialize base state"):
                self._runtime.init_base(image, base_dir, lambda _line: None, self._cancel)

        base = snapshots.ensure_base(image, init_base, self._cancel)
        self._session = RuntimeSession(
            f"cache-explain-{secrets.token_hex(8)}",
            image,
            self._runtime,
            snapshots,
            lambda _line: None,
            self._cancel,
        )
        return self._session.start_from(base, is_state=False)

    def release(self) -> None:
        if self._session is not None:
            self._session.release()


def explain_prepare(
    request: PrepareRequest,
    *,
    registry: RegistryProxy,
    runtime: Runtime,
    engine_version: str,
    cwd: Path,
    snapshots: SnapshotClient | None = None,
) -> dict[str, Any]:
    """The explanation object; input problems are a 400, like a submit's validation."""

    def state_exists(state_id: str) -> bool:
        exists: bool = registry.state_exists(state_id).get(timeout=ASK_TIMEOUT)
        return exists

    def config_value(path: str) -> object:
        try:
            return registry.config_get(path, True).get(timeout=ASK_TIMEOUT)
        except Exception:
            return None

    server = _TemporaryServer(runtime, snapshots)
    context = PlanContext(
        runtime=runtime,
        engine_version=engine_version,
        state_exists=state_exists,
        cwd=cwd,
        log=lambda _line: None,
        cancel=CancelToken(),
        planning_server=server,
        store_root=snapshots.layout.root if snapshots is not None else cwd,
        config_value=config_value,
    )
    try:
        plan = KINDS[request.prepare_kind].plan(request, context)
    except JobFailure as failure:
        if failure.code == "invalid_argument":
            raise invalid_argument(failure.message, failure.details) from None
        if failure.message == CANNOT_RESOLVE_IMAGE:
            # The image the client named cannot be used here: its input, not our failure.
            raise invalid_argument(failure.message, failure.details) from None
        reason = f"{failure.message}: {failure.details}" if failure.details else failure.message
        raise ApiError(500, "internal_error", "internal error", reason) from None
    finally:
        server.release()
    plan.steps.close()
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
