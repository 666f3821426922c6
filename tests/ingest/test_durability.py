"""Nothing acknowledged is lost: ingest, SIGKILL the server, restart on the same data dir."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from app.core.events import parse_event
from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.ingest.ingestor import Ingestor
from app.redis import embedded as redis_stack
from app.redis import library as functions


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    cfg = EngineConfig(key_prefix="dur:")
    keys = Keys(cfg.key_prefix)
    now = int(time.time() * 1000)
    server = redis_stack.EmbeddedRedis(tmp_path / "data").start()
    try:
        client = redis.Redis.from_url(server.url)
        functions.load(client)
        ingestor = Ingestor(client, cfg)
        acknowledged = []
        for batch in range(20):
            events = [
                parse_event({"event_id": f"d{batch}-{i}", "type": "view", "user_id": f"u{i % 7}",
                             "session_id": "s", "item_id": f"I{i}", "ts": now - 10_000 + i})
                for i in range(50)
            ]  # fmt: skip
            report = ingestor.ingest(events)
            assert report.accepted == 50
            acknowledged += events
        client.close()
        server.kill()  # SIGKILL: no shutdown, no final AOF rewrite
        assert server.proc is not None and server.proc.returncode == -9
    finally:
        server.stop()

    restarted = redis_stack.EmbeddedRedis(tmp_path / "data").start()
    try:
        client = redis.Redis.from_url(restarted.url)
        # The Functions library is persisted with the data set as well.
        assert functions.loaded_version(client) == functions.build_library().version
        assert client.xlen(keys.log) == len(acknowledged)
        views = sum(
            client.json().get(keys.user(f"u{u}", "session"), "$.counters.view")[0] for u in range(7)
        )
        assert views == len(acknowledged)
        replay = Ingestor(client, cfg).ingest(acknowledged)
        assert replay.duplicates == len(acknowledged)
        client.close()
    finally:
        restarted.stop()
