"""The one engine-log line of a failed or cancelled job (SPEC §0.1)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sqlrs_engine.jobs.failure_log import DETAILS_LIMIT, log_job_failure, one_line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("one", "one"),
        ("a\nb\r\nc", "a | b | c"),
        ("  padded  \n\n\n  lines ", "padded | lines"),
        ("x" * (DETAILS_LIMIT + 5), "x" * (DETAILS_LIMIT - 1) + "…"),
        ("", ""),
    ],
)
def test_one_line(text: str, expected: str) -> None:
    assert one_line(text) == expected


@pytest.mark.parametrize(
    ("error", "task", "level", "line"),
    [
        (
            {"code": "internal_error", "message": "psql execution failed", "details": "E1\nE2"},
            "execute-1",
            logging.WARNING,
            "job j1 failed: task=execute-1 code=internal_error "
            "message='psql execution failed' details='E1 | E2'",
        ),
        (
            {"code": "cancelled", "message": "job cancelled"},
            None,
            logging.INFO,
            "job j1 cancelled: code=cancelled message='job cancelled'",
        ),
        (
            {"code": "invalid_argument", "message": "cannot compute psql content hash"},
            "plan",
            logging.WARNING,
            "job j1 failed: task=plan code=invalid_argument "
            "message='cannot compute psql content hash'",
        ),
    ],
)
def test_log_job_failure(
    caplog: pytest.LogCaptureFixture,
    error: dict[str, Any],
    task: str | None,
    level: int,
    line: str,
) -> None:
    with caplog.at_level(logging.INFO, logger="sqlrs_engine.jobs"):
        log_job_failure("j1", error, task)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(level, line)]
