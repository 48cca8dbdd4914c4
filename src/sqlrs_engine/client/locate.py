"""Finding a running engine, or starting one, exactly as the `sqlrs` CLI does (SPEC §1.4).

Where: `$XDG_STATE_HOME/sqlrs/engine.json`, else `~/.local/state/sqlrs/engine.json` (an
`XDG_STATE_HOME` that is not absolute is ignored, as the XDG spec says). The file is trusted
only if its `pid` is alive and `GET /v1/health` answers with the file's `instanceId`: a stale
file left by a killed engine, or a port reused by someone else, is never talked to.

Starting: the state directory is created with mode 0700 (missing parents too), then the
engine runs detached (its own session, no terminal) as
`<engine> --run-dir <state>/run --listen 127.0.0.1:0 --write-engine-json <state>/engine.json
--idle-timeout <d>`. Concurrent clients (pytest-xdist workers, parallel CI jobs) serialize on
a `flock` of `<state>/engine.lock` and re-check under it, so two processes that both find no
engine start exactly one. The lock dies with its holder, so a crashed starter never blocks
the next one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests
import ujson

from sqlrs_engine.client.errors import EngineUnavailable
from sqlrs_engine.discovery import make_private_dirs
from sqlrs_engine.locks import FileLock, LockTimeout
from sqlrs_engine.runtime import procs

DEFAULT_IDLE_TIMEOUT = "2m0s"
"""The CLI's default `--idle-timeout` (Go `time.Duration.String()` of two minutes)."""

START_TIMEOUT = 120.0
"""Seconds to wait for a started engine to answer health (recovery runs before serving)."""

HEALTH_TIMEOUT = 5.0

ENGINE_ENV = "SQLRS_ENGINE_PATH"
"""Environment variable naming the engine executable (default: this distribution's engine)."""


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_STATE_HOME/sqlrs` when that is absolute, else `~/.local/state/sqlrs`."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "sqlrs"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "sqlrs"


def engine_command(engine_path: str | None = None) -> list[str]:
    """The engine to start: `engine_path`, else `$SQLRS_ENGINE_PATH`, else this package's."""
    path = engine_path or os.environ.get(ENGINE_ENV, "")
    if path:
        return [path]
    return [sys.executable, "-m", "sqlrs_engine"]


@dataclass(frozen=True)
class EngineEndpoint:
    """A trusted, running engine: where it listens and the token it wants."""

    endpoint: str
    pid: int
    instance_id: str
    version: str
    auth_token: str = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.endpoint}"


def read_engine_json(path: Path) -> EngineEndpoint | None:
    """The endpoint described by `path`, or None when it is missing, partial or malformed."""
    try:
        data = ujson.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return EngineEndpoint(
            endpoint=str(data["endpoint"]),
            pid=int(data["pid"]),
            instance_id=str(data["instanceId"]),
            version=str(data.get("version", "")),
            auth_token=str(data["authToken"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def is_live(info: EngineEndpoint, timeout: float = HEALTH_TIMEOUT) -> bool:
    """The CLI's rule: pid alive and health answers with the same instanceId."""
    if not procs.is_alive(info.pid):
        return False
    try:
        response = requests.get(f"{info.base_url}/v1/health", timeout=timeout)
        body = response.json() if response.ok else None
    except (requests.RequestException, ValueError):
        return False
    return isinstance(body, dict) and body.get("instanceId") == info.instance_id


_children: list[subprocess.Popen[bytes]] = []
"""Engines this process started: kept so they are reaped (no zombie, no ResourceWarning)."""
_children_lock = threading.Lock()


@dataclass
class EngineLocator:
    """Finds the engine of a state directory, starting it when allowed and needed."""

    state_dir: Path = field(default_factory=default_state_dir)
    engine_path: str | None = None
    idle_timeout: str = DEFAULT_IDLE_TIMEOUT
    autostart: bool = True
    env: Mapping[str, str] | None = None
    """Environment of a started engine (default: this process's)."""
    start_timeout: float = START_TIMEOUT

    @property
    def engine_json(self) -> Path:
        return self.state_dir / "engine.json"

    def find(self) -> EngineEndpoint | None:
        """The running engine, or None (never starts one)."""
        info = read_engine_json(self.engine_json)
        return info if info is not None and is_live(info) else None

    def ensure(self) -> EngineEndpoint:
        """The running engine, started first when there is none (and autostart is on)."""
        info = self.find()
        if info is not None:
            return info
        if not self.autostart:
            raise EngineUnavailable(
                f"no sqlrs engine is running for {self.engine_json} and auto-start is off"
            )
        make_private_dirs(self.state_dir)
        try:
            with FileLock(self.state_dir / "engine.lock", timeout=self.start_timeout):
                info = self.find()  # someone else may have started it while we waited
                return info if info is not None else self._start()
        except LockTimeout as error:
            raise EngineUnavailable(f"another process is starting the engine: {error}") from None

    def start_command(self) -> list[str]:
        """The argv of a started engine: the CLI's flags (SPEC §1.1)."""
        return [
            *engine_command(self.engine_path),
            "--run-dir",
            str(self.state_dir / "run"),
            "--listen",
            "127.0.0.1:0",
            "--write-engine-json",
            str(self.engine_json),
            "--idle-timeout",
            self.idle_timeout,
        ]

    def _start(self) -> EngineEndpoint:
        command = self.start_command()
        errors = self.state_dir / "engine-start.err"
        with open(errors, "wb") as stderr:
            os.chmod(errors, 0o600)
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    cwd=self.state_dir,
                    env=None if self.env is None else dict(self.env),
                    start_new_session=True,
                )
            except OSError as error:
                raise EngineUnavailable(f"cannot start engine {command[0]}: {error}") from None
        with _children_lock:
            _children[:] = [child for child in _children if child.poll() is None]
            _children.append(process)
        return self._wait_ready(process, errors)

    def _wait_ready(self, process: subprocess.Popen[bytes], errors: Path) -> EngineEndpoint:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                text = errors.read_text(encoding="utf-8", errors="replace").strip()
                raise EngineUnavailable(
                    f"engine exited with code {code} during start-up: {text or '(no output)'}"
                )
            info = read_engine_json(self.engine_json)
            if info is not None and info.pid == process.pid and is_live(info):
                return info
            time.sleep(0.05)
        raise EngineUnavailable(
            f"engine (pid {process.pid}) did not answer health within {self.start_timeout:g}s; "
            f"see {self.state_dir / 'logs' / 'engine.log'}"
        )
