"""The online feature path against the real server: semantics, errors, trimming, memory bounds."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import msgpack
import pytest
import redis
from redis.crc import key_slot

from app.core.errors import BadArgumentError, KeyLayoutError
from app.core.events import Event, parse_event
from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.engine import build_engine
from app.features.offline import OfflineStore, compare_rows
from app.features.online import (
    ENTITY_COST,
    ack_features,
    features_get_args,
    get_features,
    get_features_fcall,
    ingest_calls,
    state_key,
)
from app.features.spec import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    FeatureSet,
    compile_definitions,
    load_feature_set,
)
from app.ingest.ingestor import Ingestor
from app.redis.calls import fcall, fcall_ro

T0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS  # 2023-11-14 00:00 UTC
FAR = 2_000_000_000_000


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return load_feature_set()


def ev(eid: str, etype: str, ts: int, user: str = "u1", item: str = "A", **kw: Any) -> Event:
    body: dict[str, Any] = {"event_id": eid, "type": etype, "user_id": user, "ts": ts,
                            "session_id": kw.pop("session", "s1")}  # fmt: skip
    if etype == "purchase":
        body["items"] = kw.pop(
            "items", [{"item_id": item, "qty": 1, "price": 2.5, "category": "c"}]
        )
    elif etype == "search":
        body["props"] = {"query": "mug"}
    else:
        body["item_id"] = item
        body["props"] = {"category": kw.pop("category", "c"), "price": 2.5}
    return parse_event({**body, **kw}, now_ms=FAR)


def ingest(client: redis.Redis, fs: FeatureSet, keys: Keys, events: Sequence[Event]) -> list[Any]:
    return [fcall(client, name, args) for name, args in ingest_calls(fs, keys, events)]


def buckets(client: redis.Redis, fs: FeatureSet, key: str) -> dict[str, tuple[int, list[int]]]:
    """The packed state's slots: slot id -> (horizon, bucket indices, ascending)."""
    fmt, newest, slots = msgpack.unpackb(client.get(key), raw=True, strict_map_key=False)
    assert fmt == 1
    out = {}
    for sid, (h, ages, _values) in (slots or {}).items():
        assert ages == sorted(ages)
        base = newest // fs.slots[sid.decode()].bucket_ms
        out[sid.decode()] = (h, sorted(base - a for a in ages))
    return out


def value(client: redis.Redis, fs: FeatureSet, keys: Keys, name: str, eid: str, t: int) -> Any:
    f = fs.features[name]
    (row,) = get_features(client, fs, keys, f.entity, [eid], [name], as_of=t)
    return row.values[name]


def test_closed_bucket_semantics_at_the_edges(
    client: redis.Redis, keys: Keys, fs: FeatureSet
) -> None:
    """A view at 10:00:30 counts in "1 h at 1 min" from 10:01:00 until 11:00:59.999."""
    t = T0 + 10 * HOUR_MS + 30_000
    ingest(client, fs, keys, [ev("v1", "view", t)])
    at = [t, T0 + 10 * HOUR_MS + MINUTE_MS - 1, T0 + 10 * HOUR_MS + MINUTE_MS,
          T0 + 11 * HOUR_MS + MINUTE_MS - 1, T0 + 11 * HOUR_MS + MINUTE_MS]  # fmt: skip
    assert [value(client, fs, keys, "user_views_1h", "u1", x) for x in at] == [0, 0, 1, 1, 0]
    # The same event in the hourly 7 d window: from 11:00 for seven days.
    assert value(client, fs, keys, "user_views_7d", "u1", T0 + 11 * HOUR_MS - 1) == 0
    assert value(client, fs, keys, "user_views_7d", "u1", T0 + 11 * HOUR_MS) == 1
    assert value(client, fs, keys, "user_views_7d", "u1", T0 + 7 * DAY_MS + 11 * HOUR_MS - 1) == 1
    assert value(client, fs, keys, "user_views_7d", "u1", T0 + 7 * DAY_MS + 11 * HOUR_MS) == 0


