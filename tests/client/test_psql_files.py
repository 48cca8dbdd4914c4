"""Relative `psql -f` operands become absolute; nothing else is touched."""

from __future__ import annotations

import pytest

from sqlrs_engine.client.psql_files import absolute_file_args


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-f", "a.sql"], ["-f", "/w/a.sql"]),
        (["-f", "/abs/a.sql"], ["-f", "/abs/a.sql"]),
        (["-f", "-"], ["-f", "-"]),
        (["-fa.sql"], ["-f/w/a.sql"]),
        (["--file", "sub/../a.sql"], ["--file", "/w/a.sql"]),
        (["--file=a.sql"], ["--file=/w/a.sql"]),
        (["-X", "-f", "a.sql", "-f", "b.sql"], ["-X", "-f", "/w/a.sql", "-f", "/w/b.sql"]),
        (["-c", "-f"], ["-c", "-f"]),
        (["-c", "select 1", "-f", "a.sql"], ["-c", "select 1", "-f", "/w/a.sql"]),
        (["-v", "f=a.sql", "-f", "a.sql"], ["-v", "f=a.sql", "-f", "/w/a.sql"]),
        (["--set", "-f", "x.sql"], ["--set", "-f", "x.sql"]),  # -f is the value of --set
        (["-Xf", "a.sql"], ["-Xf", "/w/a.sql"]),
        (["-Xfa.sql"], ["-Xf/w/a.sql"]),
        (["-qc", "-f"], ["-qc", "-f"]),
        (["a.sql"], ["a.sql"]),
        (["-f"], ["-f"]),
        ([], []),
    ],
)
def test_absolute_file_args(args: list[str], expected: list[str]) -> None:
    assert absolute_file_args(args, "/w") == expected
