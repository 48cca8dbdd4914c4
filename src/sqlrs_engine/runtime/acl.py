"""POSIX access ACLs, read and written through their extended attribute.

The engine needs exactly one ACL operation — "let this one user search this directory" (SPEC
§0.2) — and one question — "can this user search it?". Both work on the kernel's own
representation, the `system.posix_acl_access` xattr (linux/posix_acl_xattr.h: a little-endian
version word, then `(tag, perm, id)` entries sorted by tag and id), so no `setfacl` binary
and no C extension is needed. Encoding and decoding are pure and table-tested; the two I/O
functions are `read_acl` and `write_acl`.

Semantics follow POSIX.1e as Linux implements them (acl(5)): a file without the xattr has the
minimal ACL its mode describes; named entries and the owning group are limited by the mask;
setting the xattr also sets the mode's group bits to the mask.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

XATTR = "system.posix_acl_access"
VERSION = 2
UNDEFINED_ID = 0xFFFFFFFF

USER_OBJ = 0x01
USER = 0x02
GROUP_OBJ = 0x04
GROUP = 0x08
MASK = 0x10
OTHER = 0x20

READ, WRITE, EXECUTE = 4, 2, 1

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


class AclError(ValueError):
    """The xattr's bytes are not a POSIX ACL this module understands."""


class AclUnsupported(OSError):
    """The filesystem (or its mount options, e.g. `noacl`) does not support POSIX ACLs."""


@dataclass(frozen=True, order=True)
class Entry:
    tag: int
    id: int
    perm: int


@dataclass(frozen=True)
class Acl:
    """An access ACL: its entries sorted as the kernel requires (by tag, then id)."""

    entries: tuple[Entry, ...]

    @classmethod
    def from_mode(cls, mode: int) -> Acl:
        """The minimal ACL equivalent to permission bits `mode` (no xattr present)."""
        return cls(
            (
                Entry(USER_OBJ, UNDEFINED_ID, (mode >> 6) & 7),
                Entry(GROUP_OBJ, UNDEFINED_ID, (mode >> 3) & 7),
                Entry(OTHER, UNDEFINED_ID, mode & 7),
            )
        )

    def find(self, tag: int, ident: int = UNDEFINED_ID) -> Entry | None:
        return next((e for e in self.entries if e.tag == tag and e.id == ident), None)

    def perm(self, tag: int, ident: int = UNDEFINED_ID) -> int | None:
        entry = self.find(tag, ident)
        return None if entry is None else entry.perm

    def with_user_perm(self, uid: int, add: int) -> Acl:
        """This ACL with `add` granted to named user `uid` and made effective.

        The mask must let the grant through: an existing mask only gains `add`; a minimal ACL
        gets a mask equal to its owning group's bits plus `add`, so every other entry's
        effective permissions stay exactly what they were.
        """
        entries = {(e.tag, e.id): e for e in self.entries}
        current = entries.get((USER, uid))
        entries[(USER, uid)] = Entry(USER, uid, (current.perm if current else 0) | add)
        mask = entries.get((MASK, UNDEFINED_ID))
        if mask is None:
            base = self.perm(GROUP_OBJ) or 0
            entries[(MASK, UNDEFINED_ID)] = Entry(MASK, UNDEFINED_ID, base | add)
        else:
            entries[(MASK, UNDEFINED_ID)] = Entry(MASK, UNDEFINED_ID, mask.perm | add)
        return Acl(tuple(sorted(entries.values())))

    def allows(self, uid: int, gids: Iterable[int], owner: int, group: int, want: int) -> bool:
        """The acl(5) access check for a process with `uid` and groups `gids`."""
        if uid == owner:
            return (self.perm(USER_OBJ) or 0) & want == want
        mask = self.perm(MASK)
        limit = 7 if mask is None else mask
        named = self.perm(USER, uid)
        if named is not None:
            return named & limit & want == want
        groups = set(gids)
        matched = False
        for entry in self.entries:
            hit = (entry.tag == GROUP_OBJ and group in groups) or (
                entry.tag == GROUP and entry.id in groups
            )
            if hit:
                matched = True
                if entry.perm & limit & want == want:
                    return True
        if matched:
            return False
        return (self.perm(OTHER) or 0) & want == want


def encode(acl: Acl) -> bytes:
    return _HEADER.pack(VERSION) + b"".join(
        _ENTRY.pack(e.tag, e.perm, e.id) for e in sorted(acl.entries)
    )


def decode(data: bytes) -> Acl:
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % _ENTRY.size:
        raise AclError(f"ACL xattr of {len(data)} bytes has no whole entries")
    (version,) = _HEADER.unpack_from(data)
    if version != VERSION:
        raise AclError(f"unknown ACL xattr version {version}")
    entries = []
    for offset in range(_HEADER.size, len(data), _ENTRY.size):
        tag, perm, ident = _ENTRY.unpack_from(data, offset)
        entries.append(Entry(tag, ident, perm))
    return Acl(tuple(sorted(entries)))


def read_acl(path: Path) -> Acl:
    """The access ACL of `path` (the minimal one from its mode when it has no xattr)."""
    try:
        return decode(os.getxattr(path, XATTR))
    except OSError as error:
        if error.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise
    return Acl.from_mode(stat.S_IMODE(os.stat(path).st_mode))


def stored_acl(path: Path) -> bytes | None:
    """The raw xattr of `path`, or None when it has none (to restore it exactly later)."""
    try:
        return os.getxattr(path, XATTR)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


def write_acl(path: Path, acl: Acl) -> None:
    """Set the access ACL of `path`; raises `AclUnsupported` where ACLs cannot be stored."""
    try:
        os.setxattr(path, XATTR, encode(acl))
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise AclUnsupported(
                error.errno, "POSIX ACLs are not supported here", str(path)
            ) from None
        raise


def restore_acl(path: Path, raw: bytes | None, mode: int) -> None:
    """Put back what `stored_acl` returned (and the mode's permission bits) on `path`."""
    if raw is None:
        try:
            os.removexattr(path, XATTR)
        except OSError as error:
            if error.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise
    else:
        os.setxattr(path, XATTR, raw)
    os.chmod(path, mode)


def grant_search(path: Path, uid: int) -> None:
    """Give user `uid` search (execute) permission on directory `path` through one ACL entry."""
    write_acl(path, read_acl(path).with_user_perm(uid, EXECUTE))
