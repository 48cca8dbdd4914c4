"""The staging copy Liquibase runs from (jobs/kinds/lb_stage.py): the hashed bytes under
`<stage>/root/<path>`, search roots mapped onto it, output mapped back."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sqlrs_engine.jobs.kinds.lb_stage import LbStage, StageError, staged_args


@pytest.fixture
def stage(tmp_path: Path) -> LbStage:
    return LbStage(tmp_path / "stage", None)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_land_under_their_absolute_path_readable_but_not_writable(
    stage: LbStage, tmp_path: Path
) -> None:
    stage.file("/home/ann/proj/changelog.xml", b"<d/>")
    stage.directory("/home/ann/proj/all")
    copy = stage.path / "root" / "home" / "ann" / "proj" / "changelog.xml"
    assert copy.read_bytes() == b"<d/>"
    assert _mode(copy) == 0o640
    assert _mode(copy.parent) == 0o750 and _mode(stage.path) == 0o750
    assert (copy.parent / "all").is_dir()
    assert stage.unstage(f"file {copy} not found") == "file /home/ann/proj/changelog.xml not found"
    root = stage.path / "root"
    assert (
        stage.unstage(f"search path:\n - {root}\n - {root}/home") == "search path:\n - /\n - /home"
    )
    stage.remove()
    assert not stage.path.exists()


def test_a_leftover_copy_is_replaced(tmp_path: Path) -> None:
    first = LbStage(tmp_path / "stage", None)
    first.file("/x/old.sql", b"old")
    second = LbStage(tmp_path / "stage", None)
    assert list((second.path / "root").iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another group needs root")
def test_the_copy_belongs_to_the_readers_group(tmp_path: Path) -> None:
    stage = LbStage(tmp_path / "stage", 4242)
    stage.file("/p/c.sql", b"x")
    for path in (stage.path, stage.path / "root" / "p", stage.path / "root" / "p" / "c.sql"):
        assert (path.stat().st_uid, path.stat().st_gid) == (0, 4242), path


ROOT = "/S/root"


@pytest.mark.parametrize(
    ("args", "roots", "expected"),
    [
        (
            ["--changelog-file", "c.xml", "update"],
            ["/w"],
            ["--search-path=/S/root/w", "--changelog-file", "c.xml", "update"],
        ),
        (
            ["--searchPath", "/a,classpath:x,/b", "--changelog-file", "/a/c.xml", "updateSQL"],
            ["/a", "classpath:x", "/b"],
            [
                "--searchPath",
                "/S/root/a,classpath:x,/S/root/b",
                "--changelog-file",
                "/a/c.xml",
                "updateSQL",
            ],
        ),
        (
            ["--defaults-file", "/w/lb.properties", "update-count", "--count", "1"],
            ["/w"],
            [
                "--search-path=/S/root/w",
                "--defaults-file",
                "/S/root/w/lb.properties",
                "update-count",
                "--count",
                "1",
            ],
        ),
    ],
)
def test_staged_args(
    tmp_path: Path, args: list[str], roots: list[str], expected: list[str]
) -> None:
    stage = LbStage(tmp_path / "stage", None)
    root = str(stage.path / "root")
    assert [a.replace(root, ROOT) for a in staged_args(args, stage, roots)] == expected
    for item in roots:
        if item.startswith("/"):
            assert Path(stage.staged(item)).is_dir(), "search roots exist in the copy"


def test_a_copy_that_cannot_be_written_is_an_error(stage: LbStage) -> None:
    stage.file("/p/a.sql", b"x")
    with pytest.raises(StageError, match=r"cannot copy /p/a\.sql"):
        stage.file("/p/a.sql", b"again")  # exists: the write is refused
