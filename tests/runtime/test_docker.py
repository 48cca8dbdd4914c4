"""The docker runtime's own logic (table-driven) and its faults against the real engine.

The shared behaviour is in test_contract.py (same tests as `host`); here: image id mapping,
the read-only mounts of a client run, a server container that dies during a step, and an
engine that does not answer.
"""

from __future__ import annotations

import threading
from pathlib import Path

import docker
import pytest

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.runtime.base import CANNOT_RESOLVE_IMAGE
from sqlrs_engine.runtime.docker import (
    DATA_MOUNT,
    LABEL_RUN_DIR,
    DockerRuntime,
    _LogPump,
    client_mounts,
    connect,
    resolved_id_of,
    split_resolved,
)
from tests.support import container_engine

IMAGE_ID = "sha256:" + "ab" * 32
DIGEST = "sha256:" + "cd" * 32


@pytest.mark.parametrize(
    ("name", "attrs", "resolved"),
    [
        ("localhost/postgres:15", {"Id": IMAGE_ID}, f"localhost/postgres:15@id-{IMAGE_ID}"),
        ("postgres:15", {"Id": IMAGE_ID, "RepoDigests": []}, f"postgres:15@id-{IMAGE_ID}"),
        (
            "postgres:15",
            {"Id": IMAGE_ID, "RepoDigests": [f"docker.io/library/postgres@{DIGEST}"]},
            f"postgres:15@{DIGEST}",
        ),
        (
            "postgres:15",
            {"Id": IMAGE_ID, "RepoDigests": [f"example.org/other@{DIGEST}"]},
            f"postgres:15@id-{IMAGE_ID}",
        ),
        ("localhost/postgres:15", {"Id": "ab" * 32}, f"localhost/postgres:15@id-{IMAGE_ID}"),
    ],
    ids=["local-image-id", "no-digests", "repo-digest", "other-repo-digest", "bare-id"],
)
def test_resolved_id_is_immutable(name: str, attrs: dict[str, object], resolved: str) -> None:
    assert resolved_id_of(name, attrs) == resolved


@pytest.mark.parametrize(
    ("resolved", "ref"),
    [
        (f"localhost/postgres:15@id-{IMAGE_ID}", IMAGE_ID),
        (f"postgres:15@{DIGEST}", f"postgres@{DIGEST}"),
        (f"registry:5000/pg/postgres:16@{DIGEST}", f"registry:5000/pg/postgres@{DIGEST}"),
    ],
)
def test_split_resolved(resolved: str, ref: str) -> None:
    assert split_resolved(resolved)[1] == ref


@pytest.mark.parametrize("bad", ["postgres:15", "@sha256:x", "postgres@host-15.4", "x@md5:1"])
def test_split_resolved_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        split_resolved(bad)


def test_client_mounts(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "a" / "b" / "x.sql").write_text("")
    (tmp_path / "other" / "y.sql").write_text("")
    args = ["-f", "b/x.sql", f"--file={tmp_path}/other/y.sql", "-f", "-", "-c", "select 1"]
    assert client_mounts(args, tmp_path / "a") == [str(tmp_path / "a"), str(tmp_path / "other")]
    assert client_mounts(["-c", "x"], None) == []
    assert client_mounts([], Path("/")) == []
    # A step's staging copy comes first and absorbs what lies inside it.
    stage = tmp_path / "stage" / "root"
    (stage / "w").mkdir(parents=True)
    (stage / "w" / "s.sql").write_text("")
    staged = client_mounts(["-f", str(stage / "w" / "s.sql")], stage / "w", [stage])
    assert staged == [str(stage)]


def test_container_run_dirs_are_not_the_host_runtimes(tmp_path: Path) -> None:
    """The host runtime's sweep removes `sqlrs-pg-*` dirs that no host process names; a
    containerized server's run dir must not look like one."""
    from sqlrs_engine.runtime import server
    from sqlrs_engine.runtime.docker import RUN_DIR_PREFIX
    from sqlrs_engine.runtime.users import server_user

    run_dir = server.make_run_dir(tmp_path, server_user(None), RUN_DIR_PREFIX)
    assert not run_dir.name.startswith(server.RUN_DIR_PREFIX)
    assert server.is_our_run_dir(run_dir, tmp_path, RUN_DIR_PREFIX)
    assert not server.is_our_run_dir(run_dir, tmp_path)
    assert (run_dir / "pg_hba.conf").read_text().count("trust") == 1  # the socket only
    assert (run_dir.stat().st_mode & 0o777) == 0o700


