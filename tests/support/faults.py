"""Real faults on demand: immutable files (`chattr +i`), tiny filesystems (tmpfs) and a
filesystem without POSIX ACLs (ramfs).

Removal failures and a full disk are what these provoke, with the kernel's own errors,
where a mock could only imitate them. Both need root; a test that cannot have them is
skipped with the precise reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

needs_chattr = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("chattr") is None,
    reason="needs root and chattr (e2fsprogs) to make files immutable",
)


def chattr(flag: str, path: Path) -> None:
    """`chattr <flag> path`; skips the test when the filesystem has no such attribute."""
    try:
        subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"chattr {flag} is not supported on this filesystem: {exc}")


@contextlib.contextmanager
def _mounted(path: Path, fs_type: str, options: str) -> Iterator[Path]:
    """A fresh filesystem of `fs_type` mounted at new dir `path`, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a {fs_type} needs root")
    path.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", fs_type, "-o", options, fs_type, str(path)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a {fs_type} here: {exc}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def tmpfs(path: Path, size: str = "64k") -> contextlib.AbstractContextManager[Path]:
    """A tmpfs of `size` mounted at new dir `path` (to fill up), unmounted afterwards."""
    return _mounted(path, "tmpfs", f"size={size}")


def fill(fs: Path, leave: int = 0) -> None:
    """Fill the filesystem at `fs` to the last block, then free `leave` bytes again."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    written = 0
    try:
        while True:
            written += os.write(fd, b"\x00" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    os.ftruncate(fd, written - leave)
    os.close(fd)


def acl_less_fs(path: Path, mode: int = 0o700) -> contextlib.AbstractContextManager[Path]:
    """A ramfs at new dir `path` (root dir `mode`, owned by root): a real filesystem that
    stores no extended attributes, so setting a POSIX ACL fails with EOPNOTSUPP.

    (This kernel's ext4 no longer accepts the `noacl` mount option; ramfs is the reliable
    ACL-less filesystem here.)
    """
    return _mounted(path, "ramfs", f"mode={mode:o}")
