"""Free TCP ports on 127.0.0.1 for PostgreSQL servers.

A port is "free" when the kernel hands it out for a bind to `127.0.0.1:0` and no server of
this process holds it (the reserved set, under a lock, so concurrent starts in this process
never get the same port). Between the probe and PostgreSQL's own bind another process can
still take the port: the start path detects that in the server log and retries with a new
port (`runtime/host.py`).

One allocator is shared by every `HostRuntime` of the process (`SHARED_PORTS`), so a second
runtime object (an "engine restart" in tests) cannot hand out a port the first one uses.

A port can also be free to bind and still not ours to serve: a container engine that
publishes a container's port with a NAT rule (Podman's netavark, Docker without its userland
proxy) holds no socket on the host, yet every connection to `127.0.0.1:<port>` is redirected
into the container. `diverted` tells, once a server listens, whether connections really reach
it; a diverted port is retried on another one and avoided from then on (`avoid`).
"""

from __future__ import annotations

import socket
import struct
import threading

LOOPBACK = "127.0.0.1"


class PortAllocator:
    """Thread-safe allocation of loopback ports with a reserved set."""

    def __init__(self, host: str = LOOPBACK, attempts: int = 200) -> None:
        self.host = host
        self.attempts = attempts
        self._lock = threading.Lock()
        self._reserved: set[int] = set()
        self._avoided: set[int] = set()

    def allocate(self) -> int:
        """A port that is free right now, not reserved and not avoided; it is reserved until
        `release`."""
        with self._lock:
            for _ in range(self.attempts):
                port = self._probe()
                if port not in self._reserved and port not in self._avoided:
                    self._reserved.add(port)
                    return port
        raise OSError(f"no free TCP port on {self.host} after {self.attempts} attempts")

    def reserve(self, port: int) -> bool:
        """Mark a known port (an adopted server's) as used; False if it already was."""
        with self._lock:
            if port in self._reserved:
                return False
            self._reserved.add(port)
            return True

    def release(self, port: int | None) -> None:
        """Give a port back (no-op for None or an unreserved port)."""
        if port is None:
            return
        with self._lock:
            self._reserved.discard(port)

    def avoid(self, port: int) -> None:
        """Never hand out `port` again in this process: connections to it were diverted
        elsewhere (`diverted`). A handful of ports at most, so the set is never trimmed."""
        with self._lock:
            self._avoided.add(port)

    def avoided(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._avoided)

    def is_reserved(self, port: int) -> bool:
        with self._lock:
            return port in self._reserved

    def reserved(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._reserved)

    def _probe(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, 0))
            port: int = sock.getsockname()[1]
            return port


SHARED_PORTS = PortAllocator()
"""The process-wide allocator used by default."""


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether PostgreSQL could listen on `host:port` right now (a probe, racy by nature).

    PostgreSQL binds with SO_REUSEADDR, so a port whose only users are TIME_WAIT sockets
    (the connections of a killed server) is free for it; the probe binds the same way, or a
    restarted server would move to another port — and its DSN break — for no reason.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def diverted(port: int, host: str = LOOPBACK, timeout: float = 2.0) -> str | None:
    """Why connections to `host:port` do not reach a listener of this network namespace,
    or None when they do. Call it while a server of ours listens there.

    One connection, closed at once without a byte (PostgreSQL logs nothing for that): it
    must be refused by nobody, and its other end — the accepted (or half-open) socket, which
    exists before `connect` returns — must be a socket of this namespace. A NAT rule that
    redirects the port into a container fails both ways: refused when nothing listens in the
    container, or answered from the container's namespace when something does.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            client_host, client_port = sock.getsockname()[:2]
            if _connected_here(local=(host, port), remote=(client_host, client_port)):
                return None
            return "connections to it are answered by another listener (a NAT rule redirects them)"
    except ConnectionRefusedError:
        return "connections to it are refused although the server listens on it"
    except OSError as error:
        return f"cannot connect to it: {error}"


# sock_diag (linux/sock_diag.h, linux/inet_diag.h): one exact-socket lookup, ~10 µs. Reading
# /proc/net/tcp instead walks the kernel's whole TCP hash table: 10+ ms on a busy machine.
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_TCP_LISTEN = 10
_NO_COOKIE = 0xFFFFFFFF


def _connected_here(local: tuple[str, int], remote: tuple[str, int]) -> bool:
    """Whether this namespace has a TCP socket `local` ↔ `remote` (the accepted end of our
    connection). The kernel's exact lookup falls back to a listener on `local` when there is
    no such connection, so a LISTEN answer means "no"."""
    sockid = (
        struct.pack("!HH", local[1], remote[1])
        + socket.inet_aton(local[0]).ljust(16, b"\0")
        + socket.inet_aton(remote[0]).ljust(16, b"\0")
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    )
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as diag:
            diag.settimeout(2.0)
            diag.send(header + request)
            answer = diag.recv(8192)
    except (OSError, AttributeError):  # no sock_diag (not Linux): the connection is all we know
        return True
    if len(answer) < 24 or struct.unpack_from("=H", answer, 4)[0] == _NLMSG_ERROR:
        return False  # ENOENT: nothing with that address here
    state = answer[17]
    found_local, found_remote = struct.unpack_from("!HH", answer, 20)
    return state != _TCP_LISTEN and (found_local, found_remote) == (local[1], remote[1])
