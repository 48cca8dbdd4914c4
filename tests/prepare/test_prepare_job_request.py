"""SPEC §2.1 request decoding: JSON types, common validation, request_json round trip."""

from __future__ import annotations

from typing import Any

import pytest

from sqlrs_engine.errors import ApiError
from sqlrs_engine.prepare.job_request import PrepareRequest, parse_prepare_request

BASE: dict[str, Any] = {"prepare_kind": "psql", "image_id": "postgres:17", "psql_args": ["-c", "x"]}


def with_fields(**fields: Any) -> dict[str, Any]:
    body = dict(BASE)
    body.update(fields)
    return body


def test_minimal_request() -> None:
    req = parse_prepare_request(BASE)
    assert req == PrepareRequest(prepare_kind="psql", image_id="postgres:17", psql_args=["-c", "x"])
    assert req.stdin is None
    assert req.plan_only is False


def test_all_fields_and_trimming() -> None:
    body = {
        "prepare_kind": "  lb\t",
        "image_id": "\n postgres@sha256:ab ",
        "psql_args": [],
        "stdin": None,
        "plan_only": True,
        "liquibase_args": ["update", "--changelog-file", "x.xml"],
        "liquibase_exec": "/opt/lb/liquibase",
        "liquibase_exec_mode": "native",
        "liquibase_env": {"JAVA_HOME": "/jdk"},
        "work_dir": "/w",
        "unknown_field": {"ignored": True},
    }
    req = parse_prepare_request(body)
    assert req.prepare_kind == "lb"
    assert req.image_id == "postgres@sha256:ab"
    assert req.plan_only is True
    assert req.liquibase_args == ["update", "--changelog-file", "x.xml"]
    assert req.liquibase_exec == "/opt/lb/liquibase"
    assert req.liquibase_exec_mode == "native"
    assert req.liquibase_env == {"JAVA_HOME": "/jdk"}
    assert req.work_dir == "/w"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("psql_args", None, []),
        ("psql_args", ["-c", None], ["-c", ""]),
        ("plan_only", None, False),
        ("stdin", None, None),
        ("stdin", "", ""),
        ("liquibase_env", None, {}),
        ("liquibase_env", {"A": None}, {"A": ""}),
        ("work_dir", None, ""),
    ],
)
def test_null_is_the_absent_value(field: str, value: Any, expected: Any) -> None:
    req = parse_prepare_request(with_fields(**{field: value}))
    assert getattr(req, field) == expected


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (with_fields(prepare_kind=5), "prepare_kind"),
        (with_fields(prepare_kind=["psql"]), "prepare_kind"),
        (with_fields(image_id=True), "image_id"),
        (with_fields(psql_args="-c x"), "psql_args"),
        (with_fields(psql_args={"0": "-c"}), "psql_args"),
        (with_fields(psql_args=["-c", 1]), "psql_args[1]"),
        (with_fields(psql_args=[["-c"]]), "psql_args[0]"),
        (with_fields(stdin=5), "stdin"),
        (with_fields(stdin=["x"]), "stdin"),
        (with_fields(plan_only="true"), "plan_only"),
        (with_fields(plan_only=1), "plan_only"),
        (with_fields(plan_only=0), "plan_only"),
        (with_fields(liquibase_args=[True]), "liquibase_args[0]"),
        (with_fields(liquibase_exec=1.5), "liquibase_exec"),
        (with_fields(liquibase_exec_mode={}), "liquibase_exec_mode"),
        (with_fields(liquibase_env=["A=1"]), "liquibase_env"),
        (with_fields(liquibase_env={"A": 1}), "liquibase_env.A"),
        (with_fields(work_dir=7), "work_dir"),
    ],
)
def test_wrong_json_types(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_prepare_request(body)
    err = caught.value
    assert (err.status, err.code, err.message) == (400, "invalid_argument", "invalid json payload")
    assert err.details is not None
    assert err.details.startswith(f"{field}: expected ")
    assert field in str(err)


@pytest.mark.parametrize("body", [None, [], ["psql"], "psql", 3, True])
def test_body_must_be_an_object(body: object) -> None:
    with pytest.raises(ApiError) as caught:
        parse_prepare_request(body)
    assert (caught.value.code, caught.value.message) == ("invalid_argument", "invalid json payload")
    assert caught.value.details is not None
    assert "JSON object" in caught.value.details


@pytest.mark.parametrize(
    ("body", "message", "details"),
    [
        ({"image_id": "postgres"}, "prepare_kind is required", None),
        ({"prepare_kind": "  ", "image_id": "postgres"}, "prepare_kind is required", None),
        ({"prepare_kind": None, "image_id": "postgres"}, "prepare_kind is required", None),
        ({}, "prepare_kind is required", None),
        ({"prepare_kind": "liquibase", "image_id": "x"}, "unsupported prepare_kind", "liquibase"),
        ({"prepare_kind": " PSQL ", "image_id": "x"}, "unsupported prepare_kind", "PSQL"),
        ({"prepare_kind": "mysql"}, "unsupported prepare_kind", "mysql"),
        ({"prepare_kind": "psql"}, "image_id is required", None),
        ({"prepare_kind": "lb", "image_id": " \t "}, "image_id is required", None),
        # JSON type errors come before semantic checks
        ({"prepare_kind": "", "plan_only": "yes"}, "invalid json payload", None),
    ],
)
def test_common_validation(body: dict[str, Any], message: str, details: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        parse_prepare_request(body)
    err = caught.value
    assert (err.status, err.code, err.message) == (400, "invalid_argument", message)
    if message != "invalid json payload":
        assert err.details == details


@pytest.mark.parametrize(
    ("body", "request_json"),
    [
        (
            {"prepare_kind": " psql ", "image_id": " postgres:17 ", "psql_args": ["-c", "x"]},
            {"prepare_kind": "psql", "image_id": "postgres:17", "psql_args": ["-c", "x"]},
        ),
        (
            {"prepare_kind": "psql", "image_id": "p", "psql_args": ["-f", "-"], "stdin": ""},
            {"prepare_kind": "psql", "image_id": "p", "psql_args": ["-f", "-"], "stdin": ""},
        ),
        (
            {"prepare_kind": "psql", "image_id": "p", "plan_only": False},
            {"prepare_kind": "psql", "image_id": "p"},
        ),
        (
            {"prepare_kind": "psql", "image_id": "p", "plan_only": True},
            {"prepare_kind": "psql", "image_id": "p", "plan_only": True},
        ),
        (
            {
                "prepare_kind": "lb",
                "image_id": "p",
                "liquibase_args": ["update"],
                "liquibase_exec": "lb",
                "liquibase_exec_mode": "auto",
                "liquibase_env": {"K": "V"},
                "work_dir": "/w",
            },
            {
                "prepare_kind": "lb",
                "image_id": "p",
                "liquibase_args": ["update"],
                "liquibase_exec": "lb",
                "liquibase_exec_mode": "auto",
                "liquibase_env": {"K": "V"},
                "work_dir": "/w",
            },
        ),
    ],
)
def test_request_json_round_trip(body: dict[str, Any], request_json: dict[str, Any]) -> None:
    req = parse_prepare_request(body)
    assert req.to_request_json() == request_json
    assert PrepareRequest.from_request_json(req.to_request_json()) == req


def test_request_json_is_a_copy() -> None:
    req = parse_prepare_request(BASE)
    stored = req.to_request_json()
    stored["psql_args"].append("-q")
    assert req.psql_args == ["-c", "x"]


# -- ttl (beyond the reference: the instance's expires_at) ---------------------------------


@pytest.mark.parametrize(
    ("ttl", "stored"),
    [
        (None, ""),
        ("", ""),
        ("  ", ""),
        ("30m", "30m"),
        (" 1h30m ", "1h30m"),
        ("1.5s", "1.5s"),
        ("87600h", "87600h"),
    ],
)
def test_valid_ttl(ttl: str | None, stored: str) -> None:
    req = parse_prepare_request(with_fields(ttl=ttl))
    assert req.ttl == stored
    assert ("ttl" in req.to_request_json()) == bool(stored)
    assert PrepareRequest.from_request_json(req.to_request_json()) == req


@pytest.mark.parametrize(
    ("ttl", "details_part"),
    [
        ("abc", 'time: invalid duration "abc"'),
        ("30", 'time: missing unit in duration "30"'),
        ("0s", "ttl must be positive"),
        ("0", "ttl must be positive"),
        ("-5m", "ttl must be positive"),
        ("87601h", "at most 87600h"),
    ],
)
def test_invalid_ttl_is_a_400(ttl: str, details_part: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_prepare_request(with_fields(ttl=ttl))
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        400,
        "invalid_argument",
        "invalid ttl",
    )
    assert details_part in (caught.value.details or "")


def test_ttl_must_be_a_string() -> None:
    with pytest.raises(ApiError) as caught:
        parse_prepare_request(with_fields(ttl=30))
    assert caught.value.message == "invalid json payload"
    assert caught.value.details == "ttl: expected a string, got number"


def test_expires_at_is_created_plus_ttl() -> None:
    from datetime import UTC, datetime

    created = datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)
    assert parse_prepare_request(with_fields(ttl="1h30m")).expires_at(created) == (
        "2026-01-02T04:34:05.25Z"
    )
    assert parse_prepare_request(BASE).expires_at(created) is None
