"""engine.json (SPEC §1.4): the file the `sqlrs` CLI reads to find, and trust, an engine.

It is replaced atomically while a CLI may be reading it, and removed on exit only if it still
describes this engine: a second engine that took over the same path must keep its file.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import ujson

from sqlrs_engine.discovery import EngineInfo, remove_engine_json, write_engine_json

INFO = EngineInfo(
    endpoint="127.0.0.1:43127",
    pid=4242,
    started_at="2026-01-02T03:04:05.123456Z",
    auth_token="ab" * 32,
    version="feature/x",
    instance_id="cd" * 16,
)


def test_written_as_pretty_camel_case_json(tmp_path: Path) -> None:
    path = tmp_path / "engine.json"
    write_engine_json(path, INFO)
    text = path.read_text(encoding="utf-8")
    assert ujson.loads(text) == {
        "endpoint": "127.0.0.1:43127",
        "pid": 4242,
        "startedAt": "2026-01-02T03:04:05.123456Z",
        "authToken": "ab" * 32,
        "version": "feature/x",
        "instanceId": "cd" * 16,
    }
    assert text.startswith('{\n  "endpoint": "127.0.0.1:43127",\n')
    assert text.endswith("}\n")
    assert '"feature/x"' in text, "slashes are not escaped (Go's encoder does not)"


def test_file_is_0600_in_a_new_0700_dir_and_no_temp_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "sqlrs" / "engine.json"
    write_engine_json(path, INFO)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["engine.json"]


def test_an_old_file_is_replaced_with_a_private_one(tmp_path: Path) -> None:
    """A previous engine's file (crashed without removing it), even world-readable, is
    replaced as a whole: the token must never be readable by others."""
    path = tmp_path / "engine.json"
    path.write_text('{"instanceId": "old", "authToken": "old", "padding": "' + "x" * 4096 + '"}')
    path.chmod(0o644)
    write_engine_json(path, INFO)
    assert ujson.loads(path.read_text())["instanceId"] == INFO.instance_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("content", "removed"),
    [
        ("mine", True),
        ('{"instanceId": "someone-else"}', False),  # another engine took the path over
        ('{"endpoint": "127.0.0.1:1"}', False),
        ("[1, 2]", False),
        ("{not json", False),
        ("", False),
        (None, False),  # already gone: nothing to do, no error
    ],
)
def test_remove_only_when_the_file_still_describes_this_engine(
    tmp_path: Path, content: str | None, removed: bool
) -> None:
    path = tmp_path / "engine.json"
    if content == "mine":
        write_engine_json(path, INFO)
    elif content is not None:
        path.write_text(content)
    remove_engine_json(path, INFO.instance_id)
    existed_after = path.exists()
    assert existed_after is (content is not None and not removed)
