"""InstancePool against the real engine: instances made ahead, deleted in the background,
nothing left after close()."""

from __future__ import annotations

from sqlrs_engine.client import Client, Instance
from sqlrs_engine.client.pool import InstancePool
from tests.support.engine_process import EngineProcess

ARGS = ["-c", "create table pooled(a int)"]


def test_prefetched_instances_and_cleanup(client: Client, client_engine: EngineProcess) -> None:
    state_dir = client_engine.engine_json.parent
    pool = InstancePool(lambda: Client(state_dir=state_dir, autostart=False), prefetch=1)
    now_calls: list[int] = []

    def prepare_now() -> Instance:
        now_calls.append(1)
        return client.prepare_psql(ARGS, image="postgres:15", ttl="10m")

    def prepare_ahead(worker: Client) -> Instance:
        return worker.prepare_psql(ARGS, image="postgres:15", ttl="10m")

    try:
        first = pool.acquire("db", prepare_now, prepare_ahead)
        second = pool.acquire("db", prepare_now, prepare_ahead)
        assert len(now_calls) == 1, "the second instance was made ahead"
        assert second.instance_id != first.instance_id and second.cached
        live = {entry.instance_id for entry in client.list_instances()}
        assert {first.instance_id, second.instance_id} <= live
        pool.release(first.instance_id)
        pool.release(second.instance_id)
    finally:
        errors = pool.close()
    assert errors == []
    # The one made ahead for a third test that never came is deleted too.
    assert client.list_instances() == []


def test_a_failed_prefetch_is_replaced_by_a_prepare_in_the_callers_thread(
    client: Client, client_engine: EngineProcess
) -> None:
    state_dir = client_engine.engine_json.parent
    pool = InstancePool(lambda: Client(state_dir=state_dir, autostart=False), prefetch=1)
    now_calls: list[int] = []

    def prepare_now() -> Instance:
        now_calls.append(1)
        return client.prepare_psql(ARGS, image="postgres:15")

    def prepare_ahead(worker: Client) -> Instance:
        return worker.prepare_psql(ARGS, image="postgres:15", ttl="never")  # a 400

    try:
        first = pool.acquire("db", prepare_now, prepare_ahead)
        second = pool.acquire("db", prepare_now, prepare_ahead)
        assert len(now_calls) == 2
        pool.release(first.instance_id)
        pool.release(second.instance_id)
    finally:
        assert pool.close() == []
    assert client.list_instances() == []
