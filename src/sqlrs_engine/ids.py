"""Identifier formats of SPEC §7: random hex ids and the `id_prefix` rules."""

from __future__ import annotations

import re
import secrets

from sqlrs_engine.errors import invalid_argument

_HEX = re.compile(r"^[0-9a-fA-F]*$")
_INSTANCE_ID = re.compile(r"^[0-9a-fA-F]{32}$")
MIN_ID_PREFIX = 8


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes as lowercase hex."""
    return secrets.token_hex(nbytes)


def new_job_id() -> str:
    return random_hex(16)


def new_instance_id() -> str:
    return random_hex(16)


def new_engine_instance_id() -> str:
    return random_hex(16)


def new_auth_token() -> str:
    return random_hex(32)


def looks_like_instance_id(text: str) -> bool:
    """Exactly 32 hex characters, either case."""
    return bool(_INSTANCE_ID.match(text))


def normalize_id_prefix(raw: str | None) -> str | None:
    """Validate an `id_prefix` query value; None means "no filter".

    Raises a 400 `invalid id_prefix` with the SPEC's details when it is too short or not hex.
    """
    prefix = (raw or "").strip()
    if not prefix:
        return None
    if len(prefix) < MIN_ID_PREFIX:
        raise invalid_argument(
            "invalid id_prefix", f"id_prefix must be at least {MIN_ID_PREFIX} hex characters"
        )
    if not _HEX.match(prefix):
        raise invalid_argument("invalid id_prefix", "id_prefix must be hex")
    return prefix.lower()
