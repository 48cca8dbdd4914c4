"""Liquibase under the least-privilege model (SPEC §0.9, issue 10), real engine and Liquibase.

As root, the engine runs Liquibase — the warm JVM and the per-command process alike — as
the unprivileged server user, from a private copy of exactly the files it hashed, tied to
the engine's lifetime. Each Liquibase run starts a JVM, so each test checks several things.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine.runtime import procs
from sqlrs_engine.runtime.clients import CLIENT_TAG_ENV
from tests.e2e.test_prepare_lb import LIQUIBASE, WITH_LIQUIBASE, lb_body, sql_changelog
from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.prepare import prepare, query, submit, wait
from tests.support.waiting import wait_for, wait_for_log

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the least-privilege model needs a root engine"),
]

POSTGRES = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
XML_HEADER = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog"\n'
    '    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"\n'
    '    xsi:schemaLocation="http://www.liquibase.org/xml/ns/dbchangelog '
    'http://www.liquibase.org/xml/ns/dbchangelog/dbchangelog-4.20.xsd">\n'
)


def _root_only_dir(parent: Path, name: str) -> Path:
    """A directory only root may enter, like a user's private project directory."""
    path = parent / name
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    return path


def _uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = make_scratch_dir()
    try:
        yield path
    finally:
        remove_scratch_dir(path)


@pytest.fixture(scope="module")
def engine(workdir: Path) -> Iterator[EngineProcess]:
    assert LIQUIBASE.exists(), "Liquibase is missing: run scripts/bootstrap"
    running = start_engine(workdir, env=WITH_LIQUIBASE, state_store=workdir / "store")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def outbox(workdir: Path) -> Iterator[Path]:
    """A directory the server user may write into (where changesets leave their marks)."""
    assert POSTGRES is not None
    path = workdir / f"out-{time.monotonic_ns()}"
    path.mkdir()
    os.chown(path, POSTGRES.pw_uid, POSTGRES.pw_gid)
    yield path


def _set_warm_jvm(engine: EngineProcess, warm: bool) -> None:
    reply = engine.patch("/v1/config", json={"path": "liquibase.warmJvm", "value": warm})
    assert reply.status_code < 300, reply.text


@pytest.mark.parametrize("mode", ["warm-jvm", "process"])
def test_liquibase_runs_unprivileged_from_the_hashed_files(
    engine: EngineProcess, workdir: Path, outbox: Path, mode: str
) -> None:
    assert POSTGRES is not None
    project = _root_only_dir(workdir, f"project-{mode}")
    (project / "sub").mkdir()
    (project / "sub" / "table.sql").write_text(
        # unique per mode: the second changeset must not be a cached state of the first run
        f"--liquibase formatted sql\n--changeset dev:table\ncreate table who_{mode[0]}(a int);\n"
    )
    marker = outbox / "uid"
    (project / "changelog.xml").write_text(
        XML_HEADER
        + '  <include file="sub/table.sql" relativeToChangelogFile="true"/>\n'
        + '  <changeSet id="whoami" author="dev">\n'
        + '    <executeCommand executable="/bin/sh">\n'
        + '      <arg value="-c"/>\n'
        + f'      <arg value="id -u &gt; {marker}"/>\n'
        + "    </executeCommand>\n"
        + "  </changeSet>\n"
        + "</databaseChangeLog>\n"
    )
    _set_warm_jvm(engine, mode == "warm-jvm")
    try:
        outcome = prepare(
            engine, lb_body("update", "--changelog-file", str(project / "changelog.xml"))
        )
    finally:
        _set_warm_jvm(engine, True)
    assert outcome.status["status"] == "succeeded", outcome.status
    assert marker.exists(), outcome.log_lines()
    assert marker.read_text().strip() == str(POSTGRES.pw_uid), "the OS command ran unprivileged"
    tasks = [t for t in outcome.status["tasks"] if t["type"] == "state_execute"]
    assert [(t["changeset_id"], t["changeset_path"]) for t in tasks] == [
        ("table", "sub/table.sql"),
        ("whoami", "changelog.xml"),
    ], "the copy records the same changeset paths as the user's files would"
    assert query(outcome.dsn, "select count(*) from databasechangelog") == "2"
    assert query(outcome.dsn, "select string_agg(filename, ',') from databasechangelog") == (
        "sub/table.sql,changelog.xml"
    )
    text = json.dumps(outcome.events)
    assert "lb-stage" not in text, "job events name the user's paths, never the copy's"
    execs = [line for line in outcome.log_lines() if line.startswith("liquibase: exec ")]
    assert execs and all(f"--search-path={project}" in line for line in execs), execs
    assert not (engine.state_store / "jobs" / outcome.job_id / "lb-stage").exists()


