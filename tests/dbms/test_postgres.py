"""dbms/postgres.py: argv builders and parsers (pure, table-driven)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from sqlrs_engine.dbms import postgres as pg

BIN = Path("/usr/lib/postgresql/15/bin")


def test_initdb_argv() -> None:
    assert pg.initdb_argv(BIN, Path("/d/pgdata")) == [
        "/usr/lib/postgresql/15/bin/initdb",
        "--username=sqlrs",
        "--auth=trust",
        "--auth-host=trust",
        "--auth-local=trust",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
        "--no-sync",
        "-D",
        "/d/pgdata",
    ]
    assert "--locale=C" in pg.initdb_argv(BIN, Path("/x"), locale="C")


def test_hba_requires_a_password_over_tcp(tmp_path: Path) -> None:
    hba = tmp_path / "pg_hba.conf"
    hba.write_text("host all all 0.0.0.0/0 trust\n")
    pg.write_hba(hba)
    rules = [line.split() for line in hba.read_text().splitlines() if not line.startswith("#")]
    assert rules == [
        ["local", "all", "all", "trust"],
        ["host", "all", "all", "0.0.0.0/0", "scram-sha-256"],
        ["host", "all", "all", "::/0", "scram-sha-256"],
    ]


@pytest.mark.parametrize(
    ("major", "expected_sets"),
    [(11, 5), (12, 6), (13, 7), (15, 7)],
)
def test_password_probe_sql_silences_statement_logging(major: int, expected_sets: int) -> None:
    sql = pg.password_probe_sql(major, "SCRAM-SHA-256$4096:c2FsdA==$a:b")
    statements = [line.rstrip(";") for line in sql.splitlines()]
    assert statements[:expected_sets] == [s for s in statements if s.startswith("SET ")]
    assert "SET log_statement = 'none'" in statements
    assert "SET synchronous_commit = off" in statements
    assert "SET log_min_error_statement = 'panic'" in statements
    assert statements[-2] == "ALTER ROLE sqlrs PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b'"
    assert statements[-1] == "select 1"


def test_password_probe_sql_refuses_quotes() -> None:
    with pytest.raises(ValueError):
        pg.password_probe_sql(15, "x'; drop role sqlrs; --")


@pytest.mark.parametrize(("major", "has_syncfs"), [(13, False), (14, True), (15, True), (17, True)])
def test_server_settings(major: int, has_syncfs: bool) -> None:
    settings = dict(
        pg.server_settings(major, 5433, Path("/tmp/sqlrs-pg-abc"), Path("/tmp/sqlrs-pg-abc/h"))
    )
    assert settings["hba_file"] == "/tmp/sqlrs-pg-abc/h"
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["port"] == "5433"
    assert settings["unix_socket_directories"] == "/tmp/sqlrs-pg-abc"
    assert settings["logging_collector"] == "off"
    assert "fsync" not in settings  # stays on (default)
    assert ("recovery_init_sync_method" in settings) is has_syncfs


def test_pg_ctl_options_are_shell_quoted() -> None:
    settings = [("port", "5433"), ("unix_socket_directories", "/tmp/a b")]
    opts = pg.pg_ctl_options(settings)
    assert shlex.split(opts) == ["-c", "port=5433", "-c", "unix_socket_directories=/tmp/a b"]
    argv = pg.pg_ctl_start_argv(BIN, Path("/d/pgdata"), Path("/r/log"), settings, 30)
    assert argv[:7] == [str(BIN / "pg_ctl"), "start", "-w", "-t", "30", "-D", "/d/pgdata"]
    assert argv[7:] == ["-l", "/r/log", "-o", opts]
    no_wait = pg.pg_ctl_start_argv(BIN, Path("/d/pgdata"), Path("/r/log"), settings)
    assert no_wait == [str(BIN / "pg_ctl"), "start", "-W", "-D", "/d/pgdata", *argv[7:]]


def test_stop_status_probe_argv() -> None:
    assert pg.pg_ctl_stop_argv(BIN, Path("/p"), "immediate", 5) == [
        str(BIN / "pg_ctl"),
        "stop",
        "-w",
        "-t",
        "5",
        "-m",
        "immediate",
        "-D",
        "/p",
    ]
    assert pg.pg_ctl_stop_argv(BIN, Path("/p"), "fast", None) == [
        str(BIN / "pg_ctl"),
        "stop",
        "-W",
        "-m",
        "fast",
        "-D",
        "/p",
    ]
    assert pg.pg_ctl_status_argv(BIN, Path("/p")) == [str(BIN / "pg_ctl"), "status", "-D", "/p"]


@pytest.mark.parametrize(
    ("text", "version", "major"),
    [
        ("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", "15.18", 15),
        ("postgres (PostgreSQL) 16.4\n", "16.4", 16),
        ("postgres (PostgreSQL) 17beta2\n", "17beta2", 17),
        ("postgres (PostgreSQL) 9.6.24\n", "9.6.24", 9),
        ("postgres (PostgreSQL) 14.13 (Ubuntu 14.13-0ubuntu0.22.04.1)", "14.13", 14),
    ],
)
def test_parse_server_version(text: str, version: str, major: int) -> None:
    assert pg.parse_server_version(text) == version
    assert pg.major_of(version) == major


@pytest.mark.parametrize("text", ["", "psql (PostgreSQL)", "mysqld  Ver 8.0"])
def test_parse_server_version_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        pg.parse_server_version(text)


def test_major_of_rejects() -> None:
    with pytest.raises(ValueError):
        pg.major_of("latest")


PID_FILE = (
    "16466\n/var/tmp/pgx/pgdata\n1795747947\n54999\n/tmp/sqx\n127.0.0.1\n"
    "  1442261         4\nready   \n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            PID_FILE,
            pg.PostmasterPid(
                16466, "/var/tmp/pgx/pgdata", 1795747947, 54999, "/tmp/sqx", "127.0.0.1", "ready"
            ),
        ),
        (
            PID_FILE.replace("ready   ", "starting"),
            pg.PostmasterPid(
                16466,
                "/var/tmp/pgx/pgdata",
                1795747947,
                54999,
                "/tmp/sqx",
                "127.0.0.1",
                "starting",
            ),
        ),
        # old format / being written: only some lines
        ("123\n/data\n", pg.PostmasterPid(123, "/data")),
        ("123\n/data\n1\n5432\n\n\n", pg.PostmasterPid(123, "/data", 1, 5432)),
        ("", None),
        ("\n", None),
        ("abc\n/data\n", None),
        ("123\n", None),
        ("-5\n/data\n", None),
    ],
)
def test_parse_postmaster_pid(text: str, expected: pg.PostmasterPid | None) -> None:
    assert pg.parse_postmaster_pid(text) == expected


def test_read_postmaster_pid(tmp_path: Path) -> None:
    assert pg.read_postmaster_pid(tmp_path) is None
    (tmp_path / "postmaster.pid").write_text(PID_FILE)
    info = pg.read_postmaster_pid(tmp_path)
    assert info is not None and info.port == 54999
    assert pg.read_postmaster_pid(tmp_path / "nope") is None


@pytest.mark.parametrize(
    ("code", "output", "running", "pid"),
    [
        (
            0,
            'pg_ctl: server is running (PID: 16466)\n/usr/lib/.../postgres "-D" "/x"\n',
            True,
            16466,
        ),
        (3, "pg_ctl: no server running\n", False, None),
        (4, 'pg_ctl: directory "/nope" does not exist\n', False, None),
        (1, "pg_ctl: no server running\n", False, None),
    ],
)
def test_parse_pg_ctl_status(code: int, output: str, running: bool, pid: int | None) -> None:
    assert pg.parse_pg_ctl_status(code, output) == pg.PgCtlStatus(running, pid)


def test_parse_pg_ctl_status_unknown() -> None:
    with pytest.raises(ValueError, match="cannot be run as root"):
        pg.parse_pg_ctl_status(1, "pg_ctl: cannot be run as root\n")


CONTROLDATA = """pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7712678703047647302
Database cluster state:               shut down
pg_control last modified:             Fri Nov 27 02:52:27 2026
Latest checkpoint location:           0/1500788
"""


def test_controldata() -> None:
    fields = pg.parse_controldata(CONTROLDATA)
    assert fields["Latest checkpoint location"] == "0/1500788"
    assert fields["pg_control last modified"] == "Fri Nov 27 02:52:27 2026"
    assert pg.cluster_state(CONTROLDATA) == "shut down"
    assert pg.cluster_state(CONTROLDATA.replace("shut down", "in production")) == ("in production")
    assert pg.cluster_state("") is None


@pytest.mark.parametrize(
    ("log", "bind"),
    [
        (
            'LOG:  could not bind IPv4 address "127.0.0.1": Address already in use\n'
            'WARNING:  could not create listen socket for "127.0.0.1"\n'
            "FATAL:  could not create any TCP/IP sockets\n",
            True,
        ),
        ("FATAL:  data directory has invalid permissions\n", False),
        ("", False),
    ],
)
def test_is_bind_failure(log: str, bind: bool) -> None:
    assert pg.is_bind_failure(log) is bind


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (["pgdata/PG_VERSION"], None),
        (["PG_VERSION"], None),
        (["pgdata/PG_VERSION", "pgdata/postmaster.pid"], pg.DIRTY_MESSAGE),
        (["PG_VERSION", "postmaster.pid"], pg.DIRTY_MESSAGE),
        (["pgdata/postmaster.pid"], pg.DIRTY_MESSAGE),
        (["pgdata/base/1"], pg.MISSING_PG_VERSION_MESSAGE),
        ([], pg.MISSING_PG_VERSION_MESSAGE),
    ],
)
def test_snapshot_problem(tmp_path: Path, files: list[str], problem: str | None) -> None:
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("15\n")
    assert pg.snapshot_problem(tmp_path) == problem
    assert pg.has_pg_version(tmp_path) is any(f.endswith("PG_VERSION") for f in files)
    assert pg.has_postmaster_pid(tmp_path) is any(f.endswith("postmaster.pid") for f in files)


def test_read_pg_version(tmp_path: Path) -> None:
    assert pg.read_pg_version(tmp_path) is None
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "pgdata" / "PG_VERSION").write_text("15\n")
    assert pg.read_pg_version(tmp_path) == "15"


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "log"
    assert pg.log_tail(log) == ""
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = pg.log_tail(log, max_bytes=30)
    assert tail.endswith("line 999\n")
    assert tail.startswith("line ")  # cut at a line boundary
    size = log.stat().st_size
    with log.open("a") as fh:
        fh.write("new 1\nnew 2\n")
    assert pg.log_tail(log, start=size) == "new 1\nnew 2\n"


@pytest.mark.parametrize(
    ("text", "port"),
    [
        (
            '/usr/lib/postgresql/15/bin/postgres "-D" "/d" "-c" "listen_addresses=127.0.0.1" '
            '"-c" "port=35941" "-c" "logging_collector=off"\n',
            35941,
        ),
        ('/usr/lib/postgresql/15/bin/postgres "-D" "/d" "-p" "5433"\n', 5433),
        ('/usr/lib/postgresql/15/bin/postgres "-D" "/d"\n', None),
        ("", None),
    ],
)
def test_parse_postmaster_opts_port(text: str, port: int | None) -> None:
    assert pg.parse_postmaster_opts_port(text) == port
