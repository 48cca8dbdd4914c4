"""DeletionService against real parts (SPEC §6, §4.7, §4.11; docs/api.md "Deletion").

The Registry runs on a temporary `state.db` seeded through the engine's persistence layer,
states and clones are real copy-backend directories behind a real Snapshot actor, and each
instance has a real Instance actor. Only the runtime is a fake: the service merely asks an
instance how many clients it has and tells it to stop its server, so no PostgreSQL is needed
(the e2e suite covers the real thing).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from sqlrs_engine.actors.instance import InstanceActor
from sqlrs_engine.actors.registry import RegistryProxy, RegistrySettings, start_registry
from sqlrs_engine.actors.snapshot import SnapshotClient, start_snapshot_actor
from sqlrs_engine.cancel import NEVER_CANCELLED
from sqlrs_engine.config.store import ConfigStore
from sqlrs_engine.deletion.service import DeletionService, children_first
from sqlrs_engine.deletion.uses import StateUses
from sqlrs_engine.errors import ApiError
from sqlrs_engine.locks import FileLock
from sqlrs_engine.persistence.metadata import InstanceRecord
from sqlrs_engine.persistence.rows import Row
from sqlrs_engine.runtime.base import ServerHandle
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.mounts import release_mounts_under
from sqlrs_engine.snapshot.overlay import OverlayBackend
from sqlrs_engine.snapshot.store import StateStore
from tests.support.fake_runtime import FakeRuntime
from tests.support.faults import chattr, needs_chattr
from tests.support.seed import IMAGE, Seeder
from tests.support.waiting import WaitingToken, wait_for

S, C, G, X = ("5" * 64, "c" * 64, "9" * 64, "e" * 64)
"""State ids: a root S, its child C, grandchild G; X is unrelated."""
TIMEOUT = 30.0


class ServerRuntime(FakeRuntime):
    """A fake runtime whose servers survive an engine restart (`adopt` finds them again),
    with a settable number of client connections per data dir. It records, for every kill,
    whether the data dir still existed: a server must be stopped before its files go."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: dict[Path, int] = {}
        self.kills: list[tuple[Path, bool]] = []

    def adopt(self, resolved_image_id: str, data_dir: Path) -> ServerHandle | None:
        if data_dir not in self.running:
            return None
        return ServerHandle(f"fake:{data_dir.parent.name}", data_dir, "127.0.0.1", 5432)

    def count_connections(self, handle: ServerHandle) -> int:
        return self.clients.get(handle.data_dir, 0)

    def kill(self, handle: ServerHandle) -> None:
        self.kills.append((handle.data_dir, handle.data_dir.is_dir()))
        super().kill(handle)


class IdleJob(pykka.ThreadingActor):
    """Stands in for a PrepareJob actor: `cancel` stops it, as a cancelled job's actor does."""

    def cancel(self) -> None:
        self.stop()


