"""examples/pytest run by pytest itself, as a user runs it: the plugin from its entry point,
four xdist workers, one shared engine, a fresh instance per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sqlrs_engine.client import Client
from sqlrs_engine.client.locate import read_engine_json
from sqlrs_engine.runtime import procs
from tests.support.dirs import make_scratch_dir, remove_scratch_dir

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pytest"
EXAMPLE_TESTS = 10


@dataclass
class Project:
    """A copy of the example project and the sqlrs state dir its runs use."""

    path: Path
    state_home: Path

    @property
    def state_dir(self) -> Path:
        return self.state_home / "sqlrs"

    def pytest(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, XDG_STATE_HOME=str(self.state_home))
        env.pop("PYTEST_ADDOPTS", None)
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=self.path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )


@pytest.fixture
def project() -> Iterator[Project]:
    scratch = make_scratch_dir()
    path = scratch / "project"
    shutil.copytree(EXAMPLE, path)
    state_home = scratch / "state"  # created 0700 by the plugin's client, as by the CLI
    try:
        yield Project(path, state_home)
    finally:
        info = read_engine_json(state_home / "sqlrs" / "engine.json")
        if info is not None and procs.is_alive(info.pid):
            os.kill(info.pid, 15)
            procs.wait_dead([info.pid], 30)
        remove_scratch_dir(scratch)


def test_example_under_xdist_one_build_isolated_nothing_left(project: Project) -> None:
    with Client(state_dir=project.state_dir) as client:
        # Keep every job so the run can be audited (retention would trim identical ones).
        client.health()
        client.set_config("orchestrator.jobs.maxIdentical", 0)
        engine_pid = client.engine.pid
        run = project.pytest("-n", "4")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "4 workers" in run.stdout
        assert f"{EXAMPLE_TESTS} passed" in run.stdout
        # Every worker used the engine that was running: no second engine was started.
        assert client.health()["pid"] == engine_pid
        jobs = client.list_jobs()
        # One prepare per test, plus at most one made ahead (--sqlrs-prefetch 1) per worker.
        assert EXAMPLE_TESTS <= len(jobs) <= EXAMPLE_TESTS + 4
        assert {job.status for job in jobs} == {"succeeded"}
        steps = [
            task
            for job in jobs
            for task in client.tasks(job.job_id)
            if task.type == "state_execute"
        ]
        assert len(steps) == len(jobs)
        built = [task for task in steps if not task.cached]
        assert len(built) == 1, "the state is built once, every other test reuses it"
        assert len(client.list_states()) == 1
        assert client.list_instances() == []


def test_failed_tests_lose_their_instance_unless_kept(project: Project) -> None:
    (project.path / "test_fails.py").write_text(
        "def test_fails(db):\n    assert db.instance_id == 'something else'\n"
    )
    run = project.pytest("-q", "-k", "test_fails or test_totals")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed, 1 passed" in run.stdout
    # The first prepare of a run shows its progress.
    assert "sqlrs: [3/4] execute-0 -f " in run.stdout
    with Client(state_dir=project.state_dir, autostart=False) as client:
        assert client.list_instances() == []
        kept_run = project.pytest("-q", "-k", "test_fails", "--sqlrs-keep-on-failure")
        assert kept_run.returncode == 1
        kept = client.list_instances()
        assert len(kept) == 1
        assert f"kept instance {kept[0].instance_id} of failed test" in kept_run.stdout
        assert kept[0].expires_at is not None  # the TTL still removes it eventually
        client.delete_instance(kept[0].instance_id, force=True)


def test_the_plugin_is_inert_unless_used(project: Project) -> None:
    for test in project.path.glob("test_*.py"):
        test.unlink()
    (project.path / "conftest.py").unlink()
    (project.path / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
    run = project.pytest("-q")
    assert run.returncode == 0 and "1 passed" in run.stdout
    assert not (project.state_dir / "engine.json").exists()
    assert not (project.state_dir / "engine.lock").exists()
    help_text = project.pytest("--help").stdout
    for option in (
        "--sqlrs-engine-path",
        "--sqlrs-state-dir",
        "--sqlrs-runtime",
        "--sqlrs-keep-on-failure",
        "--sqlrs-ttl",
        "--sqlrs-image",
    ):
        assert option in help_text


def test_module_scope_and_psql_args(project: Project) -> None:
    for test in project.path.glob("test_*.py"):
        test.unlink()
    (project.path / "conftest.py").write_text(
        "from sqlrs_engine.pytest_plugin import sqlrs_database\n"
        "shared = sqlrs_database(psql_args=['-c', 'create table seen(module text)'],\n"
        "                        image='postgres:15', scope='module')\n"
    )
    body = (
        "import psycopg\n"
        "def test_first(shared):\n"
        "    with psycopg.connect(shared.dsn) as conn:\n"
        "        conn.execute('insert into seen values (%s)', (__name__,))\n"
        "def test_second(shared):\n"
        "    with psycopg.connect(shared.dsn) as conn:\n"
        "        rows = conn.execute('select module from seen').fetchall()\n"
        "    assert rows == [(__name__,)]  # the module's tests share one instance\n"
    )
    (project.path / "test_a.py").write_text(body)
    (project.path / "test_b.py").write_text(body)
    run = project.pytest("-q", "--sqlrs-progress", "quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout
    assert "sqlrs:" not in run.stdout
    with Client(state_dir=project.state_dir, autostart=False) as client:
        assert client.list_instances() == []
        assert len(client.list_states()) == 1
