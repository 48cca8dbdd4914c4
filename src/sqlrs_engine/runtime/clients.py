"""Client programs on the host: who they run as, and finding the ones a dead engine left.

SPEC §0.9: when the engine runs as root, the programs it runs for users — `psql` and
`pgbench` through `Runtime.run_client`, Liquibase (jobs/kinds/lb.py) — do not run as root.
Whatever the runtime, they are tagged with `CLIENT_TAG_ENV=<state-store root>` in their
environment and die with the engine (`process.run(die_with_parent=True)`); an engine starting
on a store kills the tagged processes an earlier engine of that store left behind (one
escaped the parent-death signal: a launcher script's child, a machine without `setpriv`).
"""

from __future__ import annotations

import logging
import os
import signal

from sqlrs_engine.process import RunAs
from sqlrs_engine.runtime import procs
from sqlrs_engine.runtime.users import ServerUserError, server_user

logger = logging.getLogger(__name__)

CLIENT_TAG_ENV = "SQLRS_ENGINE_CLIENT"
"""Environment variable every client program gets (value: the state-store root), so
`kill_leftover_clients` can recognize ours after an engine crash."""

FALLBACK_USER = "nobody"
"""Who host clients run as, as root, when the runtime has no server user on the host (a
container runtime) and the configured one (`runtime.host.user`, default postgres) is missing."""


def client_user(runtime: object, configured: str | None = None) -> RunAs | None:
    """The identity host client programs run as; None means the engine's own (not root).

    As root: the runtime's server user when it has one on the host (`runtime.user`, the host
    runtime), else `configured` / `postgres` when that user exists, else `nobody`; raises
    ServerUserError when none of them exists.
    """
    if os.geteuid() != 0:
        return None
    user = getattr(runtime, "user", None)
    if isinstance(user, RunAs) and user.uid != 0:
        return user
    try:
        return server_user(configured)
    except ServerUserError:  # missing or unsuitable: the user every system has
        pass
    try:
        return RunAs.from_name(FALLBACK_USER)
    except KeyError:
        raise ServerUserError(
            f"the engine runs as root and runs client programs as an unprivileged user, but "
            f"neither {configured or 'postgres'!r} nor {FALLBACK_USER!r} exists: create one "
            "or set runtime.host.user to an existing unprivileged user"
        ) from None


def client_tag_env(tag: str) -> dict[str, str]:
    """The environment entry that marks a client program of the store `tag`."""
    return {CLIENT_TAG_ENV: tag}


def kill_leftover_clients(tag: str) -> list[int]:
    """SIGKILL the tagged client programs of store `tag` that are still running; their pids.

    Called once at start-up, before any job runs: every tagged process then belongs to an
    engine that is gone.
    """
    needle = f"{CLIENT_TAG_ENV}={tag}".encode()
    victims = [pid for pid in procs.find_by_environ(needle) if pid != os.getpid()]
    for pid in victims:
        logger.warning("killing client program %d left by a previous engine", pid)
        procs.send(pid, signal.SIGKILL)
    procs.wait_dead(victims, 5.0)
    return victims


__all__ = [
    "CLIENT_TAG_ENV",
    "FALLBACK_USER",
    "client_tag_env",
    "client_user",
    "kill_leftover_clients",
]