class World:
    """A state store seeded with rows and files, then served by real actors."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.source = tmp_path / "source"
        self.layout = StoreLayout(self.root)
        self.store = StateStore(self.layout, CopyBackend())
        self.runtime = ServerRuntime()
        self.seeder: Seeder | None = Seeder(self.root)
        self.instance_refs: list[pykka.ActorRef[Any]] = []
        self.job_refs: list[pykka.ActorRef[Any]] = []
        self._registry_ref: pykka.ActorRef[Any] | None = None
        self._snapshot_ref: pykka.ActorRef[Any] | None = None
        self.registry: RegistryProxy
        self.snapshots: SnapshotClient
        pgdata = self.source / "pgdata"
        (pgdata / "base").mkdir(parents=True)
        (pgdata / "PG_VERSION").write_text("15\n")
        (pgdata / "base" / "1259").write_bytes(b"\x01" * 4096)

    # -- seeding (before start) ------------------------------------------------------------

    @property
    def seed(self) -> Seeder:
        assert self.seeder is not None, "seed before start()"
        return self.seeder

    def state(self, state_id: str, parent: str | None = None) -> Path:
        """A state row and its built, committed state dir."""
        self.seed.state(state_id, parent)
        with self.store.build_state(IMAGE, state_id) as build:
            build.snapshot(self.source, parent=None)
            build.commit()
        return self.state_dir(state_id)

    def instance(self, instance_id: str, state_id: str, connections: int = 0) -> Path:
        """An instance row, its clone in `jobs/<job>/runtime` and a running server on it."""
        job_id = f"job-{instance_id}"
        runtime_dir = self.store.clone_to_runtime(
            self.state_dir(state_id), job_id, require_pg_version=True
        )
        handle = self.runtime.start(IMAGE, runtime_dir, lambda _line: None, NEVER_CANCELLED)
        self.runtime.clients[runtime_dir] = connections
        self.seed.metadata.insert_instance(
            InstanceRecord(
                instance_id=instance_id,
                state_id=state_id,
                image_id=IMAGE,
                created_at="2026-01-02T00:00:00Z",
                runtime_id=handle.runtime_id,
                runtime_dir=str(runtime_dir),
                job_id=job_id,
            )
        )
        return runtime_dir

    def state_dir(self, state_id: str) -> Path:
        return self.layout.state_dir(IMAGE, state_id)

    # -- actors ----------------------------------------------------------------------------

    def start(self) -> DeletionService:
        self.seed.close()
        self.seeder = None
        self._snapshot_ref, self.snapshots = start_snapshot_actor(self.store, workers=2)
        self._registry_ref, self.registry = start_registry(
            RegistrySettings(
                db_path=self.layout.state_db,
                config=ConfigStore(self.layout.config_json),
                job_actor_factory=self._start_job,
                instance_actor_factory=self._start_instance,
            )
        )
        return DeletionService(self.registry, self.snapshots)

    def _start_instance(self, row: Row, handle: ServerHandle | None) -> pykka.ActorRef[Any]:
        ref = InstanceActor.start(
            row["instance_id"], row["image_id"], handle, Path(row["runtime_dir"]), self.runtime
        )
        self.instance_refs.append(ref)
        return ref

    def _start_job(self, job_id: str, registry: RegistryProxy) -> pykka.ActorRef[Any]:
        ref = IdleJob.start()
        self.job_refs.append(ref)
        return ref

    def stop(self) -> None:
        if self.seeder is not None:
            self.seeder.close()
        if self._registry_ref is not None:
            for ref in self.registry.begin_shutdown().get(timeout=TIMEOUT):
                ref.stop(block=True, timeout=TIMEOUT)
        # Deleted instances' actors were told to stop without waiting: wait for them here.
        for ref in [*self.instance_refs, *self.job_refs]:
            ref.stop(block=True, timeout=TIMEOUT)
        if self._registry_ref is not None:
            self._registry_ref.stop(block=True, timeout=TIMEOUT)
        if self._snapshot_ref is not None:
            self._snapshot_ref.stop(block=True, timeout=TIMEOUT)

    # -- observations ----------------------------------------------------------------------

    def files(self, under: Path | None = None) -> dict[str, bytes | None]:
        """Every path under the root (or `under`) with the content of regular files,
        `state.db*` aside."""
        found: dict[str, bytes | None] = {}
        for dirpath, dirnames, filenames in os.walk(under or self.root):
            for name in [*dirnames, *filenames]:
                path = Path(dirpath) / name
                rel = str(path.relative_to(self.root))
                if rel.startswith("state.db"):
                    continue
                found[rel] = path.read_bytes() if path.is_file() else None
        return found

    def rows(self) -> tuple[list[str], list[str]]:
        """(instance ids, state ids) the Registry knows."""
        instances = self.registry.list_instances(None, None, None).get(timeout=TIMEOUT)
        states = self.registry.list_states(None, None, None).get(timeout=TIMEOUT)
        return (
            sorted(row["instance_id"] for row in instances),
            sorted(row["state_id"] for row in states),
        )

    def running(self) -> set[Path]:
        return set(self.runtime.running)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    try:
        yield made
    finally:
        made.stop()


# -- instances -------------------------------------------------------------------------------


def test_deleting_an_instance_stops_its_server_then_removes_dir_and_row(world: World) -> None:
    """Names survive their instance (docs: "names are untouched"); a second delete is 404."""
    world.state(S)
    runtime_dir = world.instance("i1", S)
    world.seed.name("dev", "i1", S)
    service = world.start()

    status, body = service.delete_instance("i1", force=False, dry_run=False)

    assert status == 200
    assert body == {
        "dry_run": False,
        "outcome": "deleted",
        "root": {"kind": "instance", "id": "i1", "connections": 0, "runtime_id": "fake:20000"},
    }
    assert world.runtime.kills == [(runtime_dir, True)], "server stopped before its files"
    assert not runtime_dir.parent.exists(), "the emptied jobs/<id> dir goes too"
    assert world.rows() == ([], [S])
    assert world.registry.instance_actor("i1").get(timeout=TIMEOUT) is None
    name = world.registry.get_name("dev").get(timeout=TIMEOUT)
    assert name is not None and name["status"] == "missing"
    with pytest.raises(ApiError) as again:
        service.delete_instance("i1", force=False, dry_run=False)
    assert (again.value.status, again.value.message) == (404, "instance not found")


@pytest.mark.parametrize(
    ("force", "dry_run", "status", "outcome", "deleted"),
    [
        (False, False, 409, "blocked", False),
        (False, True, 200, "blocked", False),
        (True, True, 200, "would_delete", False),
        (True, False, 200, "deleted", True),
    ],
)
def test_connected_instance_needs_force(
    world: World, force: bool, dry_run: bool, status: int, outcome: str, deleted: bool
) -> None:
    """Connection counts come from the instance's actor; only force stops a busy server."""
    world.state(S)
    runtime_dir = world.instance("i1", S, connections=3)
    service = world.start()
    files_before = world.files()

    code, body = service.delete_instance("i1", force=force, dry_run=dry_run)

    assert (code, body["outcome"], body["root"]["connections"]) == (status, outcome, 3)
    assert body["root"].get("blocked") == (None if force else "active_connections")
    if deleted:
        assert not runtime_dir.exists() and world.rows() == ([], [S])
        assert world.running() == set()
    else:
        assert world.files() == files_before and world.rows() == (["i1"], [S])
        assert world.running() == {runtime_dir} and world.runtime.kills == []


