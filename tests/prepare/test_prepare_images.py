"""Image ids: digest detection (SPEC §2.7)."""

from __future__ import annotations

import pytest

from sqlrs_engine.prepare.images import has_digest

ZEROS = "0" * 64


@pytest.mark.parametrize(
    ("image_id", "expected"),
    [
        ("postgres", False),
        ("postgres:17", False),
        ("postgres@", False),
        ("a@b@", False),
        ("postgres@sha256:ab12", True),
        (f"postgres:17@sha256:{ZEROS}", True),
        ("postgres@host-15.18", True),
        ("@x", True),
    ],
)
def test_has_digest(image_id: str, expected: bool) -> None:
    assert has_digest(image_id) is expected
