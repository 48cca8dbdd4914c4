"""Image id helpers: digests (SPEC §2.7), layout names (§9.1) and host-runtime images (§0.2).

The image id decides three things: whether planning must resolve it first (no digest), which
`engines/<engine>/<version>/` directory holds its base and states, and — for the host runtime,
which has no images — which installed PostgreSQL major serves it. All three are string rules,
kept here so the runtimes and the planner agree on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

HOST_DIGEST_PREFIX = "host-"

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_POSTGRES_TAG = re.compile(r"^(?P<major>[0-9]+)(?:\.(?P<minor>[0-9]+))?$")
_HOST_VERSION = re.compile(r"^(?P<major>[0-9]+)(?:\.[0-9]+)*$")


def has_digest(image_id: str) -> bool:
    """True when the id contains `@` with at least one character after the last `@`."""
    at = image_id.rfind("@")
    return at >= 0 and at < len(image_id) - 1


def _split_digest(image_id: str) -> tuple[str, str]:
    """`name@digest` -> (name, digest), split at the last `@`; digest may be empty."""
    at = image_id.rfind("@")
    if at < 0:
        return image_id, ""
    return image_id[:at], image_id[at + 1 :]


def _split_tag(name: str) -> tuple[str, str]:
    """`repo[:tag]` -> (repo, tag); a `:` before the last `/` is a registry port."""
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1 :]
    return name, ""


def _sanitize(part: str, empty: str) -> str:
    if part == "":
        return empty
    # non-ASCII letters/digits are outside the class too: the regex is ASCII-only.
    cleaned = _SAFE.sub("_", part)
    if cleaned in (".", ".."):
        return "unknown"
    return cleaned


def layout_dirs(image_id: str) -> tuple[str, str]:
    """`(engine, version)` directory names of `engines/<engine>/<version>/` for an image.

    The digest (after the last `@`) is the version when present, else the tag (text after
    the last `:` that follows the last `/`), else `latest`; the engine is the last `/`
    component of the repository name (tag removed). Both are sanitized: characters outside
    `[A-Za-z0-9._-]` become `_`, and an empty, `.` or `..` name becomes `unknown`.
    """
    if image_id == "":
        return "unknown", "latest"
    name, digest = _split_digest(image_id)
    repo, tag = _split_tag(name)
    engine = repo[repo.rfind("/") + 1 :]
    version = digest or tag
    return _sanitize(engine, "unknown"), _sanitize(version, "latest")


# --- host runtime -----------------------------------------------------------------------


class UnsupportedImageError(ValueError):
    """The host runtime cannot serve this image id.

    Raised by the parser without knowing what is installed; `with_installed(majors)` (or
    `select_major`) gives the error whose text names the installed majors, for the job failure.
    """

    def __init__(
        self, image_id: str, reason: str, installed_majors: Iterable[int] | None = None
    ) -> None:
        self.image_id = image_id
        self.reason = reason
        self.installed_majors = (
            None if installed_majors is None else tuple(sorted(set(installed_majors)))
        )
        if self.installed_majors is None:
            super().__init__(f"image {image_id!r} {reason}")
        else:
            super().__init__(self.describe(self.installed_majors))

    def with_installed(self, installed_majors: Iterable[int]) -> UnsupportedImageError:
        """The same error, its message naming the installed majors."""
        return UnsupportedImageError(self.image_id, self.reason, installed_majors)

    def describe(self, installed_majors: Iterable[int]) -> str:
        """The job-failure text, naming what is installed and what would work."""
        majors = sorted(set(installed_majors))
        if not majors:
            return (
                f"image {self.image_id!r} {self.reason}; no PostgreSQL server binaries are "
                "installed (install a postgresql-<major> package or set runtime.host.binDirs)"
            )
        listed = ", ".join(str(m) for m in majors)
        return (
            f"image {self.image_id!r} {self.reason}; installed PostgreSQL majors: {listed} "
            f"(use postgres, postgres:latest or postgres:<major>, e.g. postgres:{majors[-1]})"
        )


@dataclass(frozen=True)
class PostgresImage:
    """A host-runtime image request: `major` None means the highest installed major."""

    major: int | None
    minor: int | None = None
    host_version: str | None = None
    """Set for a resolved id `postgres@host-<version>`: the exact server version built it."""


def parse_host_image(image_id: str) -> PostgresImage:
    """Parse an image id the host runtime accepts, or raise UnsupportedImageError.

    Accepted: `postgres`, `postgres:latest`, `postgres:<major>`, `postgres:<major>.<minor>`,
    each optionally behind a registry/namespace prefix (`docker.io/library/postgres:17`),
    and the host runtime's own resolved ids `postgres@host-<server version>`.
    """
    name, digest = _split_digest(image_id)
    if image_id.endswith("@"):
        raise UnsupportedImageError(image_id, "has an empty digest")
    repo, tag = _split_tag(name)
    if repo[repo.rfind("/") + 1 :] != "postgres":
        raise UnsupportedImageError(
            image_id, "is not a postgres image (the host runtime only runs postgres)"
        )
    if digest:
        if tag or not digest.startswith(HOST_DIGEST_PREFIX):
            raise UnsupportedImageError(
                image_id, "has a container image digest, which the host runtime cannot run"
            )
        version = digest[len(HOST_DIGEST_PREFIX) :]
        match = _HOST_VERSION.match(version)
        if match is None:
            raise UnsupportedImageError(image_id, "has an invalid host server version")
        return PostgresImage(major=int(match["major"]), host_version=version)
    if tag in ("", "latest"):
        return PostgresImage(major=None)
    match = _POSTGRES_TAG.match(tag)
    if match is None:
        raise UnsupportedImageError(
            image_id,
            f"has tag {tag!r}; the host runtime accepts latest, <major> or <major>.<minor>",
        )
    minor = match["minor"]
    return PostgresImage(major=int(match["major"]), minor=int(minor) if minor else None)


def parse_postgres_image(image_id: str) -> int | None:
    """Requested major version, or None for the latest installed (see `parse_host_image`)."""
    return parse_host_image(image_id).major


def select_major(image_id: str, installed_majors: Iterable[int]) -> int:
    """The installed major that serves `image_id`; raises UnsupportedImageError otherwise.

    The raised error's `str()` is already the full message naming the installed majors.
    """
    majors = sorted(set(installed_majors))
    try:
        requested = parse_postgres_image(image_id)
    except UnsupportedImageError as exc:
        raise exc.with_installed(majors) from None
    if requested is None:
        if majors:
            return majors[-1]
        raise UnsupportedImageError(image_id, "needs a PostgreSQL server", majors)
    if requested not in majors:
        raise UnsupportedImageError(
            image_id, f"needs PostgreSQL {requested}, which is not installed", majors
        )
    return requested


def host_image_id(server_version: str) -> str:
    """Resolved id of a host-runtime image: `postgres@host-15.18` (from `postgres --version`)."""
    return f"postgres@{HOST_DIGEST_PREFIX}{server_version}"