# -- states ----------------------------------------------------------------------------------


def recurse_tree(world: World, busy: int = 0) -> dict[str, Path]:
    """S ─ i-s, C ─ (i-c with `busy` clients, G ─ i-g); and an unrelated X ─ i-x."""
    world.state(S)
    world.state(C, S)
    world.state(G, C)
    world.state(X)
    return {
        "i-s": world.instance("i-s", S),
        "i-c": world.instance("i-c", C, connections=busy),
        "i-g": world.instance("i-g", G),
        "i-x": world.instance("i-x", X),
    }


@pytest.mark.parametrize(
    ("operation", "outcome"),
    [
        (lambda s: s.delete_state(S, recurse=True, force=False, dry_run=True), "would_delete"),
        (lambda s: s.delete_state(S, recurse=True, force=True, dry_run=True), "would_delete"),
        (lambda s: s.delete_state(S, recurse=False, force=False, dry_run=True), "blocked"),
        (lambda s: s.delete_instance("i-c", force=False, dry_run=True), "would_delete"),
    ],
    ids=["recurse", "recurse-force", "no-recurse", "instance"],
)
def test_dry_run_changes_nothing(
    world: World, operation: Callable[[DeletionService], tuple[int, Row]], outcome: str
) -> None:
    """A dry run only describes: no file, row or server is touched, whatever the outcome."""
    recurse_tree(world)
    service = world.start()
    files, rows, running = world.files(), world.rows(), world.running()

    status, body = operation(service)

    assert (status, body["dry_run"], body["outcome"]) == (200, True, outcome)
    assert world.files() == files
    assert world.rows() == rows
    assert world.running() == running and world.runtime.kills == []


@pytest.mark.parametrize("descendant", ["child state", "instance"])
@pytest.mark.parametrize("force", [False, True])
def test_state_with_descendants_is_blocked_without_recurse(
    world: World, descendant: str, force: bool
) -> None:
    """`force` does not override `has_descendants`; the tree then lists no children."""
    world.state(S)
    if descendant == "child state":
        world.state(C, S)
    else:
        world.instance("i1", S)
    service = world.start()
    files, rows = world.files(), world.rows()

    status, body = service.delete_state(S, recurse=False, force=force, dry_run=False)

    assert status == 409
    assert body["root"] == {"kind": "state", "id": S, "blocked": "has_descendants"}
    assert world.files() == files and world.rows() == rows
    assert world.runtime.kills == []


