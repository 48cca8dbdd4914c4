"""The engine started exactly as the `sqlrs` CLI starts it, as root (SPEC §0.2, issue 9).

The CLI creates `$XDG_STATE_HOME/sqlrs` (default `~/.local/state/sqlrs`) and its missing
parents 0700, then runs `sqlrs-engine --run-dir <dir> --listen 127.0.0.1:0
--write-engine-json <state dir>/engine.json --idle-timeout 2m0s` with the store under the
state dir. As root, the home directory itself is 0700 too: every one of these directories
blocks the `postgres` server user until the engine grants it search permission — by ACL, for
that user only, never by widening a mode.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import pytest

from sqlrs_engine.runtime.acl import GROUP, GROUP_OBJ, OTHER, USER, read_acl
from tests.support.engine_process import engine_command, start_engine
from tests.support.faults import acl_less_fs
from tests.support.prepare import prepare, psql_body, query

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the CLI layout problem exists only when the engine runs as root"
)


def cli_state_dir(home: Path) -> Path:
    """What the CLI creates: the state dir and every missing parent, mode 0700."""
    state_dir = home / ".local" / "state" / "sqlrs"
    for directory in [home, home / ".local", home / ".local" / "state", state_dir]:
        directory.mkdir(mode=0o700)
    return state_dir


def cli_args(state_dir: Path) -> list[str]:
    return ["--run-dir", str(state_dir / "run")]


def test_engine_under_the_cli_directories_as_root(scratch_dir: Path) -> None:
    home = scratch_dir / "home"
    state_dir = cli_state_dir(home)
    before = {d: stat.S_IMODE(d.stat().st_mode) for d in [scratch_dir, *state_dir.parents]}
    before[state_dir] = 0o700
    env = {"HOME": str(home), "SQLRS_STATE_STORE": ""}  # the CLI's default store location
    engine = start_engine(state_dir, *cli_args(state_dir), env=env, idle_timeout="2m0s")
    store = state_dir / "state-store"
    try:
        assert engine.state_store == store or store.is_dir()
        outcome = prepare(
            engine, psql_body("-c", "create table t(a int); insert into t values (7)")
        )
        assert outcome.status["status"] == "succeeded", outcome.status
        instance_id = outcome.status["result"]["instance_id"]
        ran = engine.post(
            "/v1/runs",
            json={"instance_ref": instance_id, "kind": "psql", "args": ["-c", "select a from t"]},
        )
        assert ran.status_code == 200
        lines = [json.loads(line) for line in ran.text.splitlines() if line]
        assert lines[-1] == {"type": "exit", "exit_code": 0, "ts": lines[-1]["ts"]}
        assert any(e["type"] == "stdout" and "7" in e["data"] for e in lines)
        assert query(outcome.dsn, "select count(*) from t") == "1"
        deleted = engine.delete(f"/v1/instances/{instance_id}")
        assert deleted.status_code == 200 and deleted.json()["outcome"] == "deleted"
        log = engine.stderr_text()
    finally:
        assert engine.stop() == 0

    postgres = pwd.getpwnam("postgres").pw_uid
    granted = [home, home / ".local", home / ".local" / "state", state_dir, store]
    for directory in granted:
        acl = read_acl(directory)
        mode = before.get(directory, 0o700)
        # Nothing widened: other and the owning group keep exactly their bits …
        assert acl.perm(OTHER) == mode & 0o7, directory
        assert acl.perm(GROUP_OBJ) == (mode >> 3) & 0o7, directory
        # … and the only named entry is search permission for the server user.
        named = [(e.tag, e.id, e.perm) for e in acl.entries if e.tag in (USER, GROUP)]
        assert named == [(USER, postgres, 1)], directory
        assert f"granted OS user postgres search permission on {directory} " in log
    assert stat.S_IMODE(scratch_dir.stat().st_mode) == before[scratch_dir]  # was reachable
    assert read_acl(scratch_dir).perm(USER, postgres) is None


def test_refusal_names_every_blocking_directory_where_acls_are_impossible(
    scratch_dir: Path,
) -> None:
    with acl_less_fs(scratch_dir / "home") as home:
        state_dir = home / ".local" / "state" / "sqlrs"
        for directory in [home / ".local", home / ".local" / "state", state_dir]:
            directory.mkdir(mode=0o700)
        env = dict(os.environ, HOME=str(home), SQLRS_STATE_STORE="")
        args = [
            *cli_args(state_dir),
            "--listen",
            "127.0.0.1:0",
            "--write-engine-json",
            str(state_dir / "engine.json"),
            "--idle-timeout",
            "2m0s",
        ]
        started = time.monotonic()
        result = subprocess.run(
            engine_command(args), env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1, result.stderr
        assert time.monotonic() - started < 60
        blocking = [home, home / ".local", home / ".local" / "state", state_dir]
        blocking.append(state_dir / "state-store")
        for directory in blocking:
            assert f"{directory} (owner root, mode 0700)" in result.stderr, result.stderr
        assert "does not support ACLs" in result.stderr
        assert "setfacl -m u:postgres:x" in result.stderr
        assert not (state_dir / "engine.json").exists()
        log = (state_dir / "logs" / "engine.log").read_text()
        refusals = [line for line in log.splitlines() if "engine refused to start" in line]
        assert len(refusals) == 1 and "Traceback" not in log
        for directory in [home, home / ".local", state_dir]:
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700  # nothing was opened
