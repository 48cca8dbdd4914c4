"""Starting the engine as the sqlrs CLI does: one engine for concurrent clients, restarts."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlrs_engine.client import Client, EngineUnavailable
from sqlrs_engine.client.locate import read_engine_json
from sqlrs_engine.runtime import procs
from tests.support.dirs import make_scratch_dir, remove_scratch_dir


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A sqlrs state dir that does not exist yet (the client creates it 0700, as the CLI
    does); engines started in it are stopped afterwards."""
    scratch = make_scratch_dir()
    path = scratch / "state" / "sqlrs"
    try:
        yield path
    finally:
        info = read_engine_json(path / "engine.json")
        if info is not None and procs.is_alive(info.pid):
            os.kill(info.pid, signal.SIGTERM)
            procs.wait_dead([info.pid], 30)
        remove_scratch_dir(scratch)


CLIENT = """
import sys
from sqlrs_engine.client import Client
print(Client(state_dir=sys.argv[1]).health()["pid"], flush=True)
"""


def test_two_processes_starting_at_once_start_one_engine(state_dir: Path) -> None:
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(state_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [starter.communicate(timeout=180) for starter in starters]
    assert [starter.returncode for starter in starters] == [0, 0], outputs
    pids = {int(out.decode()) for out, _ in outputs}
    info = read_engine_json(state_dir / "engine.json")
    assert info is not None
    assert pids == {info.pid}
    engines = [pid for pid in procs.find_by_cmdline(str(state_dir / "engine.json"))]
    assert engines == [info.pid]
    assert (state_dir / "logs" / "engine.log").is_file()
    assert (state_dir / "run").is_dir()
    for directory in (state_dir.parent, state_dir):
        # Created 0700; the group bits now show the mask of the ACL entry the engine added
        # for the server user (search only): nobody else got anything.
        assert stat.S_IMODE(directory.stat().st_mode) in (0o700, 0o710)


def test_a_client_starts_a_new_engine_after_idle_shutdown(state_dir: Path) -> None:
    with Client(state_dir=state_dir, idle_timeout="1s") as client:
        first = client.health()["pid"]
        assert procs.wait_dead([first], 60), "an idle engine shuts itself down"
        second = client.health()["pid"]  # the pooled connection is dead: a new engine
        assert second != first
        assert client.list_instances() == []


def test_missing_state_dirs_are_created_private_and_start_errors_are_reported(
    tmp_path: Path,
) -> None:
    fake = tmp_path / "fake-engine"
    fake.write_text('#!/bin/sh\necho "cannot start: $*" >&2\nexit 1\n')
    fake.chmod(0o755)
    state = tmp_path / "a" / "b" / "sqlrs"
    client = Client(state_dir=state, engine_path=str(fake))
    with pytest.raises(EngineUnavailable) as failure:
        client.health()
    message = str(failure.value)
    assert "engine exited with code 1 during start-up" in message
    assert (
        f"cannot start: --run-dir {state}/run --listen 127.0.0.1:0 "
        f"--write-engine-json {state}/engine.json --idle-timeout 2m0s"
    ) in message
    for directory in (tmp_path / "a", tmp_path / "a" / "b", state):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_no_engine_and_no_autostart(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="auto-start is off"):
        Client(state_dir=tmp_path, autostart=False).health()


def test_a_stale_engine_json_is_not_trusted(state_dir: Path) -> None:
    stale = {
        "endpoint": "127.0.0.1:9",
        "pid": 999999999,
        "instanceId": "a" * 32,
        "authToken": "b" * 64,
        "version": "dev",
    }
    state_dir.mkdir(parents=True, mode=0o700)
    (state_dir / "engine.json").write_text(json.dumps(stale))
    with Client(state_dir=state_dir) as client:
        health = client.health()
    info = read_engine_json(state_dir / "engine.json")
    assert info is not None and health["instanceId"] == info.instance_id != "a" * 32
