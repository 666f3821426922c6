"""Failover: a 3-master cluster with one replica each; SIGKILL a master after acknowledged writes.

What is guaranteed (docs/cluster.md): with RETAIL_ACK_REPLICAS=1 an accepted batch is on a
replica before the 200, so the promoted replica serves every acknowledged event (and a retry of
the batch answers `duplicate`). Without it, an acknowledgement means "applied on the primary":
the writes of the last instants before a crash may be lost with the primary, and a retry of
them is then accepted again (at-least-once, never double-counted while the dedup set holds).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from starlette.datastructures import Secret
from starlette.testclient import TestClient

from app.api.app import create_app
from app.core.keys import Keys
from app.core.settings import EngineConfig, Settings
from app.redis import cluster
from app.redis import library as functions
from app.redis.connect import connect

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
WRITE = {"X-Write-Key": "wk_test"}
NOW = int(time.time() * 1000)


@pytest.fixture(scope="module")
def replicated() -> Iterator[cluster.LocalCluster]:
    cl = cluster.temporary(3, 1).start()
    try:
        with connect(cl.url) as conn:
            functions.load(conn)
        with redis.Redis.from_url(cl.catalog_url) as conn:
            functions.load(conn)
        yield cl
    finally:
        cl.stop()


def settings(cl: cluster.LocalCluster, tmp_path: Path, ack: int) -> Settings:
    return Settings(
        redis_url=cl.url, host="127.0.0.1", port=0, write_keys=frozenset(),
        server_keys=frozenset({"wk_test"}),
        admin_key=Secret("s3cret-admin"), data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=False, engine=EngineConfig(key_prefix="fo:"), catalog_redis_url=cl.catalog_url,
        # 1 s (below the 2 s socket timeout): under CI load a healthy replica must not miss
        # the WAIT, only the stopped one.
        ack_replicas=ack, ack_timeout_ms=1_000,
    )  # fmt: skip


def test_a_stalled_replica_turns_the_acknowledgement_into_a_503_then_a_retry_succeeds(
    replicated: cluster.LocalCluster, tmp_path: Path
) -> None:
    masters = replicated.masters_now()
    replica = next(n for n in replicated.nodes if n not in masters and n.proc and
                   n.proc.poll() is None)  # fmt: skip
    assert replica.proc is not None
    with redis.Redis(port=replica.port) as conn:
        master_of_replica = f"127.0.0.1:{conn.info('replication')['master_port']}"
    events = [{"event_id": f"s{i}", "type": "view", "user_id": f"st{i}", "item_id": "A",
               "ts": NOW} for i in range(60)]  # fmt: skip
    with TestClient(create_app(settings(replicated, tmp_path, ack=1))) as api:
        replica.proc.send_signal(signal.SIGSTOP)  # alive but not acknowledging
        try:
            stalled = api.post("/v1/events", json={"events": events}, headers=WRITE)
        finally:
            replica.proc.send_signal(signal.SIGCONT)
        assert stalled.status_code == 503, stalled.text
        body = stalled.json()
        assert body["error"] == "not_replicated" and body["lagging"] == [master_of_replica]
        assert body["accepted"] == 60  # applied on the primaries; the sender retries
        retry = api.post("/v1/events", json={"events": events}, headers=WRITE)
        assert retry.status_code == 200 and retry.json()["duplicate"] == 60, retry.text


# Runs last: it leaves one master without a replica.
def test_acknowledged_events_survive_a_master_killed_and_replaced(
    replicated: cluster.LocalCluster, tmp_path: Path
) -> None:
    keys = Keys("fo:")
    events = [{"event_id": f"f{i}", "type": "view", "user_id": f"fo{i}", "item_id": "A",
               "ts": NOW} for i in range(300)]  # fmt: skip
    with TestClient(create_app(settings(replicated, tmp_path, ack=1))) as api:
        for start in range(0, 300, 100):
            body = api.post("/v1/events", json={"events": events[start : start + 100]},
                            headers=WRITE)  # fmt: skip
            assert body.status_code == 200 and body.json()["replicated"] is True, body.text
    victim = replicated.master_of(keys.user("fo0", "session"))
    on_victim = [
        i for i in range(300) if replicated.master_of(keys.user(f"fo{i}", "session")) is victim
    ]
    assert 50 < len(on_victim) < 150  # a third of the shoppers live there

    killed_at = time.monotonic()
    victim.kill()  # SIGKILL: no shutdown, no last AOF flush
    with connect(replicated.url) as client:
        recovered_s = wait_writable(client, keys.user("fo0", "probe"), timeout_s=30)
        assert victim not in replicated.masters_now()
        sessions = [client.exists(keys.user(f"fo{i}", "session")) for i in on_victim]
        assert sum(sessions) == len(on_victim)  # every acknowledged event survived
    with TestClient(create_app(settings(replicated, tmp_path, ack=0))) as api:
        again = api.post("/v1/events", json={"events": events[:100]}, headers=WRITE).json()
        assert again["duplicate"] == 100  # the retry of an acknowledged batch changes nothing
    print(f"failover: writable again {recovered_s:.1f} s after SIGKILL "
          f"(cluster-node-timeout {cluster.NODE_TIMEOUT_MS} ms)")  # fmt: skip
    assert time.monotonic() - killed_at < 40


def wait_writable(client: redis.Redis, key: str, *, timeout_s: float) -> float:
    """Seconds until a write to `key`'s slot succeeds again (the replica promoted)."""
    start = time.monotonic()
    while True:
        try:
            client.set(key, "1", ex=60)
            return time.monotonic() - start
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
                redis.ResponseError):  # fmt: skip
            if time.monotonic() - start > timeout_s:
                raise
            time.sleep(0.1)
