"""Feature definitions: validation, compilation, slot sharing; Lua/Python parity of pure helpers.

The Lua helpers run in Lua 5.1 (lupa), the same code Redis loads: window bounds, the KMV
estimate and float formatting must agree with the offline Python bit for bit.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from app.core.errors import ValidationError
from app.core.events import parse_event
from app.features.offline import kmv_estimate
from app.features.spec import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    compile_definitions,
    duration_ms,
    duration_text,
    load_feature_set,
    route,
)
from app.redis.library import build_library

BASE: dict[str, Any] = {"version": 1, "history": "1d"}
VIEWS = {"name": "views_1h", "entity": "user", "events": ["view"], "agg": "count",
         "window": {"rolling": "1h"}, "bucket": "1m", "ttl": "3d"}  # fmt: skip


def defs(*features: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {**BASE, **top, "features": list(features)}


def test_shipped_definitions_load_and_cover_the_issue() -> None:
    fs = load_feature_set()
    assert len(fs.names("user")) == 20  # the latency goal reads 20 features of one user
    aggs = {f.agg for f in fs.features.values()}
    assert aggs == {"count", "sum", "mean", "last", "recency", "distinct_approx",
                    "decayed_sum", "ratio"}  # fmt: skip
    assert set(fs.entities()) == {"user", "item", "user_category"}
    assert fs.features["user_views_7d"].granularity() == (
        "rolling 7d at 1h buckets, event time, UTC"
    )
    assert fs.features["user_purchases_today"].granularity() == (
        "calendar day (UTC) at 1m buckets, event time, UTC"
    )
    # Shared state: the hourly purchase count serves purchases_7d and the basket mean.
    assert fs.feature_slots["user_purchases_7d"][0] in fs.feature_slots["user_avg_basket_value_30d"]
    assert len(fs.slots) < sum(len(s) for s in fs.feature_slots.values())
    spec = json.loads(fs.spec)
    assert {f["n"] for f in spec["feats"]} == set(fs.features)


@pytest.mark.parametrize(
    ("raw", "ms"),
    [("90s", 90_000), ("5m", 300_000), ("1h", HOUR_MS), ("7d", 7 * DAY_MS), (" 2h ", 2 * HOUR_MS)],
)
def test_durations(raw: str, ms: int) -> None:
    assert duration_ms(raw, "x") == ms


@pytest.mark.parametrize("raw", ["", "5", "0m", "1w", "1.5h", "-1h", 5, None, "1 h"])
def test_bad_durations(raw: Any) -> None:
    with pytest.raises(ValidationError):
        duration_ms(raw, "x")


def test_duration_text() -> None:
    assert [duration_text(x) for x in (DAY_MS, 2 * DAY_MS, 90 * MINUTE_MS, 30_000)] == [
        "24h", "2d", "90m", "30s",
    ]  # fmt: skip


BAD = [
    ({"agg": "median"}, "views_1h].agg"),
    ({"entity": "shop"}, "views_1h].entity"),
    ({"events": ["browse"]}, "views_1h].events"),
    ({"events": []}, "views_1h].events"),
    ({"window": {"rolling": "90s"}}, "views_1h].window"),  # not whole buckets
    ({"window": {"sliding": "1h"}}, "views_1h].window"),
    ({"window": {"calendar": "month"}}, "views_1h].window.calendar"),
    ({"bucket": "7m"}, "views_1h].bucket"),  # does not divide a day
    ({"bucket": "1m", "window": {"rolling": "30d"}, "ttl": "40d"}, "views_1h].bucket"),  # 43,200
    ({"ttl": "1h"}, "views_1h].ttl"),  # shorter than window + bucket + history
    ({"value": "units"}, "views_1h].value"),  # count takes no value
    ({"colour": "red"}, "views_1h]"),
    ({"name": "Views"}, "features[0].name"),
    ({"entity": "item", "events": ["search"]}, "views_1h].events"),
    ({"agg": "sum"}, "views_1h].value"),
    ({"agg": "sum", "value": "units", "events": ["search"]}, "views_1h].events"),
    ({"agg": "distinct_approx", "of": "colour"}, "views_1h].of"),
    ({"agg": "distinct_approx", "of": "item", "k": 1}, "views_1h].k"),
    ({"agg": "decayed_sum"}, "views_1h].half_life"),
    ({"agg": "decayed_sum", "half_life": "1h", "weights": {"purchase": 2}}, "views_1h].weights"),
    ({"agg": "ratio"}, "views_1h].per_events"),
    ({"half_life": "1h"}, "views_1h].half_life"),
]


@pytest.mark.parametrize(("change", "field"), BAD)
def test_invalid_definitions_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        compile_definitions(defs({**VIEWS, **change}))
    assert field in err.value.field


def test_invalid_top_level() -> None:
    for raw, field in [
        ({**BASE, "version": 2, "features": [VIEWS]}, "version"),
        ({**BASE, "timezone": "Europe/London", "features": [VIEWS]}, "timezone"),
        ({**BASE, "time": "ingest", "features": [VIEWS]}, "time"),
        ({**BASE, "features": []}, "features"),
        ({**BASE, "features": [VIEWS, VIEWS]}, "features[views_1h].name"),
        ([VIEWS], "features.yaml"),
    ]:
        with pytest.raises(ValidationError) as err:
            compile_definitions(raw)
        assert err.value.field == field


def test_slot_ids_follow_meaning_not_window() -> None:
    """A slot id hashes what its buckets mean: a longer window reuses the state, a new bucket
    width or event list starts a new slot (never reinterpreting old buckets)."""
    a = compile_definitions(defs(VIEWS))
    wider = compile_definitions(defs({**VIEWS, "window": {"rolling": "2h"}}))
    other_bucket = compile_definitions(defs({**VIEWS, "bucket": "5m"}))
    other_events = compile_definitions(defs({**VIEWS, "events": ["view", "click"]}))
    assert set(a.slots) == set(wider.slots)
    assert set(a.slots).isdisjoint(other_bucket.slots)
    assert set(a.slots).isdisjoint(other_events.slots)
    assert a.spec != wider.spec and a.version != wider.version


def test_history_override_raises_ttls_not_slots() -> None:
    fs = compile_definitions(defs(VIEWS))
    deep = compile_definitions(defs(VIEWS), history_ms=100 * DAY_MS)
    assert set(fs.slots) == set(deep.slots)
    assert deep.entity_ttl_s["user"] * 1000 >= 100 * DAY_MS + HOUR_MS + MINUTE_MS
    assert fs.entity_ttl_s["user"] == 3 * 86_400


def test_routing_per_entity_type() -> None:
    fs = load_feature_set()
    ev = parse_event({
        "event_id": "p", "type": "purchase", "user_id": "u1", "ts": 1_700_000_000_000,
        "items": [{"item_id": "A", "qty": 1, "price": 2.0, "category": "c1"},
                  {"item_id": "B", "qty": 2, "price": 1.0, "category": "c1"},
                  {"item_id": "A", "qty": 1, "price": 2.0, "category": ""}],
    }, now_ms=1_700_000_000_000)  # fmt: skip
    search = parse_event({"event_id": "s", "type": "search", "user_id": "u1",
                          "ts": 1_700_000_000_000, "props": {"query": "mug"}},
                         now_ms=1_700_000_000_000)  # fmt: skip
    routed = route(fs, [ev, search])
    assert set(routed) == {("user", "u1"), ("item", "A"), ("item", "B"),
                           ("user_category", "u1~c1")}  # fmt: skip
    assert [t.event.type for t in routed[("user", "u1")]] == ["purchase", "search"]
    assert len(routed[("item", "A")][0].lines) == 2
    assert [ln.item_id for ln in routed[("user_category", "u1~c1")][0].lines] == ["A", "B"]


# -- Lua (lupa) vs Python parity -------------------------------------------------------------


@pytest.fixture(scope="module")
def lua() -> Any:
    rt = lua51.LuaRuntime(unpack_returned_tuples=True)

    def call(*args: Any) -> Any:
        raise AssertionError(f"redis.call in a pure helper: {list(args)}")

    rt.globals().redis = rt.table_from({"register_function": lambda spec: None, "call": call})
    rt.globals().cjson = rt.table_from({"encode": json.dumps, "decode": json.loads})
    code = build_library().code.split("\n", 1)[1]
    names = [
        "feature_window",
        "kmv_estimate",
        "kmv_smallest",
        "float_text",
        "last_better",
        "kmv_insert",
        "kmv_unpack",
        "age_pos",
        "slot_trim",
    ]
    helpers = rt.execute(code + "\nreturn {" + ", ".join(f"{n} = {n}" for n in names) + "}")
    helpers.rt = rt
    return helpers


def test_window_bounds_match(lua: Any) -> None:
    fs = load_feature_set()
    rng = random.Random(3)
    for f in fs.features.values():
        feat = lua.rt.table_from({"b": f.bucket_ms, "w": f.window.ms, "off": f.window.offset_ms,
                                  "cal": f.window.kind == "calendar"})  # fmt: skip
        for _ in range(200):
            t = rng.randrange(1_290_000_000_000, 1_800_000_000_000)
            t -= rng.choice((0, t % f.bucket_ms, t % DAY_MS, 0))
            assert tuple(lua.feature_window(feat, t)) == f.window_bounds(t), (f.name, t)


def test_window_semantics() -> None:
    """As of 22:13:50 UTC, "1 h at 1 min" is [21:13:00, 22:13:00): closed buckets before t."""
    fs = load_feature_set()
    t = 1_700_000_030_000  # 2023-11-14 22:13:50 UTC
    assert fs.features["user_views_1h"].window_bounds(t) == (
        1_699_999_980_000 - HOUR_MS, 1_699_999_980_000,
    )  # fmt: skip
    assert fs.features["user_views_7d"].window_bounds(t) == (
        1_699_999_200_000 - 7 * DAY_MS, 1_699_999_200_000,  # 22:00
    )  # fmt: skip
    day_start, day_end = fs.features["user_purchases_today"].window_bounds(t)
    assert (day_start, day_end) == (1_699_920_000_000, 1_699_999_980_000)  # 00:00 .. 22:13


def test_kmv_estimate_matches(lua: Any) -> None:
    rng = random.Random(5)
    for k in (8, 32, 64):
        for n in (0, 1, k - 1, k, 3 * k, 5000):
            hashes = [rng.getrandbits(52) for _ in range(n)]
            hashes += hashes[: n // 3]  # duplicates
            nums = lua.kmv_smallest(lua.rt.table_from(hashes), k)
            est, _exact = lua.kmv_estimate(nums, k)
            assert est == kmv_estimate(hashes, k)


def test_kmv_insert_keeps_the_k_smallest_distinct_big_endian_7_bytes(lua: Any) -> None:
    """A bucket updated as stored (binary search and splice of packed hashes) holds the k
    smallest distinct hashes, 7 bytes big-endian, ascending: what app/features/online.py
    reads bytewise and the Lua reads back as numbers."""
    run = lua.rt.eval(
        "function(insert, unpack_, hexes, k) local bin = ''; "
        "for _, hx in ipairs(hexes) do "
        "local h = hx:gsub('..', function(cc) return string.char(tonumber(cc, 16)) end); "
        "bin = insert(bin, h, k) end; "
        "return (bin:gsub('.', function(c) return string.format('%02x', c:byte()) end)), "
        "unpack_(bin, {}) end"
    )
    rng = random.Random(6)
    for k in (2, 5, 64):
        nums = [0, *(rng.getrandbits(52) for _ in range(150)), (1 << 52) - 1]
        nums += nums[::7]  # repeated members
        hexes = [x.to_bytes(7, "big").hex() for x in nums]
        packed, back = run(lua.kmv_insert, lua.kmv_unpack, lua.rt.table_from(hexes), k)
        want = sorted(set(nums))[:k]
        assert bytes.fromhex(packed) == b"".join(x.to_bytes(7, "big") for x in want)
        assert list(back.values()) == want


def test_float_text_round_trips(lua: Any) -> None:
    rng = random.Random(9)
    for x in [0.1, 15.1, 1 / 3, 2.0**-30, 123456789.123, 0.0] + [
        rng.random() * 1e6 for _ in range(300)
    ]:
        s = lua.float_text(x)
        assert float(s) == x
        assert len(s) <= 24


def test_last_tie_break(lua: Any) -> None:
    assert lua.last_better(10, 1, None, None)
    assert lua.last_better(11, 0, 10, 5)
    assert lua.last_better(10, 6, 10, 5)
    assert not lua.last_better(10, 5, 10, 6)
    assert not lua.last_better(9, 99, 10, 0)


def test_yaml_file_is_plain_yaml() -> None:
    raw = yaml.safe_load(Path(load_feature_set().source).read_text())
    assert raw["timezone"] == "UTC" and raw["time"] == "event"


def test_age_pos_is_the_insertion_point_in_ascending_ages(lua: Any) -> None:
    ages = lua.rt.table_from([0, 2, 5])
    assert [lua.age_pos(ages, a) for a in range(7)] == [1, 2, 2, 3, 3, 3, 4]
    assert lua.age_pos(lua.rt.table_from([]), 3) == 1


def test_slot_trim_drops_the_oldest_stored_buckets_and_raises_the_horizon(lua: Any) -> None:
    """Stored order is newest first (ages ascending): drops come off the end."""
    minute, hour = 60_000, 3_600_000
    w = 10_000 * minute + 5  # newest ts: bucket 10,000
    spec = lua.rt.table_from({"hist": hour})

    def trim(kind: str, ret: int, ages: list[int]) -> tuple[int, int, list[int], list[int]]:
        slot = lua.rt.table_from({"b": minute, "ret": ret, "kind": kind})
        s = lua.rt.table_from([7, lua.rt.table_from(ages), lua.rt.table_from(list(ages))])
        dropped = lua.slot_trim(spec, slot, s, w)
        return dropped, s[1], list(s[2].values()), list(s[3].values())

    # Retention 1 h: bucket 9,940 (age 60) starts before w - 1 h; its end is the new horizon.
    assert trim("sum", hour, [0, 1, 59, 60, 61, 70]) == (3, 9_941 * minute, [0, 1, 59], [0, 1, 59])
    assert trim("sum", hour, [0, 1]) == (0, 7, [0, 1], [0, 1])
    # max / last: the newest bucket before the first readable window end (w - history, bucket
    # 9,940) wins in every window holding the older ones, which go.
    day90 = 90 * 24 * hour
    got = trim("max", day90, [0, 65, 70, 80])
    assert got == (2, 9_931 * minute, [0, 65], [0, 65])
