"""Start the real `sqlrs-engine` process and talk HTTP to it, as the `sqlrs` CLI does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

START_TIMEOUT = 30.0
RUNTIME_ENV = "SQLRS_CONTAINER_RUNTIME"
TEST_RUNTIME = "host"
"""The runtime every test engine uses unless the test asks for another one: with the
engine's default (`auto`), a machine where a Docker-compatible engine answers (`DOCKER_HOST`,
/var/run/docker.sock, Podman's socket) would silently run the host tests on containers."""


def engine_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an engine a test starts: this process's, the runtime pinned to
    `TEST_RUNTIME` (whatever the developer's shell says), then the test's own `env` — which
    is how the container tests ask for `docker`."""
    full_env = dict(os.environ)
    full_env[RUNTIME_ENV] = TEST_RUNTIME
    full_env.update(env or {})
    return full_env


@dataclass
class EngineProcess:
    """A running engine: its process, discovery info and an authenticated HTTP session."""

    process: subprocess.Popen[bytes]
    engine_json: Path
    state_store: Path
    info: dict[str, Any]
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def base_url(self) -> str:
        return f"http://{self.info['endpoint']}"

    @property
    def token(self) -> str:
        return str(self.info["authToken"])

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request(
        self, method: str, path: str, *, auth: bool = True, **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if auth:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("allow_redirects", False)
        return self.session.request(method, self.base_url + path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def ndjson(self, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Stream an NDJSON response line by line."""
        with self.request("GET", path, stream=True, **kwargs) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def stderr_text(self) -> str:
        log = self.engine_json.parent / "logs" / "engine.log"
        return log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""

    def log_excerpt(self, lines: int = 60) -> str:
        """The engine log's last lines without the per-request access lines: what a failed
        assertion should show of the engine's side."""
        kept = [
            line for line in self.stderr_text().splitlines() if " http request method=" not in line
        ]
        return "\n".join(kept[-lines:])


def engine_command(args: Sequence[str], python: str = sys.executable) -> list[str]:
    """`python -m sqlrs_engine args`: the interpreter's environment decides which code runs."""
    return [python, "-m", "sqlrs_engine", *args]


def start_engine(
    workdir: Path,
    *extra_args: str,
    env: Mapping[str, str] | None = None,
    idle_timeout: str = "0",
    state_store: Path | None = None,
    engine_json: Path | None = None,
    listen: str = "127.0.0.1:0",
    python: str = sys.executable,
) -> EngineProcess:
    """Start an engine whose engine.json lives in `workdir` (unless `engine_json` says where);
    wait until it answers health. It runs on the host runtime unless `env` names another
    (`engine_environment`); `python` is the interpreter (another checkout's venv runs that
    checkout's engine, as `bench/bench_pool_ab.py` does)."""
    engine_json = engine_json or workdir / "engine.json"
    store = state_store or workdir / "state-store"
    full_env = engine_environment({"SQLRS_STATE_STORE": str(store), **(env or {})})
    args = [
        "--listen",
        listen,
        "--write-engine-json",
        str(engine_json),
        "--idle-timeout",
        idle_timeout,
        *extra_args,
    ]
    process = subprocess.Popen(
        engine_command(args, python),
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            raise RuntimeError(f"engine exited with {process.returncode}: {err.decode()}")
        info = _read_info(engine_json)
        if info is not None and _healthy(info):
            return EngineProcess(process, engine_json, store, info)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("engine did not become healthy in time")


def _read_info(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _healthy(info: dict[str, Any]) -> bool:
    if str(info.get("endpoint", "")).startswith("0.0.0.0:"):
        info = {**info, "endpoint": "127.0.0.1:" + str(info["endpoint"]).split(":")[1]}
    try:
        response = requests.get(f"http://{info['endpoint']}/v1/health", timeout=2)
    except requests.RequestException:
        return False
    return response.ok and response.json().get("instanceId") == info.get("instanceId")
