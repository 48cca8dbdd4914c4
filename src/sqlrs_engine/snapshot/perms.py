"""Modes of the state store's directories: states and the base are closed to the server user.

PostgreSQL runs as an unprivileged OS user (runtime/users.py) that owns the files of every
data dir, states included (a clone must be theirs). What keeps it from writing into a state
is the directory *around* the states (SPEC §0.9):

```
<root>/                      0711  (the engine's; the server user may only pass through)
<root>/engines/, <e>/, <v>/  0711
<root>/engines/<e>/<v>/states/   0700, owned by the engine's user: sealed
<root>/engines/<e>/<v>/base/     0700 sealed once initialized (initdb runs in it before)
<root>/jobs/, jobs/<job>/    0711  (a clone's server must reach its PGDATA)
```

The server user reaches a state only through a clone: a copy or btrfs snapshot under `jobs/`,
or an overlay mount there, whose lower layers the kernel reads with the *mounter's* (root's)
credentials while permission checks on the merged files use their own owner and mode.

When the engine does not run as root, the server runs as the engine's own user and owns
these directories too: the modes then keep out everyone else, not the server.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

SEALED = 0o700
PASSAGE = 0o711


def make_dirs(path: Path, mode: int) -> None:
    """Create `path` and missing parents, each created one with exactly `mode`."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(directory, mode)  # mkdir's mode is filtered by the umask


def ensure_mode(path: Path, mode: int) -> None:
    """Give existing directory `path` exactly `mode` (a no-op when it has it)."""
    if stat.S_IMODE(os.lstat(path).st_mode) != mode:
        os.chmod(path, mode)


def seal(path: Path) -> None:
    """Make directory `path` the engine user's own, mode 0700 (creating it if missing).

    Ownership first: a root engine may find a directory that an initdb running as the server
    user made its own.
    """
    make_dirs(path, SEALED)
    st = os.lstat(path)
    if st.st_uid != os.geteuid() or st.st_gid != os.getegid():
        os.lchown(path, os.geteuid(), os.getegid())
    ensure_mode(path, SEALED)


def is_sealed(path: Path) -> bool:
    """True when `path` is a directory of the engine's user with mode 0700."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == SEALED


__all__ = ["PASSAGE", "SEALED", "ensure_mode", "is_sealed", "make_dirs", "seal"]
