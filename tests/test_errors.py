"""Pure helpers of the shared error type."""

from __future__ import annotations

import pytest

from sqlrs_engine.errors import reports_no_space


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cp: error writing 'x': No space left on device", True),
        ("NO SPACE LEFT ON DEVICE", True),
        (
            'ERROR:  could not extend file "base/5/16384": wrote only 4096 of 8192 bytes at '
            "block 653\nHINT:  Check free disk space.",
            True,
        ),
        ('ERROR:  could not write to file "pg_wal/xlogtemp.1": No space left on device', True),
        ("no space left", False),
        ("Disk quota exceeded", False),
        ('ERROR:  relation "t" does not exist', False),
        ("", False),
    ],
)
def test_reports_no_space(text: str, expected: bool) -> None:
    assert reports_no_space(text) is expected
