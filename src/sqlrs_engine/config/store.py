"""`ConfigStore`: the config overrides, their persistence, and what the engine reads from them.

Backs `GET/PATCH/DELETE /v1/config` (the methods return the values the HTTP layer puts in
its `{"path", "value"}` bodies and raise `ApiError` with the contract's codes and messages;
the Registry actor owns the store and forwards those calls) and gives the rest of the engine typed
accessors over the effective tree. Every change is validated and written to disk *before* it
becomes visible, so a failed write leaves both the file and the running engine unchanged.

Thread safety: HTTP worker threads may call it concurrently; one lock serializes all access,
readers get copies, and the effective tree is rebuilt only when the overrides change.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

from sqlrs_engine.config.atomic import ConfigLoadError, read_json_object, write_json_atomic
from sqlrs_engine.config.defaults import (
    CONTAINER_RUNTIMES,
    DEFAULT_EXPIRY_INTERVAL,
    DEFAULT_HTTP_THREADS,
    DEFAULT_JOB_MIN_AGE,
    DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_IDENTICAL,
    DEFAULT_MAX_TASK_LOG_LINES,
    LOG_LEVELS,
    MAX_HTTP_THREADS,
    MIN_HTTP_THREADS,
    SNAPSHOT_BACKENDS,
)
from sqlrs_engine.config.merge import effective_tree
from sqlrs_engine.config.paths import (
    ConfigPath,
    PathError,
    PathNotFound,
    delete_value,
    find_value,
    get_value,
    parse_path,
    set_value,
)
from sqlrs_engine.config.validate import (
    MAX_INT64,
    InvalidValue,
    check_json_value,
    is_integer,
    validate_change,
)
from sqlrs_engine.durations import DurationError, parse_duration
from sqlrs_engine.errors import internal_error, invalid_argument, not_found

__all__ = ["CONFIG_FILE_NAME", "ConfigLoadError", "ConfigStore"]

CONFIG_FILE_NAME = "config.json"

_INVALID_VALUE = "invalid config value"
_PATH_DETAILS = "config path is invalid"
_VALUE_DETAILS = "config value is invalid"


class ConfigStore:
    """The overrides stored in one `config.json` file, loaded when constructed.

    Construction raises `ConfigLoadError` if the file exists but is not a JSON object (or
    holds values that are not storable JSON); a missing file means no overrides.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.RLock()
        overrides = read_json_object(self._path)
        try:
            check_json_value(overrides)
        except InvalidValue as err:
            raise ConfigLoadError(
                f"config file {self._path} holds an unusable value: {err} "
                "(fix it or remove it to use the defaults)"
            ) from err
        self._overrides: dict[str, Any] = overrides
        self._effective: dict[str, Any] = effective_tree(overrides)

    @classmethod
    def in_root(cls, root: Path) -> ConfigStore:
        """The store of a state-store root: `<root>/config.json`."""
        return cls(Path(root) / CONFIG_FILE_NAME)

    @property
    def path(self) -> Path:
        """The overrides file."""
        return self._path

    # -- HTTP operations -------------------------------------------------------------

    def get(self, path: str | None = None, effective: bool = False) -> Any:
        """`GET /v1/config`: the value at `path`, or the whole tree when the path is blank.

        The HTTP layer wraps a path's value as `{"path", "value"}`. `effective` selects
        defaults merged with overrides instead of the overrides alone; without it, a known key
        that has no override still reads as its default. Raises 400 `invalid path` for bad
        syntax, 404 `path not found` for a path that is neither overridden nor known.
        """
        parsed: ConfigPath = ()
        if path is not None and path.strip():
            try:
                parsed = parse_path(path)
            except PathError as err:
                raise invalid_argument("invalid path", str(err)) from None
        with self._lock:
            tree = self._effective if effective else self._overrides
            try:
                value = get_value(tree, parsed)
            except PathNotFound:
                if not parsed:
                    raise not_found("path not found") from None
                # A known key without an override reads as its default (SPEC §0.1): what
                # the effective tree holds there can only have come from the defaults. The
                # whole object stays overrides-only.
                try:
                    value = get_value(self._effective, parsed)
                except PathNotFound:
                    raise not_found("path not found") from None
        return value

    def patch(self, path: str | None, value: Any) -> Any:
        """`PATCH /v1/config`: store `value` at `path` in the overrides; returns the value.

        `value` is as decoded by ujson (ints stay ints, `1.0`/`1e3` are floats, so integer
        settings can tell them apart). Raises 400 `path is required`, 400 `invalid config
        value` (details `config path is invalid: …` / `config value is invalid: …`), 500 when
        the file cannot be written (the overrides then stay as they were).
        """
        if path is not None and not isinstance(path, str):  # e.g. a number in the JSON body
            raise invalid_argument(_INVALID_VALUE, f"{_PATH_DETAILS}: path must be a string")
        if path is None or not path.strip():
            raise invalid_argument("path is required")
        try:
            parsed = parse_path(path)
        except PathError as err:
            raise invalid_argument(_INVALID_VALUE, f"{_PATH_DETAILS}: {err}") from None
        try:
            check_json_value(value)
        except InvalidValue as err:
            raise invalid_argument(_INVALID_VALUE, f"{_VALUE_DETAILS}: {err}") from None
        with self._lock:
            updated = set_value(self._overrides, parsed, value)
            try:
                check_json_value(updated)  # the path adds nesting too
                validate_change(updated, parsed)
            except InvalidValue as err:
                raise invalid_argument(_INVALID_VALUE, f"{_VALUE_DETAILS}: {err}") from None
            self._commit(updated)
            stored = get_value(updated, parsed)
        return stored

    def delete(self, path: str | None) -> Any:
        """`DELETE /v1/config`: remove `path` from the overrides (array items shift down).

        Returns the effective value there afterwards (the default, or None when nothing
        remains); the HTTP layer renders it as `{"path", "value"}`. Raises 400 `path is
        required` / `invalid path`, 404 `path not found` when the overrides do not hold it,
        500 on a failed write.
        """
        if path is None or not path.strip():
            raise invalid_argument("path is required")
        try:
            parsed = parse_path(path)
        except PathError as err:
            raise invalid_argument("invalid path", str(err)) from None
        with self._lock:
            try:
                updated = delete_value(self._overrides, parsed)
            except PathNotFound:
                raise not_found("path not found") from None
            self._commit(updated)
            return find_value(self._effective, parsed)

    def _commit(self, overrides: dict[str, Any]) -> None:
        """Persist, then publish; the lock is held so writes reach disk in order."""
        try:
            write_json_atomic(self._path, overrides)
        except OSError as err:
            raise internal_error(
                "cannot write config", f"{self._path}: {err.strerror or err}"
            ) from err
        except (TypeError, ValueError, OverflowError) as err:  # unencodable; validated away
            raise internal_error("cannot write config", str(err)) from err
        self._overrides = overrides
        self._effective = effective_tree(overrides)

    # -- whole trees -----------------------------------------------------------------

    def overrides(self) -> dict[str, Any]:
        """A copy of the stored overrides."""
        with self._lock:
            return copy.deepcopy(self._overrides)

    def effective(self) -> dict[str, Any]:
        """A copy of the effective tree (defaults deep-merged with overrides)."""
        with self._lock:
            return copy.deepcopy(self._effective)

    # -- typed accessors: a missing, null or unusable value means the built-in default ---

    def _lookup(self, *keys: str) -> Any:
        with self._lock:
            return find_value(self._effective, keys)

    def container_runtime(self) -> str:
        """`container.runtime`: one of auto, docker, podman, host (default auto)."""
        value = self._lookup("container", "runtime")
        return value if value in CONTAINER_RUNTIMES else "auto"

    def snapshot_backend(self) -> str:
        """`snapshot.backend`: one of auto, overlay, btrfs, copy (default auto)."""
        value = self._lookup("snapshot", "backend")
        return value if value in SNAPSHOT_BACKENDS else "auto"

    def max_identical(self) -> int:
        """`orchestrator.jobs.maxIdentical`: finished jobs kept per signature; 0 = no trim."""
        value = self._lookup("orchestrator", "jobs", "maxIdentical")
        if is_integer(value) and 0 <= value <= MAX_INT64:
            return int(value)
        return DEFAULT_MAX_IDENTICAL

    def job_min_age(self) -> float:
        """`orchestrator.jobs.minAge` in seconds: finished jobs younger than this are kept."""
        value = self._lookup("orchestrator", "jobs", "minAge")
        if isinstance(value, str):
            try:
                return max(0.0, parse_duration(value))
            except DurationError:
                pass
        return parse_duration(DEFAULT_JOB_MIN_AGE)

    def max_task_log_lines(self) -> int:
        """`orchestrator.jobs.maxTaskLogLines`: log lines a task stores as events."""
        value = self._lookup("orchestrator", "jobs", "maxTaskLogLines")
        if is_integer(value) and 0 <= value <= MAX_INT64:
            return int(value)
        return DEFAULT_MAX_TASK_LOG_LINES

    def expiry_interval(self) -> float:
        """`instances.expiryInterval` in seconds; 0 (or negative) = expired instances stay."""
        value = self._lookup("instances", "expiryInterval")
        if isinstance(value, str):
            try:
                return max(0.0, parse_duration(value))
            except DurationError:
                pass
        return parse_duration(DEFAULT_EXPIRY_INTERVAL)

    def host_user(self) -> str | None:
        """`runtime.host.user`; None = the runtime's default (`postgres` when root)."""
        value = self._lookup("runtime", "host", "user")
        return value if isinstance(value, str) and value.strip() else None

    def host_bin_dirs(self) -> list[str]:
        """`runtime.host.binDirs`: extra absolute binary dirs, `[]` when unset."""
        value = self._lookup("runtime", "host", "binDirs")
        if not isinstance(value, list):
            return []
        return [item for item in value if isinstance(item, str) and item.startswith("/")]

    def http_threads(self) -> int:
        """`http.threads`: the HTTP server's thread pool size (read once at startup)."""
        value = self._lookup("http", "threads")
        if is_integer(value) and MIN_HTTP_THREADS <= value <= MAX_HTTP_THREADS:
            return int(value)
        return DEFAULT_HTTP_THREADS

    def pin_threads(self) -> bool:
        """`engine.pinThreads`: the engine's threads on one CPU (read once at startup)."""
        return self._lookup("engine", "pinThreads") is not False

    def log_level(self) -> str:
        """`log.level`, lower-cased: debug, info, warn or error (default debug)."""
        value = self._lookup("log", "level")
        if isinstance(value, str) and value.lower() in LOG_LEVELS:
            return value.lower()
        return DEFAULT_LOG_LEVEL
