"""Engine logging: one append-only file under `<dirname(engine.json)>/logs/`, UTC stamps."""

from __future__ import annotations

import logging
import os
import stat
import sys
import time
from pathlib import Path

from sqlrs_engine.discovery import make_private_dirs
from sqlrs_engine.errors import ApiError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def apply_log_level(level: str) -> None:
    """Config `log.level` (read at start-up): debug, info, warn or error."""
    logging.getLogger().setLevel(_LEVELS.get(level.lower(), logging.DEBUG))


class _AnswersAreNotFailures(logging.Filter):
    """Drop Pykka's traceback for an `ApiError` an actor returned to its caller.

    Pykka logs every exception returned through a future, with its traceback; an ApiError
    is an answer (a 404 for a missing config path, a 400 for a bad value), not a failure,
    and its traceback in the log would look like one.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, ApiError)


def configure_logging(log_dir: Path, level: str = "INFO") -> Path:
    """Log to `log_dir/engine.log` (0600, dir 0700) and to stderr when it is a terminal."""
    make_private_dirs(log_dir)
    if stat.S_IMODE(log_dir.stat().st_mode) != 0o700:
        os.chmod(log_dir, 0o700)  # our own directory: an older engine made it 0755
    path = log_dir / "engine.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    formatter = _UtcFormatter(LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.FileHandler(path, encoding="utf-8")]
    if sys.stderr.isatty():
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    pykka_log = logging.getLogger("pykka")
    if not any(isinstance(f, _AnswersAreNotFailures) for f in pykka_log.filters):
        pykka_log.addFilter(_AnswersAreNotFailures())
    return path
