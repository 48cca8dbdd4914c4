"""Engine configuration: defaults, overrides in `<root>/config.json`, validation, schema.

`ConfigStore` is the entry point; the submodules are pure pieces it is built from (path
syntax, defaults and merge, per-path validation, atomic file writes) and are tested alone.
"""

from sqlrs_engine.config.atomic import ConfigLoadError
from sqlrs_engine.config.defaults import DEFAULTS, defaults
from sqlrs_engine.config.schema import config_schema
from sqlrs_engine.config.store import CONFIG_FILE_NAME, ConfigStore

__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULTS",
    "ConfigLoadError",
    "ConfigStore",
    "config_schema",
    "defaults",
]
