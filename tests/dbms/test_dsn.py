"""Connection URIs: moving the port keeps every other byte (credentials included)."""

from __future__ import annotations

import pytest

from sqlrs_engine.dbms.dsn import port_of, with_password, with_port


@pytest.mark.parametrize(
    ("dsn", "port", "moved"),
    [
        (
            "postgres://sqlrs@127.0.0.1:5432/postgres",
            6000,
            "postgres://sqlrs@127.0.0.1:6000/postgres",
        ),
        (
            "postgres://sqlrs:s3cr%40t@127.0.0.1:5432/postgres?sslmode=disable",
            7,
            "postgres://sqlrs:s3cr%40t@127.0.0.1:7/postgres?sslmode=disable",
        ),
        ("postgres://sqlrs@127.0.0.1/postgres", 5, "postgres://sqlrs@127.0.0.1:5/postgres"),
        ("postgres://u@[::1]:5432/db", 9, "postgres://u@[::1]:9/db"),
        ("postgres:///postgres", 9, "postgres:///postgres"),
    ],
)
def test_with_port(dsn: str, port: int, moved: str) -> None:
    assert with_port(dsn, port) == moved
    if "@" in moved:
        assert port_of(moved) == port


@pytest.mark.parametrize(
    ("dsn", "port"),
    [("postgres://a@h:12/d", 12), ("postgres://a@h/d", None), ("postgres://a@h:x/d", None)],
)
def test_port_of(dsn: str, port: int | None) -> None:
    assert port_of(dsn) == port


@pytest.mark.parametrize(
    ("dsn", "password", "expected"),
    [
        ("postgres://sqlrs@127.0.0.1:5/postgres", "s", "postgres://sqlrs:s@127.0.0.1:5/postgres"),
        (
            "postgres://sqlrs:old@[::1]:5/postgres?x=1",
            "n",
            "postgres://sqlrs:n@[::1]:5/postgres?x=1",
        ),
        ("postgres:///postgres", "s", "postgres:///postgres"),
        ("postgres://127.0.0.1:5/postgres", "s", "postgres://127.0.0.1:5/postgres"),
    ],
)
def test_with_password(dsn: str, password: str, expected: str) -> None:
    assert with_password(dsn, password) == expected
