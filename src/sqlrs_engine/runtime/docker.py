"""The `docker` runtime: PostgreSQL servers as containers of a Docker-API engine (SPEC §2.10).

Everything goes through the `docker` SDK (Docker, or Podman's Docker-compatible socket); the
`docker` CLI is never run.

- **Data stays on the host** in the state store's layout: a container bind-mounts the data dir
  (a base, or a clone made by overlay/btrfs/copy) at `DATA_MOUNT`, so the snapshot backends work
  unchanged underneath. Host directories are owned by the uid/gid of the image's `postgres`
  user (looked up once per image by running `id` in it), which is who initdb and the server run
  as.
- **Resolved image ids** are immutable: `<name>@sha256:<repo digest>` when the image has a
  repo digest, else `<name>@id-sha256:<image id>` (images built or imported locally). A
  re-tagged image therefore gets a new id and never reuses states of the old one.
- **Containers are labeled** `sqlrs.store=<store root>`, `sqlrs.role=server|init|client|probe`
  and (servers) `sqlrs.data-dir=<data dir>`, `sqlrs.port=<port>`. A restarted engine adopts its
  running servers by these labels and never touches a container without its store label. At
  start-up it removes its leftover init/client containers and stopped servers (a crashed
  engine's debris).
- **Ports**: the server listens inside the container on the same port number that is published
  on `127.0.0.1` only, so the DSN's `-h 127.0.0.1 -p <port>` is valid both on the host and in
  the server's network namespace.
- **Security** (SPEC §0.9, as on `host`, through `runtime/server.py`): each server has a run
  dir `<tmp>/sqlrs-ctr-XXXXXXXX/` (0700, the image's postgres user) bind-mounted at its host
  path, holding its Unix socket and the engine's `pg_hba.conf` (`-c hba_file=`): the socket is
  trusted, TCP needs the instance's SCRAM password from any address (the published port
  arrives from the bridge). The engine reaches that socket from the host to set the password
  and count connections, without an exec. A server container mounts only its data dir (a
  clone; states are never mounted) and its run dir.
- **Client programs** (psql, pgbench) run in a short-lived client container of the same image
  as its unprivileged `postgres` user, sharing the server container's network namespace (so
  no port is opened to anything else), with the password in `PGPASSWORD`, a step's staging
  copy, the working directory and the directories of the `-f` files bind-mounted read-only at
  their host paths (so `\\i` includes resolve), and stdin for `-f -` given through a file of
  that user's group. A Docker exec cannot add mounts, which is why this is a sibling
  container rather than an exec in the server container.

**runtime_id** is `docker:<container id>`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.dbms import postgres as pg
from sqlrs_engine.dbms.scram import new_secret
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.process import RunAs
from sqlrs_engine.runtime import server as common
from sqlrs_engine.runtime.base import (
    CANNOT_RESOLVE_IMAGE,
    LogSink,
    OutputSink,
    Runtime,
    ServerHandle,
    pgdata_of,
)
from sqlrs_engine.runtime.ports import LOOPBACK, PortAllocator, port_is_free
from sqlrs_engine.runtime.users import ServerUserError, ensure_owned_dir

logger = logging.getLogger(__name__)

RUNTIME_ID_PREFIX = "docker:"
DATA_MOUNT = "/var/lib/sqlrs/data"
STDIN_MOUNT = "/run/sqlrs-stdin"
LABEL_STORE = "sqlrs.store"
LABEL_ROLE = "sqlrs.role"
LABEL_DATA_DIR = "sqlrs.data-dir"
LABEL_PORT = "sqlrs.port"
LABEL_RUN_DIR = "sqlrs.run-dir"
LABEL_SERVER = "sqlrs.server"
"""On client containers: the server container whose network namespace they share (they must
go before it can be removed)."""
RUN_DIR_PREFIX = "sqlrs-ctr-"
"""Run dirs of containerized servers: not `sqlrs-pg-` (the host runtime's sweep would take
them for unused, as no host process names them on its command line)."""
ID_DIGEST_PREFIX = "id-"
LOG_TAIL_LINES = 40
WAIT_POLL = 2.0
FOLLOW_GRACE = 2.0
"""Seconds a log follow may take to end after its container exited. Podman sometimes keeps a
follow open past the exit of a short-lived container; the rest is then read without follow."""
ALIVE_EVERY = 0.1
"""Seconds between checks that a starting server's container still runs."""

APIFailure = (docker.errors.DockerException, requests.exceptions.RequestException)
"""What the SDK raises when the engine refuses or is unreachable (never a 500 for the user)."""


