"""Choosing the runtime at start-up (SPEC §0.2, docs/configuration.md), table-driven.

`auto` picks a container engine that answers (none at the standard sockets here: the test
engine of scripts/container-engine listens elsewhere) and falls back to `host`;
`docker`/`podman` with no engine answering refuse to start naming the sockets tried; with
`DOCKER_HOST` pointing at the real Podman socket they choose the docker runtime.
`SQLRS_CONTAINER_RUNTIME` overrides config `container.runtime`. Selection runs against the
PostgreSQL binaries really installed here; only "nothing installed" is provoked by pointing
the search at empty places.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sqlrs_engine.runtime import host
from sqlrs_engine.runtime.docker import DockerRuntime
from sqlrs_engine.runtime.host import HostRuntime
from sqlrs_engine.runtime.select import RuntimeSelectionError, select_runtime
from sqlrs_engine.runtime.users import ServerUserError
from tests.support import container_engine

ENV = "SQLRS_CONTAINER_RUNTIME"
AUTO = (
    "auto: no container engine answered at unix:///var/run/docker.sock (no such socket), "
    "unix:///run/podman/podman.sock (no such socket)"
)
CONFIGURED = "configured host"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="server users are chosen as root")


@pytest.fixture(scope="module")
def majors() -> str:
    """The installed PostgreSQL majors, as the reason lists them."""
    installed = HostRuntime().installed_majors()
    if not installed:
        pytest.skip("no PostgreSQL server binaries installed on this machine")
    return ", ".join(map(str, installed))


def env(value: str | None) -> dict[str, str]:
    return {} if value is None else {ENV: value}


@pytest.mark.parametrize(
    ("configured", "override", "source"),
    [
        ("auto", None, AUTO),
        ("host", None, CONFIGURED),
        ("auto", "host", CONFIGURED),
        ("host", "auto", AUTO),
        ("docker", "host", CONFIGURED),
        ("podman", "auto", AUTO),
        ("host", "", CONFIGURED),
        ("auto", "   ", AUTO),
        ("auto", " host\n", CONFIGURED),
        ("auto", "/opt/bin/host", CONFIGURED),
    ],
    ids=[
        "auto",
        "host",
        "env-host-over-auto",
        "env-auto-over-host",
        "env-overrides-unusable-config",
        "env-auto-over-podman",
        "empty-env-ignored",
        "blank-env-ignored",
        "env-stripped",
        "env-path-basename",
    ],
)
def test_host_is_chosen(majors: str, configured: str, override: str | None, source: str) -> None:
    choice = select_runtime(configured, None, [], env(override))
    assert isinstance(choice.runtime, HostRuntime)
    assert choice.runtime.kind == "host"
    user = choice.runtime.user.name
    assert choice.reason == (
        f"container runtime host ({source}; PostgreSQL majors {majors}; servers run as {user})"
    )


@pytest.mark.parametrize(
    ("configured", "override", "message"),
    [
        ("lxc", None, "unknown container runtime 'lxc': use one of auto, docker, podman, host"),
        ("", None, "unknown container runtime '': use one of"),
        ("auto", "Docker", "unknown container runtime 'Docker'"),
        ("host", "kubernetes", "unknown container runtime 'kubernetes'"),
    ],
)
def test_unknown_choices_say_why(configured: str, override: str | None, message: str) -> None:
    """Refused before looking for binaries: the message is about the runtime asked for."""
    with pytest.raises(RuntimeSelectionError) as raised:
        select_runtime(configured, None, [], env(override))
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("configured", "override", "environ", "tried"),
    [
        ("docker", None, {}, "unix:///var/run/docker.sock (no such socket)"),
        ("podman", None, {}, "unix:///run/podman/podman.sock (no such socket)"),
        (
            "podman",
            None,
            {"XDG_RUNTIME_DIR": "/nonexistent-run"},
            "unix:///run/podman/podman.sock (no such socket), "
            "unix:///nonexistent-run/podman/podman.sock (no such socket)",
        ),
        ("auto", "docker", {}, "unix:///var/run/docker.sock (no such socket)"),
        ("host", "/usr/bin/podman", {}, "unix:///run/podman/podman.sock (no such socket)"),
        (
            "docker",
            None,
            {"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
            "unix:///nonexistent/docker.sock (no such socket)",
        ),
    ],
    ids=["docker", "podman", "podman-rootless", "env-docker", "env-podman-path", "docker-host"],
)
def test_unreachable_engine_refuses_naming_the_sockets(
    configured: str, override: str | None, environ: dict[str, str], tried: str
) -> None:
    wanted = os.path.basename(override) if override else configured
    with pytest.raises(RuntimeSelectionError) as raised:
        select_runtime(configured, None, [], {**env(override), **environ})
    assert str(raised.value) == (
        f"container runtime {wanted!r}: no container engine answered at {tried}; start the "
        "engine, or set DOCKER_HOST to its API socket (scripts/container-engine starts one "
        "with Podman)"
    )


def test_an_engine_that_refuses_is_named_with_its_error(tmp_path: Path) -> None:
    """A socket file that no engine serves: the connection error is in the message."""
    dead = tmp_path / "dead.sock"
    dead.touch()
    with pytest.raises(RuntimeSelectionError) as raised:
        select_runtime("podman", None, [], {"DOCKER_HOST": f"unix://{dead}"})
    assert f"no container engine answered at unix://{dead} (" in str(raised.value)
    assert "(no such socket)" not in str(raised.value)


@pytest.mark.parametrize("configured", ["docker", "podman", "auto"])
def test_a_reachable_engine_is_chosen(configured: str, tmp_path: Path) -> None:
    url = container_engine.docker_host()
    choice = select_runtime(configured, None, [], {"DOCKER_HOST": url}, store_root=tmp_path)
    assert isinstance(choice.runtime, DockerRuntime)
    assert choice.runtime.kind == "docker"
    assert choice.runtime.store == str(tmp_path.resolve())
    source = "auto" if configured == "auto" else "configured"
    shown = "docker" if configured == "auto" else configured
    assert choice.reason == f"container runtime {shown} ({source}; engine at {url})"


def test_only_the_given_environment_counts(majors: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine passes its environment in; the process environment is not read again."""
    monkeypatch.setenv(ENV, "docker")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert select_runtime("auto", None, [], {}).runtime.kind == "host"
    with pytest.raises(RuntimeSelectionError):
        select_runtime("auto", None, [], dict(os.environ))


