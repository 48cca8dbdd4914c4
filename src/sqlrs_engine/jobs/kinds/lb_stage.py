"""The private copy of an lb job's inputs that Liquibase runs from (SPEC §0.9).

When the engine runs as root, Liquibase runs as an unprivileged user, which may not be
allowed to read the user's changelogs. It must not read them *itself* anyway: planning hashes
every file Liquibase reads into the plan-cache key (prepare/lb_inputs.py), so Liquibase gets a
copy written from exactly those bytes, and what runs is what was hashed. A file the walk did
not read (a `${…}` path, a file of the engine's user that no changelog names literally) is not
in the copy, so Liquibase cannot read it through the changelog.

```
<stage>/root/<absolute path of each file read>
```

Liquibase 4 resolves every path — the changelog, includes, absolute ones too — under its
search roots, so mapping each root `R` to `<stage>/root/R` (and the working directory likewise)
makes it find the copies under the same *logical* paths: the file names it records in
`databasechangelog`, and so the changeset ids and checksums, are the same as without the copy.
Output is mapped back (`unstage`), so messages and job details name the user's paths.

The copy lives for the whole job (planning and every changeset) and is readable by the
unprivileged user's group, writable by nobody but the engine (jobs/staging.py modes).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from sqlrs_engine.jobs.staging import DIR_MODE, StageTree
from sqlrs_engine.prepare.lb_args import DEFAULTS_FLAG, SEARCH_PATH_FLAG, is_remote

STAGE_DIR_NAME = "lb-stage"


class StageError(Exception):
    """The copy could not be written (a full disk, say): the job cannot run safely."""


class LbStage:
    """One job's staging copy; an `InputSink` for `lb_inputs.read_inputs`."""

    def __init__(self, path: Path, gid: int | None) -> None:
        """Create an empty copy at `path` (an empty directory is used as it is, anything
        else there is a leftover of a crashed job and replaced) readable by group `gid`."""
        if not path.is_dir() or any(path.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(mode=DIR_MODE, parents=True)
        self.path = path
        self.tree = StageTree(path / "root", gid)
        self.tree.own(path, DIR_MODE)
        self.tree.mkdirs(self.tree.root)

    # -- InputSink ---------------------------------------------------------------------------

    def file(self, path: str, data: bytes) -> None:
        try:
            self.tree.write(path, [data])
        except OSError as error:
            raise StageError(f"cannot copy {path}: {error.strerror or error}") from error

    def directory(self, path: str) -> None:
        try:
            self.tree.mkdirs(self.tree.staged(path))
        except OSError as error:
            raise StageError(f"cannot copy {path}: {error.strerror or error}") from error

    # -- running from it ---------------------------------------------------------------------

    def staged(self, path: str) -> str:
        """The copy of the absolute local `path` (a directory is created when missing)."""
        return str(self.tree.staged(path))

    def ensure_dir(self, path: str) -> str:
        """The copy of directory `path`, created (empty) when nothing under it was read."""
        target = self.tree.staged(path)
        self.tree.mkdirs(target)
        return str(target)

    def unstage(self, text: str) -> str:
        """`text` with staged paths turned back into the user's paths."""
        root = str(self.tree.root)
        return text.replace(root + "/", "/").replace(root, "/")  # the root itself is `/`

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def staged_args(args: Sequence[str], stage: LbStage, search_roots: Sequence[str]) -> list[str]:
    """Liquibase arguments that read the staging copy instead of the user's files.

    `args` are the user's (planning or step arguments, path flags as separate values). The
    search path is always given explicitly (`search_roots` when the arguments name none), so
    neither the defaults file nor a LIQUIBASE_SEARCH_PATH variable can point Liquibase back
    at the user's directories; the defaults file is its copy; the changelog stays as it is
    (Liquibase looks it up under the search roots).
    """
    out: list[str] = []
    index = 0
    given = False
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == DEFAULTS_FLAG and index < len(args):
            value = args[index]
            index += 1
            out += [arg, value if is_remote(value) else stage.staged(value)]
        elif arg == SEARCH_PATH_FLAG and index < len(args):
            items = args[index].split(",")
            index += 1
            out += [arg, _staged_roots(items, stage)]
            given = True
        else:
            out.append(arg)
    if not given:
        out = [f"--search-path={_staged_roots(search_roots, stage)}", *out]
    return out


def _staged_roots(items: Sequence[str], stage: LbStage) -> str:
    return ",".join(
        item if is_remote(item) or not os.path.isabs(item) else stage.ensure_dir(item)
        for item in items
    )


__all__ = ["STAGE_DIR_NAME", "LbStage", "StageError", "staged_args"]
