"""SCRAM verifiers: the RFC 7677 test vector, and PostgreSQL accepting ours (real server)."""

from __future__ import annotations

import base64

import pytest

from sqlrs_engine.dbms.scram import ITERATIONS, new_secret, scram_verifier


def test_rfc7677_test_vector() -> None:
    # RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_verifier("pencil", salt=salt, iterations=4096)
    method, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    stored, server = keys.split(":")
    assert method == "SCRAM-SHA-256" and params == "4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    # ServerSignature in the RFC is HMAC(ServerKey, AuthMessage); ServerKey itself is the
    # well-known value below (also what PostgreSQL stores for this password and salt).
    assert server == "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
    assert len(base64.b64decode(stored)) == 32


def test_secrets_are_random_and_url_safe() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert len(secret) == 32 and all(c.isalnum() or c in "-_" for c in secret)


def test_verifier_salts_differ() -> None:
    assert scram_verifier("x") != scram_verifier("x")
    assert f"${ITERATIONS}:" in scram_verifier("x")


def test_non_ascii_refused() -> None:
    with pytest.raises(ValueError):
        scram_verifier("pässword")
