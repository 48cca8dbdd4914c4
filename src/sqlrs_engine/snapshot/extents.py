"""How many bytes a tree really adds on disk next to another one that it shares extents with.

btrfs snapshots and reflink copies share data extents with their source, so the sum of file
sizes says nothing about the space a state or a clone costs. FIEMAP (the ioctl behind
`filefrag`) lists the physical extents of a file; the bytes of a tree's files that lie in
extents its reference tree does not use for the same file are what the tree adds.

This is an estimate in two honest ways: metadata (btrfs tree blocks, inodes) is not counted,
and an extent shared with some *other* file (not the same path in the reference) counts as
added. Both are small next to relation data.
"""

from __future__ import annotations

import bisect
import fcntl
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_HEADER = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2x reserved, flags, 3x
_BATCH = 256
_FLAG_LAST = 0x1
_FLAG_UNKNOWN = 0x2
_FLAG_INLINE = 0x200
_MAX_LENGTH = 0xFFFFFFFFFFFFFFFF

Extent = tuple[int, int, int]
"""(physical offset, length, flags)."""


def file_extents(path: Path | str) -> list[Extent]:
    """The extents of one regular file (empty for a file without data, or on failure)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        extents: list[Extent] = []
        start = 0
        while True:
            buf = bytearray(_FIEMAP_HEADER.size + _FIEMAP_EXTENT.size * _BATCH)
            _FIEMAP_HEADER.pack_into(buf, 0, start, _MAX_LENGTH - start, 0, 0, _BATCH, 0)
            try:
                fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf, True)
            except OSError:
                return extents
            mapped = _FIEMAP_HEADER.unpack_from(buf, 0)[3]
            if mapped == 0:
                return extents
            last = False
            for i in range(mapped):
                logical, physical, length, _r1, _r2, flags, *_ = _FIEMAP_EXTENT.unpack_from(
                    buf, _FIEMAP_HEADER.size + i * _FIEMAP_EXTENT.size
                )
                extents.append((physical, length, flags))
                start = logical + length
                last = bool(flags & _FLAG_LAST)
            if last:
                return extents
    finally:
        os.close(fd)


def _regular_files(root: Path) -> Iterator[tuple[str, int]]:
    """(path relative to root, size) of every regular file below root; symlinks not followed."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            it = os.scandir(os.path.join(root, rel) if rel else root)
        except OSError:
            continue
        with it:
            for entry in it:
                child = os.path.join(rel, entry.name) if rel else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(child)
                    elif entry.is_file(follow_symlinks=False):
                        yield child, entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue


def _merged(extents: list[Extent]) -> tuple[list[int], list[int]]:
    """Sorted, merged physical intervals as parallel start/end lists (for bisect)."""
    spans = sorted(
        (p, p + n) for p, n, f in extents if not f & (_FLAG_UNKNOWN | _FLAG_INLINE) and n
    )
    starts: list[int] = []
    ends: list[int] = []
    for s, e in spans:
        if ends and s <= ends[-1]:
            ends[-1] = max(ends[-1], e)
        else:
            starts.append(s)
            ends.append(e)
    return starts, ends


def _overlap(start: int, end: int, starts: list[int], ends: list[int]) -> int:
    total = 0
    i = max(0, bisect.bisect_right(starts, start) - 1)
    while i < len(starts) and starts[i] < end:
        total += max(0, min(end, ends[i]) - max(start, starts[i]))
        i += 1
    return total


def added_bytes(tree: Path, reference: Path | None) -> int:
    """Bytes of `tree`'s files in extents that the same file in `reference` does not use.

    Inline and not-yet-allocated extents count as added. Without a reference every byte of
    every extent counts (the tree owns all of it).
    """
    total = 0
    for rel, _size in _regular_files(tree):
        own = file_extents(tree / rel)
        if not own:
            continue
        starts: list[int] = []
        ends: list[int] = []
        if reference is not None:
            ref_path = reference / rel
            try:
                if stat.S_ISREG(os.lstat(ref_path).st_mode):
                    starts, ends = _merged(file_extents(ref_path))
            except OSError:
                pass
        for physical, length, flags in own:
            if flags & (_FLAG_UNKNOWN | _FLAG_INLINE) or not starts:
                total += length
            else:
                total += length - _overlap(physical, physical + length, starts, ends)
    return total


__all__ = ["Extent", "added_bytes", "file_extents"]
