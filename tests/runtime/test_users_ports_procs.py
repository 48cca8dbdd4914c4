"""users.py (server identity, traversal check, chown), ports.py and procs.py."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlrs_engine.process import RunAs
from sqlrs_engine.runtime import procs, users
from sqlrs_engine.runtime.acl import GROUP_OBJ, OTHER, USER, read_acl, stored_acl
from sqlrs_engine.runtime.ports import PortAllocator, diverted, port_is_free
from tests.support.faults import acl_less_fs
from tests.support.nat import redirected

AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="needs root")


# -- users ---------------------------------------------------------------------------------------


@needs_root
def test_server_user_default_is_postgres() -> None:
    user = users.server_user(None)
    entry = pwd.getpwnam("postgres")
    assert (user.name, user.uid, user.gid, user.home) == (
        "postgres",
        entry.pw_uid,
        entry.pw_gid,
        entry.pw_dir,
    )


@needs_root
def test_server_user_missing_is_a_clear_error() -> None:
    with pytest.raises(users.ServerUserError) as info:
        users.server_user("sqlrs-no-such-user")
    text = str(info.value)
    assert "'sqlrs-no-such-user' does not exist" in text
    assert "runtime.host.user" in text


@needs_root
def test_server_user_root_refused() -> None:
    with pytest.raises(users.ServerUserError, match="refuses to run as root"):
        users.server_user("root")


def test_non_root_runs_as_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    me = RunAs.current()
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(RunAs, "current", classmethod(lambda cls: me))
    assert users.server_user(None) == me
    assert users.server_user(me.name) == me
    with pytest.raises(users.ServerUserError, match="cannot switch users"):
        users.server_user("someone-else")


def _user(uid: int, gid: int, groups: tuple[int, ...] = ()) -> RunAs:
    return RunAs("u", uid, gid, groups, "/")


@needs_root
@pytest.mark.parametrize(
    ("mode", "owner", "group", "user", "ok"),
    [
        (0o700, 0, 0, _user(1000, 1000), False),
        (0o711, 0, 0, _user(1000, 1000), True),
        (0o701, 0, 0, _user(1000, 1000), True),
        (0o750, 0, 1000, _user(1000, 1000), True),  # via primary group
        (0o750, 0, 2000, _user(1000, 1000, (2000,)), True),  # via supplementary group
        (0o750, 0, 2000, _user(1000, 1000), False),
        (0o100, 1000, 0, _user(1000, 1000), True),  # owner bits only
        (0o077, 1000, 0, _user(1000, 1000), False),  # owner bits win over others
        (0o700, 0, 0, _user(0, 0), True),  # root passes
    ],
)
def test_traversal_rules(
    pg_root: Path, mode: int, owner: int, group: int, user: RunAs, ok: bool
) -> None:
    d = Path(tempfile.mkdtemp(dir=pg_root))
    (d / "inner").mkdir()
    os.chown(d, owner, group)
    os.chmod(d, mode)
    try:
        blocking = users.first_blocking_dir(d / "inner" / "pgdata", user)
        assert blocking == (None if ok else d)
    finally:
        os.chmod(d, 0o755)


@needs_root
def test_check_traversable_message(tmp_path: Path) -> None:
    user = RunAs.from_name("postgres")
    # /tmp/pytest-of-root is 0700 root: the first blocking dir
    with pytest.raises(users.ServerUserError) as info:
        users.check_traversable(tmp_path / "x" / "pgdata", user)
    text = str(info.value)
    assert "'postgres'" in text
    assert (
        "mode 0700" in text and "is not traversable" in text and "setfacl -m u:postgres:x" in text
    )
    users.check_traversable(Path("/var/tmp/anything/pgdata"), user)


@needs_root
def test_chown_tree_only_changes_what_differs(tmp_path: Path) -> None:
    user = RunAs.from_name("postgres")
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f").write_text("x")
    os.symlink("/etc/passwd", root / "link")
    assert users.chown_tree(root, user) == 5
    assert os.stat("/etc/passwd").st_uid == 0  # symlink not followed
    assert os.lstat(root / "link").st_uid == user.uid
    assert users.chown_tree(root, user) == 0


def test_ensure_owned_dir(tmp_path: Path) -> None:
    me = RunAs.current()
    target = tmp_path / "x" / "y"
    users.ensure_owned_dir(target, me, 0o700)
    assert target.is_dir() and (target.stat().st_mode & 0o777) == 0o700


# -- ports ---------------------------------------------------------------------------------------


def test_ports_distinct_under_threads() -> None:
    allocator = PortAllocator()
    got: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            port = allocator.allocate()
            with lock:
                got.append(port)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 160 == len(set(got))
    assert allocator.reserved() == frozenset(got)
    for port in got:
        allocator.release(port)
    assert allocator.reserved() == frozenset()


def test_reserve_release() -> None:
    allocator = PortAllocator()
    assert allocator.reserve(5999) is True
    assert allocator.reserve(5999) is False
    assert allocator.is_reserved(5999)
    allocator.release(5999)
    allocator.release(None)
    allocator.release(1234)
    assert not allocator.is_reserved(5999)


def test_port_is_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_is_free(port)
    assert port_is_free(port)


def test_allocator_never_hands_out_an_avoided_port() -> None:
    class Fixed(PortAllocator):
        """The kernel's probe answers the avoided port first."""

        def __init__(self, ports: list[int]) -> None:
            super().__init__()
            self.ports = ports

        def _probe(self) -> int:
            return self.ports.pop(0)

    allocator = Fixed([41001, 41001, 41003])
    allocator.avoid(41001)
    assert allocator.allocate() == 41003


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock


def test_a_port_served_here_is_not_diverted(listener: socket.socket) -> None:
    assert diverted(listener.getsockname()[1]) is None


