"""Ingestion against the real Redis Stack server: idempotency, atomicity, order, aggregates."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from app.core.errors import BadArgumentError, ValidationError
from app.core.events import parse_event
from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.engine import build_engine
from app.ingest.aggregates import LogBlock, LogReader, block_rounds, ingest_status
from app.ingest.ingestor import Ingestor
from app.ingest.log import log_length
from app.ingest.sessions import session_view
from app.redis import calls

NOW = int(time.time() * 1000)


def ev(event_id: str, etype: str = "view", user: str = "u1", item: str | None = "A",
       ts: int | None = None, session: str = "s1", **extra: Any) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"event_id": event_id, "type": etype, "user_id": user,
                            "session_id": session, "ts": ts if ts is not None else NOW}  # fmt: skip
    if item is not None and etype != "purchase":
        body["item_id"] = item
    body.update(extra)
    return body


def ingest(client: redis.Redis, cfg: EngineConfig, *bodies: dict[str, Any]) -> list[str]:
    """Acknowledge through the engine's path, then let a worker apply the aggregates."""
    engine = build_engine(client, cfg)
    statuses = engine.ingestor.ingest([parse_event(b) for b in bodies]).statuses
    engine.drain()
    return statuses


def session_of(client: redis.Redis, cfg: EngineConfig, user: str = "u1") -> dict[str, Any]:
    """The session as the API shows it (lists newest first, capped)."""
    doc = client.json().get(Keys(cfg.key_prefix).user(user, "session"))
    assert doc is not None
    return session_view(doc, cfg)


