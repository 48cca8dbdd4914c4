"""The body of `POST /v1/prepare-jobs` as a typed value (SPEC §2.1).

The HTTP layer hands us whatever JSON the client sent; this module is the one place that
turns it into a `PrepareRequest` or a 400, so a wrong JSON type can never reach the planner
as a crash. The same parser rebuilds a request from the stored `request_json` on recovery,
so a job is re-run from exactly what was validated at submit time.

Wrong JSON types follow the reference engine, where they are JSON decoder errors:
`invalid_argument` / `invalid json payload`, with details naming the field. `null` is the
absent value for every field (as Go's decoder treats it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlrs_engine.clock import format_rfc3339
from sqlrs_engine.durations import DurationError, parse_duration
from sqlrs_engine.errors import ApiError, invalid_argument
from sqlrs_engine.prepare.textutil import go_trim_space

INVALID_JSON = "invalid json payload"


@dataclass(frozen=True)
class PrepareRequest:
    """A decoded prepare request; `prepare_kind` and `image_id` are trimmed."""

    prepare_kind: str
    image_id: str
    psql_args: list[str] = field(default_factory=list)
    stdin: str | None = None
    plan_only: bool = False
    liquibase_args: list[str] = field(default_factory=list)
    liquibase_exec: str = ""
    liquibase_exec_mode: str = ""
    liquibase_env: dict[str, str] = field(default_factory=dict)
    work_dir: str = ""
    ttl: str = ""
    """Go duration after which the job's instance expires (beyond the reference: §7
    `expires_at`); empty = never. Not part of any hash: it says how long the instance may
    live, not what it contains."""

    def expires_at(self, created: datetime) -> str | None:
        """The `expires_at` of an instance created at `created` by this request."""
        if not self.ttl:
            return None
        return format_rfc3339(created + timedelta(seconds=parse_duration(self.ttl)))

    def to_request_json(self) -> dict[str, Any]:
        """The JSON-able dict stored as `request_json` (empty optional fields omitted).

        `stdin` is kept whenever it is not None, even when empty: `-f -` with an empty
        stdin is valid and must survive a round trip.
        """
        out: dict[str, Any] = {"prepare_kind": self.prepare_kind, "image_id": self.image_id}
        if self.psql_args:
            out["psql_args"] = list(self.psql_args)
        if self.stdin is not None:
            out["stdin"] = self.stdin
        if self.liquibase_args:
            out["liquibase_args"] = list(self.liquibase_args)
        if self.liquibase_exec:
            out["liquibase_exec"] = self.liquibase_exec
        if self.liquibase_exec_mode:
            out["liquibase_exec_mode"] = self.liquibase_exec_mode
        if self.liquibase_env:
            out["liquibase_env"] = dict(self.liquibase_env)
        if self.work_dir:
            out["work_dir"] = self.work_dir
        if self.plan_only:
            out["plan_only"] = True
        if self.ttl:
            out["ttl"] = self.ttl
        return out

    @classmethod
    def from_request_json(cls, data: object) -> PrepareRequest:
        """Rebuild (and re-validate) a request from a stored `request_json` dict."""
        return parse_prepare_request(data)


def _type_error(name: str, expected: str, value: object) -> ApiError:
    return invalid_argument(INVALID_JSON, f"{name}: expected {expected}, got {_json_type(value)}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _string(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _type_error(name, "a string", value)
    return value


def _optional_string(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    raise _type_error(name, "a string or null", value)


def _string_list(body: Mapping[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise _type_error(name, "an array of strings", value)
    out: list[str] = []
    for index, item in enumerate(value):
        if item is None:  # Go decodes a null element of []string as ""
            out.append("")
        elif isinstance(item, str):
            out.append(item)
        else:
            raise _type_error(f"{name}[{index}]", "a string", item)
    return out


def _string_map(body: Mapping[str, Any], name: str) -> dict[str, str]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _type_error(name, "an object of strings", value)
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _type_error(f"{name} key", "a string", key)
        if item is None:
            out[key] = ""
        elif isinstance(item, str):
            out[key] = item
        else:
            raise _type_error(f"{name}.{key}", "a string", item)
    return out


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _type_error(name, "a boolean", value)
    return value


def _kind_names() -> tuple[str, ...]:
    # The kind table lives with the kinds (jobs/kinds/), which build on this module; looked
    # up at call time so that this pure parser and the table cannot disagree.
    from sqlrs_engine.jobs.kinds import kind_names

    return kind_names()


MAX_TTL_SECONDS = 10 * 365 * 24 * 3600.0
"""Ten years: longer is a mistake (and would overflow date arithmetic long before Go's)."""


def parse_ttl(value: str) -> str:
    """A validated, trimmed `ttl` ("" when absent); 400 `invalid ttl` for anything else."""
    text = value.strip()
    if not text:
        return ""
    try:
        seconds = parse_duration(text)
    except DurationError as error:
        raise invalid_argument(
            "invalid ttl", f"{error} (use a Go duration such as 30m or 1h30m)"
        ) from None
    if seconds <= 0:
        raise invalid_argument("invalid ttl", f"ttl must be positive, got {text!r}")
    if seconds > MAX_TTL_SECONDS:
        raise invalid_argument("invalid ttl", f"ttl must be at most 87600h, got {text!r}")
    return text


def parse_prepare_request(body: object) -> PrepareRequest:
    """Decode and validate the common fields of a prepare request.

    Raises a 400 `ApiError`: `invalid json payload` (details name the field) for a wrong
    JSON type, then `prepare_kind is required`, `unsupported prepare_kind` (details = kind),
    `image_id is required`, `invalid ttl`. Kind-specific argument rules are checked separately
    (`psql_args.parse_psql_args` for psql).
    """
    if not isinstance(body, Mapping):
        raise invalid_argument(
            INVALID_JSON, f"request body must be a JSON object, got {_json_type(body)}"
        )
    prepare_kind = _string(body, "prepare_kind")
    image_id = _string(body, "image_id")
    psql_args = _string_list(body, "psql_args")
    stdin = _optional_string(body, "stdin")
    liquibase_args = _string_list(body, "liquibase_args")
    liquibase_exec = _string(body, "liquibase_exec")
    liquibase_exec_mode = _string(body, "liquibase_exec_mode")
    liquibase_env = _string_map(body, "liquibase_env")
    work_dir = _string(body, "work_dir")
    plan_only = _bool(body, "plan_only")
    ttl = _string(body, "ttl")

    kind = go_trim_space(prepare_kind)
    if not kind:
        raise invalid_argument("prepare_kind is required")
    if kind not in _kind_names():
        raise invalid_argument("unsupported prepare_kind", kind)
    image = go_trim_space(image_id)
    if not image:
        raise invalid_argument("image_id is required")
    ttl = parse_ttl(ttl)

    return PrepareRequest(
        prepare_kind=kind,
        image_id=image,
        psql_args=psql_args,
        stdin=stdin,
        plan_only=plan_only,
        liquibase_args=liquibase_args,
        liquibase_exec=liquibase_exec,
        liquibase_exec_mode=liquibase_exec_mode,
        liquibase_env=liquibase_env,
        work_dir=work_dir,
        ttl=ttl,
    )
