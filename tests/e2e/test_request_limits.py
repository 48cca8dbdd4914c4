"""Requests larger than any client program could take are refused at submit time with a 413
that states the limit (issue 11), and the memory they took is given back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sqlrs_engine.limits import MAX_ARG_BYTES, MAX_STDIN_BYTES
from tests.support.engine_process import EngineProcess


@pytest.fixture(scope="module")
def engine(shared_engine: EngineProcess) -> EngineProcess:
    return shared_engine


def post_raw(engine: EngineProcess, path: str, body: dict[str, object]) -> dict[str, object]:
    response = engine.post(
        path, data=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    answer: dict[str, object] = response.json()
    assert (answer["code"], answer["message"]) == ("invalid_argument", "request too large")
    return answer


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"psql_args": ["-c", "x" * (MAX_ARG_BYTES + 1)]}, f"limit is {MAX_ARG_BYTES} bytes"),
        ({"psql_args": ["-f", "-"], "stdin": "x" * (MAX_STDIN_BYTES + 1)}, "stdin is"),
    ],
    ids=["argument", "stdin"],
)
def test_prepare_refuses_what_psql_could_not_take(
    engine: EngineProcess, body: dict[str, object], says: str
) -> None:
    jobs_before = engine.get("/v1/prepare-jobs").json()
    full = {"prepare_kind": "psql", "image_id": "postgres:15", **body}
    for path in ("/v1/prepare-jobs", "/v1/cache/explain/prepare"):
        answer = post_raw(engine, path, full)
        assert says in str(answer["details"])
    assert engine.get("/v1/prepare-jobs").json() == jobs_before, "no job was created"


@pytest.mark.parametrize(
    "body",
    [
        {"args": ["-c", "x" * (MAX_ARG_BYTES + 1)]},
        {"args": ["-f", "-"], "stdin": "x" * (MAX_STDIN_BYTES + 1)},
        {"steps": [{"args": ["-c", "select 1"]}, {"args": ["-c", "x" * (MAX_ARG_BYTES + 1)]}]},
    ],
    ids=["argument", "stdin", "step-argument"],
)
def test_run_refuses_what_psql_could_not_take(
    engine: EngineProcess, body: dict[str, object]
) -> None:
    post_raw(engine, "/v1/runs", {"instance_ref": "0" * 32, "kind": "psql", **body})


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_of_refused_large_requests_is_given_back(engine: EngineProcess) -> None:
    """Five 31 MiB bodies (parsed, decoded, refused): without the engine's malloc settings the
    process stayed ~125 MB larger; it must come back to within a few MB."""
    body = json.dumps(
        {"prepare_kind": "psql", "image_id": "postgres:15", "psql_args": ["-c", "x" * (31 << 20)]}
    )
    headers = {"Content-Type": "application/json"}
    engine.post("/v1/prepare-jobs", data=body, headers=headers)  # warm up every code path
    before = rss_mib(engine.process.pid)
    for _ in range(5):
        assert engine.post("/v1/prepare-jobs", data=body, headers=headers).status_code == 413
    grown = rss_mib(engine.process.pid) - before
    assert grown < 8, f"the engine kept {grown:.1f} MiB after refusing large requests"
