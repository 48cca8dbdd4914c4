"""What every runtime does the same way around a PostgreSQL server, wherever it runs.

`runtime/host.py` (plain processes) and `runtime/docker.py` (containers) differ in how a
server is started, found and stopped; everything here is shared, so both keep SPEC §0.9 the
same way:

- **Data dirs**: a clone is made with the engine's ownership (states and the base are sealed
  to the engine's user); before a server starts on it, the data dir and its tree are given to
  the server user and PGDATA gets mode 0700 (`make_startable`, `prepare_data_dir`).
- **Run dir**: a private directory `<run_root>/sqlrs-pg-XXXXXXXX/` owned by the server user,
  0700, holding the server's Unix socket and the engine's `pg_hba.conf` (`make_run_dir`).
  Only that user and root can enter it, which is why its socket is trusted (`pg.HBA_LINES`)
  and TCP is not.
- **Readiness and password**: one trusted query over that socket both proves the server
  accepts connections and sets the instance's SCRAM verifier (`set_password_when_ready`); the
  plaintext secret never reaches the server, a command line or a log.
- **Connection counting** over the same socket (`count_connections`): no password needed and
  the probe is not a TCP client itself.
- **Client programs**: which ones may run and the environment they get (`client_program`,
  `client_env`): no PG* variable of the engine, the password in `PGPASSWORD` only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.dbms import postgres as pg
from sqlrs_engine.dbms import wire
from sqlrs_engine.dbms.scram import scram_verifier
from sqlrs_engine.errors import JobFailure, invalid_argument
from sqlrs_engine.process import RunAs
from sqlrs_engine.runtime.base import ServerHandle, pgdata_of
from sqlrs_engine.runtime.users import check_traversable, chown_tree, ensure_owned_dir

RUN_DIR_PREFIX = "sqlrs-pg-"

CLIENT_PROGRAMS = frozenset(
    {
        "psql",
        "pgbench",
        "pg_dump",
        "pg_dumpall",
        "pg_restore",
        "pg_isready",
        "createdb",
        "dropdb",
        "createuser",
        "dropuser",
        "vacuumdb",
        "reindexdb",
        "clusterdb",
    }
)
"""Programs `run_client` may run (from the server's own installation or image)."""

READY_POLL = 0.01
"""Seconds between readiness attempts: a cache hit waits on this loop. An attempt before the
socket exists is one failed `connect` (no process, no server work)."""


# -- data dirs -----------------------------------------------------------------------------------


def prepare_data_dir(data_dir: Path, user: RunAs) -> None:
    """chown -R the data dir to the server user (only entries that differ); PGDATA 0700."""
    chown_tree(data_dir, user)
    pgdata = pgdata_of(data_dir)
    if pgdata.is_dir() and (pgdata.stat().st_mode & 0o777) != 0o700:
        os.chmod(pgdata, 0o700)


def make_startable(data_dir: Path, user: RunAs, *, check_path: bool = True) -> None:
    """Give a data dir to the server user before a start (OSError, ServerUserError on failure).

    A clone of a sealed base or state is made with the engine's ownership: the data dir itself
    and, when PGDATA is not the server user's yet, its whole tree are chowned. `check_path`:
    verify that the server user can reach PGDATA through the host's directories (not needed
    where the data dir is bind-mounted by a container engine).
    """
    pgdata = pgdata_of(data_dir)
    root = os.geteuid() == 0
    if root and os.stat(data_dir).st_uid != user.uid:
        os.chown(data_dir, user.uid, user.gid)
    if check_path:
        check_traversable(pgdata, user)
    st = pgdata.stat()
    if root and (st.st_uid != user.uid or st.st_gid != user.gid):
        prepare_data_dir(data_dir, user)
    elif (st.st_mode & 0o777) != 0o700:
        os.chmod(pgdata, 0o700)


def make_run_dir(run_root: Path, user: RunAs, prefix: str = RUN_DIR_PREFIX) -> Path:
    """`<run_root>/sqlrs-pg-XXXXXXXX/`: the server's socket and `pg_hba.conf`, owned by the
    server user, 0700 — only that user and root can reach the socket, which is why `local`
    connections may be trusted (`pg.HBA_LINES`)."""
    run_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=run_root))
    try:
        hba = run_dir / pg.HBA_FILE_NAME
        fd = os.open(hba, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(pg.hba_text())
        if os.geteuid() == 0:
            os.chown(hba, user.uid, user.gid)
        ensure_owned_dir(run_dir, user, 0o700)
    except BaseException:
        remove_run_dir(run_dir)
        raise
    return run_dir


def is_our_run_dir(path: Path, run_root: Path, prefix: str = RUN_DIR_PREFIX) -> bool:
    return path.name.startswith(prefix) and (
        os.path.realpath(path.parent) == os.path.realpath(run_root)
    )


def remove_run_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- talking to a server over its private socket ------------------------------------------------


def set_password_when_ready(
    socket_dir: Path,
    port: int,
    major: int,
    password: str,
    *,
    alive: Callable[[], bool],
    deadline: float,
    cancel: CancelToken,
) -> str | None:
    """Wait until the server accepts a connection on its socket, setting the superuser's
    password (its SCRAM verifier) in that very connection.

    Returns None once done, else the last failure (the server died per `alive`, or `deadline`
    passed) for the caller's error message, which adds the server's log.
    """
    sql = pg.password_probe_sql(major, scram_verifier(password))
    last = "no attempt"
    while True:
        try:
            rows = wire.query(socket_dir, port, pg.SUPERUSER, pg.DATABASE, sql)
            if rows == [["1"]]:
                return None
            last = f"unexpected probe result {rows!r}"
        except wire.WireError as exc:
            last = str(exc)
        if not alive() or time.monotonic() >= deadline:
            return last
        if cancel.wait(READY_POLL):
            cancel.raise_if_cancelled()


def count_connections(socket_dir: Path, port: int) -> int:
    """Client connections right now (SPEC §0.5), asked over the private socket."""
    try:
        rows = wire.query(socket_dir, port, pg.SUPERUSER, pg.DATABASE, pg.COUNT_CONNECTIONS_SQL)
        value = rows[0][0] if rows and rows[0] else None
        if value is not None and value.isdigit():
            return int(value)
        details = f"unexpected result {rows!r}"
    except wire.WireError as exc:
        details = str(exc)
    raise JobFailure("internal_error", "cannot count connections", details)


# -- client programs -----------------------------------------------------------------------------


def client_program(program: str) -> str:
    """The bare program name, or an `invalid_argument` ApiError naming the allowed ones."""
    name = program.strip()
    if name not in CLIENT_PROGRAMS:
        raise invalid_argument(
            "unknown client program",
            f"{program!r} is not one of: {', '.join(sorted(CLIENT_PROGRAMS))}",
        )
    return name


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without libpq's PG* variables, so the engine's environment cannot redirect or
    alter connections (the caller passes explicit connection arguments)."""
    return {k: v for k, v in env.items() if not k.startswith("PG")}


def client_env(
    base: Mapping[str, str], handle: ServerHandle, extra: Mapping[str, str] | None
) -> dict[str, str]:
    """A client program's environment: `base` without PG* variables, the handle's password in
    `PGPASSWORD` (never on the command line, which `ps` shows everyone), then `extra`."""
    env = clean_env(base)
    if handle.password is not None:
        env["PGPASSWORD"] = handle.password
    if extra:
        env.update(extra)
    return env


__all__ = [
    "CLIENT_PROGRAMS",
    "RUN_DIR_PREFIX",
    "clean_env",
    "client_env",
    "client_program",
    "count_connections",
    "is_our_run_dir",
    "make_run_dir",
    "make_startable",
    "prepare_data_dir",
    "remove_run_dir",
    "set_password_when_ready",
]
