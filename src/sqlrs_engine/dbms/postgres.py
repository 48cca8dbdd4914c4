"""PostgreSQL specifics that do not depend on where the server runs (host, container).

Pure functions (argv builders, parsers, the settings we start with) plus a few small file
helpers on a data directory. The runtimes (`runtime/host.py`, `runtime/docker.py`) run
the programs; this module only knows what to run and how to read the answers.

Layout reminder (SPEC §9.1): a *data dir* is what snapshot backends clone; PGDATA is its
`pgdata/` subdirectory. `PG_VERSION` / `postmaster.pid` are looked for in both.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "sqlrs"
"""The bootstrap superuser initdb creates; every DSN connects as it."""

DATABASE = "postgres"

PGDATA_DIRNAME = "pgdata"

HBA_FILE_NAME = "pg_hba.conf"

HBA_LINES: tuple[str, ...] = (
    "local all all trust",
    "host all all 0.0.0.0/0 scram-sha-256",
    "host all all ::/0 scram-sha-256",
)
"""The whole `pg_hba.conf` every server runs with (SPEC §0.9).

TCP needs the instance's password (SCRAM) from any address, so a state also works behind a
container's bridge address. Unix-socket connections are trusted: the socket lives in a
directory only the server user (and root) can enter, so only the engine and the server user
itself reach it — and that user already owns the data. Written into PGDATA by `init_base` and,
for every start, into the server's private run directory (`-c hba_file=`), so what a state's
own `pg_hba.conf` says (older states say `trust`; a script may have rewritten it) never matters.
"""


def hba_text() -> str:
    """The content of the `pg_hba.conf` the engine's servers use."""
    return (
        "# written by sqlrs-engine: TCP needs the instance's password (scram-sha-256); the\n"
        "# Unix socket is in a directory only the server user and root can enter.\n"
        + "".join(line + "\n" for line in HBA_LINES)
    )


def write_hba(path: Path) -> None:
    """Replace the file at `path` with `hba_text()`, keeping its owner and mode if it exists."""
    path.write_text(hba_text())


DEFAULT_LOCALE = "C.UTF-8"
"""The cluster locale: fixed, so a cluster does not depend on the engine's environment, and
present on every glibc >= 2.35 / Debian system. Encoding is UTF8."""

COUNT_CONNECTIONS_SQL = (
    "select count(*) from pg_stat_activity "
    "where backend_type = 'client backend' and pid <> pg_backend_pid()"
)
"""Client connections right now, not counting the connection that asks (SPEC §0.5)."""

PROBE_SQL = "select 1"


def password_probe_sql(major: int, verifier: str) -> str:
    """The readiness probe that also sets the superuser's password (one psql process).

    Sent on psql's stdin (never on a command line that `ps` shows). The session first turns
    off every setting that could write the statement into the server log — a script may have
    set them for the role or database (`ALTER ROLE … SET log_statement = 'all'`), which
    would override the command line — so only the verifier's effect, not its text, remains.
    """
    if "'" in verifier or "\\" in verifier:
        raise ValueError("a SCRAM verifier never contains quotes or backslashes")
    quiet = [
        # Every start sets the password again, so this commit need not wait for its WAL
        # flush (an fsync on the hot path of a cache hit).
        "SET synchronous_commit = off",
        "SET log_statement = 'none'",
        "SET log_min_duration_statement = -1",
        "SET log_min_error_statement = 'panic'",
        "SET log_duration = off",
    ]
    if major >= 12:
        quiet.append("SET log_transaction_sample_rate = 0")
    if major >= 13:
        quiet.append("SET log_min_duration_sample = -1")
    statements = [*quiet, f"ALTER ROLE {SUPERUSER} PASSWORD '{verifier}'", PROBE_SQL]
    return "".join(f"{statement};\n" for statement in statements)


BIND_FAILURE_MARKERS: tuple[str, ...] = (
    "could not bind IPv4 address",
    "could not bind IPv6 address",
    "could not create any TCP/IP sockets",
    "Address already in use",
)
"""Server-log text that means "the port was taken": the start is retried on another port."""


# -- initdb --------------------------------------------------------------------------------------


def initdb_argv(bin_dir: Path, pgdata: Path, *, locale: str = DEFAULT_LOCALE) -> list[str]:
    """`initdb` for a base cluster: superuser `sqlrs`, without a password.

    initdb itself is told `trust` (it refuses password methods without a password); the
    runtime then replaces `pg_hba.conf` with `hba_text()`, and every server start sets the
    instance's own password (`password_probe_sql`).

    `--no-sync`: initdb would otherwise fsync every file of the new cluster (most of its
    runtime). The base is snapshotted right away and a crash during init just leaves a base
    without its `.init.ok` marker, which is re-initialized; the first server start (or
    checkpoint) makes the data durable anyway.
    """
    return [
        str(bin_dir / "initdb"),
        f"--username={SUPERUSER}",
        "--auth=trust",
        "--auth-host=trust",
        "--auth-local=trust",
        "--encoding=UTF8",
        f"--locale={locale}",
        "--no-sync",
        "-D",
        str(pgdata),
    ]


