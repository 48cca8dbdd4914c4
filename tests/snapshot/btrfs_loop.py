"""A real btrfs filesystem on a loop device, for tests and the benchmark.

`mkfs.btrfs` (Debian's btrfs-progs; scripts/bootstrap installs it) formats a sparse image
file, and `mount -o loop` attaches it. Needs root; `unavailable()` says precisely why not
when it cannot work, for a skip message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.dirs import SCRATCH_PARENT, kill_servers_under


@dataclass(frozen=True)
class LoopBtrfs:
    workdir: Path
    image: Path
    mount_point: Path


def unavailable() -> str | None:
    """Why a loop btrfs cannot be made here (None when it can)."""
    if os.geteuid() != 0:
        return "a loop-mounted btrfs needs root"
    for program in ("mkfs.btrfs", "btrfs", "mount", "umount"):
        if shutil.which(program) is None:
            return f"{program} not found (install btrfs-progs; scripts/bootstrap does)"
    if not Path("/dev/loop-control").exists():
        return "no loop device support (/dev/loop-control missing)"
    return None


def make_loop_btrfs(size: str = "1G", parent: Path = SCRATCH_PARENT) -> LoopBtrfs:
    """Format and mount a fresh btrfs; its root is traversable by the server user (0711)."""
    workdir = Path(tempfile.mkdtemp(prefix="sqlrs-btrfs-", dir=parent))
    workdir.chmod(0o711)
    image = workdir / "btrfs.img"
    mount_point = workdir / "mnt"
    mount_point.mkdir()
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    mount_point.chmod(0o711)
    return LoopBtrfs(workdir, image, mount_point)


def remove_loop_btrfs(fs: LoopBtrfs) -> None:
    """Stop servers on it, unmount everything inside and the filesystem, delete the image."""
    kill_servers_under(fs.mount_point)
    mounts = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    inside = [
        line.split()[1] for line in mounts if line.split()[1].startswith(str(fs.mount_point) + "/")
    ]
    for mount_point in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
    subprocess.run(["umount", str(fs.mount_point)], check=False, capture_output=True)
    if os.path.ismount(fs.mount_point):
        subprocess.run(["umount", "-l", str(fs.mount_point)], check=False, capture_output=True)
    shutil.rmtree(fs.workdir, ignore_errors=True)
