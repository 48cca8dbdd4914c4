"""What engine.log says: quiet by default, Pykka's actor lifecycle only at `debug`."""

from __future__ import annotations

from pathlib import Path

from tests.support.engine_process import start_engine
from tests.support.prepare import prepare, psql_body

PYKKA_LIFECYCLE = ("Registered ", "Unregistered ", "Stopped ", "Starting ")


def pykka_lines(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if " pykka: " in line and any(word in line for word in PYKKA_LIFECYCLE)
    ]


def test_actor_lifecycle_lines_only_at_debug(scratch_dir: Path) -> None:
    engine = start_engine(scratch_dir)
    try:
        assert engine.get("/v1/config", params={"path": "log.level"}).json() == {
            "path": "log.level",
            "value": "info",
        }
        assert prepare(engine, psql_body("-c", "select 1")).status["status"] == "succeeded"
        assert engine.patch("/v1/config", json={"path": "log.level", "value": "debug"}).ok
    finally:
        assert engine.stop() == 0
    quiet = engine.stderr_text()
    assert "http request method=POST path=/v1/prepare-jobs status=201" in quiet
    assert pykka_lines(quiet) == []

    restarted = start_engine(scratch_dir)  # log.level is read at start-up
    try:
        assert prepare(restarted, psql_body("-c", "select 2")).status["status"] == "succeeded"
    finally:
        assert restarted.stop() == 0
    verbose = restarted.stderr_text()[len(quiet) :]
    assert any("Registered PrepareJobActor" in line for line in pykka_lines(verbose))
