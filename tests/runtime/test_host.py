"""HostRuntime with real PostgreSQL servers (run as the `postgres` user when we are root)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.dbms import postgres as pg
from sqlrs_engine.errors import ApiError, JobFailure
from sqlrs_engine.runtime import procs
from sqlrs_engine.runtime.base import ServerHandle, pgdata_of
from sqlrs_engine.runtime.host import (
    HostRuntime,
    parse_image,
    pid_of_runtime_id,
    runtime_id_for,
    version_of_resolved,
)
from sqlrs_engine.runtime.ports import PortAllocator
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.store import StateStore
from tests.support.nat import redirected

AS_ROOT = os.geteuid() == 0
INIT_MARKER = ".init.ok"


def _psql(dsn: str, sql: str) -> str:
    result = subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, dsn],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _uid_of(pid: int) -> int | None:
    """The real uid of `pid`; None when it has exited meanwhile (short-lived workers)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    raise AssertionError("no Uid line")


def _server_pids(pgdata: Path) -> list[int]:
    """Live processes working in `pgdata` (postmaster and its children)."""
    want = os.path.realpath(pgdata)
    return [p for p in procs.all_pids() if procs.cwd(p) == want and procs.is_alive(p)]


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _fake_bin_dir(root: Path, version: str) -> Path:
    bin_dir = root / f"fake-{version}" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("postgres", "pg_ctl", "initdb"):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho 'postgres (PostgreSQL) {version}'\n")
        script.chmod(0o755)
    return bin_dir


# -- image ids (pure) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "major"),
    [
        ("postgres", None),
        ("postgres:latest", None),
        ("postgres:15", 15),
        ("postgres:15.3", 15),
        ("postgres:9", 9),
        (" postgres:16 ", 16),
        ("docker.io/library/postgres:15", 15),
        ("docker.io/library/postgres", None),
        ("library/postgres:14", 14),
        ("localhost/postgres:15", 15),
        ("localhost:5000/postgres:15", 15),
        ("postgres@host-15.18", 15),
    ],
)
def test_parse_image(image: str, major: int | None) -> None:
    assert parse_image(image) == major


@pytest.mark.parametrize(
    "image",
    [
        "",
        "mysql:8",
        "postgresql:15",
        "postgres:15-alpine",
        "postgres:15.3.1",
        "postgres:bookworm",
        "postgres@sha256:abcd",
        "my/postgres-extra:15",
        "bad prefix/postgres:15",
    ],
)
def test_parse_image_rejects(image: str) -> None:
    with pytest.raises(ValueError):
        parse_image(image)


def test_resolved_id_roundtrip() -> None:
    assert version_of_resolved("postgres@host-15.18") == "15.18"
    with pytest.raises(ValueError):
        version_of_resolved("postgres@sha256:abc")
    assert runtime_id_for(123) == "host:123"
    assert pid_of_runtime_id("host:123") == 123
    assert pid_of_runtime_id("abcdef") is None


# -- resolve_image ------------------------------------------------------------------------------


def test_resolve_installed(host_runtime: HostRuntime) -> None:
    majors = host_runtime.installed_majors()
    top = host_runtime.installations()[max(majors)]
    assert top.bin_dir.is_dir()
    for image in (
        "postgres",
        "postgres:latest",
        f"postgres:{top.major}",
        f"postgres:{top.major}.0",
        f"docker.io/library/postgres:{top.major}",
    ):
        lines: list[str] = []
        resolved = host_runtime.resolve_image(image, lines.append, CancelToken())
        assert resolved == f"postgres@host-{top.version}"
        assert lines == [f"resolve image {image}", f"resolved image {resolved}"]
    assert host_runtime.bin_dir_for(resolved) == top.bin_dir


@pytest.mark.parametrize("image", ["postgres:8", "mysql:8", "postgres:15-alpine"])
def test_resolve_errors_name_installed_majors(host_runtime: HostRuntime, image: str) -> None:
    with pytest.raises(JobFailure) as info:
        host_runtime.resolve_image(image, lambda _line: None, CancelToken())
    assert info.value.code == "internal_error"
    assert info.value.message == "cannot resolve image"
    majors = ", ".join(str(m) for m in host_runtime.installed_majors())
    assert f"installed PostgreSQL major versions: {majors}" in (info.value.details or "")


