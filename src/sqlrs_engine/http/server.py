"""The Cheroot WSGI server: binding, a small worker pool, streams handed to one loop, clean stop.

Workers only run short requests. A streaming response (events, runs) is recognised by its
`Handoff` first chunk: the gateway sends its headers and gives the connection to the
`StreamLoop`, so an open stream never holds a worker (see `http/handoff.py`). The listen
backlog is large enough for a burst of simultaneous connects (Cheroot's default is 5).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from cheroot import wsgi

from sqlrs_engine.http.handoff import Handoff
from sqlrs_engine.http.stream_loop import StreamLoop

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
"""`listen()` backlog; the kernel caps it at `net.core.somaxconn` (4096 on current Linux)."""


class _Server(wsgi.Server):
    """Cheroot's WSGI server with the loop that serves handed-off streams."""

    stream_loop: StreamLoop


class _StreamingGateway(wsgi.Gateway_10):
    """WSGI 1.0 gateway that hands streaming responses to the stream loop."""

    def respond(self) -> None:
        server: _Server = self.req.server
        response = server.wsgi_app(self.env, self.start_response)
        handed_off = False
        try:
            for chunk in filter(None, response):
                if isinstance(chunk, Handoff):
                    handed_off = self._hand_off(server.stream_loop, chunk, response)
                    return
                if not isinstance(chunk, bytes):
                    raise ValueError("WSGI Applications must yield bytes")
                self.write(chunk)
        finally:
            if not handed_off:
                self.req.ensure_headers_sent()
                close = getattr(response, "close", None)
                if close is not None:
                    close()

    def _hand_off(self, loop: StreamLoop, handoff: Handoff, response: Iterable[bytes]) -> bool:
        """Send the headers and give the connection to the loop; False for HEAD (no body)."""
        req = self.req
        if req.method == b"HEAD":
            return False
        req.close_connection = True  # the loop ends the body by closing: `Connection: close`
        req.ensure_headers_sent()
        chunked = bool(req.chunked_write)
        req.chunked_write = False  # the terminator is the loop's to write
        req.conn.linger = True  # Cheroot must neither shut down nor close the socket now
        handoff.taken = True
        loop.adopt(req.conn.socket, handoff, response, chunked)
        return True


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
    """A bound Cheroot server running in a background thread, plus its stream loop."""

    def __init__(
        self,
        app: Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]],
        host: str,
        port: int,
        threads: int,
    ) -> None:
        self.stream_loop = StreamLoop()
        self._server = _Server((host, port), app, numthreads=threads, max=threads)
        self._server.stream_loop = self.stream_loop
        self._server.gateway = _StreamingGateway
        self._server.request_queue_size = LISTEN_BACKLOG
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
        self.stream_loop.start()
        self._thread = threading.Thread(target=self._serve, name="http-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._server.serve()
        except Exception:
            log.exception("http server failed")
            raise

    def stop(self) -> None:
        self.stream_loop.stop()
        self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
