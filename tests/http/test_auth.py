"""Bearer-token check: only `Bearer <token>` exactly (trimmed) passes."""

from __future__ import annotations

import pytest

from sqlrs_engine.http.auth import is_authorized

TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}",
        f"  Bearer {TOKEN}",
        f"Bearer {TOKEN} \t",
        f"\tBearer {TOKEN}\r\n",
    ],
)
def test_the_exact_bearer_token_passes(header: str) -> None:
    """Surrounding whitespace is trimmed, as Go's strings.TrimSpace does."""
    assert is_authorized(header, TOKEN) is True


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        TOKEN,
        "Bearer",
        "Bearer ",
        f"bearer {TOKEN}",
        f"BEARER {TOKEN}",
        f"Basic {TOKEN}",
        f"Bearer  {TOKEN}",
        f"Bearer\t{TOKEN}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN.upper()}",
        f"Bearer {TOKEN} {TOKEN}",
        "Bearer wrong",
        f"Bearer {TOKEN[:16]}\u00e9{TOKEN[17:]}",
        f"Bearer {TOKEN}\udcff",  # undecodable bytes as WSGI may hand them over
    ],
)
def test_anything_else_is_refused(header: str | None) -> None:
    """Wrong scheme, case, spacing, prefix or extension of the token: all refused, no error."""
    assert is_authorized(header, TOKEN) is False


@pytest.mark.parametrize("header", [None, "", "Bearer anything"])
def test_an_empty_token_disables_auth(header: str | None) -> None:
    assert is_authorized(header, "") is True