def test_discovery_order_and_latest(tmp_path: Path, host_runtime: HostRuntime) -> None:
    fake = _fake_bin_dir(tmp_path, "99.1")
    runtime = HostRuntime(bin_dirs=[fake])
    assert runtime.installed_majors() == sorted([*host_runtime.installed_majors(), 99])
    assert runtime.resolve_image("postgres", lambda _l: None, CancelToken()) == (
        "postgres@host-99.1"
    )
    assert runtime.bin_dir_for("postgres@host-99.7") == fake  # minor upgrade: same major
    # configured dirs win over defaults for the same major
    real = host_runtime.installations()[max(host_runtime.installed_majors())]
    shadow = _fake_bin_dir(tmp_path, f"{real.major}.999")
    runtime = HostRuntime(bin_dirs=[shadow])
    assert runtime.installations()[real.major].bin_dir == shadow


def test_no_binaries_at_all(tmp_path: Path) -> None:
    runtime = HostRuntime(bin_dirs=[tmp_path], search_default_dirs=False)
    assert runtime.installed_majors() == []
    with pytest.raises(JobFailure) as info:
        runtime.resolve_image("postgres", lambda _l: None, CancelToken())
    assert "no PostgreSQL server binaries are installed" in (info.value.details or "")


# -- init_base / ensure_base --------------------------------------------------------------------


def test_base_is_initialized(base_dir: Path) -> None:
    pgdata = pgdata_of(base_dir)
    assert (pgdata / "PG_VERSION").is_file()
    assert (base_dir / INIT_MARKER).read_text() == "ok"
    assert stat.S_IMODE((base_dir / INIT_MARKER).stat().st_mode) == 0o600
    hba = (pgdata / "pg_hba.conf").read_text()
    assert hba == pg.hba_text()  # TCP needs a password (SPEC §0.9)
    st = pgdata.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700
    if AS_ROOT:
        assert st.st_uid == pwd.getpwnam("postgres").pw_uid
        assert (pgdata / "pg_hba.conf").stat().st_uid == st.st_uid
    assert pg.snapshot_problem(base_dir) is None


def test_ensure_base_concurrent_initializes_once(
    host_runtime: HostRuntime, resolved_image: str, pg_root: Path
) -> None:
    store = StateStore(StoreLayout(pg_root / "concurrent"), CopyBackend())
    base = store.layout.base_dir(resolved_image)
    initialized: list[Path] = []
    errors: list[BaseException] = []

    def init(path: Path) -> None:
        initialized.append(path)
        host_runtime.init_base(resolved_image, path, lambda _l: None, CancelToken())

    def worker() -> None:
        try:
            store.ensure_base(resolved_image, init, CancelToken())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    staging = base / ".init-staging"
    assert initialized == [staging], "initdb ran exactly once (in the staging dir)"
    assert (base / INIT_MARKER).is_file()
    assert (base / "pgdata" / "PG_VERSION").is_file() and not staging.exists()
    # A cluster without its marker is never trusted (a crash may have cut it short): rebuilt.
    (base / INIT_MARKER).unlink()
    store.ensure_base(resolved_image, init, CancelToken())
    assert initialized == [staging, staging]
    assert (base / INIT_MARKER).is_file()


def test_init_base_refuses_non_empty(
    host_runtime: HostRuntime, resolved_image: str, pg_root: Path
) -> None:
    target = pg_root / "non-empty"
    pgdata_of(target).mkdir(parents=True)
    (pgdata_of(target) / "PG_VERSION").write_text("15\n")
    with pytest.raises(JobFailure) as info:
        host_runtime.init_base(resolved_image, target, lambda _l: None, CancelToken())
    assert info.value.message == "cannot initialize base state"
    assert "not empty" in (info.value.details or "")
    assert (pgdata_of(target) / "PG_VERSION").exists()  # untouched


