"""Config endpoints through the real process (SPEC §8)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.support.engine_process import EngineProcess, start_engine


def test_overrides_start_empty_and_effective_has_defaults(engine: EngineProcess) -> None:
    assert engine.get("/v1/config").json() == {}
    effective = engine.get("/v1/config", params={"effective": "true"}).json()
    assert effective["snapshot"]["backend"] == "auto"
    assert effective["orchestrator"]["jobs"]["maxIdentical"] == 2
    assert effective["cache"]["capacity"]["minStateAge"] == "10m"
    assert effective["container"]["runtime"] == "auto"
    assert list(effective) == sorted(effective)


def test_patch_get_delete_round_trip(engine: EngineProcess) -> None:
    response = engine.patch("/v1/config", json={"path": "snapshot.backend", "value": "copy"})
    assert response.status_code == 200
    assert response.json() == {"path": "snapshot.backend", "value": "copy"}
    assert engine.get("/v1/config").json() == {"snapshot": {"backend": "copy"}}
    got = engine.get("/v1/config", params={"path": "snapshot.backend"}).json()
    assert got == {"path": "snapshot.backend", "value": "copy"}
    deleted = engine.delete("/v1/config", params={"path": "snapshot.backend"})
    assert deleted.json() == {"path": "snapshot.backend", "value": "auto"}
    # Without its override the key reads as its default again (SPEC §0.1); an unknown
    # path stays a 404, and the whole object stays overrides-only.
    default = engine.get("/v1/config", params={"path": "snapshot.backend"})
    assert default.status_code == 200
    assert default.json() == {"path": "snapshot.backend", "value": "auto"}
    missing = engine.get("/v1/config", params={"path": "snapshot.nope"})
    assert missing.status_code == 404
    assert missing.json() == {"code": "not_found", "message": "path not found"}
    assert engine.get("/v1/config").json() == {"snapshot": {}}


def test_fresh_store_reads_defaults_of_known_keys(engine: EngineProcess) -> None:
    # What `sqlrs config get orchestrator.jobs.maxIdentical` asks on a fresh store.
    got = engine.get("/v1/config", params={"path": "orchestrator.jobs.maxIdentical"})
    assert (got.status_code, got.json()) == (
        200,
        {"path": "orchestrator.jobs.maxIdentical", "value": 2},
    )


def test_arbitrary_paths_with_indexes(engine: EngineProcess) -> None:
    engine.patch("/v1/config", json={"path": "custom.list[2].name", "value": "x"})
    got = engine.get("/v1/config", params={"path": "custom.list"}).json()
    assert got["value"] == [None, None, {"name": "x"}]
    engine.delete("/v1/config", params={"path": "custom.list[0]"})
    got = engine.get("/v1/config", params={"path": "custom.list"}).json()
    assert got["value"] == [None, {"name": "x"}]


@pytest.mark.parametrize(
    ("body", "status", "message", "details"),
    [
        ({"value": 1}, 400, "path is required", None),
        ({"path": "  ", "value": 1}, 400, "path is required", None),
        ({"path": "a..b", "value": 1}, 400, "invalid config value", "config path is invalid"),
        ({"path": ".a", "value": 1}, 400, "invalid config value", "config path is invalid"),
        ({"path": "a[x]", "value": 1}, 400, "invalid config value", "config path is invalid"),
        (
            {"path": "snapshot.backend", "value": "zfs"},
            400,
            "invalid config value",
            "config value is invalid",
        ),
        (
            {"path": "container.runtime", "value": "lxc"},
            400,
            "invalid config value",
            "config value is invalid",
        ),
        (
            {"path": "orchestrator.jobs.maxIdentical", "value": -1},
            400,
            "invalid config value",
            "config value is invalid",
        ),
        (
            {"path": "orchestrator.jobs.maxIdentical", "value": 1.5},
            400,
            "invalid config value",
            "config value is invalid",
        ),
        (
            {"path": "orchestrator.jobs.maxIdentical", "value": "2"},
            400,
            "invalid config value",
            "config value is invalid",
        ),
        (
            {"path": "cache.capacity.highWatermark", "value": 0},
            400,
            "invalid config value",
            "config value is invalid",
        ),
        (
            {"path": "cache.capacity.lowWatermark", "value": 0.95},
            400,
            "invalid config value",
            "config value is invalid",
        ),
        (
            {"path": "cache.capacity.minStateAge", "value": "ten minutes"},
            400,
            "invalid config value",
            "config value is invalid",
        ),
        (
            {"path": "log.level", "value": "loud"},
            400,
            "invalid config value",
            "config value is invalid",
        ),
    ],
)
def test_patch_validation(
    engine: EngineProcess, body: dict[str, object], status: int, message: str, details: str | None
) -> None:
    response = engine.patch("/v1/config", json=body)
    assert response.status_code == status
    error = response.json()
    assert error["code"] == "invalid_argument"
    assert error["message"] == message
    if details:
        assert error["details"].startswith(details)
    assert engine.get("/v1/config").json() == {}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("log.level", "WARN"),
        ("container.runtime", "host"),
        ("orchestrator.jobs.maxIdentical", 0),
        ("orchestrator.jobs.maxIdentical", None),
        ("cache.capacity.minStateAge", "1h30m"),
        ("cache.capacity.lowWatermark", 0.5),
        ("something.else", {"any": ["json", 1, True]}),
    ],
)
def test_patch_accepts_valid_values(engine: EngineProcess, path: str, value: object) -> None:
    response = engine.patch("/v1/config", json={"path": path, "value": value})
    assert response.status_code == 200
    assert response.json() == {"path": path, "value": value}


def test_get_and_delete_errors(engine: EngineProcess) -> None:
    bad = engine.get("/v1/config", params={"path": "a..b"})
    assert (bad.status_code, bad.json()["message"]) == (400, "invalid path")
    assert engine.delete("/v1/config").status_code == 400
    absent = engine.delete("/v1/config", params={"path": "snapshot.backend"})
    assert absent.status_code == 404
    assert absent.json()["code"] == "not_found"


def test_schema_is_a_json_schema(engine: EngineProcess) -> None:
    schema = engine.get("/v1/config/schema").json()
    assert schema["type"] == "object"
    assert "2020-12" in schema["$schema"]
    backend = schema["properties"]["snapshot"]["properties"]["backend"]
    assert set(backend["enum"]) >= {"auto", "overlay", "btrfs", "copy"}


def test_overrides_persist_atomically_across_restarts(scratch_dir: Path) -> None:
    first = start_engine(scratch_dir)
    first.patch("/v1/config", json={"path": "orchestrator.jobs.maxIdentical", "value": 5})
    first.stop()
    config_file = first.state_store / "config.json"
    assert json.loads(config_file.read_text()) == {"orchestrator": {"jobs": {"maxIdentical": 5}}}
    assert config_file.read_text().startswith('{\n  "')
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert [p.name for p in first.state_store.iterdir() if "tmp" in p.name] == []
    second = start_engine(scratch_dir)
    try:
        value = second.get("/v1/config", params={"path": "orchestrator.jobs.maxIdentical"})
        assert value.json()["value"] == 5
    finally:
        second.stop()
