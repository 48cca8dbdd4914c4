"""prepare → DSN → run → delete end to end on both runtimes, `host` and `docker` (issue 15).

One engine per runtime (module-scoped, parametrized), on the overlay backend as root (copy
otherwise), through the real engine process. The docker engine gets
`SQLRS_CONTAINER_RUNTIME=docker` and `DOCKER_HOST` of the real Podman API socket
(tests/support/container_engine.py). After each runtime's tests the leak check asserts that no
container with the store's label, no mount under the work dir and no host server is left.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sqlrs_engine.snapshot.mounts import mounts_under
from tests.support import container_engine
from tests.support.dirs import make_scratch_dir, remove_scratch_dir, servers_under
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.prepare import JobOutcome, prepare, psql_body, query

pytestmark = pytest.mark.e2e

BACKEND = "overlay" if os.geteuid() == 0 else "copy"


@dataclass
class Env:
    runtime: str
    image: str
    workdir: Path
    store: Path
    environ: dict[str, str]
    engine: EngineProcess

    def restart(self) -> None:
        self.engine.stop()
        self.engine = start_engine(self.workdir, state_store=self.store, env=self.environ)

    def containers(self) -> list[Any]:
        if self.runtime != "docker":
            return []
        return container_engine.labeled_containers(self.store)


@pytest.fixture(scope="module", params=["host", "docker"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    runtime: str = request.param
    # Liquibase (installed by scripts/bootstrap into the venv) runs on the host with both.
    environ = {"SQLRS_CONTAINER_RUNTIME": runtime, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    image = "postgres:15"
    if runtime == "docker":
        environ["DOCKER_HOST"] = container_engine.docker_host()
        image = container_engine.IMAGE
    workdir = make_scratch_dir()
    store = workdir / "store"
    store.mkdir()
    (store / "config.json").write_text(json.dumps({"snapshot": {"backend": BACKEND}}))
    try:
        found = Env(
            runtime,
            image,
            workdir,
            store,
            environ,
            start_engine(workdir, state_store=store, env=environ),
        )
        try:
            yield found
        finally:
            for instance in found.engine.get("/v1/instances").json():
                found.engine.delete(f"/v1/instances/{instance['instance_id']}?force=true")
            found.engine.stop()
            # The leak check.
            assert found.containers() == []
            assert mounts_under(workdir) == []
            assert servers_under(workdir) == []
    finally:
        if runtime == "docker":
            container_engine.remove_labeled(store)
        remove_scratch_dir(workdir)


VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def run(engine: EngineProcess, instance_id: str, *args: str, stdin: str | None = None) -> Any:
    body: dict[str, Any] = {"instance_ref": instance_id, "kind": "psql", "args": list(args)}
    if stdin is not None:
        body["stdin"] = stdin
    with engine.post("/v1/runs", json=body, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.iter_lines() if line]


def stdout_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"] for e in events if e["type"] == "stdout")


def succeeded(outcome: JobOutcome) -> JobOutcome:
    assert outcome.status["status"] == "succeeded", outcome.status
    return outcome


def test_prepare_files_with_includes_and_stdin_then_run_and_delete(env: Env) -> None:
    scripts = env.workdir / "scripts"
    (scripts / "lib").mkdir(parents=True)
    (scripts / "lib" / "rows.sql").write_text(
        "insert into t select g from generate_series(1, 10) g;\n"
    )
    (scripts / "schema.sql").write_text("create table t(a int);\n\\ir lib/rows.sql\n")
    body = psql_body(
        "-f",
        str(scripts / "schema.sql"),
        "-f",
        "-",
        stdin="insert into t values (100);\n",
        image=env.image,
    )
    first = succeeded(prepare(env.engine, body))
    assert re.match(r"postgres://sqlrs:[A-Za-z0-9_-]{20,}@127\.0\.0\.1:\d+/postgres$", first.dsn)
    bare = re.sub(r"sqlrs:[^@]*@", "sqlrs@", first.dsn)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(bare, connect_timeout=10)
    assert query(first.dsn, "select sum(a) from t") == "155"
    if env.runtime == "docker":
        assert len(env.containers()) == 1  # the instance's server; no job/client leftovers

    # A cache hit: the same state, a new instance (its own container on docker).
    second = succeeded(prepare(env.engine, body))
    assert second.result["state_id"] == first.result["state_id"]
    assert second.dsn != first.dsn
    assert query(second.dsn, "select count(*) from t") == "11"

    events = run(env.engine, second.result["instance_id"], "-At", "-f", "-", stdin="select 6*7;")
    assert stdout_of(events).strip() == "42"
    assert events[-1]["type"] == "exit" and events[-1]["exit_code"] == 0

    deleted = env.engine.delete(f"/v1/instances/{second.result['instance_id']}")
    assert deleted.status_code == 200, deleted.text
    if env.runtime == "docker":
        assert len(env.containers()) == 1


def test_restart_adopts_and_a_vanished_server_is_recreated_on_run(env: Env) -> None:
    outcome = succeeded(
        prepare(env.engine, psql_body("-c", "create table r(a int)", image=env.image))
    )
    instance_id = outcome.result["instance_id"]
    env.restart()
    # Adopted: same DSN, the server was not restarted (its table and session still answer).
    assert query(outcome.dsn, "select count(*) from r") == "0"
    if env.runtime == "docker":
        (server,) = [
            c
            for c in env.containers()
            if c.labels.get("sqlrs.data-dir", "").find(outcome.job_id) >= 0
        ]
        server.remove(force=True)  # the container disappears behind the engine's back
    else:
        pids = servers_under(env.store / "jobs" / outcome.job_id)
        assert pids
        os.kill(pids[0], 9)
    events = run(env.engine, instance_id, "-At", "-c", "select count(*) from r")
    assert stdout_of(events).strip() == "0"


def test_a_missing_image_fails_resolve_saying_how_to_provide_it(env: Env) -> None:
    image = "localhost/postgres:99" if env.runtime == "docker" else "postgres:99"
    outcome = prepare(env.engine, psql_body("-c", "select 1", image=image))
    assert outcome.status["status"] == "failed"
    error = outcome.status["error"]
    assert error["message"] == "cannot resolve image"
    if env.runtime == "docker":
        assert "is not present in the container engine" in error["details"]
        assert "scripts/container-engine" in error["details"]
    explained = env.engine.post("/v1/cache/explain/prepare", json=psql_body("-c", "x", image=image))
    assert explained.status_code == 400, explained.text


def test_pgbench_and_streamed_output(env: Env) -> None:
    outcome = succeeded(prepare(env.engine, psql_body("-c", "select 1", image=env.image)))
    ref = outcome.result["instance_id"]
    body = {"instance_ref": ref, "kind": "pgbench", "args": ["-i", "-s", "1", "-q"]}
    with env.engine.post("/v1/runs", json=body, stream=True, timeout=300) as response:
        assert response.status_code == 200, response.text
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert events[-1]["type"] == "exit" and events[-1]["exit_code"] == 0, events
    assert "done in" in "".join(e["data"] for e in events if e["type"] == "stderr")
    assert query(outcome.dsn, "select count(*) from pgbench_accounts") == "100000"
    # Two outputs a second apart arrive as two chunks: the output is streamed, not buffered.
    events = run(
        env.engine, ref, "-At", "-c", "select 1", "-c", "select pg_sleep(1)", "-c", "select 2"
    )
    chunks = [e["data"] for e in events if e["type"] == "stdout"]
    assert "".join(chunks).split() == ["1", "2"]
    assert len(chunks) >= 2


def test_a_liquibase_changelog_applies_through_the_published_port(env: Env) -> None:
    """Liquibase stays on the host (as the unprivileged user) and connects to the instance's
    port with its password; the states are cached per changeset on either runtime."""
    changelog = env.workdir / "lb" / "changelog.sql"
    changelog.parent.mkdir(exist_ok=True)
    changelog.write_text(
        "--liquibase formatted sql\n\n"
        "--changeset dev:1\ncreate table lbt(a int);\n\n"
        "--changeset dev:2\ninsert into lbt values (1), (2);\n"
    )
    body = {
        "prepare_kind": "lb",
        "image_id": env.image,
        "liquibase_args": ["update", "--changelog-file", str(changelog)],
    }
    first = succeeded(prepare(env.engine, body))
    assert query(first.dsn, "select count(*) from lbt") == "2"
    again = succeeded(prepare(env.engine, body))
    steps = [t for t in again.status["tasks"] if t["type"] == "state_execute"]
    assert [t["cached"] for t in steps] == [True, True]
    assert query(again.dsn, "select count(*) from lbt") == "2"
    assert again.result["state_id"] == first.result["state_id"]


def test_test_engines_run_on_host_even_where_a_container_engine_answers(
    scratch_dir: Path,
) -> None:
    """`start_engine` pins the host runtime: on a machine where a Docker-compatible engine
    answers (here the real Podman API, as DOCKER_HOST), the engine's default `auto` would pick
    it and run the host tests on containers. A test that names a runtime gets that one."""
    url = container_engine.docker_host()
    (scratch_dir / "pinned").mkdir()
    (scratch_dir / "auto").mkdir()
    pinned = start_engine(scratch_dir / "pinned", env={"DOCKER_HOST": url})
    try:
        assert "container runtime host (configured host;" in pinned.stderr_text()
        outcome = prepare(pinned, psql_body("-c", "create table pinned(a int)"))
        assert outcome.status["status"] == "succeeded", outcome.status
        instance = pinned.get(f"/v1/instances/{outcome.result['instance_id']}").json()
        assert instance["runtime_id"].startswith("host:")
        assert container_engine.labeled_containers(pinned.state_store) == []
    finally:
        pinned.stop()
    # The premise: with the same environment, `auto` (asked for explicitly) picks docker.
    asked = start_engine(
        scratch_dir / "auto", env={"DOCKER_HOST": url, "SQLRS_CONTAINER_RUNTIME": "auto"}
    )
    try:
        assert f"container runtime docker (auto; engine at {url}" in asked.stderr_text()
    finally:
        asked.stop()
