"""The startup-packet ping the docker runtime polls a starting server with (table-driven)."""

from __future__ import annotations

import struct

import pytest

from sqlrs_engine.dbms.ping import Ping, classify, ping, startup_packet


def test_startup_packet_layout() -> None:
    packet = startup_packet("sqlrs", "postgres")
    assert struct.unpack("!I", packet[:4])[0] == len(packet)
    assert struct.unpack("!I", packet[4:8])[0] == 196608
    assert packet[8:] == b"user\0sqlrs\0database\0postgres\0\0"


@pytest.mark.parametrize(
    ("reply", "result"),
    [
        (b"", Ping.NO_RESPONSE),
        (b"R\0\0\0\x08\0\0\0\0", Ping.OK),  # AuthenticationOk (trust)
        (b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0", Ping.OK),  # a password is asked: up
        (b"E\0\0\0\x30SFATAL\0C57P03\0Mthe database system is starting up\0\0", Ping.REJECT),
        (b"E\0\0\0\x20SFATAL\0C28000\0Mno pg_hba.conf entry\0\0", Ping.OK),
        (b"HTTP/1.1 400", Ping.NO_RESPONSE),
    ],
    ids=["closed", "auth-ok", "scram", "starting-up", "other-error", "not-postgres"],
)
def test_classify(reply: bytes, result: Ping) -> None:
    assert classify(reply) is result


def test_nothing_listening_is_no_response() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        assert ping("127.0.0.1", port, "sqlrs", "postgres") is Ping.NO_RESPONSE
