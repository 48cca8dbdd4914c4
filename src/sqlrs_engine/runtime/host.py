"""The `host` runtime: PostgreSQL servers as plain processes of the installed binaries.

SPEC §0.2. One instance = one `postgres` server on a data dir, listening on `127.0.0.1:<port>`
(a port from `ports.SHARED_PORTS`) plus a Unix socket in a private run directory
`<tmp>/sqlrs-pg-XXXXXXXX/` (owned by the server user, 0700, short enough for the 107-byte
socket path limit), which also holds the server log `postgres.log` (`pg_ctl -l`) and the
`pg_hba.conf` the server uses (`-c hba_file=`). Nothing of this goes into the data dir: data
dirs are snapshotted, and the port is chosen per start.

Credentials (SPEC §0.9): every start sets the superuser's password — the caller's (an
instance keeps its own) or a new random one — through the readiness probe, and the handle
carries it. TCP needs it; the socket is trusted but reachable only by the server user and
root. Client programs (`run_client`) run as the server user when the engine is root, get the
password in `PGPASSWORD`, and die with the engine.

Servers are started with `pg_ctl start -W` as the server user (see `users.py`), so they are
daemons in their own session: they keep running when the engine exits, and a restarted engine
finds them again with `adopt` (via `postmaster.pid`). pg_ctl returns as soon as it has
launched the postmaster; the engine then waits for `ready` in `postmaster.pid` itself
(`postmaster.py`: a 2 ms look instead of `pg_ctl -w`'s 100 ms steps, the postmaster's exit noticed
at once through a pidfd), so a failed start still fails fast with the server log's tail, and a
taken port is still retried on another one.

**runtime_id** is `host:<postmaster pid>` (for example `host:48213`): the one number that names
a running server process on this machine, visible in `ps`, and what `kill` signals. It is only
meaningful while that server runs — `is_running` / `adopt` always verify through the data dir's
`postmaster.pid` and `/proc/<pid>/cwd`, never trust the id alone (pids are reused).

Resolved image ids are `postgres@host-<server version>` (`postgres@host-15.18`); the inverse
mapping uses only the major version, so states built before a minor upgrade (15.18 → 15.19)
keep working with the new binaries of the same major.

Thread safety: every method can be called from many job threads at once. Shared state is the
discovered installations (computed once under a lock) and the port allocator (locked).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlrs_engine import process
from sqlrs_engine.cancel import NEVER_CANCELLED, CancelToken
from sqlrs_engine.dbms import postgres as pg
from sqlrs_engine.dbms.scram import new_secret
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.process import ProcessError, RunAs
from sqlrs_engine.runtime import postmaster, procs, server
from sqlrs_engine.runtime.base import (
    CANNOT_RESOLVE_IMAGE,
    LogSink,
    OutputSink,
    Runtime,
    ServerHandle,
    pgdata_of,
)
from sqlrs_engine.runtime.clients import CLIENT_TAG_ENV
from sqlrs_engine.runtime.ports import (
    LOOPBACK,
    SHARED_PORTS,
    PortAllocator,
    diverted,
    port_is_free,
)
from sqlrs_engine.runtime.server import (
    CLIENT_PROGRAMS,
    RUN_DIR_PREFIX,
    clean_env,
    client_env,
    client_program,
    is_our_run_dir,
    make_run_dir,
    make_startable,
    remove_run_dir,
)
from sqlrs_engine.runtime.users import (
    ServerUserError,
    check_traversable,
    chown_tree,
    ensure_owned_dir,
)
from sqlrs_engine.runtime.users import server_user as resolve_server_user

logger = logging.getLogger(__name__)

DEFAULT_BIN_ROOT = Path("/usr/lib/postgresql")
SERVER_LOG_NAME = "postgres.log"
RESOLVED_PREFIX = "postgres@host-"

RUNTIME_ID_PREFIX = "host:"


def runtime_id_for(pid: int) -> str:
    """`host:<postmaster pid>`."""
    return f"{RUNTIME_ID_PREFIX}{pid}"


def pid_of_runtime_id(runtime_id: str) -> int | None:
    """The postmaster pid named by a host runtime id, or None if it is not one."""
    if not runtime_id.startswith(RUNTIME_ID_PREFIX):
        return None
    text = runtime_id[len(RUNTIME_ID_PREFIX) :]
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class Installation:
    """One installed PostgreSQL major version."""

    major: int
    version: str
    bin_dir: Path

    @property
    def resolved_image_id(self) -> str:
        return f"{RESOLVED_PREFIX}{self.version}"


# -- image ids -----------------------------------------------------------------------------------

_NAME_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_TAG = re.compile(r"^(?:latest|(\d+)(?:\.(\d+))?)$")


def parse_image(image_id: str) -> int | None:
    """The major version an image id asks for; None means "the highest installed".

    Accepts `postgres`, `postgres:latest`, `postgres:<major>`, `postgres:<major>.<minor>`,
    each optionally behind a registry/namespace prefix (`docker.io/library/postgres:15`,
    `localhost/postgres:15`), and already resolved ids `postgres@host-<version>`.
    Raises ValueError for anything else.
    """
    text = image_id.strip()
    if not text:
        raise ValueError("empty image id")
    if "@" in text:
        name, _, digest = text.rpartition("@")
        if not digest.startswith("host-"):
            raise ValueError(f"digest {digest!r} is not a host runtime digest")
        _check_name(name, image_id)
        version = digest[len("host-") :]
        try:
            return pg.major_of(version)
        except ValueError:
            raise ValueError(f"bad version in {image_id!r}") from None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        name, tag = text[:colon], text[colon + 1 :]
    else:
        name, tag = text, "latest"
    _check_name(name, image_id)
    match = _TAG.match(tag)
    if not match:
        raise ValueError(f"tag {tag!r} is not latest, <major> or <major>.<minor>")
    return int(match.group(1)) if match.group(1) else None


def _check_name(name: str, image_id: str) -> None:
    parts = name.split("/")
    if parts[-1] != "postgres":
        raise ValueError(f"{image_id!r} is not a postgres image")
    if any(not _NAME_COMPONENT.match(part) for part in parts[:-1]):
        raise ValueError(f"bad registry prefix in {image_id!r}")


def version_of_resolved(resolved_image_id: str) -> str:
    """`postgres@host-15.18` → `15.18`; ValueError for other ids."""
    name, sep, digest = resolved_image_id.strip().rpartition("@")
    if not sep or not digest.startswith("host-") or name.split("/")[-1] != "postgres":
        raise ValueError(f"{resolved_image_id!r} is not a host runtime image id")
    version = digest[len("host-") :]
    pg.major_of(version)
    return version


# -- the runtime ---------------------------------------------------------------------------------


class HostRuntime:
    """`Runtime` (runtime/base.py) running the machine's PostgreSQL binaries as processes."""

    kind = "host"

    def __init__(
        self,
        bin_dirs: Sequence[Path | str] | None = None,
        server_user: str | None = None,
        *,
        search_default_dirs: bool = True,
        ports: PortAllocator | None = None,
        run_root: Path | str | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 60.0,
        start_attempts: int = 5,
        locale: str = pg.DEFAULT_LOCALE,
        client_tag: str | None = None,
    ) -> None:
        """`bin_dirs`: extra directories with PostgreSQL binaries (config `runtime.host.binDirs`),
        searched before `/usr/lib/postgresql/*/bin` and `pg_config --bindir` (unless
        `search_default_dirs` is False). `server_user`: config `runtime.host.user`.

        Raises `ServerUserError` when, as root, the server user does not exist.
        """
        self.bin_dirs = [Path(d) for d in (bin_dirs or [])]
        self.search_default_dirs = search_default_dirs
        self.user: RunAs = resolve_server_user(server_user)
        self.ports = ports if ports is not None else SHARED_PORTS
        self._run_dirs: dict[str, Path] = {}
        """runtime_id → run dir of the servers this runtime started (a handle restored from
        state.db has no socket dir; a dead server's command line no longer tells it)."""
        self._run_dirs_lock = threading.Lock()
        self.run_root = Path(run_root) if run_root is not None else Path(tempfile.gettempdir())
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.start_attempts = max(1, start_attempts)
        self.locale = locale
        self.client_tag = client_tag or str(self.run_root)
        """Marks this engine's client programs (the engine passes its state-store root)."""
        self._lock = threading.Lock()
        self._installations: dict[int, Installation] | None = None
        with contextlib.suppress(OSError):
            self.remove_stale_run_dirs()

    # -- binaries ------------------------------------------------------------------------------

    def candidate_bin_dirs(self) -> list[Path]:
        """Where binaries are looked for, in priority order."""
        dirs = list(self.bin_dirs)
        if self.search_default_dirs:
            if DEFAULT_BIN_ROOT.is_dir():
                versions = []
                for entry in DEFAULT_BIN_ROOT.iterdir():
                    if (entry / "bin").is_dir():
                        versions.append(entry / "bin")
                dirs += sorted(versions, key=lambda p: _numeric_key(p.parent.name), reverse=True)
            pg_config = shutil.which("pg_config")
            if pg_config:
                try:
                    result = process.run([pg_config, "--bindir"], timeout=10)
                    if result.exit_code == 0 and result.output.strip():
                        dirs.append(Path(result.output.strip().splitlines()[-1]))
                except ProcessError:
                    pass
        unique: list[Path] = []
        for d in dirs:
            if d not in unique:
                unique.append(d)
        return unique

    def installations(self) -> dict[int, Installation]:
        """Installed majors → installation (discovered once; `refresh()` forgets)."""
        with self._lock:
            if self._installations is None:
                self._installations = self._discover()
            return dict(self._installations)

    def refresh(self) -> None:
        with self._lock:
            self._installations = None

    def installed_majors(self) -> list[int]:
        """Installed major versions, ascending."""
        return sorted(self.installations())

    def _discover(self) -> dict[int, Installation]:
        found: dict[int, Installation] = {}
        for bin_dir in self.candidate_bin_dirs():
            if not all(_is_executable(bin_dir / p) for p in ("postgres", "pg_ctl", "initdb")):
                continue
            try:
                result = process.run([str(bin_dir / "postgres"), "--version"], timeout=30)
                version = pg.parse_server_version(result.output)
                major = pg.major_of(version)
            except (ProcessError, ValueError) as exc:
                logger.warning("ignoring PostgreSQL binaries in %s: %s", bin_dir, exc)
                continue
            found.setdefault(major, Installation(major, version, bin_dir))
        return found

    def _installed_text(self) -> str:
        majors = self.installed_majors()
        if not majors:
            looked = ", ".join(str(d) for d in self.candidate_bin_dirs()) or "nowhere"
            return (
                f"no PostgreSQL server binaries are installed (looked in {looked} and "
                f"{DEFAULT_BIN_ROOT}/<major>/bin); install a postgresql-<major> package or "
                "set runtime.host.binDirs"
            )
        return "installed PostgreSQL major versions: " + ", ".join(str(m) for m in majors)

    def installation_for_image(self, image_id: str) -> Installation:
        """The installation an image id (requested or resolved) maps to; ValueError if none."""
        try:
            major = parse_image(image_id)
        except ValueError as exc:
            raise ValueError(
                f"image {image_id!r} cannot be served by the host runtime ({exc}); it accepts "
                f"postgres, postgres:latest, postgres:<major> and postgres:<major>.<minor>; "
                f"{self._installed_text()}"
            ) from None
        installs = self.installations()
        if not installs:
            raise ValueError(self._installed_text())
        if major is None:
            return installs[max(installs)]
        if major not in installs:
            raise ValueError(
                f"PostgreSQL {major} (image {image_id!r}) is not installed on this host; "
                f"{self._installed_text()}"
            )
        return installs[major]

    def bin_dir_for(self, resolved_image_id: str) -> Path:
        """The bin dir serving a resolved id (`postgres@host-15.18` → `.../15/bin`)."""
        version_of_resolved(resolved_image_id)
        return self.installation_for_image(resolved_image_id).bin_dir

    def _install_or_fail(self, image_id: str, message: str) -> Installation:
        try:
            return self.installation_for_image(image_id)
        except ValueError as exc:
            raise JobFailure("internal_error", message, str(exc)) from None

    def _install_for_data_dir(self, data_dir: Path) -> Installation:
        """Binaries matching the cluster's PG_VERSION (else the highest installed)."""
        installs = self.installations()
        version = pg.read_pg_version(data_dir)
        if version is not None:
            with contextlib.suppress(ValueError):
                major = pg.major_of(version)
                if major in installs:
                    return installs[major]
        if not installs:
            raise JobFailure("internal_error", "cannot find PostgreSQL", self._installed_text())
        return installs[max(installs)]

    # -- Runtime protocol ----------------------------------------------------------------------

    def resolve_image(self, image_id: str, log: LogSink, cancel: CancelToken) -> str:
        log(f"resolve image {image_id}")
        cancel.raise_if_cancelled()
        install = self._install_or_fail(image_id, CANNOT_RESOLVE_IMAGE)
        resolved = install.resolved_image_id
        log(f"resolved image {resolved}")
        return resolved

    def check_image(self, image_id: str) -> None:
        self._install_or_fail(image_id, CANNOT_RESOLVE_IMAGE)

    def init_base(
        self, resolved_image_id: str, data_dir: Path, log: LogSink, cancel: CancelToken
    ) -> None:
        message = "cannot initialize base state"
        install = self._install_or_fail(resolved_image_id, message)
        pgdata = pgdata_of(data_dir)
        if pgdata.exists() and (not pgdata.is_dir() or any(pgdata.iterdir())):
            raise JobFailure("internal_error", message, f"{pgdata} already exists and is not empty")
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            check_traversable(pgdata, self.user)
            ensure_owned_dir(pgdata, self.user, 0o700)
        except (ServerUserError, OSError) as exc:
            raise JobFailure("internal_error", message, str(exc)) from None
        argv = pg.initdb_argv(install.bin_dir, pgdata, locale=self.locale)
        try:
            result = self._run_as_server(argv, "initdb", log, 600, cancel)
            if result.exit_code != 0:
                raise JobFailure(
                    "internal_error",
                    message,
                    f"initdb exited with code {result.exit_code}: {result.output.strip()}",
                )
            pg.write_hba(pgdata / pg.HBA_FILE_NAME)
            chown_tree(pgdata, self.user)  # the base is the server user's, as states are
        except BaseException as exc:
            shutil.rmtree(pgdata, ignore_errors=True)
            if isinstance(exc, ProcessError):
                raise JobFailure("internal_error", message, str(exc)) from None
            raise

    def prepare_data_dir(self, data_dir: Path) -> None:
        """chown -R the data dir to the server user (`server.prepare_data_dir`)."""
        server.prepare_data_dir(data_dir, self.user)

    def start(
        self,
        resolved_image_id: str,
        data_dir: Path,
        log: LogSink,
        cancel: CancelToken,
        preferred_port: int | None = None,
        password: str | None = None,
    ) -> ServerHandle:
        message = "cannot start runtime"
        cancel.raise_if_cancelled()
        secret = password if password is not None else new_secret()
        install = self._install_or_fail(resolved_image_id, message)
        pgdata = pgdata_of(data_dir)
        self._check_startable(install, data_dir, message)
        self._clear_stale_pid_file(pgdata, log, message)
        try:
            run_dir = self._make_run_dir()
        except OSError as exc:
            raise JobFailure("internal_error", message, f"cannot create run dir: {exc}") from None
        bind_failures: list[str] = []
        try:
            for attempt in range(self.start_attempts):
                port = self._choose_port(preferred_port if attempt == 0 else None)
                if attempt == 0 and preferred_port is not None and port != preferred_port:
                    log(
                        f"pg_ctl: port {preferred_port} is taken by another process; "
                        f"listening on port {port} instead"
                    )
                try:
                    return self._start_once(install, data_dir, run_dir, port, secret, log, cancel)
                except _BindFailure as exc:
                    self.ports.release(port)
                    bind_failures.append(f"port {port}: {exc}")
                    log(f"pg_ctl: port {port} is not usable ({exc}), retrying on another port")
                    logger.warning("server start on port %d retried: %s", port, exc)
                except BaseException:
                    self.ports.release(port)
                    raise
            raise JobFailure(
                "internal_error",
                message,
                f"could not listen on a free port after {self.start_attempts} attempts: "
                + "; ".join(bind_failures),
            )
        except BaseException:
            self._kill_run_dir_processes(run_dir, pgdata)
            remove_run_dir(run_dir)
            raise

    def _choose_port(self, preferred: int | None) -> int:
        """The preferred port when it is free and not ours already, else any free port."""
        if preferred is not None and port_is_free(preferred) and self.ports.reserve(preferred):
            return preferred
        return self.ports.allocate()

    def stop(self, handle: ServerHandle, log: LogSink) -> None:
        pgdata = pgdata_of(handle.data_dir)
        info = pg.read_postmaster_pid(pgdata)
        socket_dir = handle.socket_dir or (
            Path(info.socket_dir) if info is not None and info.socket_dir else None
        )
        running_pid = self._verified_postmaster(info, pgdata)
        if running_pid is None:
            if info is not None:
                log(
                    f"pg_ctl: server is not running (removing stale postmaster.pid, pid {info.pid})"
                )
                _remove_stale_pid_file(pgdata, info.pid)
            self._release(handle, socket_dir)
            return
        install = self._install_for_data_dir(handle.data_dir)
        # -W: pg_ctl sends the fast-shutdown signal (as the server user) and returns; the
        # postmaster's exit is waited for on its pidfd (`pg_ctl stop -w` polls every 100 ms).
        argv = pg.pg_ctl_stop_argv(install.bin_dir, pgdata, "fast", None)
        try:
            result = self._run_as_server(argv, "pg_ctl", log, self.stop_timeout + 15)
        except ProcessError as exc:
            raise JobFailure("internal_error", "cannot stop server", str(exc)) from None
        gone = result.exit_code == 0 and postmaster.wait_until_gone(
            running_pid, pgdata, self.stop_timeout
        )
        status = self._status(install, pgdata)
        if result.exit_code != 0 or not gone or status.running:
            raise JobFailure(
                "internal_error",
                "cannot stop server",
                f"pg_ctl stop exited with code {result.exit_code}: {result.output.strip()}"
                + (
                    f" (server did not shut down within {self.stop_timeout:g} s)"
                    if result.exit_code == 0 and not gone
                    else ""
                )
                + (f" (server still running, pid {status.pid})" if status.running else ""),
            )
        log("server stopped")
        # postmaster.pid is gone with the postmaster; make sure its children are too.
        if not procs.wait_dead([running_pid], 10.0) or not procs.kill_group_members(running_pid):
            raise JobFailure(
                "internal_error", "cannot stop server", f"postmaster {running_pid} did not exit"
            )
        self._release(handle, socket_dir)

    def kill(self, handle: ServerHandle) -> None:
        try:
            self._kill(handle)
        except Exception:
            logger.exception("kill of server %s on %s failed", handle.runtime_id, handle.data_dir)

    def is_running(self, handle: ServerHandle) -> bool:
        pgdata = pgdata_of(handle.data_dir)
        info = pg.read_postmaster_pid(pgdata)
        pid = self._verified_postmaster(info, pgdata)
        if pid is None or info is None:
            return False
        if info.status == "stopping":
            return False
        return info.port == handle.port

    def adopt(self, resolved_image_id: str, data_dir: Path) -> ServerHandle | None:
        pgdata = pgdata_of(data_dir)
        info = pg.read_postmaster_pid(pgdata)
        pid = self._verified_postmaster(info, pgdata)
        if pid is None or info is None or info.port is None or info.status == "stopping":
            return None
        self.ports.reserve(info.port)
        return ServerHandle(
            runtime_id=runtime_id_for(pid),
            data_dir=data_dir,
            host=LOOPBACK,
            port=info.port,
            socket_dir=Path(info.socket_dir) if info.socket_dir else None,
            pid=pid,
        )

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
        """Run a client program of the server's major version, unprivileged (SPEC §0.9).

        `program` is a bare name from `CLIENT_PROGRAMS`; anything else is an
        `invalid_argument` ApiError. As root the engine runs it as the server user (so `\\!`,
        `\\copy … program` and `-o |cmd` run unprivileged too); it dies with the engine
        (`process.run(die_with_parent=True)`) and carries `CLIENT_TAG_ENV` so a start-up sweep
        can find one that escaped. The engine's PG* environment variables are not passed on
        (the caller gives the connection arguments); the handle's password goes into
        `PGPASSWORD`, never onto the command line; `env` is added on top. A program killed by
        signal N returns 128+N. `inputs` needs nothing here: the program sees the host's files.
        """
        name = client_program(program)
        install = self._install_for_data_dir(handle.data_dir)
        path = self._client_program(install, name)
        child_env = client_env(os.environ, handle, {CLIENT_TAG_ENV: self.client_tag, **(env or {})})
        user = self.user if os.geteuid() == 0 else None
        try:
            result = process.run(
                [str(path), *args],
                stdin=stdin,
                cwd=cwd,
                env=child_env,
                inherit_env=False,
                user=user,
                on_output=on_output,
                cancel=cancel,
                die_with_parent=True,
            )
        except ProcessError as exc:
            raise JobFailure("internal_error", f"cannot run {name}", str(exc)) from None
        return process.exit_status(result.exit_code)

    def input_gid(self, handle: ServerHandle) -> int | None:
        """The server user's group when clients run as that user (the engine is root)."""
        return self.user.gid if os.geteuid() == 0 else None

    def count_connections(self, handle: ServerHandle) -> int:
        if not self.is_running(handle):
            return 0
        # Over the private socket: it needs no password (an adopted server's handle may not
        # know it yet) and is not a TCP client itself.
        socket_dir = handle.socket_dir
        if socket_dir is None:
            info = pg.read_postmaster_pid(pgdata_of(handle.data_dir))
            socket_dir = Path(info.socket_dir) if info is not None and info.socket_dir else None
        if socket_dir is None:
            raise JobFailure(
                "internal_error",
                "cannot count connections",
                f"the server on {handle.data_dir} has no known socket directory",
            )
        return server.count_connections(socket_dir, handle.port)

    # -- extras (not in the protocol) ----------------------------------------------------------

    def remove_stale_run_dirs(self, min_age: float = 60.0) -> list[Path]:
        """Remove `<run_root>/sqlrs-pg-*` dirs that no live server uses any more.

        A run dir leaks when its server is killed behind the engine's back (a test's cleanup,
        an OOM kill, a reboot of a machine whose /tmp persists). It is in use while some live
        process has `unix_socket_directories=<dir>` on its command line; younger than
        `min_age` seconds it may belong to a start in progress (of another engine process).
        Called once when the runtime is created.
        """
        candidates = [
            d for d in self.run_root.glob(f"{RUN_DIR_PREFIX}*") if d.is_dir() and not d.is_symlink()
        ]
        if not candidates:
            return []
        in_use = set()
        for pid in procs.all_pids():
            for arg in procs.cmdline(pid):
                if _SOCKET_SETTING in arg:
                    for part in arg.split(_SOCKET_SETTING)[1:]:
                        in_use.add(os.path.realpath(part.split()[0].split(",")[0]))
        removed = []
        now = time.time()
        for d in candidates:
            try:
                age = now - d.stat().st_mtime
            except OSError:
                continue
            if age >= min_age and os.path.realpath(d) not in in_use:
                remove_run_dir(d)
                removed.append(d)
        return removed

    def server_log(self, handle: ServerHandle) -> Path | None:
        """The server log file of a server started by this runtime (None if unknown)."""
        if handle.socket_dir is None:
            return None
        return handle.socket_dir / SERVER_LOG_NAME

    def cluster_state(self, data_dir: Path) -> str | None:
        """`Database cluster state` from pg_controldata (`shut down`, `in production`, …)."""
        install = self._install_for_data_dir(data_dir)
        result = process.run(
            [str(install.bin_dir / "pg_controldata"), str(pgdata_of(data_dir))],
            env=self._server_env(),
            inherit_env=False,
            timeout=30,
        )
        return pg.cluster_state(result.output) if result.exit_code == 0 else None

    # -- internals -----------------------------------------------------------------------------

    def _run_as_server(
        self,
        argv: Sequence[str],
        prefix: str,
        log: LogSink,
        timeout: float,
        cancel: CancelToken = NEVER_CANCELLED,
        *,
        spares_group: bool = False,
    ) -> process.RunResult:
        """Run a server-side program (initdb, pg_ctl) as the server user; each output line
        becomes a log line `<prefix>: <line>`."""
        return process.run_lines(
            argv,
            user=self.user,
            env=self._server_env(),
            inherit_env=False,
            cancel=cancel,
            on_line=lambda _stream, line: log(f"{prefix}: {line}"),
            timeout=timeout,
            spares_group=spares_group,
        )

    def _server_env(self) -> dict[str, str]:
        env = clean_env(os.environ)
        for name in [k for k in env if k.startswith("LC_") or k in ("LANG", "LANGUAGE")]:
            del env[name]
        env["LC_ALL"] = "C"  # untranslated messages: we parse pg_ctl output
        return process.child_env(env, self.user, inherit=False)

    def _client_program(self, install: Installation, name: str) -> Path:
        candidate = install.bin_dir / name
        if _is_executable(candidate):
            return candidate
        found = shutil.which(name)
        if found:
            return Path(found)
        raise JobFailure(
            "internal_error",
            f"cannot run {name}",
            f"{name} is not installed (not in {install.bin_dir} nor on PATH)",
        )

    def _check_startable(self, install: Installation, data_dir: Path, message: str) -> None:
        pgdata = pgdata_of(data_dir)
        version = pg.read_pg_version(data_dir)
        if not (pgdata / "PG_VERSION").is_file() or version is None:
            raise JobFailure(
                "internal_error",
                message,
                "postgres data directory is not initialized (missing PG_VERSION)",
            )
        if version != str(install.major):
            raise JobFailure(
                "internal_error",
                message,
                f"the data directory was initialized by PostgreSQL {version}, "
                f"but the image is PostgreSQL {install.major}",
            )
        try:
            make_startable(data_dir, self.user)
        except (ServerUserError, OSError) as exc:
            raise JobFailure("internal_error", message, str(exc)) from None

    def _clear_stale_pid_file(self, pgdata: Path, log: LogSink, message: str) -> None:
        info = pg.read_postmaster_pid(pgdata)
        if info is None:
            if (pgdata / "postmaster.pid").exists():
                (pgdata / "postmaster.pid").unlink(missing_ok=True)
            return
        pid = self._verified_postmaster(info, pgdata)
        if pid is not None:
            raise JobFailure(
                "internal_error",
                message,
                f"a server is already running on {pgdata} (pid {pid}, port {info.port})",
            )
        log(f"pg_ctl: removing stale postmaster.pid (pid {info.pid} is not running)")
        _remove_stale_pid_file(pgdata, info.pid)

    def _make_run_dir(self) -> Path:
        """The server's private run dir (`server.make_run_dir`); it also holds its log."""
        return make_run_dir(self.run_root, self.user)

    def _start_once(
        self,
        install: Installation,
        data_dir: Path,
        run_dir: Path,
        port: int,
        password: str,
        log: LogSink,
        cancel: CancelToken,
    ) -> ServerHandle:
        pgdata = pgdata_of(data_dir)
        logfile = run_dir / SERVER_LOG_NAME
        offset = logfile.stat().st_size if logfile.exists() else 0
        settings = pg.server_settings(install.major, port, run_dir, run_dir / pg.HBA_FILE_NAME)
        # -W: pg_ctl launches the postmaster (in its own session) and returns; we wait for it
        # ourselves (runtime/postmaster.py), closer than pg_ctl's 100 ms steps.
        argv = pg.pg_ctl_start_argv(install.bin_dir, pgdata, logfile, settings)
        deadline = time.monotonic() + self.start_timeout
        try:
            # pg_ctl may exit before its forked child has left its process group (setsid()):
            # the group must outlive pg_ctl. A cancel still kills it (and start() the rest).
            result = self._run_as_server(
                argv, "pg_ctl", log, self.start_timeout + 15, cancel, spares_group=True
            )
        except ProcessError as exc:
            raise JobFailure("internal_error", "cannot start runtime", str(exc)) from None
        if result.exit_code != 0:
            server_log = pg.log_tail(logfile, start=offset)
            self._kill_run_dir_processes(run_dir, pgdata)
            raise JobFailure(
                "internal_error",
                "cannot start runtime",
                f"pg_ctl start exited with code {result.exit_code}: {result.output.strip()}\n"
                f"server log:\n{server_log.strip()}",
            )
        try:
            ready = postmaster.wait_until_ready(
                pgdata,
                f"{_SOCKET_SETTING}{run_dir}",
                serves=lambda pid: _serves(pid, pgdata),
                timeout=max(0.0, deadline - time.monotonic()),
                cancel=cancel,
            )
        except postmaster.StartupError as exc:
            server_log = pg.log_tail(logfile, start=offset)
            self._kill_run_dir_processes(run_dir, pgdata)
            if isinstance(exc, postmaster.ServerExited) and pg.is_bind_failure(server_log):
                raise _BindFailure(_last_line(server_log, "bind")) from None
            raise JobFailure(
                "internal_error",
                "cannot start runtime",
                f"{exc}\nserver log:\n{server_log.strip()}",
            ) from None
        pid = ready.pid
        log(f"server ready (pid {pid}, port {ready.port})")
        cancel.raise_if_cancelled()
        if ready.port != port:
            raise JobFailure(
                "internal_error",
                "cannot start runtime",
                f"postmaster.pid shows the server (pid {pid}) on port {ready.port}, not on "
                f"port {port}\nserver log:\n{pg.log_tail(logfile, start=offset).strip()}",
            )
        self._wait_ready(install, run_dir, port, password, pid, cancel, deadline, logfile, offset)
        why = diverted(port)
        if why is not None:  # a container engine's NAT rule owns the port (ports.py)
            self._kill_run_dir_processes(run_dir, pgdata)
            self.ports.avoid(port)
            raise _BindFailure(why)
        with self._run_dirs_lock:
            self._run_dirs[runtime_id_for(pid)] = run_dir
        return ServerHandle(
            runtime_id=runtime_id_for(pid),
            data_dir=data_dir,
            host=LOOPBACK,
            port=port,
            socket_dir=run_dir,
            pid=pid,
            password=password,
        )

    def _wait_ready(
        self,
        install: Installation,
        run_dir: Path,
        port: int,
        password: str,
        pid: int,
        cancel: CancelToken,
        deadline: float,
        logfile: Path,
        offset: int,
    ) -> None:
        """Ready = a trusted connection on the private socket that also sets the password
        (`server.set_password_when_ready`). `postmaster.wait_until_ready` has already waited for
        the postmaster to report `ready`, which it does only after opening its sockets."""
        failure = server.set_password_when_ready(
            run_dir,
            port,
            install.major,
            password,
            alive=lambda: procs.is_alive(pid),
            deadline=deadline,
            cancel=cancel,
        )
        if failure is None:
            return
        raise JobFailure(
            "internal_error",
            "cannot start runtime",
            f"server does not accept connections on port {port}: {failure}\n"
            f"server log:\n{pg.log_tail(logfile, start=offset).strip()}",
        )

    def _status(self, install: Installation, pgdata: Path) -> pg.PgCtlStatus:
        result = process.run(
            pg.pg_ctl_status_argv(install.bin_dir, pgdata),
            user=self.user,
            env=self._server_env(),
            inherit_env=False,
            timeout=30,
        )
        try:
            status = pg.parse_pg_ctl_status(result.exit_code, result.output)
        except ValueError as exc:
            raise JobFailure("internal_error", "cannot check server status", str(exc)) from None
        # pg_ctl trusts kill(pid, 0), which succeeds for zombies: double-check the process.
        if status.running and status.pid is not None and not procs.is_alive(status.pid):
            return pg.PgCtlStatus(False)
        return status

    def _verified_postmaster(self, info: pg.PostmasterPid | None, pgdata: Path) -> int | None:
        """The pid from postmaster.pid if it is a live postgres serving `pgdata`."""
        if info is None:
            return None
        return info.pid if _serves(info.pid, pgdata) else None

    def _kill(self, handle: ServerHandle) -> None:
        pgdata = pgdata_of(handle.data_dir)
        info = pg.read_postmaster_pid(pgdata)
        pids: set[int] = set()
        verified = self._verified_postmaster(info, pgdata)
        if verified is not None:
            pids.add(verified)
        known = _handle_pid(handle)
        if known is not None and _serves(known, pgdata, allow_deleted=True):
            pids.add(known)
        socket_dir = handle.socket_dir or (
            Path(info.socket_dir) if info is not None and info.socket_dir else None
        )
        if socket_dir is None:
            socket_dir = next((d for d in map(_socket_dir_of, pids) if d is not None), None)
        if socket_dir is None:  # a server of ours that died with its data dir gone
            with self._run_dirs_lock:
                socket_dir = self._run_dirs.get(handle.runtime_id)
        for pid in pids:
            # Immediate shutdown: the postmaster takes its children down with it.
            procs.send(pid, signal.SIGQUIT)
        if not procs.wait_dead(pids, 3.0):
            for pid in pids:
                procs.send(pid, signal.SIGKILL)
            procs.wait_dead(pids, 5.0)
        groups = pids | {p for p in (info.pid if info else None, known) if p is not None}
        _sweep_data_dir(pgdata, groups)  # e.g. backends of a postmaster that was SIGKILLed
        if info is not None and not procs.is_alive(info.pid):
            _remove_stale_pid_file(pgdata, info.pid)
        if socket_dir is not None and is_our_run_dir(socket_dir, self.run_root):
            self._kill_run_dir_processes(socket_dir, pgdata)
        self._release(handle, socket_dir)

    def _kill_run_dir_processes(self, run_dir: Path, pgdata: Path) -> None:
        """Kill whatever a (failed/cancelled) start on `run_dir` left running.

        Every process of such a start — pg_ctl, its `sh -c`, the postmaster — carries
        `unix_socket_directories=<run_dir>` in its command line; the postmaster's children
        are found by their working directory (PGDATA) and process group.
        """
        needle = f"unix_socket_directories={run_dir}"
        killed: set[int] = set()
        for _round in range(2):  # a second look catches a process that was mid-exec
            pids = procs.find_by_cmdline(needle)
            for pid in pids:
                procs.send(pid, signal.SIGKILL)
            procs.wait_dead(pids, 5.0)
            killed.update(pids)
            if not pids:
                break
        _sweep_data_dir(pgdata, killed)
        info = pg.read_postmaster_pid(pgdata)
        if info is not None and not procs.is_alive(info.pid):
            _remove_stale_pid_file(pgdata, info.pid)

    def _release(self, handle: ServerHandle, socket_dir: Path | None) -> None:
        self.ports.release(handle.port)
        with self._run_dirs_lock:
            self._run_dirs.pop(handle.runtime_id, None)
        if socket_dir is not None and is_our_run_dir(socket_dir, self.run_root):
            remove_run_dir(socket_dir)


