"""The staging copy a psql step runs from (jobs/staging.py): exactly the hashed bytes, every
include pointed at its staged copy, readable by the server user's group only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sqlrs_engine.jobs.staging import InputEchoFilter, StagedStep, stage_step
from sqlrs_engine.prepare.digest import ContentLocks, step_digest
from sqlrs_engine.prepare.psql_args import parse_psql_args


def _stage(tmp_path: Path, args: list[str], stdin: str | None = None) -> StagedStep:
    plan = parse_psql_args(args, stdin, cwd=str(tmp_path / "src"))
    with ContentLocks() as locks:
        step_digest(plan, 0, locks)
        return stage_step(tmp_path / "stage", plan.steps[0], stdin, plan.work_dir_text, locks, None)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "main.sql").write_bytes(
        b"create table a();\r\n\\ir sub/rel.sql\n\\i 'sub/cwd.sql'\n\\include "
        + str(root).encode()
        + b"/abs.sql\nselect 1;"
    )
    (root / "sub" / "rel.sql").write_text("\\ir ../abs.sql\ncreate table rel();\n")
    (root / "sub" / "cwd.sql").write_text("create table cwd();\n")
    (root / "abs.sql").write_text("create table abs();\n")
    return root


def test_file_step_runs_the_staged_copy_with_includes_rewritten(tmp_path: Path, src: Path) -> None:
    staged = _stage(tmp_path, ["-f", str(src / "main.sql")])
    root = tmp_path / "stage" / "root"
    assert staged.root == root
    main = root / str(src / "main.sql").lstrip("/")
    assert staged.args[-2:] == ["-f", str(main)]
    assert staged.cwd == root / str(src).lstrip("/")
    assert main.read_bytes() == (
        b"create table a();\r\n"
        + f"\\i '{root}{src}/sub/rel.sql'\n".encode()
        + f"\\i '{root}{src}/sub/cwd.sql'\n".encode()
        + f"\\i '{root}{src}/abs.sql'\n".encode()
        + b"select 1;"
    )
    rel = root / str(src / "sub" / "rel.sql").lstrip("/")
    assert rel.read_text() == f"\\i '{root}{src}/abs.sql'\ncreate table rel();\n"
    assert (root / str(src / "abs.sql").lstrip("/")).read_text() == "create table abs();\n"
    assert staged.unstage(f"psql:{main}:3: ERROR") == f"psql:{src}/main.sql:3: ERROR"


def test_what_runs_is_what_was_hashed_after_an_atomic_save(tmp_path: Path, src: Path) -> None:
    """An editor saving the file (write a new file, rename it over) after hashing: the step
    still runs the hashed bytes, read through the handle the digest locked."""
    plan = parse_psql_args(["-f", str(src / "abs.sql")], None)
    with ContentLocks() as locks:
        step_digest(plan, 0, locks)
        (src / "new.sql").write_text("drop table everything;\n")
        os.replace(src / "new.sql", src / "abs.sql")
        staged = stage_step(
            tmp_path / "stage", plan.steps[0], None, plan.work_dir_text, locks, None
        )
    assert Path(staged.args[-1]).read_text() == "create table abs();\n"
    assert (src / "abs.sql").read_text() == "drop table everything;\n"


def test_command_and_stdin_includes_are_rewritten(tmp_path: Path, src: Path) -> None:
    command = _stage(tmp_path, ["-c", f"\\i {src}/abs.sql"])
    assert command.args[-2:] == ["-c", f"\\i '{command.root}{src}/abs.sql'"]
    piped = _stage(tmp_path, ["-f", "-"], stdin=f"select 1;\n\\i {src}/abs.sql\n")
    assert piped.stdin == f"select 1;\n\\i '{piped.root}{src}/abs.sql'\n".encode()


def test_paths_with_quotes_are_quoted(tmp_path: Path) -> None:
    odd = tmp_path / "src" / "it's"
    odd.mkdir(parents=True)
    (odd / "x.sql").write_text("select 1;\n")
    staged = _stage(tmp_path, ["-c", f'\\i "{odd}/x.sql"'])
    assert staged.args[-1] == f"\\i '{staged.root}{str(odd).replace(chr(39), chr(39) * 2)}/x.sql'"


def test_modes(tmp_path: Path, src: Path) -> None:
    staged = _stage(tmp_path, ["-f", str(src / "main.sql")])
    for path in [tmp_path / "stage", *(tmp_path / "stage").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o750 if path.is_dir() else 0o640), path
        assert path.stat().st_uid == os.geteuid()
    assert staged.cwd.is_dir()


@pytest.mark.parametrize(
    ("lines", "kept"),
    [
        (
            [
                'psql:/etc/shadow:1: ERROR:  syntax error at or near "root"',
                "LINE 1: root:$6$secrethash:19000:0:99999:7:::",
                "        ^",
                "psql:next.sql:2: NOTICE:  hello",
            ],
            [0, 3],
        ),
        (["QUERY:  select secret()", "CONTEXT:  PL/pgSQL function f() line 3"], [1]),
        (["   ^   ", "LINE is fine: not an echo"], [0, 1]),
        (["LINE 12: select 1 +", "LINE 13: x", "        ^", "        ^"], [3]),
    ],
)
def test_input_echo_filter(lines: list[str], kept: list[int]) -> None:
    echo = InputEchoFilter()
    assert [i for i, line in enumerate(lines) if not echo.hides(line)] == kept
