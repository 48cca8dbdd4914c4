"""The runtime contract: the same tests against `host` and `docker` (issue 15).

Each runtime initializes one base cluster per session (through its own `init_base`); each test
works on a `cp -a` copy of it, as a snapshot backend's clone would be. The docker runtime runs
against the real Docker-API engine of `tests/support/container_engine.py` (Podman's socket).
A leak check at the end of the module asserts that no container with the test store's label and
no host server under the test root is left.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.runtime import procs
from sqlrs_engine.runtime.base import Runtime, ServerHandle, pgdata_of
from sqlrs_engine.runtime.docker import DockerRuntime, connect
from sqlrs_engine.runtime.host import HostRuntime
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.store import StateStore
from tests.support import container_engine
from tests.support.dirs import kill_servers_under, servers_under

_counter = itertools.count()


@dataclass
class Subject:
    """One runtime under test, with its base and the servers a test started."""

    runtime: Runtime
    image: str
    base: Path
    root: Path
    make_runtime: Callable[[], Runtime]
    handles: list[ServerHandle] = field(default_factory=list)

    def clone(self) -> Path:
        target = self.root / "clones" / f"c{next(_counter)}"
        target.parent.mkdir(mode=0o711, exist_ok=True)
        subprocess.run(["cp", "-a", str(self.base), str(target)], check=True)
        return target

    def start(
        self, data_dir: Path, port: int | None = None, password: str | None = None
    ) -> ServerHandle:
        handle = self.runtime.start(self.image, data_dir, _ignore, CancelToken(), port, password)
        self.handles.append(handle)
        return handle

    def psql(
        self, handle: ServerHandle, *args: str, stdin: bytes | None = None, cwd: Path | None = None
    ) -> tuple[int, str]:
        chunks: list[bytes] = []
        code = self.runtime.run_client(
            handle,
            "psql",
            [*connection(handle), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", *args],
            stdin=stdin,
            cwd=cwd,
            on_output=lambda _stream, chunk: chunks.append(chunk),
            cancel=CancelToken(),
        )
        return code, b"".join(chunks).decode()


def _ignore(_line: str) -> None:
    pass


def connection(handle: ServerHandle) -> list[str]:
    return ["-h", handle.host, "-p", str(handle.port), "-U", "sqlrs", "-d", "postgres"]


def _base(root: Path, runtime: Runtime, image: str) -> Path:
    store = StateStore(StoreLayout(root), CopyBackend())
    return store.ensure_base(
        image, lambda path: runtime.init_base(image, path, _ignore, CancelToken()), CancelToken()
    )


@pytest.fixture(scope="module", params=["host", "docker"])
def subject(request: pytest.FixtureRequest, pg_root: Path) -> Iterator[Subject]:
    root = pg_root / f"contract-{request.param}"
    root.mkdir(mode=0o711)
    make: Callable[[], Runtime]
    if request.param == "host":
        if not HostRuntime().installed_majors():
            pytest.skip("no PostgreSQL server binaries installed on this machine")
        run_root = root / "run"
        run_root.mkdir(mode=0o711)

        def make() -> Runtime:
            return HostRuntime(run_root=run_root)

        image_name = "postgres"
    else:
        url = container_engine.docker_host()

        def make() -> Runtime:
            return DockerRuntime(connect(url), root, base_url=url)

        image_name = container_engine.IMAGE
    runtime = make()
    image = runtime.resolve_image(image_name, _ignore, CancelToken())
    found = Subject(runtime, image, _base(root, runtime, image), root, make)
    try:
        yield found
    finally:
        for handle in found.handles:
            found.runtime.kill(handle)
        kill_servers_under(root)
        try:
            # The leak check: nothing of this module's runtime is left.
            assert servers_under(root) == []
            if request.param == "docker":
                assert container_engine.labeled_containers(root) == []
        finally:
            if request.param == "docker":
                container_engine.remove_labeled(root)
            shutil.rmtree(root, ignore_errors=True)


def test_base_has_a_cluster(subject: Subject) -> None:
    assert (pgdata_of(subject.base) / "PG_VERSION").is_file()
    assert "@" in subject.image


def test_start_exec_stop(subject: Subject) -> None:
    data_dir = subject.clone()
    subject.runtime.prepare_data_dir(data_dir)
    handle = subject.start(data_dir)
    assert handle.host == "127.0.0.1"
    assert subject.runtime.is_running(handle)
    code, out = subject.psql(handle, "-c", "create table t(a int); insert into t values (7)")
    assert code == 0, out
    subject.runtime.stop(handle, _ignore)
    assert not subject.runtime.is_running(handle)
    assert not (pgdata_of(data_dir) / "postmaster.pid").exists()
    # Data written through the server is on the host, in the data dir.
    again = subject.start(data_dir)
    assert subject.psql(again, "-c", "select a from t") == (0, "7\n")
    subject.runtime.stop(again, _ignore)


def test_exec_with_stdin_files_and_includes(subject: Subject) -> None:
    scripts = subject.root / f"scripts{next(_counter)}"
    (scripts / "lib").mkdir(parents=True)
    (scripts / "lib" / "inc.sql").write_text("insert into s values (2);\n")
    (scripts / "main.sql").write_text("create table s(a int);\n\\ir lib/inc.sql\n")
    handle = subject.start(subject.clone())
    code, out = subject.psql(handle, "-f", str(scripts / "main.sql"), cwd=scripts)
    assert code == 0, out
    code, out = subject.psql(handle, "-f", "-", stdin=b"insert into s values (3);\n", cwd=scripts)
    assert code == 0, out
    if handle.socket_dir is not None:  # stdin's file went with the run: nothing left behind
        assert sorted(p.name for p in handle.socket_dir.iterdir() if "stdin" in p.name) == []
    assert subject.psql(handle, "-c", "select sum(a) from s") == (0, "5\n")
    code, out = subject.psql(handle, "-c", "select * from missing_table")
    assert code != 0 and "missing_table" in out
    subject.runtime.stop(handle, _ignore)


def test_adopt_after_restart_and_recreate(subject: Subject) -> None:
    data_dir = subject.clone()
    handle = subject.start(data_dir)
    restarted = subject.make_runtime()  # a new engine process would build a new runtime
    adopted = restarted.adopt(subject.image, data_dir)
    assert adopted is not None
    assert (adopted.runtime_id, adopted.port) == (handle.runtime_id, handle.port)
    # The server disappears behind the engine's back: it is recreated on the same data dir,
    # keeping its port when that port is free.
    restarted.kill(adopted)
    assert not restarted.is_running(adopted)
    assert restarted.adopt(subject.image, data_dir) is None
    again = restarted.start(subject.image, data_dir, _ignore, CancelToken(), handle.port)
    subject.handles.append(again)
    assert again.port == handle.port
    assert subject.psql(again, "-c", "select 1") == (0, "1\n")
    restarted.stop(again, _ignore)


def test_connection_count(subject: Subject) -> None:
    handle = subject.start(subject.clone())
    assert subject.runtime.count_connections(handle) == 0
    done = threading.Event()
    ended: list[object] = []

    def hold() -> None:
        try:
            ended.append(subject.psql(handle, "-c", "select pg_sleep(30)"))
        except JobFailure as failure:  # the server went away under it (docker)
            ended.append(failure)
        done.set()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        counts = []
        for _ in range(600):
            counts.append(subject.runtime.count_connections(handle))
            if counts[-1] == 1 or done.wait(0.05):
                break
        assert counts[-1] == 1
    finally:
        subject.runtime.kill(handle)
        holder.join()
    assert subject.runtime.count_connections(handle) == 0
    # The client lost its server: a failed exit (host) or a failure naming the server (docker).
    (outcome,) = ended
    if isinstance(outcome, JobFailure):
        assert outcome.message == "server container died", outcome
    else:
        assert outcome[0] != 0


def test_cancel_kills_the_client(subject: Subject) -> None:
    handle = subject.start(subject.clone())
    cancel = CancelToken()
    failure: list[BaseException] = []
    started = threading.Event()

    def run() -> None:
        try:
            started.set()
            subject.runtime.run_client(
                handle,
                "psql",
                [*connection(handle), "-X", "-c", "select pg_sleep(60)"],
                stdin=None,
                cwd=None,
                on_output=lambda _s, _c: None,
                cancel=cancel,
            )
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    started.wait()
    for _ in range(600):
        if subject.runtime.count_connections(handle) == 1:
            break
        threading.Event().wait(0.05)
    cancel.cancel()
    worker.join()
    assert len(failure) == 1 and isinstance(failure[0], JobFailure)
    assert failure[0].code == "cancelled"
    # The backend notices its client went away (client_connection_check_interval).
    for _ in range(600):
        if subject.runtime.count_connections(handle) == 0:
            break
        threading.Event().wait(0.05)
    assert subject.runtime.count_connections(handle) == 0
    subject.runtime.stop(handle, _ignore)


def test_stop_of_a_gone_server_is_quiet(subject: Subject) -> None:
    handle = subject.start(subject.clone())
    subject.runtime.kill(handle)
    subject.runtime.kill(handle)
    subject.runtime.stop(handle, _ignore)
    assert not subject.runtime.is_running(handle)


def test_tcp_needs_the_instances_own_password(subject: Subject) -> None:
    import psycopg

    handle = subject.start(subject.clone(), password="kept-secret-1")
    assert handle.password == "kept-secret-1"
    assert handle.dsn == f"postgres://sqlrs:kept-secret-1@127.0.0.1:{handle.port}/postgres"
    with psycopg.connect(handle.dsn, connect_timeout=10) as conn:
        assert conn.execute("select current_user").fetchone() == ("sqlrs",)
    for wrong in (handle.bare_dsn, handle.dsn.replace("kept-secret-1", "guess")):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(wrong, connect_timeout=10)
    # A new start without a password gets a fresh random one.
    other = subject.start(subject.clone())
    assert other.password and other.password != handle.password
    subject.runtime.stop(other, _ignore)
    subject.runtime.stop(handle, _ignore)


def test_secret_is_on_no_command_line(subject: Subject) -> None:
    handle = subject.start(subject.clone())
    assert handle.password
    code, out = subject.psql(handle, "-c", "select pg_sleep(0.5)")
    assert code == 0, out
    leaked = [
        pid for pid in procs.all_pids() if any(handle.password in arg for arg in procs.cmdline(pid))
    ]
    assert leaked == []
    subject.runtime.stop(handle, _ignore)


def test_clients_run_unprivileged(subject: Subject) -> None:
    handle = subject.start(subject.clone())
    code, out = subject.psql(handle, "-c", "\\! id -u")
    assert code == 0, out
    assert out.strip().isdigit() and int(out.strip()) != 0
    subject.runtime.stop(handle, _ignore)


def test_the_server_cannot_write_its_base(subject: Subject) -> None:
    """States and the base are immutable for the server user: only its clone is writable."""
    handle = subject.start(subject.clone())
    target = pgdata_of(subject.base) / "written-by-the-server"
    code, out = subject.psql(handle, "-c", f"copy (select 1) to '{target}'")
    assert code != 0
    assert "could not open file" in out
    assert not target.exists()
    data_dir = handle.data_dir
    write_own = (
        "do $$ begin execute format('copy (select 1) to %L', "
        "current_setting('data_directory') || '/inside-the-clone'); end $$"
    )
    code, out = subject.psql(handle, "-c", write_own)
    assert code == 0, out
    assert (pgdata_of(data_dir) / "inside-the-clone").is_file()
    subject.runtime.stop(handle, _ignore)
