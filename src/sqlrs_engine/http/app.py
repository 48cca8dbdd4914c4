"""The Bottle application: routes, auth, error rendering.

Order of checks, as the reference engine does it (SPEC §1.6, §1.8): an unknown path is a
plain 404; on a known path authentication comes first (401, empty body), then the method
(405, empty body), then the route itself. Every error a route raises as `ApiError` becomes an
ErrorResponse; anything else is logged and becomes a 500 ErrorResponse, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import bottle
import pykka

from sqlrs_engine.errors import ApiError, internal_error
from sqlrs_engine.http import (
    routes_cache,
    routes_delete,
    routes_jobs,
    routes_pool,
    routes_registry,
    routes_runs,
    routes_system,
)
from sqlrs_engine.http.auth import is_authorized
from sqlrs_engine.http.context import ApiContext
from sqlrs_engine.http.handoff import Handoff
from sqlrs_engine.http.responses import PLAIN_TEXT, error_response, plain_not_found

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/v1/health"})

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def build_app(ctx: ApiContext) -> WsgiApp:
    """The WSGI application serving the whole API."""
    app = bottle.Bottle()
    app.config["catchall"] = False  # errors are rendered by _render_errors, not Bottle's page
    app.install(_render_errors)
    app.error(404)(_not_found)
    app.error(405)(_method_not_allowed)
    routes_system.register(app, ctx)
    routes_cache.register(app, ctx)
    routes_pool.register(app, ctx)
    routes_registry.register(app, ctx)
    routes_jobs.register(app, ctx)
    routes_delete.register(app, ctx)
    routes_runs.register(app, ctx)
    return _access_log(_utf8_path(_authenticate(app, ctx.auth_token)))


def _render_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except bottle.HTTPResponse:
            raise
        except ApiError as error:
            return error_response(error)
        except pykka.Timeout:
            log.error(
                "actor did not answer in time: %s %s", bottle.request.method, bottle.request.path
            )
            return error_response(ApiError(503, "unavailable", "engine is busy, try again"))
        except pykka.ActorDeadError:
            return error_response(ApiError(503, "unavailable", "engine is shutting down"))
        except Exception as error:
            log.exception("unhandled error in %s %s", bottle.request.method, bottle.request.path)
            return error_response(internal_error(details=str(error)))

    return wrapper


def _not_found(error: bottle.HTTPError) -> bytes:
    """An unknown path: the same reply as Go's `http.NotFound` (body and headers)."""
    reply = plain_not_found()
    for name, value in reply.headerlist:
        error.set_header(name, value)
    body: bytes = reply.body
    return body


def _method_not_allowed(error: bottle.HTTPError) -> bytes:
    error.content_type = PLAIN_TEXT
    return b""


def _route_exists(app: bottle.Bottle, environ: dict[str, Any]) -> bool:
    probe = {"PATH_INFO": environ.get("PATH_INFO", ""), "REQUEST_METHOD": "GET"}
    try:
        app.router.match(probe)
    except bottle.HTTPError as error:
        return bool(error.status_code == 405)
    return True


def _utf8_path(app: WsgiApp) -> WsgiApp:
    """Make PATH_INFO valid UTF-8 before Bottle sees it: invalid bytes become U+FFFD.

    Bottle decodes the path as UTF-8 *ignoring* invalid bytes, so `/v1/instances/ab%FFcd`
    addressed instance `abcd` (and a DELETE deleted it). With U+FFFD in its place the id
    names nothing, and the request gets the 404 of an unknown id.
    """

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        raw = environ.get("PATH_INFO", "").encode("latin-1", "replace")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            fixed = raw.decode("utf-8", "replace").encode("utf-8")
            environ["PATH_INFO"] = fixed.decode("latin-1")
        return app(environ, start_response)

    return wsgi


def _authenticate(app: bottle.Bottle, token: str) -> WsgiApp:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if (
            path not in PUBLIC_PATHS
            and _route_exists(app, environ)
            and not is_authorized(environ.get("HTTP_AUTHORIZATION"), token)
        ):
            start_response("401 Unauthorized", [("Content-Length", "0")])
            return [b""]
        result: Iterable[bytes] = app(environ, start_response)
        return result

    return wsgi


def _access_log(app: WsgiApp) -> WsgiApp:
    """Log every request as `http request method=… path=… status=… bytes=… dur=…`."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.monotonic()
        seen: dict[str, Any] = {"status": "-", "bytes": 0}

        def recording_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen["status"] = status.split(" ", 1)[0]
            return (
                start_response(status, headers, exc_info)
                if exc_info
                else start_response(status, headers)
            )

        def body() -> Iterable[bytes]:
            inner = app(environ, recording_start_response)
            handoff: Handoff | None = None
            try:
                for chunk in inner:
                    if isinstance(chunk, Handoff):
                        handoff = chunk  # the stream loop counts what it sends
                    seen["bytes"] += len(chunk)
                    yield chunk
            finally:
                close = getattr(inner, "close", None)
                if close is not None:
                    close()
                if handoff is not None and handoff.taken:
                    seen["bytes"] = handoff.bytes_sent
                log.info(
                    "http request method=%s path=%s status=%s bytes=%d dur=%.1fms remote=%s",
                    environ.get("REQUEST_METHOD"),
                    environ.get("PATH_INFO"),
                    seen["status"],
                    seen["bytes"],
                    (time.monotonic() - started) * 1000,
                    environ.get("REMOTE_ADDR"),
                )

        return body()

    return wsgi