def test_init_base_cancel_leaves_nothing(
    host_runtime: HostRuntime, resolved_image: str, pg_root: Path
) -> None:
    target = pg_root / "cancelled-base"
    token = CancelToken()

    def log(line: str) -> None:
        if line.startswith("initdb: "):
            token.cancel()

    with pytest.raises(JobFailure) as info:
        host_runtime.init_base(resolved_image, target, log, token)
    assert info.value.code == "cancelled"
    assert not pgdata_of(target).exists()
    assert not procs.find_by_cmdline(str(pgdata_of(target)))


# -- start / stop / kill ------------------------------------------------------------------------


def test_start_serves_dsn_as_postgres_user_and_stops_cleanly(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, servers: list[ServerHandle]
) -> None:
    lines: list[str] = []
    handle = host_runtime.start(resolved_image, data_dir, lines.append, CancelToken())
    servers.append(handle)
    assert handle.password is not None
    assert handle.dsn == f"postgres://sqlrs:{handle.password}@127.0.0.1:{handle.port}/postgres"
    assert handle.bare_dsn == f"postgres://sqlrs@127.0.0.1:{handle.port}/postgres"
    assert handle.pid is not None and handle.runtime_id == f"host:{handle.pid}"
    assert any(line.startswith("pg_ctl: ") for line in lines)
    assert _psql(handle.dsn, "select 1") == "1"
    assert _psql(handle.dsn, "show listen_addresses") == "127.0.0.1"
    assert host_runtime.is_running(handle)
    assert host_runtime.ports.is_reserved(handle.port)

    pgdata = pgdata_of(data_dir)
    server = _server_pids(pgdata)
    assert handle.pid in server and len(server) > 1  # postmaster + auxiliary processes
    if AS_ROOT:
        uid = pwd.getpwnam("postgres").pw_uid
        assert {_uid_of(p) for p in server} - {None} == {uid}
    assert handle.socket_dir is not None
    assert (handle.socket_dir / f".s.PGSQL.{handle.port}").exists()
    assert stat.S_IMODE(handle.socket_dir.stat().st_mode) == 0o700
    assert len(str(handle.socket_dir / f".s.PGSQL.{handle.port}")) < 107

    lines.clear()
    host_runtime.stop(handle, lines.append)
    assert any("server stopped" in line for line in lines)
    assert not host_runtime.is_running(handle)
    assert not _server_pids(pgdata)
    assert not procs.group_members(handle.pid)
    assert not (pgdata / "postmaster.pid").exists()
    assert host_runtime.cluster_state(data_dir) == "shut down"
    assert not handle.socket_dir.exists()
    assert not host_runtime.ports.is_reserved(handle.port)
    assert pg.snapshot_problem(data_dir) is None
    host_runtime.stop(handle, lines.append)  # already stopped: fine


