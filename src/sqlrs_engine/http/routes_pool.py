"""`GET /v1/pool`: the warm pool's settings, occupancy per state, members and counters."""

from __future__ import annotations

from typing import Any

import bottle

from sqlrs_engine.errors import internal_error
from sqlrs_engine.http.context import ApiContext
from sqlrs_engine.http.responses import json_response


def register(app: bottle.Bottle, ctx: ApiContext) -> None:
    @app.get("/v1/pool")
    def pool_status() -> Any:
        if ctx.pool is None:
            raise internal_error(details="this engine was started without a warm pool")
        return json_response(ctx.pool.status())
