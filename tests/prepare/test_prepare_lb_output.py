"""Parsing `updateSQL` output (SPEC §3.3) and the plan it gives (§3.4).

The fixtures are real output of Liquibase 4.28.0 (`fixtures/liquibase/<format>.out`, run on
the changelogs next to them against an empty PostgreSQL 15): an SQL-formatted changelog with
contexts and labels, an XML one with `include` and `includeAll`, and a YAML one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlrs_engine.errors import JobFailure
from sqlrs_engine.prepare.hashing import lb_job_signature, lb_task_hash, sha256_hex, state_id
from sqlrs_engine.prepare.lb_output import checksum_of, parse_update_sql
from sqlrs_engine.prepare.plan import LbChangeset, build_lb_plan, execute_tasks

FIXTURES = Path(__file__).parent / "fixtures" / "liquibase"
IMAGE = "postgres@host-15.18"


def fixture_lines(name: str) -> list[str]:
    return (FIXTURES / f"{name}.out").read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "sql",
            [
                ("1", "alice", "changelog.sql", "9:adf641c97f7b809a705407fee8aa0ea2"),
                ("2", "alice", "changelog.sql", "9:53ab44d9c03e17f6344c17e704aaff4d"),
                ("3", "bob", "changelog.sql", "9:be3b4bc948e3896e5aea705dca863721"),
            ],
        ),
        (
            "xml",
            [
                ("1", "alice", "changelog.xml", "9:8c229229a782ad2f8bbbfce3637d2137"),
                ("2", "bob", "more.xml", "9:2f39f920de1bdea766471adf0a8af50c"),
                ("seed", "carol", "all/001-seed.sql", "9:3e05008168b19e59ef4a22f67de4c1c9"),
            ],
        ),
        (
            "yaml",
            [
                ("1", "dave", "changelog.yaml", "9:aabcb0a443cec2fdcda923c7394efbab"),
                ("2", "dave", "changelog.yaml", "9:54c02a67393f5594448e0fc39e89d9ab"),
            ],
        ),
    ],
)
def test_real_liquibase_output(name: str, expected: list[tuple[str, str, str, str]]) -> None:
    assert parse_update_sql(fixture_lines(name)) == [LbChangeset(*item) for item in expected]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], []),
        (["", "  "], []),
        (
            ["-- Changeset a.sql::1::me", "create table t();", ""],
            [LbChangeset("1", "me", "a.sql", sha256_hex("create table t();"))],
        ),
        (
            ["-- Changeset a.sql::x::y::z", "select 1;"],
            [LbChangeset("x", "y::z", "a.sql", sha256_hex("select 1;"))],
        ),
        (
            [
                "-- Changeset a.sql::1::me",
                "INSERT INTO public.databasechangelog (ID, MD5SUM) VALUES ('1', '9:ab');",
                "-- Changeset a.sql::2::me",
                "INSERT INTO databasechangelog (ID, COMMENTS, MD5SUM) VALUES "
                "('2', 'it''s, (odd)', '9:cd')",
            ],
            [LbChangeset("1", "me", "a.sql", "9:ab"), LbChangeset("2", "me", "a.sql", "9:cd")],
        ),
    ],
)
def test_synthetic_output(lines: list[str], expected: list[LbChangeset]) -> None:
    assert parse_update_sql(lines) == expected


@pytest.mark.parametrize(
    ("lines", "details"),
    [
        (["SET SEARCH_PATH TO public;"], "missing changeset"),
        (["-- Changeset only-two::parts"], "bad changeset header: -- Changeset only-two::parts"),
    ],
)
def test_unparseable_output(lines: list[str], details: str) -> None:
    with pytest.raises(JobFailure) as caught:
        parse_update_sql(lines)
    assert caught.value.code == "invalid_argument"
    assert caught.value.message == "cannot parse liquibase changesets"
    assert caught.value.details == details


@pytest.mark.parametrize(
    ("line", "checksum"),
    [
        ("INSERT INTO public.databasechangelog (ID, MD5SUM) VALUES ('1', '9:ab')", "9:ab"),
        ("insert into DATABASECHANGELOG (md5sum) values ('x''y')", "x'y"),
        ("INSERT INTO public.databasechangelog (ID, MD5SUM) VALUES ('1', NULL)", "NULL"),
        ("INSERT INTO public.databasechangeloglock (ID, LOCKED) VALUES (1, FALSE);", None),
        ("INSERT INTO t (MD5SUM) VALUES ('9:ab')", None),
        ("UPDATE databasechangelog SET MD5SUM = '1'", None),
        ("INSERT INTO databasechangelog (ID, MD5SUM) VALUES ('1')", None),
    ],
)
def test_checksum_of(line: str, checksum: str | None) -> None:
    assert checksum_of(line) == checksum


def test_plan_hashes_from_real_output() -> None:
    """§3.4: each changeset's task hash is its checksum on the previous state."""
    changesets = parse_update_sql(fixture_lines("xml"))
    tasks = build_lb_plan(
        requested_image_id=IMAGE,
        effective_image_id=IMAGE,
        changesets=changesets,
        state_exists=lambda _state: False,
    )
    executes = execute_tasks(tasks)
    previous_kind, previous = "image", IMAGE
    for task, changeset in zip(executes, changesets, strict=True):
        assert task.task_hash == lb_task_hash(previous, changeset.changeset_hash)
        assert task.output_state_id == state_id(previous_kind, previous, task.task_hash)
        assert (
            task.args_summary == f"{changeset.changeset_id}::{changeset.author}::{changeset.path}"
        )
        previous_kind, previous = "state", task.output_state_id
    signature = lb_job_signature(IMAGE, False, "dev", tasks)
    assert signature != lb_job_signature(IMAGE, True, "dev", tasks)
    edited = [*changesets[:2], LbChangeset("seed", "carol", "all/001-seed.sql", "9:other")]
    again = build_lb_plan(
        requested_image_id=IMAGE,
        effective_image_id=IMAGE,
        changesets=edited,
        state_exists=lambda _state: False,
    )
    # editing the last changeset keeps the earlier states and renames only the last
    assert [t.output_state_id for t in execute_tasks(again)][:2] == [
        t.output_state_id for t in executes[:2]
    ]
    assert execute_tasks(again)[2].output_state_id != executes[2].output_state_id