def test_leaf_state_is_deleted_without_recurse(world: World) -> None:
    """Only the state's own directory goes; its parent and siblings stay."""
    world.state(S)
    world.state(C, S)
    world.state(X, S)
    service = world.start()

    status, body = service.delete_state(C, recurse=False, force=False, dry_run=False)

    assert (status, body["root"]) == (200, {"kind": "state", "id": C})
    assert not world.state_dir(C).exists()
    assert world.store.validate_state(IMAGE, S) is None
    assert world.store.validate_state(IMAGE, X) is None
    assert world.rows() == ([], sorted([S, X]))


def test_recurse_removes_the_whole_subtree_children_first(world: World) -> None:
    """Servers are stopped while their files still exist; the unrelated X is untouched."""
    dirs = recurse_tree(world)
    service = world.start()

    status, body = service.delete_state(S, recurse=True, force=False, dry_run=False)

    assert (status, body["outcome"]) == (200, "deleted")
    tree = body["root"]
    assert [(n["kind"], n["id"]) for n in tree["children"]] == [("instance", "i-s"), ("state", C)]
    assert [n["id"] for n in tree["children"][1]["children"]] == ["i-c", G]
    assert world.runtime.kills == [
        (dirs["i-s"], True),
        (dirs["i-c"], True),
        (dirs["i-g"], True),
    ]
    for state_id in (S, C, G):
        assert not world.state_dir(state_id).exists()
    assert [p.name for p in world.layout.jobs_dir.iterdir()] == ["job-i-x"]
    assert world.rows() == (["i-x"], [X])
    assert world.store.validate_state(IMAGE, X) is None
    assert world.running() == {dirs["i-x"]}
    with pytest.raises(ApiError) as again:
        service.delete_state(C, recurse=True, force=False, dry_run=False)
    assert (again.value.status, again.value.message) == (404, "state not found")


@pytest.mark.parametrize("dry_run", [False, True])
def test_connected_descendant_blocks_the_whole_tree(world: World, dry_run: bool) -> None:
    """One busy grandchild instance: every ancestor is blocked and nothing at all is removed,
    not even the idle instances that come before it in removal order."""
    recurse_tree(world, busy=1)
    service = world.start()
    files, rows, running = world.files(), world.rows(), world.running()

    status, body = service.delete_state(S, recurse=True, force=False, dry_run=dry_run)

    assert (status, body["outcome"]) == (200 if dry_run else 409, "blocked")
    tree = body["root"]
    assert tree["blocked"] == "blocked_by_descendant"
    assert "blocked" not in tree["children"][0], "the idle instance itself is not blocked"
    child = tree["children"][1]
    assert child["blocked"] == "blocked_by_descendant"
    assert child["children"][0]["blocked"] == "active_connections"
    assert child["children"][0]["connections"] == 1
    assert world.files() == files and world.rows() == rows
    assert world.running() == running and world.runtime.kills == []


def test_force_deletes_a_tree_with_connected_instances(world: World) -> None:
    dirs = recurse_tree(world, busy=2)
    service = world.start()

    status, body = service.delete_state(S, recurse=True, force=True, dry_run=False)

    assert (status, body["outcome"]) == (200, "deleted")
    assert body["root"]["children"][1]["children"][0]["connections"] == 2
    assert dirs["i-c"] in [path for path, _ in world.runtime.kills]
    assert world.rows() == (["i-x"], [X])
    assert world.running() == {dirs["i-x"]}


@pytest.mark.parametrize(
    ("delete", "message"),
    [
        (lambda s: s.delete_instance("nope", False, False), "instance not found"),
        (lambda s: s.delete_instance("nope", True, True), "instance not found"),
        (lambda s: s.delete_state("f" * 64, True, True, False), "state not found"),
        (lambda s: s.delete_state("f" * 64, False, False, True), "state not found"),
        (lambda s: s.delete_job("nope", False, False), "job not found"),
        (lambda s: s.delete_job("nope", True, True), "job not found"),
    ],
)
def test_unknown_ids_are_not_found(
    world: World, delete: Callable[[DeletionService], object], message: str
) -> None:
    world.state(S)
    service = world.start()
    files = world.files()
    with pytest.raises(ApiError) as raised:
        delete(service)
    assert (raised.value.status, raised.value.code, raised.value.message) == (
        404,
        "not_found",
        message,
    )
    assert world.files() == files and world.rows() == ([], [S])


