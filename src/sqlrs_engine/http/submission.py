"""Validating a prepare submission into the job row to persist (SPEC §2.1 to §2.3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlrs_engine.clock import now_rfc3339
from sqlrs_engine.ids import new_job_id
from sqlrs_engine.jobs.kinds import KINDS
from sqlrs_engine.limits import check_args, check_stdin
from sqlrs_engine.persistence.jobs import JobRecord
from sqlrs_engine.persistence.rows import dump_json
from sqlrs_engine.prepare.job_request import PrepareRequest, parse_prepare_request


def normalized_args(request: PrepareRequest, cwd: Path) -> str:
    """Validate the kind-specific arguments (through the kind table); a 400 when wrong."""
    return KINDS[request.prepare_kind].normalize(request, cwd)


def check_request_size(request: PrepareRequest) -> None:
    """413 for arguments or stdin no client program could be given (sqlrs_engine.limits)."""
    check_args(request.psql_args, "psql_args")
    check_args(request.liquibase_args, "liquibase_args")
    check_stdin([request.stdin], "stdin")


def validate_submission(body: dict[str, Any], cwd: Path) -> JobRecord:
    """A 400 for anything wrong; otherwise the new job's row."""
    request = parse_prepare_request(body)
    check_request_size(request)
    normalized = normalized_args(request, cwd)
    return JobRecord(
        job_id=new_job_id(),
        prepare_kind=request.prepare_kind,
        image_id=request.image_id,
        plan_only=request.plan_only,
        prepare_args_normalized=normalized,
        request_json=dump_json(request.to_request_json()) or "{}",
        created_at=now_rfc3339(),
    )
