"""Read endpoints over seeded metadata, through the real process (SPEC §7, §4.9)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlrs_engine.snapshot.layout import StoreLayout
from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.seed import IMAGE, Seeder

S1 = "a1" * 32
S2 = "b2" * 32
S3 = "c3" * 32
I1 = "0123456789abcdef0123456789abcdef"
I2 = "fedcba9876543210fedcba9876543210"
I3 = "aaaaaaaabbbbbbbbccccccccdddddddd"
J1 = "11111111111111111111111111111111"
J2 = "11112222333344445555666677778888"
J3 = "99999999999999999999999999999999"


@pytest.fixture(scope="module")
def seeded() -> Iterator[EngineProcess]:
    workdir = make_scratch_dir()
    seeder = Seeder(workdir / "state-store")
    seeder.state(S1)
    seeder.state(S2, parent=S1, size=None)
    seeder.state(S3, kind="lb", image="postgres@host-16.1")
    seeder.instance(I1, S1)
    seeder.instance(I2, S2, expires_at="2000-01-01T00:00:00Z")
    seeder.instance(I3, S1, runtime_id=None)
    seeder.name("dev", I1, S1)
    seeder.name("old", I2, S2)
    seeder.name("ghost", None, S3, image="postgres@host-16.1")
    seeder.job(J1, created_at="2026-01-01T00:00:01Z", signature="sig")
    seeder.job(J2, status="failed", plan_only=True, created_at="2026-01-01T00:00:02Z")
    seeder.job(J3, status="queued", created_at="2026-01-01T00:00:03Z")
    seeder.jobs.replace_tasks(
        J1,
        [
            {
                "task_id": "plan",
                "position": 0,
                "type": "plan",
                "status": "succeeded",
                "planner_kind": "psql",
            },
            {
                "task_id": "resolve-image",
                "position": 1,
                "type": "resolve_image",
                "status": "succeeded",
                "image_id": "postgres:15",
                "resolved_image_id": IMAGE,
            },
            {
                "task_id": "execute-0",
                "position": 2,
                "type": "state_execute",
                "status": "succeeded",
                "input_kind": "image",
                "input_id": IMAGE,
                "task_hash": "f" * 64,
                "output_state_id": S1,
                "cached": False,
                "args_summary": "-c select 1",
            },
            {
                "task_id": "prepare-instance",
                "position": 3,
                "type": "prepare_instance",
                "status": "succeeded",
                "input_kind": "state",
                "input_id": S1,
                "instance_mode": "ephemeral",
            },
        ],
    )
    seeder.close()
    # Rows need their files: the engine's start-up repair removes rows of states whose
    # directory is missing. Complete copy-backend states suffice for the read endpoints.
    layout = StoreLayout(workdir / "state-store")
    for state_id, image in ((S1, IMAGE), (S2, IMAGE), (S3, "postgres@host-16.1")):
        state_dir = layout.state_dir(image, state_id)
        (state_dir / "pgdata").mkdir(parents=True)
        (state_dir / "pgdata" / "PG_VERSION").write_text("15\n")
        (state_dir / ".build.ok").write_text("ok")
    # I2 expired long ago: keep it listed (status `expired`) instead of letting the engine's
    # expiry check delete it, which is what it does by default (tests/e2e/test_instance_ttl.py).
    layout.config_json.write_text(
        json.dumps({"snapshot": {"backend": "copy"}, "instances": {"expiryInterval": "0"}})
    )
    engine = start_engine(workdir, env={"SQLRS_STATE_STORE": str(workdir / "state-store")})
    try:
        yield engine
    finally:
        engine.stop()
        remove_scratch_dir(workdir)


def ids(entries: list[dict[str, object]], key: str) -> list[object]:
    return [entry[key] for entry in entries]


def test_states_list_and_entry_shape(seeded: EngineProcess) -> None:
    states = seeded.get("/v1/states").json()
    assert ids(states, "state_id") == [S1, S2, S3]
    first = states[0]
    assert first["refcount"] == 2
    assert first["image_id"] == IMAGE
    assert first["size_bytes"] == 1024
    assert "parent_state_id" not in first
    second = states[1]
    assert second["parent_state_id"] == S1
    assert "size_bytes" not in second
    assert states[2]["refcount"] == 0


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"kind": "lb"}, [S3]),
        ({"kind": "psql"}, [S1, S2]),
        ({"image": "postgres@host-16.1"}, [S3]),
        ({"id_prefix": S2[:8].upper()}, [S2]),
        ({"id_prefix": "  " + S1[:10] + " "}, [S1]),
        ({"id_prefix": ""}, [S1, S2, S3]),
        ({"kind": "psql", "id_prefix": "c3c3c3c3"}, []),
    ],
)
def test_states_filters(seeded: EngineProcess, query: dict[str, str], expected: list[str]) -> None:
    assert ids(seeded.get("/v1/states", params=query).json(), "state_id") == expected


@pytest.mark.parametrize("path", ["/v1/states", "/v1/instances"])
@pytest.mark.parametrize(
    ("prefix", "details"),
    [
        ("abc", "id_prefix must be at least 8 hex characters"),
        ("zzzzzzzzzz", "id_prefix must be hex"),
    ],
)
def test_bad_id_prefix(seeded: EngineProcess, path: str, prefix: str, details: str) -> None:
    response = seeded.get(path, params={"id_prefix": prefix})
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_argument",
        "message": "invalid id_prefix",
        "details": details,
    }


def test_state_by_id(seeded: EngineProcess) -> None:
    assert seeded.get(f"/v1/states/{S2}").json()["parent_state_id"] == S1
    missing = seeded.get("/v1/states/" + "0" * 64)
    assert missing.status_code == 404
    assert missing.text == "404 page not found\n"


def test_instances_with_derived_status(seeded: EngineProcess) -> None:
    entries = {e["instance_id"]: e for e in seeded.get("/v1/instances").json()}
    assert entries[I1]["status"] == "active"
    assert entries[I1]["name"] == "dev"
    assert entries[I2]["status"] == "expired"
    assert entries[I3]["status"] == "orphaned"
    assert "runtime_id" not in entries[I3]
    assert all("runtime_dir" not in entry for entry in entries.values())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"state": S1}, [I1, I3]),
        ({"state": S2}, [I2]),
        ({"image": "nope"}, []),
        ({"id_prefix": "FEDCBA98"}, [I2]),
    ],
)
def test_instances_filters(
    seeded: EngineProcess, query: dict[str, str], expected: list[str]
) -> None:
    assert ids(seeded.get("/v1/instances", params=query).json(), "instance_id") == expected


def test_instance_by_id_and_by_name(seeded: EngineProcess) -> None:
    assert seeded.get(f"/v1/instances/{I1}").json()["instance_id"] == I1
    assert seeded.get(f"/v1/instances/{I1.upper()}").status_code == 404
    redirect = seeded.get("/v1/instances/dev")
    assert redirect.status_code == 307
    assert redirect.headers["Location"] == f"/v1/instances/{I1}"
    assert redirect.content == b""
    assert seeded.get("/v1/instances/nobody").status_code == 404


def test_names(seeded: EngineProcess) -> None:
    names = {n["name"]: n for n in seeded.get("/v1/names").json()}
    assert names["dev"]["status"] == "active"
    assert names["old"]["status"] == "expired"
    assert names["ghost"]["status"] == "missing"
    assert "instance_id" not in names["ghost"]
    assert seeded.get("/v1/names", params={"instance": I1}).json()[0]["name"] == "dev"
    assert seeded.get("/v1/names/dev").json()["state_id"] == S1
    assert seeded.get("/v1/names/none").status_code == 404


def test_jobs_list_with_prefix_filter(seeded: EngineProcess) -> None:
    jobs = seeded.get("/v1/prepare-jobs").json()
    assert ids(jobs, "job_id") == [J1, J2, J3]
    assert jobs[0]["resolved_image_id"] == IMAGE
    assert jobs[0]["signature"] == "sig"
    assert jobs[1]["plan_only"] is True
    assert "plan_only" not in jobs[0]
    assert ids(seeded.get("/v1/prepare-jobs", params={"job": "1111"}).json(), "job_id") == [J1, J2]
    assert seeded.get("/v1/prepare-jobs", params={"job": "%"}).json() == []


def test_job_status_and_tasks(seeded: EngineProcess) -> None:
    status = seeded.get(f"/v1/prepare-jobs/{J1}").json()
    assert status["status"] == "succeeded"
    assert [t["task_id"] for t in status["tasks"]] == [
        "plan",
        "resolve-image",
        "execute-0",
        "prepare-instance",
    ]
    execute = status["tasks"][2]
    assert execute["input"] == {"kind": "image", "id": IMAGE}
    assert execute["cached"] is False
    assert "status" not in execute
    tasks = seeded.get("/v1/tasks", params={"job": J1}).json()
    assert [t["status"] for t in tasks] == ["succeeded"] * 4
    assert tasks[2]["args_summary"] == "-c select 1"
    assert seeded.get("/v1/tasks", params={"job": J1[:8]}).json() == []
    assert seeded.get("/v1/prepare-jobs/" + "0" * 32).status_code == 404


@pytest.mark.parametrize(
    "path", ["/v1/states", "/v1/instances", "/v1/names", "/v1/prepare-jobs", "/v1/tasks"]
)
def test_ndjson_when_asked(seeded: EngineProcess, path: str) -> None:
    as_array = seeded.get(path).json()
    response = seeded.get(path, headers={"Accept": "application/X-NDJSON; q=1"})
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == as_array
    assert response.text.endswith("\n") or not as_array


def test_empty_lists_are_arrays(scratch_dir: Path) -> None:
    engine = start_engine(scratch_dir)
    try:
        for path in ["/v1/states", "/v1/instances", "/v1/names", "/v1/prepare-jobs", "/v1/tasks"]:
            response = engine.get(path)
            assert response.text == "[]\n"
            assert engine.get(path, headers={"Accept": "application/x-ndjson"}).text == ""
    finally:
        engine.stop()
