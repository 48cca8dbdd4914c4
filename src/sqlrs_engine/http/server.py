"""The Cheroot WSGI server: binding, a thread pool sized for streams, clean stop.

Every open NDJSON stream (events, runs) holds one worker thread for as long as it lasts, so
the pool is sized by configuration (`http.threads`, default 64) rather than Cheroot's 10.
Cheroot also needs to tell our stream generators when a client has gone away; the gateway
below exposes the client socket to the app under `sqlrs.socket` for that.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from cheroot import wsgi

log = logging.getLogger(__name__)

SOCKET_KEY = "sqlrs.socket"


class _SocketGateway(wsgi.Gateway_10):
    """WSGI 1.0 gateway that also passes the connection's socket in the environ."""

    def get_environ(self) -> dict[str, Any]:  # type: ignore[override]
        environ: dict[str, Any] = super().get_environ()  # type: ignore[no-untyped-call]
        environ[SOCKET_KEY] = self.req.conn.socket
        return environ


def parse_listen(value: str) -> tuple[str, int]:
    """Split `host:port` (`[::1]:0` allowed); raises ValueError with a useful message."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"invalid --listen {value!r}: expected host:port")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid --listen {value!r}: port out of range")
    host = host.strip("[]") or "127.0.0.1"
    return host, port


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback address literals (`127.0.0.0/8`, `::1`).

    Any other name counts as non-loopback: it may resolve to a public address, now or later.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def endpoint_text(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets (`[::1]:8080`) so it splits unambiguously."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HttpServer:
    """A bound Cheroot server running in a background thread."""

    def __init__(
        self,
        app: Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]],
        host: str,
        port: int,
        threads: int,
    ) -> None:
        self._server = wsgi.Server((host, port), app, numthreads=threads, max=threads)
        self._server.gateway = _SocketGateway
        self._server.shutdown_timeout = 2
        self._server.server_name = "sqlrs-engine"
        self._thread: threading.Thread | None = None

    def bind(self) -> tuple[str, int]:
        """Bind and listen now (so the port is known before engine.json is written)."""
        self._server.prepare()
        bound = self._server.bind_addr
        sock: socket.socket = self._server.socket
        host, port = sock.getsockname()[:2]
        return (host if isinstance(bound, tuple) else str(bound)), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="http-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._server.serve()
        except Exception:
            log.exception("http server failed")
            raise

    def stop(self) -> None:
        self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