def test_a_changelog_cannot_read_files_it_does_not_name(
    engine: EngineProcess, workdir: Path
) -> None:
    secrets = _root_only_dir(workdir, "secrets")
    secret = secrets / "secret.sql"
    secret.write_text(
        "--liquibase formatted sql\n--changeset spy:1\nselect 'TOPSECRET-4711' as leaked;\n"
    )
    os.chmod(secret, 0o600)
    project = _root_only_dir(workdir, "project-spy")
    changelog = project / "changelog.xml"
    changelog.write_text(
        XML_HEADER
        + f'  <property name="hidden" value="{secrets}"/>\n'
        + '  <include file="${hidden}/secret.sql"/>\n'
        + "</databaseChangeLog>\n"
    )
    # `/` on the search path: without the copy, Liquibase as root would find the secret there
    body = lb_body("update", "--changelog-file", str(changelog), "--searchPath", f"{project},/")
    outcome = prepare(engine, {**body, "plan_only": True})
    assert outcome.status["status"] == "failed", outcome.status
    error = outcome.status["error"]
    assert (error["code"], error["message"]) == ("internal_error", "liquibase execution failed")
    details = error["details"]
    assert f"The file {secret} was not found in the configured search path" in details, details
    assert "lb-stage" not in details, details
    lines = [line.removeprefix("liquibase:").strip() for line in outcome.log_lines()]
    searched = [line for line in lines if line.startswith("- ")]
    assert set(searched) == {f"- {project}", "- /"}, "the search path as the user gave it"
    assert "property substitution in '${hidden}/secret.sql'" in details, "says why"
    recorded = json.dumps(outcome.status) + json.dumps(outcome.events)
    assert "TOPSECRET" not in recorded
    for name in ("state.db", "state.db-wal"):
        assert b"TOPSECRET" not in (engine.state_store / name).read_bytes(), name


def _liquibase_clients(store: Path) -> list[int]:
    return [
        pid
        for pid in procs.find_by_environ(f"{CLIENT_TAG_ENV}={store}".encode())
        if any("liquibase" in arg for arg in procs.cmdline(pid))
    ]


@pytest.mark.parametrize("mode", ["warm-jvm", "process", "launcher-script"])
def test_orphan_liquibase_is_gone_after_kill_9_and_restart(mode: str) -> None:
    """The JVM dies with the engine (parent-death signal). A non-standard installation is run
    through its own executable, here a script that execs the `liquibase` launcher, which
    forks the JVM: that JVM escapes the signal, and the next start's sweep kills it."""
    assert POSTGRES is not None
    workdir = make_scratch_dir()
    store = workdir / "store"
    extra: dict[str, Any] = {}
    if mode == "launcher-script":
        wrapper = workdir / "bin" / "my-liquibase"
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\nexec {LIQUIBASE} "$@"\n')
        wrapper.chmod(0o755)
        extra["liquibase_exec"] = str(wrapper)
    engine = start_engine(workdir, env=WITH_LIQUIBASE, state_store=store)
    try:
        _set_warm_jvm(engine, mode == "warm-jvm")
        changelog = sql_changelog(
            workdir / "slow.sql",
            ["create table slow(a int);", "insert into slow select 1 from pg_sleep(600);"],
        )
        body = lb_body("update", "--changelog-file", str(changelog), **extra)
        job_id = submit(engine, body)
        wait_for_log(
            engine,
            job_id,
            lambda line: "Running Changeset: slow.sql::2::dev" in line,
            timeout=180,
        )
        running = [pid for pid in _liquibase_clients(store) if "java" in str(procs.exe(pid))]
        assert len(running) == 1, [procs.cmdline(pid) for pid in _liquibase_clients(store)]
        (jvm,) = running
        assert _uid_of(jvm) == POSTGRES.pw_uid, "Liquibase runs as the server user"

        engine.stop(signal.SIGKILL)
        if mode != "launcher-script":
            assert wait_for(lambda: not procs.is_alive(jvm), 60), "Liquibase outlived the engine"

        engine = start_engine(workdir, env=WITH_LIQUIBASE, state_store=store)
        assert wait_for(lambda: not procs.is_alive(jvm), 60), "the leftover JVM survived"
        if mode == "launcher-script":
            assert "client programs left by a previous engine" in engine.stderr_text()
        assert engine.post(f"/v1/prepare-jobs/{job_id}/cancel").status_code in (200, 202)
        assert wait(engine, job_id).status["status"] == "failed"
        assert wait_for(lambda: _liquibase_clients(store) == [], 60), "no Liquibase left"
    finally:
        engine.stop()
        remove_scratch_dir(workdir)
