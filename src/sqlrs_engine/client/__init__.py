"""A Python client for sqlrs-engine: find or start the engine, prepare, run, delete.

    from sqlrs_engine.client import Client

    with Client() as client:
        db = client.prepare_psql(["-f", "schema.sql"], ttl="30m", progress="auto")
        ...  # connect to db.dsn
        client.delete_instance(db.instance_id, force=True)

The engine is located the way the `sqlrs` CLI locates it (`engine.json` in the sqlrs state
directory) and started the way the CLI starts it when none is running.
"""

from sqlrs_engine.client.api import DEFAULT_IMAGE, Client
from sqlrs_engine.client.errors import (
    ApiError,
    Conflict,
    DeleteBlocked,
    EngineUnavailable,
    InvalidArgument,
    JobFailed,
    NotFound,
    RunFailed,
    SqlrsError,
    UnsupportedEndpoint,
)
from sqlrs_engine.client.locate import EngineEndpoint, EngineLocator, default_state_dir
from sqlrs_engine.client.models import (
    Event,
    Instance,
    InstanceEntry,
    JobEntry,
    RunResult,
    StateEntry,
    Task,
)
from sqlrs_engine.client.progress import ProgressView, Reporter

__all__ = [
    "DEFAULT_IMAGE",
    "ApiError",
    "Client",
    "Conflict",
    "DeleteBlocked",
    "EngineEndpoint",
    "EngineLocator",
    "EngineUnavailable",
    "Event",
    "Instance",
    "InstanceEntry",
    "InvalidArgument",
    "JobEntry",
    "JobFailed",
    "NotFound",
    "ProgressView",
    "Reporter",
    "RunFailed",
    "RunResult",
    "SqlrsError",
    "StateEntry",
    "Task",
    "UnsupportedEndpoint",
    "default_state_dir",
]
