"""Free TCP ports on 127.0.0.1 for PostgreSQL servers.

A port is "free" when the kernel hands it out for a bind to `127.0.0.1:0` and no server of
this process holds it (the reserved set, under a lock, so concurrent starts in this process
never get the same port). Between the probe and PostgreSQL's own bind another process can
still take the port: the start path detects that in the server log and retries with a new
port (`runtime/host.py`).

One allocator is shared by every `HostRuntime` of the process (`SHARED_PORTS`), so a second
runtime object (an "engine restart" in tests) cannot hand out a port the first one uses.
"""

from __future__ import annotations

import socket
import threading

LOOPBACK = "127.0.0.1"


class PortAllocator:
    """Thread-safe allocation of loopback ports with a reserved set."""

    def __init__(self, host: str = LOOPBACK, attempts: int = 200) -> None:
        self.host = host
        self.attempts = attempts
        self._lock = threading.Lock()
        self._reserved: set[int] = set()

    def allocate(self) -> int:
        """A port that is free right now and not reserved; it is reserved until `release`."""
        with self._lock:
            for _ in range(self.attempts):
                port = self._probe()
                if port not in self._reserved:
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
