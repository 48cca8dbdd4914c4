"""Image ids: digest detection (§2.7), layout names (§9.1), host-runtime images (§0.2)."""

from __future__ import annotations

import pytest

from sqlrs_engine.prepare.images import (
    PostgresImage,
    UnsupportedImageError,
    has_digest,
    host_image_id,
    layout_dirs,
    parse_host_image,
    parse_postgres_image,
    select_major,
)

ZEROS = "0" * 64


@pytest.mark.parametrize(
    ("image_id", "expected"),
    [
        ("postgres", False),
        ("postgres:17", False),
        ("postgres@", False),
        ("a@b@", False),
        ("postgres@sha256:ab12", True),
        (f"postgres:17@sha256:{ZEROS}", True),
        ("postgres@host-15.18", True),
        ("@x", True),
    ],
)
def test_has_digest(image_id: str, expected: bool) -> None:
    assert has_digest(image_id) is expected


@pytest.mark.parametrize(
    ("image_id", "engine", "version"),
    [
        ("postgres@sha256:ab12", "postgres", "sha256_ab12"),
        ("postgres@host-15.18", "postgres", "host-15.18"),
        (f"postgres:17@sha256:{ZEROS}", "postgres", f"sha256_{ZEROS}"),
        ("postgres:17", "postgres", "17"),
        ("postgres:15.4", "postgres", "15.4"),
        ("postgres", "postgres", "latest"),
        ("postgres:", "postgres", "latest"),
        ("postgres@", "postgres", "latest"),
        ("docker.io/library/postgres:16", "postgres", "16"),
        ("localhost:5000/postgres", "postgres", "latest"),
        ("localhost:5000/team/pg:15", "pg", "15"),
        ("localhost/postgres:15", "postgres", "15"),
        ("", "unknown", "latest"),
        ("..", "unknown", "latest"),
        (".:..", "unknown", "unknown"),
        ("postgres:..", "postgres", "unknown"),
        ("my image:a b", "my_image", "a_b"),
        ("pôstgres:ü", "p_stgres", "_"),
        ("repo/", "unknown", "latest"),
        ("x@sha256:a/b", "x", "sha256_a_b"),
    ],
)
def test_layout_dirs(image_id: str, engine: str, version: str) -> None:
    assert layout_dirs(image_id) == (engine, version)


@pytest.mark.parametrize(
    ("image_id", "expected"),
    [
        ("postgres", PostgresImage(None)),
        ("postgres:latest", PostgresImage(None)),
        ("postgres:15", PostgresImage(15)),
        ("postgres:15.4", PostgresImage(15, 4)),
        ("postgres:9", PostgresImage(9)),
        ("docker.io/library/postgres:17", PostgresImage(17)),
        ("docker.io/library/postgres", PostgresImage(None)),
        ("library/postgres:16.1", PostgresImage(16, 1)),
        ("localhost/postgres:15", PostgresImage(15)),
        ("postgres@host-15.18", PostgresImage(15, host_version="15.18")),
        ("postgres@host-16", PostgresImage(16, host_version="16")),
    ],
)
def test_parse_host_image(image_id: str, expected: PostgresImage) -> None:
    assert parse_host_image(image_id) == expected
    assert parse_postgres_image(image_id) == expected.major


@pytest.mark.parametrize(
    "image_id",
    [
        "",
        "mysql:8",
        "postgresql:15",
        "bitnami/postgresql:15",
        "postgres:15-alpine",
        "postgres:15.4.1",
        "postgres:abc",
        "postgres:15.",
        f"postgres@sha256:{ZEROS}",
        f"postgres:15@sha256:{ZEROS}",
        "postgres:15@host-15.1",
        "postgres@host-",
        "postgres@host-x",
        "postgres@",
    ],
)
def test_parse_host_image_rejects(image_id: str) -> None:
    with pytest.raises(UnsupportedImageError) as caught:
        parse_postgres_image(image_id)
    assert isinstance(caught.value, ValueError)
    assert caught.value.image_id == image_id


@pytest.mark.parametrize(
    ("image_id", "installed", "major"),
    [
        ("postgres", [15, 16], 16),
        ("postgres:latest", [16, 15, 16], 16),
        ("postgres:15", [15, 16], 15),
        ("postgres:15.99", [15], 15),
        ("postgres@host-15.18", [15], 15),
    ],
)
def test_select_major(image_id: str, installed: list[int], major: int) -> None:
    assert select_major(image_id, installed) == major


@pytest.mark.parametrize(
    ("image_id", "installed", "fragments"),
    [
        ("postgres:14", [15, 16], ["needs PostgreSQL 14", "installed PostgreSQL majors: 15, 16"]),
        ("mysql:8", [15], ["not a postgres image", "installed PostgreSQL majors: 15"]),
        ("postgres:15-alpine", [16, 15], ["15-alpine", "majors: 15, 16", "postgres:16"]),
        ("postgres", [], ["no PostgreSQL server binaries are installed"]),
        ("postgres:15", [], ["no PostgreSQL server binaries are installed"]),
    ],
)
def test_select_major_errors_name_installed_majors(
    image_id: str, installed: list[int], fragments: list[str]
) -> None:
    with pytest.raises(UnsupportedImageError) as caught:
        select_major(image_id, installed)
    text = str(caught.value)
    for fragment in fragments:
        assert fragment in text
    assert caught.value.installed_majors == tuple(sorted(set(installed)))


def test_error_can_be_described_later() -> None:
    with pytest.raises(UnsupportedImageError) as caught:
        parse_postgres_image("mysql")
    assert caught.value.installed_majors is None
    assert "installed PostgreSQL majors: 13, 17" in caught.value.describe([17, 13])
    assert "13, 17" in str(caught.value.with_installed([17, 13]))


def test_host_image_id_round_trip() -> None:
    image = host_image_id("15.18")
    assert image == "postgres@host-15.18"
    assert has_digest(image)
    assert layout_dirs(image) == ("postgres", "host-15.18")
    assert parse_postgres_image(image) == 15
