"""Content digest of psql inputs, with `\\i` includes expanded (SPEC §2.5).

A state is named by what its scripts *say*, not by their paths: the digest covers the text of
every command, stdin and file, with included files inlined between boundary markers, so
editing an included file changes the state id. While a digest is taken (and, during
execution, for the whole step) every file read is held under a shared, non-blocking `flock`,
so a writer holding an exclusive lock makes the job fail instead of building a state from a
half-written script. The layout of the digested bytes is byte-compatible with the reference
engine, including its line splitting (`bufio.Scanner`: 64 KiB line limit, trailing `\\r`
dropped).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Protocol

from sqlrs_engine.errors import JobFailure
from sqlrs_engine.prepare.hashing import psql_task_hash
from sqlrs_engine.prepare.psql_args import PsqlInput, PsqlPlanInput
from sqlrs_engine.prepare.textutil import go_clean, go_dir, go_join, go_trim_space, is_abs

MAX_LINE_BYTES = 64 * 1024 - 1
"""Longest line (bytes, before the `\\n`, including a `\\r`) Go's bufio.Scanner accepts."""

INPUT_BOUNDARY = b"\n-- sqlrs: input-boundary\n"
INCLUDE_BOUNDARY = b"\n-- sqlrs: include-boundary\n"
_INCLUDE_COMMANDS = frozenset({"\\i", "\\ir", "\\include", "\\include_relative"})
_RELATIVE_COMMANDS = frozenset({"\\ir", "\\include_relative"})
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

CONTENT_HASH_ERROR = "cannot compute psql content hash"


class ContentError(Exception):
    """Why a digest could not be computed (becomes the job failure's details)."""


def _reason(exc: OSError | ValueError) -> str:
    """Go-style error text: `no such file or directory`, not `No such file or directory`."""
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    return reason[:1].lower() + reason[1:]


