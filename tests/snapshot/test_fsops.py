"""The file-system helpers under every snapshot backend (snapshot/fsops.py).

Removal, copies and markers run against real files and the real coreutils; faults are
provoked for real where the machine allows it (`chattr +i` on ext4, a full tmpfs), and only
the backend-specific `remover` step of `remove_tree` is replaced to fail on demand.
`tree_size` is covered by test_snapshot_copy.py (`CopyBackend.size_bytes`); only the symlink
root case is added here.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.snapshot.base import (
    MISSING_DIR_REASON,
    MISSING_PG_VERSION_REASON,
    SnapshotError,
)
from sqlrs_engine.snapshot.fsops import (
    check_state_dst,
    clear_dir,
    copy_dir_attrs,
    copy_entries,
    data_entries,
    os_error_to_snapshot,
    refuse_unclean_source,
    remove_tree,
    resolved,
    run_tool,
    tree_size,
    write_marker,
)
from sqlrs_engine.snapshot.layout import is_stale_name
from tests.support.faults import chattr, fill, needs_chattr, tmpfs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def make_tree(root: Path) -> Path:
    """A small tree: nested dirs, a file, a symlink."""
    (root / "pgdata" / "base").mkdir(parents=True)
    (root / "pgdata" / "PG_VERSION").write_text("15\n")
    (root / "pgdata" / "base" / "1259").write_bytes(b"\x01" * 100)
    (root / "pgdata" / "pg_wal").symlink_to("../wal")
    return root


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def tree(root: Path) -> list[str]:
    """Every path under `root`, relative, sorted: to show that nothing was touched."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- remove_tree ---------------------------------------------------------------------------------


def test_remove_tree_of_an_absent_path_does_nothing(tmp_path: Path) -> None:
    calls: list[Path] = []
    remove_tree(tmp_path / "gone", remover=calls.append)
    assert calls == [], "the backend step is not even tried"
    assert names(tmp_path) == []


def test_remover_that_does_the_whole_job_needs_no_rm(tmp_path: Path) -> None:
    victim = make_tree(tmp_path / "victim")
    calls: list[Path] = []

    def remover(path: Path) -> None:
        calls.append(path)
        shutil.rmtree(path)

    remove_tree(victim, remover=remover)
    assert calls == [victim]
    assert names(tmp_path) == []


def test_failing_remover_is_retried_with_backoff(tmp_path: Path) -> None:
    """A backend step (unmount, subvolume delete) that fails twice then works: the third
    attempt removes the tree, nothing is renamed aside, and the waits were not skipped."""
    victim = make_tree(tmp_path / "victim")
    calls: list[Path] = []

    def remover(path: Path) -> None:
        calls.append(path)
        if len(calls) < 3:
            raise SnapshotError("cannot unmount", f"busy #{len(calls)}")

    started = time.monotonic()
    remove_tree(victim, attempts=3, backoff=0.05, remover=remover)
    elapsed = time.monotonic() - started
    assert calls == [victim] * 3
    assert names(tmp_path) == []
    assert elapsed >= 0.05 + 0.1, "backoff before the 2nd and the 3rd attempt"


def test_remover_failing_every_time_raises_and_touches_nothing(tmp_path: Path) -> None:
    """A backend step that never works (a busy mount): the error names the last failure,
    and the tree is left exactly as it was, under its own name."""
    victim = make_tree(tmp_path / "victim")
    before = tree(victim)
    calls: list[Path] = []

    def remover(path: Path) -> None:
        calls.append(path)
        raise SnapshotError("cannot unmount", f"busy #{len(calls)}")

    with pytest.raises(SnapshotError) as raised:
        remove_tree(victim, attempts=2, backoff=0.0, remover=remover)
    assert calls == [victim, victim]
    assert raised.value.message == f"cannot remove {victim}"
    assert raised.value.details == "busy #2"
    assert names(tmp_path) == ["victim"] and tree(victim) == before


