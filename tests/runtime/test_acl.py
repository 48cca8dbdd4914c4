"""POSIX ACLs through their xattr: encoding (tables), the access check (tables), and real
grants on the machine's filesystem checked by the kernel itself (as the server user)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from sqlrs_engine.runtime import acl
from sqlrs_engine.runtime.acl import (
    EXECUTE,
    GROUP,
    GROUP_OBJ,
    MASK,
    OTHER,
    UNDEFINED_ID,
    USER,
    USER_OBJ,
    Acl,
    AclError,
    AclUnsupported,
    Entry,
)
from tests.support.faults import acl_less_fs

U = UNDEFINED_ID


def minimal(mode: int) -> Acl:
    return Acl.from_mode(mode)


# -- encoding ------------------------------------------------------------------------------


def test_from_mode() -> None:
    assert minimal(0o751).entries == (
        Entry(USER_OBJ, U, 7),
        Entry(GROUP_OBJ, U, 5),
        Entry(OTHER, U, 1),
    )


def test_encode_is_the_kernel_layout() -> None:
    # version 2, then (tag, perm, id) little-endian, sorted by tag then id
    data = acl.encode(minimal(0o700).with_user_perm(101, EXECUTE))
    assert data.hex() == (
        "02000000"
        "0100" "0700" "ffffffff"
        "0200" "0100" "65000000"
        "0400" "0000" "ffffffff"
        "1000" "0100" "ffffffff"
        "2000" "0000" "ffffffff"
    )  # fmt: skip
    assert acl.decode(data) == minimal(0o700).with_user_perm(101, EXECUTE)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x02\x00\x00", b"\x02\x00\x00\x00\x01", b"\x01\x00\x00\x00"],
    ids=["empty", "short-header", "partial-entry", "version-1"],
)
def test_decode_refuses_what_is_not_an_acl(data: bytes) -> None:
    with pytest.raises(AclError):
        acl.decode(data)


@pytest.mark.parametrize(
    ("start", "uid", "expected_user", "expected_mask"),
    [
        (minimal(0o700), 101, 1, 1),  # minimal: mask = group bits | x
        (minimal(0o750), 101, 1, 5),  # the owning group keeps exactly its bits
        (minimal(0o700).with_user_perm(101, 4), 101, 5, 5),  # adds to an existing entry
        (Acl((*minimal(0o700).entries, Entry(MASK, U, 4))), 101, 1, 5),  # mask gains x only
    ],
)
def test_with_user_perm(start: Acl, uid: int, expected_user: int, expected_mask: int) -> None:
    granted = start.with_user_perm(uid, EXECUTE)
    assert granted.perm(USER, uid) == expected_user
    assert granted.perm(MASK) == expected_mask
    assert granted.perm(OTHER) == start.perm(OTHER)
    assert granted.perm(GROUP_OBJ) == start.perm(GROUP_OBJ)
    assert list(granted.entries) == sorted(granted.entries)


# -- the access check (acl(5)) -------------------------------------------------------------

NAMED = minimal(0o700).with_user_perm(101, EXECUTE)


def with_group(mode: int, gid: int, perm: int) -> Acl:
    """`mode` plus a named-group entry (and a mask letting it through)."""
    return Acl((*minimal(mode).entries, Entry(GROUP, gid, perm), Entry(MASK, U, perm)))


@pytest.mark.parametrize(
    ("the_acl", "uid", "gids", "owner", "group", "allowed"),
    [
        (minimal(0o700), 101, [104], 0, 0, False),
        (minimal(0o711), 101, [104], 0, 0, True),
        (minimal(0o710), 101, [104], 0, 104, True),  # owning group
        (minimal(0o710), 101, [104], 0, 0, False),
        (minimal(0o070), 101, [104], 101, 104, False),  # the owner class decides first
        (NAMED, 101, [104], 0, 0, True),  # named user
        (NAMED, 102, [104], 0, 0, False),  # another user: other bits
        (Acl((*NAMED.entries[:3], Entry(MASK, U, 0), NAMED.entries[4])), 101, [], 0, 0, False),
        (Acl((*minimal(0o700).entries, Entry(GROUP, 7, 1), Entry(MASK, U, 1))), 5, [7], 0, 0, True),
        (
            Acl((*minimal(0o701).entries, Entry(GROUP, 7, 0), Entry(MASK, U, 0))),
            5,
            [7],
            0,
            0,
            False,
        ),
    ],
    ids=[
        "0700-other",
        "0711-other",
        "group-x",
        "group-mismatch",
        "owner-without-x",
        "named-user",
        "named-other-user",
        "mask-hides-named",
        "named-group",
        "matched-group-denies-despite-other",
    ],
)
def test_allows(
    the_acl: Acl, uid: int, gids: list[int], owner: int, group: int, allowed: bool
) -> None:
    assert the_acl.allows(uid, gids, owner, group, EXECUTE) is allowed


# -- real filesystems ----------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to postgres")


def can_list_as_postgres(path: Path) -> bool:
    return (
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "ls", str(path)], capture_output=True
        ).returncode
        == 0
    )


@needs_root
def test_grant_search_lets_only_that_user_through(scratch_dir: Path) -> None:
    private = scratch_dir / "private"
    private.mkdir(mode=0o700)
    (private / "inner").mkdir(mode=0o755)
    assert not can_list_as_postgres(private / "inner")
    acl.grant_search(private, _postgres_uid())
    assert can_list_as_postgres(private / "inner")  # search granted …
    assert not can_list_as_postgres(private)  # … but not read
    assert stat.S_IMODE(private.stat().st_mode) == 0o710  # group bits show the mask
    back = acl.read_acl(private)
    assert back.perm(GROUP_OBJ) == 0 and back.perm(OTHER) == 0
    assert back.perm(USER, _postgres_uid()) == EXECUTE
    # The standard tool reads what we wrote the same way (acl is installed by bootstrap).
    text = subprocess.run(
        ["getfacl", "-cp", str(private)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert {"user:postgres:--x", "group::---", "mask::--x", "other::---"} <= set(text)


@needs_root
def test_restore_puts_back_exactly_what_was_there(scratch_dir: Path) -> None:
    d = scratch_dir / "d"
    d.mkdir(mode=0o700)
    raw = acl.stored_acl(d)
    acl.grant_search(d, _postgres_uid())
    acl.restore_acl(d, raw, 0o700)
    assert acl.stored_acl(d) is None
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


@needs_root
def test_no_acl_support_is_reported_as_such(scratch_dir: Path) -> None:
    with acl_less_fs(scratch_dir / "ramfs") as fs:
        with pytest.raises(AclUnsupported):
            acl.grant_search(fs, _postgres_uid())
        assert acl.read_acl(fs) == minimal(0o700)  # falls back to the mode


def _postgres_uid() -> int:
    import pwd

    return pwd.getpwnam("postgres").pw_uid
