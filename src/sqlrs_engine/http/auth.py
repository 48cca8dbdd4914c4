"""Bearer-token authentication (SPEC §1.6), compared in constant time."""

from __future__ import annotations

import hmac


def is_authorized(header: str | None, token: str) -> bool:
    """True when `header`, trimmed, is exactly `Bearer <token>` (an empty token disables auth)."""
    if not token:
        return True
    expected = f"Bearer {token}".encode()
    given = (header or "").strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected)