@pytest.mark.parametrize(("attempts", "tries"), [(0, 1), (1, 1), (2, 2), (4, 4)])
def test_attempts_bound_the_tries(tmp_path: Path, attempts: int, tries: int) -> None:
    victim = make_tree(tmp_path / "victim")
    calls: list[Path] = []

    def remover(path: Path) -> None:
        calls.append(path)
        raise SnapshotError("cannot unmount")

    with pytest.raises(SnapshotError):
        remove_tree(victim, attempts=attempts, backoff=0.0, remover=remover)
    assert len(calls) == tries
    assert victim.is_dir()


def test_a_swept_stale_copy_is_deleted_in_place(tmp_path: Path) -> None:
    """A `.stale-<ns>` leftover is aside already: the backend step and `rm` run on it as is."""
    stale = make_tree(tmp_path / "victim.stale-123")
    calls: list[Path] = []
    remove_tree(stale, remover=calls.append)
    assert calls == [stale]
    assert names(tmp_path) == []


@needs_chattr
def test_undeletable_file_inside_leaves_a_stale_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`rm -rf` fails on every attempt (an immutable file), the rename works: the original
    name is gone and reusable, the stale copy stays for `sweep_stale`."""
    parent = tmp_path / "jobs"
    victim = make_tree(parent / "runtime")
    stuck = victim / "pgdata" / "PG_VERSION"
    chattr("+i", stuck)
    calls: list[Path] = []
    try:
        with caplog.at_level(logging.WARNING, logger="sqlrs_engine.snapshot.fsops"):
            remove_tree(victim, attempts=2, backoff=0.0, remover=calls.append)
        assert calls == [victim], "moved aside at the first attempt"
        assert not victim.exists()
        (stale,) = parent.iterdir()
        assert stale.name.startswith("runtime.stale-") and is_stale_name(stale.name)
        assert (stale / "pgdata" / "PG_VERSION").read_text() == "15\n"
        assert "Operation not permitted" in caplog.text and "left behind" in caplog.text
        victim.mkdir()  # the name is usable again
    finally:
        for path in parent.glob("runtime.stale-*/pgdata/PG_VERSION"):
            chattr("-i", path)


@needs_chattr
def test_unremovable_and_unrenamable_path_raises(tmp_path: Path) -> None:
    """Immutable parent: neither unlink nor rename. The error names the path, the last
    `rm` error and the failed rename; the path is still there."""
    parent = tmp_path / "states"
    victim = make_tree(parent / "s1")
    chattr("+i", parent)
    try:
        with pytest.raises(SnapshotError) as raised:
            remove_tree(victim, attempts=2, backoff=0.0)
        assert raised.value.message == f"cannot remove {victim}"
        details = raised.value.details or ""
        assert "cannot move it aside" in details and "Operation not permitted" in details
        assert victim.is_dir()
        assert not raised.value.no_space
    finally:
        chattr("-i", parent)
    assert names(parent) == ["s1"], "no stale copy was made"


# -- clear_dir -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "left"),
    [
        (set(), []),
        ({".build.lock"}, [".build.lock"]),
        ({".build.lock", "pgdata", "not-there"}, [".build.lock", "pgdata"]),
        ({"link", "file"}, ["file", "link"]),
    ],
)
def test_clear_dir_removes_all_but_the_kept_names(
    tmp_path: Path, keep: set[str], left: list[str]
) -> None:
    target = make_tree(tmp_path / "outside")
    directory = make_tree(tmp_path / "state")
    (directory / ".build.lock").write_text("")
    (directory / "file").write_text("x")
    (directory / "link").symlink_to(target)
    removed: list[str] = []

    def remove(path: Path) -> None:
        removed.append(path.name)
        remove_tree(path)

    clear_dir(directory, keep, remove)

    assert names(directory) == left
    assert sorted(removed) == sorted({".build.lock", "pgdata", "file", "link"} - set(left))
    assert names(target) == ["pgdata"], "a symlink is removed, never what it points to"


def test_clear_dir_of_a_missing_dir_raises(tmp_path: Path) -> None:
    removed: list[Path] = []
    with pytest.raises(FileNotFoundError):
        clear_dir(tmp_path / "gone", set(), removed.append)
    assert removed == []


# -- write_marker ----------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["ok", "", '{"backend": "overlayfs", "lowers": ["é"]}\n'])
def test_write_marker_writes_exactly_the_content_with_mode_0600(
    tmp_path: Path, content: str
) -> None:
    marker = tmp_path / ".build.ok"
    old_umask = os.umask(0)  # a permissive umask must not widen the mode
    try:
        write_marker(marker, content)
    finally:
        os.umask(old_umask)
    assert marker.read_bytes() == content.encode()
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600
    assert names(tmp_path) == [".build.ok"], "no temporary file left"


def test_write_marker_replaces_an_existing_file_atomically(tmp_path: Path) -> None:
    """A new inode renamed over the old one: a reader holding the old file still sees the
    old content in full (never a truncated mix)."""
    marker = tmp_path / "layers.json"
    marker.write_text("old content")
    marker.chmod(0o644)
    old_inode = marker.stat().st_ino
    with marker.open() as reader:
        write_marker(marker, "new")
        assert reader.read() == "old content"
    assert marker.read_text() == "new"
    assert marker.stat().st_ino != old_inode
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600
    assert names(tmp_path) == ["layers.json"]


def test_write_marker_failing_at_the_rename_leaves_no_temp(tmp_path: Path) -> None:
    """The marker's name is taken by a non-empty directory: the rename fails, the directory
    is untouched and the temporary file is gone."""
    blocker = tmp_path / ".build.ok"
    (blocker / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        write_marker(blocker)
    assert names(tmp_path) == [".build.ok"] and names(blocker) == ["inside"]


def test_write_marker_in_a_missing_dir_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_marker(tmp_path / "gone" / ".init.ok")
    assert names(tmp_path) == []


@needs_root
def test_write_marker_on_a_full_disk_keeps_the_old_marker(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs") as fs:
        marker = fs / "layers.json"
        write_marker(marker, "old")
        fill(fs)
        with pytest.raises(OSError) as raised:
            write_marker(marker, "new content")
        assert raised.value.errno == errno.ENOSPC
        assert marker.read_text() == "old"
        assert names(fs) == ["filler", "layers.json"]


@needs_root
def test_write_marker_on_an_almost_full_disk_is_all_or_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs") as fs:
        fill(fs, leave=4096)  # one free page, less than the content needs
        marker = fs / "layers.json"
        content = "x" * 10000
        try:
            write_marker(marker, content)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            assert not marker.exists()
        else:
            written = len(marker.read_bytes())
            assert written == len(content), f"marker holds {written} of {len(content)} bytes"
        assert [n for n in names(fs) if n.startswith("layers.json.tmp-")] == []


# -- copies --------------------------------------------------------------------------------------


def test_copy_entries_copies_more_entries_than_one_cp_call_takes(tmp_path: Path) -> None:
    """Entries are passed to `cp` in chunks (512 each); every chunk arrives, attributes kept."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(1100):
        (src / f"f{i:04d}").write_text(str(i))
    os.chmod(src / "f0000", 0o600)
    (src / "link").symlink_to("f0001")
    dst = tmp_path / "dst"
    dst.mkdir()

    copy_entries(data_entries(src), dst, "copy failed")

    assert names(dst) == names(src)
    assert (dst / "f1099").read_text() == "1099"
    assert stat.S_IMODE((dst / "f0000").stat().st_mode) == 0o600
    assert os.readlink(dst / "link") == "f0001"


