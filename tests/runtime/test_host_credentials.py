"""Per-instance credentials of the host runtime (SPEC §0.9), tried as another local user.

`nobody` stands for any other account on the machine: it must get nothing without the DSN's
password, nothing with another instance's DSN, nothing through the private Unix socket, and
exactly its own instance with its own DSN.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlrs_engine import process
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.process import RunAs
from sqlrs_engine.runtime.base import ServerHandle
from sqlrs_engine.runtime.host import HostRuntime

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to `nobody` needs root")


def _as_nobody(*args: str, env: dict[str, str] | None = None) -> process.RunResult:
    """psql as `nobody`, never prompting for a password (`-w`)."""
    entry = pwd.getpwnam("nobody")
    nobody = RunAs("nobody", entry.pw_uid, entry.pw_gid, (), "/")
    base_env = {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"}
    return process.run(
        ["psql", "-X", "-w", "-At", "-c", "select current_user", *args],
        user=nobody,
        env={**base_env, **(env or {})},
        inherit_env=False,
        cwd="/",
        timeout=30,
    )


@pytest.fixture
def two_servers(
    host_runtime: HostRuntime, resolved_image: str, clone: object
) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    make = clone  # the conftest fixture: a fresh copy of the base per call
    assert callable(make)
    first = host_runtime.start(resolved_image, make(), lambda _l: None, CancelToken())
    try:
        second = host_runtime.start(resolved_image, make(), lambda _l: None, CancelToken())
        try:
            yield first, second
        finally:
            host_runtime.kill(second)
    finally:
        host_runtime.kill(first)


def test_own_dsn_works_other_dsn_and_no_password_fail(
    two_servers: tuple[ServerHandle, ServerHandle],
) -> None:
    first, second = two_servers
    assert first.password and second.password and first.password != second.password

    own = _as_nobody(first.dsn)
    assert own.exit_code == 0 and own.output.strip() == "sqlrs", own.output

    no_password = _as_nobody(first.bare_dsn)
    assert no_password.exit_code != 0
    assert "no password supplied" in no_password.output

    # Another instance's DSN, pointed at this instance: its password is not this one's.
    foreign = f"postgres://sqlrs:{second.password}@127.0.0.1:{first.port}/postgres"
    refused = _as_nobody(foreign)
    assert refused.exit_code != 0
    assert "password authentication failed" in refused.output

    wrong_env = _as_nobody(first.bare_dsn, env={"PGPASSWORD": second.password})
    assert wrong_env.exit_code != 0


def test_socket_directory_is_closed_to_other_users(
    two_servers: tuple[ServerHandle, ServerHandle],
) -> None:
    first, _ = two_servers
    assert first.socket_dir is not None
    st = first.socket_dir.stat()
    assert (st.st_mode & 0o777) == 0o700 and st.st_uid == pwd.getpwnam("postgres").pw_uid
    result = _as_nobody("-h", str(first.socket_dir), "-p", str(first.port), "-U", "sqlrs")
    assert result.exit_code != 0
    assert "Permission denied" in result.output


def test_password_survives_restart_and_state_files_hold_no_plaintext(
    host_runtime: HostRuntime, resolved_image: str, clone: object
) -> None:
    make = clone
    assert callable(make)
    data_dir: Path = make()
    handle = host_runtime.start(resolved_image, data_dir, lambda _l: None, CancelToken())
    secret = handle.password
    assert secret is not None
    host_runtime.stop(handle, lambda _l: None)
    again = host_runtime.start(
        resolved_image, data_dir, lambda _l: None, CancelToken(), handle.port, secret
    )
    try:
        assert again.password == secret
        assert _as_nobody(again.dsn).exit_code == 0
        assert handle.socket_dir is not None and again.socket_dir is not None
        server_log = (again.socket_dir / "postgres.log").read_text(errors="replace")
        assert secret not in server_log and "SCRAM-SHA-256$" not in server_log
        for path in data_dir.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    finally:
        host_runtime.kill(again)
