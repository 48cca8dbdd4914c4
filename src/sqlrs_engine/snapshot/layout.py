"""Where everything lives under the state-store root (SPEC §9.1) — pure path arithmetic.

```
<root>/state.db, config.json, .evict.lock
<root>/engines/<engine>/<version>/base/              (.init.ok, .init.lock, pgdata/…)
<root>/engines/<engine>/<version>/states/<state_id>/ (.build.ok, .build.lock, pgdata/…)
<root>/engines/<engine>/<version>/states/.build/<state_id>.ok|.lock   (btrfs only)
<root>/jobs/<job_id>/runtime/                        (per-job writable clone)
```

Nothing here touches the disk, so every path rule is testable as a table and every module
that needs a path asks this one instead of joining strings itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

INIT_MARKER = ".init.ok"
INIT_LOCK = ".init.lock"
BASE_STAGING = ".init-staging"
"""`base/.init-staging/`: where initdb builds a base before it is renamed into place."""
BUILD_MARKER = ".build.ok"
BUILD_LOCK = ".build.lock"
SEPARATE_BUILD_DIR = ".build"
"""`states/.build/`: where backends whose state dirs are immutable keep markers and locks."""

STORE_METADATA_NAMES = frozenset({INIT_MARKER, INIT_LOCK, BUILD_MARKER, BUILD_LOCK})
"""Top-level names in base/state dirs that belong to the store, not to the database.

Clones and snapshots never copy them: a clone of a built state must not carry that state's
`.build.ok` into the next state (it would look complete before it is built).
"""

STALE_INFIX = ".stale-"
"""A path that could not be removed is renamed to `<name>.stale-<ns>` (SPEC §6, §2.10)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _sanitize(part: str) -> str:
    # Per code point, so one non-ASCII character becomes one `_` (like the reference's runes).
    return _UNSAFE.sub("_", part)


def _engine_version(image_id: str) -> tuple[str, str]:
    """`(engine, version)` directory names for an image id (SPEC §9.1).

    `@digest` is split off first (the digest is the version); without a digest the tag is the
    text after the last `:` that follows the last `/`. A tag written before a digest
    (`postgres:15@sha256:…`) is dropped from the engine name as well.
    """
    image = image_id.strip()
    if not image:
        return "unknown", "latest"
    name, version = image, ""
    at = name.rfind("@")
    if at >= 0:
        name, version = name[:at], name[at + 1 :]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        if at < 0:
            version = name[colon + 1 :]
        name = name[:colon]
    engine = _sanitize(name[slash + 1 :])
    version = _sanitize(version)
    if engine in ("", ".", ".."):
        engine = "unknown"
    if version == "":
        version = "latest"
    elif version in (".", ".."):
        version = "unknown"
    return engine, version


def _component(value: str, what: str) -> str:
    """Refuse ids that would escape their directory or collide with store metadata."""
    if (
        not value
        or value.startswith(".")
        or "/" in value
        or "\0" in value
        or value != value.strip()
    ):
        raise ValueError(f"invalid {what} {value!r}: not usable as a directory name")
    return value


def state_build_marker(state_dir: Path, *, separate: bool = False) -> Path:
    """The `.build.ok` marker of a state dir (`states/.build/<id>.ok` when `separate`)."""
    if separate:
        return state_dir.parent / SEPARATE_BUILD_DIR / f"{state_dir.name}.ok"
    return state_dir / BUILD_MARKER


def state_build_lock(state_dir: Path, *, separate: bool = False) -> Path:
    """The `.build.lock` of a state dir (`states/.build/<id>.lock` when `separate`)."""
    if separate:
        return state_dir.parent / SEPARATE_BUILD_DIR / f"{state_dir.name}.lock"
    return state_dir / BUILD_LOCK


def stale_name(path: Path, ns: int) -> Path:
    """The sibling a path is renamed to when it cannot be removed in place."""
    return path.with_name(f"{path.name}{STALE_INFIX}{ns}")


def is_stale_name(name: str) -> bool:
    """True for `<anything>.stale-<digits>`."""
    head, sep, tail = name.rpartition(STALE_INFIX)
    return bool(sep) and bool(head) and tail.isdigit()


@dataclass(frozen=True)
class StoreLayout:
    """Paths of one state-store root.

    `separate=True` on the build lock/marker methods selects the btrfs placement
    (`states/.build/`), used by backends whose state dirs cannot hold files of their own.
    """

    root: Path

    # -- root files ------------------------------------------------------------------------

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def evict_lock(self) -> Path:
        return self.root / ".evict.lock"

    @property
    def engines_dir(self) -> Path:
        return self.root / "engines"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    # -- engines -----------------------------------------------------------------------------

    def engine_dir(self, image_id: str) -> Path:
        """`engines/<engine>/<version>` for a (resolved) image id."""
        engine, version = _engine_version(image_id)
        return self.engines_dir / engine / version

    def base_dir(self, image_id: str) -> Path:
        return self.engine_dir(image_id) / "base"

    def init_lock(self, image_id: str) -> Path:
        return self.base_dir(image_id) / INIT_LOCK

    def init_marker(self, image_id: str) -> Path:
        return self.base_dir(image_id) / INIT_MARKER

    def states_dir(self, image_id: str) -> Path:
        return self.engine_dir(image_id) / "states"

    def state_dir(self, image_id: str, state_id: str) -> Path:
        return self.states_dir(image_id) / _component(state_id, "state id")

    def build_lock(self, image_id: str, state_id: str, *, separate: bool = False) -> Path:
        return state_build_lock(self.state_dir(image_id, state_id), separate=separate)

    def build_marker(self, image_id: str, state_id: str, *, separate: bool = False) -> Path:
        return state_build_marker(self.state_dir(image_id, state_id), separate=separate)

    # -- jobs ---------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / _component(job_id, "job id")

    def job_runtime_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "runtime"


__all__ = [
    "BASE_STAGING",
    "BUILD_LOCK",
    "BUILD_MARKER",
    "INIT_LOCK",
    "INIT_MARKER",
    "SEPARATE_BUILD_DIR",
    "STALE_INFIX",
    "STORE_METADATA_NAMES",
    "StoreLayout",
    "is_stale_name",
    "stale_name",
    "state_build_lock",
    "state_build_marker",
]