def test_concurrent_deletes_of_one_instance_delete_it_once(world: World) -> None:
    """Deletions are serialized: exactly one caller removes it, the others get 404."""
    world.state(S)
    world.instance("i1", S)
    service = world.start()
    callers = 4
    barrier = threading.Barrier(callers)
    outcomes: list[object] = []
    lock = threading.Lock()

    def delete() -> None:
        barrier.wait(TIMEOUT)
        try:
            result: object = service.delete_instance("i1", force=False, dry_run=False)[0]
        except ApiError as error:
            result = error.status
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=delete) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert sorted(outcomes, key=str) == [200, 404, 404, 404]
    assert len(world.runtime.kills) == 1


# -- a directory that cannot be removed ------------------------------------------------------


@needs_chattr
def test_unremovable_state_keeps_its_row_and_files_while_its_children_go(world: World) -> None:
    """docs/api.md: the nodes removed before the failure lose their rows, the failing node
    keeps both its row and its files; the request fails with 500 and the reason. Once the
    cause is gone, the same delete finishes the job."""
    world.state(S)
    world.state(C, S)
    child_runtime = world.instance("i-c", C)
    service = world.start()
    root_dir = world.state_dir(S)
    root_files = world.files(under=root_dir)
    assert str(world.layout.build_marker(IMAGE, S).relative_to(world.root)) in root_files
    chattr("+i", root_dir)
    try:
        with pytest.raises(ApiError) as raised:
            service.delete_state(S, recurse=True, force=False, dry_run=False)
        assert (raised.value.status, raised.value.code) == (500, "internal_error")
        assert raised.value.message == "delete state failed"
        assert "Operation not permitted" in (raised.value.details or "")
        assert world.rows() == ([], [S])
        assert not world.state_dir(C).exists() and not child_runtime.exists()
        assert world.files(under=root_dir) == root_files
        assert world.store.validate_state(IMAGE, S) is None, "still a complete state"
    finally:
        chattr("-i", root_dir)

    status, body = service.delete_state(S, recurse=True, force=False, dry_run=False)
    assert (status, body["root"]) == (200, {"kind": "state", "id": S})
    assert world.rows() == ([], []) and not root_dir.exists()


@needs_chattr
def test_unremovable_instance_dir_fails_and_keeps_the_row(world: World) -> None:
    """Its job dir is immutable: neither `rm -rf` nor the `.stale-` rename can take the
    runtime dir away. The row stays (never a row pointing nowhere), the actor stays."""
    world.state(S)
    runtime_dir = world.instance("i1", S)
    service = world.start()
    chattr("+i", runtime_dir.parent)
    try:
        with pytest.raises(ApiError) as raised:
            service.delete_instance("i1", force=False, dry_run=False)
        assert (raised.value.status, raised.value.message) == (500, "delete instance failed")
        assert "cannot move it aside" in (raised.value.details or "")
        assert runtime_dir.is_dir()
        assert world.rows() == (["i1"], [S])
        assert world.registry.instance_actor("i1").get(timeout=TIMEOUT) is not None
    finally:
        chattr("-i", runtime_dir.parent)


@needs_chattr
def test_unremovable_instance_dir_keeps_its_files(world: World) -> None:
    world.state(S)
    runtime_dir = world.instance("i1", S)
    service = world.start()
    before = sorted(p.relative_to(runtime_dir) for p in runtime_dir.rglob("*"))
    chattr("+i", runtime_dir.parent)
    try:
        with pytest.raises(ApiError):
            service.delete_instance("i1", force=False, dry_run=False)
        after = sorted(p.relative_to(runtime_dir) for p in runtime_dir.rglob("*"))
    finally:
        chattr("-i", runtime_dir.parent)
    assert after == before


# -- jobs ------------------------------------------------------------------------------------


def job_dir_with(world: World, job_id: str, *names: str) -> Path:
    job_dir = world.layout.job_dir(job_id)
    for name in names:
        (job_dir / name).mkdir(parents=True)
        (job_dir / name / "file").write_text(name)
    return job_dir


def test_deleting_a_job_keeps_the_data_dir_of_its_instance(world: World) -> None:
    """§4.7: `jobs/<id>/` goes, except an instance's runtime dir that lives there."""
    world.state(S)
    runtime_dir = world.instance("i1", S)
    job_id = runtime_dir.parent.name
    world.seed.job(job_id)
    job_dir = job_dir_with(world, job_id, "scratch")
    service = world.start()

    status, body = service.delete_job(job_id, force=False, dry_run=False)

    assert (status, body["root"]) == (200, {"kind": "job", "id": job_id})
    assert world.registry.job_row(job_id).get(timeout=TIMEOUT) is None
    assert sorted(p.name for p in job_dir.iterdir()) == ["runtime"]
    assert (runtime_dir / "pgdata" / "PG_VERSION").is_file()
    assert world.rows() == (["i1"], [S]) and world.running() == {runtime_dir}