def test_values_of_every_aggregation(client: redis.Redis, keys: Keys, fs: FeatureSet) -> None:
    t = T0 + 9 * HOUR_MS
    events = [
        ev("v1", "view", t, item="A", category="mugs"),
        ev("v2", "view", t + 1000, item="B", category="mugs"),
        ev("v3", "view", t + 2000, item="A", category="mugs"),
        ev("c1", "add_to_cart", t + 3000, item="A"),
        ev("k1", "click", t + 3500, item="B"),
        ev("s1", "search", t + 3600),
        ev("p1", "purchase", t + 4000, items=[
            {"item_id": "A", "qty": 2, "price": 2.55, "category": "mugs"},
            {"item_id": "C", "qty": 1, "price": 10.0, "category": "lamps"}]),
        ev("p2", "purchase", t + 5 * MINUTE_MS, items=[
            {"item_id": "B", "qty": 3, "price": 0.85, "category": "mugs"}]),
    ]  # fmt: skip
    ingest(client, fs, keys, events)
    as_of = t + 2 * HOUR_MS + 123
    (row,) = get_features(client, fs, keys, "user", ["u1"], as_of=as_of)
    v = row.values
    assert row.as_of_ms == as_of
    assert (v["user_views_1h"], v["user_views_24h"], v["user_views_7d"]) == (0, 3, 3)
    assert (v["user_carts_24h"], v["user_clicks_24h"], v["user_searches_24h"]) == (1, 1, 1)
    assert v["user_purchases_24h"] == 2 and v["user_purchases_today"] == 2
    assert v["user_spend_30d"] == 15.1 + 2.55
    assert v["user_avg_basket_value_30d"] == (151_000 + 25_500) / 2 / 10_000
    assert v["user_units_30d"] == 6
    assert v["user_last_basket_value"] == 2.55
    assert v["user_purchase_recency_s"] == (as_of - (t + 5 * MINUTE_MS)) / 1000
    assert v["user_distinct_items_viewed_7d"] == 2.0
    assert v["user_distinct_categories_bought_30d"] == 2.0
    expected_activity = sum(
        w * 2 ** (-(as_of - ts) / (6 * HOUR_MS))
        for w, ts in [(1, t), (1, t + 1000), (1, t + 2000), (4, t + 3000), (2, t + 3500),
                      (8, t + 4000), (8, t + 5 * MINUTE_MS)]
    )  # fmt: skip
    assert math.isclose(v["user_activity_score"], expected_activity, rel_tol=1e-12)
    (item,) = get_features(client, fs, keys, "item", ["A"], as_of=as_of)
    assert item.values["item_views_24h"] == 2 and item.values["item_purchases_7d"] == 1
    assert item.values["item_units_sold_7d"] == 2
    assert item.values["item_view_to_purchase_rate_7d"] == 0.5
    (pair,) = get_features(client, fs, keys, "user_category", ["u1~mugs"], as_of=as_of)
    assert pair.values["user_category_views_7d"] == 3
    assert pair.values["user_category_purchases_30d"] == 2
    # Undefined values are null, not zero.
    (other,) = get_features(client, fs, keys, "user", ["nobody"], as_of=as_of)
    assert other.values["user_avg_basket_value_30d"] is None
    assert other.values["user_purchase_recency_s"] is None
    assert other.values["user_views_7d"] == 0
    # Everything matches the offline computation from the same events.
    offline = OfflineStore(fs, events)
    for entity, eid in [("user", "u1"), ("item", "A"), ("item", "C"), ("user_category", "u1~mugs")]:
        (online,) = get_features(client, fs, keys, entity, [eid], as_of=as_of)
        assert compare_rows(fs, eid, as_of, online.values, offline.row(entity, eid, as_of)) == []


