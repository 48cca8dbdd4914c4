"""Docker runtime benchmark (issue 15): docker vs host in the same run, same state.

Measures, medians over repeated runs in one invocation (runtimes interleaved):
  (a) cache hit → DSN (POST prepare → succeeded) on a `docker` engine and a `host` engine;
  (b) cold prepare of a small script (a new state each time; the base is already there);
  (c) a bare container start through the same Docker API on a copy of the same state's data
      (run postgres, wait until it accepts connections on the published port, then remove):
      the floor a docker cache hit is compared with (goal: within 1.3x).

The `host` and `docker` engines use the copy snapshot backend, so a state is a plain data dir
that the bare start can use as is (a cache hit includes copying it; so does the "copy and
start" floor). As root a third engine, `docker-overlay`, runs the same hits on the overlay
backend, whose clone is a mount instead of a copy: its hit is compared with the bare start
alone (the 1.3x goal of issue 15).

Needs the container engine of scripts/container-engine (or SQLRS_TEST_DOCKER_HOST) and runs
as root. Run: .venv/bin/python bench/bench_docker.py [--hits N] [--cold N] [--bare N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import docker
from common import (  # type: ignore[import-not-found]
    engine_in_scratch,
    median,
    save,
    timed,
)
from tests.support import container_engine
from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.prepare import prepare, psql_body

from sqlrs_engine.dbms.ping import Ping, ping
from sqlrs_engine.runtime.docker import DATA_MOUNT
from sqlrs_engine.runtime.ports import PortAllocator

BARE_LABEL = "sqlrs.bench-bare"

SCRIPT = "create table t as select g as id, md5(g::text) as v from generate_series(1, 100000) g;"


def succeeded(engine: Any, body: dict[str, Any]) -> dict[str, Any]:
    outcome = prepare(engine, body)
    assert outcome.status["status"] == "succeeded", outcome.status
    return outcome.result


def delete_instances(engine: Any) -> None:
    for instance in engine.get("/v1/instances").json():
        engine.delete(f"/v1/instances/{instance['instance_id']}?force=true")


def bare_start(client: docker.DockerClient, data: Path, uid_gid: str) -> float:
    """Start postgres in a container on `data` through the API, until it accepts connections
    on its published port (a free one, like the engine's)."""
    port = PortAllocator().allocate()
    started = time.perf_counter()
    try:
        container = client.containers.run(
            container_engine.IMAGE,
            ["postgres", "-D", f"{DATA_MOUNT}/pgdata", "-c", "listen_addresses=*", "-p", str(port)],
            detach=True,
            user=uid_gid,
            labels={BARE_LABEL: "1"},
            ports={f"{port}/tcp": ("127.0.0.1", port)},
            volumes={str(data): {"bind": DATA_MOUNT, "mode": "rw"}},
            stop_signal="SIGINT",
        )
    except docker.errors.APIError:
        # A failed start leaves the created container behind.
        for leftover in client.containers.list(all=True, filters={"label": BARE_LABEL}):
            leftover.remove(force=True)
        raise
    try:
        # The same readiness test as the engine's bare floor (a startup packet on the port).
        while ping("127.0.0.1", port, "sqlrs", "postgres") is not Ping.OK:
            time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        container.stop(timeout=30)
        container.remove(force=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hits", type=int, default=10)
    parser.add_argument("--cold", type=int, default=3)
    parser.add_argument("--bare", type=int, default=10)
    options = parser.parse_args()
    url = container_engine.docker_host()
    docker_env = {"SQLRS_CONTAINER_RUNTIME": "docker", "DOCKER_HOST": url}
    runtimes = {
        "host": ("postgres:15", {"SQLRS_CONTAINER_RUNTIME": "host"}, "copy"),
        "docker": (container_engine.IMAGE, docker_env, "copy"),
    }
    if os.geteuid() == 0:
        runtimes["docker-overlay"] = (container_engine.IMAGE, docker_env, "overlay")
    hits: dict[str, list[float]] = {k: [] for k in runtimes}
    cold: dict[str, list[float]] = {k: [] for k in runtimes}
    bare: list[float] = []
    bare_with_copy: list[float] = []
    with ExitStack() as stack:
        engines = {
            kind: stack.enter_context(engine_in_scratch(backend, env=env))
            for kind, (_image, env, backend) in runtimes.items()
        }
        for engine in engines.values():
            # Instances outlive an engine (servers keep running, containers too): delete them
            # before the engine stops, so the benchmark leaves nothing behind.
            stack.callback(delete_instances, engine)
        states: dict[str, str] = {}
        # Warm: base init and the hit's state.
        for kind, (image, _env, _backend) in runtimes.items():
            states[kind] = succeeded(engines[kind], psql_body("-c", SCRIPT, image=image))[
                "state_id"
            ]
        for i in range(options.cold):
            for kind, (image, _env, _backend) in runtimes.items():
                body = psql_body("-c", f"{SCRIPT} -- cold {i} {time.time()}", image=image)
                cold[kind].append(timed(lambda e=engines[kind], b=body: succeeded(e, b)))
                delete_instances(engines[kind])
        for _ in range(options.hits):
            for kind, (image, _env, _backend) in runtimes.items():
                body = psql_body("-c", SCRIPT, image=image)
                hits[kind].append(timed(lambda e=engines[kind], b=body: succeeded(e, b)))
                # Untimed: every hit (and the bare floor) runs with the same containers
                # around; a growing number of them slows every Podman API call down.
                delete_instances(engines[kind])
        # The bare floor on a copy of the docker engine's state for the same script.
        store = engines["docker"].state_store
        (state_dir,) = store.glob(f"engines/postgres/*/states/{states['docker']}")
        scratch = make_scratch_dir("sqlrs-bench-bare-")
        try:
            client = docker.DockerClient(base_url=url)
            owner = (state_dir / "pgdata").stat()
            for i in range(options.bare):
                data = scratch / f"d{i}"
                copy = timed(
                    lambda d=data: subprocess.run(
                        ["cp", "-a", "--reflink=auto", f"{state_dir}/.", str(d)], check=True
                    )
                )
                # States are sealed to the engine's user: the server user needs the copy's top.
                os.chown(data, owner.st_uid, owner.st_gid)
                bare.append(bare_start(client, data, f"{owner.st_uid}:{owner.st_gid}"))
                bare_with_copy.append(copy + bare[-1])
        finally:
            remove_scratch_dir(scratch)
    report = {
        "hit_median_s": {k: median(v) for k, v in hits.items()},
        "cold_median_s": {k: median(v) for k, v in cold.items()},
        "bare_container_start_median_s": median(bare),
        "bare_copy_and_start_median_s": median(bare_with_copy),
        "hit_docker_over_bare": median(hits["docker"]) / median(bare),
        "hit_docker_over_bare_copy_and_start": median(hits["docker"]) / median(bare_with_copy),
        "hit_docker_over_host": median(hits["docker"]) / median(hits["host"]),
        **(
            {
                "hit_docker_overlay_over_bare": median(hits["docker-overlay"]) / median(bare),
            }
            if "docker-overlay" in hits
            else {}
        ),
        "cold_docker_over_host": median(cold["docker"]) / median(cold["host"]),
        "raw": {"hits": hits, "cold": cold, "bare": bare, "bare_with_copy": bare_with_copy},
    }
    for key, value in report.items():
        if key != "raw":
            print(f"{key}: {value}")
    print(f"saved {save('docker', report)}")


if __name__ == "__main__":
    main()
