"""Who host client programs run as (runtime/clients.py, SPEC §0.9)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from sqlrs_engine.process import RunAs
from sqlrs_engine.runtime.clients import FALLBACK_USER, client_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root switches users")


@dataclass
class WithUser:
    user: RunAs


class WithoutUser:
    """A runtime without a server user on the host (a container runtime)."""


def test_the_runtimes_server_user_first() -> None:
    daemon = RunAs.from_name("daemon")
    assert client_user(WithUser(daemon), "postgres") == daemon


@pytest.mark.parametrize(
    ("configured", "expected"),
    [(None, "postgres"), ("daemon", "daemon"), ("no-such-user-sqlrs", FALLBACK_USER)],
)
def test_without_one_the_configured_user_else_nobody(configured: str | None, expected: str) -> None:
    user = client_user(WithoutUser(), configured)
    assert user is not None and user.name == expected and user.uid != 0


def test_a_root_server_user_is_never_used() -> None:
    assert client_user(WithUser(RunAs.from_name("root"))).name == "postgres"  # type: ignore[union-attr]
