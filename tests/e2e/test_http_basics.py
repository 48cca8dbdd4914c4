"""HTTP conventions through the real process: auth, 404/405, bad input (SPEC §1.6, §1.8, §0.7)."""

from __future__ import annotations

import concurrent.futures
import http.client

import pytest
import requests

from tests.support.engine_process import EngineProcess


@pytest.fixture
def engine(shared_engine: EngineProcess) -> EngineProcess:
    """These tests change nothing, so they share one engine process."""
    return shared_engine


PROTECTED = [
    ("GET", "/v1/config"),
    ("GET", "/v1/config/schema"),
    ("GET", "/v1/names"),
    ("GET", "/v1/instances"),
    ("GET", "/v1/states"),
    ("GET", "/v1/prepare-jobs"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/states/abc"),
    ("POST", "/v1/prepare-jobs"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Basic abc", "Bearer", "bearer {token}", "Bearer {token}x"]
)
def test_protected_routes_need_the_exact_bearer_token(
    engine: EngineProcess, method: str, path: str, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header.format(token=engine.token)}
    response = engine.request(method, path, auth=False, headers=headers)
    assert response.status_code == 401
    assert response.content == b""


def test_token_is_trimmed(engine: EngineProcess) -> None:
    host, port = engine.info["endpoint"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("GET", "/v1/states")
    connection.putheader("Authorization", f"Bearer {engine.token} \t")
    connection.endheaders()
    assert connection.getresponse().status == 200
    connection.close()


def test_health_needs_no_auth_and_only_allows_get(engine: EngineProcess) -> None:
    assert engine.get("/v1/health", auth=False).json()["ok"] is True
    response = engine.post("/v1/health", auth=False)
    assert response.status_code == 405
    assert response.content == b""


def test_auth_is_checked_before_the_method(engine: EngineProcess) -> None:
    assert engine.request("PUT", "/v1/states", auth=False).status_code == 401
    response = engine.request("PUT", "/v1/states")
    assert response.status_code == 405
    assert response.content == b""


@pytest.mark.parametrize(
    "path", ["/v1/nope", "/", "/v2/states", "/v1/states/a/b", "/v1/prepare-jobs/x/y/z"]
)
def test_unknown_paths_are_plain_404(engine: EngineProcess, path: str) -> None:
    response = engine.get(path)
    assert response.status_code == 404
    assert response.text == "404 page not found\n"
    assert response.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("body", "details"),
    [
        (b"", "EOF"),
        (b"{", None),
        (b"[1,2]", "expected a JSON object"),
        (b"null", "expected a JSON object"),
        (b"\xff\xfe", None),
        (b'{"path": 5, "value": 1}', "config path is invalid"),
    ],
)
def test_malformed_json_is_a_400_error_response(
    engine: EngineProcess, body: bytes, details: str | None
) -> None:
    response = engine.patch("/v1/config", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "invalid_argument"
    if details:
        assert details in error["details"]


def test_huge_body_is_refused_with_413(engine: EngineProcess) -> None:
    body = b'{"path":"x","value":"' + b"a" * (33 * 1024 * 1024) + b'"}'
    try:
        response = engine.patch("/v1/config", data=body)
    except requests.ConnectionError:
        pytest.fail("engine dropped the connection instead of answering 413")
    assert response.status_code == 413
    assert response.json()["message"] == "request body too large"
    assert engine.get("/v1/health").status_code == 200


@pytest.mark.parametrize("value", ["maybe", "2", "yes", "TRUE!"])
def test_bad_boolean_query_is_400(engine: EngineProcess, value: str) -> None:
    response = engine.get("/v1/config", params={"effective": value})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"


@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_boolean_spellings(engine: EngineProcess, value: str) -> None:
    response = engine.get("/v1/config", params={"effective": value})
    assert response.status_code == 200
    assert "snapshot" in response.json()


def test_concurrent_requests_are_all_answered(engine: EngineProcess) -> None:
    paths = ["/v1/states", "/v1/instances", "/v1/config", "/v1/names", "/v1/prepare-jobs"] * 40

    def fetch(path: str) -> int:
        return requests.get(engine.base_url + path, headers=engine.auth, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(fetch, paths))
    assert codes == [200] * len(paths)
