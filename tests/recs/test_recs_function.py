"""`recommend` / `rec_context` / `rec_track` against the real server: filters, tiers, reasons."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import redis

from app.core.errors import BadArgumentError, KeyLayoutError
from app.ingest import users
from app.recs import calls as rec_calls
from app.recs.calls import Candidate, RecParams
from app.recs.config import DEFAULT_WEIGHTS
from app.recs.experiments import DEFAULT
from app.recs.lists import RecRequest
from app.redis import calls
from tests.recs_fixtures import (
    GUARDED,
    OUT_OF_STOCK,
    World,
    event,
    world_fixture,
)

NOW = int(time.time() * 1000)


world = world_fixture("trec")


def cand(item: str, category: str = "kitchen", *, stock: bool = True, flags: tuple[str, ...] = (),
         sources: list[tuple[str, int, float]] | None = None) -> Candidate:  # fmt: skip
    return Candidate(item, category, 3.0, stock, 0.5, flags, sources or [("tr", 0, 0.5)])


def call(w: World, user: str, cands: list[Candidate], anchors: list[str] | None = None,
         **params: object) -> rec_calls.RecReply:  # fmt: skip
    p = replace(RecParams(k=10, guards=(("age", "age_verified"),)), **params)  # type: ignore[arg-type]
    args = rec_calls.recommend_args(w.keys, user, p, anchors or [], cands)
    return rec_calls.parse_recommend(calls.fcall_ro(w.client, "recommend", args))


def test_filters_each_counted_and_never_returned(world: World) -> None:
    w, user = world, "filt1"
    w.ingest([
        event("f1", "view", user, "K1", NOW - 60_000),
        event("f2", "add_to_cart", user, "K2", NOW - 50_000),
        event("f3", "purchase", user, "L1", NOW - 40_000, session_id="s0"),  # older session
        event("f4", "view", user, "L3", NOW - 30_000),
    ])  # fmt: skip
    cands = [
        cand("K1"), cand("K2"), cand("L1", "candles_lights"), cand("O1", stock=False),
        cand("W1", "wine", flags=("age",)), cand("T1", flags=("age",)), cand("P1", "party"),
        cand("K4"), cand("K5"), cand("CTX"), cand("K4"),
    ]  # fmt: skip
    reply = call(w, user, cands, excluded=("party",), context_item="CTX", surface="product")
    got = [it.item_id for it in reply.items]
    assert sorted(got) == ["K4", "K5"]
    # K1 viewed and L1 bought: 'seen' (session and Bloom); L3 is not a candidate here
    assert reply.filtered == {"seen": 2, "cart": 1, "out_of_stock": 1, "guarded": 2,
                              "excluded": 1, "context": 1, "duplicate": 1}  # fmt: skip
    assert reply.tier == "content" and reply.interactions == 4


def test_guarded_items_need_the_trait_and_repurchase_lets_seen_items_back(world: World) -> None:
    w, user = world, "guard1"
    w.ingest([event("g1", "purchase", user, "K3", NOW - 60_000)])
    cands = [cand("W1", "wine", flags=("age",)), cand("K3"), cand("K4")]
    assert [it.item_id for it in call(w, user, cands).items] == ["K4"]
    users.identify(w.client, w.engine, user, None, {"age_verified": True})
    assert sorted(it.item_id for it in call(w, user, cands).items) == ["K4", "W1"]
    again = call(w, user, cands, repurchase=True)
    assert sorted(it.item_id for it in again.items) == ["K3", "K4", "W1"]


def test_diversity_cap_and_price_and_category_filters(world: World) -> None:
    w = world
    cands = [cand(f"K{i}") for i in range(1, 6)] + [cand("L2", "candles_lights"),
                                                     cand("P2", "party")]  # fmt: skip
    reply = call(w, "div1", cands, per_category=2)
    cats = [it.category for it in reply.items]
    assert cats.count("kitchen") == 2 and len(cats) == 4 and reply.filtered == {"diversity": 3}
    only = call(w, "div1", cands, only_categories=("party", "candles_lights"))
    assert sorted(it.item_id for it in only.items) == ["L2", "P2"]
    cheap = [cand("A", sources=[("tr", 0, 1)])]
    cheap[0].price = 1.0
    assert call(w, "div1", cheap, min_price=2.0).items == []
    assert call(w, "div1", cheap, max_price=2.0).items[0].item_id == "A"


def test_scores_use_session_context_and_explain_themselves(world: World) -> None:
    w, user = world, "ctx1"
    w.ingest([
        event("c1", "view", user, "L3", NOW - 3_600_000 * 5),  # five hours ago: faded
        event("c2", "view", user, "K1", NOW - 1_000),  # just now
        event("c3", "add_to_cart", user, "P1", NOW - 500),
    ])  # fmt: skip
    anchors = ["K1", "L3", "P1"]
    cands = [
        cand("X1", sources=[("nn", 1, 0.5)]),  # neighbour of the fresh view
        cand("X2", "candles_lights", sources=[("nn", 2, 0.5)]),  # neighbour of the faded view
        cand("X3", "party", sources=[("nn", 3, 0.5)]),  # goes with the cart line
        cand("X4", sources=[("ct", 1, 0.5)]),  # similar to K1
        cand("X5", sources=[("tr", 0, 0.2)]),  # trending
    ]
    reply = call(w, user, cands, anchors, now_ms=NOW)
    by_item = {it.item_id: it for it in reply.items}
    assert by_item["X1"].score > by_item["X2"].score  # recency decay of the anchor
    assert (by_item["X1"].reason, by_item["X1"].anchor) == ("viewed", "K1")
    assert (by_item["X3"].reason, by_item["X3"].anchor) == ("in_cart", "P1")
    assert (by_item["X4"].reason, by_item["X4"].anchor) == ("similar", "K1")
    assert by_item["X5"].reason == "trending"
    assert reply.items[0].item_id == "X3"  # the cart line weighs most
    for it in reply.items:
        assert isinstance(it.score, float)


def test_tiers_follow_the_number_of_distinct_items(world: World) -> None:
    w = world
    rec = w.recommender()
    cold = rec.compute(RecRequest("tier-new", "home", None, 5))
    assert cold.tier == "cold" and cold.interactions == 0 and cold.items
    assert {it.reason for it in cold.items} <= {"trending", "popular", "category"}
    w.ingest([event(f"t{i}", "view", "tier-few", f"K{i}", NOW - 1000 * i) for i in (1, 2, 3)])
    few = rec.compute(RecRequest("tier-few", "home", None, 5))
    assert few.tier == "content" and few.interactions == 3
    items = ["K1", "K2", "K3", "K4", "K5", "K6", "L1", "L2", "L3", "L4", "P1"]
    w.ingest(
        [event(f"m{i}", "view", "tier-many", it, NOW - 1000 * i) for i, it in enumerate(items)]
    )
    many = rec.compute(RecRequest("tier-many", "home", None, 5))
    assert many.tier == "collab" and many.interactions == len(items)
    rec.close()


def test_new_arrivals_boost_the_collaborative_tier_only(world: World) -> None:
    """The 'new' source adds W[new] x W[<tier>.new] x value: on for shoppers with 10+ items,
    off for the content and cold tiers (validation: it pulled them below the best sellers)."""
    w = world
    items = ["K1", "K2", "K3", "K4", "K5", "K6", "L1", "L2", "L3", "L4", "P1"]
    w.ingest(
        [event(f"na{i}", "view", "new-many", it, NOW - 1000 * i) for i, it in enumerate(items)]
    )
    w.ingest([event("nf1", "view", "new-few", "K1", NOW - 1000)])
    cands = [cand("X1", sources=[("tr", 0, 0.5)]),
             cand("X2", sources=[("tr", 0, 0.5), ("new", 0, 0.5)])]  # fmt: skip
    many = call(w, "new-many", cands, now_ms=NOW)
    assert many.tier == "collab"
    by_item = {it.item_id: it for it in many.items}
    boost = DEFAULT_WEIGHTS["new"] * DEFAULT_WEIGHTS["collab.new"] * 0.5
    assert boost > 0
    assert by_item["X2"].score - by_item["X1"].score == pytest.approx(boost)
    assert by_item["X2"].reason == "new" and by_item["X1"].reason == "trending"
    few = call(w, "new-few", cands, now_ms=NOW)
    assert few.tier == "content"
    scores = {it.item_id: it.score for it in few.items}
    assert scores["X2"] == pytest.approx(scores["X1"])


def test_recommender_never_returns_seen_out_of_stock_or_guarded(world: World) -> None:
    w = world
    rec = w.recommender()
    everything = ["K1", "K2", "K3", "K4", "K5", "K6", "L1", "L2", "L3", "L4", "P1", "P2", "P3"]
    for u in range(8):
        user = f"prop{u}"
        mine = everything[u : u + 3 + u % 3]
        w.ingest([event(f"p{u}-{j}", "view" if j % 2 else "purchase", user, item,
                        NOW - 10_000 + j) for j, item in enumerate(mine)])  # fmt: skip
        for surface, item in (("home", None), ("product", "K1"), ("cart", None)):
            lst = rec.compute(RecRequest(user, surface, item, 10))
            got = {it.item_id for it in lst.items}
            assert got, (user, surface)
            assert not got & set(mine), (user, surface, got & set(mine))
            assert not got & OUT_OF_STOCK
            assert not got & GUARDED
            if item:
                assert item not in got
    rec.close()


def test_rec_context_lists_anchors(world: World) -> None:
    w, user = world, "ctx2"
    w.ingest([
        event("x1", "view", user, "K1", NOW - 3000),
        event("x2", "view", user, "K2", NOW - 2000),
        event("x3", "add_to_cart", user, "L1", NOW - 1000),
    ])  # fmt: skip
    ctx = rec_calls.parse_rec_context(calls.fcall_ro(
        w.client, "rec_context", rec_calls.rec_context_args(w.keys, user, 2, 5, 3)))  # fmt: skip
    assert ctx.recent == ("L1", "K2") and ctx.cart == ("L1",)
    assert ctx.hist[0] == "L1" and set(ctx.hist) == {"K1", "K2", "L1"}  # cart weighs 4x a view
    assert ctx.categories[0] == "candles_lights" and ctx.interactions == 3
    assert ctx.last_ts == NOW - 1000 and ctx.peers == {}
    # with the model's peer list (KEYS[5]): the most similar shoppers, capped
    args = rec_calls.rec_context_args(w.keys, "m0", 2, 5, 3, model=w.model.version, n_peers=2)
    ctx = rec_calls.parse_rec_context(calls.fcall_ro(w.client, "rec_context", args))
    assert next(iter(ctx.peers)) == "m1" and ctx.peers["m1"] == pytest.approx(1.0)
    assert len(ctx.peers) == 2


def test_rec_track_caps_and_expires_the_history(world: World) -> None:
    w = world
    hour = 3_600_000
    args = rec_calls.rec_track_args(
        w.keys, [("cap1", [(f"I{i}", "view", NOW - (30 - i) * hour) for i in range(30)])],
        epoch_ms=w.engine.aff_epoch_ms, half_life_ms=30 * 24 * hour, cap=10, ttl_s=1000,
        weights={"view": 1.0},
    )  # fmt: skip
    assert calls.fcall(w.client, "rec_track", args) == [30, 20]
    key = w.keys.hist("cap1")
    assert w.client.zcard(key) == 10 and 0 < w.client.ttl(key) <= 1000
    # the newest survive (forward decay: a later event weighs more)
    assert w.client.zrevrange(key, 0, 0) == [b"I29"]
    overflow = rec_calls.rec_track_args(
        w.keys, [("cap2", [("I1", "view", NOW)])], epoch_ms=w.engine.aff_epoch_ms,
        half_life_ms=hour, cap=10, ttl_s=1000, weights={"view": 1.0},
    )  # fmt: skip
    with pytest.raises(BadArgumentError, match="overflows"):
        calls.fcall(w.client, "rec_track", overflow)
    assert not w.client.exists(w.keys.hist("cap2"))


def test_bad_input_is_a_typed_error(world: World) -> None:
    w = world
    p = RecParams(weights={"nope": 1.0})
    with pytest.raises(BadArgumentError, match="unknown name nope"):
        calls.fcall_ro(w.client, "recommend", rec_calls.recommend_args(w.keys, "u", p, [], []))
    with pytest.raises(KeyLayoutError):
        calls.fcall_ro(w.client, "recommend", (["a"], ["0"]))
    with pytest.raises(BadArgumentError, match="unknown surface"):
        call(w, "u", [], surface="checkout")


def test_recommend_is_read_only(world: World) -> None:
    # FCALL_RO refuses a Function without the no-writes flag: these two run under it.
    w = world
    rec = w.recommender()
    lst = rec.compute(RecRequest("ro1", "home", None, 3), DEFAULT)
    assert lst.items
    with pytest.raises(redis.ResponseError, match="write flag"):
        w.client.fcall_ro("rec_track", 0, 0, 0, 1, 1, "")
    rec.close()


def test_rise_source_scores_by_its_weight_and_reads_as_trending(world: World) -> None:
    w = world
    cands = [cand("R1", sources=[("tr", 0, 0.2)]),
             cand("R2", sources=[("tr", 0, 0.2), ("rise", 0, 0.8)])]  # fmt: skip
    weights = {**DEFAULT_WEIGHTS, "rise": 2.0, "cold.rise": 1.5}
    reply = call(w, "rise-user", cands, now_ms=NOW, weights=weights)
    by_item = {it.item_id: it for it in reply.items}
    assert reply.tier == "cold"
    extra = 2.0 * 1.5 * 0.8
    assert by_item["R2"].score - by_item["R1"].score == pytest.approx(extra)
    assert by_item["R2"].reason == "trending"
    off = call(w, "rise-user", cands, now_ms=NOW, weights={**DEFAULT_WEIGHTS, "rise": 0.0})
    scores = {it.item_id: it.score for it in off.items}
    assert scores["R2"] == pytest.approx(scores["R1"])
