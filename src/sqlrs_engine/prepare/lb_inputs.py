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
from typing import Any

from sqlrs_engine.prepare.lb_args import LbArgs, is_remote

CHANGELOG_SUFFIXES = (".xml", ".yaml", ".yml", ".json", ".sql")
_SQL_INCLUDE = re.compile(r"^\s*--\s*include", re.I)
MAX_FILES = 10_000


class Uncacheable(Exception):
    """Why the inputs cannot be fingerprinted (planning then runs Liquibase)."""


@dataclass
class _Reader:
    roots: list[str]
    sink: Any = field(default_factory=hashlib.sha256)
    seen: set[str] = field(default_factory=set)
    files: int = 0

    def record(self, label: str, data: bytes) -> None:
        self.sink.update(f"{label}={len(data)}:".encode("utf-8", "surrogateescape") + data + b"\n")

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
            raise Uncacheable(f"{path} is not a regular file")
        with open(path, "rb") as handle:
            data = handle.read()
        self.record(f"file {path}", data)
        return data

    def directory(self, path: str) -> None:
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
        for reference, relative in references(path, data):
            self.reference(reference, relative, path)

    def reference(self, reference: str, relative: bool, changelog: str) -> None:
        if "${" in reference:
            raise Uncacheable(f"{changelog}: property substitution in {reference!r}")
        if is_remote(reference):
            raise Uncacheable(f"{changelog}: remote or classpath resource {reference!r}")
        if os.path.isabs(reference):
            candidates = [reference]
        elif relative:
            candidates = [os.path.join(os.path.dirname(changelog), reference)]
        else:
            candidates = [os.path.join(root, reference) for root in self.roots]
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


def inputs_fingerprint(
    lb: LbArgs,
    *,
    liquibase_cwd: str,
    environment: Sequence[tuple[str, str]],
    identity: Sequence[tuple[str, str]],
) -> str:
    """The fingerprint of everything an lb plan depends on; raises `Uncacheable`.

    `identity` names what is not a file (input state, engine version, executable); the
    `environment` is what Liquibase sees of LIQUIBASE_* / JAVA_* variables.
    """
    if lb.changelog is None:
        raise Uncacheable("no --changelog-file (the changelog comes from elsewhere)")
    roots = search_roots(lb, liquibase_cwd)
    if any(is_remote(root) for root in roots):
        raise Uncacheable("a remote or classpath search path")
    reader = _Reader(roots)
    for key, value in identity:
        reader.record(f"identity {key}", value.encode("utf-8", "surrogateescape"))
    reader.record("args", "\0".join(lb.normalized_args).encode("utf-8", "surrogateescape"))
    reader.record("cwd", liquibase_cwd.encode("utf-8", "surrogateescape"))
    for key, value in sorted(environment):
        reader.record(f"env {key}", value.encode("utf-8", "surrogateescape"))
    defaults = lb.defaults_file or os.path.join(liquibase_cwd, "liquibase.properties")
    if is_remote(defaults):
        raise Uncacheable("a remote defaults file")
    reader.file(defaults)
    for root in roots:
        reader.record("root", root.encode("utf-8", "surrogateescape"))
    if is_remote(lb.changelog):
        raise Uncacheable("a remote or classpath changelog")
    data = reader.file(lb.changelog)
    if data is None:
        raise Uncacheable(f"{lb.changelog} is not a file")
    reader.changelog(lb.changelog, data)
    return str(reader.sink.hexdigest())


def lockable_files(paths: Sequence[str | None]) -> list[str]:
    """The existing regular files among `paths` (only those are locked, §3.2)."""
    out = []
    for path in paths:
        if path and not is_remote(path) and Path(path).is_file():
            out.append(path)
    return out