def is_local_name(name: str) -> bool:
    """True for images that can only exist locally (no registry to pull them from)."""
    return name.startswith("localhost/") or name.startswith("sha256:")


def split_resolved(resolved_image_id: str) -> tuple[str, str]:
    """`name@digest` → (name, reference usable with the engine's image API)."""
    name, sep, digest = resolved_image_id.strip().rpartition("@")
    if not sep or not name or not digest:
        raise ValueError(f"{resolved_image_id!r} is not a resolved image id (name@digest)")
    if digest.startswith(ID_DIGEST_PREFIX + "sha256:"):
        return name, digest[len(ID_DIGEST_PREFIX) :]
    if digest.startswith("sha256:"):
        return name, f"{_repository(name)}@{digest}"
    raise ValueError(f"{resolved_image_id!r} has an unknown digest kind")


def resolved_id_of(name: str, attrs: Mapping[str, Any]) -> str:
    """The immutable id of an image (its API attrs): repo digest of `name`'s repository if it
    has one, else the image id — never the tag, so a re-tag changes the id."""
    repository = _repository(name)
    for repo_digest in attrs.get("RepoDigests") or []:
        repo, _, digest = str(repo_digest).partition("@")
        if digest.startswith("sha256:") and _same_repository(repo, repository):
            return f"{name}@{digest}"
    image_id = str(attrs["Id"])
    if not image_id.startswith("sha256:"):
        image_id = f"sha256:{image_id}"
    return f"{name}@{ID_DIGEST_PREFIX}{image_id}"


def _repository(name: str) -> str:
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _same_repository(a: str, b: str) -> bool:
    def norm(text: str) -> str:
        for prefix in ("docker.io/library/", "docker.io/", "library/"):
            if text.startswith(prefix):
                return text[len(prefix) :]
        return text

    return norm(a) == norm(b)


