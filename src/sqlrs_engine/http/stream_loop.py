"""One thread that serves every open NDJSON stream (events, runs) with a selector.

A stream handed off by the gateway (`http/handoff.py`) costs a selector entry and a small
buffer, not a thread. The loop:

- **pulls** lines from a stream's source when the source wakes it (a new event, a run's
  output) and its send buffer is nearly empty, so a slow reader never makes the engine hold
  more than about `HIGH_WATER` bytes for it: job events wait in the job's (bounded) mailbox, a
  run's program is blocked by its bounded channel;
- **writes** without blocking: a reader that pauses (a pager, a suspended process) simply
  leaves bytes in the buffer until its socket is writable again, however long that takes;
- **notices a client that leaves** at once (the socket becomes readable with EOF or an error)
  and a peer that vanished without closing through TCP keepalive (about 2 minutes);
- **ends** a finished stream by first having the response closed, which runs the
  middlewares' clean-up and releases the source, then writing the chunked terminator and
  closing the connection (streams are answered with `Connection: close`). The clean-up thus
  happens before the client sees the end, as under a plain WSGI server (an events stream's
  end may run job retention, which a client reading the job list next expects to be done).
  It runs on a separate closer thread, since it may wait, and the loop must never wait.

At shutdown every stream is ended the same way, without waiting for slow readers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlrs_engine.http.handoff import PULL_LIMIT, Handoff

log = logging.getLogger(__name__)

HIGH_WATER = 64 * 1024
"""A stream pulls from its source only while less than this is waiting to be sent."""

SEND_LIMIT = 256 * 1024
"""Bytes passed to one `send` call (one stream never monopolises the loop)."""

KEEPALIVE_IDLE_SECONDS = 60
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_PROBES = 6
"""TCP keepalive on streamed connections: a vanished peer is noticed in about 2 minutes."""

_TERMINATOR = b"0\r\n\r\n"


@dataclass(eq=False)
class _Stream:
    sock: socket.socket
    handoff: Handoff
    response: Iterable[bytes]
    chunked: bool
    out: bytearray = field(default_factory=bytearray)
    finished: bool = False
    """The source is exhausted (its clean-up has been started)."""
    cleaned: bool = False
    """The response is closed: the terminator may go out."""
    terminated: bool = False
    """The terminator is in `out`."""
    response_closed: bool = False
    events: int = 0
    """What the selector watches now."""


def _frame(lines: list[bytes], chunked: bool) -> bytes:
    body = b"".join(lines)
    if not chunked:
        return body
    return b"%x\r\n%s\r\n" % (len(body), body)


def enable_keepalive(sock: socket.socket) -> None:
    """Let TCP notice a peer that vanished without closing (no-op on Unix sockets)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


