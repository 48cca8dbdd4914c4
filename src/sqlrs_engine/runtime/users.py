"""Who PostgreSQL server processes run as, and making data directories theirs.

PostgreSQL refuses to run as root. When the engine runs as root, every server-side program
(`initdb`, `pg_ctl`, `postgres`) runs as an unprivileged OS user: config `runtime.host.user`,
default `postgres`. As a non-root user the engine runs them as itself (it cannot switch users;
a configured user is then ignored unless it is the engine's own user — see `server_user`).

The server user must own PGDATA (mode 0700) and be able to *traverse* every ancestor
directory of it: a root-owned 0700 state-store root blocks it, and PostgreSQL's own message
for that ("could not change directory … Permission denied") does not say which directory is
at fault. `check_traversable` does, and `grant_traversal` fixes it the least invasive way:
a POSIX ACL entry for that one user on exactly the directories that block it (SPEC §0.2).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlrs_engine.process import RunAs
from sqlrs_engine.runtime.acl import (
    EXECUTE,
    Acl,
    AclError,
    AclUnsupported,
    grant_search,
    read_acl,
    restore_acl,
    stored_acl,
)

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


def _can_search(user: RunAs, path: Path, st: os.stat_result) -> bool:
    """Whether `user` may search directory `path`: mode bits, or its POSIX ACL if it has one."""
    if user.uid == 0:
        return True
    try:
        acl = read_acl(path)
    except (OSError, AclError):
        acl = Acl.from_mode(stat.S_IMODE(st.st_mode))
    groups = {user.gid, *user.groups}
    return acl.allows(user.uid, groups, st.st_uid, st.st_gid, EXECUTE)


def blocking_dirs(path: Path, user: RunAs) -> list[Path]:
    """Every directory from `/` down to `path` itself that `user` cannot search, top first.

    Missing directories end the walk: there is nothing to check below them yet.
    """
    path = Path(os.path.abspath(path))
    found = []
    for directory in [*reversed(path.parents), path]:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            break
        if not _can_search(user, directory, st):
            found.append(directory)
    return found


def first_blocking_dir(path: Path, user: RunAs) -> Path | None:
    """The first ancestor of `path` (from `/` down, `path` excluded) that `user` cannot
    traverse, or None when all can be."""
    blocking = [d for d in blocking_dirs(path, user) if d != Path(os.path.abspath(path))]
    return blocking[0] if blocking else None


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
        f"`setfacl -m u:{user.name}:x {blocking}`) or put the state store under a "
        f"directory that user can reach"
    )


def grant_traversal(path: Path, user: RunAs) -> list[Path]:
    """Let `user` reach `path`: one ACL entry `u:<user>:x` on each directory that blocks it.

    Returns the directories changed (the caller logs them). Nothing else about them changes:
    no mode is widened for other users. Where an entry cannot be set (a filesystem without
    ACL support, a read-only mount) the entries set by this call are taken back and
    ServerUserError names *every* blocking directory at once, with the fix, so that a user
    does not have to discover them one failed start at a time.
    """
    blocking = blocking_dirs(path, user)
    granted: list[tuple[Path, bytes | None, int]] = []
    failures: list[str] = []
    for directory in blocking:
        before = stored_acl(directory)
        mode = stat.S_IMODE(os.stat(directory).st_mode)
        try:
            grant_search(directory, user.uid)
        except AclUnsupported:
            failures.append(f"{describe_dir(directory)}: the filesystem does not support ACLs")
            continue
        except OSError as error:
            failures.append(f"{describe_dir(directory)}: {error.strerror or error}")
            continue
        granted.append((directory, before, mode))
    if not failures:
        return [directory for directory, _, _ in granted]
    for directory, before, mode in reversed(granted):
        restore_acl(directory, before, mode)
    names = "\n".join(f"  {describe_dir(d)}" for d in blocking)
    raise ServerUserError(
        f"PostgreSQL runs as OS user {user.name!r}, which cannot reach {path}; these "
        f"directories on the way block it:\n{names}\nthe engine could not grant it search "
        f"permission there ({'; '.join(failures)}). Fix: grant it yourself, for each directory "
        f"`setfacl -m u:{user.name}:x DIR` (or `chmod o+x DIR`, which opens it to every local "
        f"user), or put the state store (SQLRS_STATE_STORE) under a directory it can reach"
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