def test_configured_bin_dirs_come_first(majors: str, tmp_path: Path) -> None:
    """`runtime.host.binDirs` is searched before /usr/lib/postgresql: the same major found
    there is served from the configured directory."""
    installed = HostRuntime().installations()
    major = max(installed)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("postgres", "pg_ctl", "initdb"):
        (bin_dir / name).symlink_to(installed[major].bin_dir / name)

    choice = select_runtime("host", None, [str(bin_dir)], {})

    runtime = choice.runtime
    assert isinstance(runtime, HostRuntime)
    assert runtime.bin_dirs == [bin_dir]
    assert runtime.candidate_bin_dirs()[0] == bin_dir
    assert runtime.installations()[major].bin_dir == bin_dir


@needs_root
@pytest.mark.parametrize(("configured_user", "user"), [(None, "postgres"), ("nobody", "nobody")])
def test_server_user_is_passed_to_the_runtime(
    majors: str, configured_user: str | None, user: str
) -> None:
    choice = select_runtime("auto", configured_user, [], {})
    assert isinstance(choice.runtime, HostRuntime)
    assert choice.runtime.user.name == user
    assert choice.reason.endswith(f"servers run as {user})")


@needs_root
@pytest.mark.parametrize(
    ("configured_user", "message"),
    [("no-such-user-sqlrs", "does not exist"), ("root", "is root")],
)
def test_unusable_server_user_refuses_to_start(configured_user: str, message: str) -> None:
    with pytest.raises(ServerUserError, match=message):
        select_runtime("host", configured_user, [], {})


@pytest.fixture
def nothing_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine without PostgreSQL: no /usr/lib/postgresql, no pg_config on PATH."""
    empty_path = tmp_path / "path"
    empty_path.mkdir()
    monkeypatch.setenv("PATH", str(empty_path))
    missing_root = tmp_path / "usr-lib-postgresql"
    monkeypatch.setattr(host, "DEFAULT_BIN_ROOT", missing_root)
    return missing_root


@pytest.mark.parametrize("configured", ["auto", "host"])
def test_no_binaries_refuses_to_start_naming_where_it_looked(
    nothing_installed: Path, tmp_path: Path, configured: str
) -> None:
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    with pytest.raises(RuntimeSelectionError) as raised:
        select_runtime(configured, None, [str(empty_bin)], {})
    message = str(raised.value)
    assert message.startswith(f"no PostgreSQL server binaries found (looked in {empty_bin}, ")
    assert "apt-get install postgresql" in message and "runtime.host.binDirs" in message


def test_no_binaries_anywhere_still_names_the_default_place(nothing_installed: Path) -> None:
    with pytest.raises(RuntimeSelectionError) as raised:
        select_runtime("auto", None, [], {})
    message = str(raised.value)
    assert "looked in )" not in message
    assert str(nothing_installed) in message