class DockerRuntime:
    """`Runtime` (runtime/base.py) running PostgreSQL in containers through the docker SDK."""

    kind = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        store_root: Path | str,
        *,
        base_url: str = "",
        ports: PortAllocator | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 60.0,
        start_attempts: int = 5,
        locale: str = pg.DEFAULT_LOCALE,
        run_root: Path | str | None = None,
    ) -> None:
        """`run_root`: where servers' run dirs (socket, `pg_hba.conf`) are made; default the
        system's temporary directory (socket paths are limited to 107 bytes)."""
        self.client = client
        self.store = str(Path(store_root).resolve())
        self.base_url = base_url
        self.ports = ports or PortAllocator()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.start_attempts = start_attempts
        self.locale = locale
        self.run_root = Path(run_root) if run_root is not None else Path(tempfile.gettempdir())
        self._users: dict[str, RunAs] = {}
        self._removing: set[str] = set()
        """Server containers this runtime is removing: their clients' failures say so."""
        self._stream_api: Any = None
        self._lock = threading.Lock()

    # -- labels ---------------------------------------------------------------------------------

    def _labels(self, role: str, **extra: str) -> dict[str, str]:
        return {LABEL_STORE: self.store, LABEL_ROLE: role, **extra}

    def _filters(self, role: str | None = None, **extra: str) -> dict[str, Any]:
        labels = [f"{LABEL_STORE}={self.store}"]
        if role is not None:
            labels.append(f"{LABEL_ROLE}={role}")
        labels.extend(f"{k}={v}" for k, v in extra.items())
        return {"label": labels}

    def our_containers(self) -> list[Any]:
        """Every container (running or not) carrying this store's label."""
        return list(self.client.containers.list(all=True, filters=self._filters()))

    def data_dirs_in_use(self) -> list[Path]:
        """Data dirs bind-mounted into this store's running servers (kept by the mount sweep)."""
        try:
            running = self.client.containers.list(filters=self._filters("server"))
        except APIFailure:
            logger.exception("cannot list running servers")
            return []
        return [Path(c.labels[LABEL_DATA_DIR]) for c in running if LABEL_DATA_DIR in c.labels]

    def sweep(self) -> list[str]:
        """Remove a crashed engine's leftovers: init/client/probe containers and stopped
        servers of this store. Running servers are kept for `adopt`. Returns removed ids."""
        removed = []
        for container in self.our_containers():
            role = container.labels.get(LABEL_ROLE)
            if role == "server" and container.status == "running":
                continue
            with contextlib.suppress(*APIFailure):
                container.remove(force=True)
                removed.append(container.id)
                run_dir = container.labels.get(LABEL_RUN_DIR)
                if run_dir and common.is_our_run_dir(Path(run_dir), self.run_root, RUN_DIR_PREFIX):
                    common.remove_run_dir(Path(run_dir))
        return removed

    # -- images ---------------------------------------------------------------------------------

    def resolve_image(self, image_id: str, log: LogSink, cancel: CancelToken) -> str:
        log(f"resolve image {image_id}")
        cancel.raise_if_cancelled()
        if "@" in image_id:
            self.check_image(image_id)
            return image_id.strip()
        name = image_id.strip()
        image = self._image_or_pull(name, log)
        resolved = resolved_id_of(name, image.attrs)
        log(f"resolved image {resolved}")
        return resolved

    def check_image(self, image_id: str) -> None:
        text = image_id.strip()
        if "@" not in text:
            return
        try:
            _name, ref = split_resolved(text)
        except ValueError as exc:
            raise JobFailure("internal_error", CANNOT_RESOLVE_IMAGE, str(exc)) from None
        try:
            self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            raise JobFailure(
                "internal_error",
                CANNOT_RESOLVE_IMAGE,
                f"image {text!r} is not present in the container engine at {self._where()}; "
                "pull or load that exact image (or ask for its tag to resolve it again)",
            ) from None
        except APIFailure as exc:
            raise JobFailure("internal_error", CANNOT_RESOLVE_IMAGE, self._api_text(exc)) from None

    def _image_or_pull(self, name: str, log: LogSink) -> Any:
        try:
            return self.client.images.get(name)
        except docker.errors.ImageNotFound:
            pass
        except APIFailure as exc:
            raise JobFailure("internal_error", CANNOT_RESOLVE_IMAGE, self._api_text(exc)) from None
        how = (
            f"pull or build it (`docker pull {name}`, `podman load`, or scripts/container-engine "
            "which builds localhost/postgres:15)"
        )
        if is_local_name(name):
            raise JobFailure(
                "internal_error",
                CANNOT_RESOLVE_IMAGE,
                f"image {name!r} is not present in the container engine at {self._where()} and "
                f"is local-only; {how}",
            )
        log(f"pulling image {name}")
        try:
            return self.client.images.pull(name)
        except APIFailure as exc:
            raise JobFailure(
                "internal_error",
                CANNOT_RESOLVE_IMAGE,
                f"image {name!r} is not present in the container engine at {self._where()} and "
                f"could not be pulled ({self._api_text(exc)}); {how}",
            ) from None

    def _ref(self, resolved_image_id: str, message: str) -> str:
        try:
            return split_resolved(resolved_image_id)[1]
        except ValueError as exc:
            raise JobFailure("internal_error", message, str(exc)) from None

    def server_user(self, ref: str) -> RunAs:
        """uid/gid of the image's `postgres` user (cached per image reference)."""
        with self._lock:
            cached = self._users.get(ref)
        if cached is not None:
            return cached
        output = self._run_to_end(
            ref, ["sh", "-c", "id -u postgres && id -g postgres"], "probe", user="0:0"
        )
        parts = output.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise JobFailure(
                "internal_error",
                "cannot use image",
                f"image {ref} has no `postgres` user (id printed {output.strip()!r})",
            )
        user = RunAs("postgres", int(parts[0]), int(parts[1]))
        with self._lock:
            self._users[ref] = user
        return user

    # -- base init --------------------------------------------------------------------------------

    def init_base(
        self, resolved_image_id: str, data_dir: Path, log: LogSink, cancel: CancelToken
    ) -> None:
        message = "cannot initialize base state"
        ref = self._ref(resolved_image_id, message)
        pgdata = pgdata_of(data_dir)
        if pgdata.exists() and (not pgdata.is_dir() or any(pgdata.iterdir())):
            raise JobFailure("internal_error", message, f"{pgdata} already exists and is not empty")
        user = self.server_user(ref)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            ensure_owned_dir(pgdata, user, 0o700)
        except OSError as exc:
            raise JobFailure("internal_error", message, str(exc)) from None
        argv = pg.initdb_argv(Path(""), Path(DATA_MOUNT) / pg.PGDATA_DIRNAME, locale=self.locale)
        argv[0] = "initdb"
        try:
            output = self._run_to_end(
                ref,
                argv,
                "init",
                user=f"{user.uid}:{user.gid}",
                volumes={str(data_dir): {"bind": DATA_MOUNT, "mode": "rw"}},
                cancel=cancel,
                failure=message,
            )
            for line in output.splitlines():
                log(f"initdb: {line}")
            pg.write_hba(pgdata / pg.HBA_FILE_NAME)
        except BaseException:
            shutil.rmtree(pgdata, ignore_errors=True)
            raise

    def prepare_data_dir(self, data_dir: Path) -> None:
        """Give a clone's top directory to the image's postgres user; PGDATA 0700.

        The owner is the one recorded on the data dir's PGDATA (set at base init), so no image
        lookup is needed. No walk of the tree (a cache hit's cost): every file of a docker
        base or state was written inside a container by that user (initdb, the server), and
        the snapshot backends keep owners, so only the clone's top (made by the engine) and
        the PGDATA mode can differ. `start` checks the same again (`server.make_startable`).
        """
        pgdata = pgdata_of(data_dir)
        if not pgdata.is_dir():
            return
        st = pgdata.stat()
        with contextlib.suppress(ServerUserError):
            common.make_startable(
                data_dir, RunAs("postgres", st.st_uid, st.st_gid), check_path=False
            )

    def input_gid(self, handle: ServerHandle) -> int | None:
        """The image's postgres group (client containers run as that user): it may read the
        staged inputs of a step."""
        try:
            return pgdata_of(handle.data_dir).stat().st_gid
        except OSError:
            return None

    # -- servers --------------------------------------------------------------------------------

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
        ref = self._ref(resolved_image_id, message)
        pgdata = pgdata_of(data_dir)
        if not pgdata.is_dir():
            raise JobFailure("internal_error", message, f"{pgdata} is not a directory")
        version = pg.read_pg_version(data_dir)
        if version is None:
            raise JobFailure("internal_error", message, pg.MISSING_PG_VERSION_MESSAGE)
        major = pg.major_of(version)
        user = self.server_user(ref)
        try:
            # The container engine bind-mounts the data dir: no host path to traverse.
            common.make_startable(data_dir, user, check_path=False)
        except (ServerUserError, OSError) as exc:
            raise JobFailure("internal_error", message, str(exc)) from None
        stale = pgdata / "postmaster.pid"
        if stale.exists():
            # A container of this data dir would be found by adopt; none runs, so it is stale.
            log("postgres: removing stale postmaster.pid")
            stale.unlink()
        try:
            run_dir = common.make_run_dir(self.run_root, user, RUN_DIR_PREFIX)
        except OSError as exc:
            raise JobFailure("internal_error", message, f"cannot create run dir: {exc}") from None
        failures = []
        try:
            for attempt in range(self.start_attempts):
                port = self._choose_port(preferred_port if attempt == 0 else None)
                if attempt == 0 and preferred_port is not None and port != preferred_port:
                    log(
                        f"postgres: port {preferred_port} is taken by another process; "
                        f"listening on port {port} instead"
                    )
                log("docker: start container")
                try:
                    container = self._create_server(ref, data_dir, run_dir, port, major, user)
                except docker.errors.APIError as exc:
                    self.ports.release(port)
                    text = str(exc).lower()
                    if "address already in use" in text or "bind" in text:
                        failures.append(f"port {port}: {self._api_text(exc)}")
                        log(f"postgres: port {port} was taken by another process, retrying")
                        continue
                    raise JobFailure("internal_error", message, self._api_text(exc)) from None
                except APIFailure as exc:
                    self.ports.release(port)
                    raise JobFailure("internal_error", message, self._api_text(exc)) from None
                log(f"docker: container started {container.id}")
                handle = ServerHandle(
                    runtime_id=f"{RUNTIME_ID_PREFIX}{container.id}",
                    data_dir=data_dir,
                    host=LOOPBACK,
                    port=port,
                    socket_dir=run_dir,
                    password=secret,
                )
                try:
                    self._wait_ready(container, handle, major, cancel, message)
                except BaseException:
                    self._remove_server(container, handle)
                    raise
                log(f"docker: postgres ready on {LOOPBACK}:{port}")
                return handle
        except BaseException:
            common.remove_run_dir(run_dir)
            raise
        common.remove_run_dir(run_dir)
        raise JobFailure(
            "internal_error",
            message,
            f"could not publish a free port after {self.start_attempts} attempts: "
            + "; ".join(failures),
        )

    def _choose_port(self, preferred: int | None) -> int:
        if preferred is not None and port_is_free(preferred) and self.ports.reserve(preferred):
            return preferred
        return self.ports.allocate()

    def _create_server(
        self, ref: str, data_dir: Path, run_dir: Path, port: int, major: int, user: RunAs
    ) -> Any:
        """The server container: PGDATA from the bind-mounted data dir, the socket and
        `pg_hba.conf` in the run dir mounted at its host path (so the engine reaches the
        socket directly), the same settings as on the host except that it listens on the
        container's own interfaces: the published port arrives from the bridge, where the
        engine's `pg_hba.conf` requires the password like on any address."""
        settings = [
            ("listen_addresses", "*") if name == "listen_addresses" else (name, value)
            for name, value in pg.server_settings(major, port, run_dir, run_dir / pg.HBA_FILE_NAME)
        ]
        command = [
            "postgres",
            "-D",
            f"{DATA_MOUNT}/{pg.PGDATA_DIRNAME}",
            *pg.settings_argv(settings),
        ]
        labels = {LABEL_DATA_DIR: str(data_dir), LABEL_PORT: str(port), LABEL_RUN_DIR: str(run_dir)}
        return self.client.containers.run(
            ref,
            command,
            detach=True,
            user=f"{user.uid}:{user.gid}",
            labels=self._labels("server", **labels),
            ports={f"{port}/tcp": (LOOPBACK, port)},
            volumes={
                str(data_dir): {"bind": DATA_MOUNT, "mode": "rw"},
                str(run_dir): {"bind": str(run_dir), "mode": "rw"},
            },
            stop_signal="SIGINT",  # fast shutdown: a checkpoint, no crash recovery next time
            shm_size="256m",
        )

    def _wait_ready(
        self, container: Any, handle: ServerHandle, major: int, cancel: CancelToken, message: str
    ) -> None:
        """Ready = the trusted socket in the run dir answers, which also sets the password
        (`server.set_password_when_ready`, no exec); a container that exits fails the start
        with its log tail."""
        assert handle.socket_dir is not None and handle.password is not None
        exited: list[str] = []
        checked = [time.monotonic()]

        def alive() -> bool:
            # An inspect per poll would load the engine's API: ask at most every ALIVE_EVERY.
            if time.monotonic() - checked[0] < ALIVE_EVERY:
                return True
            checked[0] = time.monotonic()
            try:
                container.reload()
            except APIFailure as exc:
                exited.append(self._api_text(exc))
                return False
            if container.status in ("created", "running"):
                return True
            exited.append(f"container {container.short_id} exited ({container.status})")
            return False

        failure = common.set_password_when_ready(
            handle.socket_dir,
            handle.port,
            major,
            handle.password,
            alive=alive,
            deadline=time.monotonic() + self.start_timeout,
            cancel=cancel,
        )
        if failure is None:
            return
        why = exited[0] if exited else f"server not ready after {self.start_timeout:.0f}s"
        raise JobFailure(
            "internal_error",
            message,
            f"{why}: {failure}; last log lines:\n{self.log_tail(container)}",
        )

    def _container(self, handle: ServerHandle) -> Any | None:
        if not handle.runtime_id.startswith(RUNTIME_ID_PREFIX):
            return None
        try:
            container = self.client.containers.get(handle.runtime_id[len(RUNTIME_ID_PREFIX) :])
        except docker.errors.NotFound:
            return None
        if container.labels.get(LABEL_STORE) != self.store:
            return None  # never touch a container this engine did not create
        return container

    def _run_dir_of(self, handle: ServerHandle, container: Any | None) -> Path | None:
        if handle.socket_dir is not None:
            return handle.socket_dir
        if container is not None and container.labels.get(LABEL_RUN_DIR):
            return Path(container.labels[LABEL_RUN_DIR])
        return None

    def _release(self, handle: ServerHandle, run_dir: Path | None) -> None:
        self.ports.release(handle.port)
        if run_dir is not None and common.is_our_run_dir(run_dir, self.run_root, RUN_DIR_PREFIX):
            common.remove_run_dir(run_dir)

    def _remove_server(self, container: Any, handle: ServerHandle) -> None:
        with contextlib.suppress(*APIFailure):
            self._remove_with_clients(container)
        self.ports.release(handle.port)

    def _remove_with_clients(self, server: Any) -> None:
        """Force-remove a server container after the client containers in its network
        namespace: the engine refuses to remove a container others depend on, and their
        programs must die anyway (they then fail with "server container died")."""
        with self._lock:
            self._removing.add(server.id)
        try:
            for client in self.client.containers.list(
                all=True, filters=self._filters("client", **{LABEL_SERVER: server.id})
            ):
                with contextlib.suppress(docker.errors.NotFound):
                    client.remove(force=True)
            server.remove(force=True)
        finally:
            with self._lock:
                self._removing.discard(server.id)

    def stop(self, handle: ServerHandle, log: LogSink) -> None:
        message = "cannot stop server"
        try:
            container = self._container(handle)
            run_dir = self._run_dir_of(handle, container)
            if container is None:
                log("postgres: container is gone")
                self._release(handle, run_dir)
                return
            if container.status == "running":
                container.stop(timeout=int(self.stop_timeout))
            result = container.wait(timeout=self.stop_timeout)
            code = int(result.get("StatusCode", -1))
            tail = self.log_tail(container)
            self._remove_with_clients(container)
        except APIFailure as exc:
            raise JobFailure("internal_error", message, self._api_text(exc)) from None
        self._release(handle, run_dir)
        if code != 0 or (pgdata_of(handle.data_dir) / "postmaster.pid").exists():
            raise JobFailure("internal_error", message, f"postgres exited with code {code}: {tail}")

    def kill(self, handle: ServerHandle) -> None:
        container = None
        try:
            container = self._container(handle)
            if container is not None:
                self._remove_with_clients(container)
        except docker.errors.NotFound:
            pass
        except APIFailure:
            # Still there: its run dir (socket) stays; a later kill or the start-up sweep
            # removes both.
            logger.exception("kill of container %s failed", handle.runtime_id)
            self.ports.release(handle.port)
            return
        self._release(handle, self._run_dir_of(handle, container))

    def is_running(self, handle: ServerHandle) -> bool:
        try:
            container = self._container(handle)
        except APIFailure:
            return False
        return (
            container is not None
            and container.status == "running"
            and container.labels.get(LABEL_DATA_DIR) == str(handle.data_dir)
        )

    def adopt(self, resolved_image_id: str, data_dir: Path) -> ServerHandle | None:
        try:
            found = self.client.containers.list(
                filters=self._filters("server", **{LABEL_DATA_DIR: str(data_dir)})
            )
        except APIFailure:
            logger.exception("cannot list containers to adopt %s", data_dir)
            return None
        for container in found:
            port_text = container.labels.get(LABEL_PORT, "")
            run_dir = container.labels.get(LABEL_RUN_DIR)
            if container.status == "running" and port_text.isdigit():
                port = int(port_text)
                self.ports.reserve(port)
                return ServerHandle(
                    runtime_id=f"{RUNTIME_ID_PREFIX}{container.id}",
                    data_dir=data_dir,
                    host=LOOPBACK,
                    port=port,
                    socket_dir=Path(run_dir) if run_dir else None,
                )
        return None

    # -- clients --------------------------------------------------------------------------------

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
        """Run psql/pgbench in a client container sharing the server's network namespace.

        It runs as the image's unprivileged `postgres` user (SPEC §0.9), with the handle's
        password in `PGPASSWORD` (`server.client_env`), never on a command line. Read-only
        mounts at their host paths: `inputs` (a step's staging copy), the working directory
        and the directories of `-f` files; stdin goes through a file only that user's group
        can read, in the server's run dir. Output is delivered as it is produced (the
        container's log, followed per stream). Cancel kills and removes the client container
        and raises `cancelled`.
        """
        name = common.client_program(program)
        message = f"cannot run {name}"
        server = self._container(handle)
        if server is None or server.status != "running":
            raise JobFailure(
                "internal_error", message, f"server container {handle.runtime_id} is not running"
            )
        user = self.server_user(server.image.id)
        mounts = client_mounts(args, cwd, [inputs] if inputs is not None else [])
        volumes = {d: {"bind": d, "mode": "ro"} for d in mounts}
        command = [name, *args]
        stdin_dir: str | None = None
        try:
            if stdin is not None:
                # Inside the server's run dir, which goes with the server: a crash mid-run
                # leaves nothing behind that outlives its instance.
                stdin_dir = tempfile.mkdtemp(prefix="stdin-", dir=self._run_dir_of(handle, server))
                stdin_file = Path(stdin_dir, "stdin")
                fd = os.open(stdin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(stdin)
                if os.geteuid() == 0:
                    os.chown(stdin_dir, 0, user.gid)
                    os.chown(stdin_file, 0, user.gid)
                os.chmod(stdin_dir, 0o750)
                volumes[stdin_dir] = {"bind": STDIN_MOUNT, "mode": "ro"}
                command = ["sh", "-c", f'exec "$0" "$@" < {STDIN_MOUNT}/stdin', *command]
            try:
                container = self.client.containers.run(
                    server.image.id,
                    command,
                    detach=True,
                    labels=self._labels("client", **{LABEL_SERVER: server.id}),
                    network_mode=f"container:{server.id}",
                    volumes=volumes,
                    working_dir=str(cwd) if cwd is not None else "/",
                    user=f"{user.uid}:{user.gid}",
                    environment=common.client_env({}, handle, env),
                )
            except APIFailure as exc:
                raise JobFailure("internal_error", message, self._api_text(exc)) from None
            api = self._streaming_api()
            pumps = [_LogPump(api, container.id, name, on_output) for name in ("stdout", "stderr")]
            try:
                code = self._wait_exit(container, cancel)
                for pump in pumps:
                    if not pump.ended(FOLLOW_GRACE):
                        pump.catch_up(self._log_of(container, pump.stream))
            except APIFailure as exc:
                # The client container vanishes with its server (kill removes both): say so.
                self._raise_if_server_died(server, handle)
                raise JobFailure("internal_error", message, self._api_text(exc)) from None
            finally:
                with contextlib.suppress(*APIFailure):
                    container.remove(force=True)
        finally:
            if stdin_dir is not None:
                shutil.rmtree(stdin_dir, ignore_errors=True)
        for pump in pumps:
            if pump.error is not None:
                self._raise_if_server_died(server, handle)
                raise JobFailure("internal_error", message, self._api_text(pump.error))
        if code != 0:
            self._raise_if_server_died(server, handle)
        return code

    def _raise_if_server_died(self, server: Any, handle: ServerHandle) -> None:
        """A client that failed because its server container died: fail with the server's
        log tail (why it died), not just the client's "connection lost"."""
        with self._lock:
            removed = server.id in self._removing
        if removed:
            raise JobFailure(
                "internal_error",
                "server container died",
                f"container {handle.runtime_id} was removed while the program ran",
            )
        try:
            server.reload()
        except docker.errors.NotFound:
            raise JobFailure(
                "internal_error",
                "server container died",
                f"container {handle.runtime_id} was removed while the program ran",
            ) from None
        except APIFailure:
            return
        if server.status != "running":
            raise JobFailure(
                "internal_error",
                "server container died",
                f"container {server.short_id} is {server.status} "
                f"(exit code {server.attrs.get('State', {}).get('ExitCode')}); last log lines:\n"
                + self.log_tail(server),
            )

    def _wait_exit(self, container: Any, cancel: CancelToken) -> int:
        """Wait for a one-off container to exit; cancel kills it at once (then raises)."""

        def kill() -> None:
            with contextlib.suppress(*APIFailure):
                container.kill()

        unregister = cancel.register(kill)
        try:
            while True:
                try:
                    result = container.wait(timeout=WAIT_POLL)
                    break
                except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                    container.reload()  # still there and the engine still answers
        finally:
            unregister()
        cancel.raise_if_cancelled()
        return int(result.get("StatusCode", -1))

    def count_connections(self, handle: ServerHandle) -> int:
        container = self._container(handle)
        if container is None or container.status != "running":
            return 0
        run_dir = self._run_dir_of(handle, container)
        if run_dir is None:
            raise JobFailure(
                "internal_error",
                "cannot count connections",
                f"container {container.short_id} has no run dir label (started by an older "
                "engine); restart the instance",
            )
        return common.count_connections(run_dir, handle.port)

    # -- helpers --------------------------------------------------------------------------------

    def log_tail(self, container: Any, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of a container's log (for failures), never raising."""
        try:
            raw = container.logs(stdout=True, stderr=True, tail=lines)
        except APIFailure as exc:
            return f"(container log unavailable: {self._api_text(exc)})"
        text = bytes(raw).decode(errors="replace").strip()
        return text or "(container log is empty)"

    def _log_of(self, container: Any, stream: str) -> bytes:
        """One stream of an exited container's whole log, read without follow."""
        logger.warning(
            "docker: the %s follow of container %s outlived it; reading its log instead",
            stream,
            container.short_id,
        )
        raw = container.logs(stdout=stream == "stdout", stderr=stream == "stderr")
        return bytes(raw)

    def _streaming_api(self) -> Any:
        """A low-level client without a read timeout, for following a client's output: a
        program may be silent for longer than any request timeout (pgbench -i, pg_sleep)."""
        with self._lock:
            if self._stream_api is None:
                version = self.client.api.api_version
                if self.base_url:
                    self._stream_api = docker.APIClient(
                        base_url=self.base_url, version=version, timeout=None
                    )
                else:
                    self._stream_api = docker.APIClient(
                        version=version, timeout=None, **docker.utils.kwargs_from_env()
                    )
            return self._stream_api

    def _run_to_end(
        self,
        ref: str,
        command: Sequence[str],
        role: str,
        *,
        user: str,
        volumes: Mapping[str, Mapping[str, str]] | None = None,
        cancel: CancelToken | None = None,
        failure: str = "cannot use image",
    ) -> str:
        """Run a one-off container to completion; its output, or JobFailure with its log."""
        try:
            container = self.client.containers.run(
                ref,
                list(command),
                detach=True,
                user=user,
                labels=self._labels(role),
                volumes=dict(volumes or {}),
                network_mode="none",
            )
        except APIFailure as exc:
            raise JobFailure("internal_error", failure, self._api_text(exc)) from None
        try:
            code = (
                self._wait_exit(container, cancel)
                if cancel
                else int(container.wait().get("StatusCode", -1))
            )
            output = bytes(container.logs(stdout=True, stderr=True)).decode(errors="replace")
        except APIFailure as exc:
            raise JobFailure("internal_error", failure, self._api_text(exc)) from None
        finally:
            with contextlib.suppress(*APIFailure):
                container.remove(force=True)
        if code != 0:
            raise JobFailure(
                "internal_error",
                failure,
                f"{command[0]} exited with code {code}: {output.strip()[-4000:]}",
            )
        return output

    def _where(self) -> str:
        return self.base_url or "the default socket"

    def _api_text(self, exc: BaseException) -> str:
        text = getattr(exc, "explanation", None) or str(exc)
        return f"container engine at {self._where()}: {text}"


def client_mounts(args: Sequence[str], cwd: Path | None, extra: Sequence[Path] = ()) -> list[str]:
    """Host directories a client run needs read-only: `extra` (a step's staging copy, whose
    files include each other by absolute path), the working directory and the parent of every
    argument naming an existing file (`-f file`, `--file=file`), without nesting."""
    dirs: set[str] = {os.path.abspath(d) for d in extra}
    if cwd is not None:
        dirs.add(os.path.abspath(cwd))
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if not value or value == "-" or "\0" in value:
            continue
        path = Path(value) if os.path.isabs(value) else (cwd / value if cwd else None)
        if path is not None and path.is_file():
            dirs.add(os.path.abspath(path.parent))
    ordered = sorted(d for d in dirs if d != "/")
    kept: list[str] = []
    for d in ordered:
        if not any(d == k or d.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(d)
    return kept


class _LogPump:
    """Follows one stream (stdout or stderr) of a container's log on a thread, handing each
    chunk to the sink as it arrives; the follow ends when the container exits — or, when the
    container engine keeps it open, `catch_up` delivers the rest from the whole log."""

    def __init__(self, api: Any, container_id: str, stream: str, sink: OutputSink) -> None:
        self.error: BaseException | None = None
        self.stream = stream
        self._api = api
        self._container_id = container_id
        self._sink = sink
        self._lock = threading.Lock()
        self._delivered = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"docker-{stream}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            chunks = self._api.logs(
                self._container_id,
                stream=True,
                follow=True,
                stdout=self.stream == "stdout",
                stderr=self.stream == "stderr",
            )
            for chunk in chunks:
                with self._lock:
                    if self._closed:
                        return
                    if chunk:
                        self._sink(self.stream, bytes(chunk))
                        self._delivered += len(chunk)
        except APIFailure as exc:
            with self._lock:
                if not self._closed:
                    self.error = exc

    def ended(self, timeout: float) -> bool:
        """Whether the follow ended (within `timeout` seconds)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def catch_up(self, whole: bytes) -> None:
        """Stop the follow and deliver what it has not: `whole` is the stream's complete log
        (its container has exited), of which the follow delivered a prefix."""
        with self._lock:
            self._closed = True
            rest = whole[self._delivered :]
            self._delivered = len(whole)
            if rest:
                self._sink(self.stream, rest)


def connect(base_url: str | None, timeout: float = 10.0) -> docker.DockerClient:
    """A client for `base_url` (else DOCKER_HOST / the default socket), verified with a ping."""
    client = (
        docker.DockerClient(base_url=base_url, timeout=int(timeout))
        if base_url
        else docker.from_env(timeout=int(timeout))
    )
    client.ping()
    return client


def _conforms(runtime: DockerRuntime) -> Runtime:
    return runtime