def test_calendar_day_resets_at_midnight_utc(
    client: redis.Redis, keys: Keys, fs: FeatureSet
) -> None:
    ingest(client, fs, keys, [ev("p1", "purchase", T0 + 23 * HOUR_MS)])
    assert value(client, fs, keys, "user_purchases_today", "u1", T0 + DAY_MS - 1) == 1
    assert value(client, fs, keys, "user_purchases_today", "u1", T0 + DAY_MS) == 0


def test_as_of_latest_and_now(client: redis.Redis, keys: Keys, fs: FeatureSet) -> None:
    ingest(client, fs, keys, [ev("v1", "view", T0), ev("v2", "view", T0 + 5 * MINUTE_MS)])
    (latest,) = get_features(client, fs, keys, "user", ["u1"], ["user_views_1h"], as_of="latest")
    assert latest.as_of_ms == T0 + 5 * MINUTE_MS + 1
    assert latest.values == {"user_views_1h": 1}  # the newest minute is still open
    (now,) = get_features(client, fs, keys, "user", ["u1"], ["user_views_1h"])
    server_ms = int(client.time()[0]) * 1000
    assert abs(now.as_of_ms - server_ms) < 5_000 and now.values == {"user_views_1h": 0}


def test_many_entities_in_one_read_keep_their_order(
    client: redis.Redis, keys: Keys, fs: FeatureSet
) -> None:
    events = [ev(f"v{i}", "view", T0 + i, user=f"u{i % 7}") for i in range(70)]
    ingest(client, fs, keys, events)
    ids = [f"u{i}" for i in (3, 0, 6, 9)]
    rows = get_features(client, fs, keys, "user", ids, ["user_views_24h"], as_of=T0 + HOUR_MS)
    assert [r.entity_id for r in rows] == ids
    assert [r.values["user_views_24h"] for r in rows] == [10, 10, 10, 0]


def test_distinct_approx_is_within_its_documented_error(
    client: redis.Redis, keys: Keys, fs: FeatureSet
) -> None:
    """3,000 distinct items viewed: the KMV estimate (k=64) is within 4 standard errors of the
    truth, and identical online and offline."""
    events = [ev(f"v{i}", "view", T0 + i * 20_000, item=f"I{i}") for i in range(3000)]
    for start in range(0, len(events), 500):
        ingest(client, fs, keys, events[start : start + 500])
    as_of = T0 + 2 * DAY_MS
    online = value(client, fs, keys, "user_distinct_items_viewed_7d", "u1", as_of)
    offline = OfflineStore(fs, events).value("user_distinct_items_viewed_7d", "u1", as_of)
    assert online == offline
    k = fs.features["user_distinct_items_viewed_7d"].k
    assert abs(online - 3000) / 3000 < 4 / math.sqrt(k - 2)
    assert online != 3000  # an estimate (beyond k distinct), not a count


