from __future__ import annotations

from pathlib import Path

import pytest

from sqlrs_engine.snapshot.layout import (
    STORE_METADATA_NAMES,
    StoreLayout,
    is_stale_name,
    stale_name,
)

ROOT = Path("/store")
L = StoreLayout(ROOT)


@pytest.mark.parametrize(
    ("image_id", "expected"),
    [
        ("postgres@sha256:ab12", "postgres/sha256_ab12"),
        ("postgres@host-15.18", "postgres/host-15.18"),
        ("postgres", "postgres/latest"),
        ("postgres:15", "postgres/15"),
        ("postgres:15.4-bookworm", "postgres/15.4-bookworm"),
        ("docker.io/library/postgres:16", "postgres/16"),
        ("localhost:5000/postgres", "postgres/latest"),
        ("localhost:5000/team/pg:17@sha256:ff", "pg/sha256_ff"),
        ("postgres:15@sha256:ab", "postgres/sha256_ab"),
        ("a/b/c@x/y", "c/x_y"),
        ("@sha256:abc", "unknown/sha256_abc"),
        ("postgres@", "postgres/latest"),
        ("postgres:", "postgres/latest"),
        ("repo/", "unknown/latest"),
        ("", "unknown/latest"),
        ("   ", "unknown/latest"),
        (".", "unknown/latest"),
        ("..:..", "unknown/unknown"),
        ("x@.", "x/unknown"),
        ("my image:v 1", "my_image/v_1"),
        ("pöstgres:tag!", "p_stgres/tag_"),
        ("postgres:ünï", "postgres/_n_"),
        ("pg$(rm -rf):1;2", "pg__rm_-rf_/1_2"),
    ],
)
def test_engine_dir_from_image_id(image_id: str, expected: str) -> None:
    assert L.engine_dir(image_id) == ROOT / "engines" / expected


def test_engine_dir_never_escapes_engines() -> None:
    for image in ["../../etc", "..", "a/../../b:..", "/abs/path:../x", "x@../../y"]:
        rel = L.engine_dir(image).relative_to(ROOT / "engines")
        assert len(rel.parts) == 2
        assert ".." not in rel.parts and "." not in rel.parts


def test_paths() -> None:
    img, sid = "postgres@sha256:ab12", "f" * 64
    eng = ROOT / "engines" / "postgres" / "sha256_ab12"
    assert L.state_db == ROOT / "state.db"
    assert L.config_json == ROOT / "config.json"
    assert L.evict_lock == ROOT / ".evict.lock"
    assert L.base_dir(img) == eng / "base"
    assert L.init_lock(img) == eng / "base" / ".init.lock"
    assert L.init_marker(img) == eng / "base" / ".init.ok"
    assert L.states_dir(img) == eng / "states"
    assert L.state_dir(img, sid) == eng / "states" / sid
    assert L.build_lock(img, sid) == eng / "states" / sid / ".build.lock"
    assert L.build_marker(img, sid) == eng / "states" / sid / ".build.ok"
    assert L.build_lock(img, sid, separate=True) == eng / "states" / ".build" / f"{sid}.lock"
    assert L.build_marker(img, sid, separate=True) == eng / "states" / ".build" / f"{sid}.ok"
    assert L.job_dir("a" * 32) == ROOT / "jobs" / ("a" * 32)
    assert L.job_runtime_dir("a" * 32) == ROOT / "jobs" / ("a" * 32) / "runtime"


@pytest.mark.parametrize("bad", ["", ".", "..", ".build", "a/b", "../x", " x", "x\0"])
def test_unsafe_ids_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid state id"):
        L.state_dir("postgres", bad)
    with pytest.raises(ValueError, match="invalid job id"):
        L.job_dir(bad)


def test_metadata_names() -> None:
    assert {".init.ok", ".init.lock", ".build.ok", ".build.lock"} == STORE_METADATA_NAMES


def test_stale_names() -> None:
    p = stale_name(Path("/r/jobs/j/runtime"), 123)
    assert p == Path("/r/jobs/j/runtime.stale-123")
    assert is_stale_name(p.name)
    for name in ["runtime", ".stale-1", "x.stale-", "x.stale-12a", "stale-1"]:
        assert not is_stale_name(name), name


def test_layout_is_frozen() -> None:
    with pytest.raises(AttributeError):
        L.root = Path("/other")  # type: ignore[misc]
