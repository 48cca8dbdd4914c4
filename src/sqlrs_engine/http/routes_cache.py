"""`GET /v1/cache/status` (SPEC §10.3): occupancy, limits, pressure, last eviction."""

from __future__ import annotations

import logging
from typing import Any

import bottle

from sqlrs_engine.cache.policy import CacheUnavailable
from sqlrs_engine.http.context import ApiContext
from sqlrs_engine.http.responses import json_response

log = logging.getLogger(__name__)


def register(app: bottle.Bottle, ctx: ApiContext) -> None:
    @app.get("/v1/cache/status")
    def cache_status() -> Any:
        if ctx.cache is None:
            return bottle.HTTPResponse(status=500, body="")
        try:
            return json_response(ctx.cache.status())
        except (CacheUnavailable, OSError) as error:
            # SPEC §10.3: errors are a 500 with an empty body; the log says why.
            log.error("cache status: %s", error)
            return bottle.HTTPResponse(status=500, body="")