def test_duplicate_event_ids_have_no_effect(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    first = ingest(client, cfg, ev("e1", props={"category": "candles", "price": 3.0}),
                   ev("e2", item="B"))  # fmt: skip
    assert first == ["accepted", "accepted"]
    before = {
        "session": client.json().get(keys.user("u1", "session")),
        "aff": client.zrange(keys.user("u1", "aff"), 0, -1, withscores=True),
        "log": log_length(client, keys),
        "ts": client.execute_command("TS.RANGE", keys.item_series("A", "view")[0], "-", "+"),
    }
    again = ingest(client, cfg, ev("e1", props={"category": "candles", "price": 3.0}),
                   ev("e2", item="B"), ev("e2", item="B"))  # fmt: skip
    assert again == ["duplicate", "duplicate", "duplicate"]
    after = {
        "session": client.json().get(keys.user("u1", "session")),
        "aff": client.zrange(keys.user("u1", "aff"), 0, -1, withscores=True),
        "log": log_length(client, keys),
        "ts": client.execute_command("TS.RANGE", keys.item_series("A", "view")[0], "-", "+"),
    }
    assert after == before
    assert before["log"] == 2


def test_duplicate_within_one_batch_counts_once(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    assert ingest(client, cfg, ev("x"), ev("x")) == ["accepted", "duplicate"]
    assert client.json().get(keys.user("u1", "session"), "$.counters.view") == [1]
    assert log_length(client, keys) == 1


def test_rejected_call_writes_nothing(client: redis.Redis, cfg: EngineConfig, keys: Keys) -> None:
    # Python validation rejects first ...
    with pytest.raises(ValidationError) as err:
        parse_event(ev("bad", ts=123))
    assert err.value.field == "ts"
    # ... and the Function itself validates every event before its first write: a batch whose
    # last event is malformed leaves no key behind, not even for the valid events before it.
    good = parse_event(ev("ok1"))
    part = keys.partition("u1")
    key_list, argv = calls.ingest_partition_args(cfg, keys, part, [[good, good]])
    # The second event's ts: before log_maxlen, 2 x (user, payload) and the feature count.
    argv[-13] = "not-a-number"
    with pytest.raises(redis.ResponseError, match="ERR_BADARG ts must be a number"):
        client.fcall("ingest_partition", len(key_list), *key_list, *argv)
    assert client.keys(cfg.key_prefix + "*") == []


def test_function_errors_map_to_typed_python_errors(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    part = keys.partition("u1")
    key_list, argv = calls.ingest_partition_args(cfg, keys, part, [[parse_event(ev("t1"))]])
    argv[14] = 2  # claims two groups but passes one group's keys
    from app.core.errors import KeyLayoutError, from_redis_error

    with pytest.raises(redis.ResponseError) as err:
        client.fcall("ingest_partition", len(key_list), *key_list, *argv)
    assert isinstance(from_redis_error(err.value), KeyLayoutError)
    argv[14] = 1
    argv[16 + 1] = "teleport"  # unknown event type
    with pytest.raises(redis.ResponseError) as err:
        client.fcall("ingest_partition", len(key_list), *key_list, *argv)
    assert isinstance(from_redis_error(err.value), BadArgumentError)
    assert client.keys(cfg.key_prefix + "*") == []


def test_out_of_order_events_keep_recent_newest_first(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    ingest(client, cfg, ev("o3", item="C", ts=NOW - 1000))
    ingest(client, cfg, ev("o1", item="A", ts=NOW - 3000), ev("o4", item="D", ts=NOW))
    ingest(client, cfg, ev("o2", item="B", ts=NOW - 2000))
    # A late, older view of D must not move D back in time.
    ingest(client, cfg, ev("o0", item="D", ts=NOW - 5000))
    session = session_of(client, cfg)
    assert [r["item"] for r in session["recent"]] == ["D", "C", "B", "A"]
    assert [r["ts"] for r in session["recent"]] == [NOW, NOW - 1000, NOW - 2000, NOW - 3000]
    assert session["counters"]["view"] == 5
    assert session["last_ts"] == NOW


def test_recent_items_are_capped(client: redis.Redis, cfg: EngineConfig, keys: Keys) -> None:
    bodies = [ev(f"c{i}", item=f"I{i}", ts=NOW - 100_000 + i) for i in range(cfg.recent_cap + 15)]
    ingest(client, cfg, *bodies)
    recent = session_of(client, cfg)["recent"]
    assert len(recent) == cfg.recent_cap
    assert recent[0]["item"] == f"I{cfg.recent_cap + 14}"
    assert [r["item"] for r in recent] == [f"I{i}" for i in range(cfg.recent_cap + 14, 14, -1)]
    # Stored: the newest cap entries after each trim, at most cap - 1 more in between.
    stored = client.json().get(keys.user("u1", "session"), "$.recent")[0]
    assert cfg.recent_cap <= len(stored) < 2 * cfg.recent_cap


def test_cart_and_purchase_flow(client: redis.Redis, cfg: EngineConfig, keys: Keys) -> None:
    ingest(client, cfg,
           ev("a1", "add_to_cart", item="A", qty=2, ts=NOW - 300, props={"price": 2.5}),
           ev("a2", "add_to_cart", item="B", ts=NOW - 200),
           ev("r1", "remove_from_cart", item="A", qty=1, ts=NOW - 150),
           ev("p1", "purchase", ts=NOW - 100, items=[
               {"item_id": "B", "qty": 1, "price": 4.0}, {"item_id": "C", "qty": 3, "price": 1.0}
           ]))  # fmt: skip
    session = session_of(client, cfg)
    assert session["cart"] == {"A": {"qty": 1, "price": 2.5, "ts": NOW - 300}}
    assert {p["item"] for p in session["purchased"]} == {"B", "C"}
    # Co-bought within the purchase, co-viewed (cart adds count as interest) before it.
    assert client.zscore(keys.co("B", "b"), "C") == 1.0
    assert client.zscore(keys.co("C", "b"), "B") == 1.0
    assert client.zscore(keys.co("A", "v"), "B") == 1.0
    # Purchases count units in the item series and trending.
    raw, hourly = keys.item_series("C", "purchase")
    assert sum(float(v) for _, v in client.execute_command("TS.RANGE", raw, "-", "+")) == 3.0
    info = client.execute_command("TS.INFO", raw)  # RESP3: a map
    assert info[b"rules"] == {hourly.encode(): [3_600_000, b"SUM", 0]}
    assert client.execute_command("CMS.QUERY", keys.cms(keys.shard("C"), "purchase"), "C") == [3]


def test_new_session_resets_but_keeps_cart(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    ingest(client, cfg, ev("n1", "add_to_cart", item="A", ts=NOW - 10_000),
           ev("n2", item="B", ts=NOW - 9_000))  # fmt: skip
    ingest(client, cfg, ev("n3", item="C", ts=NOW, session="s2"))
    session = session_of(client, cfg)
    assert session["session_id"] == "s2"
    assert [r["item"] for r in session["recent"]] == ["C"]
    assert "A" in session["cart"]
    # A late event of the old session is accepted but leaves the new session alone.
    assert ingest(client, cfg, ev("n0", item="Z", ts=NOW - 20_000, session="s1")) == ["accepted"]
    assert [r["item"] for r in session_of(client, cfg)["recent"]] == ["C"]


def test_search_events_feed_session_and_trending(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    ingest(client, cfg, *[ev(f"s{i}", "search", item=None, ts=NOW - i,
                             props={"query": "  Heart  Lantern "}) for i in range(3)])  # fmt: skip
    session = session_of(client, cfg)
    assert session["searches"][0]["q"] == "Heart  Lantern"
    _, items = calls.trending(client, cfg, keys, "search", 5)
    assert items[0].item_id == "heart lantern" and items[0].count == 3


def test_ttls_are_set_on_every_user_key(client: redis.Redis, cfg: EngineConfig, keys: Keys) -> None:
    ingest(client, cfg, ev("t1", props={"category": "candles", "price": 3.0}))
    ttl = {part: client.ttl(keys.user("u1", part)) for part in ("session", "dedup", "aff", "seen")}
    assert 0 < ttl["session"] <= cfg.session_ttl_s
    assert 0 < ttl["dedup"] <= cfg.dedup_window_ms // 1000 + 600  # + maintenance interval
    assert 0 < ttl["aff"] <= cfg.user_ttl_s
    assert 0 < ttl["seen"] <= cfg.user_ttl_s


def test_session_ttl_expires_for_real(client: redis.Redis, cfg: EngineConfig, keys: Keys) -> None:
    from dataclasses import replace

    short = replace(cfg, session_ttl_s=1)
    ingest(client, short, ev("x1"))
    assert client.exists(keys.user("u1", "session")) == 1
    time.sleep(2.1)
    assert client.exists(keys.user("u1", "session")) == 0
    assert client.exists(keys.user("u1", "dedup")) == 1  # the dedup window outlives the session


def test_dedup_window_is_bounded_by_count(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    from dataclasses import replace

    small = replace(cfg, dedup_cap=5)
    ingest(client, small, *[ev(f"d{i}", item=f"I{i}", ts=NOW - 1000 + i) for i in range(12)])
    assert client.zcard(keys.user("u1", "dedup")) == 5


def test_seen_filter_and_affinity(client: redis.Redis, cfg: EngineConfig, keys: Keys) -> None:
    ingest(
        client,
        cfg,
        ev("f1", item="A", props={"category": "candles", "price": 3.0}),
        ev("f2", "add_to_cart", item="B", props={"category": "kitchen", "price": 12.0}),
    )
    seen = keys.user("u1", "seen")
    assert client.execute_command("BF.MEXISTS", seen, "A", "B") == [1, 1]
    prof = calls.user_profile(client, cfg, keys, "u1")
    aff = dict(prof.affinities)
    # add_to_cart weighs 4, view 1; both "now", so decay is ~1.
    assert aff["cat:kitchen"] == pytest.approx(4.0, rel=1e-3)
    assert aff["cat:candles"] == pytest.approx(1.0, rel=1e-3)
    assert aff["price:10-25"] == pytest.approx(4.0, rel=1e-3)
    assert prof.affinities[0][0] in ("cat:kitchen", "price:10-25")


def test_trending_follows_the_watermark(client: redis.Redis, cfg: EngineConfig, keys: Keys) -> None:
    hour = 3_600_000
    old = [ev(f"old{i}", item="OLD", user=f"u{i}", ts=NOW - 6 * hour) for i in range(8)]
    new = [ev(f"new{i}", item="NEW", user=f"v{i}", ts=NOW - 60_000) for i in range(3)]
    ingest(client, cfg, *old, *new)
    watermark, items = calls.trending(client, cfg, keys, "view", 2)
    assert watermark == NOW - 60_000
    # 8 views 6 h ago decay by 2^-3 (2 h half-life) -> ~1 < 3 fresh views.
    assert [it.item_id for it in items] == ["NEW", "OLD"]
    assert items[1].count == 8 and items[1].score < items[0].score


def test_many_users_calls_of_bounded_size_per_partition(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    bodies = [
        ev(f"m{i}", user=f"user{i % 150}", item=f"I{i % 40}", ts=NOW - 1000 + i) for i in range(600)
    ]
    events = [parse_event(b) for b in bodies]
    ingestor = Ingestor(client, cfg)
    planned = ingestor.partition_calls(events)
    # Per partition as few calls as the budget allows, every key of a call in that
    # partition's slot, and each shopper's events in input order across its calls.
    budget, shopper = cfg.ack_work_per_call, cfg.ack_shopper_work
    seen: dict[str, list[int]] = {}
    for order, (key_list, _argv) in planned:
        shoppers = {events[i].identity for i in order}
        assert len(order) >= 1 and len(order) + shopper * len(shoppers) <= budget
        assert len({key_slot(k.encode()) for k in key_list}) == 1
        for i in order:
            seen.setdefault(events[i].identity, []).append(i)
    assert all(idx == sorted(idx) for idx in seen.values())
    assert sorted(i for idx in seen.values() for i in idx) == list(range(600))
    first = ingestor.ingest(events[:300])
    assert first.accepted == 300
    second = ingestor.ingest(events)
    assert second.statuses == ["duplicate"] * 300 + ["accepted"] * 300
    assert log_length(client, keys) == 600
    total = sum(client.json().get(keys.user(f"user{u}", "session"), "$.counters.view")[0]
                for u in range(150))  # fmt: skip
    assert total == 600


def test_a_shopper_cut_across_calls_is_deduplicated_across_them(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    """One shopper's batch longer than a call: repeated ids in later calls are duplicates."""
    small = replace(cfg, ack_work_per_call=5, ack_shopper_work=2)
    bodies = [ev(f"d{i % 4}", user="cut", item=f"I{i}", ts=NOW - 1000 + i) for i in range(10)]
    ingestor = Ingestor(client, small)
    planned = ingestor.partition_calls([parse_event(b) for b in bodies])
    assert [len(order) for order, _args in planned] == [3, 3, 3, 1]
    report = ingestor.ingest([parse_event(b) for b in bodies])
    assert report.statuses == ["accepted"] * 4 + ["duplicate"] * 6
    assert log_length(client, keys) == 4
    views = client.json().get(keys.user("cut", "session"), "$.counters.view")[0]
    assert views == 4


def test_an_order_costs_one_unit_per_product_in_the_call_budget(cfg: EngineConfig) -> None:
    """Each product line updates the session, affinities, pairs and features: an order of
    many products must not share a call with as many other events as a one-line event."""
    lines = [{"item_id": f"P{i}", "qty": 1, "price": 2.0} for i in range(8)]
    bodies = [ev("o1", "purchase", user="buyer", items=lines, ts=NOW - 100)] + [
        ev(f"v{i}", user="buyer", item=f"I{i}", ts=NOW - 99 + i) for i in range(8)
    ]
    events = [parse_event(b) for b in bodies]
    planned = Ingestor(redis.Redis(), cfg).partition_calls(events)  # pure: no network
    budget, shopper = cfg.ack_work_per_call, cfg.ack_shopper_work
    for order, _args in planned:
        work = sum(max(1, len(events[i].lines)) for i in order) + shopper
        assert work <= budget
    room = budget - shopper - 8  # views beside the order in the first call
    assert [len(order) for order, _args in planned] == [1 + room, 8 - room]


def test_out_of_order_batch_older_than_series_retention(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    """Events of several users in one batch, spanning more than the raw series retention."""
    day = 86_400_000
    t0 = NOW - 30 * day
    bodies = [
        ev("r1", "purchase", user="u1", ts=t0, items=[{"item_id": "Y", "qty": 1, "price": 1.0}]),
        ev(
            "r2",
            "purchase",
            user="u2",
            ts=t0 + day,
            items=[{"item_id": "X", "qty": 1, "price": 1.0}],
        ),
        ev(
            "r3",
            "purchase",
            user="u1",
            ts=t0 + 12 * day,
            items=[{"item_id": "X", "qty": 2, "price": 1.0}],
        ),
    ]
    assert ingest(client, cfg, *bodies) == ["accepted"] * 3
    assert log_length(client, keys) == 3
    raw, hourly = keys.item_series("X", "purchase")

    def values(key: str) -> list[float]:
        return [float(v) for _, v in client.execute_command("TS.RANGE", key, "-", "+")]

    # The minute series keeps 8 days back from its newest sample; the hourly sums keep both.
    assert values(raw) == [2.0]
    assert values(hourly) == [1.0]  # the newest hour is still open (compaction emits on close)
    # A sample older than the retention (counted back from the newest) is dropped, not fatal.
    late = ev(
        "r4",
        "purchase",
        user="u3",
        ts=t0 - 20 * day,
        items=[{"item_id": "X", "qty": 5, "price": 1.0}],
    )
    assert ingest(client, cfg, late) == ["accepted"]
    assert log_length(client, keys) == 4
    assert values(raw) == [2.0]


def test_equal_times_keep_input_order(client: redis.Redis, cfg: EngineConfig, keys: Keys) -> None:
    lines = [
        ev(f"q{i}", "purchase", ts=NOW, items=[{"item_id": f"P{i}", "qty": 1, "price": 1.0}])
        for i in range(12)
    ]
    ingest(client, cfg, *lines)
    purchased = session_of(client, cfg)["purchased"]
    # Newest first; equal times: the later line in the input counts as newer.
    assert [p["item"] for p in purchased] == [f"P{i}" for i in range(11, -1, -1)]


def test_stale_trending_buckets_are_dropped(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    hour = 3_600_000
    start = NOW - 72 * hour
    ingest(client, cfg, ev("h0", item="A", ts=start))
    old_bucket = keys.trend(keys.shard("A"), "view", start)
    assert client.exists(old_bucket) == 1
    for h in range(1, 30):  # the watermark advances hour by hour, as in a replay
        ingest(client, cfg, ev(f"h{h}", item="A", user=f"x{h}", ts=start + h * hour))
    assert client.exists(old_bucket) == 0
    live = [k for k in client.scan_iter(match=keys.agg(keys.shard("A"), "trend:view:*"))]
    assert len(live) <= cfg.trend_window_h + 1
    _, items = calls.trending(client, cfg, keys, "view", 1)
    assert items[0].item_id == "A"


def test_identify_across_partitions_is_retry_safe(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    """The anonymous id and the user hash to different partitions; a merge interrupted after
    its write to the user (before the anonymous keys are deleted) is completed by a retry and
    adds nothing twice."""
    from app.core.events import identity_for
    from app.ingest import users

    home = keys.partition("buyer")
    anon_id = next(
        f"a{i}" for i in range(100) if keys.partition(identity_for(None, f"a{i}")) != home
    )
    anon = identity_for(None, anon_id)
    body = ev("an1", user="x", item="A", props={"category": "candles", "price": 3.0})
    del body["user_id"]
    body["anonymous_id"] = anon_id
    assert (
        ingest(client, cfg, body, {**body, "event_id": "an2", "item_id": "B"}) == ["accepted"] * 2
    )
    # The crash: identify_user ran, the anonymous keys were not deleted yet.
    exported = calls.fcall_ro(client, "export_user", calls.export_user_args(keys, anon))
    calls.fcall(client, "identify_user",
                calls.identify_user_args(cfg, keys, "buyer", anon, {}, exported))  # fmt: skip
    assert client.exists(keys.user(anon, "session")) == 1
    retry = users.identify(client, cfg, "buyer", anon_id, {})
    assert retry.status == "already_merged"
    assert client.exists(keys.user(anon, "session")) == 0
    session = client.json().get(keys.user("buyer", "session"))
    assert session["counters"] == {"view": 2}  # merged once, not twice
    aff = dict(calls.user_profile(client, cfg, keys, "buyer").affinities)
    assert aff["cat:candles"] == pytest.approx(2.0, rel=1e-3)


def test_a_lagging_log_reader_raises_an_alert_naming_its_fix(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    """Besides the aggregate workers, another consumer group of the partition logs (the list
    workers' `recs`) gets the same alert once it trails a log by half the log cap; a group that
    does not exist (no such worker deployed) gets none."""
    small = replace(cfg, log_maxlen=100)  # alert past 50 entries behind
    readers = [LogReader("lists", "list workers", "start more list workers")]
    ingest(client, small, *[ev(f"lag{i}", user="laggard") for i in range(60)])
    quiet = ingest_status(client, small, readers)
    assert quiet.other_lags["lists"].partitions == 0
    assert not any("list workers" in a for a in quiet.alerts)
    log = keys.log_of(keys.partition("laggard"))
    client.xgroup_create(log, "lists", id="0")  # a reader that has read nothing yet
    status = ingest_status(client, small, readers)
    assert status.other_lags["lists"].max_lag == 60
    (alert,) = [a for a in status.alerts if a.startswith("list workers")]
    assert "by 60 entries (limit 50" in alert and "start more list workers" in alert


def test_block_rounds_bound_the_events_per_call_and_keep_log_order() -> None:
    def block(partition: int, n: int, seq: int) -> LogBlock:
        events = [parse_event(ev(f"b{partition}-{seq}-{i}")) for i in range(n)]
        return LogBlock(partition, f"{seq}-0", f"{seq}-9", events, [], [0] * n, [b"x"] * n)

    blocks = [block(1, 20, 1), block(1, 20, 2), block(2, 5, 1), block(3, 30, 1), block(1, 3, 3)]
    rounds = block_rounds(blocks, 40)
    for rnd in rounds:
        partitions = [b.partition for b in rnd]
        assert len(partitions) == len(set(partitions))  # a call takes a partition once
        assert sum(len(b.events) for b in rnd) <= 40 or len(rnd) == 1
    order = [(b.partition, b.first_id) for rnd in rounds for b in rnd]
    for p in (1, 2, 3):
        mine = [first for part, first in order if part == p]
        assert mine == sorted(mine)
    assert sorted(order) == sorted((b.partition, b.first_id) for b in blocks)
    big, tiny = block(4, 99, 1), block(5, 1, 1)  # larger than the budget: a round alone
    assert block_rounds([big, tiny], 10) == [[big], [tiny]]


def test_workers_cut_reads_into_small_calls_and_apply_everything_once(
    client: redis.Redis, cfg: EngineConfig, keys: Keys
) -> None:
    """Small blocks and rounds: the same aggregates as one call per slot would give."""
    small = replace(cfg, agg_entries_per_block=3, agg_events_per_call=7)
    engine = build_engine(client, small)
    bodies = [ev(f"w{i}", user=f"u{i % 5}", item=f"I{i % 4}", ts=NOW - 1000 + i) for i in range(60)]
    engine.ingestor.ingest([parse_event(b) for b in bodies])
    worker = engine.worker()
    assert worker.drain() == 60
    assert worker.stats.calls > 8  # many small calls, not one per slot
    for item in ("I0", "I1", "I2", "I3"):
        key = keys.cms(keys.shard(item), "view")
        assert client.execute_command("CMS.QUERY", key, item) == [15]
    assert worker.drain() == 0
