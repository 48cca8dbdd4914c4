"""pytest plugin: a fresh PostgreSQL database per test, cloned from a cached state.

In a `conftest.py`::

    from sqlrs_engine.pytest_plugin import sqlrs_database

    db = sqlrs_database(files=["schema.sql"])   # paths relative to this conftest.py

    def test_users(db):                          # db is a sqlrs_engine.client.Instance
        with psycopg.connect(db.dsn) as conn: ...

Every test that uses `db` gets its own instance (its own server, writable, isolated), made by
a prepare that hits the engine's cache; the instance is deleted after the test, whether it
passed or failed (`--sqlrs-keep-on-failure` keeps a failed test's instance for debugging).
The next test's instance is prepared while a test runs and deletions happen in the
background (`client.pool.InstancePool`), so a test waits for neither.
The state is built once: by the first prepare of the run, or by an earlier run (the cache
outlives runs); under pytest-xdist, workers that ask while it is being built wait on the
engine's build lock and reuse it. All workers share one engine, found or started through
engine.json like the `sqlrs` CLI does. Every instance is also prepared with a TTL
(`--sqlrs-ttl`), so the instances of a run that was killed are deleted by the engine.

The plugin is registered through the `pytest11` entry point and is inert until a test uses a
`sqlrs_database` fixture: it only adds its command-line options; the client is imported and
the engine located on first use.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sqlrs_engine.client import Client, Instance
    from sqlrs_engine.client.pool import InstancePool

RUNTIMES = ("auto", "host", "docker", "podman")
DEFAULT_TTL = "30m"

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sqlrs", "sqlrs-engine databases (sqlrs_database fixtures)")
    group.addoption(
        "--sqlrs-engine-path",
        default=None,
        help="engine executable to start when none is running "
        "(default: $SQLRS_ENGINE_PATH, else this package's sqlrs-engine)",
    )
    group.addoption(
        "--sqlrs-state-dir",
        default=None,
        help="sqlrs state directory holding engine.json, shared with the sqlrs CLI "
        "(default: $XDG_STATE_HOME/sqlrs, else ~/.local/state/sqlrs)",
    )
    group.addoption(
        "--sqlrs-runtime",
        default=None,
        choices=RUNTIMES,
        help="container runtime of an engine this run starts (SQLRS_CONTAINER_RUNTIME); "
        "an engine that is already running keeps its own",
    )
    group.addoption(
        "--sqlrs-image",
        default=None,
        help="image id of sqlrs_database fixtures that name none (default: postgres)",
    )
    group.addoption(
        "--sqlrs-ttl",
        default=DEFAULT_TTL,
        help="instances expire after this Go duration even if the run dies "
        f"(default: {DEFAULT_TTL}); use a longer one with --sqlrs-keep-on-failure",
    )
    group.addoption(
        "--sqlrs-keep-on-failure",
        action="store_true",
        default=False,
        help="keep the instance of a failed test for debugging (until its TTL); "
        "the report names it",
    )
    group.addoption(
        "--sqlrs-progress",
        default="lines",
        choices=("lines", "quiet"),
        help="show what the first prepare of each database is doing (default: lines)",
    )
    group.addoption(
        "--sqlrs-prefetch",
        type=int,
        default=None,
        help="instances of each database to prepare ahead while tests run (default: 1, "
        "and 0 in pytest-xdist workers, which already keep the engine busy; 0 prepares "
        "each instance when its test starts)",
    )
    group.addoption(
        "--sqlrs-idle-timeout",
        default="2m0s",
        help="--idle-timeout of an engine this run starts (Go duration; default 2m0s)",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report, so a fixture knows at teardown whether its test failed."""
    report = yield
    if "sqlrs_session" in getattr(item, "fixturenames", ()):
        item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