# -- server settings -----------------------------------------------------------------------------


def server_settings(
    major: int, port: int, socket_dir: Path, hba_file: Path | None = None
) -> list[tuple[str, str]]:
    """The `-c name=value` settings every server starts with (never written into PGDATA).

    - `listen_addresses=127.0.0.1`, `port`: TCP on loopback only, on an allocated port.
    - `unix_socket_directories`: a private short directory (socket paths are limited to 107
      bytes, and `/var/run/postgresql` would be shared by all servers).
    - `hba_file`: the engine's `pg_hba.conf` (see `HBA_LINES`) in that private directory;
      command-line settings win over `ALTER SYSTEM`, so no script can point it elsewhere.
    - `logging_collector=off`: the log goes to the file given to `pg_ctl -l`, even if a user's
      script ran `ALTER SYSTEM SET logging_collector = on`.
    - `recovery_init_sync_method=syncfs` (PostgreSQL 14+): a clone of a state that was not shut
      down cleanly starts with crash recovery, which first fsyncs every file of PGDATA one by
      one; syncfs does it with one call per filesystem.
    - `client_connection_check_interval=1s` (PostgreSQL 14+): a backend whose client went
      away (a cancelled job's psql, a run whose HTTP client disconnected) notices within a
      second and ends its query, instead of running on and counting as a connection.
    - `fsync` stays **on** (the default): instances are ordinary databases that users write to
      and expect to survive a host crash, and snapshots are taken after a clean shutdown that
      checkpoints anyway. With fsync off a crash could silently corrupt an instance, which is
      a worse failure than the commit latency we save.
    """
    settings = [
        ("listen_addresses", "127.0.0.1"),
        ("port", str(port)),
        ("unix_socket_directories", str(socket_dir)),
        ("logging_collector", "off"),
    ]
    if hba_file is not None:
        settings.append(("hba_file", str(hba_file)))
    if major >= 14:
        settings.append(("recovery_init_sync_method", "syncfs"))
        settings.append(("client_connection_check_interval", "1000"))
    return settings


def settings_argv(settings: Sequence[tuple[str, str]]) -> list[str]:
    """`["-c", "name=value", ...]` for the postgres command line."""
    argv: list[str] = []
    for name, value in settings:
        argv += ["-c", f"{name}={value}"]
    return argv


def pg_ctl_options(settings: Sequence[tuple[str, str]]) -> str:
    """The `pg_ctl -o` string: pg_ctl hands it to `/bin/sh`, so every word is shell-quoted."""
    return shlex.join(settings_argv(settings))


def pg_ctl_start_argv(
    bin_dir: Path,
    pgdata: Path,
    logfile: Path,
    settings: Sequence[tuple[str, str]],
    timeout: int | None = None,
) -> list[str]:
    """`pg_ctl start`; with a `timeout` it waits (`-w -t`) for the server to be ready, which
    it checks only every 100 ms; without one it returns at once (`-W`) and the caller waits
    (`runtime/startup.py`)."""
    wait = ["-w", "-t", str(max(1, timeout))] if timeout is not None else ["-W"]
    return [
        str(bin_dir / "pg_ctl"),
        "start",
        *wait,
        "-D",
        str(pgdata),
        "-l",
        str(logfile),
        "-o",
        pg_ctl_options(settings),
    ]


def pg_ctl_stop_argv(
    bin_dir: Path, pgdata: Path, mode: str = "fast", timeout: int | None = 60
) -> list[str]:
    """`pg_ctl stop`; with a `timeout` it waits (`-w -t`, in 100 ms steps) until the server is
    gone; with None it only signals the postmaster (`-W`) and the caller waits."""
    wait = ["-w", "-t", str(max(1, timeout))] if timeout is not None else ["-W"]
    return [
        str(bin_dir / "pg_ctl"),
        "stop",
        *wait,
        "-m",
        mode,
        "-D",
        str(pgdata),
    ]


def pg_ctl_status_argv(bin_dir: Path, pgdata: Path) -> list[str]:
    return [str(bin_dir / "pg_ctl"), "status", "-D", str(pgdata)]


def is_bind_failure(log_text: str) -> bool:
    """True when the server log says it could not listen on its port."""
    return any(marker in log_text for marker in BIND_FAILURE_MARKERS)


# -- parsing -------------------------------------------------------------------------------------


_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)([A-Za-z]\w*)?")


def parse_server_version(text: str) -> str:
    """`postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → `15.18`; `16beta1` kept whole.

    Raises ValueError for anything that is not `postgres --version` output.
    """
    match = _VERSION_RE.search(text)
    if not match:
        raise ValueError(f"unrecognized postgres --version output: {text.strip()!r}")
    return match.group(1) + (match.group(2) or "")


def major_of(version: str) -> int:
    """The major version number: `15.18` → 15, `16beta1` → 16, `9.6.24` → 9 (as 9.x majors
    were two numbers, callers only ever compare them with integers ≥ 10)."""
    match = re.match(r"\d+", version.strip())
    if not match:
        raise ValueError(f"not a PostgreSQL version: {version!r}")
    return int(match.group(0))


