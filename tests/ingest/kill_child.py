"""Child processes of the kill tests (tests/ingest/test_kill.py):
`python -m tests.ingest.kill_child`.

    ingest <redis_url> <prefix> <trial> <batches>   acknowledge the trial's batches, then exit
    work <redis_url> <prefix> <lease_ms>            run one aggregate worker until killed

Both print `ready` once their imports and engine are built, so the parent's random kill delay
falls inside the work, not inside Python's start-up.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from dataclasses import replace

from app.core.events import Event, parse_event
from app.core.settings import EngineConfig
from app.engine import build_engine
from app.redis.connect import connect

USERS = 200
ITEMS = 60
BATCH = 1000
NOW = int(time.time() * 1000) // 60_000 * 60_000  # one hour window, same in every process


def events_of(trial: int, batch: int, n: int = BATCH) -> list[Event]:
    """Deterministic events of one trial's batch: views, cart adds and purchases of 60 items
    by 200 shoppers in the last hour."""
    rng = random.Random(trial * 1_000_003 + batch)
    out = []
    for i in range(n):
        kind = rng.choice(("view", "view", "view", "add_to_cart", "purchase"))
        body = {
            "event_id": f"k{trial}-{batch}-{i}", "type": kind,
            "user_id": f"u{rng.randrange(USERS)}", "session_id": "s1",
            "ts": NOW - rng.randrange(3_000_000),
            "props": {"category": f"c{rng.randrange(5)}", "price": 2.5},
        }  # fmt: skip
        item = f"I{rng.randrange(ITEMS)}"
        if kind == "purchase":
            body["items"] = [{"item_id": item, "qty": rng.randrange(1, 4), "price": 2.5}]
        else:
            body["item_id"] = item
        out.append(parse_event(body))
    return out


def config(prefix: str) -> EngineConfig:
    return replace(EngineConfig(), key_prefix=prefix)


def main(argv: list[str]) -> int:
    mode, url, prefix = argv[0], argv[1], argv[2]
    client = connect(url)  # a cluster URL gives a RedisCluster client
    engine = build_engine(client, config(prefix))
    if mode == "ingest":
        trial, batches = int(argv[3]), int(argv[4])
        work = [events_of(trial, b) for b in range(batches)]
        print("ready", flush=True)
        for events in work:
            engine.ingestor.ingest(events)
        print("done", flush=True)
        return 0
    if mode == "work":
        worker = engine.worker(count=100)
        worker.lease_ms = int(argv[3])
        print("ready", flush=True)
        worker.run(threading.Event(), idle_s=0.01)
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
