"""Choosing the container runtime once at start-up (SPEC §0.2), never silently.

- `host`: the PostgreSQL binaries installed on this machine.
- `docker`: a Docker-API engine through the docker SDK at `DOCKER_HOST`, else the default
  Docker socket.
- `podman`: Podman's Docker-compatible API socket at `DOCKER_HOST`, else its usual places
  (rootful `/run/podman/podman.sock`, rootless `$XDG_RUNTIME_DIR/podman/podman.sock`).
- `auto`: the first of those engines that answers a ping; else `host`, saying in the log which
  sockets were tried.

An engine asked for by name that does not answer refuses start-up, naming the sockets tried.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlrs_engine.errors import StartupRefused
from sqlrs_engine.runtime import host
from sqlrs_engine.runtime.base import Runtime
from sqlrs_engine.runtime.docker import APIFailure, DockerRuntime, connect
from sqlrs_engine.runtime.host import HostRuntime

VALID = ("auto", "docker", "podman", "host")
DOCKER_SOCKET = "unix:///var/run/docker.sock"
PODMAN_ROOTFUL_SOCKET = "unix:///run/podman/podman.sock"
PING_TIMEOUT = 5.0


class RuntimeSelectionError(StartupRefused):
    """No usable runtime: the engine refuses to start with this message."""


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: Runtime
    reason: str


def engine_sockets(wanted: str, environ: dict[str, str]) -> list[str]:
    """The API addresses to try for `docker`, `podman` or `auto`, in order (no duplicates)."""
    docker_host = environ.get("DOCKER_HOST", "").strip()
    if docker_host and wanted in ("docker", "podman"):
        return [docker_host]
    podman = [PODMAN_ROOTFUL_SOCKET]
    runtime_dir = environ.get("XDG_RUNTIME_DIR", "").strip()
    if runtime_dir:
        podman.append(f"unix://{runtime_dir}/podman/podman.sock")
    if wanted == "docker":
        candidates = [DOCKER_SOCKET]
    elif wanted == "podman":
        candidates = podman
    else:
        candidates = ([docker_host] if docker_host else []) + [DOCKER_SOCKET, *podman]
    return list(dict.fromkeys(candidates))


def _reachable(base_url: str) -> bool:
    """A cheap check before connecting: a unix socket that does not exist is not tried."""
    if base_url.startswith("unix://"):
        return os.path.exists(base_url[len("unix://") :])
    return True


def select_runtime(
    configured: str,
    host_user: str | None,
    host_bin_dirs: list[str],
    environ: dict[str, str],
    store_root: Path | None = None,
) -> RuntimeChoice:
    """`SQLRS_CONTAINER_RUNTIME` overrides config `container.runtime`; see §0.2 for `auto`.

    `store_root` labels the containers of a container runtime (the state store they serve).
    """
    override = environ.get("SQLRS_CONTAINER_RUNTIME", "").strip()
    wanted = os.path.basename(override) if override else configured
    if wanted not in VALID:
        raise RuntimeSelectionError(
            f"unknown container runtime {wanted!r}: use one of {', '.join(VALID)}"
        )
    source = "configured" if wanted != "auto" else "auto"
    if wanted != "host":
        tried: list[str] = []
        for base_url in engine_sockets(wanted, environ):
            failure = "no such socket"
            if _reachable(base_url):
                try:
                    client = connect(base_url, PING_TIMEOUT)
                except APIFailure as exc:
                    failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                else:
                    runtime = DockerRuntime(client, store_root or Path.cwd(), base_url=base_url)
                    removed = runtime.sweep()
                    reason = (
                        f"container runtime {wanted if wanted != 'auto' else 'docker'} "
                        f"({source}; engine at {base_url}"
                        + (f"; removed {len(removed)} leftover containers" if removed else "")
                        + ")"
                    )
                    return RuntimeChoice(runtime, reason)
            tried.append(f"{base_url} ({failure})")
        if wanted != "auto":
            raise RuntimeSelectionError(
                f"container runtime {wanted!r}: no container engine answered at "
                f"{', '.join(tried)}; start the engine, or set DOCKER_HOST to its API socket "
                "(scripts/container-engine starts one with Podman)"
            )
        source = f"auto: no container engine answered at {', '.join(tried)}"
    return _host_choice(host_user, host_bin_dirs, source)


def _host_choice(host_user: str | None, host_bin_dirs: list[str], source: str) -> RuntimeChoice:
    runtime = HostRuntime(host_bin_dirs or None, host_user)
    majors = runtime.installed_majors()
    if not majors:
        looked = [str(d) for d in runtime.candidate_bin_dirs()]
        looked.append(f"{host.DEFAULT_BIN_ROOT}/<major>/bin")
        raise RuntimeSelectionError(
            f"no PostgreSQL server binaries found (looked in {', '.join(looked)}); install a "
            "PostgreSQL server package (e.g. `apt-get install postgresql`) or set "
            "runtime.host.binDirs"
        )
    if source == "configured":
        source = "configured host"
    reason = (
        f"container runtime host ({source}; PostgreSQL majors "
        f"{', '.join(map(str, majors))}; servers run as {runtime.user.name})"
    )
    return RuntimeChoice(runtime, reason)