class StreamLoop:
    """The selector loop; `adopt` and `stop` may be called from any thread."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._new: list[_Stream] = []
        self._woken: set[_Stream] = set()
        self._signalled = False
        self._stopping = False
        self._streams: set[_Stream] = set()
        self._thread: threading.Thread | None = None
        self._closer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="http-stream-close"
        )

    # -- any thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="http-streams", daemon=True)
        self._thread.start()

    def adopt(
        self, sock: socket.socket, handoff: Handoff, response: Iterable[bytes], chunked: bool
    ) -> None:
        """Serve `handoff.source` on `sock` (headers already sent) until it ends."""
        sock.setblocking(False)
        enable_keepalive(sock)
        stream = _Stream(sock, handoff, response, chunked)
        # Attached first: a wake-up before the loop knows the stream is harmless, since the
        # loop pumps every new stream once anyway.
        handoff.source.attach(lambda: self._wake(stream))
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self._new.append(stream)
        if stopping:
            self._end_now(stream)
            return
        self._signal()

    def stop(self, timeout: float = 5.0) -> None:
        """End every stream and stop the loop."""
        with self._lock:
            self._stopping = True
        self._signal()
        if self._thread is None:
            self._shutdown()  # never started: only release the selector and the wake pair
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("stream loop did not stop within %.0f s", timeout)

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams) + len(self._new)

    def _wake(self, stream: _Stream) -> None:
        with self._lock:
            self._woken.add(stream)
        self._signal()

    def _signal(self) -> None:
        with self._lock:
            if self._signalled:
                return
            self._signalled = True
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -- the loop thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                ready = self._selector.select()
                with contextlib.suppress(BlockingIOError, OSError):
                    self._wake_r.recv(4096)
                with self._lock:
                    self._signalled = False
                    new, self._new = self._new, []
                    woken, self._woken = self._woken, set()
                    stopping = self._stopping
                for stream in new:
                    self._streams.add(stream)
                    self._watch(stream, selectors.EVENT_READ)
                    woken.add(stream)
                if stopping:
                    break
                for key, mask in ready:
                    stream = key.data
                    if stream is None or stream not in self._streams:
                        continue
                    if mask & selectors.EVENT_READ and self._client_left(stream):
                        self._close(stream)
                        woken.discard(stream)
                        continue
                    if mask & selectors.EVENT_WRITE:
                        woken.add(stream)
                for stream in woken:
                    if stream in self._streams:
                        self._pump(stream)
        except Exception:
            log.exception("stream loop failed")
        finally:
            self._shutdown()

    def _pump(self, stream: _Stream) -> None:
        """Pull what the source has (while the buffer is low), send what the socket takes."""
        try:
            while True:
                if not stream.finished and len(stream.out) < HIGH_WATER:
                    lines, done = stream.handoff.source.pull(PULL_LIMIT)
                    if lines:
                        stream.out += _frame(lines, stream.chunked)
                    if done:
                        stream.finished = True
                        self._close_response(stream, then=lambda: self._cleaned(stream))
                if stream.cleaned and not stream.terminated:
                    stream.terminated = True
                    if stream.chunked:
                        stream.out += _TERMINATOR
                if not stream.out:
                    break
                sent = stream.sock.send(memoryview(stream.out)[:SEND_LIMIT])
                stream.handoff.bytes_sent += sent
                del stream.out[:sent]
                if stream.out:
                    break  # the socket is full (or this stream had its turn)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(stream)  # the client went away mid-write
            return
        except Exception:
            log.exception("stream source failed")
            self._close(stream)
            return
        if stream.terminated and not stream.out:
            self._close(stream)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if stream.out else 0)
        self._watch(stream, wanted)

    def _cleaned(self, stream: _Stream) -> None:
        stream.cleaned = True
        self._wake(stream)

    def _client_left(self, stream: _Stream) -> bool:
        """The socket is readable: EOF or an error means the client left; data is discarded."""
        try:
            return stream.sock.recv(4096) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _watch(self, stream: _Stream, events: int) -> None:
        if events == stream.events:
            return
        if stream.events:
            self._selector.modify(stream.sock, events, stream)
        else:
            self._selector.register(stream.sock, events, stream)
        stream.events = events

    def _close(self, stream: _Stream) -> None:
        self._streams.discard(stream)
        if stream.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(stream.sock)
            stream.events = 0
        with contextlib.suppress(OSError):
            stream.sock.shutdown(socket.SHUT_RDWR)
        stream.sock.close()
        self._close_response(stream)

    def _close_response(self, stream: _Stream, then: Callable[[], None] | None = None) -> None:
        """Close the response (once) on the closer thread, then call `then` there."""
        if stream.response_closed:
            return
        stream.response_closed = True

        def close() -> None:
            closer: Callable[[], None] | None = getattr(stream.response, "close", None)
            try:
                if closer is not None:
                    closer()
            except Exception:
                log.exception("closing a stream's response failed")
            if then is not None:
                then()

        try:
            self._closer.submit(close)
        except RuntimeError:  # the closer has shut down (engine stop): close right here
            close()

    def _end_now(self, stream: _Stream) -> None:
        """End a stream at shutdown: what fits in the socket now is sent, then it is closed."""
        if stream.chunked and not stream.terminated:
            stream.out += _TERMINATOR
        with contextlib.suppress(OSError):
            stream.sock.send(stream.out)
        self._close(stream)

    def _shutdown(self) -> None:
        """End every stream: what fits in the socket now is sent, then it is closed."""
        with self._lock:
            self._stopping = True
            pending, self._new = self._new, []
        for stream in [*self._streams, *pending]:
            self._end_now(stream)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        self._closer.shutdown(wait=True)
