"""Scratch directories that the unprivileged PostgreSQL user can traverse.

pytest's own tmp_path lives under a 0700 root-owned directory when tests run as root (as in
CI), and PostgreSQL running as `postgres` could not reach a data directory there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

SCRATCH_PARENT = Path(os.environ.get("SQLRS_TEST_SCRATCH", "/var/tmp"))


def make_scratch_dir(prefix: str = "sqlrs-test-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH_PARENT))
    path.chmod(0o711)
    return path


def servers_under(path: Path) -> list[int]:
    """Pids of PostgreSQL postmasters whose data directory lies under `path`."""
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
    return pids


def kill_servers_under(path: Path, timeout: float = 10.0) -> None:
    """Immediate shutdown of servers a test left running (instances outlive the engine)."""
    pids = servers_under(path)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_scratch_dir(path: Path) -> None:
    """Remove a scratch dir: stop servers and unmount what a test left inside it first."""
    kill_servers_under(path)
    mounts = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    inside = [line.split()[1] for line in mounts if line.split()[1].startswith(str(path) + "/")]
    for mountpoint in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
