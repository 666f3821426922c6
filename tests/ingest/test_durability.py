"""Nothing acknowledged is lost: ingest, SIGKILL the server right after the acknowledgement,
restart on the same data folder; the aggregate workers then resume from the logs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from app.core.events import parse_event
from app.core.settings import EngineConfig
from app.engine import build_engine
from app.ingest.log import log_length
from app.redis import embedded as redis_stack
from app.redis import library as functions


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    cfg = EngineConfig(key_prefix="dur:")
    keys = cfg.keys()
    now = int(time.time() * 1000)
    server = redis_stack.EmbeddedRedis(tmp_path / "data").start()
    try:
        client = redis.Redis.from_url(server.url)
        functions.load(client)
        engine = build_engine(client, cfg)
        acknowledged = []
        for batch in range(20):
            events = [
                parse_event({"event_id": f"d{batch}-{i}", "type": "view", "user_id": f"u{i % 7}",
                             "session_id": "s", "item_id": f"I{i}", "ts": now - 10_000 + i})
                for i in range(50)
            ]  # fmt: skip
            if batch == 10:
                engine.drain()  # half of it applied to the aggregates before the crash
            report = engine.ingestor.ingest(events)
            assert report.accepted == 50
            acknowledged += events
            acked_at = time.perf_counter()
        pid = server.proc.pid if server.proc is not None else 0
        kill_delay_ms = (time.perf_counter() - acked_at) * 1000
        os.kill(pid, signal.SIGKILL)  # no shutdown, no final AOF rewrite
        server.kill()  # reaps it
        client.close()
        assert server.proc is not None and server.proc.returncode == -9
    finally:
        server.stop()
    assert kill_delay_ms < 1  # the kill was sent within 1 ms of the last acknowledgement

    restarted = redis_stack.EmbeddedRedis(tmp_path / "data").start()
    try:
        client = redis.Redis.from_url(restarted.url)
        # The Functions library is persisted with the data set as well.
        assert functions.loaded_version(client) == functions.build_library().version
        assert log_length(client, keys) == len(acknowledged)
        views = sum(
            client.json().get(keys.user(f"u{u}", "session"), "$.counters.view")[0] for u in range(7)
        )
        assert views == len(acknowledged)
        engine = build_engine(client, cfg)
        replay = engine.ingestor.ingest(acknowledged)
        assert replay.duplicates == len(acknowledged)
        # The workers resume where the logs say: every view counted once in the sketches.
        engine.drain()
        for i in range(50):
            item = f"I{i}"
            got = client.execute_command("CMS.QUERY", keys.cms(keys.shard(item), "view"), item)
            assert got == [20]
        client.close()
    finally:
        restarted.stop()
