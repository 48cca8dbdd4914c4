"""Scratch directories that the unprivileged PostgreSQL user can traverse.

pytest's own tmp_path lives under a 0700 root-owned directory when tests run as root (as in
CI), and PostgreSQL running as `postgres` could not reach a data directory there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from sqlrs_engine.runtime import procs
from tests.support.container_engine import remove_containers_under

SCRATCH_PARENT = Path(os.environ.get("SQLRS_TEST_SCRATCH", "/var/tmp"))


def make_scratch_dir(prefix: str = "sqlrs-test-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH_PARENT))
    path.chmod(0o711)
    return path


def servers_under(path: Path) -> list[int]:
    """Pids of PostgreSQL postmasters whose data directory lies under `path`.

    A backend the postmaster has just forked carries the postmaster's command line until it
    sets its own title (the host runtime's port check after each start makes one that lives
    for a moment): a match whose parent also matches is such a child, not a server."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/postgres") and b"-D" in args:
            data_dir = args[args.index(b"-D") + 1].decode(errors="replace")
            if data_dir.startswith(str(path) + "/"):
                pids.append(int(proc.name))
    return [pid for pid in pids if procs.parent(pid) not in pids]


def kill_servers_under(path: Path, timeout: float = 10.0) -> None:
    """Stop what a test left running under `path` (instances outlive the engine).

    Postmasters get an immediate shutdown (SIGQUIT) first; then anything still working there
    (a backend orphaned by a killed postmaster, a client) is killed with its process group.
    Liveness comes from `procs`, which does not mistake a zombie for a live process.
    """
    postmasters = servers_under(path)
    for pid in postmasters:
        procs.send(pid, signal.SIGQUIT)
    procs.wait_dead(postmasters, timeout)
    prefix = os.path.realpath(path) + os.sep
    for pid in procs.all_pids():
        if pid == os.getpid():
            continue
        working_dir = procs.cwd(pid) or ""
        if working_dir.startswith(prefix) or any(prefix in arg for arg in procs.cmdline(pid)):
            procs.send(pid, signal.SIGKILL)
            if procs.process_group(pid) == pid:
                procs.kill_group_members(pid)


def remove_scratch_dir(path: Path) -> None:
    """Remove a scratch dir: stop servers (host processes and containers) and unmount what a
    test left inside it first."""
    kill_servers_under(path)
    remove_containers_under(path)
    mounts = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    inside = [line.split()[1] for line in mounts if line.split()[1].startswith(str(path) + "/")]
    for mountpoint in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