def test_kill_leaves_no_process_and_restart_recovers(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, servers: list[ServerHandle]
) -> None:
    handle = host_runtime.start(resolved_image, data_dir, lambda _l: None, CancelToken())
    servers.append(handle)
    _psql(handle.dsn, "create table t as select 1 as x")
    session = subprocess.Popen(
        ["psql", "-X", "-q", handle.dsn], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        assert _wait_for(lambda: host_runtime.count_connections(handle) == 1)
        pgdata = pgdata_of(data_dir)
        started = time.monotonic()
        host_runtime.kill(handle)
        assert time.monotonic() - started < 5
        assert not _server_pids(pgdata)
        assert handle.pid is not None and not procs.group_members(handle.pid)
        assert not host_runtime.is_running(handle)
        assert not (pgdata / "postmaster.pid").exists()
        assert not host_runtime.ports.is_reserved(handle.port)
        host_runtime.kill(handle)  # already dead: no error
    finally:
        session.kill()
        session.wait()
    again = host_runtime.start(resolved_image, data_dir, lambda _l: None, CancelToken())
    servers.append(again)
    assert _psql(again.dsn, "select x from t") == "1"
    host_runtime.stop(again, lambda _l: None)


def test_kill_after_sigkilled_postmaster_kills_backends(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, servers: list[ServerHandle]
) -> None:
    handle = host_runtime.start(resolved_image, data_dir, lambda _l: None, CancelToken())
    servers.append(handle)
    assert handle.pid is not None
    busy = subprocess.Popen(  # a CPU-bound backend never checks for postmaster death
        ["psql", "-X", "-c", "select count(*) from generate_series(1, 10000000000)", handle.dsn],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_for(lambda: host_runtime.count_connections(handle) == 1)
        os.kill(handle.pid, 9)
        assert _wait_for(lambda: not procs.is_alive(handle.pid or 0))
        time.sleep(0.2)
        assert _server_pids(pgdata_of(data_dir))  # the orphaned backend still runs
        host_runtime.kill(handle)
        assert not _server_pids(pgdata_of(data_dir))
        assert not (pgdata_of(data_dir) / "postmaster.pid").exists()
    finally:
        busy.kill()
        busy.wait()


def test_kill_by_runtime_id_after_data_dir_was_removed(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, servers: list[ServerHandle]
) -> None:
    started = host_runtime.start(resolved_image, data_dir, lambda _l: None, CancelToken())
    servers.append(started)
    assert started.pid is not None and started.socket_dir is not None
    server = _server_pids(pgdata_of(data_dir))
    # what an engine restored from its database knows: no pid, no socket dir
    handle = ServerHandle(started.runtime_id, data_dir, started.host, started.port)
    shutil.rmtree(data_dir)
    host_runtime.kill(handle)
    assert not any(procs.is_alive(p) for p in server)
    assert not started.socket_dir.exists()
    assert not host_runtime.ports.is_reserved(started.port)


def test_remove_stale_run_dirs(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, servers: list[ServerHandle]
) -> None:
    handle = host_runtime.start(resolved_image, data_dir, lambda _l: None, CancelToken())
    servers.append(handle)
    assert handle.socket_dir is not None
    stale = host_runtime.run_root / "sqlrs-pg-stale123"
    fresh = host_runtime.run_root / "sqlrs-pg-fresh123"
    other = host_runtime.run_root / "not-ours"
    for d in (stale, fresh, other):
        d.mkdir()
    old = time.time() - 3600
    for d in (stale, other, handle.socket_dir):
        os.utime(d, (old, old))
    try:
        removed = host_runtime.remove_stale_run_dirs()
        assert removed == [stale]
        assert fresh.exists() and other.exists() and handle.socket_dir.exists()
        assert _psql(handle.dsn, "select 1") == "1"
    finally:
        for d in (fresh, other):
            d.rmdir()
    host_runtime.stop(handle, lambda _l: None)


def test_adopt_after_engine_restart(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, servers: list[ServerHandle]
) -> None:
    handle = host_runtime.start(resolved_image, data_dir, lambda _l: None, CancelToken())
    servers.append(handle)
    restarted = HostRuntime(run_root=host_runtime.run_root)
    adopted = restarted.adopt(resolved_image, data_dir)
    assert adopted is not None
    assert (adopted.port, adopted.pid, adopted.runtime_id) == (
        handle.port,
        handle.pid,
        handle.runtime_id,
    )
    assert adopted.socket_dir == handle.socket_dir
    assert adopted.bare_dsn == handle.bare_dsn
    assert adopted.password is None  # adopt cannot know it: the instance's row does
    assert restarted.is_running(adopted)
    assert restarted.count_connections(adopted) == 0
    restarted.stop(adopted, lambda _l: None)
    assert not host_runtime.is_running(handle)
    assert restarted.adopt(resolved_image, data_dir) is None
    assert adopted.socket_dir is not None and not adopted.socket_dir.exists()


def test_server_outlives_the_engine_process(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, servers: list[ServerHandle]
) -> None:
    engine = (
        "import sys\n"
        "from pathlib import Path\n"
        "from sqlrs_engine.cancel import CancelToken\n"
        "from sqlrs_engine.runtime.host import HostRuntime\n"
        "rt = HostRuntime(run_root=sys.argv[3])\n"
        "h = rt.start(sys.argv[1], Path(sys.argv[2]), lambda l: None, CancelToken())\n"
        "print(h.port, h.pid, h.password)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", engine, resolved_image, str(data_dir), str(host_runtime.run_root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    adopted = host_runtime.adopt(resolved_image, data_dir)
    assert adopted is not None
    servers.append(adopted)
    assert [str(adopted.port), str(adopted.pid)] == out[:2]
    assert _psql(replace(adopted, password=out[2]).dsn, "select 1") == "1"
    host_runtime.stop(adopted, lambda _l: None)


def test_adopt_ignores_stale_pid_file(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, servers: list[ServerHandle]
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    pgdata = pgdata_of(data_dir)
    stale = f"{dead.pid}\n{pgdata}\n1700000000\n5999\n/tmp\n127.0.0.1\n  1 2\nready   \n"
    (pgdata / "postmaster.pid").write_text(stale)
    assert host_runtime.adopt(resolved_image, data_dir) is None
    # ... and a pid file naming a live process that is not this data dir's server
    (pgdata / "postmaster.pid").write_text(stale.replace(str(dead.pid), str(os.getpid()), 1))
    assert host_runtime.adopt(resolved_image, data_dir) is None
    lines: list[str] = []
    handle = host_runtime.start(resolved_image, data_dir, lines.append, CancelToken())
    servers.append(handle)
    assert any("removing stale postmaster.pid" in line for line in lines)
    host_runtime.stop(handle, lambda _l: None)


def test_start_refuses_running_and_uninitialized(
    host_runtime: HostRuntime,
    resolved_image: str,
    data_dir: Path,
    pg_root: Path,
    servers: list[ServerHandle],
) -> None:
    handle = host_runtime.start(resolved_image, data_dir, lambda _l: None, CancelToken())
    servers.append(handle)
    with pytest.raises(JobFailure) as info:
        host_runtime.start(resolved_image, data_dir, lambda _l: None, CancelToken())
    assert "already running" in (info.value.details or "")
    host_runtime.stop(handle, lambda _l: None)

    empty = pg_root / "empty-data"
    pgdata_of(empty).mkdir(parents=True, exist_ok=True)
    with pytest.raises(JobFailure) as info:
        host_runtime.start(resolved_image, empty, lambda _l: None, CancelToken())
    assert info.value.message == "cannot start runtime"
    assert "missing PG_VERSION" in (info.value.details or "")


@pytest.mark.skipif(not AS_ROOT, reason="needs a directory the server user cannot enter")
def test_start_names_blocking_directory(
    host_runtime: HostRuntime, resolved_image: str, pg_root: Path
) -> None:
    blocked = pg_root / "blocked"
    blocked.mkdir(mode=0o700)
    target = blocked / "inner" / "data"
    pgdata_of(target).mkdir(parents=True)
    major = resolved_image.split("host-")[1].split(".")[0]
    (pgdata_of(target) / "PG_VERSION").write_text(f"{major}\n")
    with pytest.raises(JobFailure) as info:
        host_runtime.start(resolved_image, target, lambda _l: None, CancelToken())
    details = info.value.details or ""
    assert f"directory {blocked} (owner root, mode 0700) is not traversable" in details
    assert "postgres" in details


@pytest.mark.skipif(not AS_ROOT, reason="ownership fixes need root")
def test_prepare_data_dir_fixes_a_root_owned_copy(
    host_runtime: HostRuntime,
    resolved_image: str,
    base_dir: Path,
    pg_root: Path,
    servers: list[ServerHandle],
) -> None:
    target = pg_root / "plain-copy"
    subprocess.run(["cp", "-r", str(base_dir), str(target)], check=True)  # root-owned now
    os.chmod(pgdata_of(target), 0o755)
    host_runtime.prepare_data_dir(target)
    uid = pwd.getpwnam("postgres").pw_uid
    for dirpath, dirnames, filenames in os.walk(target):
        for name in [".", *dirnames, *filenames]:
            assert os.lstat(os.path.join(dirpath, name)).st_uid == uid
    assert stat.S_IMODE(pgdata_of(target).stat().st_mode) == 0o700
    handle = host_runtime.start(resolved_image, target, lambda _l: None, CancelToken())
    servers.append(handle)
    host_runtime.stop(handle, lambda _l: None)


def test_concurrent_starts_get_distinct_ports(
    host_runtime: HostRuntime,
    resolved_image: str,
    clone: Callable[[], Path],
    servers: list[ServerHandle],
) -> None:
    dirs = [clone() for _ in range(4)]
    handles: list[ServerHandle] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(d: Path) -> None:
        try:
            h = host_runtime.start(resolved_image, d, lambda _l: None, CancelToken())
            with lock:
                handles.append(h)
                servers.append(h)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(d,)) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({h.port for h in handles}) == 4
    for h in handles:
        assert _psql(h.dsn, "select 1") == "1"
    stoppers = [
        threading.Thread(target=host_runtime.stop, args=(h, lambda _l: None)) for h in handles
    ]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    assert not any(host_runtime.is_running(h) for h in handles)


class _TakenFirst(PortAllocator):
    """Hands out a port someone else is listening on first, then behaves."""

    def __init__(self, taken: int) -> None:
        super().__init__()
        self.taken: int | None = taken

    def allocate(self) -> int:
        if self.taken is not None:
            port, self.taken = self.taken, None
            self.reserve(port)
            return port
        return super().allocate()


def test_start_retries_when_port_is_taken(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, servers: list[ServerHandle]
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    try:
        runtime = HostRuntime(run_root=host_runtime.run_root, ports=_TakenFirst(taken))
        lines: list[str] = []
        handle = runtime.start(resolved_image, data_dir, lines.append, CancelToken())
        servers.append(handle)
        assert handle.port != taken
        assert any(f"port {taken} is not usable" in line for line in lines)
        assert not runtime.ports.is_reserved(taken)
        assert _psql(handle.dsn, "select 1") == "1"
        runtime.stop(handle, lambda _l: None)
    finally:
        squatter.close()


def test_start_moves_off_a_port_that_a_nat_rule_diverts(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, servers: list[ServerHandle]
) -> None:
    """A container engine's published port (a NAT rule, no socket on the host) looks free to
    bind; the server listens there, but its clients would reach the container. The start
    notices, moves to another port, and the port is never handed out again."""
    diverted_port = PortAllocator().allocate()
    nowhere = PortAllocator().allocate()
    with redirected(diverted_port, nowhere):
        runtime = HostRuntime(run_root=host_runtime.run_root, ports=_TakenFirst(diverted_port))
        lines: list[str] = []
        handle = runtime.start(resolved_image, data_dir, lines.append, CancelToken())
        servers.append(handle)
        assert handle.port != diverted_port
        assert any(
            f"port {diverted_port} is not usable (connections to it are refused" in line
            for line in lines
        ), lines
        assert not runtime.ports.is_reserved(diverted_port)
        assert diverted_port in runtime.ports.avoided()
        assert _psql(handle.dsn, "select 1") == "1"
        runtime.stop(handle, lambda _l: None)


@pytest.mark.parametrize(
    ("setting", "logged"),
    [
        # Rejected while reading the configuration, before postmaster.pid exists: found by
        # its command line, gone.
        ("shared_buffers = 'lots'", "invalid value for parameter"),
        # Fails after locking the data dir (postmaster.pid names it): its exit is seen.
        ("shared_preload_libraries = 'sqlrs_no_such_library'", "sqlrs_no_such_library"),
    ],
    ids=["before-pid-file", "after-pid-file"],
)
def test_start_of_a_failing_server_fails_fast_with_its_log(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, setting: str, logged: str
) -> None:
    pgdata = pgdata_of(data_dir)
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write(f"\n{setting}\n")
    before = host_runtime.ports.reserved()
    run_dirs = set(host_runtime.run_root.iterdir())
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(JobFailure) as info:
        host_runtime.start(resolved_image, data_dir, lines.append, CancelToken())
    # Its exit is noticed, not waited out until the start timeout.
    assert time.monotonic() - started < host_runtime.start_timeout / 3
    assert info.value.message == "cannot start runtime"
    details = info.value.details or ""
    assert "exited during start-up" in details
    assert "server log:" in details and logged in details
    assert "pg_ctl: server starting" in lines
    assert not any(line.startswith("server ready") for line in lines)
    assert not _server_pids(pgdata)
    assert not (pgdata / "postmaster.pid").exists()
    assert host_runtime.ports.reserved() == before
    assert set(host_runtime.run_root.iterdir()) == run_dirs


def test_start_that_outlasts_its_timeout_is_cut_short(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path
) -> None:
    """A server that never gets ready fails the start at the timeout, and nothing of it
    survives. It never gets ready because its recovery waits for a WAL archive that never
    answers (`restore_command` sleeps): deterministic, unlike stopping it in a race with its
    start."""
    runtime = HostRuntime(run_root=host_runtime.run_root, start_timeout=2.0)
    pgdata = pgdata_of(data_dir)
    (pgdata / "recovery.signal").touch()
    with (pgdata / "postgresql.auto.conf").open("a") as conf:
        conf.write("restore_command = 'sleep 600'\n")

    with pytest.raises(JobFailure) as info:
        runtime.start(resolved_image, data_dir, lambda _line: None, CancelToken())
    assert "did not become ready within" in (info.value.details or "")
    # Its processes, the restore command's shell and `sleep` too (they lead no group of the
    # postmaster's: the startup process that runs them is a group of its own).
    assert _wait_for(lambda: not _server_pids(pgdata), 5)
    assert not (pgdata / "postmaster.pid").exists()


def test_stop_of_a_server_that_does_not_shut_down_fails_at_its_timeout(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path, servers: list[ServerHandle]
) -> None:
    runtime = HostRuntime(run_root=host_runtime.run_root, stop_timeout=1.0)
    handle = runtime.start(resolved_image, data_dir, lambda _l: None, CancelToken())
    servers.append(handle)
    assert handle.pid is not None
    procs.send(handle.pid, signal.SIGSTOP)  # the shutdown signal stays pending
    try:
        with pytest.raises(JobFailure) as info:
            runtime.stop(handle, lambda _l: None)
        assert info.value.message == "cannot stop server"
        assert "did not shut down within 1 s" in (info.value.details or "")
    finally:
        procs.send(handle.pid, signal.SIGCONT)
    runtime.kill(handle)
    assert not _server_pids(pgdata_of(data_dir))


def test_cancel_after_pg_ctl_reported_start(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path
) -> None:
    """Cancel while the server is up but start() has not returned: nothing survives."""
    token = CancelToken()

    def log(line: str) -> None:
        if line.startswith("server ready"):
            token.cancel()

    before = host_runtime.ports.reserved()
    run_dirs = set(host_runtime.run_root.iterdir())
    with pytest.raises(JobFailure) as info:
        host_runtime.start(resolved_image, data_dir, log, token)
    assert info.value.code == "cancelled"
    pgdata = pgdata_of(data_dir)
    assert _wait_for(lambda: not _server_pids(pgdata), 5)
    assert not (pgdata / "postmaster.pid").exists()
    assert host_runtime.ports.reserved() == before
    assert set(host_runtime.run_root.iterdir()) == run_dirs


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.12])
def test_cancel_during_start_at_various_points(
    host_runtime: HostRuntime,
    resolved_image: str,
    data_dir: Path,
    servers: list[ServerHandle],
    delay: float,
) -> None:
    token = CancelToken()
    timer = threading.Timer(delay, token.cancel)
    timer.start()
    started = time.monotonic()
    try:
        handle = host_runtime.start(resolved_image, data_dir, lambda _l: None, token)
    except JobFailure as exc:
        assert exc.code == "cancelled"
        # Interrupted, not waited out: well under pg_ctl's own start timeout (a wall-clock
        # bound of 3 s failed on a loaded 2-core machine while the cancel was immediate).
        assert time.monotonic() - started < host_runtime.start_timeout / 3
        assert _wait_for(lambda: not _server_pids(pgdata_of(data_dir)), 5)
        assert not (pgdata_of(data_dir) / "postmaster.pid").exists()
    else:  # the start won the race
        servers.append(handle)
        host_runtime.stop(handle, lambda _l: None)
    finally:
        timer.cancel()


# -- run_client / count_connections --------------------------------------------------------------


@pytest.fixture(scope="module")
def running(
    host_runtime: HostRuntime, resolved_image: str, base_dir: Path, pg_root: Path
) -> Iterator[ServerHandle]:
    """One server shared by the client tests below (they leave it as they found it)."""
    target = pg_root / "shared-server"
    subprocess.run(["cp", "-a", str(base_dir), str(target)], check=True)
    handle = host_runtime.start(resolved_image, target, lambda _l: None, CancelToken())
    yield handle
    host_runtime.kill(handle)


def test_count_connections(host_runtime: HostRuntime, running: ServerHandle) -> None:
    assert host_runtime.count_connections(running) == 0
    sessions = [
        subprocess.Popen(
            ["psql", "-X", "-q", running.dsn], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        for _ in range(2)
    ]
    try:
        assert _wait_for(lambda: host_runtime.count_connections(running) == 2)
    finally:
        for s in sessions:
            assert s.stdin is not None
            s.stdin.close()
            s.wait(timeout=10)
    assert _wait_for(lambda: host_runtime.count_connections(running) == 0)


def test_count_connections_of_stopped_server(
    host_runtime: HostRuntime, resolved_image: str, data_dir: Path
) -> None:
    handle = host_runtime.start(resolved_image, data_dir, lambda _l: None, CancelToken())
    host_runtime.stop(handle, lambda _l: None)
    assert host_runtime.count_connections(handle) == 0


def test_run_client_streams_and_exit_codes(
    host_runtime: HostRuntime, running: ServerHandle, tmp_path: Path
) -> None:
    out: list[tuple[str, bytes]] = []

    def sink(stream: str, chunk: bytes) -> None:
        out.append((stream, chunk))

    code = host_runtime.run_client(
        running,
        "psql",
        ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-", running.bare_dsn],
        stdin=b"select 40 + 2;\n",
        cwd=tmp_path,
        on_output=sink,
        cancel=CancelToken(),
    )
    assert code == 0
    assert b"".join(c for s, c in out if s == "stdout").strip() == b"42"

    out.clear()
    code = host_runtime.run_client(
        running,
        "psql",
        ["-X", "-v", "ON_ERROR_STOP=1", "-c", "select nope", running.bare_dsn],
        stdin=None,
        cwd=None,
        on_output=sink,
        cancel=CancelToken(),
        env={"PGOPTIONS": "-c lc_messages=C"},
    )
    assert code != 0
    assert b"nope" in b"".join(c for s, c in out if s == "stderr")

    out.clear()
    code = host_runtime.run_client(
        running,
        "pgbench",
        ["-h", running.host, "-p", str(running.port), "-U", "sqlrs", "-i", "-s", "1", "postgres"],
        stdin=None,
        cwd=None,
        on_output=sink,
        cancel=CancelToken(),
    )
    assert code == 0, out


def test_run_client_rejects_unknown_program(
    host_runtime: HostRuntime, running: ServerHandle
) -> None:
    with pytest.raises(ApiError) as info:
        host_runtime.run_client(
            running,
            "/bin/sh",
            ["-c", "id"],
            stdin=None,
            cwd=None,
            on_output=lambda _s, _c: None,
            cancel=CancelToken(),
        )
    assert info.value.code == "invalid_argument"


def test_run_client_cancel(host_runtime: HostRuntime, running: ServerHandle) -> None:
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    started = time.monotonic()
    with pytest.raises(JobFailure) as info:
        host_runtime.run_client(
            running,
            "psql",
            ["-X", "-c", "select pg_sleep(60)", running.dsn],
            stdin=None,
            cwd=None,
            on_output=lambda _s, _c: None,
            cancel=token,
            # the backend notices the vanished client within 100 ms instead of after 60 s
            env={"PGOPTIONS": "-c client_connection_check_interval=100"},
        )
    assert info.value.code == "cancelled"
    assert time.monotonic() - started < 3
    left = procs.find_by_cmdline("select pg_sleep(60)")
    assert not left, [(p, procs.cmdline(p), procs.process_group(p)) for p in left]
    assert _wait_for(lambda: host_runtime.count_connections(running) == 0)