def test_a_port_nobody_serves_is_reported_refused() -> None:
    assert port_is_free(free := PortAllocator().allocate())
    assert "refused" in (diverted(free) or "")


def test_a_port_a_nat_rule_redirects_to_nothing_is_diverted(listener: socket.socket) -> None:
    """As a container engine publishes a port whose container serves nothing: our listener
    holds the port, yet connections are refused."""
    port = listener.getsockname()[1]
    nowhere = PortAllocator().allocate()
    with redirected(port, nowhere):
        assert "refused" in (diverted(port) or "")
    assert diverted(port) is None


def test_a_port_a_nat_rule_redirects_to_another_listener_is_diverted(
    listener: socket.socket,
) -> None:
    """...and as one whose container serves: the connection is answered, but not by us."""
    port = listener.getsockname()[1]
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(16)
        with redirected(port, other.getsockname()[1]):
            assert "another listener" in (diverted(port) or "")


# -- procs ---------------------------------------------------------------------------------------


def test_procs_liveness_and_groups() -> None:
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 30 & echo $!; wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    deadline = time.monotonic() + 5
    while procs.cmdline(child) != ["sleep", "30"] and time.monotonic() < deadline:
        time.sleep(0.01)  # the forked shell may not have exec'd sleep yet
    try:
        assert procs.is_alive(proc.pid) and procs.is_alive(child)
        assert procs.process_group(child) == proc.pid
        assert procs.parent(child) == proc.pid and procs.parent(proc.pid) == os.getpid()
        assert sorted(procs.group_members(proc.pid)) == sorted([proc.pid, child])
        assert procs.cmdline(child) == ["sleep", "30"]
        assert procs.cwd(child) == os.getcwd()
        assert child in procs.find_by_cmdline("30")
        assert procs.kill_group_members(proc.pid)
        proc.wait()
        assert not procs.is_alive(child)
    finally:
        proc.kill()
        proc.wait()


def test_zombie_counts_as_dead() -> None:
    proc = subprocess.Popen(["true"])
    assert procs.wait_dead([proc.pid], 5)  # exited but not yet reaped: a zombie
    assert os.path.exists(f"/proc/{proc.pid}")
    proc.wait()
    assert not procs.is_alive(proc.pid)
    assert not procs.is_alive(0) and not procs.is_alive(-1)


def _private_chain(base: Path, names: list[str]) -> Path:
    """`base/n1/n2/…`, each created 0700 root-owned (as the `sqlrs` CLI creates its dirs)."""
    path = base
    for name in names:
        path = path / name
        path.mkdir(mode=0o700)
    return path


@needs_root
def test_grant_traversal_opens_exactly_the_blocking_dirs_for_that_user(scratch_dir: Path) -> None:
    user = RunAs.from_name("postgres")
    open_dir = scratch_dir / "open"
    open_dir.mkdir(mode=0o755)
    store = _private_chain(open_dir, ["home", ".local", "state", "sqlrs"])
    (store / "pgdata").mkdir(mode=0o700)
    os.chown(store / "pgdata", user.uid, user.gid)
    before = {d: stat.S_IMODE(d.stat().st_mode) for d in [open_dir, *store.parents, store]}

    changed = users.grant_traversal(store, user)

    assert changed == [open_dir / "home", open_dir / "home/.local", store.parent, store]
    assert users.blocking_dirs(store, user) == []
    users.check_traversable(store / "pgdata", user)
    # The kernel agrees: the server user reaches its data dir …
    reach = ["runuser", "-u", "postgres", "--", "test", "-d", str(store / "pgdata")]
    assert subprocess.run(reach).returncode == 0
    # … and nobody else gained anything: other bits and the owning group are unchanged.
    nobody = ["runuser", "-u", "nobody", "--", "test", "-d", str(store / "pgdata")]
    assert subprocess.run(nobody).returncode != 0
    for directory in changed:
        got = read_acl(directory)
        assert got.perm(OTHER) == before[directory] & 0o7
        assert got.perm(GROUP_OBJ) == (before[directory] >> 3) & 0o7
        assert [(e.id, e.perm) for e in got.entries if e.tag == USER] == [(user.uid, 1)]
    assert stat.S_IMODE(open_dir.stat().st_mode) == before[open_dir]  # not blocking: untouched
    assert users.grant_traversal(store, user) == []  # idempotent


@needs_root
def test_grant_traversal_without_acl_support_names_every_blocking_dir(scratch_dir: Path) -> None:
    user = RunAs.from_name("postgres")
    outer = _private_chain(scratch_dir, ["outer"])  # ACLs work here …
    with acl_less_fs(outer / "home") as home:  # … but not on this ramfs below it
        store = _private_chain(home, [".local", "state", "sqlrs"])
        with pytest.raises(users.ServerUserError) as caught:
            users.grant_traversal(store, user)
        text = str(caught.value)
        for directory in [outer, home, home / ".local", store.parent, store]:
            assert f"{directory} (owner root, mode 0700)" in text
        assert "does not support ACLs" in text
        assert "setfacl -m u:postgres:x" in text
        # All or nothing: the entry already set on `outer` was taken back.
        assert stored_acl(outer) is None
        assert stat.S_IMODE(outer.stat().st_mode) == 0o700


def test_a_port_held_only_by_time_wait_sockets_is_free_for_postgres() -> None:
    """A killed server's connections leave TIME_WAIT sockets on its port; PostgreSQL binds
    with SO_REUSEADDR and can listen there again, so the probe must say "free"."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as postgres does
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end goes to TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    with socket.socket() as plain, pytest.raises(OSError):  # what the old probe did
        plain.bind(("127.0.0.1", port))
    assert port_is_free(port)
