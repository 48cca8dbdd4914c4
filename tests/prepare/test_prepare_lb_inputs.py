"""The fingerprint of what Liquibase would read (the lb plan-cache key)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from sqlrs_engine.prepare.lb_args import parse_lb_args
from sqlrs_engine.prepare.lb_inputs import Uncacheable, inputs_fingerprint, references

FIXTURES = Path(__file__).parent / "fixtures" / "liquibase"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("xml", "yaml", "sql"):
        shutil.copytree(FIXTURES / name, tmp_path / name)
    return tmp_path


def fingerprint(project: Path, changelog: str, *extra: str, env: tuple = ()) -> str:
    lb = parse_lb_args(["update", "--changelog-file", changelog, *extra], project)
    cwd = str((project / changelog).parent)
    return inputs_fingerprint(
        lb, liquibase_cwd=cwd, environment=list(env), identity=[("input", "img")]
    )


def edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


EDITS: list[tuple[str, Callable[[Path], None]]] = [
    ("main changelog", lambda p: edit(p / "xml/changelog.xml", "varchar(50)", "varchar(60)")),
    ("included file", lambda p: edit(p / "xml/more.xml", "numeric(12,2)", "numeric(14,2)")),
    ("includeAll file", lambda p: edit(p / "xml/all/001-seed.sql", "carol", "carla")),
    (
        "includeAll new file",
        lambda p: (p / "xml/all/002.sql").write_text("--liquibase formatted sql\n"),
    ),
    ("defaults file appears", lambda p: (p / "xml/liquibase.properties").write_text("x=1\n")),
]


@pytest.mark.parametrize(("what", "change"), EDITS, ids=[e[0] for e in EDITS])
def test_any_read_file_changes_the_fingerprint(
    project: Path, what: str, change: Callable[[Path], None]
) -> None:
    before = fingerprint(project, "xml/changelog.xml")
    assert fingerprint(project, "xml/changelog.xml") == before, "stable"
    change(project)
    assert fingerprint(project, "xml/changelog.xml") != before, what


def test_unread_files_args_and_env(project: Path) -> None:
    before = fingerprint(project, "xml/changelog.xml")
    (project / "xml" / "notes.txt").write_text("unrelated")
    assert fingerprint(project, "xml/changelog.xml") == before
    assert fingerprint(project, "xml/changelog.xml", "--contexts=dev") != before
    env = (("LIQUIBASE_COMMAND_CONTEXTS", "dev"),)
    assert fingerprint(project, "xml/changelog.xml", env=env) != before


def test_yaml_and_sql(project: Path) -> None:
    yaml_before = fingerprint(project, "yaml/changelog.yaml")
    edit(project / "yaml/changelog.yaml", "'one'", "'uno'")
    assert fingerprint(project, "yaml/changelog.yaml") != yaml_before
    sql_before = fingerprint(project, "sql/changelog.sql")
    edit(project / "sql/changelog.sql", "it''s me", "it''s you")
    assert fingerprint(project, "sql/changelog.sql") != sql_before


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("c.xml", '<d><include file="${dir}/x.xml"/></d>', "property substitution"),
        ("c.xml", '<d><include file="classpath:x.xml"/></d>', "remote or classpath"),
        ("c.xml", "<d><unclosed></d>", "c.xml"),
        ("c.sql", "--liquibase formatted sql\n--include file:x.sql\n", "formatted SQL include"),
        ("c.txt", "whatever", "unknown changelog format"),
    ],
)
def test_uncacheable(tmp_path: Path, name: str, text: str, reason: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(Uncacheable, match=reason):
        fingerprint(tmp_path, name)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "c.xml",
            '<d><include file="a.xml" relativeToChangelogFile="true"/>'
            '<changeSet><sqlFile path="s.sql"/></changeSet></d>',
            [("a.xml", True), ("s.sql", False)],
        ),
        (
            "c.yaml",
            "databaseChangeLog:\n - include: {file: a.yaml, relativeToChangelogFile: true}\n"
            " - includeAll: {path: dir/}\n",
            [("a.yaml", True), ("dir/", False)],
        ),
        ("c.json", '{"databaseChangeLog": [{"include": {"file": "x.json"}}]}', [("x.json", False)]),
        ("c.sql", "--liquibase formatted sql\n--changeset a:1\nselect 1;\n", []),
    ],
)
def test_references(name: str, text: str, expected: list[tuple[str, bool]]) -> None:
    assert references(name, text.encode()) == expected
