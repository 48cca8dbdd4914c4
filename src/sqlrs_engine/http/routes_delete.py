"""DELETE routes for instances, states and jobs (SPEC §6, §4.7)."""

from __future__ import annotations

from typing import Any

import bottle

from sqlrs_engine.deletion.service import DeletionService
from sqlrs_engine.errors import internal_error
from sqlrs_engine.http.context import ApiContext
from sqlrs_engine.http.params import parse_bool, query_value
from sqlrs_engine.http.responses import json_response


def register(app: bottle.Bottle, ctx: ApiContext) -> None:
    def service() -> DeletionService:
        if ctx.deletion is None:
            raise internal_error(details="deletion is not configured")
        return ctx.deletion

    def flag(name: str) -> bool:
        return parse_bool(name, query_value(bottle.request.query, name))

    @app.delete("/v1/instances/<instance_id>")
    def delete_instance(instance_id: str) -> Any:
        force, dry_run = flag("force"), flag("dry_run")
        status, body = service().delete_instance(instance_id.strip(), force, dry_run)
        return json_response(body, status=status)

    @app.delete("/v1/states/<state_id>")
    def delete_state(state_id: str) -> Any:
        recurse, force, dry_run = flag("recurse"), flag("force"), flag("dry_run")
        status, body = service().delete_state(state_id.strip(), recurse, force, dry_run)
        return json_response(body, status=status)

    @app.delete("/v1/prepare-jobs/<job_id>")
    def delete_job(job_id: str) -> Any:
        force, dry_run = flag("force"), flag("dry_run")
        status, body = service().delete_job(job_id, force, dry_run)
        return json_response(body, status=status)
