"""The stream loop behind a real Cheroot server: streams do not hold workers, clients that
leave are noticed, slow readers are waited for, the end is a proper chunked end."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from sqlrs_engine.http.handoff import stream_response
from sqlrs_engine.http.server import HttpServer

WAIT = 10.0


class Source:
    """A stream source fed by the test: `feed` lines, `finish`, and see whether it closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[bytes] = []
        self._done = False
        self._wake: Callable[[], None] = lambda: None
        self.closed = threading.Event()

    def attach(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        wake()

    def pull(self, limit: int) -> tuple[list[bytes], bool]:
        with self._lock:
            lines, self._lines = self._lines[:limit], self._lines[limit:]
            return lines, self._done and not self._lines

    def feed(self, *lines: bytes) -> None:
        with self._lock:
            self._lines.extend(lines)
        self._wake()

    def finish(self) -> None:
        with self._lock:
            self._done = True
        self._wake()

    def close(self) -> None:
        self.closed.set()


class StreamingApp:
    """`/stream` opens a stream on a new `Source`; anything else answers `ok` at once."""

    def __init__(self) -> None:
        self.sources: list[Source] = []
        self.opened = threading.Semaphore(0)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/stream":
            source = Source()
            self.sources.append(source)
            self.opened.release()
            start_response("200 OK", [("Content-Type", "application/x-ndjson")])
            return stream_response(source)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]

    def wait_opened(self, count: int) -> None:
        for _ in range(count):
            assert self.opened.acquire(timeout=WAIT)


@pytest.fixture
def served() -> Iterator[tuple[StreamingApp, HttpServer, tuple[str, int]]]:
    app = StreamingApp()
    server = HttpServer(app, "127.0.0.1", 0, threads=2)
    address = server.bind()
    server.start()
    try:
        yield app, server, address
    finally:
        server.stop()


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def open_stream(address: tuple[str, int]) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(*address, timeout=WAIT)
    connection.request("GET", "/stream")
    return connection.getresponse()


def test_streams_do_not_hold_workers(
    served: tuple[StreamingApp, HttpServer, tuple[str, int]],
) -> None:
    """Two workers, twenty idle streams, and a short request still gets its answer."""
    app, server, address = served
    streams = [open_stream(address) for _ in range(20)]
    app.wait_opened(20)
    wait_until(lambda: server.stream_loop.open_streams == 20)
    connection = http.client.HTTPConnection(*address, timeout=WAIT)
    connection.request("GET", "/health")
    assert connection.getresponse().read() == b"ok\n"
    for source in app.sources:
        source.feed(b'{"n":1}\n')
        source.finish()
    for response in streams:
        assert response.status == 200
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.getheader("Connection") == "close"
        assert response.read() == b'{"n":1}\n', "a complete chunked body"
    assert all(source.closed.wait(WAIT) for source in app.sources)


def test_lines_arrive_as_they_are_fed(
    served: tuple[StreamingApp, HttpServer, tuple[str, int]],
) -> None:
    app, _server, address = served
    response = open_stream(address)
    app.wait_opened(1)
    (source,) = app.sources
    for n in range(3):
        source.feed(b"%d\n" % n)
        assert response.readline() == b"%d\n" % n
    source.finish()
    assert response.read() == b""


def test_a_client_that_leaves_closes_the_source(
    served: tuple[StreamingApp, HttpServer, tuple[str, int]],
) -> None:
    app, server, address = served
    with socket.create_connection(address, timeout=WAIT) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        app.wait_opened(1)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
    assert app.sources[0].closed.wait(WAIT), "noticed without any write"
    wait_until(lambda: server.stream_loop.open_streams == 0)


def test_a_reader_that_pauses_longer_than_the_socket_timeout_gets_everything(
    served: tuple[StreamingApp, HttpServer, tuple[str, int]],
) -> None:
    """Cheroot's 10 s socket timeout does not apply: a paused reader loses nothing."""
    app, _server, address = served
    response = open_stream(address)
    app.wait_opened(1)
    (source,) = app.sources
    line = b"x" * 1023 + b"\n"
    source.feed(*([line] * 4096))  # 4 MiB: far more than the socket buffers hold
    source.finish()
    time.sleep(11)
    assert response.read() == line * 4096
    assert source.closed.wait(WAIT)


def test_stop_ends_open_streams(
    served: tuple[StreamingApp, HttpServer, tuple[str, int]],
) -> None:
    app, server, address = served
    response = open_stream(address)
    app.wait_opened(1)
    server.stream_loop.stop()
    assert response.read() == b"", "a complete (empty) chunked body"
    assert app.sources[0].closed.wait(WAIT)


def test_a_head_request_gets_headers_only(
    served: tuple[StreamingApp, HttpServer, tuple[str, int]],
) -> None:
    app, _server, address = served
    connection = http.client.HTTPConnection(*address, timeout=WAIT)
    connection.request("HEAD", "/stream")
    response = connection.getresponse()
    assert response.status == 200
    assert response.read() == b""
    assert app.sources[0].closed.wait(WAIT)


def test_a_burst_of_connects_is_absorbed(
    served: tuple[StreamingApp, HttpServer, tuple[str, int]],
) -> None:
    """256 connects at once, before anyone accepts: the backlog holds them, nobody is reset."""
    _app, _server, address = served
    barrier = threading.Barrier(256)
    failures: list[BaseException] = []
    answers: list[bytes] = []

    def client() -> None:
        try:
            barrier.wait(WAIT)
            connection = http.client.HTTPConnection(*address, timeout=60)
            connection.request("GET", "/health")
            answers.append(connection.getresponse().read())
            connection.close()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=client) for _ in range(256)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert failures == []
    assert answers == [b"ok\n"] * 256