class _BindFailure(Exception):
    """The port cannot be the server's — someone took it before the server could listen, or
    a NAT rule diverts its connections elsewhere: retry with another."""


# -- helpers -------------------------------------------------------------------------------------


def _numeric_key(text: str) -> tuple[int, str]:
    match = re.match(r"\d+", text)
    return (int(match.group(0)) if match else -1, text)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _handle_pid(handle: ServerHandle) -> int | None:
    """The postmaster pid a handle names (`pid`, else from a `host:<pid>` runtime id)."""
    return handle.pid if handle.pid is not None else pid_of_runtime_id(handle.runtime_id)


def _socket_dir_of(pid: int) -> Path | None:
    """`unix_socket_directories` from a postmaster's command line."""
    for arg in procs.cmdline(pid):
        if arg.startswith(_SOCKET_SETTING):
            value = arg[len(_SOCKET_SETTING) :].split(",")[0].strip()
            return Path(value) if value else None
    return None


_SOCKET_SETTING = "unix_socket_directories="


def _serves(pid: int, pgdata: Path, *, allow_deleted: bool = False) -> bool:
    """Is `pid` a live postgres process whose data directory is `pgdata`?

    The postmaster changes into its data directory, so `/proc/<pid>/cwd` identifies it; when
    that link is unreadable (another user, non-root engine) the `-D` argument is compared.
    `allow_deleted`: also accept a server whose data directory was removed under it (the
    kernel then shows the cwd as `<path> (deleted)`) — for `kill` only.
    """
    if not procs.is_alive(pid):
        return False
    want = os.path.realpath(pgdata)
    where = procs.cwd(pid)
    if where is not None:
        if allow_deleted and where == f"{want} (deleted)":
            exe = procs.exe(pid) or ""
            return os.path.basename(exe) in ("postgres", "postmaster")
        return where == want
    args = procs.cmdline(pid)
    if not args or os.path.basename(args[0]) not in ("postgres", "postmaster"):
        return False
    for flag, value in itertools.pairwise(args):
        if flag == "-D":
            return os.path.realpath(value) == want
    return False


