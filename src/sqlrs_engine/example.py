"""`python -m sqlrs_engine.example ENGINE_JSON`: prepare a demo database on a running engine.

Used by `scripts/run-engine` to show the whole flow once: read engine.json, submit a psql
prepare job, follow its NDJSON events, print the DSN. Standard library only, like a client.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

EXAMPLE_SQL = """
create table customers (id serial primary key, name text not null);
insert into customers (name) select 'customer ' || g from generate_series(1, 1000) g;
"""


def _wait_for_engine(path: Path, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            with urllib.request.urlopen(f"http://{info['endpoint']}/v1/health", timeout=2):
                return info
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    raise SystemExit(f"engine did not start (no usable {path})")


def _request(info: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{info['endpoint']}{path}",
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {info['authToken']}",
            "Content-Type": "application/json",
        },
    )
    return urllib.request.urlopen(request, timeout=600)


def main(argv: list[str]) -> int:
    engine_json = Path(argv[1]) if len(argv) > 1 else Path("local/engine.json")
    info = _wait_for_engine(engine_json)
    print(f"engine.json: {engine_json}  (endpoint {info['endpoint']})")
    body = {"prepare_kind": "psql", "image_id": "postgres:15", "psql_args": ["-c", EXAMPLE_SQL]}
    with _request(info, "POST", "/v1/prepare-jobs", body) as response:
        job = json.load(response)
    with _request(info, "GET", job["events_url"]) as stream:
        for line in stream:
            event = json.loads(line)
            if event["type"] == "error":
                print(f"prepare failed: {event['error']}", file=sys.stderr)
                return 1
            if event["type"] == "result":
                dsn = event["result"]["dsn"]
                print(f"example database ready: {dsn}")
                print(f'open it with: psql "{dsn}"')
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
