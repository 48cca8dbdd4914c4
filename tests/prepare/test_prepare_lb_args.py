"""Liquibase argument rules (SPEC §3.1, §3.2, §3.3, §3.5): table-driven."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlrs_engine.errors import ApiError
from sqlrs_engine.prepare.lb_args import (
    check_exec_mode,
    parse_lb_args,
    planning_args,
    relative_to_work_dir,
    replace_command,
    sanitize_exec,
    step_args,
)


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "x.xml").write_text("<databaseChangeLog/>")
    (tmp_path / "lb.properties").write_text("")
    (tmp_path / "more").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["update", "--changelog-file", "db/x.xml"], "--changelog-file {cwd}/db/x.xml update"),
        (["update", "--changelog-file=db/x.xml"], "--changelog-file {cwd}/db/x.xml update"),
        (
            ["--changelog-file", "{cwd}/db/./x.xml", "update"],
            "--changelog-file {cwd}/db/x.xml update",
        ),
        (["", "--", " update "], " update "),
        (
            ["--log-level=info", "update", "--contexts=dev"],
            "--log-level=info update --contexts=dev",
        ),
        (["update", "--contexts", "dev", "--labels=a"], "update --contexts dev --labels=a"),
        (["updateSQL"], "updateSQL"),
        (["UPDATE-count", "--count=2"], "UPDATE-count --count=2"),
        (["update", "--search-path", "db, more"], "--searchPath {cwd}/db,{cwd}/more update"),
        (["update", "--searchPath=classpath:x"], "--searchPath classpath:x update"),
        (
            ["update", "--defaults-file", "lb.properties", "--changelog-file", "https://h/x.xml"],
            "--defaults-file {cwd}/lb.properties --changelog-file https://h/x.xml update",
        ),
    ],
)
def test_normalization(cwd: Path, args: list[str], expected: str) -> None:
    filled = [a.replace("{cwd}", str(cwd)) for a in args]
    assert parse_lb_args(filled, cwd).normalized == expected.replace("{cwd}", str(cwd))


@pytest.mark.parametrize(
    ("args", "message", "details"),
    [
        (["update", "--url", "jdbc:x"], "connection flags are not allowed", "--url"),
        (["--username=me", "update"], "connection flags are not allowed", "--username=me"),
        (["update", " --password=x "], "connection flags are not allowed", "--password=x"),
        (["update", "--classpath=/x.jar"], "runtime flags are not allowed", "--classpath=/x.jar"),
        (["--driver", "org.X", "update"], "runtime flags are not allowed", "--driver"),
        (["update", "--changelog-file"], "missing value for flag", "--changelog-file"),
        (["update", "--changelog-file="], "missing value for flag", "--changelog-file"),
        (["update", "--changelog-file", "db/none.xml"], "path does not exist", "{cwd}/db/none.xml"),
        (["update", "--defaults-file", "/nope"], "path does not exist", "/nope"),
        (["update", "--searchPath", "db,,more"], "searchPath is empty", "db,,more"),
        (["update", "--searchPath", "db,gone"], "searchPath path does not exist", "{cwd}/gone"),
        (["--changelog-file", "db/x.xml"], "lb command is required", None),
        ([], "lb command is required", None),
        (["--contexts", "dev", "update"], "unsupported lb command", "dev"),
        (["rollback", "--tag=v1"], "unsupported lb command", "rollback"),
        (["drop-all"], "unsupported lb command", "drop-all"),
        (["status"], "unsupported lb command", "status"),
        (
            ["update", "a\x00b"],
            "arguments must not contain NUL characters",
            "liquibase_args: a\x00b",
        ),
    ],
)
def test_rejections(cwd: Path, args: list[str], message: str, details: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        parse_lb_args(args, cwd)
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        400,
        "invalid_argument",
        message,
    )
    if details is not None:
        assert caught.value.details == details.replace("{cwd}", str(cwd))


def test_work_dir_must_exist(cwd: Path) -> None:
    assert parse_lb_args(["update"], cwd, "db").work_dir == f"{cwd}/db"
    with pytest.raises(ApiError, match="work_dir does not exist"):
        parse_lb_args(["update"], cwd, "gone")


@pytest.mark.parametrize(
    ("args", "command", "expected"),
    [
        (["update"], "updateSQL", ["updateSQL"]),
        (
            ["--changelog-file", "x", "update", "--contexts=a"],
            "u",
            ["--changelog-file", "x", "u", "--contexts=a"],
        ),
        (
            ["--searchPath", "a", "--log-level", "update"],
            "u",
            ["--searchPath", "a", "--log-level", "u"],
        ),
        (["--changelog-file", "x"], "u", ["--changelog-file", "x", "u"]),
    ],
)
def test_replace_command(args: list[str], command: str, expected: list[str]) -> None:
    assert replace_command(args, command) == expected


def test_planning_and_step_args_relative_to_work_dir(cwd: Path) -> None:
    lb = parse_lb_args(["update", "--changelog-file", "db/x.xml", "--contexts=dev"], cwd, ".")
    assert planning_args(lb) == ["--changelog-file", "db/x.xml", "updateSQL", "--contexts=dev"]
    assert step_args(lb) == [
        "--changelog-file",
        "db/x.xml",
        "update-count",
        "--contexts=dev",
        "--count",
        "1",
    ]
    outside = ["--changelog-file", "/elsewhere/x.xml", "update"]
    assert relative_to_work_dir(outside, str(cwd)) == outside


@pytest.mark.parametrize(
    ("mode", "exec_path", "refused"),
    [
        ("", "", False),
        ("auto", "/opt/lb/liquibase", False),
        ("native", "C:/lb/liquibase.bat", False),
        ("whatever", "/x/liquibase", False),
        ("windows-bat", "/x/liquibase", True),
        ("auto", "C:/lb/LIQUIBASE.CMD", True),
        ("", "liquibase.bat", True),
    ],
)
def test_exec_mode(mode: str, exec_path: str, refused: bool) -> None:
    if refused:
        with pytest.raises(ApiError, match="unsupported liquibase_exec_mode"):
            check_exec_mode(mode, exec_path)
    else:
        check_exec_mode(mode, exec_path)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("/opt/liquibase", "/opt/liquibase"),
        ('"/opt/my lb/liquibase"', "/opt/my lb/liquibase"),
        ("'/opt/lb'", "/opt/lb"),
        ('\\"/opt/lb\\"', "/opt/lb"),
        ("  ", ""),
    ],
)
def test_sanitize_exec(raw: str, clean: str) -> None:
    assert sanitize_exec(raw) == clean