def _sweep_data_dir(pgdata: Path, groups: set[int]) -> None:
    """SIGKILL every live server process of `pgdata` and what they started; wait for them.

    A server process works in PGDATA (the postmaster chdirs there; children inherit it); we
    take those that run the postgres executable, and the processes of their process groups or
    of the postmasters' `groups` — each postgres child leads a group of its own (it calls
    setsid()), and what it starts stays in it: a `restore_command` or `archive_command` shell
    would otherwise outlive its server. A user's shell that happens to sit in PGDATA is left
    alone.
    """
    want = os.path.realpath(pgdata)
    wanted = (want, f"{want} (deleted)")
    groups = set(groups)
    for _round in range(3):
        present = [p for p in procs.all_pids() if procs.cwd(p) in wanted and procs.is_alive(p)]
        servers = {p for p in present if _runs_postgres(p)}
        groups |= {g for g in map(procs.process_group, servers) if g is not None}
        victims = [p for p in present if p in servers or procs.process_group(p) in groups]
        if not victims:
            return
        for pid in victims:
            procs.send(pid, signal.SIGKILL)
        procs.wait_dead(victims, 5.0)


def _runs_postgres(pid: int) -> bool:
    exe = procs.exe(pid)
    return exe is not None and os.path.basename(exe) in ("postgres", "postmaster")


def _remove_stale_pid_file(pgdata: Path, pid: int) -> None:
    """Remove postmaster.pid if it still names `pid` (a new server may have replaced it)."""
    info = pg.read_postmaster_pid(pgdata)
    if info is not None and info.pid == pid:
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _last_line(text: str, containing: str) -> str:
    for line in reversed(text.splitlines()):
        if containing.lower() in line.lower():
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else ""


def _conforms(runtime: HostRuntime) -> Runtime:
    """Type-level proof that HostRuntime implements the Runtime protocol (checked by mypy)."""
    return runtime


__all__ = [
    "CLIENT_PROGRAMS",
    "CLIENT_TAG_ENV",
    "HostRuntime",
    "Installation",
    "parse_image",
    "pid_of_runtime_id",
    "runtime_id_for",
    "version_of_resolved",
]
