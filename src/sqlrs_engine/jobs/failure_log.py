"""One engine-log line per job that ends failed or cancelled (SPEC §0.1).

A user debugging from `engine.log` must see every failure without reading the job's events:
the job id, the failing task, the error code and message, and the start of the details on a
single line (details can be a whole psql transcript; the job keeps them in full).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("sqlrs_engine.jobs")

DETAILS_LIMIT = 300
"""Characters of `details` kept in the log line; the job's error keeps all of them."""


def one_line(text: str, limit: int = DETAILS_LIMIT) -> str:
    """`text` with its line breaks shown as ` | `, cut to `limit` characters."""
    flat = " | ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def log_job_failure(job_id: str, error: Mapping[str, Any], task_id: str | None = None) -> None:
    """Log how job `job_id` ended: `failed` (warning) or `cancelled` (info)."""
    code = str(error.get("code", ""))
    outcome = "cancelled" if code == "cancelled" else "failed"
    parts = [f"job {job_id} {outcome}:"]
    if task_id:
        parts.append(f"task={task_id}")
    parts.append(f"code={code}")
    parts.append(f"message={one_line(str(error.get('message', '')))!r}")
    details = error.get("details")
    if details:
        parts.append(f"details={one_line(str(details))!r}")
    (log.info if outcome == "cancelled" else log.warning)("%s", " ".join(parts))
