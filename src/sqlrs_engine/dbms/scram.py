"""Per-instance passwords and their SCRAM-SHA-256 verifiers (SPEC §0.9).

Each server the engine starts gets its own random secret. The server is told only the
*verifier* (RFC 5802 / RFC 7677, in PostgreSQL's `pg_authid` format), computed here, so the
plaintext never reaches the server, its log or `pg_stat_statements`; a leaked verifier does not
let anyone log in (it holds `StoredKey = H(ClientKey)`, not `ClientKey`), and brute-forcing the
192-bit secret behind it is out of reach.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ITERATIONS = 4096
"""PostgreSQL's default `scram_iterations` and RFC 7677's minimum. Every client connection
recomputes PBKDF2 with this count (a few milliseconds in libpq), so more would slow down
connection-heavy clients without adding safety to a random 192-bit secret."""

SALT_BYTES = 16
SECRET_BYTES = 24


def new_secret() -> str:
    """A random secret for one instance: 192 bits, URL-safe (it goes into a DSN as is)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def scram_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS
) -> str:
    """`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` for `password`.

    PostgreSQL SASLprep-normalizes passwords; our secrets are plain ASCII, for which that is
    the identity, so the verifier matches what the server would compute itself.
    """
    if not password.isascii():
        raise ValueError("scram_verifier only handles ASCII passwords (no SASLprep here)")
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


__all__ = ["ITERATIONS", "new_secret", "scram_verifier"]
