"""The runtime protocol: where PostgreSQL servers run (host processes now, containers later).

A runtime knows how to turn an image id into a resolved id, initialize a base cluster, start a
server on a data directory, stop it cleanly for a snapshot, run client programs against it and
count its client connections. Everything above it (jobs, instances) is written against this
protocol only, so the Docker runtime plugs in without touching them.

Data directory convention (SPEC §9.1): a *data dir* is the directory a backend clones or
snapshots; PostgreSQL's PGDATA is its `pgdata/` subdirectory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlrs_engine.cancel import CancelToken

LogSink = Callable[[str], None]
"""Receives one human-readable log line (already prefixed, e.g. `psql: ...`)."""

OutputSink = Callable[[str, bytes], None]
"""Receives (`"stdout"` | `"stderr"`, chunk) as a client program produces output."""

DB_USER = "sqlrs"
DB_NAME = "postgres"


def pgdata_of(data_dir: Path) -> Path:
    """PGDATA inside a data dir."""
    return data_dir / "pgdata"


CANNOT_RESOLVE_IMAGE = "cannot resolve image"
"""The job failure of an image id that the runtime cannot map to PostgreSQL binaries."""


@dataclass(frozen=True)
class ServerHandle:
    """A running (or last known) PostgreSQL server of one data dir."""

    runtime_id: str
    data_dir: Path
    host: str
    port: int
    socket_dir: Path | None = None
    pid: int | None = None
    password: str | None = field(default=None, repr=False)
    """The superuser's password on this server (SPEC §0.9); None only for a server started by
    an engine that predates per-instance credentials (it still runs with `trust`)."""

    @property
    def dsn(self) -> str:
        """The DSN handed to the user: `postgres://sqlrs:<secret>@127.0.0.1:<port>/postgres`."""
        user = DB_USER if self.password is None else f"{DB_USER}:{self.password}"
        return f"postgres://{user}@{self.host}:{self.port}/{DB_NAME}"

    @property
    def bare_dsn(self) -> str:
        """The DSN without the password: for command lines (`ps` shows them to everyone);
        the password then goes into the child's `PGPASSWORD`."""
        return f"postgres://{DB_USER}@{self.host}:{self.port}/{DB_NAME}"


@dataclass(frozen=True)
class ProcessResult:
    """Outcome of a client program run to completion."""

    exit_code: int
    output: str
    """Combined stdout+stderr text (for error details), possibly truncated at the front."""


class Runtime(Protocol):
    """What jobs and instances need from a place that runs PostgreSQL servers."""

    kind: str

    def resolve_image(self, image_id: str, log: LogSink, cancel: CancelToken) -> str:
        """Map a requested image id (no digest) to a resolved id containing `@`."""
        ...

    def check_image(self, image_id: str) -> None:
        """Refuse an image id that already has a digest but that this runtime cannot serve.

        Raises `JobFailure` (`cannot resolve image`, details saying what would work), so such
        an id fails at planning, exactly like an unknown tag, not later at base init.
        """
        ...

    def init_base(
        self, resolved_image_id: str, data_dir: Path, log: LogSink, cancel: CancelToken
    ) -> None:
        """Run initdb into `pgdata_of(data_dir)` (must not exist yet): superuser sqlrs, the
        engine's `pg_hba.conf` (TCP needs the per-start password, SPEC §0.9)."""
        ...

    def prepare_data_dir(self, data_dir: Path) -> None:
        """Give a freshly cloned data dir the ownership and modes the server needs."""
        ...

    def start(
        self,
        resolved_image_id: str,
        data_dir: Path,
        log: LogSink,
        cancel: CancelToken,
        preferred_port: int | None = None,
        password: str | None = None,
    ) -> ServerHandle:
        """Start a server on `data_dir`; returns once it accepts connections.

        `preferred_port` is tried first when it is free (a restarted instance keeps its DSN).
        The server's superuser gets `password` (None: a new random one); TCP connections need
        it, and the returned handle carries it.
        """
        ...

    def stop(self, handle: ServerHandle, log: LogSink) -> None:
        """Fast, clean shutdown (a checkpoint, no crash recovery on the next start); verified."""
        ...

    def kill(self, handle: ServerHandle) -> None:
        """Stop immediately (cancel, force delete); never raises for an already-dead server."""
        ...

    def is_running(self, handle: ServerHandle) -> bool: ...

    def adopt(self, resolved_image_id: str, data_dir: Path) -> ServerHandle | None:
        """The handle of a server still running on `data_dir` (engine restart), else None."""
        ...

    def run_client(
        self,
        handle: ServerHandle,
        program: str,
        args: Sequence[str],
        *,
        stdin: bytes | None,
        cwd: Path | None,
        on_output: OutputSink,
        cancel: CancelToken,
        env: Mapping[str, str] | None = None,
        inputs: Path | None = None,
    ) -> int:
        """Run a client program (psql, pgbench) with `args` as given; returns its exit code.

        The caller has already added the connection arguments (without the password: the
        runtime passes the handle's password in the environment); output is delivered as it
        is produced; cancel kills the program. The program runs unprivileged (SPEC §0.9).
        `inputs`: a directory the program reads files from by absolute path (a step's staging
        copy); a container runtime mounts it read-only.
        """
        ...

    def input_gid(self, handle: ServerHandle) -> int | None:
        """The group a client program of `handle` runs with, which may read staged inputs
        (None: the engine's own; nothing to grant)."""
        ...

    def count_connections(self, handle: ServerHandle) -> int:
        """Client connections to the server right now, excluding the probe itself."""
        ...
