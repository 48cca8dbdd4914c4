"""engine.json, the discovery file the CLI reads to find and trust a running engine (§1.4)."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import ujson

from sqlrs_engine.snapshot.perms import make_dirs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineInfo:
    endpoint: str
    pid: int
    started_at: str
    auth_token: str
    version: str
    instance_id: str

    def to_json(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "pid": self.pid,
            "startedAt": self.started_at,
            "authToken": self.auth_token,
            "version": self.version,
            "instanceId": self.instance_id,
        }


def make_private_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents, each with mode 0700 (umask aside)."""
    make_dirs(directory, 0o700)


def write_engine_json(path: Path, info: EngineInfo) -> None:
    """Write atomically (tmp, remove old, rename), pretty with 2 spaces, mode 0600.

    Missing directories on the way are created 0700 (each of them, not only the last). An
    existing directory is not changed — it may be shared (`/tmp`) or the user's home — but one
    that others can list is named in a warning: the file itself stays 0600 either way.
    """
    make_private_dirs(path.parent)
    mode = stat.S_IMODE(path.parent.stat().st_mode)
    if mode & 0o066:  # others may list or change it (search alone reveals nothing)
        log.warning(
            "the directory of engine.json, %s, has mode %04o: other users can list or change "
            "its entries; consider chmod 0700",
            path.parent,
            mode,
        )
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(ujson.dumps(info.to_json(), indent=2, escape_forward_slashes=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o600)
    path.unlink(missing_ok=True)
    os.replace(tmp, path)


def remove_engine_json(path: Path, instance_id: str) -> None:
    """Remove engine.json if it still describes this engine (another may have replaced it)."""
    try:
        current = ujson.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(current, dict) and current.get("instanceId") == instance_id:
        path.unlink(missing_ok=True)
