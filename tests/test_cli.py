"""`sqlrs-engine` flags and exit codes (SPEC §1.1, §1.2), in-process and table-driven.

The `sqlrs` CLI is written against Go's `flag` package, so every spelling Go accepts must
parse the same way here. tests/e2e/test_process.py runs the real process for a few of these;
this file covers the parsing rules one by one without starting anything.
"""

from __future__ import annotations

import resource
import stat
from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine.cli import EXIT_FAILURE, EXIT_USAGE, main, parse_options, raise_open_file_limit

REQUIRED = ["--listen", "127.0.0.1:0", "--write-engine-json", "/srv/sqlrs/engine.json"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (REQUIRED, {"listen_host": "127.0.0.1", "listen_port": 0}),
        # Go flag spellings: -x and --x, -x=v and --x v.
        (["-listen=127.0.0.1:0", "-write-engine-json=/srv/sqlrs/engine.json"], {}),
        (["-listen", "127.0.0.1:0", "-write-engine-json", "/srv/sqlrs/engine.json"], {}),
        (["--write-engine-json=/srv/sqlrs/engine.json", "--listen=127.0.0.1:0"], {}),
        ([*REQUIRED, "--listen", "127.0.0.1:7070"], {"listen_port": 7070}),  # last one wins
        (["--listen", "[::1]:8080", "--write-engine-json", "/e.json"], {"listen_host": "::1"}),
        (["--listen", "localhost:65535", "--write-engine-json", "/e.json"], {"listen_port": 65535}),
        # defaults
        (REQUIRED, {"idle_timeout": 30.0, "version": "dev", "http_threads": None}),
        # --idle-timeout: Go durations, 0 or negative disables idle shutdown
        ([*REQUIRED, "--idle-timeout", "0"], {"idle_timeout": 0.0}),
        ([*REQUIRED, "--idle-timeout", "2m0s"], {"idle_timeout": 120.0}),
        ([*REQUIRED, "--idle-timeout", "1h30m"], {"idle_timeout": 5400.0}),
        ([*REQUIRED, "--idle-timeout", "500ms"], {"idle_timeout": 0.5}),
        ([*REQUIRED, "-idle-timeout=1.5h"], {"idle_timeout": 5400.0}),
        ([*REQUIRED, "--idle-timeout=-1s"], {"idle_timeout": -1.0}),
        ([*REQUIRED, "--idle-timeout", "+30s"], {"idle_timeout": 30.0}),
        # --version is a value (hashed into states), not a request to print one
        ([*REQUIRED, "--version", "1.2.3"], {"version": "1.2.3"}),
        ([*REQUIRED, "-version=v0.9.0-rc1"], {"version": "v0.9.0-rc1"}),
        ([*REQUIRED, "--http-threads", "4"], {"http_threads": 4}),
        ([*REQUIRED, "--http-threads=128"], {"http_threads": 128}),
        # non-loopback listening needs the opt-in (SPEC §0.9)
        (REQUIRED, {"non_loopback": False}),
        (["--listen", "127.0.0.2:1", "--write-engine-json", "/e.json"], {"non_loopback": False}),
        (
            ["--listen", "0.0.0.0:0", "--write-engine-json", "/e.json", "--allow-non-loopback"],
            {"listen_host": "0.0.0.0", "non_loopback": True},
        ),
        (
            ["-allow-non-loopback", "--listen", "[::]:0", "--write-engine-json", "/e.json"],
            {"listen_host": "::", "non_loopback": True},
        ),
    ],
)
def test_accepted_flags(argv: list[str], expected: dict[str, Any]) -> None:
    options = parse_options(argv, {})
    assert {name: getattr(options, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("engine_json", "environ", "store"),
    [
        ("/srv/sqlrs/engine.json", {}, "/srv/sqlrs/state-store"),
        ("/srv/sqlrs/engine.json", {"SQLRS_STATE_STORE": ""}, "/srv/sqlrs/state-store"),
        ("/srv/sqlrs/engine.json", {"SQLRS_STATE_STORE": "/data/store"}, "/data/store"),
        ("/srv/sqlrs/engine.json", {"SQLRS_STATE_STORE": "rel/store"}, "{cwd}/rel/store"),
        ("run/engine.json", {}, "{cwd}/run/state-store"),
    ],
)
def test_state_store_and_engine_json_paths(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine_json: str,
    environ: dict[str, str],
    store: str,
) -> None:
    """SPEC §1.2: `SQLRS_STATE_STORE`, else `<dirname(engine.json)>/state-store`; both
    absolute, so a later chdir cannot move them."""
    monkeypatch.chdir(tmp_path)
    options = parse_options(
        ["--listen", "127.0.0.1:0", "--write-engine-json", engine_json], environ
    )
    assert options.state_store == Path(store.format(cwd=tmp_path))
    assert options.engine_json.is_absolute()
    assert options.engine_json == tmp_path / engine_json


def test_run_dir_is_created_with_mode_0700(tmp_path: Path) -> None:
    run_dir = tmp_path / "a" / "run"
    parse_options([*REQUIRED, "--run-dir", str(run_dir)], {})
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    parse_options([*REQUIRED, "-run-dir=" + str(run_dir)], {})  # existing: fine


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "missing --listen"),
        (["--write-engine-json", "/e.json"], "missing --listen"),
        (["--listen=", "--write-engine-json", "/e.json"], "missing --listen"),
        (["--listen", "127.0.0.1:0"], "missing --write-engine-json"),
        (["--listen", "127.0.0.1:0", "--write-engine-json="], "missing --write-engine-json"),
        (["--listen"], "expected one argument"),
        (["--listen", "nonsense", "--write-engine-json", "/e.json"], "invalid --listen"),
        (["--listen", "127.0.0.1:http", "--write-engine-json", "/e.json"], "expected host:port"),
        (["--listen", "127.0.0.1:99999", "--write-engine-json", "/e.json"], "port out of range"),
        ([*REQUIRED, "--idle-timeout", "5"], 'time: missing unit in duration "5"'),
        ([*REQUIRED, "--idle-timeout", "soon"], 'time: invalid duration "soon"'),
        ([*REQUIRED, "--idle-timeout="], 'time: invalid duration ""'),
        ([*REQUIRED, "--idle-timeout", "3d"], 'time: unknown unit "d" in duration "3d"'),
        ([*REQUIRED, "--http-threads", "3"], "--http-threads must be between 4 and 4096"),
        ([*REQUIRED, "--http-threads", "4097"], "--http-threads must be between 4 and 4096"),
        ([*REQUIRED, "--http-threads", "many"], "invalid int value"),
        ([*REQUIRED, "--bogus"], "unrecognized arguments: --bogus"),
        ([*REQUIRED, "--idle", "1s"], "unrecognized arguments"),  # no abbreviations, like Go
        (["--listen", "0.0.0.0:0", "--write-engine-json", "/e.json"], "--allow-non-loopback"),
        (["--listen", "[::]:0", "--write-engine-json", "/e.json"], "not a loopback address"),
        (["--listen", "192.168.1.5:0", "--write-engine-json", "/e.json"], "not a loopback address"),
        (["--listen", "example.com:0", "--write-engine-json", "/e.json"], "not a loopback address"),
    ],
)
def test_flag_errors_exit_2_with_the_reason(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err.startswith("sqlrs-engine: ")
    assert message in err


def test_a_negative_idle_timeout_as_a_separate_argument() -> None:
    """SPEC §1.1: `--x v` is accepted and a negative duration disables idle shutdown."""
    options = parse_options([*REQUIRED, "--idle-timeout", "-1s"], {})
    assert options.idle_timeout == -1.0


def test_an_unusable_run_dir_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a flag error: a start-up failure (SPEC §1.1), reported before logging starts."""
    (tmp_path / "file").write_text("")
    argv = [*REQUIRED, "--run-dir", str(tmp_path / "file" / "run")]
    assert main(argv) == EXIT_FAILURE == 1
    err = capsys.readouterr().err
    assert err.startswith("sqlrs-engine: ") and "file/run" in err


def test_help_lists_every_flag_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["-h"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--listen", "--write-engine-json", "--run-dir", "--idle-timeout", "--version"):
        assert flag in out


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    """A thousand streams need a thousand sockets: the soft limit goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        limit = raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (limit, hard)
        assert limit == hard or (hard == resource.RLIM_INFINITY and limit >= lowered)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