# -- states a running job relies on (deletion/uses.py) ---------------------------------------


class MarkSpy:
    """The Registry, recording every `mark_deleting` call: a refused deletion must decide
    before it marks anything (a crash right after a mark would complete the deletion)."""

    def __init__(self, registry: RegistryProxy) -> None:
        self._registry = registry
        self.marks: list[tuple[list[str], list[str], bool]] = []

    def mark_deleting(self, instances: list[str], states: list[str], on: bool) -> Any:
        self.marks.append((list(instances), list(states), on))
        return self._registry.mark_deleting(instances, states, on)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


@pytest.mark.parametrize(
    ("held", "recurse", "force"),
    [(S, False, False), (S, False, True), (S, True, True), (C, True, False), (C, True, True)],
)
def test_a_state_a_running_job_holds_is_blocked_before_anything_is_marked(
    world: World, held: str, recurse: bool, force: bool
) -> None:
    """409 `active_tasks` naming the job, whatever `force` says; nothing is marked, stopped
    or removed. Once the job has ended, the same delete goes through."""
    world.state(S)
    world.state(C, S)
    world.instance("i-c", C)
    world.start()
    uses = StateUses()
    spy = MarkSpy(world.registry)
    service = DeletionService(spy, world.snapshots, uses=uses)  # type: ignore[arg-type]
    uses.hold("job-1", held, NEVER_CANCELLED)
    files, rows, running = world.files(), world.rows(), world.running()

    target = S if recurse else held  # (S has a child: unheld, it would be has_descendants)
    status, body = service.delete_state(target, recurse=recurse, force=force, dry_run=False)

    assert (status, body["outcome"]) == (409, "blocked")
    job = {"kind": "job", "id": "job-1", "blocked": "active_tasks"}
    if held == S:
        assert body["root"]["blocked"] == "active_tasks"
        assert body["root"]["children"][-1] == job
    else:
        assert body["root"]["blocked"] == "blocked_by_descendant"
        child = body["root"]["children"][0]
        assert (child["id"], child["blocked"], child["children"][-1]) == (C, "active_tasks", job)
    assert spy.marks == []
    assert world.files() == files and world.rows() == rows
    assert world.running() == running and world.runtime.kills == []
    dry_status, dry = service.delete_state(target, recurse=recurse, force=force, dry_run=True)
    assert (dry_status, dry) == (200, {**body, "dry_run": True})

    uses.release("job-1")
    status, body = service.delete_state(S, recurse=True, force=force, dry_run=False)
    assert (status, body["outcome"]) == (200, "deleted")
    assert world.rows() == ([], []) and not world.state_dir(S).exists()


def marked_states(world: World) -> list[str]:
    _instances, states = world.registry.rows_marked_deleting().get(timeout=TIMEOUT)
    return [row["state_id"] for row in states]


def test_a_job_that_wants_a_state_under_deletion_waits_and_then_finds_it_gone(
    world: World,
) -> None:
    """The check and the removal are one step for jobs: a hold asked while the deletion
    is under way (here: waiting for the state's build lock) returns only after the state's
    files and row are gone, and says it waited, so the job rebuilds the state."""
    world.state(S)
    world.start()
    uses = StateUses()
    service = DeletionService(world.registry, world.snapshots, uses=uses)
    outcome: list[object] = []
    lock = FileLock(world.layout.build_lock(IMAGE, S, separate=False), timeout=TIMEOUT)
    lock.acquire()
    try:
        deleter = threading.Thread(
            target=lambda: outcome.append(
                service.delete_state(S, recurse=False, force=False, dry_run=False)[0]
            )
        )
        deleter.start()
        # Marked: the deletion is past its check, fenced, and now waits for the lock.
        assert wait_for(lambda: marked_states(world) == [S]), outcome
        token = WaitingToken()
        waited: list[bool] = []
        job = threading.Thread(target=lambda: waited.append(uses.hold("job-1", S, token)))
        job.start()
        assert token.waiting.wait(TIMEOUT), "the hold did not wait for the deletion"
    finally:
        lock.release()
    deleter.join(TIMEOUT)
    job.join(TIMEOUT)
    assert outcome == [200] and waited == [True]
    assert world.rows() == ([], []) and not world.state_dir(S).exists()
    assert uses.users([S]) == {S: ["job-1"]}, "the job holds what it rebuilds"


