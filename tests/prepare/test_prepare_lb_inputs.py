"""The fingerprint of what Liquibase would read (the lb plan-cache key)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from sqlrs_engine.prepare.lb_args import parse_lb_args
from sqlrs_engine.prepare.lb_inputs import Uncacheable, inputs_fingerprint, read_inputs, references

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


class Recorder:
    """An InputSink that keeps what the walk hands over."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.dirs: list[str] = []

    def file(self, path: str, data: bytes) -> None:
        assert path not in self.files, f"{path} handed over twice"
        self.files[path] = data

    def directory(self, path: str) -> None:
        self.dirs.append(path)


def test_the_walk_hands_over_exactly_the_files_it_hashed(project: Path) -> None:
    (project / "xml" / "notes.txt").write_text("not read by Liquibase")
    (project / "xml" / "all" / "empty").mkdir()
    lb = parse_lb_args(["update", "--changelog-file", "xml/changelog.xml"], project)
    sink = Recorder()
    found = read_inputs(
        lb,
        liquibase_cwd=str(project / "xml"),
        environment=[],
        identity=[("input", "img")],
        stage=sink,
    )
    expected = {
        str(project / "xml" / name): (project / "xml" / name).read_bytes()
        for name in ("changelog.xml", "more.xml", "all/001-seed.sql")
    }
    assert sink.files == expected
    assert sink.dirs == [str(project / "xml" / "all")]
    assert found.unfollowed == []
    assert found.fingerprint == fingerprint(project, "xml/changelog.xml")


def test_the_walk_goes_on_past_what_it_cannot_follow(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("--liquibase formatted sql\n")
    (tmp_path / "c.xml").write_text(
        '<d><include file="${dir}/x.xml"/><include file="classpath:y.xml"/>'
        '<include file="a.sql"/></d>'
    )
    lb = parse_lb_args(["update", "--changelog-file", "c.xml"], tmp_path)
    sink = Recorder()
    found = read_inputs(lb, liquibase_cwd=str(tmp_path), environment=[], identity=[], stage=sink)
    assert found.fingerprint is None
    assert [reason.split(": ", 1)[1] for reason in found.unfollowed] == [
        "property substitution in '${dir}/x.xml'",
        "remote or classpath resource 'classpath:y.xml'",
    ]
    assert set(sink.files) == {str(tmp_path / "c.xml"), str(tmp_path / "a.sql")}


def test_absolute_references_are_looked_up_under_the_search_roots(tmp_path: Path) -> None:
    """As Liquibase 4 does: `/x/b.sql` is `<root>/x/b.sql`, never the file `/x/b.sql`."""
    outside = tmp_path / "outside.sql"
    outside.write_text("--liquibase formatted sql\n")
    root = tmp_path / "root"
    (root / str(outside).lstrip("/")).parent.mkdir(parents=True)
    (root / str(outside).lstrip("/")).write_text("--liquibase formatted sql\n-- under the root\n")
    (root / "c.xml").write_text(f'<d><include file="{outside}"/></d>')
    lb = parse_lb_args(["update", "--changelog-file", "c.xml", "--searchPath", str(root)], root)
    sink = Recorder()
    read_inputs(lb, liquibase_cwd=str(root), environment=[], identity=[], stage=sink)
    assert set(sink.files) == {str(root / "c.xml"), str(root / str(outside).lstrip("/"))}
