"""SPEC §2.5 content digest: boundaries, lines, includes, locks, errors."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sqlrs_engine.errors import JobFailure
from sqlrs_engine.prepare.digest import (
    INCLUDE_BOUNDARY,
    INPUT_BOUNDARY,
    MAX_LINE_BYTES,
    ContentLocks,
    all_inputs_digest,
    compute_content_digest,
    parse_include,
    signature_task_hash,
    step_digest,
    step_task_hashes,
)
from sqlrs_engine.prepare.hashing import psql_task_hash
from sqlrs_engine.prepare.psql_args import PsqlInput, parse_psql_args

B = INCLUDE_BOUNDARY


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


def can_lock_exclusively(path: Path) -> bool:
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def failure_details(inputs: list[PsqlInput], work_dir: str) -> str:
    with pytest.raises(JobFailure) as caught:
        compute_content_digest(inputs, work_dir)
    err = caught.value
    assert (err.code, err.message) == ("invalid_argument", "cannot compute psql content hash")
    assert err.details is not None
    return err.details


# ------------------------------------------------------------------ text inputs


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["select 1"], b"select 1\n"),
        (["select 1\n"], b"select 1\n"),
        ([""], b""),
        (["\n"], b"\n"),
        (["a\r\nb\r\n"], b"a\nb\n"),
        (["a\r\r\n"], b"a\r\n"),
        (["a\n\nb"], b"a\n\nb\n"),
        (["a", "b"], b"a\n" + INPUT_BOUNDARY + b"b\n"),
        (["a", "", "c"], b"a\n" + INPUT_BOUNDARY + INPUT_BOUNDARY + b"c\n"),
        (["é"], "é\n".encode()),
        (["\\i"], b"\\i\n"),  # one token: not an include
        (["\\ix foo.sql"], b"\\ix foo.sql\n"),  # not an include command
        (["select '\\i x.sql'"], b"select '\\i x.sql'\n"),  # does not start with a backslash
    ],
)
def test_text_inputs(texts: list[str], expected: bytes) -> None:
    inputs = [PsqlInput("command", t) for t in texts]
    digest = compute_content_digest(inputs, "/nowhere")
    assert digest.hash == sha(expected)
    assert digest.files == ()


def test_stdin_and_command_digest_alike() -> None:
    as_command = compute_content_digest([PsqlInput("command", "select 1")], "")
    as_stdin = compute_content_digest([PsqlInput("stdin", "select 1")], "")
    assert as_command == as_stdin


def test_lone_surrogate_is_hashed_as_replacement_char() -> None:
    digest = compute_content_digest([PsqlInput("command", "a\ud800")], "")
    assert digest.hash == sha("a\ufffd\n".encode())


def test_no_inputs_is_empty_content() -> None:
    assert compute_content_digest([], "").hash == sha(b"")


# ------------------------------------------------------------------ include syntax


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("\\i a.sql", ("\\i", "a.sql")),
        ("\\ir a.sql", ("\\ir", "a.sql")),
        ("\\include a.sql", ("\\include", "a.sql")),
        ("\\include_relative a.sql", ("\\include_relative", "a.sql")),
        ("   \\i\ta.sql  ", ("\\i", "a.sql")),
        ("\\i 'my file.sql'", ("\\i", "my file.sql")),
        ('\\include_relative "dir x/y.sql" extra', ("\\include_relative", "dir x/y.sql")),
        ("\\i a'b c'd.sql", ("\\i", "ab cd.sql")),
        ('\\i "it\'s.sql"', ("\\i", "it's.sql")),
        ("\\i", None),
        ("\\i ''", None),  # the quoted empty string yields no token
        ("\\i   ", None),
        ("\\echo hi", None),
        ("\\I a.sql", None),
        ("select 1", None),
        ("-- \\i a.sql", None),
    ],
)
def test_parse_include(line: str, expected: tuple[str, str] | None) -> None:
    assert parse_include(line) == expected


# ------------------------------------------------------------------ include expansion


def test_file_input_without_includes(tmp_path: Path) -> None:
    main = write(tmp_path / "main.sql", "select 1;\r\nselect 2;")
    digest = compute_content_digest([PsqlInput("file", str(main))], str(tmp_path))
    assert digest.hash == sha(b"select 1;\nselect 2;\n")
    assert digest.files == (str(main),)


def test_plain_i_is_relative_to_work_dir(tmp_path: Path) -> None:
    main = write(tmp_path / "main.sql", "select 0;\n\\i inc/x.sql\nselect 2;\n")
    inc = write(tmp_path / "inc" / "x.sql", "select 1;\n")
    digest = compute_content_digest([PsqlInput("file", str(main))], str(tmp_path))
    assert digest.hash == sha(b"select 0;\n" + B + b"select 1;\n" + B + b"select 2;\n")
    assert digest.files == (str(main), str(inc))


def test_nested_ir_is_relative_to_including_file(tmp_path: Path) -> None:
    main = write(tmp_path / "main.sql", "\\ir sub/a.sql\n")
    write(tmp_path / "sub" / "a.sql", "a;\n\\ir b.sql\n\\include_relative 'c d.sql'\n")
    write(tmp_path / "sub" / "b.sql", "b;\n")
    write(tmp_path / "sub" / "c d.sql", "cd;")
    digest = compute_content_digest([PsqlInput("file", str(main))], str(tmp_path))
    expected = B + b"a;\n" + B + b"b;\n" + B + B + b"cd;\n" + B + B
    assert digest.hash == sha(expected)
    assert len(digest.files) == 4


def test_plain_i_inside_nested_file_still_uses_work_dir(tmp_path: Path) -> None:
    # Reference quirk (§12.14): \i is relative to the work dir, even inside an included file.
    main = write(tmp_path / "main.sql", "\\ir sub/a.sql\n")
    write(tmp_path / "sub" / "a.sql", '\\include "top.sql"\n')
    write(tmp_path / "top.sql", "top;\n")
    write(tmp_path / "sub" / "top.sql", "wrong;\n")
    digest = compute_content_digest([PsqlInput("file", str(main))], str(tmp_path))
    assert digest.hash == sha(B + B + b"top;\n" + B + B)


def test_ir_in_command_uses_work_dir(tmp_path: Path) -> None:
    write(tmp_path / "x.sql", "x;\n")
    digest = compute_content_digest([PsqlInput("command", "\\ir x.sql")], str(tmp_path))
    assert digest.hash == sha(B + b"x;\n" + B)


def test_absolute_include_is_cleaned(tmp_path: Path) -> None:
    inc = write(tmp_path / "x.sql", "x;\n")
    text = f"\\i {tmp_path}/sub/../x.sql"
    digest = compute_content_digest([PsqlInput("command", text)], "")
    assert digest.hash == sha(B + b"x;\n" + B)
    assert digest.files == (str(inc),)


def test_same_file_twice_is_not_recursion(tmp_path: Path) -> None:
    main = write(tmp_path / "main.sql", "\\i x.sql\n\\i ./x.sql\n")
    write(tmp_path / "x.sql", "x;\n")
    digest = compute_content_digest([PsqlInput("file", str(main))], str(tmp_path))
    assert digest.hash == sha(B + b"x;\n" + B + B + b"x;\n" + B)
    assert len(digest.files) == 2


def test_multiple_inputs_with_boundaries(tmp_path: Path) -> None:
    a = write(tmp_path / "a.sql", "a;\n")
    digest = compute_content_digest(
        [PsqlInput("command", "c"), PsqlInput("file", str(a)), PsqlInput("stdin", "s")],
        str(tmp_path),
    )
    assert digest.hash == sha(b"c\n" + INPUT_BOUNDARY + b"a;\n" + INPUT_BOUNDARY + b"s\n")


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("files", "start", "details"),
    [
        ({"a.sql": "\\i a.sql\n"}, "a.sql", "recursive include: {d}/a.sql"),
        (
            {"a.sql": "\\ir b.sql\n", "b.sql": "\\ir ./a.sql\n"},
            "a.sql",
            "recursive include: {d}/a.sql",
        ),
        (
            {"a.sql": "\\ir s/b.sql\n", "s/b.sql": "\\ir ../s/b.sql\n"},
            "a.sql",
            "recursive include: {d}/s/b.sql",
        ),
        (
            {"a.sql": "\\i missing.sql\n"},
            "a.sql",
            "stat {d}/missing.sql: no such file or directory",
        ),
        ({"a.sql": '\\i " "\n'}, "a.sql", "include path is empty"),
    ],
)
def test_include_errors(tmp_path: Path, files: dict[str, str], start: str, details: str) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    got = failure_details([PsqlInput("file", str(tmp_path / start))], str(tmp_path))
    assert got == details.replace("{d}", str(tmp_path))


def test_relative_include_without_work_dir() -> None:
    details = failure_details([PsqlInput("command", "\\i x.sql")], "")
    assert details.startswith("include path requires working directory")


def test_missing_input_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.sql"
    details = failure_details([PsqlInput("file", str(path))], str(tmp_path))
    assert details == f"stat {path}: no such file or directory"


def test_directory_include(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    details = failure_details([PsqlInput("command", "\\i d")], str(tmp_path))
    assert details == f"read {tmp_path / 'd'}: is a directory"


def test_fifo_include_fails_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.sql"
    os.mkfifo(fifo)
    details = failure_details([PsqlInput("command", f"\\i {fifo}")], str(tmp_path))
    assert details == f"read {fifo}: not a regular file"


def test_device_include_is_rejected() -> None:
    details = failure_details([PsqlInput("command", "\\i /dev/zero")], "")
    assert details == "read /dev/zero: not a regular file"


@pytest.mark.parametrize(
    ("content", "ok"),
    [
        (b"x" * MAX_LINE_BYTES, True),
        (b"x" * MAX_LINE_BYTES + b"\n", True),
        (b"x" * (MAX_LINE_BYTES - 1) + b"\r\n", True),
        (b"a\n" + b"x" * MAX_LINE_BYTES + b"\nb", True),
        (b"x" * (MAX_LINE_BYTES + 1), False),
        (b"x" * (MAX_LINE_BYTES + 1) + b"\n", False),
        (b"x" * MAX_LINE_BYTES + b"\r\n", False),
        (b"a\n" + b"y" * 100_000 + b"\n", False),
    ],
)
def test_64k_line_limit(tmp_path: Path, content: bytes, ok: bool) -> None:
    assert MAX_LINE_BYTES == 65535
    path = write(tmp_path / "big.sql", content)
    inputs = [PsqlInput("file", str(path))]
    if ok:
        compute_content_digest(inputs, str(tmp_path))
    else:
        details = failure_details(inputs, str(tmp_path))
        assert str(path) in details
        assert "64 KiB" in details


def test_64k_line_limit_in_command() -> None:
    details = failure_details([PsqlInput("command", "x" * 70_000)], "")
    assert details.startswith("command: line 1 is longer than 64 KiB")


def test_long_line_in_included_file_names_that_file(tmp_path: Path) -> None:
    write(tmp_path / "inc.sql", "ok;\n" + "z" * 70_000)
    details = failure_details([PsqlInput("command", "\\i inc.sql")], str(tmp_path))
    assert details.startswith(f"{tmp_path}/inc.sql: line 2 is longer than 64 KiB")


@pytest.mark.parametrize(
    ("line", "reported"),
    [(MAX_LINE_BYTES + 1, "(65536 bytes,"), (MAX_LINE_BYTES + 10, "(at least 65537 bytes,")],
)
def test_a_long_line_in_a_file_is_reported_without_reading_it_whole(
    tmp_path: Path, line: int, reported: str
) -> None:
    path = write(tmp_path / "long.sql", "ok;\n" + "y" * line + "\n")
    details = failure_details([PsqlInput("file", str(path))], str(tmp_path))
    assert details.startswith(f"{path}: line 2 is longer than 64 KiB {reported}")


@pytest.mark.parametrize(
    "content",
    [
        "select 1;\nselect 2;\n",
        "no newline at the end",
        "crlf;\r\nlines;\r\n",
        "\n\n\nblank lines\n\n",
        "x" * MAX_LINE_BYTES + "\n" + "tail",
        "",
    ],
    ids=["plain", "no-final-newline", "crlf", "blank", "longest-line", "empty"],
)
def test_a_file_digests_exactly_like_the_same_text_as_a_command(
    tmp_path: Path, content: str
) -> None:
    """Files are streamed line by line; commands are split in memory: same digest."""
    path = write(tmp_path / "same.sql", content)
    from_file = compute_content_digest([PsqlInput("file", str(path))], str(tmp_path))
    from_text = compute_content_digest([PsqlInput("command", content)], str(tmp_path))
    assert from_file.hash == from_text.hash


def test_a_large_file_is_digested_in_constant_memory(tmp_path: Path) -> None:
    """64 MiB of SQL: the digest holds a line at a time, not the file."""
    path = tmp_path / "large.sql"
    line = b"insert into t values (" + b"1234567890" * 10 + b");\n"
    with path.open("wb") as out:
        for _ in range((64 << 20) // (1 << 20)):
            out.write(line * ((1 << 20) // len(line)))
    tracemalloc.start()
    try:
        digest = compute_content_digest([PsqlInput("file", str(path))], str(tmp_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(digest.hash) == 64
    assert peak < 4 << 20, f"peak {peak} bytes for a {path.stat().st_size} byte file"


# ------------------------------------------------------------------ locks


def test_exclusively_locked_file_fails(tmp_path: Path) -> None:
    main = write(tmp_path / "main.sql", "\\i inc.sql\n")
    inc = write(tmp_path / "inc.sql", "x;\n")
    with exclusive_lock(inc):
        details = failure_details([PsqlInput("file", str(main))], str(tmp_path))
    assert details.startswith(f"cannot lock {inc}")
    # the failed digest released the lock it had taken on main.sql
    assert can_lock_exclusively(main)


def test_shared_locks_coexist(tmp_path: Path) -> None:
    main = write(tmp_path / "main.sql", "x;\n")
    with open(main, "rb") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        compute_content_digest([PsqlInput("file", str(main))], str(tmp_path))


def test_locks_released_after_digest_without_holder(tmp_path: Path) -> None:
    main = write(tmp_path / "main.sql", "x;\n")
    compute_content_digest([PsqlInput("file", str(main))], str(tmp_path))
    assert can_lock_exclusively(main)


def test_locks_held_by_caller_until_release(tmp_path: Path) -> None:
    main = write(tmp_path / "main.sql", "\\i inc.sql\n")
    inc = write(tmp_path / "inc.sql", "x;\n")
    with ContentLocks() as locks:
        digest = compute_content_digest([PsqlInput("file", str(main))], str(tmp_path), locks)
        assert locks.paths == [str(main), str(inc)]
        assert digest.files == (str(main), str(inc))
        assert not can_lock_exclusively(main)
        assert not can_lock_exclusively(inc)
        # recomputing under the same holder reuses the held locks
        again = compute_content_digest([PsqlInput("file", str(main))], str(tmp_path), locks)
        assert again == digest
    assert locks.paths == []
    assert can_lock_exclusively(main)
    assert can_lock_exclusively(inc)
    locks.release()  # idempotent


# ------------------------------------------------------------------ psql plan helpers


def test_step_and_all_inputs_digests(tmp_path: Path) -> None:
    a = write(tmp_path / "a.sql", "\\i inc.sql\n")
    write(tmp_path / "inc.sql", "i;\n")
    plan = parse_psql_args(["-c", "c1", "-f", str(a), "-f", "-"], "s", cwd=tmp_path)
    digests = [step_digest(plan, i).hash for i in range(3)]
    assert digests == [sha(b"c1\n"), sha(B + b"i;\n" + B), sha(b"s\n")]
    whole = sha(b"c1\n" + INPUT_BOUNDARY + B + b"i;\n" + B + INPUT_BOUNDARY + b"s\n")
    assert all_inputs_digest(plan).hash == whole
    assert step_task_hashes(plan, "v1") == [psql_task_hash(d, "v1") for d in digests]
    assert signature_task_hash(plan, "v1") == psql_task_hash(whole, "v1")


def test_no_input_step_digest(tmp_path: Path) -> None:
    plan = parse_psql_args(["-q"], None, cwd=tmp_path)
    assert step_digest(plan, 0).hash == sha(b"")
    assert step_task_hashes(plan, "dev") == [psql_task_hash(sha(b""), "dev")]


def test_step_digest_uses_first_file_dir_for_includes(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    a = write(sub / "a.sql", "a;\n")
    write(sub / "inc.sql", "inc;\n")
    plan = parse_psql_args(["-f", str(a), "-c", "\\i inc.sql"], None, cwd="/")
    assert step_digest(plan, 1).hash == sha(B + b"inc;\n" + B)
