"""`PQping` over TCP without a client library: is a PostgreSQL server accepting connections?

Sends one startup packet and reads the first reply byte, which is what `pg_isready` decides on:
an authentication request (any method) or an error other than "cannot connect now" (57P03,
still starting up or shutting down) means the server accepts connections. The docker
benchmark's bare floor (bench/bench_docker.py) waits with it on a published port; the runtimes
wait on their private socket instead (`dbms/wire.py`), where readiness also sets the password.
`startup_packet` is shared with `dbms/wire.py`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from enum import Enum

PROTOCOL_3 = 196608
CANNOT_CONNECT_NOW = b"C57P03\0"


class Ping(Enum):
    OK = "ok"
    REJECT = "reject"  # up, but not accepting connections yet (or any more)
    NO_RESPONSE = "no_response"


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", PROTOCOL_3) + b"".join(
        part.encode() + b"\0" for part in ("user", user, "database", database)
    )
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def classify(reply: bytes) -> Ping:
    """The ping result of the first bytes a server answered a startup packet with."""
    if not reply:
        return Ping.NO_RESPONSE
    if reply[:1] == b"R":
        return Ping.OK
    if reply[:1] == b"E":
        return Ping.REJECT if CANNOT_CONNECT_NOW in reply else Ping.OK
    return Ping.NO_RESPONSE


def ping(host: str, port: int, user: str, database: str, timeout: float = 2.0) -> Ping:
    """One startup exchange with the server at host:port; closes politely (Terminate)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(startup_packet(user, database))
            head = _recv_exact(conn, 5)
            body = b""
            if len(head) == 5:
                length = struct.unpack("!I", head[1:5])[0]
                body = _recv_exact(conn, max(0, min(length - 4, 8192)))
            with contextlib.suppress(OSError):
                conn.sendall(struct.pack("!cI", b"X", 4))
            return classify(head + body)
    except OSError:
        return Ping.NO_RESPONSE


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data
