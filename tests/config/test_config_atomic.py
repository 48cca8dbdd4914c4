"""`config.json` persistence on its own (config/atomic.py).

The guarantee under test: a write either replaces the file completely (mode 0600) or leaves
the old one byte for byte, and never leaves a temporary file behind. Faults are real where
the machine allows it: a full tmpfs, an immutable directory (`chattr +i` on ext4), a
directory where the file should be, and data that cannot be encoded. Reading error messages
are covered through ConfigStore in test_config_store.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine.config.atomic import dump_pretty, read_json_object, write_json_atomic
from tests.support.faults import chattr, fill, tmpfs

NAME = "config.json"
OLD = b'{\n  "log": {\n    "level": "info"\n  }\n}\n'


def temp_files(directory: Path) -> list[str]:
    """What `write_json_atomic` could leave behind: `.config.json.<random>.tmp`."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{NAME}."))


# -- dump_pretty -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({}, "{}\n"),
        ([], "[]\n"),
        ({"b": 1, "a": 2}, '{\n  "a": 2,\n  "b": 1\n}\n'),
        (
            {"a": {"y": [1, 2], "x": None}},
            '{\n  "a": {\n    "x": null,\n    "y": [\n      1,\n      2\n    ]\n  }\n}\n',
        ),
        ({"path": "/opt/pg/bin"}, '{\n  "path": "/opt/pg/bin"\n}\n'),
        ({"user": "é ü 日本"}, '{\n  "user": "é ü 日本"\n}\n'),
        ({"q": 'say "hi"\n'}, '{\n  "q": "say \\"hi\\"\\n"\n}\n'),
        (
            {"ratio": 0.95, "max": 9223372036854775807, "on": True},
            '{\n  "max": 9223372036854775807,\n  "on": true,\n  "ratio": 0.95\n}\n',
        ),
    ],
    ids=["empty", "empty-list", "sorted", "nested", "slashes", "unicode", "escapes", "scalars"],
)
def test_dump_pretty(data: Any, text: str) -> None:
    """Two-space indent, sorted keys, slashes and non-ASCII kept, one final newline."""
    assert dump_pretty(data) == text


# -- successful writes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"log": {"level": "warn"}},
        {"runtime": {"host": {"binDirs": ["/opt/pg/bin"], "user": "pgrunner"}}},
        {"a": [1, 2.5, None, True, "é"], "b": {"c": {"d": {}}}},
    ],
)
def test_write_then_read_round_trips(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / NAME
    write_json_atomic(path, data)
    assert path.read_text(encoding="utf-8") == dump_pretty(data)
    assert read_json_object(path) == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == [NAME]


def test_missing_file_reads_as_no_overrides(tmp_path: Path) -> None:
    assert read_json_object(tmp_path / NAME) == {}
    assert os.listdir(tmp_path) == [], "reading creates nothing"


def test_replace_puts_a_new_file_in_place(tmp_path: Path) -> None:
    """Rename over the old file, never a rewrite in place: a reader that has the old file
    open and a hard link to it both keep the complete old content."""
    path = tmp_path / NAME
    path.write_bytes(OLD)
    path.chmod(0o644)
    old_link = tmp_path / "old-link"
    os.link(path, old_link)
    with path.open("rb") as reader:
        write_json_atomic(path, {"log": {"level": "error"}})
        assert reader.read() == OLD
    assert old_link.read_bytes() == OLD
    assert read_json_object(path) == {"log": {"level": "error"}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "the old, wider mode is not kept"
    assert temp_files(tmp_path) == []


def test_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        write_json_atomic(tmp_path / NAME, {"x": 1})
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / NAME).stat().st_mode) == 0o600


def test_missing_directory_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "store" / NAME
    write_json_atomic(path, {"x": 1})
    assert read_json_object(path) == {"x": 1}
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


# -- failed writes -------------------------------------------------------------------------------

Failure = Callable[[Path], contextlib.AbstractContextManager[Path]]
"""Given tmp_path: a context in which writing `<dir>/config.json` fails; yields `<dir>`."""


@contextlib.contextmanager
def plain_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


@contextlib.contextmanager
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    """No new entries (the temp file) in the directory, even for root."""
    (tmp_path / NAME).write_bytes(OLD)
    chattr("+i", tmp_path)
    try:
        yield tmp_path
    finally:
        chattr("-i", tmp_path)


@contextlib.contextmanager
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs") as fs:
        (fs / NAME).write_bytes(OLD)
        fill(fs, leave=0)
        yield fs


@contextlib.contextmanager
def almost_full_disk(tmp_path: Path) -> Iterator[Path]:
    """One free page: room for part of the new content (a short write), not all of it."""
    with tmpfs(tmp_path / "fs") as fs:
        (fs / NAME).write_bytes(OLD)
        fill(fs, leave=4096)
        yield fs


BIG = {"custom": {f"key{i:04d}": "v" * 40 for i in range(300)}}
"""About 17 KB pretty-printed: more than one free page."""


@pytest.mark.parametrize(
    ("where", "data", "error"),
    [
        (plain_dir, {"bad": {1, 2}}, TypeError),
        (plain_dir, {"bad": object()}, TypeError),
        (immutable_dir, {"x": 1}, PermissionError),
        (full_disk, BIG, OSError),
        (almost_full_disk, BIG, OSError),
    ],
    ids=["set", "object", "immutable-dir", "full-disk", "almost-full-disk"],
)
def test_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, where: Failure, data: dict[str, Any], error: type[Exception]
) -> None:
    if where is plain_dir:
        (tmp_path / NAME).write_bytes(OLD)
    with where(tmp_path) as directory:
        path = directory / NAME
        with pytest.raises(error) as raised:
            write_json_atomic(path, data)
        if where in (full_disk, almost_full_disk):
            assert isinstance(raised.value, OSError) and raised.value.errno == errno.ENOSPC
        assert path.read_bytes() == OLD
        assert temp_files(directory) == []


def test_unencodable_data_touches_nothing_on_disk(tmp_path: Path) -> None:
    """Encoding comes first: not even the missing directory is created."""
    path = tmp_path / "store" / NAME
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": b"bytes"})
    assert os.listdir(tmp_path) == []


def test_directory_in_the_way_fails_at_the_rename(tmp_path: Path) -> None:
    """`config.json` is a non-empty directory: the rename fails, the directory and its
    content stay, and the temp file written next to it is removed."""
    blocker = tmp_path / NAME
    blocker.mkdir()
    (blocker / "keep").write_text("mine")
    with pytest.raises(OSError):
        write_json_atomic(blocker, {"x": 1})
    assert (blocker / "keep").read_text() == "mine"
    assert temp_files(tmp_path) == []
