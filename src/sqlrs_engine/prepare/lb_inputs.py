"""What Liquibase would read for an lb prepare, as one fingerprint (the plan-cache key).

Planning an lb prepare means starting a server and a JVM for `updateSQL` (seconds). Its
result — the pending changesets and their checksums — depends only on the input state, the
arguments, the environment Liquibase sees, and the content of every file it reads: the
changelog, everything it includes (`include`, `includeAll` directories, `sqlFile`,
`loadData`, ... — any `file`/`path` reference), the defaults file and the search paths. When
all of that is unchanged, the stored plan is still the plan.

The fingerprint is conservative: a reference is looked up in every place Liquibase could
find it (relative to the changelog, or under each search root) and the absence of a file
counts as much as its content, so a file appearing on the search path changes it too.
Anything the reader cannot follow (property substitution `${...}` in a reference, a remote or
classpath resource, a formatted-SQL `--include`, an unknown changelog format, a malformed
changelog) makes the request uncacheable: then Liquibase plans every time, as the reference
engine does.

The same walk gives Liquibase its inputs (SPEC §0.9): with an `InputSink`, every file read is
handed over with the very bytes that were hashed, and jobs/kinds/lb_stage.py writes them into
a private staging copy that Liquibase runs from. The walk then goes on past what it cannot
follow (each such reference is reported in `LbInputs.unfollowed`), so the copy holds everything
the engine can name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlrs_engine.prepare.lb_args import LbArgs, is_remote

CHANGELOG_SUFFIXES = (".xml", ".yaml", ".yml", ".json", ".sql")
_SQL_INCLUDE = re.compile(r"^\s*--\s*include", re.I)
MAX_FILES = 10_000


class Uncacheable(Exception):
    """Why the inputs cannot be fingerprinted (planning then runs Liquibase)."""


class InputSink(Protocol):
    """Receives what the walk reads, as it reads it (the staging copy)."""

    def file(self, path: str, data: bytes) -> None:
        """A regular file and its content, exactly as hashed."""
        ...

    def directory(self, path: str) -> None:
        """A directory that was walked (`includeAll`), so it exists even when empty."""
        ...


@dataclass
class _Reader:
    roots: list[str]
    sink: Any = field(default_factory=hashlib.sha256)
    stage: InputSink | None = None
    seen: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    unfollowed: list[str] = field(default_factory=list)
    files: int = 0

    def record(self, label: str, data: bytes) -> None:
        self.sink.update(f"{label}={len(data)}:".encode("utf-8", "surrogateescape") + data + b"\n")

    def skip(self, reason: str) -> None:
        """Something Liquibase may read that the walk cannot follow: no fingerprint."""
        self.unfollowed.append(reason)

    def file(self, path: str) -> bytes | None:
        """Record a file's content (or its absence); returns the content."""
        self.files += 1
        if self.files > MAX_FILES:
            raise Uncacheable(f"more than {MAX_FILES} files to read")
        try:
            info = os.stat(path)
        except OSError:
            self.record(f"absent {path}", b"")
            return None
        if stat.S_ISDIR(info.st_mode):
            self.directory(path)
            return None
        if not stat.S_ISREG(info.st_mode):
            self.skip(f"{path} is not a regular file")
            return None
        with open(path, "rb") as handle:
            data = handle.read()
        self.record(f"file {path}", data)
        if self.stage is not None and path not in self.read:
            self.stage.file(path, data)
        self.read.add(path)
        return data

    def directory(self, path: str) -> None:
        if self.stage is not None:
            self.stage.directory(path)
        for current, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                child = os.path.join(current, name)
                data = self.file(child)
                if data is not None and child.lower().endswith(CHANGELOG_SUFFIXES):
                    self.changelog(child, data)

    def changelog(self, path: str, data: bytes) -> None:
        if path in self.seen:
            return
        self.seen.add(path)
        try:
            found = references(path, data)
        except Uncacheable as error:
            self.skip(str(error))
            return
        for reference, relative in found:
            self.reference(reference, relative, path)

    def reference(self, reference: str, relative: bool, changelog: str) -> None:
        if "${" in reference:
            self.skip(f"{changelog}: property substitution in {reference!r}")
            return
        if is_remote(reference):
            self.skip(f"{changelog}: remote or classpath resource {reference!r}")
            return
        if relative:
            candidates = [os.path.join(os.path.dirname(changelog), reference)]
        else:
            # Liquibase 4 looks up every non-relative path, absolute ones too, under each
            # search root (`/a/b.sql` is `<root>/a/b.sql`).
            candidates = [os.path.join(root, reference.lstrip("/")) for root in self.roots]
        for candidate in candidates:
            candidate = os.path.normpath(candidate)
            data = self.file(candidate)
            if data is not None and candidate.lower().endswith(CHANGELOG_SUFFIXES):
                self.changelog(candidate, data)


def _truthy(value: object) -> bool:
    return str(value).strip().lower() == "true"


