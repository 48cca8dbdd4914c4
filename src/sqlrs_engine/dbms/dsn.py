"""Editing PostgreSQL connection URIs without touching their credentials."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def with_port(dsn: str, port: int) -> str:
    """`dsn` (`postgres://user[:secret]@host:port/db?…`) listening on `port` instead.

    Everything else — user, secret, host, database, parameters — is kept byte for byte; a
    URI without a host part is returned unchanged.
    """
    parts = urlsplit(dsn)
    if not parts.netloc:
        return dsn
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if hostport.startswith("["):  # [IPv6]:port
        host = hostport[: hostport.index("]") + 1]
    else:
        host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    netloc = f"{userinfo}{at}{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def port_of(dsn: str) -> int | None:
    """The port of a connection URI, or None when it names none."""
    try:
        return urlsplit(dsn).port
    except ValueError:
        return None


def with_password(dsn: str, password: str) -> str:
    """`dsn` with `password` as the secret of its user (added or replaced), all else kept."""
    parts = urlsplit(dsn)
    if not parts.netloc or "@" not in parts.netloc:
        return dsn
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}:{password}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