class SqlrsSession:
    """One per pytest process: the client, the options, the pool of ready instances."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._client: Client | None = None
        self._pool: InstancePool | None = None
        self._warm: set[tuple[str, ...]] = set()

    def _new_client(self) -> Client:
        from sqlrs_engine.client import Client

        runtime = self.config.getoption("sqlrs_runtime")
        env = dict(os.environ)
        if runtime:
            env["SQLRS_CONTAINER_RUNTIME"] = runtime
        return Client(
            state_dir=self.config.getoption("sqlrs_state_dir"),
            engine_path=self.config.getoption("sqlrs_engine_path"),
            idle_timeout=self.config.getoption("sqlrs_idle_timeout"),
            env=env,
        )

    @property
    def client(self) -> Client:
        """The client of the test thread (for direct API calls from tests)."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    @property
    def pool(self) -> InstancePool:
        if self._pool is None:
            from sqlrs_engine.client.pool import InstancePool

            prefetch = self.config.getoption("sqlrs_prefetch")
            if prefetch is None:
                prefetch = 0 if hasattr(self.config, "workerinput") else 1
            self._pool = InstancePool(self._new_client, prefetch)
        return self._pool

    def close(self) -> None:
        """Delete prefetched instances, wait for deletions; warn about any that failed."""
        errors = self._pool.close() if self._pool is not None else []
        if self._client is not None:
            self._client.close()
        if errors:
            warnings.warn(
                "sqlrs: could not delete (left to their TTL): " + "; ".join(errors),
                stacklevel=1,
            )

    def acquire(self, spec: DatabaseSpec) -> Instance:
        """A fresh instance of `spec`; the first one of this process shows progress."""
        image = spec.image or self.config.getoption("sqlrs_image") or None
        key = (image or "", *spec.psql_args)
        kwargs: dict[str, Any] = {"ttl": spec.ttl or self.config.getoption("sqlrs_ttl")}
        if image:
            kwargs["image"] = image

        def prepare_now() -> Instance:
            progress = None if key in self._warm else self._progress_reporter()
            return self.client.prepare_psql(spec.psql_args, progress=progress, **kwargs)

        def prepare_ahead(client: Client) -> Instance:
            return client.prepare_psql(spec.psql_args, **kwargs)

        instance = self.pool.acquire(key, prepare_now, prepare_ahead)
        self._warm.add(key)
        return instance

    def release(self, instance: Instance, item: pytest.Item) -> None:
        """Delete the instance (in the background), unless kept for a failed test."""
        reports = item.stash.get(_REPORTS, {})
        failed = any(report.failed for report in reports.values())
        if failed and self.config.getoption("sqlrs_keep_on_failure"):
            item.add_report_section(
                "teardown",
                "sqlrs",
                f"kept instance {instance.instance_id} of failed test (expires "
                f"{instance.expires_at or 'never'}); its DSN is in the result of "
                f"GET /v1/prepare-jobs/{instance.job_id}",
            )
            return
        self.pool.release(instance.instance_id)

    def _progress_reporter(self) -> Any:
        if self.config.getoption("sqlrs_progress") == "quiet" or hasattr(
            self.config, "workerinput"
        ):
            return None  # an xdist worker's output would be lost anyway
        from sqlrs_engine.client.progress import LinesReporter

        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if terminal is None:
            return None

        def write(line: str) -> None:
            if capture is not None:
                with capture.global_and_fixture_disabled():
                    terminal.write_line(line)
            else:
                terminal.write_line(line)

        return LinesReporter(write)


@pytest.fixture(scope="session")
def sqlrs_session(request: pytest.FixtureRequest) -> Iterator[SqlrsSession]:
    """The plugin's per-process state; use `sqlrs_session.client` for direct API calls."""
    session = SqlrsSession(request.config)
    try:
        yield session
    finally:
        session.close()


@dataclass(frozen=True)
class DatabaseSpec:
    """What a `sqlrs_database` fixture prepares: psql arguments, image, TTL."""

    psql_args: list[str]
    image: str | None
    ttl: str | None


def sqlrs_database(
    files: Sequence[str | Path] = (),
    psql_args: Sequence[str] = (),
    *,
    image: str | None = None,
    ttl: str | None = None,
    scope: str = "function",
) -> Callable[..., Any]:
    """A fixture giving each test (or each `scope`) a fresh database prepared from
    `files` (run in order with `psql -f`; relative to the calling file's directory) and then
    `psql_args` (more psql arguments, e.g. `["-c", "insert ..."]`). Assign it to a name in a
    conftest.py or test module; that name is the fixture's name.
    """
    base = _caller_dir()
    args: list[str] = []
    for file in files:
        path = Path(file)
        args += ["-f", str(path if path.is_absolute() else base / path)]
    args += list(psql_args)
    if not args:
        raise ValueError("sqlrs_database needs files or psql_args to prepare from")
    spec = DatabaseSpec(args, image, ttl)

    @pytest.fixture(scope=scope)  # type: ignore[call-overload, untyped-decorator]
    def database(request: pytest.FixtureRequest, sqlrs_session: SqlrsSession) -> Iterator[Any]:
        instance = sqlrs_session.acquire(spec)
        try:
            yield instance
        finally:
            sqlrs_session.release(instance, request.node)

    return database  # type: ignore[no-any-return]


def _caller_dir() -> Path:
    """The directory of the file that called `sqlrs_database` (where its paths are relative to)."""
    frame = inspect.currentframe()
    caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
    if caller is None:
        return Path.cwd()
    return Path(caller.f_code.co_filename).resolve().parent