def _walk_mapping(node: object) -> Iterator[tuple[str, bool]]:
    if isinstance(node, Mapping):
        relative = _truthy(node.get("relativeToChangelogFile", False))
        for key, value in node.items():
            if key in ("file", "path") and isinstance(value, str):
                yield value, relative
            else:
                yield from _walk_mapping(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_mapping(item)


def references(path: str, data: bytes) -> list[tuple[str, bool]]:
    """`(reference, relative to the changelog)` pairs of a changelog's file references."""
    # Imported here, not at start-up: only Liquibase prepares read changelogs, and the two
    # parsers are 1.4 MiB of every idle engine's memory.
    import xml.etree.ElementTree as ElementTree

    import yaml

    lower = path.lower()
    try:
        if lower.endswith(".xml"):
            root = ElementTree.fromstring(data)
            found = []
            for element in root.iter():
                relative = _truthy(element.get("relativeToChangelogFile", "false"))
                for key in ("file", "path"):
                    value = element.get(key)
                    if value is not None:
                        found.append((value, relative))
            return found
        if lower.endswith((".yaml", ".yml")):
            return list(_walk_mapping(yaml.safe_load(data)))
        if lower.endswith(".json"):
            return list(_walk_mapping(json.loads(data)))
        if lower.endswith(".sql"):
            text = data.decode("utf-8", "replace")
            if any(_SQL_INCLUDE.match(line) for line in text.splitlines()):
                raise Uncacheable(f"{path}: formatted SQL include")
            return []
    except (ElementTree.ParseError, yaml.YAMLError, ValueError) as error:
        raise Uncacheable(f"{path}: {error}") from None
    raise Uncacheable(f"{path}: unknown changelog format")


def search_roots(lb: LbArgs, cwd: str) -> list[str]:
    """Where Liquibase looks for non-relative references: the search path, else its cwd."""
    return list(lb.search_paths) if lb.search_paths else [cwd]


@dataclass(frozen=True)
class LbInputs:
    """What the walk found: the plan-cache key, or why there is none."""

    fingerprint: str | None
    """None when something Liquibase may read could not be followed (`unfollowed`)."""
    unfollowed: list[str]


def read_inputs(
    lb: LbArgs,
    *,
    liquibase_cwd: str,
    environment: Sequence[tuple[str, str]],
    identity: Sequence[tuple[str, str]],
    stage: InputSink | None = None,
) -> LbInputs:
    """Read everything an lb plan depends on, handing each file to `stage` as it is hashed.

    `identity` names what is not a file (input state, engine version, executable); the
    `environment` is what Liquibase sees of LIQUIBASE_* / JAVA_* variables. Raises OSError
    when a file exists but cannot be read, `Uncacheable` beyond `MAX_FILES` files.
    """
    roots = search_roots(lb, liquibase_cwd)
    reader = _Reader([root for root in roots if not is_remote(root)], stage=stage)
    if any(is_remote(root) for root in roots):
        reader.skip("a remote or classpath search path")
    for key, value in identity:
        reader.record(f"identity {key}", value.encode("utf-8", "surrogateescape"))
    reader.record("args", "\0".join(lb.normalized_args).encode("utf-8", "surrogateescape"))
    reader.record("cwd", liquibase_cwd.encode("utf-8", "surrogateescape"))
    for key, value in sorted(environment):
        reader.record(f"env {key}", value.encode("utf-8", "surrogateescape"))
    defaults = lb.defaults_file or os.path.join(liquibase_cwd, "liquibase.properties")
    if is_remote(defaults):
        reader.skip("a remote defaults file")
    else:
        reader.file(defaults)
    for root in roots:
        reader.record("root", root.encode("utf-8", "surrogateescape"))
    if lb.changelog is None:
        reader.skip("no --changelog-file (the changelog comes from elsewhere)")
    elif is_remote(lb.changelog):
        reader.skip("a remote or classpath changelog")
    else:
        data = reader.file(lb.changelog)
        if data is None:
            reader.skip(f"{lb.changelog} is not a file")
        else:
            reader.changelog(lb.changelog, data)
    fingerprint = None if reader.unfollowed else str(reader.sink.hexdigest())
    return LbInputs(fingerprint, reader.unfollowed)


def inputs_fingerprint(
    lb: LbArgs,
    *,
    liquibase_cwd: str,
    environment: Sequence[tuple[str, str]],
    identity: Sequence[tuple[str, str]],
) -> str:
    """The fingerprint of everything an lb plan depends on; raises `Uncacheable` (the first
    reason) when there is none."""
    found = read_inputs(lb, liquibase_cwd=liquibase_cwd, environment=environment, identity=identity)
    if found.fingerprint is None:
        raise Uncacheable(found.unfollowed[0])
    return found.fingerprint


def lockable_files(paths: Sequence[str | None]) -> list[str]:
    """The existing regular files among `paths` (only those are locked, §3.2)."""
    out = []
    for path in paths:
        if path and not is_remote(path) and Path(path).is_file():
            out.append(path)
    return out