def test_copy_entries_of_nothing_is_a_no_op(tmp_path: Path) -> None:
    copy_entries([], tmp_path / "never-created", "copy failed")
    assert names(tmp_path) == []


def test_copy_entries_failure_carries_cp_output(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(SnapshotError) as raised:
        copy_entries([src / "pgdata", src / "missing"], dst, "snapshot clone failed")
    assert raised.value.message == "snapshot clone failed"
    assert "missing" in (raised.value.details or "")
    assert "No such file or directory" in (raised.value.details or "")
    assert not raised.value.no_space


def test_copy_entries_cancelled_before_start_copies_nothing(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    dst = tmp_path / "dst"
    dst.mkdir()
    token = CancelToken()
    token.cancel()
    with pytest.raises(JobFailure) as raised:
        copy_entries(data_entries(src), dst, "copy failed", token)
    assert raised.value.code == "cancelled"
    assert not isinstance(raised.value, SnapshotError), "a cancel is not a copy failure"
    assert names(dst) == []


def test_data_entries_skip_store_metadata_and_are_sorted(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    for name in ("wal", ".build.ok", "pgdata", ".build.lock", ".init.ok", ".init.lock", ".x"):
        (directory / name).write_text("")
    assert data_entries(directory) == [directory / n for n in (".x", "pgdata", "wal")]


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o2750, 0o1777])
def test_copy_dir_attrs_copies_mode_and_owner(tmp_path: Path, mode: int) -> None:
    """Set-id bits survive the chown (it clears them; chmod comes after)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir(mode=0o777)
    os.chmod(src, mode)
    if os.geteuid() == 0:
        os.chown(src, 4321, 4321)
    copy_dir_attrs(src, dst)
    st_src, st_dst = os.stat(src), os.stat(dst)
    assert stat.S_IMODE(st_dst.st_mode) == mode
    assert (st_dst.st_uid, st_dst.st_gid) == (st_src.st_uid, st_src.st_gid)


# -- checks --------------------------------------------------------------------------------------

StateDstSetup = Callable[[Path], None]


def _leftovers(dst: Path) -> None:
    dst.mkdir()
    (dst / ".build.lock").write_text("")
    for name in ("g", "f", "e", "d", "c", "b", "a"):
        (dst / name).write_text("")


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        (lambda dst: None, None),
        (lambda dst: dst.mkdir(), None),
        (lambda dst: (dst.mkdir(), (dst / ".build.lock").write_text("")), None),
        (lambda dst: dst.write_text("x"), "exists and is not a directory"),
        (lambda dst: dst.symlink_to(dst.parent), "exists and is not a directory"),
        (lambda dst: dst.symlink_to(dst.parent / "nowhere"), "exists and is not a directory"),
        (
            lambda dst: (dst.mkdir(), (dst / ".build.ok").write_text("ok")),
            "is not empty (.build.ok)",
        ),
        (_leftovers, "is not empty (a, b, c, d, e); reset it before taking a new snapshot"),
    ],
    ids=["absent", "empty", "lock-only", "file", "symlink", "dangling", "marker", "many"],
)
def test_check_state_dst(tmp_path: Path, setup: StateDstSetup, error: str | None) -> None:
    dst = tmp_path / "state"
    setup(dst)
    if error is None:
        check_state_dst(dst, "snapshot failed")
        return
    with pytest.raises(SnapshotError) as raised:
        check_state_dst(dst, "snapshot failed")
    assert raised.value.message == "snapshot failed"
    assert error in (raised.value.details or "")


@pytest.mark.parametrize(
    ("files", "error"),
    [
        (["pgdata/PG_VERSION"], None),
        (["PG_VERSION"], None),
        (["pgdata/PG_VERSION", "pgdata/postmaster.pid"], "postmaster.pid present"),
        (["pgdata/PG_VERSION", "postmaster.pid"], "postmaster.pid present"),
        (["pgdata/base"], MISSING_PG_VERSION_REASON),
        (None, MISSING_DIR_REASON),
    ],
)
def test_refuse_unclean_source(tmp_path: Path, files: list[str] | None, error: str | None) -> None:
    src = tmp_path / "src"
    for rel in files or []:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("15\n")
    if error is None:
        refuse_unclean_source(src)
        return
    with pytest.raises(SnapshotError) as raised:
        refuse_unclean_source(src)
    assert raised.value.message == "snapshot refused"
    assert error in (raised.value.details or "")
    if error == "postmaster.pid present":
        assert "pg_ctl stop -m fast" in (raised.value.details or "")


def test_resolved_follows_symlinks_of_paths_that_do_not_exist_yet(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert resolved(tmp_path / "alias" / "jobs" / "x") == tmp_path.resolve() / "real/jobs/x"
    assert resolved(Path("relative")) == Path.cwd().resolve() / "relative"


def test_tree_size_allocated_counts_blocks_not_apparent_sizes(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # 64 MiB apparent, no block written
        fh.write(b"x" * 8192)
    assert tree_size(tmp_path) == 64 * 1024 * 1024
    allocated = tree_size(tmp_path, allocated=True)
    assert allocated == os.stat(sparse).st_blocks * 512
    assert 8192 <= allocated < 1024 * 1024


def test_tree_size_does_not_follow_a_symlinked_root(tmp_path: Path) -> None:
    target = make_tree(tmp_path / "target")
    (tmp_path / "link").symlink_to(target)
    assert tree_size(target) == len("15\n") + 100
    assert tree_size(tmp_path / "link") == 0


# -- run_tool --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "details", "no_space"),
    [
        (["sh", "-c", "echo boom >&2; exit 3"], "boom", False),
        (["sh", "-c", "echo partial; echo 'oops' >&2; exit 1"], "partial\noops", False),
        (
            ["sh", "-c", "echo \"cp: error writing 'x': No space left on device\" >&2; exit 1"],
            "cp: error writing 'x': No space left on device",
            True,
        ),
        (["sh", "-c", "echo 'NO SPACE LEFT ON DEVICE'; exit 1"], "NO SPACE LEFT ON DEVICE", True),
        (["false"], "false exited 1", False),
        (["/bin/sh", "-c", "exit 7"], "sh exited 7", False),
    ],
)
def test_run_tool_failure_is_a_snapshot_error_with_the_output(
    argv: list[str], details: str, no_space: bool
) -> None:
    with pytest.raises(SnapshotError) as raised:
        run_tool(argv, "cannot copy")
    assert (raised.value.code, raised.value.message) == ("internal_error", "cannot copy")
    assert raised.value.details == details
    assert raised.value.no_space is no_space


def test_run_tool_success_returns_quietly() -> None:
    run_tool(["sh", "-c", "echo fine; exit 0"], "never")


def test_run_tool_that_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError) as raised:
        run_tool([str(tmp_path / "no-such-tool")], "cannot remove")
    assert raised.value.message == "cannot remove"
    assert "cannot start no-such-tool" in (raised.value.details or "")


def test_run_tool_keeps_the_tail_of_long_output() -> None:
    with pytest.raises(SnapshotError) as raised:
        run_tool(["sh", "-c", "yes noise | head -n 20000; echo LAST; exit 1"], "cp failed")
    details = raised.value.details or ""
    assert details.endswith("LAST")
    assert len(details) <= 16 * 1024


def test_run_tool_cancel_kills_the_tool(tmp_path: Path) -> None:
    """Cancel is not a tool failure: it surfaces as JobFailure `cancelled` at once."""
    started = tmp_path / "started"
    token = CancelToken()

    def cancel_when_started() -> None:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        token.cancel()

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    begun = time.monotonic()
    try:
        with pytest.raises(JobFailure) as raised:
            run_tool(["sh", "-c", f"touch {started}; exec sleep 60"], "never", token)
    finally:
        canceller.join(30)
    assert raised.value.code == "cancelled"
    assert not isinstance(raised.value, SnapshotError)
    assert time.monotonic() - begun < 50, "sleep 60 did not run to its end"


@pytest.mark.parametrize(
    ("code", "no_space"),
    [(errno.ENOSPC, True), (errno.EACCES, False), (errno.EDQUOT, False), (errno.EIO, False)],
)
def test_os_error_to_snapshot_keeps_the_enospc_signal(code: int, no_space: bool) -> None:
    error = OSError(code, os.strerror(code), "/x/y")
    wrapped = os_error_to_snapshot("cannot create runtime dir", error)
    assert wrapped.message == "cannot create runtime dir"
    assert wrapped.details == str(error)
    assert wrapped.no_space is no_space
