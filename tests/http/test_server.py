"""`--listen` parsing and the Cheroot server: bind, serve one request, expose the socket, stop."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterable
from typing import Any

import bottle
import pytest

from sqlrs_engine.http.jsonio import json_line
from sqlrs_engine.http.params import json_object_body
from sqlrs_engine.http.server import HttpServer, endpoint_text, is_loopback, parse_listen


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("localhost:5432", ("localhost", 5432)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:0", ("::", 0)),
        (":5000", ("127.0.0.1", 5000)),  # no host: loopback, never all interfaces
        ("[]:5000", ("127.0.0.1", 5000)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("127.0.0.1", "expected host:port"),
        ("", "expected host:port"),
        ("127.0.0.1:", "expected host:port"),
        ("[::1]", "expected host:port"),
        ("localhost:http", "expected host:port"),
        ("localhost:-1", "expected host:port"),
        ("localhost:+80", "expected host:port"),
        ("localhost: 80", "expected host:port"),
        ("localhost:80x", "expected host:port"),
        ("localhost:65536", "port out of range"),
        ("localhost:99999999999", "port out of range"),
        ("localhost:\u00b2", "expected host:port"),  # isdigit() but not a port
        ("localhost:\u0668\u0660", "expected host:port"),  # Arabic-Indic digits
    ],
)
def test_parse_listen_refuses_with_a_useful_message(value: str, reason: str) -> None:
    """The CLI prints the message as is: it must name the flag, the value and the problem."""
    with pytest.raises(ValueError) as raised:
        parse_listen(value)
    assert str(raised.value) == f"invalid --listen {value!r}: {reason}"


# -- HttpServer ----------------------------------------------------------------------------


def http_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "http-server"]


def test_server_serves_a_request_and_stops() -> None:
    """Bind on an ephemeral port, answer one request, stop."""
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen["peer"] = (environ["REMOTE_ADDR"], int(environ["REMOTE_PORT"]))
        seen["path"] = environ["PATH_INFO"]
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return [b"hello\n"]

    before = set(http_threads())
    server = HttpServer(app, "127.0.0.1", 0, threads=2)
    host, port = server.bind()
    assert host == "127.0.0.1"
    assert port > 0
    server.start()
    try:
        (thread,) = set(http_threads()) - before
        connection = http.client.HTTPConnection(host, port, timeout=10)
        try:
            connection.request("GET", "/probe")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b"hello\n")
            client_address = connection.sock.getsockname()
        finally:
            connection.close()
    finally:
        server.stop()
    assert seen["path"] == "/probe"
    assert seen["peer"] == client_address
    assert not thread.is_alive(), "stop() ends the serving thread"


def test_stop_without_start_is_harmless() -> None:
    """Engine start may fail after binding; stopping then must not hang or raise."""
    server = HttpServer(lambda environ, start_response: [], "127.0.0.1", 0, threads=1)
    server.bind()
    server.stop()


def test_a_chunked_request_body_reaches_the_apps_json_parser() -> None:
    """`Transfer-Encoding: chunked` is valid HTTP/1.1 (curl, requests with a generator body).

    Cheroot de-chunks `wsgi.input` but leaves the header, so Bottle's `request.body` would
    parse the framing again (a 400 HTML page); `json_object_body` reads `wsgi.input` itself.
    """
    app = bottle.Bottle()

    def echo() -> bytes:
        return json_line(json_object_body(bottle.request))

    app.route("/echo", method="POST", callback=echo)

    server = HttpServer(app, "127.0.0.1", 0, threads=2)
    host, port = server.bind()
    server.start()
    try:
        connection = http.client.HTTPConnection(host, port, timeout=10)
        try:
            connection.request("POST", "/echo", body=iter([b'{"a":', b"1}"]), encode_chunked=True)
            response = connection.getresponse()
            status, body = response.status, response.read()
        finally:
            connection.close()
    finally:
        server.stop()
    assert (status, body) == (200, b'{"a":1}\n')


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("example.com", False),
        ("127.0.0.1.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [("127.0.0.1", 80, "127.0.0.1:80"), ("::1", 8080, "[::1]:8080"), ("::", 1, "[::]:1")],
)
def test_endpoint_text_brackets_ipv6(host: str, port: int, text: str) -> None:
    assert endpoint_text(host, port) == text
    assert parse_listen(text) == (host, port)
