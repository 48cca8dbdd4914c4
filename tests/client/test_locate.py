"""Where the client looks for engine.json (as the sqlrs CLI) and how it reads it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sqlrs_engine.client.locate import (
    EngineEndpoint,
    EngineLocator,
    default_state_dir,
    engine_command,
    is_live,
    read_engine_json,
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HOME": "/home/u"}, "/home/u/.local/state/sqlrs"),
        ({"HOME": "/home/u", "XDG_STATE_HOME": "/x/state"}, "/x/state/sqlrs"),
        ({"HOME": "/home/u", "XDG_STATE_HOME": "relative"}, "/home/u/.local/state/sqlrs"),
        ({"HOME": "/home/u", "XDG_STATE_HOME": ""}, "/home/u/.local/state/sqlrs"),
    ],
)
def test_default_state_dir(env: dict[str, str], expected: str) -> None:
    assert default_state_dir(env) == Path(expected)


def test_engine_json_fields(tmp_path: Path) -> None:
    path = tmp_path / "engine.json"
    path.write_text(
        json.dumps(
            {
                "endpoint": "127.0.0.1:1234",
                "pid": 42,
                "startedAt": "2026-01-01T00:00:00Z",
                "authToken": "t" * 64,
                "version": "dev",
                "instanceId": "a" * 32,
            }
        )
    )
    info = read_engine_json(path)
    assert info == EngineEndpoint("127.0.0.1:1234", 42, "a" * 32, "dev", "t" * 64)
    assert info.base_url == "http://127.0.0.1:1234"
    assert "t" * 64 not in repr(info)  # the token never shows up in logs or reports


@pytest.mark.parametrize("text", ["", "{", "[]", '{"endpoint": "x"}', '{"pid": "no"}'])
def test_unusable_engine_json_is_ignored(tmp_path: Path, text: str) -> None:
    path = tmp_path / "engine.json"
    path.write_text(text)
    assert read_engine_json(path) is None
    assert read_engine_json(tmp_path / "missing.json") is None


def test_a_dead_pid_is_not_live() -> None:
    # pid 0 is never a process; health is not even asked (nothing listens on port 9).
    assert not is_live(EngineEndpoint("127.0.0.1:9", 0, "a" * 32, "dev", "t"))


def test_a_live_pid_without_an_engine_is_not_live() -> None:
    assert not is_live(EngineEndpoint("127.0.0.1:9", os.getpid(), "a" * 32, "dev", "t"), 1.0)


def test_start_command_is_the_clis(tmp_path: Path) -> None:
    locator = EngineLocator(state_dir=tmp_path, engine_path="/opt/sqlrs-engine")
    assert locator.start_command() == [
        "/opt/sqlrs-engine",
        "--run-dir",
        str(tmp_path / "run"),
        "--listen",
        "127.0.0.1:0",
        "--write-engine-json",
        str(tmp_path / "engine.json"),
        "--idle-timeout",
        "2m0s",
    ]


def test_engine_command_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQLRS_ENGINE_PATH", raising=False)
    assert engine_command()[1:] == ["-m", "sqlrs_engine"]
    monkeypatch.setenv("SQLRS_ENGINE_PATH", "/usr/bin/sqlrs-engine")
    assert engine_command() == ["/usr/bin/sqlrs-engine"]
    assert engine_command("/x") == ["/x"]
