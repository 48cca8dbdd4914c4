"""SPEC §2.2 argument rules, §2.3 normalization, §2.4 steps (with the §0.1 decision)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlrs_engine.errors import ApiError
from sqlrs_engine.prepare.psql_args import (
    PsqlInput,
    parse_psql_args,
    psql_args_summaries,
    split_psql_steps,
)

DEFAULTS = ["-X", "-v", "ON_ERROR_STOP=1"]


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    (tmp_path / "a.sql").write_text("select 1;\n")
    (tmp_path / "b.sql").write_text("select 2;\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.sql").write_text("select 3;\n")
    return tmp_path


def _fill(args: list[str], root: Path) -> list[str]:
    return [a.replace("{d}", str(root)) for a in args]


# ---------------------------------------------------------------------------- errors

ERROR_ROWS = [
    # (args, stdin, message, details)
    (["--", "x"], None, "positional arguments are not allowed", None),
    (["--", ""], None, "positional arguments are not allowed", None),
    (["-c", "x", "--", "-c", "y"], None, "positional arguments are not allowed", None),
    *[
        ([flag], None, "connection flags are not allowed", flag)
        for flag in [
            "-h",
            "-p",
            "-U",
            "-d",
            "--host",
            "--port",
            "--username",
            "--dbname",
            "--database",
            "--host=db",
            "--port=5432",
            "--username=u",
            "--dbname=x",
            "--database=x",
            "-hlocalhost",
            "-p5432",
            "-Usqlrs",
            "-dpostgres",
        ]
    ],
    (["-c", "x", "-h", "db"], None, "connection flags are not allowed", "-h"),
    (["-v"], None, "missing value for variable flag", "-v"),
    (["--set"], None, "missing value for variable flag", "--set"),
    (["--variable"], None, "missing value for variable flag", "--variable"),
    (["-v", "ON_ERROR_STOP=0"], None, "ON_ERROR_STOP must be set to 1", "ON_ERROR_STOP=0"),
    (["-v", " on_error_stop =off"], None, "ON_ERROR_STOP must be set to 1", " on_error_stop =off"),
    (["-vON_ERROR_STOP=2"], None, "ON_ERROR_STOP must be set to 1", "ON_ERROR_STOP=2"),
    (["--set=ON_ERROR_STOP=true"], None, "ON_ERROR_STOP must be set to 1", "ON_ERROR_STOP=true"),
    (["--variable=On_Error_Stop="], None, "ON_ERROR_STOP must be set to 1", "On_Error_Stop="),
    (["--set", "ON_ERROR_STOP=01"], None, "ON_ERROR_STOP must be set to 1", "ON_ERROR_STOP=01"),
    (["-v", "ON_ERROR_STOP"], None, "ON_ERROR_STOP must be set to 1", None),
    (["-von_error_stop"], None, "ON_ERROR_STOP must be set to 1", None),
    (["--set= ON_ERROR_STOP "], None, "ON_ERROR_STOP must be set to 1", None),
    (["-f"], None, "missing value for file flag", "-f"),
    (["--file"], None, "missing value for file flag", "--file"),
    (["--file="], None, "missing value for file flag", "--file="),
    (["-f", ""], None, "file path is empty", None),
    (["-f", "rel.sql"], None, "file path must be absolute", "rel.sql"),
    (["--file", "./a.sql"], None, "file path must be absolute", "./a.sql"),
    (["--file=a.sql"], None, "file path must be absolute", "a.sql"),
    (["-fa.sql"], None, "file path must be absolute", "a.sql"),
    (["-f", "{d}/missing.sql"], None, "cannot read file", "{d}/missing.sql"),
    (["-f{d}/missing.sql"], None, "cannot read file", "{d}/missing.sql"),
    (["-f", "/nul\x00.sql"], None, "arguments must not contain NUL characters", "/nul\x00.sql"),
    (["-c", "select '\x00'"], None, "arguments must not contain NUL characters", "select '\x00'"),
    (["-c"], None, "missing value for command flag", "-c"),
    (["--command"], None, "missing value for command flag", "--command"),
    (["db"], None, "positional database arguments are not allowed", "db"),
    (["-c", "x", "postgres"], None, "positional database arguments are not allowed", "postgres"),
    (["-P", "pager=off"], None, "positional database arguments are not allowed", "pager=off"),
    (["-f", "-"], None, "stdin is required when using -f -", None),
    (["-f-"], None, "stdin is required when using -f -", None),
    (["--file=-"], None, "stdin is required when using -f -", None),
    (["-c", "x"], "select 1", "stdin is only valid with -f -", None),
    ([], "", "stdin is only valid with -f -", None),
    # scan order: the first offending argument wins
    (["db", "-h"], None, "positional database arguments are not allowed", "db"),
    (["-h", "db"], None, "connection flags are not allowed", "-h"),
    (["-f", "-", "db"], None, "stdin is required when using -f -", None),
    (["-f", "rel.sql", "-h"], None, "file path must be absolute", "rel.sql"),
    (["-v", "ON_ERROR_STOP=0", "--"], None, "ON_ERROR_STOP must be set to 1", "ON_ERROR_STOP=0"),
]


@pytest.mark.parametrize(("args", "stdin", "message", "details"), ERROR_ROWS)
def test_argument_errors(
    sql_dir: Path, args: list[str], stdin: str | None, message: str, details: str | None
) -> None:
    with pytest.raises(ApiError) as caught:
        parse_psql_args(_fill(args, sql_dir), stdin, cwd=sql_dir)
    err = caught.value
    assert (err.status, err.code, err.message) == (400, "invalid_argument", message)
    expected_details = None if details is None else details.replace("{d}", str(sql_dir))
    assert err.details == expected_details


# -------------------------------------------------------------------- normalization

NORMALIZE_ROWS = [
    # (args, stdin, normalized string)
    (["-f", "{d}/a.sql"], None, "-f {d}/a.sql -X -v ON_ERROR_STOP=1"),
    (["-c", "select 1"], None, "-c select 1 -X -v ON_ERROR_STOP=1"),
    (["-X", "-c", "x"], None, "-X -c x -v ON_ERROR_STOP=1"),
    (["--no-psqlrc", "-c", "x"], None, "--no-psqlrc -c x -v ON_ERROR_STOP=1"),
    (["-c", "x", "-v", "ON_ERROR_STOP=1"], None, "-c x -v ON_ERROR_STOP=1 -X"),
    (["-c", "x", "-v", " on_error_stop = 1 "], None, "-c x -v  on_error_stop = 1  -X"),
    (["--set=ON_ERROR_STOP=1", "-X", "-c", "x"], None, "--set=ON_ERROR_STOP=1 -X -c x"),
    (["-vON_ERROR_STOP=1", "--no-psqlrc"], None, "-vON_ERROR_STOP=1 --no-psqlrc"),
    (["-v", "FOO=bar", "-c", "x"], None, "-v FOO=bar -c x -X -v ON_ERROR_STOP=1"),
    (["", "-c", "x"], None, " -c x -X -v ON_ERROR_STOP=1"),
    (["-c", "x", "--"], None, "-c x -- -X -v ON_ERROR_STOP=1"),
    (["-q"], None, "-q -X -v ON_ERROR_STOP=1"),
    ([], None, "-X -v ON_ERROR_STOP=1"),
    (["-f", "-"], "select 1", "-f - -X -v ON_ERROR_STOP=1"),
    (["--command=x", "-cy"], None, "--command=x -cy -X -v ON_ERROR_STOP=1"),
    (["--echo-all", "-c", "x"], None, "--echo-all -c x -X -v ON_ERROR_STOP=1"),
    (["-c", "x", "--command="], None, "-c x --command= -X -v ON_ERROR_STOP=1"),
]


@pytest.mark.parametrize(("args", "stdin", "normalized"), NORMALIZE_ROWS)
def test_normalization(sql_dir: Path, args: list[str], stdin: str | None, normalized: str) -> None:
    plan = parse_psql_args(_fill(args, sql_dir), stdin, cwd=sql_dir)
    expected = normalized.replace("{d}", str(sql_dir))
    assert plan.normalized == expected
    assert plan.normalized_args[: len(args)] == _fill(args, sql_dir)
    assert " ".join(plan.normalized_args) == expected


# ---------------------------------------------------------------------------- steps

STEP_ROWS = [
    # (args, stdin, [(exec_args, kind, value, summary)])
    (
        ["-c", "select 1"],
        None,
        [([*DEFAULTS, "-c", "select 1"], "command", "select 1", "-c select 1")],
    ),
    (
        ["-f", "{d}/a.sql"],
        None,
        [([*DEFAULTS, "-f", "{d}/a.sql"], "file", "{d}/a.sql", "-f {d}/a.sql")],
    ),
    (
        ["-f", "-"],
        "select 1",
        [([*DEFAULTS, "-f", "-"], "stdin", "select 1", "-f -")],
    ),
    (
        ["-q", "-c", "a", "-1", "-f", "{d}/a.sql", "-c", "b"],
        None,
        [
            (["-q", *DEFAULTS, "-c", "a"], "command", "a", "-c a"),
            (["-q", "-1", *DEFAULTS, "-f", "{d}/a.sql"], "file", "{d}/a.sql", "-f {d}/a.sql"),
            (["-q", "-1", *DEFAULTS, "-c", "b"], "command", "b", "-c b"),
        ],
    ),
    # defaults given before the inputs are not duplicated
    (
        ["-X", "-v", "ON_ERROR_STOP=1", "-c", "a", "-c", "b"],
        None,
        [
            ([*DEFAULTS, "-c", "a"], "command", "a", "-c a"),
            ([*DEFAULTS, "-c", "b"], "command", "b", "-c b"),
        ],
    ),
    (
        ["--no-psqlrc", "--set=ON_ERROR_STOP=1", "-c", "a"],
        None,
        [(["--no-psqlrc", "--set=ON_ERROR_STOP=1", "-c", "a"], "command", "a", "-c a")],
    ),
    # only one default given before: the other is still added
    (
        ["-X", "-c", "a"],
        None,
        [(["-X", "-v", "ON_ERROR_STOP=1", "-c", "a"], "command", "a", "-c a")],
    ),
    (
        ["-vON_ERROR_STOP=1", "-c", "a"],
        None,
        [(["-vON_ERROR_STOP=1", "-X", "-c", "a"], "command", "a", "-c a")],
    ),
    # defaults written after an input still apply to it (and are shared by later steps)
    (
        ["-c", "a", "-X", "-c", "b"],
        None,
        [
            ([*DEFAULTS, "-c", "a"], "command", "a", "-c a"),
            (["-X", "-v", "ON_ERROR_STOP=1", "-c", "b"], "command", "b", "-c b"),
        ],
    ),
    # every input spelling becomes the canonical short form
    (
        [
            "--command=a",
            "-cb",
            "--command",
            "c",
            "--file={d}/a.sql",
            "-f{d}/b.sql",
            "--file",
            "{d}/sub/c.sql",
            "-f-",
        ],
        "in",
        [
            ([*DEFAULTS, "-c", "a"], "command", "a", "-c a"),
            ([*DEFAULTS, "-c", "b"], "command", "b", "-c b"),
            ([*DEFAULTS, "-c", "c"], "command", "c", "-c c"),
            ([*DEFAULTS, "-f", "{d}/a.sql"], "file", "{d}/a.sql", "-f {d}/a.sql"),
            ([*DEFAULTS, "-f", "{d}/b.sql"], "file", "{d}/b.sql", "-f {d}/b.sql"),
            ([*DEFAULTS, "-f", "{d}/sub/c.sql"], "file", "{d}/sub/c.sql", "-f {d}/sub/c.sql"),
            ([*DEFAULTS, "-f", "-"], "stdin", "in", "-f -"),
        ],
    ),
    # variable values travel with their flag; "" and a trailing "--" are not passed to psql
    (
        ["", "-v", "A=1", "--set", "B=2", "-c", "a", "--"],
        None,
        [(["-v", "A=1", "--set", "B=2", *DEFAULTS, "-c", "a"], "command", "a", "-c a")],
    ),
    (
        ["-c", ""],
        None,
        [([*DEFAULTS, "-c", ""], "command", "", "-c ")],
    ),
]


@pytest.mark.parametrize(("args", "stdin", "expected"), STEP_ROWS)
def test_steps(
    sql_dir: Path,
    args: list[str],
    stdin: str | None,
    expected: list[tuple[list[str], str, str, str]],
) -> None:
    plan = parse_psql_args(_fill(args, sql_dir), stdin, cwd=sql_dir)
    d = str(sql_dir)
    got = [(s.index, s.task_id, s.exec_args, s.kind, s.value, s.args_summary) for s in plan.steps]
    want = [
        (
            i,
            f"execute-{i}",
            _fill(exec_args, sql_dir),
            kind,
            value.replace("{d}", d),
            summary.replace("{d}", d),
        )
        for i, (exec_args, kind, value, summary) in enumerate(expected)
    ]
    assert got == want
    assert [s.input for s in plan.steps] == plan.inputs


@pytest.mark.parametrize(
    ("args", "exec_args"),
    [
        (["-q"], ["-q", *DEFAULTS]),
        ([], DEFAULTS),
        (["-X", "-v", "ON_ERROR_STOP=1", "-q"], [*DEFAULTS, "-q"]),
        (["-q", "--"], ["-q", *DEFAULTS]),
        (["", "-e"], ["-e", *DEFAULTS]),
    ],
)
def test_zero_inputs_is_one_step_without_input(
    tmp_path: Path, args: list[str], exec_args: list[str]
) -> None:
    plan = parse_psql_args(args, None, cwd=tmp_path)
    assert len(plan.steps) == 1
    step = plan.steps[0]
    assert (step.index, step.input, step.kind, step.value) == (0, None, None, None)
    assert step.exec_args == exec_args
    assert step.args_summary == ""
    assert plan.inputs == []


def test_stdin_step_flags(tmp_path: Path) -> None:
    plan = parse_psql_args(["-c", "a", "-f", "-"], "select 2", cwd=tmp_path)
    assert [s.uses_stdin for s in plan.steps] == [False, True]
    assert plan.uses_stdin
    assert plan.stdin == "select 2"
    assert plan.inputs == [PsqlInput("command", "a"), PsqlInput("stdin", "select 2")]


def test_empty_stdin_is_valid_with_dash_f(tmp_path: Path) -> None:
    plan = parse_psql_args(["-f", "-"], "", cwd=tmp_path)
    assert plan.inputs == [PsqlInput("stdin", "")]


# ------------------------------------------------------------------ work dir, files


@pytest.mark.parametrize(
    ("args", "stdin", "work_dir", "files"),
    [
        (
            ["-f", "{d}/sub/c.sql", "-f", "{d}/a.sql"],
            None,
            "{d}/sub",
            ["{d}/sub/c.sql", "{d}/a.sql"],
        ),
        (["-c", "x", "-f", "{d}/a.sql"], None, "{d}", ["{d}/a.sql"]),
        (["--file={d}/sub/../a.sql"], None, "{d}", ["{d}/sub/../a.sql"]),
        (["-c", "x"], None, "CWD", []),
        (["-f", "-"], "x", "CWD", []),
        (["-f", "-", "-f", "{d}/sub/c.sql"], "x", "{d}/sub", ["{d}/sub/c.sql"]),
    ],
)
def test_work_dir_is_first_file_dir_else_cwd(
    sql_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    args: list[str],
    stdin: str | None,
    work_dir: str,
    files: list[str],
) -> None:
    cwd = tmp_path_factory.mktemp("cwd")
    plan = parse_psql_args(_fill(args, sql_dir), stdin, cwd=cwd)
    expected = cwd if work_dir == "CWD" else Path(work_dir.replace("{d}", str(sql_dir)))
    assert plan.work_dir == expected
    assert plan.file_paths == _fill(files, sql_dir)


def test_work_dir_defaults_to_process_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_psql_args(["-c", "x"], None).work_dir == tmp_path


def test_empty_cwd_means_no_work_dir() -> None:
    plan = parse_psql_args(["-c", "x"], None, cwd="")
    assert plan.work_dir is None
    assert plan.work_dir_text == ""


# ----------------------------------------------------- summaries without file access


@pytest.mark.parametrize(
    ("args", "summaries"),
    [
        (["-c", "select 1", "-X", "-v", "ON_ERROR_STOP=1"], ["-c select 1"]),
        (["-f", "/gone/a.sql", "-f", "-", "--command=x"], ["-f /gone/a.sql", "-f -", "-c x"]),
        (["-q", "-X", "-v", "ON_ERROR_STOP=1"], [""]),
        (["-h", "db"], []),
    ],
)
def test_summaries_from_stored_args(args: list[str], summaries: list[str]) -> None:
    assert psql_args_summaries(args) == summaries
    assert [s.args_summary for s in split_psql_steps(args)] == summaries


def test_summaries_match_parsed_steps(sql_dir: Path) -> None:
    args = ["-c", "a", "-f", str(sql_dir / "a.sql"), "-f", "-"]
    plan = parse_psql_args(args, "x", cwd=sql_dir)
    assert psql_args_summaries(plan.normalized_args) == [s.args_summary for s in plan.steps]
