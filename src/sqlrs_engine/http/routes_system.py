"""Health and config routes (SPEC §1.7, §8)."""

from __future__ import annotations

from typing import Any

import bottle

from sqlrs_engine.config.schema import config_schema
from sqlrs_engine.errors import invalid_argument
from sqlrs_engine.http.context import ASK_TIMEOUT, ApiContext
from sqlrs_engine.http.params import json_object_body, parse_bool, query_value
from sqlrs_engine.http.responses import json_response


def register(app: bottle.Bottle, ctx: ApiContext) -> None:
    @app.get("/v1/health")
    def health() -> Any:
        body: dict[str, Any] = {
            "ok": True,
            "version": ctx.version,
            "instanceId": ctx.instance_id,
            "pid": ctx.pid,
        }
        storage_error = ctx.storage.error  # read without asking: health never waits
        if storage_error is not None:
            # The engine still serves (reads work; `ok` keeps clients from starting a second
            # engine on the same store); the field says writes fail. Ask the Registry to
            # re-check in the background, so the answer clears once space returns.
            body["storage_error"] = storage_error
            ctx.registry.probe_storage()
        return json_response(body)

    @app.get("/v1/config/schema")
    def get_schema() -> Any:
        return json_response(config_schema())

    @app.get("/v1/config")
    def get_config() -> Any:
        query = bottle.request.query
        effective = parse_bool("effective", query_value(query, "effective"))
        path = (query_value(query, "path") or "").strip() or None
        value = ctx.registry.config_get(path, effective).get(timeout=ASK_TIMEOUT)
        if path is not None:
            return json_response({"path": path, "value": value}, sort_keys=True)
        return json_response(value, sort_keys=True)

    @app.route("/v1/config", method="PATCH")
    def patch_config() -> Any:
        body = json_object_body(bottle.request)
        path = body.get("path")
        if path is not None and not isinstance(path, str):
            raise invalid_argument("invalid config value", "config path is invalid")
        if path is None or not path.strip():
            raise invalid_argument("path is required")
        value = ctx.registry.config_patch(path, body.get("value")).get(timeout=ASK_TIMEOUT)
        return json_response({"path": path, "value": value}, sort_keys=True)

    @app.delete("/v1/config")
    def delete_config() -> Any:
        path = query_value(bottle.request.query, "path") or ""
        if not path.strip():
            raise invalid_argument("path is required")
        value = ctx.registry.config_delete(path).get(timeout=ASK_TIMEOUT)
        return json_response({"path": path, "value": value}, sort_keys=True)
