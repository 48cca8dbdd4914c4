"""The table of prepare kinds: the only place that knows which kinds exist.

Submission (http/submission.py), planning and execution (jobs/builder.py), explain
(jobs/explain.py), recovery (jobs/supervisor.py re-plans through the builder) and the request
parser's kind check (prepare/job_request.py) all look kinds up here. A new kind is one module
implementing `PrepareKind` (jobs/kinds/base.py) and one entry below.
"""

from __future__ import annotations

from sqlrs_engine.errors import JobFailure
from sqlrs_engine.jobs.kinds.base import KindPlan, PlanContext, PrepareKind, StepRunner
from sqlrs_engine.jobs.kinds.lb import LbKind
from sqlrs_engine.jobs.kinds.psql import PsqlKind

KINDS: dict[str, PrepareKind] = {kind.name: kind for kind in (PsqlKind(), LbKind())}
"""Prepare kinds by their `prepare_kind` name."""


def kind_names() -> tuple[str, ...]:
    return tuple(KINDS)


def kind_for(name: str) -> PrepareKind:
    """The kind named `name`; a job whose stored kind is unknown fails (it never ran)."""
    kind = KINDS.get(name)
    if kind is None:
        raise JobFailure("internal_error", "unsupported prepare_kind", name)
    return kind


__all__ = ["KINDS", "KindPlan", "PlanContext", "PrepareKind", "StepRunner", "kind_for"]