def test_trimming_keeps_memory_bounded_and_old_reads_null(
    client: redis.Redis, keys: Keys, fs: FeatureSet
) -> None:
    """A user active every 10 minutes for 20 days: the hash stays under its fixed cap, every
    feature key has a TTL, recent reads are exact and reads beyond the history are null."""
    events = [ev(f"v{i}", "view", T0 + i * 10 * MINUTE_MS) for i in range(20 * 144)]
    for start in range(0, len(events), 400):
        ingest(client, fs, keys, events[start : start + 400])
    key = state_key(keys, "user", "u1")
    held = buckets(client, fs, key)
    for sid, (_h, idx) in held.items():
        slot = fs.slots[sid]
        assert len(idx) <= slot.retention_ms // slot.bucket_ms + 1, sid
        assert idx[0] * slot.bucket_ms >= events[-1].ts - slot.retention_ms, sid
    assert sum(len(idx) for _h, idx in held.values()) <= fs.max_buckets("user")
    assert fs.max_buckets("user") == 9_841  # the figure in docs/features.md
    assert client.strlen(key) < 8_000  # 20 days of a view every 10 minutes
    for k in client.scan_iter(match=keys.prefix + "*"):
        assert client.ttl(k) > 0, k
    newest = events[-1].ts
    offline = OfflineStore(fs, events)
    for t in (newest + 1, newest - fs.history_ms // 2, newest - fs.history_ms + MINUTE_MS):
        (row,) = get_features(client, fs, keys, "user", ["u1"], as_of=t)
        assert compare_rows(fs, "u1", t, row.values, offline.row("user", "u1", t)) == []
    (old,) = get_features(client, fs, keys, "user", ["u1"], as_of=T0 + 3 * DAY_MS)
    assert old.values["user_views_1h"] is None and old.values["user_views_7d"] is None


def test_late_event_older_than_retention_is_not_kept(
    client: redis.Redis, keys: Keys, fs: FeatureSet
) -> None:
    ingest(client, fs, keys, [ev("v1", "view", T0 + 30 * DAY_MS)])
    key = state_key(keys, "user", "u1")
    before = buckets(client, fs, key)
    ingest(client, fs, keys, [ev("late", "view", T0)])  # 30 days late
    after = buckets(client, fs, key)
    view_slots = {
        s.id for s in fs.slots.values() if s.entity == "user" and "view" in dict(s.events)
    }
    assert {sid: idx for sid, (_h, idx) in after.items()} == {
        sid: idx for sid, (_h, idx) in before.items()
    }  # no bucket added
    assert {sid for sid in after if after[sid][0] > before[sid][0]} == view_slots  # horizons
    assert value(client, fs, keys, "user_views_1h", "u1", T0 + HOUR_MS) is None
    assert value(client, fs, keys, "user_views_1h", "u1", T0 + 30 * DAY_MS + HOUR_MS) == 1


def test_late_event_and_trim_in_one_call_keep_the_higher_horizon(
    client: redis.Redis, keys: Keys, fs: FeatureSet
) -> None:
    """Regression (found by the skew test): a call that both skips a late event and trims
    older buckets must keep the higher horizon, or a past read answers 0 instead of null."""
    first = [ev("old", "view", T0)]
    ingest(client, fs, keys, first)
    newest = T0 + 100 * DAY_MS  # past every retention: this call trims the old buckets
    late = newest - 3 * HOUR_MS  # older than newest - retention of the 1-minute slot
    second = [ev("new", "view", newest), ev("late", "view", late)]
    ingest(client, fs, keys, second)
    t = late + 30 * MINUTE_MS
    assert OfflineStore(fs, first + second).value("user_views_1h", "u1", t) == 1
    assert value(client, fs, keys, "user_views_1h", "u1", t) is None  # not 0


def test_spec_change_starts_new_state_and_drops_the_old(client: redis.Redis, keys: Keys) -> None:
    base = {"version": 1, "history": "1h"}
    f = {"name": "n", "entity": "user", "events": ["view"], "agg": "count",
         "window": {"rolling": "1h"}, "bucket": "1m", "ttl": "1d"}  # fmt: skip
    old = compile_definitions({**base, "features": [f]})
    new = compile_definitions({**base, "features": [{**f, "bucket": "5m"}]})
    ingest(client, old, keys, [ev("a", "view", T0)])
    assert value(client, new, keys, "n", "u1", T0 + HOUR_MS) == 0  # new slot: no old buckets
    ingest(client, new, keys, [ev("b", "view", T0 + 3 * HOUR_MS)])  # trims: old slot unknown
    assert set(buckets(client, new, state_key(keys, "user", "u1"))) == set(new.slots)


def test_duplicates_count_once_through_the_ingestor(
    client: redis.Redis, cfg: EngineConfig, keys: Keys, fs: FeatureSet
) -> None:
    engine = build_engine(client, cfg, features=fs)
    batch = [ev("v1", "view", T0), ev("v2", "view", T0 + 1000)]
    assert engine.ingestor.ingest(batch).accepted == 2
    assert engine.ingestor.ingest(batch).duplicates == 2
    engine.drain()
    engine.drain()
    assert value(client, fs, keys, "user_views_1h", "u1", T0 + 5 * MINUTE_MS) == 2
    assert value(client, fs, keys, "item_views_1h", "A", T0 + 5 * MINUTE_MS) == 2


def test_ack_calls_count_each_user_category_state_in_their_budget(
    client: redis.Redis, cfg: EngineConfig, keys: Keys, fs: FeatureSet
) -> None:
    """A shopper's events over many categories write one more feature state per category:
    each costs `ack_state_work`, so such a call carries fewer events (its duration stays
    bounded) and every event is still applied once, in order."""
    cats = [f"cat{i % 8}" for i in range(12)]
    batch = [ev(f"v{i}", "view", T0 + i, category=c) for i, c in enumerate(cats)]
    plain = Ingestor(client, replace(cfg, ack_state_work=0), ack_features=ack_features(fs, keys))
    assert [len(order) for order, _ in plain.partition_calls(batch)] == [12]
    engine = build_engine(client, cfg, features=fs)
    planned = engine.ingestor.partition_calls(batch)
    for order, _args in planned:
        states = {batch[i].lines[0].category for i in order}
        work = len(order) + cfg.ack_shopper_work + cfg.ack_state_work * len(states)
        assert work <= cfg.ack_work_per_call
    assert [i for order, _ in planned for i in order] == list(range(12))
    assert len(planned) > 1
    assert engine.ingestor.ingest(batch).accepted == 12
    assert value(client, fs, keys, "user_views_1h", "u1", T0 + 5 * MINUTE_MS) == 12


def test_cluster_calls_stay_in_one_slot(client: redis.Redis, keys: Keys, fs: FeatureSet) -> None:
    events = [ev(f"p{i}", "purchase", T0 + i, user=f"u{i % 5}", items=[
        {"item_id": f"I{i % 11}", "qty": 1, "price": 1.0, "category": f"c{i % 3}"}])
        for i in range(60)]  # fmt: skip
    calls = ingest_calls(fs, keys, events, cluster=True)
    for name, (key_list, _argv) in calls:
        assert name == "features_ingest"
        assert len({key_slot(k.encode()) for k in key_list}) == 1
    for name, args in calls:
        fcall(client, name, args)
    users = [f"u{i}" for i in range(5)]
    a = get_features(client, fs, keys, "user", users, as_of=T0 + DAY_MS, cluster=True)
    b = get_features(client, fs, keys, "user", users, as_of=T0 + DAY_MS)
    assert a == b and sum(r.values["user_purchases_24h"] or 0 for r in a) == 60


def test_bad_calls_write_nothing(client: redis.Redis, keys: Keys, fs: FeatureSet) -> None:
    key = state_key(keys, "user", "u1")
    fcall(client, "features_ingest", ([key], [fs.spec, 1, 1, "user", 1, "view", T0, "u1", "s", 0]))
    before = client.get(key)
    bad_argvs = [
        [fs.spec, 2, 1, "user", 1, "view", T0 + 1, "u1", "s", 0, 1, "user", 1, "view", "x", "u1",
         "s", 0],  # second group: bad ts
        [fs.spec, 1, 1, "shop", 1, "view", T0, "u1", "s", 0],
        [fs.spec, 1, 1, "user", 1, "browse", T0, "u1", "s", 0],
        ["{}", 1, 1, "user", 1, "view", T0, "u1", "s", 0],
        [fs.spec, 1, 1, "user", 1, "view", T0, "u1", "s", 0, "extra"],
        [fs.spec, 2, 1, "user", 1, "view", T0 + 1, "u1", "s", 0, 1, "user", 1, "view", T0 + 2,
         "u1", "s", 0],  # one key in two groups
    ]  # fmt: skip
    for argv in bad_argvs:
        with pytest.raises(redis.ResponseError, match="ERR_BADARG"):
            client.fcall("features_ingest", 1, key, *argv)
    with pytest.raises(redis.ResponseError, match="ERR_KEYS"):
        client.fcall("features_ingest", 1, key, fs.spec, 1, 2, "user", 0)
    assert client.get(key) == before
    client.set(key, b"not a packed state")
    with pytest.raises(BadArgumentError, match="feature state"):
        fcall(
            client, "features_ingest", ([key], [fs.spec, 1, 1, "user", 1, "view", T0, "u1", "", 0])
        )
    assert client.get(key) == b"not a packed state"


def test_read_errors_are_typed(client: redis.Redis, keys: Keys, fs: FeatureSet) -> None:
    args = features_get_args(fs, keys, "user", ["u1"], ["user_views_1h"], 0)
    with pytest.raises(BadArgumentError, match="unknown feature"):
        fcall_ro(client, "features_get", (args[0], [fs.spec, "0", 1, "nope"]))
    with pytest.raises(BadArgumentError, match="one entity type"):
        fcall_ro(
            client, "features_get", (args[0], [fs.spec, "0", 2, "user_views_1h", "item_views_1h"])
        )
    with pytest.raises(BadArgumentError, match="as_of"):
        fcall_ro(client, "features_get", (args[0], [fs.spec, "yesterday", 1, "user_views_1h"]))
    with pytest.raises(BadArgumentError, match="spec"):
        fcall_ro(client, "features_get", (args[0], ["not json", "0", 1, "user_views_1h"]))
    assert KeyLayoutError.code == "ERR_KEYS"


def test_read_function_is_read_only(client: redis.Redis) -> None:
    flags = {}
    for lib in client.function_list(library="retail"):
        for fn in lib[b"functions"] if isinstance(lib, dict) else lib[5]:
            fn = dict(zip(fn[::2], fn[1::2], strict=True)) if isinstance(fn, list) else fn
            flags[fn[b"name"].decode()] = {f.decode() for f in fn[b"flags"]}
    assert flags["features_get"] == {"no-writes"}
    assert flags["features_ingest"] == set()


def test_python_read_equals_the_function_and_offline(
    client: redis.Redis, keys: Keys, fs: FeatureSet
) -> None:
    """The fast read (packed state, arithmetic in Python) and FCALL_RO features_get give the
    same values, as of many times, including nulls from dropped buckets and every entity type."""
    rng = random.Random(11)
    events = []
    for i in range(900):
        etype = rng.choice(["view", "view", "click", "add_to_cart", "purchase", "search"])
        user = f"u{rng.randrange(6)}"
        ts = T0 + rng.randrange(40 * DAY_MS)
        items = [{"item_id": f"I{rng.randrange(8)}", "qty": rng.randrange(1, 4),
                  "price": rng.choice([0.85, 2.5, 12.75]), "category": f"c{rng.randrange(3)}"}
                 for _ in range(rng.randrange(1, 3))]  # fmt: skip
        if etype == "purchase":
            events.append(ev(f"e{i}", etype, ts, user=user, items=items))
        else:
            events.append(ev(f"e{i}", etype, ts, user=user, item=items[0]["item_id"],
                             category=items[0]["category"]))  # fmt: skip
    events.sort(key=lambda e: e.ts)
    for start in range(0, len(events), 100):
        ingest(client, fs, keys, events[start : start + 100])
    offline = OfflineStore(fs, events)
    newest = events[-1].ts
    ids = {"user": [f"u{i}" for i in range(6)] + ["nobody"],
           "item": [f"I{i}" for i in range(8)],
           "user_category": [f"u{i}~c{j}" for i in range(3) for j in range(3)]}  # fmt: skip
    times: list[Any] = [T0 + rng.randrange(42 * DAY_MS) for _ in range(12)]
    times += [newest + 1, newest - 50 * MINUTE_MS, newest + 2 * HOUR_MS, "latest"]
    compared = nulls = 0
    for entity, eids in ids.items():
        for t in times:
            if t == "latest":  # an entity without state is read as of the server's clock
                eids = [e for e in eids if e != "nobody"]
            fast = get_features(client, fs, keys, entity, eids, as_of=t)
            slow = get_features_fcall(client, fs, keys, entity, eids, as_of=t)
            assert fast == slow, (entity, t)
            for row in fast:
                compared += len(row.values)
                nulls += sum(v is None for v in row.values.values())
                if row.as_of_ms >= newest - fs.history_ms:
                    exact = offline.row(entity, row.entity_id, row.as_of_ms)
                    assert compare_rows(fs, row.entity_id, row.as_of_ms, row.values, exact) == []
    assert compared > 3000 and 0 < nulls < compared


def test_newest_only_slots_keep_few_buckets(
    client: redis.Redis, keys: Keys, fs: FeatureSet
) -> None:
    """recency (90 d) and last (30 d) keep the buckets a read within the history can need,
    not every hourly bucket of their window; recent reads stay exact, older ones are exact or
    null, never wrong."""
    events = [ev(f"p{i}", "purchase", T0 + i * 7 * HOUR_MS) for i in range(200)]  # 58 days
    for start in range(0, len(events), 20):
        ingest(client, fs, keys, events[start : start + 20])
    held = buckets(client, fs, state_key(keys, "user", "u1"))
    for name in ("user_purchase_recency_s", "user_last_basket_value"):
        (sid,) = fs.feature_slots[name]
        assert len(held[sid][1]) <= 2, name
    offline = OfflineStore(fs, events)
    newest = events[-1].ts
    names = ["user_purchase_recency_s", "user_last_basket_value"]
    for t in (newest + 1, newest - 30 * MINUTE_MS, newest + 5 * DAY_MS, newest - 3 * DAY_MS):
        (row,) = get_features(client, fs, keys, "user", ["u1"], names, as_of=t)
        for name in names:
            want = offline.value(name, "u1", t)
            got = row.values[name]
            if t >= newest - fs.history_ms:
                assert got == want, (name, t)
            else:
                assert got is None or got == want, (name, t)


def test_calls_are_cut_by_work_and_split_entities_keep_their_values(
    client: redis.Redis, keys: Keys, fs: FeatureSet
) -> None:
    """Each features_ingest call carries at most the work budget; a shopper with more events
    spans consecutive calls, never twice in one call, and ends with the same values as one
    call taking everything."""
    events = [ev(f"v{i}", "view", T0 + i * MINUTE_MS, user="big", item=f"I{i % 7}")
              for i in range(100)]  # fmt: skip
    events += [ev(f"s{i}", "view", T0 + i, user=f"small{i}") for i in range(10)]
    calls = ingest_calls(fs, keys, events, work_per_call=32)
    for _name, (key_list, argv) in calls:
        assert len(key_list) == len(set(key_list))
        n_groups, pos, work = argv[1], 2, 0
        for _ in range(n_groups):
            n_events = argv[pos + 2]
            work += ENTITY_COST + n_events
            pos += 3
            for _ in range(n_events):
                pos += 5 + 4 * argv[pos + 4]
        assert work <= 32 and pos == len(argv)
    assert len(calls) > 4
    for name, args in calls:
        fcall(client, name, args)
    other = Keys(keys.prefix + "one:")
    for name, args in ingest_calls(fs, other, events, work_per_call=10_000):
        fcall(client, name, args)
    t = T0 + 2 * HOUR_MS
    for entity, eid in (("user", "big"), ("user", "small3"), ("item", "I3")):
        assert get_features(client, fs, keys, entity, [eid], as_of=t) == get_features(
            client, fs, other, entity, [eid], as_of=t
        ), eid
