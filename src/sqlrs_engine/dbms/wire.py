"""One trusted simple query over a server's private Unix socket, without a client program.

Both runtimes talk to a server they just started through its Unix socket, which lives in a
directory only the server user and root can enter and is therefore trusted (`pg.HBA_LINES`):
the readiness probe that also sets the instance's password, and the connection count. Doing
it in-process instead of spawning `psql` saves a process start on every cache hit, and on the
docker runtime it saves an exec through the engine's API (the socket directory is a host
directory bind-mounted into the container, so the host reaches the socket directly).

Only what these callers need of protocol 3.0: a startup packet, `AuthenticationOk` (anything
else — a password request — is refused: the socket must be trusted), one simple `Query`
message (several statements are allowed), the text of every `DataRow`, and the first
`ErrorResponse`. The SQL travels over the socket only, never on a command line.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from pathlib import Path

from sqlrs_engine.dbms.ping import startup_packet

CANNOT_CONNECT_NOW = "57P03"
"""SQLSTATE of a server that is starting up or shutting down."""

MAX_MESSAGE = 1 << 20


class WireError(Exception):
    """The exchange failed: no server (OSError text), a refusal, or an SQL error."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    @property
    def starting(self) -> bool:
        """The server answered "cannot connect now": try again shortly."""
        return self.sqlstate == CANNOT_CONNECT_NOW


def socket_path(socket_dir: Path, port: int) -> Path:
    """Where a server listening on `port` puts its socket in `socket_dir`."""
    return socket_dir / f".s.PGSQL.{port}"


def query(
    socket_dir: Path, port: int, user: str, database: str, sql: str, timeout: float = 10.0
) -> list[list[str | None]]:
    """Run `sql` as one simple query; the rows of every result, as text. Raises WireError."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(socket_path(socket_dir, port)))
            conn.sendall(startup_packet(user, database))
            reader = _Reader(conn)
            _await_ready(reader)
            body = sql.encode() + b"\0"
            conn.sendall(b"Q" + struct.pack("!I", len(body) + 4) + body)
            rows = _collect(reader)
            with contextlib.suppress(OSError):  # the answer is in; a polite goodbye only
                conn.sendall(b"X" + struct.pack("!I", 4))
            return rows
    except OSError as exc:
        raise WireError(str(exc) or type(exc).__name__) from None


class _Reader:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def message(self) -> tuple[bytes, bytes]:
        head = self._exact(5)
        kind = head[:1]
        length = struct.unpack("!I", head[1:])[0]
        if length < 4 or length > MAX_MESSAGE:
            raise WireError(f"bad message length {length} (type {kind!r})")
        return kind, self._exact(length - 4)

    def _exact(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.conn.recv(size - len(data))
            if not chunk:
                raise WireError("the server closed the connection")
            data += chunk
        return bytes(data)


def _error(body: bytes) -> WireError:
    fields = {part[:1]: part[1:].decode(errors="replace") for part in body.split(b"\0") if part}
    return WireError(
        f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', 'unknown error')}", fields.get(b"C")
    )


def _await_ready(reader: _Reader) -> None:
    while True:
        kind, body = reader.message()
        if kind == b"R":
            code = struct.unpack("!I", body[:4])[0]
            if code != 0:
                raise WireError(f"the socket is not trusted (authentication request {code})")
        elif kind == b"E":
            raise _error(body)
        elif kind == b"Z":
            return


def _collect(reader: _Reader) -> list[list[str | None]]:
    rows: list[list[str | None]] = []
    failure: WireError | None = None
    while True:
        kind, body = reader.message()
        if kind == b"D":
            rows.append(_data_row(body))
        elif kind == b"E" and failure is None:
            failure = _error(body)
        elif kind == b"Z":
            if failure is not None:
                raise failure
            return rows


def _data_row(body: bytes) -> list[str | None]:
    count = struct.unpack("!H", body[:2])[0]
    offset = 2
    values: list[str | None] = []
    for _ in range(count):
        size = struct.unpack("!i", body[offset : offset + 4])[0]
        offset += 4
        if size < 0:
            values.append(None)
            continue
        values.append(body[offset : offset + size].decode(errors="replace"))
        offset += size
    return values


__all__ = ["CANNOT_CONNECT_NOW", "WireError", "query", "socket_path"]