def test_a_layer_an_untracked_clone_stands_on_is_a_conflict_not_a_500(world: World) -> None:
    """The backstop: an overlay clone that no job of this engine holds (another engine's
    job on the same store, a crashed run's leftover) still keeps the state's layer; the
    delete answers 409 `conflict` naming the clone's job, keeps row, files and marker, and
    takes its mark back. Without the clone the same delete goes through."""
    if os.geteuid() != 0:
        pytest.skip("overlay mounts need root")
    world.store = StateStore(world.layout, OverlayBackend(world.root))
    world.state(S)
    service = world.start()  # before the clone: the start-up sweep unmounts idle clones
    try:
        world.store.clone_to_runtime(world.state_dir(S), "foreign-job", require_pg_version=True)
        files, rows = world.files(under=world.state_dir(S)), world.rows()

        with pytest.raises(ApiError) as raised:
            service.delete_state(S, recurse=False, force=True, dry_run=False)

        error = raised.value
        assert (error.status, error.code, error.message) == (409, "conflict", "state is in use")
        assert "lower layer of the mounted clone" in (error.details or "")
        assert "(made by job foreign-job)" in (error.details or "")
        assert world.rows() == rows and world.files(under=world.state_dir(S)) == files
        assert marked_states(world) == []
        world.store.remove_runtime_dir("foreign-job")
        status, body = service.delete_state(S, recurse=False, force=False, dry_run=False)
        assert (status, body["outcome"]) == (200, "deleted")
        assert world.rows() == ([], []) and not world.state_dir(S).exists()
    finally:
        release_mounts_under(world.root)


def test_running_job_is_blocked_until_forced(world: World) -> None:
    """A job with a running task: 409 `active_tasks`; `force` cancels it, waits for its actor
    to stop, then removes its directory and rows."""
    job_id = world.seed.job("j1", status="running")
    world.seed.jobs.replace_tasks(
        job_id,
        [{"task_id": "execute-0", "position": 0, "type": "state_execute", "status": "running"}],
    )
    job_dir = job_dir_with(world, job_id, "runtime")
    service = world.start()
    assert len(world.job_refs) == 1, "the Registry recovered the running job"
    actor = world.job_refs[0]

    status, body = service.delete_job(job_id, force=False, dry_run=False)
    assert (status, body["root"].get("blocked")) == (409, "active_tasks")
    dry_status, dry = service.delete_job(job_id, force=True, dry_run=True)
    assert (dry_status, dry["outcome"]) == (200, "would_delete")
    assert actor.is_alive() and job_dir.is_dir()
    assert world.registry.job_row(job_id).get(timeout=TIMEOUT) is not None

    status, body = service.delete_job(job_id, force=True, dry_run=False)
    assert (status, body["outcome"]) == (200, "deleted")
    assert not actor.is_alive()
    assert not job_dir.exists()
    assert world.registry.job_row(job_id).get(timeout=TIMEOUT) is None
    assert world.registry.list_tasks(job_id).get(timeout=TIMEOUT) == []


def test_retention_trims_the_oldest_finished_jobs_of_a_signature(world: World) -> None:
    """Default `maxIdentical` is 2: the two newest stay; other signatures and running jobs
    are never trimmed; an instance's data dir inside a trimmed job survives."""
    world.state(S)
    runtime_dir = world.instance("i1", S)
    oldest = runtime_dir.parent.name
    world.seed.job(oldest, created_at="2026-01-01T00:00:00Z", signature="sig")
    for job_id, day in (("j2", "02"), ("j3", "03"), ("j4", "04")):
        world.seed.job(job_id, created_at=f"2026-01-{day}T00:00:00Z", signature="sig")
        job_dir_with(world, job_id, "runtime")
    world.seed.job("other", created_at="2025-01-01T00:00:00Z", signature="other-sig")
    world.seed.job("busy", status="running", signature="sig")
    service = world.start()

    removed = service.trim_jobs("sig")

    assert removed == ["j2", oldest]
    remaining = sorted(row["job_id"] for row in world.registry.list_jobs(None).get(timeout=TIMEOUT))
    assert remaining == ["busy", "j3", "j4", "other"]
    assert not world.layout.job_dir("j2").exists()
    assert world.layout.job_dir("j3").is_dir() and world.layout.job_dir("j4").is_dir()
    assert (runtime_dir / "pgdata" / "PG_VERSION").is_file()
    assert service.trim_jobs("sig") == []


