"""Read routes over names, instances and states (SPEC §7)."""

from __future__ import annotations

from typing import Any

import bottle

from sqlrs_engine.http.context import ASK_TIMEOUT, ApiContext
from sqlrs_engine.http.params import optional_text, query_value
from sqlrs_engine.http.responses import (
    empty_response,
    json_response,
    list_response,
    plain_not_found,
)
from sqlrs_engine.ids import looks_like_instance_id, normalize_id_prefix


def register(app: bottle.Bottle, ctx: ApiContext) -> None:
    registry = ctx.registry

    def query(name: str) -> str | None:
        return optional_text(query_value(bottle.request.query, name))

    @app.get("/v1/names")
    def list_names() -> Any:
        names = registry.list_names(query("instance"), query("state"), query("image"))
        return list_response(names.get(timeout=ASK_TIMEOUT))

    @app.get("/v1/names/<name>")
    def get_name(name: str) -> Any:
        entry = registry.get_name(name).get(timeout=ASK_TIMEOUT)
        return plain_not_found() if entry is None else json_response(entry)

    @app.get("/v1/instances")
    def list_instances() -> Any:
        prefix = normalize_id_prefix(query_value(bottle.request.query, "id_prefix"))
        entries = registry.list_instances(query("state"), query("image"), prefix)
        return list_response(entries.get(timeout=ASK_TIMEOUT))

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
        prefix = normalize_id_prefix(query_value(bottle.request.query, "id_prefix"))
        entries = registry.list_states(query("kind"), query("image"), prefix)
        return list_response(entries.get(timeout=ASK_TIMEOUT))

    @app.get("/v1/states/<state_id>")
    def get_state(state_id: str) -> Any:
        entry = registry.get_state(state_id.strip()).get(timeout=ASK_TIMEOUT)
        return plain_not_found() if entry is None else json_response(entry)
