"""Engine logging (SPEC §1.3): one append-only file with UTC stamps, level from config."""

from __future__ import annotations

import logging
import os
import re
import select
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlrs_engine.logsetup import apply_log_level, configure_logging


@pytest.fixture(autouse=True)
def root_logger() -> Iterator[logging.Logger]:
    """Both functions change the process-wide root logger: close the handlers
    `configure_logging` added and restore the level (pytest re-adds its own per phase)."""
    root = logging.getLogger()
    level = root.level
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            if type(handler.formatter).__name__ == "_UtcFormatter":
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


@pytest.mark.parametrize(
    ("configured", "level"),
    [
        ("debug", logging.DEBUG),
        ("info", logging.INFO),
        ("warn", logging.WARNING),
        ("error", logging.ERROR),
        ("WARN", logging.WARNING),
        ("Info", logging.INFO),
        ("verbose", logging.DEBUG),  # unknown words (rejected by config validation) log all
    ],
)
def test_apply_log_level(root_logger: logging.Logger, configured: str, level: int) -> None:
    apply_log_level(configured)
    assert root_logger.level == level


def test_log_file_and_dir_are_private_and_the_file_is_appended(
    tmp_path: Path, root_logger: logging.Logger
) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir(mode=0o755)
    (log_dir / "engine.log").write_text("previous run\n")
    (log_dir / "engine.log").chmod(0o644)
    path = configure_logging(tmp_path / "fresh" / "logs")
    assert path == tmp_path / "fresh" / "logs" / "engine.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = configure_logging(log_dir)
    assert stat.S_IMODE(again.stat().st_mode) == 0o600, "an existing file is made private"
    logging.getLogger("sqlrs_engine.test").info("second run")
    for handler in root_logger.handlers:
        handler.flush()
    lines = again.read_text().splitlines()
    assert lines[0] == "previous run"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO sqlrs_engine\.test: second run", lines[1]
    ), lines[1]


def test_previous_handlers_are_replaced_and_the_level_applied(
    tmp_path: Path, root_logger: logging.Logger
) -> None:
    """A second configuration (tests, a re-exec) must not log every line twice."""
    configure_logging(tmp_path / "one", "info")
    path = configure_logging(tmp_path / "two", "warning")
    assert root_logger.level == logging.WARNING
    assert [type(h) for h in root_logger.handlers] == [logging.FileHandler]
    logging.getLogger("x").warning("only in two")
    root_logger.handlers[0].flush()
    assert "only in two" in path.read_text()
    assert "only in two" not in (tmp_path / "one" / "engine.log").read_text()


def test_stderr_gets_the_lines_too_when_it_is_a_terminal(
    tmp_path: Path, root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as tty, os.fdopen(primary, "rb", buffering=0) as reader:
        monkeypatch.setattr(sys, "stderr", tty)
        configure_logging(tmp_path / "logs")
        kinds = sorted(type(h).__name__ for h in root_logger.handlers)
        assert kinds == ["FileHandler", "StreamHandler"]
        logging.getLogger("x").error("seen on the terminal")
        tty.flush()
        assert select.select([reader], [], [], 10)[0], "nothing reached the terminal"
        assert b"ERROR x: seen on the terminal" in reader.read(4096)


@pytest.fixture
def local_zone_not_utc() -> Iterator[None]:
    """A local zone with a half-hour offset, so a local-time stamp could not pass."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "IST-5:30"
    time.tzset()
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()


@pytest.mark.usefixtures("local_zone_not_utc")
@pytest.mark.parametrize(
    ("created", "msecs", "stamp"),
    [
        (0.0, 0.0, "1970-01-01T00:00:00.000Z"),
        (1767323045.25, 250.0, "2026-01-02T03:04:05.250Z"),
        (1767323045.9999, 999.0, "2026-01-02T03:04:05.999Z"),
        (951782400.007, 7.0, "2000-02-29T00:00:00.007Z"),
    ],
)
def test_timestamps_are_utc_with_milliseconds(
    tmp_path: Path,
    root_logger: logging.Logger,
    created: float,
    msecs: float,
    stamp: str,
) -> None:
    assert time.localtime(0).tm_min == 30, "the local zone really is not UTC here"
    configure_logging(tmp_path / "logs")
    record = logging.makeLogRecord(
        {"created": created, "msecs": msecs, "levelname": "INFO", "name": "n", "msg": "m"}
    )
    assert root_logger.handlers[0].format(record) == f"{stamp} INFO n: m"
