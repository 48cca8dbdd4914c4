"""The Docker-API engine the docker runtime is tested against (Podman's API socket).

`SQLRS_TEST_DOCKER_HOST` (set by `.ci/run`) names it; otherwise `scripts/container-engine`
is run (idempotent, cached: it installs Podman, builds `localhost/postgres:15` once and starts
the API socket). In CI (`CI=true`) an unavailable engine fails the tests instead of skipping
them, so the container tests can never silently not run there.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

IMAGE = "localhost/postgres:15"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "container-engine"
LABEL_STORE = "sqlrs.store"


@functools.cache
def _docker_host() -> tuple[str | None, str]:
    given = os.environ.get("SQLRS_TEST_DOCKER_HOST", "").strip()
    if given:
        return given, ""
    if os.geteuid() != 0:
        return None, "the container engine is set up as root (scripts/container-engine)"
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or not lines[-1].startswith("DOCKER_HOST="):
        return None, f"scripts/container-engine failed: {result.stderr.strip()[-2000:]}"
    return lines[-1].split("=", 1)[1], ""


def docker_host() -> str:
    """The engine's API address, or skip (fail in CI) saying why there is none."""
    url, reason = _docker_host()
    if url is None:
        if os.environ.get("CI"):
            pytest.fail(f"no container engine in CI: {reason}")
        pytest.skip(reason)
    return url


def labeled_containers(store: Path | str) -> list[Any]:
    """Containers (running or not) labeled with this store: what a leak check looks for."""
    import docker

    client = docker.DockerClient(base_url=docker_host())
    try:
        store_label = str(Path(store).resolve())
        return list(
            client.containers.list(all=True, filters={"label": f"{LABEL_STORE}={store_label}"})
        )
    finally:
        client.close()


def remove_labeled(store: Path | str) -> None:
    """Force-remove every container labeled with this store (teardown after a failed test,
    so a failure does not leave servers running on a shared machine)."""
    for container in labeled_containers(store):
        container.remove(force=True)


def remove_containers_under(path: Path) -> None:
    """Force-remove every container whose store lies under `path` — a scratch dir's teardown.

    Servers outlive their engine by design, and a container's postgres is not a process under
    the scratch dir that `kill_servers_under` could find. A leaked container is worse than a
    running process: the NAT rule that publishes its port diverts that port from every host
    server that later listens on it. Does nothing unless this process has used the container
    engine (no container of a test can exist otherwise, and finding the engine may install
    it)."""
    url = os.environ.get("SQLRS_TEST_DOCKER_HOST", "").strip()
    if not url and _docker_host.cache_info().currsize:
        url = _docker_host()[0] or ""
    if not url or not _containers_run():
        return
    import docker

    prefix = os.path.realpath(path) + os.sep
    client = docker.DockerClient(base_url=url)
    try:
        for container in client.containers.list(all=True, filters={"label": LABEL_STORE}):
            if container.labels.get(LABEL_STORE, "").startswith(prefix):
                container.remove(force=True)
    except docker.errors.DockerException:
        pass  # the engine went away: nothing of ours can be left in it
    finally:
        client.close()


def _containers_run() -> bool:
    """Whether any container runs on this machine: each has a `conmon` (Podman) or
    `containerd-shim` (Docker) process. A look at /proc costs milliseconds; asking the
    engine, most of a second on a busy machine — and most scratch dirs never had one."""
    from sqlrs_engine.runtime import procs

    monitors = ("conmon", "containerd-shim", "containerd-shim-runc-v2")
    return any(os.path.basename(procs.exe(pid) or "") in monitors for pid in procs.all_pids())
