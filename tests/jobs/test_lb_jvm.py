"""The warm Liquibase JVM (jobs/kinds/lb_jvm.py) with the real Liquibase 4.28 and JDK."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.jobs.kinds.lb_jvm import (
    CLASS_NAME,
    WarmLiquibase,
    direct_command,
    liquibase_home,
)

LIQUIBASE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "liquibase"


def test_commands_share_one_jvm_and_the_program_is_compiled_once(tmp_path: Path) -> None:
    assert liquibase_home(str(LIQUIBASE)) is not None, "run scripts/bootstrap"
    cancel = CancelToken()
    warm = WarmLiquibase.start(
        str(LIQUIBASE), tools_dir=tmp_path, cwd=str(tmp_path), env=dict(os.environ), cancel=cancel
    )
    assert warm is not None
    try:
        pids = set()
        for _ in range(2):
            lines: list[str] = []
            assert warm.run(["--version"], lines.append) == 0
            assert any(line.startswith("Liquibase Version: 4.28") for line in lines)
            pids.add(warm._proc.pid)
        assert len(pids) == 1
        failed: list[str] = []
        assert warm.run(["no-such-command"], failed.append) != 0
        assert any("no-such-command" in line for line in failed)
        assert warm.run(["--version"], lambda _line: None) == 0, "a failure keeps the JVM usable"
    finally:
        warm.close()
    classes = list(tmp_path.glob(f"liquibase-stepper/*/{CLASS_NAME}.class"))
    assert len(classes) == 1
    # the JVM runs as the unprivileged client user when the engine is root (SPEC §0.9)
    assert [_mode(p) for p in (tmp_path, classes[0].parent.parent, classes[0].parent)] == [
        0o755
    ] * 3
    assert _mode(classes[0]) == 0o644
    classes[0].parent.chmod(0o700)  # compiled by an engine that kept it private
    stamp = classes[0].stat().st_mtime_ns
    again = WarmLiquibase.start(
        str(LIQUIBASE), tools_dir=tmp_path, cwd=None, env=dict(os.environ), cancel=CancelToken()
    )
    assert again is not None
    again.close()
    assert classes[0].stat().st_mtime_ns == stamp, "not compiled again"
    assert _mode(classes[0].parent) == 0o755, "but made readable"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_per_command_jvm_is_started_directly() -> None:
    """What the launcher script runs, so that the parent-death signal reaches the JVM."""
    home = liquibase_home(str(LIQUIBASE))
    assert home is not None
    direct = direct_command(str(LIQUIBASE), {**os.environ, "JAVA_OPTS": "-Xss1m -Dx=y"})
    assert direct is not None
    argv, env = direct
    assert Path(argv[0]).name == "java" and os.access(argv[0], os.X_OK)
    assert argv[1:] == ["-Xss1m", "-Dx=y", "-jar", str(home / "internal/lib/liquibase-core.jar")]
    assert env == {"LIQUIBASE_HOME": str(home)}


def test_cancel_kills_the_jvm_mid_command(tmp_path: Path) -> None:
    cancel = CancelToken()
    warm = WarmLiquibase.start(
        str(LIQUIBASE), tools_dir=tmp_path, cwd=None, env=dict(os.environ), cancel=cancel
    )
    assert warm is not None
    pid = warm._proc.pid
    # a listener that never answers: the JDBC handshake waits until the JVM is killed
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    port = silent.getsockname()[1]
    timer = threading.Timer(1.0, cancel.cancel)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(JobFailure) as raised:
            warm.run(
                [f"--url=jdbc:postgresql://127.0.0.1:{port}/x", "--username=x", "status"],
                lambda _line: None,
            )
        assert raised.value.code == "cancelled"
    finally:
        timer.cancel()
        warm.close()
        silent.close()
    assert time.monotonic() - started < 60
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_launcher_outside_a_distribution_falls_back(tmp_path: Path) -> None:
    script = tmp_path / "liquibase"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    warm = WarmLiquibase.start(
        str(script), tools_dir=tmp_path, cwd=None, env=dict(os.environ), cancel=CancelToken()
    )
    assert warm is None
    assert direct_command(str(script), os.environ) is None
