"""Pieces of the lb kind that need no JVM: finding Liquibase, the plan cache, error details."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sqlrs_engine.errors import JobFailure
from sqlrs_engine.jobs.kinds.lb import (
    PlanCache,
    _failure_details,
    _password_of,
    find_executable,
    liquibase_cwd,
)
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.prepare.lb_args import LbArgs
from sqlrs_engine.prepare.plan import LbChangeset


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def request(liquibase_exec: str = "") -> PrepareRequest:
    return PrepareRequest(
        "lb", "postgres:15", liquibase_args=["update"], liquibase_exec=liquibase_exec
    )


@pytest.mark.parametrize(
    ("on_path", "requested", "configured", "expected"),
    [
        (True, "", None, "path"),
        (True, "{requested}", None, "requested"),
        (True, '"{requested}"', None, "requested"),
        (False, "", "{configured}", "configured"),
        (True, "", "{configured}", "path"),
    ],
)
def test_find_executable_order(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    on_path: bool,
    requested: str,
    configured: str | None,
    expected: str,
) -> None:
    paths = {
        "path": executable(tmp_path / "bin" / "liquibase"),
        "requested": executable(tmp_path / "req" / "lb"),
        "configured": executable(tmp_path / "conf" / "liquibase"),
    }
    monkeypatch.setenv("PATH", str(tmp_path / "bin") if on_path else str(tmp_path / "empty"))
    fill = {k: str(v) for k, v in paths.items()}
    config = configured.format(**fill) if configured else None
    found = find_executable(request(requested.format(**fill)), config)
    assert found == str(paths[expected])


def test_missing_liquibase_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JobFailure) as raised:
        find_executable(request(), None)
    assert raised.value.message == "liquibase is not installed"
    assert "liquibase_exec" in str(raised.value.details)
    assert "liquibase.exec" in str(raised.value.details)
    assert "npm" in str(raised.value.details)
    (tmp_path / "not-executable").write_text("")
    with pytest.raises(JobFailure) as raised:
        find_executable(request(str(tmp_path / "not-executable")), None)
    assert "is not an executable file" in str(raised.value.details)


def test_plan_cache_round_trip_and_damage(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path)
    plan = [LbChangeset("1", "a", "c.sql", "9:x"), LbChangeset("2", "b", "d.xml", "9:y")]
    assert cache.load("f" * 64) is None
    cache.store("f" * 64, plan)
    assert cache.load("f" * 64) == plan
    assert cache.load("e" * 64) is None
    assert os.stat(cache.dir).st_mode & 0o077 == 0, "private to the engine"
    (cache.dir / f"{'f' * 64}.json").write_text("{not json")
    assert cache.load("f" * 64) is None, "a damaged entry is a miss, not a failure"
    cache.store("d" * 64, [])
    assert cache.load("d" * 64) == []
    assert [p.name for p in cache.dir.iterdir() if p.name.startswith(".tmp")] == []


@pytest.mark.parametrize(
    ("lines", "details"),
    [
        (
            ["Starting Liquibase", "ERROR: Exception Primary Reason: boom", "done"],
            "ERROR: Exception Primary Reason: boom",
        ),
        (["Unexpected error running Liquibase: x"], "Unexpected error running Liquibase: x"),
        (["just", "output"], "just\noutput"),
        ([], "liquibase exited with code 1"),
    ],
)
def test_failure_details_prefer_liquibase_error_lines(lines: list[str], details: str) -> None:
    assert _failure_details(lines, 1) == details


@pytest.mark.parametrize(
    ("lb", "expected"),
    [
        (LbArgs(["update"], changelog="/p/db/c.xml", work_dir="/w"), "/w"),
        (LbArgs(["update"], changelog="/p/db/c.xml"), "/p/db"),
        (LbArgs(["update"], changelog="classpath:c.xml"), "/cwd"),
        (LbArgs(["update"]), "/cwd"),
    ],
)
def test_liquibase_cwd(lb: LbArgs, expected: str) -> None:
    assert liquibase_cwd(lb, Path("/cwd")) == expected


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("postgres://sqlrs@127.0.0.1:5432/postgres", None),
        ("postgres://sqlrs:s%40cret@127.0.0.1:5432/postgres", "s@cret"),
    ],
)
def test_password_goes_to_the_environment_only(dsn: str, password: str | None) -> None:
    assert _password_of(dsn) == password