class ContentLocks:
    """Shared non-blocking flocks on input files, held until `release()`.

    Use as a context manager around the work that must see the files unchanged (the planning
    digest, or a whole step's execution). A path is locked once, however often it is read.
    """

    def __init__(self) -> None:
        self._files: dict[str, BinaryIO] = {}

    @property
    def paths(self) -> list[str]:
        """Locked paths, in the order they were first locked."""
        return list(self._files)

    def lock(self, path: str) -> None:
        """Stat, open and share-lock `path` (no-op if already held); raises ContentError."""
        if path in self._files:
            return
        try:
            os.stat(path)
        except (OSError, ValueError) as exc:
            raise ContentError(f"stat {path}: {_reason(exc)}") from None
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; no effect on regular files.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError) as exc:
            raise ContentError(f"open {path}: {_reason(exc)}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            what = "is a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise ContentError(f"read {path}: {what}")
        handle = os.fdopen(fd, "rb")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ContentError(
                    f"cannot lock {path}: it is locked by another process (exclusive lock held)"
                ) from None
            raise ContentError(f"cannot lock {path}: {_reason(exc)}") from None
        self._files[path] = handle

    def read_lines(self, path: str) -> Iterator[bytes]:
        """The lines of a locked file (without `\\n`), streamed: a file of any size is
        digested in constant memory. A line longer than the limit is cut one byte past it,
        so `lines` reports it without reading it whole."""
        handle = self._files.get(path)
        if handle is None:
            self.lock(path)
            handle = self._files[path]
        try:
            handle.seek(0)
            while True:
                raw = handle.readline(MAX_LINE_BYTES + 2)
                if not raw:
                    return
                yield raw[:-1] if raw.endswith(b"\n") else raw
        except OSError as exc:
            raise ContentError(f"read {path}: {_reason(exc)}") from None

    def raw_lines(self, path: str) -> Iterator[bytes]:
        """The lines of a locked file exactly as stored (line endings kept, never cut),
        streamed: for copying what was digested (jobs/staging.py)."""
        handle = self._files.get(path)
        if handle is None:
            self.lock(path)
            handle = self._files[path]
        try:
            handle.seek(0)
            yield from handle
        except OSError as exc:
            raise ContentError(f"read {path}: {_reason(exc)}") from None

    def release(self) -> None:
        """Drop every lock (closing the handles); safe to call twice."""
        files, self._files = self._files, {}
        for handle in files.values():
            with contextlib.suppress(OSError):
                handle.close()

    def __enter__(self) -> ContentLocks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@dataclass(frozen=True)
class ContentDigest:
    """`hash` = sha256 hex of the expanded content; `files` = every file read (locked)."""

    hash: str
    files: tuple[str, ...]


def split_lines(data: bytes) -> list[bytes]:
    """`data` split at `\\n`; a final empty part (after a trailing newline) is dropped."""
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return parts


def _text_bytes(text: str) -> bytes:
    # A lone surrogate cannot come out of Go's JSON decoder: it becomes U+FFFD there.
    return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


def _split_command(line: str) -> list[str]:
    """psql meta-command tokens: space/tab separated, '…'/"…" quoted, quotes removed."""
    tokens: list[str] = []
    buf: list[str] = []
    quote = ""
    for char in line:
        if quote:
            if char == quote:
                quote = ""
            else:
                buf.append(char)
            continue
        if char in ("'", '"'):
            quote = char
        elif char in (" ", "\t"):
            if buf:
                tokens.append("".join(buf))
                buf = []
        else:
            buf.append(char)
    if buf:
        tokens.append("".join(buf))
    return tokens


def parse_include(line: str) -> tuple[str, str] | None:
    """`(command, path argument)` when `line` is an include meta-command, else None."""
    trimmed = go_trim_space(line)
    if not trimmed.startswith("\\"):
        return None
    tokens = _split_command(trimmed)
    if len(tokens) < 2 or tokens[0] not in _INCLUDE_COMMANDS:
        return None
    return tokens[0], tokens[1]


class _Sink(Protocol):
    def update(self, data: bytes, /) -> None: ...


class _Expander:
    def __init__(self, work_dir: str, locks: ContentLocks, sink: _Sink) -> None:
        self.work_dir = work_dir
        self.locks = locks
        self.sink = sink
        self.stack: set[str] = set()

    def lines(self, raw_lines: Iterable[bytes], source: str) -> Iterator[str]:
        """Decoded lines of `raw_lines` (each without its `\n`), checked against the 64 KiB
        limit, a trailing `\r` removed."""
        for number, raw in enumerate(raw_lines, start=1):
            if len(raw) > MAX_LINE_BYTES:
                size = (
                    f"at least {len(raw)} bytes"
                    if len(raw) > MAX_LINE_BYTES + 1
                    else f"{len(raw)} bytes"
                )
                raise ContentError(
                    f"{source}: line {number} is longer than 64 KiB "
                    f"({size}, at most {MAX_LINE_BYTES} allowed)"
                )
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            yield raw.decode("utf-8", "surrogateescape")

    def content(self, raw_lines: Iterable[bytes], current_file: str, source: str) -> None:
        for line in self.lines(raw_lines, source):
            include = parse_include(line)
            if include is None:
                self.sink.update(line.encode("utf-8", "surrogateescape") + b"\n")
                continue
            path = self.resolve(include[0], include[1], current_file)
            self.sink.update(INCLUDE_BOUNDARY)
            self.file(path)
            self.sink.update(INCLUDE_BOUNDARY)

    def resolve(self, command: str, argument: str, current_file: str) -> str:
        argument = go_trim_space(argument)
        if argument == "":
            raise ContentError("include path is empty")
        if is_abs(argument):
            return go_clean(argument)
        base = self.work_dir
        if command in _RELATIVE_COMMANDS and current_file:
            base = go_dir(current_file)
        if go_trim_space(base) == "":
            raise ContentError(f"include path requires working directory: {argument}")
        return go_join(base, argument)

    def file(self, path: str) -> None:
        if go_trim_space(path) == "":
            raise ContentError("empty include path")
        path = go_clean(path)
        if path in self.stack:
            raise ContentError(f"recursive include: {path}")
        self.locks.lock(path)
        self.stack.add(path)
        try:
            self.content(self.locks.read_lines(path), path, path)
        finally:
            self.stack.discard(path)


def compute_content_digest(
    inputs: Sequence[PsqlInput], work_dir: str, locks: ContentLocks | None = None
) -> ContentDigest:
    """Digest `inputs` in order (input boundaries between them), expanding includes.

    `work_dir` is the base of relative includes (`""` = none). With `locks` given, the file
    locks stay held in it for the caller to release; otherwise they are released on return.
    Any failure raises `JobFailure("invalid_argument", "cannot compute psql content hash",
    details=<reason>)`.
    """
    owned = locks is None
    held = ContentLocks() if locks is None else locks
    sink = hashlib.sha256()
    expander = _Expander(work_dir, held, sink)
    try:
        for index, item in enumerate(inputs):
            if index > 0:
                sink.update(INPUT_BOUNDARY)
            if item.kind == "file":
                expander.file(item.value)
            else:
                expander.content(split_lines(_text_bytes(item.value)), "", item.kind)
        return ContentDigest(sink.hexdigest(), tuple(held.paths))
    except ContentError as exc:
        raise JobFailure("invalid_argument", CONTENT_HASH_ERROR, str(exc)) from None
    except RecursionError:
        raise JobFailure(
            "invalid_argument", CONTENT_HASH_ERROR, "includes are nested too deeply"
        ) from None
    finally:
        if owned:
            held.release()


def step_digest(
    plan: PsqlPlanInput, index: int, locks: ContentLocks | None = None
) -> ContentDigest:
    """Digest of step `index`'s single input (empty content for the no-input step)."""
    step = plan.steps[index]
    inputs = [step.input] if step.input is not None else []
    return compute_content_digest(inputs, plan.work_dir_text, locks)


def all_inputs_digest(plan: PsqlPlanInput, locks: ContentLocks | None = None) -> ContentDigest:
    """Digest over every input of the request (for the job signature)."""
    return compute_content_digest(plan.inputs, plan.work_dir_text, locks)


def step_task_hashes(
    plan: PsqlPlanInput, engine_version: str, locks: ContentLocks | None = None
) -> list[str]:
    """psql task hash of every step, in step order."""
    return [
        psql_task_hash(step_digest(plan, step.index, locks).hash, engine_version)
        for step in plan.steps
    ]


def signature_task_hash(
    plan: PsqlPlanInput, engine_version: str, locks: ContentLocks | None = None
) -> str:
    """The psql task hash over all inputs that `psql_job_signature` takes."""
    return psql_task_hash(all_inputs_digest(plan, locks).hash, engine_version)