@dataclass(frozen=True)
class PostmasterPid:
    """The contents of `postmaster.pid` (written by a running postmaster)."""

    pid: int
    data_dir: str
    start_time: int | None = None
    port: int | None = None
    socket_dir: str | None = None
    listen_address: str | None = None
    status: str | None = None
    """`starting`, `ready`, `stopping` or `standby` (PostgreSQL 10+); None on older servers."""


def parse_postmaster_pid(text: str) -> PostmasterPid | None:
    """Parse `postmaster.pid`; None when it is empty or truncated (being written/removed)."""
    lines = text.split("\n")

    def line(index: int) -> str | None:
        if index < len(lines):
            value = lines[index].strip()
            return value or None
        return None

    def number(index: int) -> int | None:
        value = line(index)
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    pid = number(0)
    data_dir = line(1)
    if pid is None or pid <= 0 or data_dir is None:
        return None
    return PostmasterPid(
        pid=pid,
        data_dir=data_dir,
        start_time=number(2),
        port=number(3),
        socket_dir=line(4),
        listen_address=line(5),
        status=line(7),
    )


def read_postmaster_pid(pgdata: Path) -> PostmasterPid | None:
    """`parse_postmaster_pid` of `pgdata/postmaster.pid`; None when absent or unreadable."""
    try:
        text = (pgdata / "postmaster.pid").read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return parse_postmaster_pid(text)


_OPTS_PORT = re.compile(r'"(?:port=|-p" ")(\d+)"')


def parse_postmaster_opts_port(text: str) -> int | None:
    """The port in `postmaster.opts` (the options the server last started with), if any."""
    ports = _OPTS_PORT.findall(text)
    return int(ports[-1]) if ports else None


def last_port(pgdata: Path) -> int | None:
    """The port the server of `pgdata` last listened on: a restart can keep its DSN."""
    try:
        text = (pgdata / "postmaster.opts").read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return parse_postmaster_opts_port(text)


@dataclass(frozen=True)
class PgCtlStatus:
    running: bool
    pid: int | None = None


_STATUS_PID_RE = re.compile(r"server is running \(PID: (\d+)\)")


def parse_pg_ctl_status(exit_code: int, output: str) -> PgCtlStatus:
    """`pg_ctl status`: exit 0 + `server is running (PID: N)`; exit 3 `no server running`;
    exit 4 no accessible data directory (also not running).

    Anything else (pg_ctl could not even check) raises ValueError.
    """
    if exit_code == 0:
        match = _STATUS_PID_RE.search(output)
        return PgCtlStatus(True, int(match.group(1)) if match else None)
    if exit_code in (3, 4) or "no server running" in output:
        return PgCtlStatus(False)
    raise ValueError(f"pg_ctl status failed (exit code {exit_code}): {output.strip()}")


def parse_controldata(text: str) -> dict[str, str]:
    """`pg_controldata` output → {field: value}."""
    fields: dict[str, str] = {}
    for raw in text.splitlines():
        name, sep, value = raw.partition(":")
        if sep and name.strip():
            fields[name.strip()] = value.strip()
    return fields


def cluster_state(controldata: str) -> str | None:
    """`Database cluster state` (`shut down`, `in production`, …) from pg_controldata output."""
    return parse_controldata(controldata).get("Database cluster state")


# -- data directory checks -----------------------------------------------------------------------


def find_in_data_dir(data_dir: Path, name: str) -> Path | None:
    """`<dir>/<name>` or `<dir>/pgdata/<name>`, whichever exists first."""
    for candidate in (data_dir / name, data_dir / PGDATA_DIRNAME / name):
        if candidate.exists():
            return candidate
    return None


def has_postmaster_pid(data_dir: Path) -> bool:
    return find_in_data_dir(data_dir, "postmaster.pid") is not None


def has_pg_version(data_dir: Path) -> bool:
    return find_in_data_dir(data_dir, "PG_VERSION") is not None


def read_pg_version(data_dir: Path) -> str | None:
    """The content of `PG_VERSION` (the cluster's major, e.g. `15`), or None when missing."""
    found = find_in_data_dir(data_dir, "PG_VERSION")
    if found is None:
        return None
    with contextlib.suppress(OSError):
        return found.read_text().strip() or None
    return None


DIRTY_MESSAGE = "state snapshot is dirty (postmaster.pid present)"
MISSING_PG_VERSION_MESSAGE = "state snapshot missing PG_VERSION"


def snapshot_problem(data_dir: Path) -> str | None:
    """Why `data_dir` cannot serve as a state snapshot (SPEC §2.10), or None when it can."""
    if has_postmaster_pid(data_dir):
        return DIRTY_MESSAGE
    if not has_pg_version(data_dir):
        return MISSING_PG_VERSION_MESSAGE
    return None


def log_tail(path: Path, max_bytes: int = 8192, start: int = 0) -> str:
    """The last `max_bytes` of a (server log) file from byte `start`; "" when unreadable."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            begin = max(start, size - max_bytes)
            if begin >= size:
                return ""
            fh.seek(begin)
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if begin > start:
        newline = text.find("\n")
        if 0 <= newline < len(text) - 1:
            text = text[newline + 1 :]
    return text
