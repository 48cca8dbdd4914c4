"""Prepare request bodies built by the client (SPEC §2.1, §3)."""

from __future__ import annotations

from typing import Any

import pytest

from sqlrs_engine.client.bodies import lb_request, psql_request


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        (
            ["-f", "schema.sql"],
            None,
            {"prepare_kind": "psql", "image_id": "pg", "psql_args": ["-f", "/w/schema.sql"]},
        ),
        (
            ["-f", "-"],
            "select 1",
            {
                "prepare_kind": "psql",
                "image_id": "pg",
                "psql_args": ["-f", "-"],
                "stdin": "select 1",
            },
        ),
        (
            ["-c", "select 1"],
            "",
            {
                "prepare_kind": "psql",
                "image_id": "pg",
                "psql_args": ["-c", "select 1"],
                "stdin": "",
            },
        ),
    ],
)
def test_psql_request(args: list[str], stdin: str | None, expected: dict[str, Any]) -> None:
    assert psql_request(args, "pg", stdin, cwd="/w") == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {},
            {
                "prepare_kind": "lb",
                "image_id": "pg",
                "liquibase_args": ["update"],
                "work_dir": "/w",
            },
        ),
        (
            {
                "work_dir": "db",
                "liquibase_exec": "/opt/lb/liquibase",
                "exec_mode": "native",
                "env": {"JAVA_HOME": "/jdk"},
            },
            {
                "prepare_kind": "lb",
                "image_id": "pg",
                "liquibase_args": ["update"],
                "work_dir": "/w/db",
                "liquibase_exec": "/opt/lb/liquibase",
                "liquibase_exec_mode": "native",
                "liquibase_env": {"JAVA_HOME": "/jdk"},
            },
        ),
        (
            {"work_dir": "/abs/project"},
            {
                "prepare_kind": "lb",
                "image_id": "pg",
                "liquibase_args": ["update"],
                "work_dir": "/abs/project",
            },
        ),
    ],
)
def test_lb_request(kwargs: dict[str, Any], expected: dict[str, Any]) -> None:
    assert lb_request(["update"], "pg", cwd="/w", **kwargs) == expected