# -- crash safety: intent first, completed at start-up (issue 11) ---------------------------


@needs_chattr
def test_a_failed_delete_takes_back_its_intent_and_the_instance_stays_usable(
    world: World,
) -> None:
    world.state(S)
    runtime_dir = world.instance("i1", S)
    service = world.start()
    chattr("+i", runtime_dir.parent)
    try:
        with pytest.raises(ApiError):
            service.delete_instance("i1", force=False, dry_run=False)
    finally:
        chattr("-i", runtime_dir.parent)
    assert world.registry.rows_marked_deleting().get(timeout=TIMEOUT) == ([], [])
    ref = world.registry.instance_actor("i1").get(timeout=TIMEOUT)
    server = ref.proxy().ensure_running(lambda _line: None).get(timeout=TIMEOUT)
    assert server.restarted is True, "reinstated: a run may restart its server again"


def test_start_up_completes_a_deletion_that_a_crash_interrupted(world: World) -> None:
    """Rows marked `deleting` (the intent a crashed deletion left): their files and rows go,
    children first; everything not marked stays."""
    world.state(S)
    world.state(C, parent=S)
    world.state(G, parent=C)
    world.state(X)
    kept_dir = world.instance("i0", X)
    runtime_dir = world.instance("i1", C)
    service = world.start()
    world.registry.mark_deleting(["i1"], [S, C, G], True).get(timeout=TIMEOUT)
    world.store.remove_state(IMAGE, G)  # the crash came after the first removal

    instances, states = service.complete_interrupted()

    assert (instances, states) == (["i1"], [G, C, S])  # G: only its row was left
    assert world.rows() == (["i0"], [X])
    assert not runtime_dir.exists() and kept_dir.is_dir()
    assert not world.state_dir(S).exists() and world.state_dir(X).is_dir()
    assert world.registry.rows_marked_deleting().get(timeout=TIMEOUT) == ([], [])
    assert service.complete_interrupted() == ([], [])


@pytest.mark.parametrize(
    ("parents", "order"),
    [
        ({}, []),
        ({"a": None}, ["a"]),
        ({"a": None, "b": "a", "c": "b"}, ["c", "b", "a"]),
        ({"c": "b", "a": None, "b": "a"}, ["c", "b", "a"]),
        ({"a": None, "b": "a", "x": "a"}, ["b", "x", "a"]),
        ({"b": "gone"}, ["b"]),  # its parent's row was deleted before the crash
    ],
)
def test_children_first(parents: dict[str, str | None], order: list[str]) -> None:
    rows = [{"state_id": sid, "parent_state_id": parent} for sid, parent in parents.items()]
    assert [row["state_id"] for row in children_first(rows)] == order


def test_start_up_makes_state_rows_and_dirs_agree(world: World) -> None:
    """A row without a complete dir (crash between row and marker) goes when unused, stays
    when used; a dir without a row goes unless its build lock is held."""
    world.state(S)
    world.state(C, parent=S)
    world.state(X)
    world.instance("i1", X)
    world.seed.state(G)  # a row, but its build never completed: no dir at all
    orphan = world.state_dir("a" * 64)
    with world.store.build_state(IMAGE, "a" * 64) as build:  # a dir, but no row
        build.snapshot(world.source, parent=None)
        build.commit()
    busy = world.state_dir("b" * 64)
    busy.mkdir(parents=True)
    service = world.start()
    world.layout.build_marker(IMAGE, C).unlink()  # C lost its marker; S is its parent
    world.layout.build_marker(IMAGE, X).unlink()  # X lost it too, but has an instance
    with FileLock(world.layout.build_lock(IMAGE, "b" * 64)):
        rows, dirs = service.reconcile_states()
    assert sorted(rows) == sorted([G, C])
    assert dirs == [orphan]
    assert world.rows() == (["i1"], sorted([S, X]))
    assert not world.state_dir(C).exists() and not orphan.exists()
    assert busy.is_dir(), "someone builds it: left alone"
    assert service.reconcile_states() == ([], [world.state_dir("b" * 64)])
