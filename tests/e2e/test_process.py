"""The engine process: flags, engine.json, logging, signals, idle timeout (SPEC §1)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
import requests

from sqlrs_engine.affinity import SPAWNER_THREADS, cpu_list
from sqlrs_engine.runtime.acl import GROUP, GROUP_OBJ, OTHER, USER, read_acl
from tests.support.cpus import EVERY_CPU, allowed_list_of, needs_two_cpus
from tests.support.engine_process import EngineProcess, engine_command, start_engine
from tests.support.prepare import assert_succeeded, prepare, psql_body, query


def test_engine_json_describes_the_running_engine(scratch_dir: Path) -> None:
    engine = start_engine(scratch_dir, "--version", "1.2.3")
    try:
        info = json.loads(engine.engine_json.read_text())
        assert set(info) == {"endpoint", "pid", "startedAt", "authToken", "version", "instanceId"}
        assert info["endpoint"].startswith("127.0.0.1:")
        assert info["pid"] == engine.process.pid
        assert info["version"] == "1.2.3"
        assert len(info["authToken"]) == 64 and int(info["authToken"], 16) >= 0
        assert len(info["instanceId"]) == 32
        assert info["startedAt"].endswith("Z")
        assert stat.S_IMODE(engine.engine_json.stat().st_mode) == 0o600
        assert engine.engine_json.read_text().startswith('{\n  "')
        health = requests.get(engine.base_url + "/v1/health", timeout=5).json()
        assert health == {
            "ok": True,
            "version": "1.2.3",
            "instanceId": info["instanceId"],
            "pid": info["pid"],
        }
        log_file = scratch_dir / "logs" / "engine.log"
        assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(log_file.parent.stat().st_mode) == 0o700
        assert "sqlrs-engine version=1.2.3" in log_file.read_text()
        # Private to the engine's user; as root, the server user may only search it, through
        # one ACL entry (the mode's group bits then show the ACL mask, --x).
        assert stat.S_IMODE(engine.state_store.stat().st_mode) & 0o067 == 0
        acl = read_acl(engine.state_store)
        assert acl.perm(GROUP_OBJ) == 0 and acl.perm(OTHER) == 0
        named = [e for e in acl.entries if e.tag in (USER, GROUP)]
        if os.geteuid() == 0:
            assert [(e.id, e.perm) for e in named] == [(pwd.getpwnam("postgres").pw_uid, 1)]
        else:
            assert named == []
    finally:
        assert engine.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_gracefully_and_removes_engine_json(scratch_dir: Path, sig: int) -> None:
    engine = start_engine(scratch_dir)
    assert engine.stop(sig) == 0
    assert not engine.engine_json.exists()
    log = engine.stderr_text()
    assert "engine stopped" in log
    assert "registry stopped" in log


def test_idle_timeout_stops_an_unused_engine(scratch_dir: Path) -> None:
    engine = start_engine(scratch_dir, idle_timeout="1s")
    code = engine.process.wait(timeout=20)
    assert code == 0
    assert not engine.engine_json.exists()
    assert "idle timeout" in engine.stderr_text()


def test_open_requests_keep_the_engine_alive(scratch_dir: Path) -> None:
    engine = start_engine(scratch_dir, idle_timeout="2s")
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert engine.get("/v1/states").status_code == 200
            time.sleep(0.5)
        assert engine.process.poll() is None
    finally:
        engine.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--write-engine-json", "/tmp/x.json"], "missing --listen"),
        (["--listen", "127.0.0.1:0"], "missing --write-engine-json"),
        (
            ["--listen", "127.0.0.1:0", "--write-engine-json", "/tmp/x.json", "--bogus"],
            "unrecognized",
        ),
        (
            [
                "--listen",
                "127.0.0.1:0",
                "--write-engine-json",
                "/tmp/x.json",
                "--idle-timeout",
                "5",
            ],
            "missing unit",
        ),
        (
            [
                "--listen",
                "127.0.0.1:0",
                "--write-engine-json",
                "/tmp/x.json",
                "--idle-timeout",
                "soon",
            ],
            "invalid duration",
        ),
        (["--listen", "nonsense", "--write-engine-json", "/tmp/x.json"], "invalid --listen"),
        (
            ["--listen", "127.0.0.1:99999", "--write-engine-json", "/tmp/x.json"],
            "port out of range",
        ),
    ],
)
def test_bad_flags_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run(engine_command(args), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("style", ["-listen=127.0.0.1:0", "--listen=127.0.0.1:0"])
def test_go_flag_spellings_are_accepted(scratch_dir: Path, style: str) -> None:
    engine_json = scratch_dir / "engine.json"
    process = subprocess.Popen(
        engine_command([style, "-write-engine-json", str(engine_json), "-idle-timeout=1s"]),
        env={"SQLRS_STATE_STORE": str(scratch_dir / "store"), "PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
    )
    assert process.wait(timeout=30) == 0, process.stderr.read() if process.stderr else ""


def test_start_up_failure_exits_1_with_the_reason(scratch_dir: Path) -> None:
    store = scratch_dir / "store"
    store.mkdir()
    (store / "config.json").write_text("[1, 2]")
    result = subprocess.run(
        engine_command(
            ["--listen", "127.0.0.1:0", "--write-engine-json", str(scratch_dir / "engine.json")]
        ),
        env={"SQLRS_STATE_STORE": str(store), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "config" in result.stderr and "JSON object" in result.stderr
    assert not (scratch_dir / "engine.json").exists()


def test_listen_port_in_use_exits_1(scratch_dir: Path) -> None:
    (scratch_dir / "a").mkdir()
    first = start_engine(scratch_dir / "a")
    try:
        port = first.info["endpoint"].rsplit(":", 1)[1]
        result = subprocess.run(
            engine_command(
                [
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--write-engine-json",
                    str(scratch_dir / "b.json"),
                ]
            ),
            env={"SQLRS_STATE_STORE": str(scratch_dir / "b-store"), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
        assert "address" in result.stderr.lower() or "in use" in result.stderr.lower()
    finally:
        first.stop()


def test_log_level_from_config_is_applied_at_start(scratch_dir: Path) -> None:
    store = scratch_dir / "state-store"
    store.mkdir()
    (store / "config.json").write_text('{"log": {"level": "warn"}}')
    engine = start_engine(scratch_dir)
    try:
        assert engine.get("/v1/states").status_code == 200
    finally:
        engine.stop()
    log = engine.stderr_text()
    assert "http request" not in log, "info lines are dropped at level warn"
    assert "sqlrs-engine version=" in log, "the first line is written before config is read"


@needs_two_cpus
def test_the_engine_shares_one_cpu_and_its_servers_get_every_cpu(
    engine: EngineProcess, scratch_dir: Path
) -> None:
    every_cpu = cpu_list(EVERY_CPU)  # the engine inherited ours
    outcome = prepare(engine, psql_body("-c", "create table t(a int)"))
    assert_succeeded(engine, outcome)
    checkpointer = query(
        outcome.dsn, "select pid from pg_stat_activity where backend_type = 'checkpointer'"
    )
    assert allowed_list_of(f"/proc/{int(checkpointer)}") == every_cpu
    tasks = f"/proc/{engine.process.pid}/task"
    found = [allowed_list_of(f"{tasks}/{tid}") for tid in os.listdir(tasks)]
    threads = [cpus for cpus in found if cpus is not None]  # not those that just ended
    pinned = [cpus for cpus in threads if cpus != every_cpu]
    (cpu,) = set(pinned)  # every thread but the spawners, on one CPU
    assert cpu.isdigit() and len(threads) - len(pinned) <= SPAWNER_THREADS
    log = (scratch_dir / "logs" / "engine.log").read_text()
    assert f"engine threads on CPU {cpu}; child processes on CPUs {every_cpu}" in log
