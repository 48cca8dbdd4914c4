"""What every route needs: the actors to talk to and the engine's identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlrs_engine.actors.registry import RegistryProxy

ASK_TIMEOUT = 30.0
"""Seconds a route waits for an actor's answer before giving up with a 503."""


@dataclass
class ApiContext:
    """Shared, read-only state of the HTTP layer."""

    registry: RegistryProxy
    auth_token: str
    version: str
    instance_id: str
    pid: int
    cwd: Path = field(default_factory=Path.cwd)
    """The engine's working directory: the psql work dir fallback (SPEC §2.2)."""
