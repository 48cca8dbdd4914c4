"""Read routes over names, instances and states (SPEC §7)."""

from __future__ import annotations

from typing import Any

import bottle

from sqlrs_engine.http.context import ASK_TIMEOUT, ApiContext
from sqlrs_engine.http.params import optional_text, query_value
from sqlrs_engine.http.responses import (
    empty_response,
    json_response,
    paged_list_response,
    plain_not_found,
)
from sqlrs_engine.ids import looks_like_instance_id, normalize_id_prefix


def register(app: bottle.Bottle, ctx: ApiContext) -> None:
    registry = ctx.registry

    def query(name: str) -> str | None:
        return optional_text(query_value(bottle.request.query, name))

    @app.get("/v1/names")
    def list_names() -> Any:
        filters = {name: query(name) for name in ("instance", "state", "image")}
        return paged_list_response(
            lambda after, limit: registry.list_names_page(filters, after, limit).get(
                timeout=ASK_TIMEOUT
            )
        )

    @app.get("/v1/names/<name>")
    def get_name(name: str) -> Any:
        entry = registry.get_name(name).get(timeout=ASK_TIMEOUT)
        return plain_not_found() if entry is None else json_response(entry)

    @app.get("/v1/instances")
    def list_instances() -> Any:
        filters = {name: query(name) for name in ("state", "image")}
        filters["id_prefix"] = normalize_id_prefix(query_value(bottle.request.query, "id_prefix"))
        return paged_list_response(
            lambda after, limit: registry.list_instances_page(filters, after, limit).get(
                timeout=ASK_TIMEOUT
            )
        )

    @app.get("/v1/instances/<ref>")
    def get_instance(ref: str) -> Any:
        ref = ref.strip()
        entry, by_name = registry.find_instance(ref, looks_like_instance_id(ref)).get(
            timeout=ASK_TIMEOUT
        )
        if entry is None:
            return plain_not_found()
        if by_name:
            return empty_response(307, {"Location": f"/v1/instances/{entry['instance_id']}"})
        return json_response(entry)

    @app.get("/v1/states")
    def list_states() -> Any:
        filters = {name: query(name) for name in ("kind", "image")}
        filters["id_prefix"] = normalize_id_prefix(query_value(bottle.request.query, "id_prefix"))
        return paged_list_response(
            lambda after, limit: registry.list_states_page(filters, after, limit).get(
                timeout=ASK_TIMEOUT
            )
        )

    @app.get("/v1/states/<state_id>")
    def get_state(state_id: str) -> Any:
        entry = registry.get_state(state_id.strip()).get(timeout=ASK_TIMEOUT)
        return plain_not_found() if entry is None else json_response(entry)
