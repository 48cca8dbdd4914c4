"""What filesystem a path lives on, and whether a directory is a btrfs subvolume.

Kept apart from `select.py` (which picks a backend) because the backends and the store need
the same answers without importing the selection logic (that would be an import cycle).
"""

from __future__ import annotations

import ctypes
import os
import stat
from pathlib import Path

BTRFS_MAGIC = 0x9123683E
XFS_MAGIC = 0x58465342
REFLINK_MAGICS = frozenset({BTRFS_MAGIC, XFS_MAGIC})
"""Filesystems where `cp --reflink=auto` shares extents instead of copying data."""
BTRFS_SUBVOLUME_INO = 256
"""Inode number of the root directory of every btrfs subvolume (BTRFS_FIRST_FREE_OBJECTID)."""

_FS_NAMES: dict[int, str] = {
    0xEF53: "ext4",  # ext2/ext3/ext4 share the magic
    BTRFS_MAGIC: "btrfs",
    XFS_MAGIC: "xfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlayfs",
    0x2FC12FC1: "zfs",
    0x6969: "nfs",
    0x65735546: "fuse",
    0xF2F52010: "f2fs",
}


def nearest_existing(path: Path) -> Path:
    """`path` or its closest existing ancestor (the store root may not exist yet)."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def statfs_type(path: Path) -> int:
    """The statfs `f_type` magic of the filesystem holding `path` (or its nearest ancestor)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # larger than struct statfs on every Linux ABI
    if libc.statfs(os.fsencode(nearest_existing(path)), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return ctypes.c_long.from_buffer(buf, 0).value & 0xFFFFFFFF


def fs_type_name(magic: int) -> str:
    return _FS_NAMES.get(magic, f"filesystem 0x{magic:X}")


def is_btrfs(path: Path) -> bool:
    try:
        return statfs_type(path) == BTRFS_MAGIC
    except OSError:
        return False


def is_subvolume(path: Path) -> bool:
    """True when `path` is the root of a btrfs subvolume (or snapshot); never follows symlinks."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_ino == BTRFS_SUBVOLUME_INO and stat.S_ISDIR(st.st_mode) and is_btrfs(path)


__all__ = [
    "BTRFS_MAGIC",
    "BTRFS_SUBVOLUME_INO",
    "fs_type_name",
    "is_btrfs",
    "is_subvolume",
    "nearest_existing",
    "statfs_type",
]
