"""Fake PostgreSQL data dirs (real files, modes, owners, symlinks) for the snapshot tests.

No server is needed here: a backend only moves files, and these trees have the shape and the
file attributes of a real data dir. Real PostgreSQL is exercised by the runtime/e2e tests.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sqlrs_engine.snapshot.base import SnapshotBackend
from sqlrs_engine.snapshot.btrfs import BtrfsBackend, subvolumes_below
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.mounts import release_mounts_under
from sqlrs_engine.snapshot.overlay import OverlayBackend
from sqlrs_engine.snapshot.store import StateStore
from tests.snapshot import btrfs_loop

DataDirFactory = Callable[..., Path]


def postgres_ids() -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def write_data_dir(
    path: Path,
    *,
    pid: bool = False,
    pid_top: bool = False,
    pg_version: bool = True,
    marker: bool = False,
    chown: bool = True,
) -> Path:
    """A data dir `path/` with `pgdata/` like initdb leaves it (small)."""
    pgdata = path / "pgdata"
    (pgdata / "base" / "1").mkdir(parents=True)
    (pgdata / "global").mkdir()
    (path / "wal").mkdir()
    if pg_version:
        (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "base" / "1" / "1259").write_bytes(b"\x01" * 8192)
    (pgdata / "global" / "pg_control").write_bytes(b"\x02" * 100)
    (pgdata / "postgresql.conf").write_text("listen_addresses = ''\n")
    (path / "wal" / "000000010000000000000001").write_bytes(b"\x03" * 300)
    os.symlink("../wal", pgdata / "pg_wal")
    os.chmod(pgdata / "postgresql.conf", 0o640)
    os.chmod(pgdata / "global" / "pg_control", 0o600)
    os.chmod(pgdata, 0o700)
    if pid:
        (pgdata / "postmaster.pid").write_text("4242\n")
    if pid_top:
        (path / "postmaster.pid").write_text("4242\n")
    if marker:
        (path / ".build.ok").write_text("ok")
    ids = postgres_ids()
    if chown and ids is not None and os.geteuid() == 0:
        for root, dirs, files in os.walk(pgdata):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), *ids, follow_symlinks=False)
        os.chown(pgdata, *ids)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDirFactory:
    """`data_dir("name" | path, pid=..., ...)` → a fake data dir (names are under tmp_path)."""

    def make(name: str | Path = "src", **kwargs: bool) -> Path:
        return write_data_dir(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def tree() -> Callable[[Path], dict[str, tuple[object, ...]]]:
    """`tree(path)`: the attributes a copy must preserve, for equality checks."""
    return snapshot_tree


@pytest.fixture
def pg_ids() -> tuple[int, int]:
    """uid/gid of the `postgres` user; skips unless running as root with that user."""
    ids = postgres_ids()
    if ids is None or os.geteuid() != 0:
        pytest.skip("needs root and an OS user `postgres` to test ownership")
    return ids


def snapshot_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a copy must preserve, per relative path: type, mode, owner, content/target."""
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            st = os.lstat(full)
            rel = os.path.relpath(full, root)
            if stat.S_ISLNK(st.st_mode):
                payload: object = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                payload = full.read_bytes()
            else:
                payload = None
            result[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                payload,
            )
    return result


# -- backends -------------------------------------------------------------------------------------

BACKEND_KINDS = ("copy", "overlayfs", "btrfs")


def make_backend(kind: str, root: Path) -> SnapshotBackend:
    if kind == "copy":
        return CopyBackend()
    if kind == "overlayfs":
        return OverlayBackend(root)
    return BtrfsBackend(root)


@pytest.fixture(scope="session")
def btrfs_fs() -> Iterator[Path]:
    """A loop-mounted btrfs for the whole session (its mount point)."""
    reason = btrfs_loop.unavailable()
    if reason is not None:
        pytest.skip(reason)
    fs = btrfs_loop.make_loop_btrfs("1G")
    try:
        yield fs.mount_point
    finally:
        btrfs_loop.remove_loop_btrfs(fs)


@pytest.fixture
def btrfs_dir(btrfs_fs: Path) -> Iterator[Path]:
    """A fresh directory on the session's btrfs, removed (subvolumes included) afterwards."""
    path = Path(tempfile.mkdtemp(prefix="t-", dir=btrfs_fs))
    try:
        yield path
    finally:
        release_mounts_under(path)
        for subvolume in subvolumes_below(path, depth=12):
            subprocess.run(["btrfs", "subvolume", "delete", str(subvolume)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def overlay_ok() -> None:
    """Overlay mounts need root (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("overlay mounts need root")


@pytest.fixture(params=BACKEND_KINDS)
def kind_and_root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(backend kind, store root) for each backend: btrfs on the loop filesystem."""
    kind: str = request.param
    if kind == "btrfs":
        root = request.getfixturevalue("btrfs_dir") / "root"
    else:
        if kind == "overlayfs":
            request.getfixturevalue("overlay_ok")
        root = tmp_path / "root"
    try:
        yield kind, root
    finally:
        if root.exists():
            release_mounts_under(root)


@pytest.fixture
def any_store(kind_and_root: tuple[str, Path]) -> StateStore:
    """A StateStore on each backend in turn."""
    kind, root = kind_and_root
    return StateStore(StoreLayout(root), make_backend(kind, root))
