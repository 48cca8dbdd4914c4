"""Request size limits (issue 11): the boundaries, and the 413 they answer with."""

from __future__ import annotations

import pytest

from sqlrs_engine.errors import ApiError
from sqlrs_engine.limits import (
    MAX_ARG_BYTES,
    MAX_STDIN_BYTES,
    MAX_TOTAL_ARG_BYTES,
    check_args,
    check_stdin,
)

MANY = (MAX_TOTAL_ARG_BYTES // (MAX_ARG_BYTES + 1)) + 1


@pytest.mark.parametrize(
    ("args", "refused", "says"),
    [
        ([], False, ""),
        (["-c", "x" * MAX_ARG_BYTES], False, ""),
        (["-c", "x" * (MAX_ARG_BYTES + 1)], True, "psql_args[1] is 131072 bytes"),
        (["-c", "é" * (MAX_ARG_BYTES // 2 + 1)], True, "bytes per argument"),  # UTF-8 bytes
        (["x" * MAX_ARG_BYTES] * (MANY - 1), False, ""),
        (["x" * MAX_ARG_BYTES] * MANY, True, "for all arguments together"),
    ],
    ids=["none", "largest-arg", "arg-too-large", "multibyte", "total-fits", "total-too-large"],
)
def test_check_args(args: list[str], refused: bool, says: str) -> None:
    if not refused:
        check_args(args, "psql_args")
        return
    with pytest.raises(ApiError) as raised:
        check_args(args, "psql_args")
    error = raised.value
    assert (error.status, error.code, error.message) == (
        413,
        "invalid_argument",
        "request too large",
    )
    assert says in (error.details or "") and "-f" in (error.details or "")


@pytest.mark.parametrize(
    ("texts", "refused"),
    [
        ([None], False),
        (["x" * MAX_STDIN_BYTES], False),
        (["x" * (MAX_STDIN_BYTES + 1)], True),
        (["x" * (MAX_STDIN_BYTES // 2), None, "x" * (MAX_STDIN_BYTES // 2 + 1)], True),
    ],
)
def test_check_stdin(texts: list[str | None], refused: bool) -> None:
    if refused:
        with pytest.raises(ApiError, match="request too large"):
            check_stdin(texts, "stdin")
    else:
        check_stdin(texts, "stdin")
