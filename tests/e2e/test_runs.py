"""run:psql and run:pgbench end to end: real engine, real PostgreSQL (SPEC §5, §0.1)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine.dbms.dsn import port_of, with_port
from sqlrs_engine.runtime import procs
from tests.support.dirs import servers_under
from tests.support.engine_process import EngineProcess
from tests.support.prepare import JobOutcome, prepare, psql_body, query
from tests.support.waiting import wait_for

SCHEMA = "create table items(id int primary key, name text); insert into items values (1, 'one')"


@dataclass
class RunResult:
    status: int
    events: list[dict[str, Any]]
    arrivals: list[float]
    """Seconds since the request was sent at which each event arrived."""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def text(self, kind: str) -> str:
        return "".join(e["data"] for e in self.of(kind))

    @property
    def exit_code(self) -> int:
        assert self.events[-1]["type"] == "exit", self.events
        return int(self.events[-1]["exit_code"])


def run(engine: EngineProcess, body: dict[str, Any]) -> RunResult:
    """POST /v1/runs and read the NDJSON stream to its end (or the error body)."""
    started = time.monotonic()
    with engine.post("/v1/runs", json=body, stream=True, timeout=120) as response:
        if response.status_code != 200:
            return RunResult(response.status_code, [response.json()], [])
        assert response.headers["Content-Type"] == "application/x-ndjson"
        events, arrivals = [], []
        for line in response.iter_lines():
            if line:
                events.append(json.loads(line))
                arrivals.append(time.monotonic() - started)
        return RunResult(200, events, arrivals)


def psql(ref: str, *args: str, stdin: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"instance_ref": ref, "kind": "psql", "args": list(args), **extra}
    if stdin is not None:
        body["stdin"] = stdin
    return body


def pgbench(ref: str, *args: str) -> dict[str, Any]:
    return {"instance_ref": ref, "kind": "pgbench", "args": list(args)}


@pytest.fixture(scope="module")
def engine(shared_engine: EngineProcess) -> EngineProcess:
    """One engine for the module (e2e/conftest.py)."""
    return shared_engine


def new_instance(engine: EngineProcess) -> JobOutcome:
    """An instance of the schema state (a cache hit after the first one)."""
    outcome = prepare(engine, psql_body("-c", SCHEMA))
    assert outcome.status["status"] == "succeeded", outcome.status
    return outcome


@pytest.fixture(scope="module")
def instance(engine: EngineProcess) -> JobOutcome:
    return new_instance(engine)


@pytest.fixture
def fresh_instance(engine: EngineProcess) -> JobOutcome:
    """An instance of its own, for tests that break or change it."""
    return new_instance(engine)


def write_db(engine: EngineProcess, sql: str, *params: Any) -> None:
    """Change state.db behind the engine (there is no API that creates names)."""
    with sqlite3.connect(engine.state_store / "state.db", timeout=10) as db:
        db.execute(sql, params)


def test_select_output_streams_on_stdout_with_exit_0(
    engine: EngineProcess, instance: JobOutcome
) -> None:
    instance_id = instance.result["instance_id"]
    result = run(engine, psql(instance_id, "-X", "-At", "-c", "select name from items"))
    assert result.status == 200
    assert [e["type"] for e in result.events] == ["start", "stdout", "exit"]
    assert result.events[0]["instance_id"] == instance_id
    assert result.text("stdout") == "one\n"
    assert result.exit_code == 0
    assert all("ts" in e for e in result.events)


def test_output_is_streamed_as_it_is_produced(engine: EngineProcess, instance: JobOutcome) -> None:
    result = run(
        engine,
        psql(
            instance.result["instance_id"],
            "-At",
            "-c",
            "select 'before'",
            "-c",
            "select pg_sleep(1.5)",
            "-c",
            "select 'after'",
        ),
    )
    first = next(i for i, e in enumerate(result.events) if e.get("data") == "before\n")
    assert result.exit_code == 0
    assert result.arrivals[-1] - result.arrivals[first] >= 1.0, "output was held back until exit"


def test_sql_error_is_on_stderr_with_a_non_zero_exit_and_http_200(
    engine: EngineProcess, instance: JobOutcome
) -> None:
    result = run(
        engine,
        psql(instance.result["instance_id"], "-v", "ON_ERROR_STOP=1", "-c", "select * from nope"),
    )
    assert result.status == 200
    assert 'relation "nope" does not exist' in result.text("stderr")
    assert result.of("stdout") == []
    assert result.exit_code == 1


def test_file_dash_reads_stdin(engine: EngineProcess, instance: JobOutcome) -> None:
    script = "select 40 + 2;\nselect name from items where id = 1;\n"
    result = run(engine, psql(instance.result["instance_id"], "-At", "-f", "-", stdin=script))
    assert result.text("stdout") == "42\none\n"
    assert result.exit_code == 0


def test_steps_run_in_order_and_stop_at_the_first_failing_step(
    engine: EngineProcess, fresh_instance: JobOutcome
) -> None:
    body = psql(
        fresh_instance.result["instance_id"],
        steps=[
            {"args": ["-c", "create table log(n int)"]},
            {"args": ["-At", "-f", "-"], "stdin": "insert into log values (2); select 'two';"},
            {"args": ["-v", "ON_ERROR_STOP=1", "-f", "-"], "stdin": "select 1/0;"},
            {"args": ["-c", "insert into log values (4)"]},
        ],
    )
    result = run(engine, body)
    assert result.text("stdout").startswith("CREATE TABLE\n")
    assert "INSERT 0 1\ntwo\n" in result.text("stdout")
    assert "division by zero" in result.text("stderr")
    assert result.exit_code == 3  # psql's own code for "a script failed with ON_ERROR_STOP"
    assert query(fresh_instance.dsn, "select string_agg(n::text, ',') from log") == "2"


def test_pgbench_initializes_then_runs_for_two_seconds(
    engine: EngineProcess, fresh_instance: JobOutcome
) -> None:
    ref = fresh_instance.result["instance_id"]
    # §5 lets long forms through; the engine's own -h/-p/-U come later and win.
    init = run(engine, pgbench(ref, "--host=203.0.113.1", "--port=1", "-i", "-s", "1", "-q"))
    assert init.exit_code == 0, init.events
    assert "done in" in init.text("stderr")
    bench = run(engine, pgbench(ref, "-T", "2", "-c", "2", "-j", "2"))
    assert bench.exit_code == 0, bench.events
    output = bench.text("stdout")
    assert "number of clients: 2" in output
    assert "number of transactions actually processed" in output
    assert bench.arrivals[-1] >= 2.0
    assert query(fresh_instance.dsn, "select count(*) from pgbench_branches") == "1"


def test_instance_ref_resolves_by_id_then_by_name_without_redirect(
    engine: EngineProcess, instance: JobOutcome, fresh_instance: JobOutcome
) -> None:
    target = instance.result["instance_id"]
    other = fresh_instance.result["instance_id"]
    state_id = instance.result["state_id"]
    for name in ("run-by-name", other):  # a name that looks like (and is) another id
        write_db(
            engine,
            "INSERT INTO names (name, instance_id, state_id, state_fingerprint, image_id) "
            "VALUES (?, ?, ?, ?, ?)",
            name,
            target,
            state_id,
            state_id,
            instance.result["image_id"],
        )
    by_name = run(engine, psql("run-by-name", "-c", "select 1"))
    assert by_name.status == 200 and by_name.events[0]["instance_id"] == target
    by_id = run(engine, psql(other, "-c", "select 1"))
    assert by_id.events[0]["instance_id"] == other


def test_validation_errors_answer_before_anything_runs(
    engine: EngineProcess, instance: JobOutcome, fresh_instance: JobOutcome
) -> None:
    ref = instance.result["instance_id"]
    no_runtime = fresh_instance.result["instance_id"]
    write_db(engine, "UPDATE instances SET runtime_id = NULL WHERE instance_id = ?", no_runtime)
    cases: list[tuple[Any, int, str, str]] = [
        (b"{not json", 400, "invalid_argument", "invalid json payload"),
        (b"", 400, "invalid_argument", "invalid json payload"),
        ({"instance_ref": ref, "kind": "psql", "args": "select"}, 400, "invalid_argument",
         "invalid json payload"),
        ({"instance_ref": "  ", "kind": "psql", "args": []}, 400, "invalid_argument",
         "instance_ref is required"),
        ({"instance_ref": ref, "kind": "bash", "args": []}, 400, "invalid_argument",
         "unknown run kind"),
        ({"instance_ref": "f" * 32, "kind": "psql", "args": []}, 404, "not_found",
         "instance not found"),
        ({"instance_ref": "no-such-name", "kind": "psql", "args": []}, 404, "not_found",
         "instance not found"),
        ({"instance_ref": no_runtime, "kind": "psql", "args": []}, 409, "conflict",
         "instance runtime id is missing"),
        (psql(ref, "-h", "elsewhere", "-c", "select 1"), 409, "conflict",
         "conflicting psql connection arguments"),
        (psql(ref, "-c", "select 1", "postgres://sqlrs@127.0.0.1:1/postgres"), 409, "conflict",
         "conflicting psql connection arguments"),
        (pgbench(ref, "-T", "1", "-p5432"), 409, "conflict",
         "conflicting pgbench connection arguments"),
        ({"instance_ref": ref, "kind": "pgbench", "args": [], "steps": [{"args": ["-i"]}]},
         400, "invalid_argument", "steps are only supported for run:psql"),
        (psql(ref, "-c", "select 1", steps=[{"args": ["-c", "select 2"]}]), 400,
         "invalid_argument", "steps cannot be combined with args"),
        (psql(ref, stdin="select 1;", steps=[{"args": ["-f", "-"]}]), 400, "invalid_argument",
         "steps cannot be combined with stdin"),
        (psql(ref, steps=[{"args": ["-c", "select 1"]}, {"args": ["--port=1"]}]), 409,
         "conflict", "conflicting psql connection arguments"),
        (psql(ref, "-c", "select 1", command="/bin/sh"), 400, "invalid_argument",
         "unsupported run command"),
    ]  # fmt: skip
    for payload, status, code, message in cases:
        if isinstance(payload, bytes):
            response = engine.post("/v1/runs", data=payload)
        else:
            response = engine.post("/v1/runs", json=payload)
        assert response.status_code == status, (payload, response.text)
        assert response.headers["Content-Type"] == "application/json"
        error = response.json()
        assert (error["code"], error["message"]) == (code, message), payload
    assert engine.post("/v1/runs", json=psql(ref), auth=False).status_code == 401
    assert engine.get("/v1/runs").status_code == 405


def test_killed_server_is_restarted_once_for_two_concurrent_runs(
    engine: EngineProcess, fresh_instance: JobOutcome
) -> None:
    instance_id = fresh_instance.result["instance_id"]
    old = engine.get(f"/v1/instances/{instance_id}").json()["runtime_id"]
    old_pid = int(old.removeprefix("host:"))
    os.kill(old_pid, signal.SIGKILL)
    assert procs.wait_dead([old_pid], 10)

    body = psql(instance_id, "-At", "-c", "select name from items")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run(engine, body), range(2)))

    restarted = [r for r in results if r.of("log")]
    assert len(restarted) == 1, [r.events for r in results]
    assert [e["data"] for e in restarted[0].of("log")] == [
        "run: server not running - restarting",
        "run: restoring runtime",
        "run: server started",
    ]
    assert [e["type"] for e in restarted[0].events] == ["log"] * 3 + ["start", "stdout", "exit"]
    for result in results:
        assert result.text("stdout") == "one\n" and result.exit_code == 0
    new = engine.get(f"/v1/instances/{instance_id}").json()["runtime_id"]
    assert new != old
    new_pid = int(new.removeprefix("host:"))
    assert procs.is_alive(new_pid)
    data_dirs = engine.state_store / "jobs" / fresh_instance.job_id
    assert servers_under(data_dirs) == [new_pid]
    # The DSN the engine hands out now works (the same one, unless another process took the
    # port meanwhile: that is the one thing a shared machine does not guarantee).
    status = engine.get(f"/v1/prepare-jobs/{fresh_instance.job_id}").json()
    assert query(status["result"]["dsn"], "select count(*) from items") == "1"


def test_a_restart_whose_port_was_taken_moves_the_dsn_and_says_so(
    engine: EngineProcess, fresh_instance: JobOutcome
) -> None:
    instance_id = fresh_instance.result["instance_id"]
    old_port = port_of(fresh_instance.dsn)
    assert old_port is not None
    pid = int(engine.get(f"/v1/instances/{instance_id}").json()["runtime_id"].removeprefix("host:"))
    os.kill(pid, signal.SIGKILL)
    assert procs.wait_dead([pid], 10)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind(("127.0.0.1", old_port))
    except OSError:
        pytest.skip(f"port {old_port} was taken by another process before the test could")
    squatter.listen()
    try:
        result = run(engine, psql(instance_id, "-At", "-c", "select name from items"))
        assert result.exit_code == 0 and result.text("stdout") == "one\n"
    finally:
        squatter.close()
    status = engine.get(f"/v1/prepare-jobs/{fresh_instance.job_id}").json()
    moved = status["result"]["dsn"]
    new_port = port_of(moved)
    assert new_port is not None and new_port != old_port
    assert moved == with_port(fresh_instance.dsn, new_port), "only the port changed"
    assert query(moved, "select name from items") == "one"
    assert (
        f"instance {instance_id}: port {old_port} was taken by another process; its server "
        f"now listens on port {new_port}"
    ) in engine.stderr_text()


def test_a_killed_server_whose_clone_was_unmounted_is_remounted_and_restarted(
    engine: EngineProcess, fresh_instance: JobOutcome
) -> None:
    instance_id = fresh_instance.result["instance_id"]
    runtime_dir = engine.state_store / "jobs" / fresh_instance.job_id / "runtime"
    merged = runtime_dir / "merged"
    if str(merged) not in Path("/proc/self/mounts").read_text():
        pytest.skip("the instance's clone is not an overlay mount (copy/btrfs backend)")
    pid = int(engine.get(f"/v1/instances/{instance_id}").json()["runtime_id"].removeprefix("host:"))
    os.kill(pid, signal.SIGKILL)
    assert procs.wait_dead([pid], 10)
    assert wait_for(lambda: subprocess.run(["umount", str(merged)]).returncode == 0, 10)
    result = run(engine, psql(instance_id, "-At", "-c", "select name from items"))
    assert result.text("stdout") == "one\n" and result.exit_code == 0
    assert str(merged) in Path("/proc/self/mounts").read_text(), "the clone was mounted again"


def client_processes(marker: str) -> list[int]:
    """Live processes (psql clients) whose command line contains `marker`."""
    return [pid for pid in procs.all_pids() if any(marker in a for a in procs.cmdline(pid))]


def test_a_client_that_disconnects_kills_the_command_and_its_query(
    engine: EngineProcess, instance: JobOutcome
) -> None:
    marker = "select pg_sleep(41.5)"
    with engine.post(
        "/v1/runs", json=psql(instance.result["instance_id"], "-c", marker), stream=True
    ) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["type"] == "start"
        assert wait_for(lambda: len(client_processes(marker)) == 1, 10)
    # The response is closed: the engine notices, kills psql, and the server ends the query.
    assert wait_for(lambda: client_processes(marker) == [], 10), client_processes(marker)
    running_query = f"select count(*) from pg_stat_activity where query = '{marker}'"
    assert wait_for(lambda: query(instance.dsn, running_query) == "0", 10)


def engine_peak_rss_kib(engine: EngineProcess) -> int:
    for line in Path(f"/proc/{engine.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_output_is_streamed_in_chunks_with_bounded_memory(
    engine: EngineProcess, instance: JobOutcome
) -> None:
    rows, width = 16_000, 1000  # 16 MB of output
    before = engine_peak_rss_kib(engine)
    result = run(
        engine,
        psql(
            instance.result["instance_id"],
            "-At",
            "-c",
            f"select repeat('x', {width}) from generate_series(1, {rows})",
        ),
    )
    assert result.exit_code == 0
    stdout = result.of("stdout")
    assert sum(len(e["data"]) for e in stdout) == rows * (width + 1)
    assert len(stdout) > 100 and max(len(e["data"]) for e in stdout) <= 64 * 1024
    growth = engine_peak_rss_kib(engine) - before
    assert growth < 8 * 1024, f"engine peak memory grew by {growth} KiB for 16 MB of output"


def test_a_reader_that_pauses_longer_than_the_socket_timeout_gets_the_whole_output(
    engine: EngineProcess, instance: JobOutcome
) -> None:
    """A paused reader (a pager) holds the program back, and the stream survives the pause.

    Cheroot's socket timeout is 10 s; the pause is longer, with far more output pending than
    the socket buffers hold, so the engine's write blocks through the whole pause.
    """
    rows, width = 16_000, 1000
    sql = f"select repeat('y', {width}) from generate_series(1, {rows})"
    with engine.post(
        "/v1/runs", json=psql(instance.result["instance_id"], "-At", "-c", sql), stream=True
    ) as response:
        lines = response.iter_lines()
        first = json.loads(next(lines))
        assert first["type"] == "start"
        time.sleep(12)
        assert client_processes(sql), "psql finished during the pause: nothing held it back"
        events = [first] + [json.loads(line) for line in lines if line]
    stdout = "".join(e["data"] for e in events if e["type"] == "stdout")
    assert len(stdout) == rows * (width + 1)
    assert events[-1] == {"type": "exit", "ts": events[-1]["ts"], "exit_code": 0}


def test_eight_concurrent_runs_on_one_instance_and_on_different_instances(
    engine: EngineProcess, instance: JobOutcome
) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        others = list(pool.map(lambda _: new_instance(engine), range(7)))
    refs = [instance.result["instance_id"]] + [o.result["instance_id"] for o in others]
    for targets in ([refs[0]] * 8, refs):
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(
                    lambda item: run(
                        engine, psql(item[1], "-At", "-c", f"select {item[0]}, pg_sleep(0.5)")
                    ),
                    enumerate(targets),
                )
            )
        elapsed = time.monotonic() - started
        for n, (target, result) in enumerate(zip(targets, results, strict=True)):
            assert result.events[0]["instance_id"] == target
            assert result.text("stdout") == f"{n}|\n" and result.exit_code == 0
        assert elapsed < 3.0, f"8 runs of 0.5 s took {elapsed:.1f} s: not concurrent"
