"""Scratch directories that the unprivileged PostgreSQL user can traverse.

pytest's own tmp_path lives under a 0700 root-owned directory when tests run as root (as in
CI), and PostgreSQL running as `postgres` could not reach a data directory there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SCRATCH_PARENT = Path(os.environ.get("SQLRS_TEST_SCRATCH", "/var/tmp"))


def make_scratch_dir(prefix: str = "sqlrs-test-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH_PARENT))
    path.chmod(0o711)
    return path


def remove_scratch_dir(path: Path) -> None:
    """Remove a scratch dir, unmounting anything a failed test left mounted inside it."""
    mounts = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    inside = [line.split()[1] for line in mounts if line.split()[1].startswith(str(path) + "/")]
    for mountpoint in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
