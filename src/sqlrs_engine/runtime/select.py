"""Choosing the container runtime once at start-up (SPEC §0.2), never silently."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlrs_engine.errors import StartupRefused
from sqlrs_engine.runtime import host
from sqlrs_engine.runtime.base import Runtime
from sqlrs_engine.runtime.host import HostRuntime

VALID = ("auto", "docker", "podman", "host")


class RuntimeSelectionError(StartupRefused):
    """No usable runtime: the engine refuses to start with this message."""


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: Runtime
    reason: str


def select_runtime(
    configured: str, host_user: str | None, host_bin_dirs: list[str], environ: dict[str, str]
) -> RuntimeChoice:
    """`SQLRS_CONTAINER_RUNTIME` overrides config `container.runtime`; see §0.2 for `auto`."""
    override = environ.get("SQLRS_CONTAINER_RUNTIME", "").strip()
    wanted = os.path.basename(override) if override else configured
    if wanted not in VALID:
        raise RuntimeSelectionError(
            f"unknown container runtime {wanted!r}: use one of {', '.join(VALID)}"
        )
    if wanted in ("docker", "podman"):
        raise RuntimeSelectionError(
            f"container runtime {wanted!r} is not available in this engine version yet; "
            "use 'host' (PostgreSQL installed on this machine) or 'auto'"
        )
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
    source = "configured host" if wanted == "host" else "auto: no Docker runtime in this version"
    reason = (
        f"container runtime host ({source}; PostgreSQL majors "
        f"{', '.join(map(str, majors))}; servers run as {runtime.user.name})"
    )
    return RuntimeChoice(runtime, reason)
