"""Memory is bounded by design: every key has a TTL, a cap or a fixed size.

A heavy workload (one shopper with thousands of events, many items) must leave behind only
keys that (a) expire, or (b) are fixed-size sketches, or (c) are capped, and the caps hold.
"""

from __future__ import annotations

import time
from dataclasses import replace

import redis

from app.core.events import parse_event
from app.core.settings import EngineConfig
from app.engine import build_engine
from app.features.online import PackedState, state_key
from app.features.spec import load_feature_set
from app.redis.calls import BLOCK_LISTS

FIXED_SIZE_TYPES = {b"TopK-TYPE", b"CMSk-TYPE"}


def _workload(now: int) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    kinds = ["view", "view", "click", "add_to_cart", "remove_from_cart", "purchase", "search"]
    for i in range(3000):
        etype = kinds[i % len(kinds)]
        body: dict[str, object] = {
            "event_id": f"w{i}",
            "type": etype,
            "user_id": "heavy" if i % 3 else f"u{i}",
            "session_id": f"s{i // 500}",
            "ts": now - 3_000_000 + i * 1000,
            "props": {"category": f"c{i % 9}", "price": float(i % 40)},
        }
        if etype == "purchase":
            body["items"] = [
                {"item_id": f"I{(i + j) % 300}", "qty": 1 + j, "price": 2.0} for j in range(3)
            ]
        elif etype == "search":
            body["props"] = {"query": f"query {i % 50}"}
        else:
            body["item_id"] = f"I{i % 300}"
        events.append(body)
    return events


def test_every_key_is_bounded(client: redis.Redis, cfg: EngineConfig) -> None:
    small = replace(
        cfg,
        log_maxlen=500,
        recent_cap=10,
        cart_cap=10,
        searches_cap=5,
        dedup_cap=200,
        co_cap=5,
        bloom_capacity=10,
    )
    keys = small.keys()
    now = int(time.time() * 1000)
    events = [parse_event(e, now_ms=now) for e in _workload(now)]
    engine = build_engine(client, small)
    for start in range(0, len(events), 250):
        engine.ingestor.ingest(events[start : start + 250])
        engine.drain()
    # What the workers leave: marks per (kind, partition), leases with a TTL, one layout hash.
    marks_max = len(BLOCK_LISTS) * small.partitions

    seen_types: set[str] = set()
    for raw_key in client.scan_iter(match=small.key_prefix + "*", count=1000):
        key = raw_key.decode()
        kind = client.type(key)
        ttl = client.ttl(key)
        if kind in FIXED_SIZE_TYPES:
            seen_types.add(kind.decode())
            continue
        if key in keys.logs:
            # MAXLEN ~ trims whole stream nodes (100 entries each): allow one node of slack.
            assert client.xlen(key) <= small.log_maxlen + 100
            continue
        if key in keys.watermarks:
            assert client.strlen(key) <= 20
            continue
        if key.endswith(":applied"):
            assert client.hlen(key) <= marks_max
            continue
        if key == keys.layout:
            assert client.hlen(key) == 3
            continue
        if kind == b"TSDB-TYPE":
            # Per-item series are bounded by their retention (minute: 8 d, hourly: 400 d).
            info = client.execute_command("TS.INFO", key)
            assert 0 < info[b"retentionTime"] <= small.hour_retention_ms, key
            seen_types.add(kind.decode())
            continue
        assert ttl > 0, f"{key} ({kind!r}) has no TTL"
        if key.endswith(":co:v") or key.endswith(":co:b"):
            assert client.zcard(key) <= small.co_cap
        seen_types.add(kind.decode())
    assert {"ReJSON-RL", "zset", "MBbloom--", "TSDB-TYPE", "TopK-TYPE", "CMSk-TYPE"} <= seen_types

    heavy = client.json().get(keys.user("heavy", "session"))
    # Stored maps: the newest cap entries after each trim, at most cap - 1 more in between.
    assert len(heavy["recent"]) < 2 * small.recent_cap
    assert len(heavy["purchased"]) < 2 * small.recent_cap
    assert len(heavy["searches"]) < 2 * small.searches_cap
    assert client.zcard(keys.user("heavy", "dedup")) <= small.dedup_cap
    assert len(heavy["cart"]) <= small.cart_cap
    # Bytes per heavy user depend on the caps, not on the 2,000 events it sent: the dedup set
    # costs ~100-130 B per remembered id (skiplist + dict), everything else a few KB.
    # The session: ~7.4 KB with each map at its cap, ~180 B per entry above it; where the
    # last call's events fall between two trims (calls of bounded work, ack_work_per_call) adds at
    # most cap - 1 entries to recent, purchased and searches (22 here): < 12 KB.
    usage = {k: client.memory_usage(k, samples=0) or 0 for k in keys.user_all("heavy")}
    assert usage[keys.user("heavy", "session")] < 12_000, usage
    assert usage[keys.user("heavy", "dedup")] < 160 * small.dedup_cap, usage
    assert sum(usage.values()) < 12_000 + 160 * small.dedup_cap + 3_000, usage
    # The seen filter scales (x2) up to 15x its first capacity, then records nothing more,
    # however many items the user touched (300 here).
    info = client.execute_command("BF.INFO", keys.user("heavy", "seen"))
    assert info[b"Number of filters"] == 4, info
    assert info[b"Number of items inserted"] <= 15 * small.bloom_capacity, info


def test_feature_states_are_bounded(client: redis.Redis, cfg: EngineConfig) -> None:
    """The same heavy workload through the feature hook: every packed feature state has its
    entity type's TTL, at most `max_buckets` buckets and at most `max_state_bytes` bytes, and
    the heavy shopper's 2,000 events over 50 minutes cost a few KB (docs/keys.md)."""
    fs = load_feature_set()
    keys = cfg.keys()
    now = int(time.time() * 1000)
    events = [parse_event(e, now_ms=now) for e in _workload(now)]
    engine = build_engine(client, cfg, features=fs)
    for start in range(0, len(events), 250):
        engine.ingestor.ingest(events[start : start + 250])
        engine.drain()
    kinds: dict[str, int] = {}
    for raw_key in client.scan_iter(match=cfg.key_prefix + "*:fs*", count=1000):
        key = raw_key.decode()
        entity = "item" if ":i:{" in key else "user_category" if ":fsc:" in key else "user"
        kinds[entity] = kinds.get(entity, 0) + 1
        assert 0 < client.ttl(key) <= fs.entity_ttl_s[entity], key
        assert PackedState(client.get(key)).bucket_count() <= fs.max_buckets(entity), key
        assert client.strlen(key) <= fs.max_state_bytes(entity), key
    assert set(kinds) == {"user", "item", "user_category"}
    heavy = state_key(keys, "user", "heavy")
    assert client.memory_usage(heavy, samples=0) < 4_000
