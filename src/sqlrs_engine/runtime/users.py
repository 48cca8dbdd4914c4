"""Who PostgreSQL server processes run as, and making data directories theirs.

PostgreSQL refuses to run as root. When the engine runs as root, every server-side program
(`initdb`, `pg_ctl`, `postgres`) runs as an unprivileged OS user: config `runtime.host.user`,
default `postgres`. As a non-root user the engine runs them as itself (it cannot switch users;
a configured user is then ignored unless it is the engine's own user — see `server_user`).

The server user must own PGDATA (mode 0700) and be able to *traverse* every ancestor
directory of it: a root-owned 0700 state-store root blocks it, and PostgreSQL's own message
for that ("could not change directory … Permission denied") does not say which directory is
at fault. `check_traversable` does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlrs_engine.process import RunAs

DEFAULT_SERVER_USER = "postgres"


class ServerUserError(Exception):
    """The server user is missing/unsuitable, or cannot reach or own a directory."""


def server_user(configured: str | None = None) -> RunAs:
    """The identity server processes run as (see module docstring).

    Raises ServerUserError with what to do when, as root, the user does not exist or is root.
    """
    if os.geteuid() != 0:
        me = RunAs.current()
        if configured and configured not in (me.name, str(me.uid)):
            raise ServerUserError(
                f"runtime.host.user is {configured!r}, but the engine runs as {me.name!r} "
                "(not root) and cannot switch users; unset runtime.host.user or run the "
                "engine as root"
            )
        return me
    name = configured or DEFAULT_SERVER_USER
    try:
        user = RunAs.from_name(name)
    except KeyError:
        hint = (
            f"create it (for example `useradd --system --home-dir /var/lib/postgresql "
            f"--shell /bin/sh {name}`)"
            if name == DEFAULT_SERVER_USER
            else "create it or set runtime.host.user to an existing unprivileged user"
        )
        raise ServerUserError(
            f"the engine runs as root, and PostgreSQL server processes must run as an "
            f"unprivileged OS user, but user {name!r} does not exist: {hint}"
        ) from None
    if user.uid == 0:
        raise ServerUserError(
            f"runtime.host.user {name!r} is root: PostgreSQL refuses to run as root; "
            "choose an unprivileged user"
        )
    return user


def _can(user: RunAs, st: os.stat_result, bits: tuple[int, int, int]) -> bool:
    """Permission check by mode bits for `user` (owner/group/other; ACLs are not consulted)."""
    if user.uid == 0:
        return True
    owner_bit, group_bit, other_bit = bits
    if st.st_uid == user.uid:
        return bool(st.st_mode & owner_bit)
    if st.st_gid == user.gid or st.st_gid in user.groups:
        return bool(st.st_mode & group_bit)
    return bool(st.st_mode & other_bit)


_EXEC = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)


def first_blocking_dir(path: Path, user: RunAs) -> Path | None:
    """The first ancestor of `path` (from `/` down, `path` excluded) that `user` cannot
    traverse, or None when all can be. Missing ancestors end the walk (nothing to check)."""
    path = Path(os.path.abspath(path))
    for ancestor in reversed(path.parents):
        try:
            st = os.stat(ancestor)
        except FileNotFoundError:
            return None
        if not _can(user, st, _EXEC):
            return ancestor
    return None


def describe_dir(path: Path) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path} ({exc.strerror})"
    try:
        import pwd

        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    return f"{path} (owner {owner}, mode {stat.S_IMODE(st.st_mode):04o})"


def check_traversable(path: Path, user: RunAs) -> None:
    """Raise ServerUserError naming the first ancestor of `path` that `user` cannot enter."""
    blocking = first_blocking_dir(path, user)
    if blocking is None:
        return
    raise ServerUserError(
        f"PostgreSQL runs as OS user {user.name!r}, which cannot reach {path}: directory "
        f"{describe_dir(blocking)} is not traversable by it; allow it (for example "
        f"`chmod o+x {blocking}` or `chmod 0711 {blocking}`) or put the state store under a "
        f"directory that user can reach"
    )


def chown_tree(root: Path, user: RunAs) -> int:
    """Give `root` and everything below it to `user` (uid and primary gid); returns how many
    entries changed.

    Only entries whose owner differs are changed: on an overlay clone a chown of an untouched
    file would copy it up into the writable layer. Symlinks are changed themselves, never
    followed. A no-op for a non-root engine (it can only own its files anyway).
    """
    if os.geteuid() != 0:
        return 0
    changed = 0

    def fix(path: str) -> None:
        nonlocal changed
        st = os.lstat(path)
        if st.st_uid != user.uid or st.st_gid != user.gid:
            os.lchown(path, user.uid, user.gid)
            changed += 1

    fix(str(root))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            fix(os.path.join(dirpath, name))
    return changed


def ensure_owned_dir(path: Path, user: RunAs, mode: int = 0o700) -> None:
    """Make `path` exist as a directory owned by `user` with `mode` (not recursive)."""
    path.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path)
    if os.geteuid() == 0 and (st.st_uid != user.uid or st.st_gid != user.gid):
        os.lchown(path, user.uid, user.gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
