"""The pytest-postgresql way, for comparison with the sqlrs plugin (bench/bench_pytest.py).

Per pytest process (each xdist worker has its own): initdb a cluster, start it, load
schema.sql into a template database. Per test: `CREATE DATABASE … TEMPLATE`, dropped after
the test. Same `db.dsn` interface as the plugin's fixture, so the example tests run unchanged.
As root, the server runs as `postgres` (like the engine's host runtime).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

BIN = Path(os.environ.get("BASELINE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SCHEMA = Path(__file__).resolve().parent / "schema.sql"
_names = itertools.count()


def _as_server_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    port: int

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    root = Path(tempfile.mkdtemp(prefix="baseline-pg-", dir=os.environ.get("BASELINE_DIR")))
    root.chmod(0o711)
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        os.chown(sockets, user.pw_uid, user.pw_gid)
    sudo = _as_server_user()
    subprocess.run(
        [
            *sudo,
            str(BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    subprocess.run(
        [
            *sudo,
            str(BIN / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(root / "log"),
            "-o",
            f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    server = Server(port)
    try:
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
            conn.execute("create database tmpl")
        with psycopg.connect(server.dsn("tmpl")) as conn:
            conn.execute(SCHEMA.read_text())
        yield server
    finally:
        subprocess.run(
            [*sudo, str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Database:
    dsn: str


@pytest.fixture
def db(pg_server: Server) -> Iterator[Database]:
    name = f"test_{os.getpid()}_{next(_names)}"
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"create database {name} template tmpl")
    try:
        yield Database(pg_server.dsn(name))
    finally:
        with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"drop database {name} with (force)")
