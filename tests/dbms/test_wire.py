"""The in-process trusted query over a Unix socket (dbms/wire.py), table-driven.

A scripted peer on a real Unix socket plays the server, to produce on demand what a real
server does only at moments a test cannot pick (starting up, asking for a password). The
runtime contract suite (tests/runtime/test_contract.py) runs the same code against real
servers on both runtimes (readiness, password, connection counts).
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from sqlrs_engine.dbms import wire


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


AUTH_OK = msg(b"R", struct.pack("!I", 0))
READY = msg(b"Z", b"I")
PARAM = msg(b"S", b"server_version\x0015\x00")


def row(*values: bytes | None) -> bytes:
    body = struct.pack("!H", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return msg(b"D", body)


def error(code: bytes, text: bytes) -> bytes:
    return msg(b"E", b"SFATAL\x00C" + code + b"\x00M" + text + b"\x00\x00")


CASES = [
    (
        "rows",
        [
            AUTH_OK + PARAM + READY,
            row(b"1", None) + row(b"x", b"") + msg(b"C", b"SELECT 2\0") + READY,
        ],
        [["1", None], ["x", ""]],
        None,
    ),
    ("starting", [error(b"57P03", b"the database system is starting up")], None, "57P03"),
    (
        "sql-error",
        [AUTH_OK + READY, error(b"42P01", b"relation does not exist") + READY],
        None,
        "42P01",
    ),
    ("password", [msg(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0")], None, None),
    ("closed", [AUTH_OK], None, None),
]


@pytest.mark.parametrize(
    ("replies", "rows", "sqlstate"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_query(
    tmp_path: Path, replies: list[bytes], rows: list[list[str | None]] | None, sqlstate: str | None
) -> None:
    path = wire.socket_path(tmp_path, 5432)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                for reply in replies:
                    if not conn.recv(65536):
                        return
                    conn.sendall(reply)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        if rows is not None:
            assert wire.query(tmp_path, 5432, "sqlrs", "postgres", "select") == rows
        else:
            with pytest.raises(wire.WireError) as caught:
                wire.query(tmp_path, 5432, "sqlrs", "postgres", "select", timeout=5)
            assert caught.value.sqlstate == sqlstate
            assert caught.value.starting == (sqlstate == wire.CANNOT_CONNECT_NOW)
        thread.join(5)


def test_no_server_is_a_wire_error(tmp_path: Path) -> None:
    with pytest.raises(wire.WireError, match="No such file"):
        wire.query(tmp_path, 5432, "sqlrs", "postgres", "select 1")
