"""Fixtures for runtime tests with real PostgreSQL servers.

Data dirs live under a 0711 directory in /var/tmp: pytest's tmp_path (under
/tmp/pytest-of-root, mode 0700) is not traversable by the `postgres` user the servers run as.
One base cluster is initialized per session and copied (`cp -a`) for each test. Teardown kills
every server whose data dir is under the test root, whatever the test did.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.runtime.base import ServerHandle
from sqlrs_engine.runtime.host import HostRuntime
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.store import StateStore
from tests.support.dirs import kill_servers_under


@pytest.fixture(scope="session")
def pg_root() -> Iterator[Path]:
    """A 0711 directory under /var/tmp, removed (servers killed) at the end of the session."""
    root = Path(tempfile.mkdtemp(prefix="sqlrs-rt-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    try:
        yield root
    finally:
        kill_servers_under(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def host_runtime(pg_root: Path) -> HostRuntime:
    run_root = pg_root / "run"
    run_root.mkdir(mode=0o711)
    runtime = HostRuntime(run_root=run_root)
    if not runtime.installed_majors():
        pytest.skip("no PostgreSQL server binaries installed on this machine")
    return runtime


@pytest.fixture(scope="session")
def resolved_image(host_runtime: HostRuntime) -> str:
    return host_runtime.resolve_image("postgres", lambda _line: None, CancelToken())


@pytest.fixture(scope="session")
def base_dir(host_runtime: HostRuntime, resolved_image: str, pg_root: Path) -> Path:
    lines: list[str] = []
    cancel = CancelToken()
    store = StateStore(StoreLayout(pg_root), CopyBackend())
    base = store.ensure_base(
        resolved_image,
        lambda path: host_runtime.init_base(resolved_image, path, lines.append, cancel),
        cancel,
    )
    assert any(line.startswith("initdb: ") for line in lines)
    return base


_counter = itertools.count()


@pytest.fixture
def clone(base_dir: Path, pg_root: Path) -> Iterator[Callable[[], Path]]:
    """Make a fresh copy of the base (`cp -a`), as a snapshot backend's clone would."""
    made: list[Path] = []

    def make() -> Path:
        target = pg_root / "clones" / f"c{next(_counter)}"
        target.parent.mkdir(mode=0o711, exist_ok=True)
        subprocess.run(["cp", "-a", str(base_dir), str(target)], check=True)
        made.append(target)
        return target

    yield make
    for target in made:
        kill_servers_under(target)
        shutil.rmtree(target, ignore_errors=True)


@pytest.fixture
def data_dir(clone: Callable[[], Path]) -> Path:
    return clone()


@pytest.fixture
def servers(host_runtime: HostRuntime) -> Iterator[list[ServerHandle]]:
    """Handles appended here are killed after the test (if still running)."""
    handles: list[ServerHandle] = []
    yield handles
    for handle in handles:
        host_runtime.kill(handle)