def test_server_container_mounts_only_its_clone_and_run_dir(pg_root: Path) -> None:
    url = container_engine.docker_host()
    root = pg_root / "docker-mounts"
    root.mkdir(mode=0o711)
    runtime = DockerRuntime(connect(url), root, base_url=url)
    image = runtime.resolve_image(container_engine.IMAGE, lambda _l: None, CancelToken())
    data_dir = root / "data"
    runtime.init_base(image, data_dir, lambda _l: None, CancelToken())
    handle = runtime.start(image, data_dir, lambda _l: None, CancelToken())
    try:
        server = runtime.client.containers.get(handle.runtime_id.split(":", 1)[1])
        mounts = {(m["Source"], m["Destination"], m["RW"]) for m in server.attrs["Mounts"]}
        assert mounts == {
            (str(data_dir), DATA_MOUNT, True),
            (str(handle.socket_dir), str(handle.socket_dir), True),
        }
        assert server.labels[LABEL_RUN_DIR] == str(handle.socket_dir)
        config = server.attrs["Config"]
        assert handle.password
        assert not any(handle.password in part for part in config["Cmd"] + config["Env"])
        assert server.attrs["HostConfig"]["PortBindings"] == {
            f"{handle.port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(handle.port)}]
        }
    finally:
        runtime.kill(handle)
    assert not handle.socket_dir.exists()
    assert container_engine.labeled_containers(root) == []


def test_unreachable_engine_fails_the_job_naming_the_socket() -> None:
    url = "unix:///nonexistent/podman.sock"
    # A fixed API version: the client does not ask the engine for one when it is built.
    client = docker.DockerClient(base_url=url, version="1.41")
    runtime = DockerRuntime(client, "/nonexistent", base_url=url)
    with pytest.raises(JobFailure) as raised:
        runtime.resolve_image("localhost/postgres:15", lambda _l: None, CancelToken())
    assert raised.value.message == CANNOT_RESOLVE_IMAGE
    assert raised.value.details is not None and url in raised.value.details
    assert runtime.adopt("x@id-sha256:00", Path("/nonexistent")) is None


def test_a_server_that_dies_during_a_step_fails_with_its_log(pg_root: Path) -> None:
    url = container_engine.docker_host()
    root = pg_root / "docker-dies"
    root.mkdir(mode=0o711)
    runtime = DockerRuntime(connect(url), root, base_url=url)
    image = runtime.resolve_image(container_engine.IMAGE, lambda _l: None, CancelToken())
    data_dir = root / "data"
    runtime.init_base(image, data_dir, lambda _l: None, CancelToken())
    handle = runtime.start(image, data_dir, lambda _l: None, CancelToken())
    failures: list[JobFailure] = []
    try:
        server = runtime.client.containers.get(handle.runtime_id.split(":", 1)[1])

        def step() -> None:
            try:
                runtime.run_client(
                    handle,
                    "psql",
                    [
                        "-h",
                        handle.host,
                        "-p",
                        str(handle.port),
                        "-U",
                        "sqlrs",
                        "-d",
                        "postgres",
                        "-c",
                        "select pg_sleep(60)",
                    ],
                    stdin=None,
                    cwd=None,
                    on_output=lambda _s, _c: None,
                    cancel=CancelToken(),
                )
            except JobFailure as exc:
                failures.append(exc)

        worker = threading.Thread(target=step)
        worker.start()
        for _ in range(600):
            if runtime.count_connections(handle) == 1:
                break
            threading.Event().wait(0.05)
        server.kill()  # SIGKILL: the container dies under the running step
        worker.join()
    finally:
        runtime.kill(handle)
    assert len(failures) == 1
    assert failures[0].message == "server container died"
    assert "last log lines:" in str(failures[0].details)
    assert "database system is ready to accept connections" in str(failures[0].details)
    assert container_engine.labeled_containers(root) == []


class _FollowThatOutlivesItsContainer:
    """A log follow that delivers a prefix and then stays open: what Podman sometimes does
    for a short-lived container (a fault the real engine shows only now and then)."""

    def __init__(self, first: bytes, late: bytes) -> None:
        self.first, self.late = first, late
        self.release = threading.Event()

    def logs(self, container_id: str, **kwargs: object) -> object:
        yield self.first
        self.release.wait(10)
        yield self.late


def test_a_follow_that_outlives_its_container_is_caught_up_from_the_whole_log() -> None:
    api = _FollowThatOutlivesItsContainer(b"line 1\n", b"late duplicate\n")
    received: list[tuple[str, bytes]] = []
    pump = _LogPump(api, "c1", "stdout", lambda stream, data: received.append((stream, data)))
    assert not pump.ended(0.2), "the follow stays open"
    pump.catch_up(b"line 1\nline 2\nline 3\n")
    api.release.set()  # the follow ends later: what it still yields is not delivered again
    assert pump.ended(5)
    assert b"".join(data for _, data in received) == b"line 1\nline 2\nline 3\n"
    assert {stream for stream, _ in received} == {"stdout"}
    assert pump.error is None
