"""A private staging copy of exactly the files a psql step hashed (SPEC §0.9).

psql runs unprivileged (the server user), so it may not be allowed to read the user's script
files, and it must not read them *again* anyway: a file edited between hashing and running
would build a state whose id names other content. So a step runs from a copy written from the
bytes read through the content locks that the step's digest holds (prepare/digest.py):

```
<stage>/root/<absolute path of each input and included file>
```

Include commands (`\\i`, `\\ir`, `\\include`, `\\include_relative`) in files, `-c` commands
and stdin are rewritten to `\\i '<stage>/root/<the path the digest resolved>'`, so every
include reads the staged copy, however it was written; every other line is kept byte for
byte. psql's working directory is the staged copy of the work dir. Output lines are mapped
back (`unstage`), so messages name the user's paths.

The copy is readable by the server user (group) and writable by nobody but the engine:
directories 0750, files 0640, owned by the engine's user with the server user's group.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlrs_engine.prepare.digest import MAX_LINE_BYTES, ContentLocks, parse_include
from sqlrs_engine.prepare.psql_args import PsqlStep
from sqlrs_engine.prepare.textutil import go_clean, go_dir, go_join, go_trim_space, is_abs

_RELATIVE = frozenset({"\\ir", "\\include_relative"})
DIR_MODE = 0o750
FILE_MODE = 0o640


@dataclass(frozen=True)
class StagedStep:
    """How to run one step from its staging copy."""

    args: list[str]
    stdin: bytes | None
    cwd: Path
    root: Path
    """`<stage>/root`: prefix of every staged path (removed from output by `unstage`)."""

    def unstage(self, text: str) -> str:
        """`text` with staged paths turned back into the user's paths."""
        return text.replace(str(self.root), "")


class StageTree:
    """`<root>/<absolute path>` copies, readable by group `gid` (None: the engine's own group)
    and writable by the engine only. Shared by the psql and Liquibase stagings."""

    def __init__(self, root: Path, gid: int | None) -> None:
        self.root = root
        self.gid = gid

    def staged(self, path: str) -> Path:
        """Where the copy of the absolute `path` lives."""
        return self.root / path.lstrip("/")

    def mkdirs(self, directory: Path) -> None:
        """Create `directory` and its missing parents (each 0750, group `gid`)."""
        missing: list[Path] = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for item in reversed(missing):
            item.mkdir(mode=DIR_MODE)
            self.own(item, DIR_MODE)

    def write(self, path: str, chunks: Iterable[bytes]) -> Path:
        """Write the copy of `path` (must not exist yet) from `chunks`; returns it."""
        target = self.staged(path)
        self.mkdirs(target.parent)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.writelines(chunks)
        self.own(target, FILE_MODE)
        return target

    def own(self, path: Path, mode: int) -> None:
        """Give `path` the stage's group and `mode`."""
        if self.gid is not None:
            os.chown(path, os.geteuid(), self.gid)
        os.chmod(path, mode)


class _Stager(StageTree):
    def __init__(self, root: Path, work_dir: str, locks: ContentLocks, gid: int | None) -> None:
        super().__init__(root, gid)
        self.work_dir = work_dir
        self.locks = locks
        self.done: set[str] = set()

    def resolve(self, command: str, argument: str, current_file: str) -> str:
        """The file an include names, exactly as the digest resolved it."""
        argument = go_trim_space(argument)
        if is_abs(argument):
            return go_clean(argument)
        base = go_dir(current_file) if command in _RELATIVE and current_file else self.work_dir
        return go_clean(go_join(base, argument))

    def rewrite(self, lines: Iterable[bytes], current_file: str) -> Iterator[bytes]:
        """`lines` (endings kept) with every include pointed at its staged copy."""
        for raw in lines:
            body = raw.rstrip(b"\r\n")
            ending = raw[len(body) :]
            include = (
                parse_include(body.decode("utf-8", "surrogateescape"))
                if len(body) <= MAX_LINE_BYTES and body.lstrip().startswith(b"\\")
                else None
            )
            if include is None:
                yield raw
                continue
            target = self.resolve(include[0], include[1], current_file)
            self.file(target)
            quoted = str(self.staged(target)).replace("\\", "\\\\").replace("'", "''")
            yield f"\\i '{quoted}'".encode("utf-8", "surrogateescape") + ending

    def text(self, data: bytes) -> bytes:
        return b"".join(self.rewrite(data.splitlines(keepends=True), ""))

    def file(self, path: str) -> None:
        """Stage `path` (streamed: constant memory for any size) and what it includes."""
        path = go_clean(path)
        if path in self.done:
            return
        self.done.add(path)
        self.write(path, self.rewrite(self.locks.raw_lines(path), path))


def stage_step(
    stage: Path,
    step: PsqlStep,
    stdin: str | None,
    work_dir: str,
    locks: ContentLocks,
    reader_gid: int | None,
) -> StagedStep:
    """Write the staging copy of `step` into `stage` (replaced if present).

    `locks` must hold the step's digest (the files are read through it, never re-opened);
    `reader_gid`: the group that may read the copy (the server user's, when the engine is
    root), None to keep the engine's own.
    """
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(mode=DIR_MODE, parents=True)
    root = stage / "root"
    stager = _Stager(root, work_dir, locks, reader_gid)
    stager.own(stage, DIR_MODE)
    stager.mkdirs(root)
    cwd = stager.staged(work_dir) if work_dir else root
    stager.mkdirs(cwd)
    args = list(step.exec_args)
    data = stdin.encode("utf-8") if stdin is not None and step.uses_stdin else None
    item = step.input
    if item is not None:
        if item.kind == "file":
            stager.file(item.value)
            args[-1] = str(stager.staged(go_clean(item.value)))
        elif item.kind == "command":
            args[-1] = stager.text(item.value.encode()).decode("utf-8", "surrogateescape")
        elif data is not None:
            data = stager.text(data)
    return StagedStep(args, data, cwd, root)


_ECHO = re.compile(r"^(LINE \d+|QUERY): ")
_CARET = re.compile(r"^\s*\^\s*$")


class InputEchoFilter:
    """Drops psql's echo of input text from what a job records (SPEC §0.9).

    On an error psql prints the offending input line (`LINE 3: <text>`, then a `^` marker
    line, or `QUERY: <text>`): for `-f /etc/shadow` that would copy a line of the file into
    the job's events and error. The `psql:<file>:<line>: ERROR: …` line before it already says
    where the error is, so only the echo is dropped. Feed it every stderr line in order.
    """

    def __init__(self) -> None:
        self._after_echo = False

    def hides(self, line: str) -> bool:
        if _ECHO.match(line):
            self._after_echo = True
            return True
        if self._after_echo and _CARET.match(line):
            self._after_echo = False
            return True
        self._after_echo = False
        return False


__all__ = ["DIR_MODE", "FILE_MODE", "InputEchoFilter", "StageTree", "StagedStep", "stage_step"]
