"""Reading and atomically replacing the `config.json` overrides file.

A crash or a full disk in the middle of a write must never leave a truncated `config.json`
(the engine refuses to start on one): the new content is written to a temporary file in the
same directory, flushed to disk, renamed over the old file, and the directory entry is
flushed too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import ujson

__all__ = ["ConfigLoadError", "dump_pretty", "read_json_object", "write_json_atomic"]


class ConfigLoadError(Exception):
    """`config.json` cannot be used; startup must fail with this message."""


def dump_pretty(data: Any) -> str:
    """2-space indented JSON with sorted keys (as Go writes maps) and a final newline."""
    text = ujson.dumps(
        data, indent=2, sort_keys=True, ensure_ascii=False, escape_forward_slashes=False
    )
    return text + "\n"


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object stored at `path`; `{}` when the file does not exist.

    Raises `ConfigLoadError` (naming the file and what to do) when it cannot be read, is not
    valid JSON, or holds something other than an object.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ConfigLoadError(f"cannot read config file {path}: {err.strerror or err}") from err
    fix = "fix it or remove it to use the defaults"
    if not raw.strip():
        raise ConfigLoadError(f"config file {path} is empty; it must hold a JSON object ({fix})")
    try:
        data = ujson.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigLoadError(f"config file {path} is not valid JSON: {err} ({fix})") from err
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(data), "a number"
        )
        raise ConfigLoadError(f"config file {path} must hold a JSON object, not {kind} ({fix})")
    return data


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as err:
        # Some filesystems cannot fsync a directory; the rename itself already happened.
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` with `dump_pretty(data)` atomically (mode 0600); raise `OSError` on failure.

    On failure the old file is untouched and no temporary file is left behind.
    """
    text = dump_pretty(data)  # encode first: an encoding error must not touch the disk
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)
