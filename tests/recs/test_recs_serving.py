"""Serving: cache freshness, inline computation, fallbacks under a stopped or slowed Redis,
the refresh worker, and the HTTP endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from app.ingest.log import group_lag
from app.recs.config import RecConfig
from app.recs.lists import RecList, RecRequest
from app.recs.recommender import timeout_client
from app.recs.worker import RecWorker
from app.redis import embedded as redis_stack
from app.redis import library as functions
from tests.recs_fixtures import (
    GUARDED,
    OUT_OF_STOCK,
    World,
    build_world,
    event,
    recs_app,
    world_fixture,
)

NOW = int(time.time() * 1000)
ADMIN = {"Authorization": "Bearer s3cret-admin"}

SERVER = {"X-Write-Key": "wk_test"}  # a backend's key: may read any shopper's lists


world = world_fixture("tsrv")


@pytest.fixture
def private() -> Iterator[tuple[redis_stack.EmbeddedRedis, World]]:
    """A world on its own embedded server, which the test may stop or pause."""
    server = redis_stack.temporary().start()
    try:
        with redis.Redis.from_url(server.url) as client:
            functions.load(client)
            yield server, build_world(client, "tp:")
    finally:
        server.stop()


def test_second_read_is_a_cache_hit_until_a_new_event(world: World) -> None:
    w, user = world, "cache1"
    rec = w.recommender()
    w.ingest([event("a1", "view", user, "K1", NOW - 5000)])
    first = rec.serve(RecRequest(user, "home", None, 5))
    assert first.source == "inline" and first.tier == "content" and first.items
    second = rec.serve(RecRequest(user, "home", None, 5))
    assert second.source == "cache" and second.age_ms >= 0
    assert [i.item_id for i in second.items] == [i.item_id for i in first.items]
    w.ingest([event("a2", "view", user, "L1", NOW - 1000)])  # the click two seconds ago
    third = rec.serve(RecRequest(user, "home", None, 5))
    assert third.source == "inline"
    assert "L1" not in {i.item_id for i in third.items}
    assert any(i.anchor == "L1" for i in third.items)  # it reflects the new click
    body = rec.as_json(third)
    assert body["tier"] == "content_based" and body["variant"] == "default"
    assert body["tracking"] == {"rec_id": body["rec_id"], "variant": "default"}
    assert rec.stats() == {"served.inline": 2, "served.cache": 1}
    rec.close()


def test_a_click_shows_up_even_for_a_shopper_with_strong_peers(world: World) -> None:
    # m6 bought P1 P2 P3; its peer m7 (P1 P2 K6) bought kitchen items lately: strong
    # "shoppers like you" candidates. A click on L1 two seconds ago must still show up on top.
    w = world
    rec = w.recommender()
    w.ingest([event(f"pk{i}", "purchase", "m7", item, NOW - 3_600_000 + i)
              for i, item in enumerate(["K4", "K5", "K2", "K3"])])  # fmt: skip
    before = rec.compute(RecRequest("m6", "home", None, 4))
    assert {i.reason for i in before.items} == {"peers"}  # the peers fill the list ...
    w.ingest([event("pk-click", "click", "m6", "L1", NOW - 2000)])
    after = rec.compute(RecRequest("m6", "home", None, 4))
    assert any(i.anchor == "L1" for i in after.items[:2]), after.items  # ... until a click
    rec.close()


def test_old_cached_lists_and_uncacheable_requests_compute_inline(world: World) -> None:
    w, user = world, "cache2"
    rec = w.recommender(cache_max_age_s=0.0)
    rec.serve(RecRequest(user, "home", None, 5))
    time.sleep(0.01)
    assert rec.serve(RecRequest(user, "home", None, 5)).source == "inline"
    rec2 = w.recommender()
    assert rec2.serve(RecRequest(user, "product", "K1", 5)).source == "inline"
    assert rec2.serve(RecRequest(user, "product", "K1", 5)).source == "inline"
    rec.close()
    rec2.close()


def test_stopped_redis_serves_last_good_then_popular(
    private: tuple[redis_stack.EmbeddedRedis, World],
) -> None:
    server, w = private
    client = timeout_client(server.url, 0.05)
    rec = w.recommender(client, breaker_open_s=60.0)
    w.ingest([event("s1", "view", "known", "K1", NOW - 1000)])
    live = rec.serve(RecRequest("known", "home", None, 5))
    assert live.source == "inline" and live.items
    server.stop()
    t0 = time.perf_counter()
    lkg = rec.serve(RecRequest("known", "home", None, 5))
    assert (lkg.source, lkg.fallback, lkg.fallback_reason) == (
        "fallback", "last_good", "redis_unavailable",
    )  # fmt: skip
    assert [i.item_id for i in lkg.items] == [i.item_id for i in live.items]
    stranger = rec.serve(RecRequest("stranger", "home", None, 5))
    assert (stranger.source, stranger.fallback) == ("fallback", "popular")
    assert len(stranger.items) == 5
    assert not {i.item_id for i in stranger.items} & (OUT_OF_STOCK | GUARDED - {"T1"})
    product = rec.serve(RecRequest("stranger", "product", "K1", 5))
    assert product.items and "K1" not in {i.item_id for i in product.items}
    assert (time.perf_counter() - t0) < 1.0  # the breaker skips Redis: no timeouts piling up
    stats = rec.stats()
    assert stats["fallback.last_good.redis_unavailable"] == 1
    assert stats["fallback.popular.redis_unavailable"] == 2
    rec.refresh()  # best effort while down: must not raise
    rec.close()
    client.close()


def test_slow_redis_falls_back_within_the_budget(
    private: tuple[redis_stack.EmbeddedRedis, World],
) -> None:
    server, w = private
    client = timeout_client(server.url, 0.05)
    rec = w.recommender(client, budget_ms=50.0, breaker_open_s=0.2)
    w.ingest([event("w1", "view", "slow", "K2", NOW - 1000)])
    live = rec.serve(RecRequest("slow", "cart", None, 5))
    assert live.source == "inline"
    with redis.Redis.from_url(server.url) as admin:
        admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # type: ignore[no-untyped-call]
        t0 = time.perf_counter()
        slow = rec.serve(RecRequest("slow", "cart", None, 5))
        took = time.perf_counter() - t0
        assert (slow.source, slow.fallback, slow.fallback_reason) == (
            "fallback", "last_good", "timeout",
        )  # fmt: skip
        assert took < 0.5
        admin.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
    time.sleep(0.3)  # the breaker closes again
    assert rec.serve(RecRequest("slow", "cart", None, 5)).source in ("cache", "inline")
    rec.close()
    client.close()


def test_an_exhausted_budget_serves_the_last_good_list(world: World) -> None:
    w = world
    rec = w.recommender()
    rec.serve(RecRequest("budget1", "home", None, 5))
    raw = w.client.get(w.keys.recs("budget1", "home"))
    assert raw is not None
    lkg = [i.item_id for i in RecList.from_json(raw).items]  # the cached list (20 items)
    tight = w.recommender(budget_ms=0.0)
    tight.lru = rec.lru  # same process, same in-process tier
    resp = tight.serve(RecRequest("budget1", "home", None, 5))
    # the Redis copy is fresh, so it is a cache hit even without budget ...
    assert resp.source == "cache"
    w.ingest([event("b1", "view", "budget1", "K5", NOW)])
    # ... but a new event makes it stale and there is no budget to compute: last good, minus
    # what the live session already holds (the view of K5)
    resp = tight.serve(RecRequest("budget1", "home", None, 5))
    assert (resp.source, resp.fallback, resp.fallback_reason) == ("fallback", "last_good",
                                                                  "budget")  # fmt: skip
    assert [i.item_id for i in resp.items] == [x for x in lkg if x != "K5"][:5]
    # the shopper buys the first one offered: the last good list must not offer it again
    first = resp.items[0].item_id
    w.ingest([event("b2", "purchase", "budget1", first, NOW + 1)])
    resp = tight.serve(RecRequest("budget1", "home", None, 5))
    assert resp.fallback == "last_good"
    assert [i.item_id for i in resp.items] == [x for x in lkg if x not in {"K5", first}][:5]
    rec.close()
    tight.close()


def test_a_stock_change_reaches_the_recommender_within_a_refresh(world: World) -> None:
    from app.catalog.calls import catalog_update, parse_change
    from app.catalog.index import CatalogConfig, create_index, drop_catalog
    from app.catalog.vectorizers import get_vectorizer

    w = world
    create_index(w.client, w.ckeys, get_vectorizer())
    try:
        rec = w.recommender()
        w.ingest([event("st1", "view", "stock1", "K1", NOW - 1000)])
        before = {i.item_id for i in rec.compute(RecRequest("stock1", "home", None, 10)).items}
        gone = sorted(before)[0]
        cfg = CatalogConfig(key_prefix=w.engine.key_prefix)
        result = catalog_update(w.client, cfg, w.ckeys, gone, parse_change({"stock": 0}))
        assert result.status == "ok"
        time.sleep(0.01)
        assert rec.catalog.refresh() >= 1  # incremental: FT.SEARCH on updated_ms
        after = {i.item_id for i in rec.compute(RecRequest("stock1", "home", None, 10)).items}
        assert gone not in after
        catalog_update(w.client, cfg, w.ckeys, gone, parse_change({"stock": 5}))
        rec.close()
    finally:
        drop_catalog(w.client, w.ckeys)


def test_worker_refreshes_active_users_so_reads_hit_the_cache(world: World) -> None:
    w = world
    rec = w.recommender()
    worker = RecWorker(w.client, rec, consumer="t1", debounce_ms=0, block_ms=0)
    worker.ensure_group()
    worker.read(0)  # nothing pending from earlier tests' consumers
    worker.flush(force=True)
    w.ingest([event("k1", "view", "busy", "P1", NOW - 3000),
              event("k2", "add_to_cart", "busy", "P2", NOW - 2000),
              event("k3", "view", "busy", "L2", NOW - 1000)])  # fmt: skip
    assert worker.read(0) == 3
    assert set(worker.pending) == {"busy"}
    assert worker.flush() == 1  # debounced: one computation for three events
    assert w.client.exists(w.keys.recs("busy", "home"), w.keys.recs("busy", "cart")) == 2
    assert w.client.ttl(w.keys.recs("busy", "home")) > 0
    resp = rec.serve(RecRequest("busy", "home", None, 5))
    assert resp.source == "cache"
    assert group_lag(w.client, w.keys, "recs").pending == 0
    rec.close()


@pytest.fixture
def api(redis_url: str, world: World, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(recs_app(redis_url, world, tmp_path), headers=SERVER) as client:
        yield client


def test_http_reflects_the_click_and_reports_its_provenance(api: TestClient) -> None:
    view = event("h1", "view", "web1", "K1", NOW - 1000)
    assert api.post("/v1/events", json=view, headers={"X-Write-Key": "wk_test"}).status_code == 200
    resp = api.get("/v1/recommendations/web1", params={"surface": "home", "k": 4})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["source"] == "inline" and body["tier"] == "content_based"
    assert len(body["items"]) == 4
    first = body["items"][0]
    assert set(first) >= {"item_id", "score", "reason", "reason_code", "title", "category"}
    reasons = {it["reason"] for it in body["items"]}
    assert reasons & {"because you viewed REGENCY CAKESTAND 3 TIER",
                      "because you liked REGENCY CAKESTAND 3 TIER",  # its history anchor
                      "similar to REGENCY CAKESTAND 3 TIER"}  # fmt: skip
    again = api.get("/v1/recommendations/web1", params={"k": 4}).json()
    assert again["source"] == "cache" and again["age_ms"] >= 0
    for bad, field in [({"surface": "checkout"}, "surface"), ({"surface": "product"}, "item"),
                       ({"k": 0}, "k"), ({"category": "bad slug!"}, "category"),
                       ({"min_price": "x"}, "min_price")]:  # fmt: skip
        r = api.get("/v1/recommendations/web1", params=bad)
        assert r.status_code == 422 and r.json()["field"] == field
    assert api.get("/v1/recommendations/bad{id}").status_code == 422
    filtered = api.get("/v1/recommendations/web1",
                       params={"category": "party", "max_price": 3}).json()  # fmt: skip
    assert filtered["items"] and all(it["category"] == "party" and it["price"] <= 3
                                     for it in filtered["items"])  # fmt: skip
    assert api.get("/v1/recommender").status_code == 401
    info = api.get("/v1/recommender", headers=ADMIN).json()
    assert info["serving_model"] == info["model"]["current"] and info["catalog_items"] > 10


def test_http_never_errors_when_redis_is_gone(
    private: tuple[redis_stack.EmbeddedRedis, World], tmp_path: Path
) -> None:
    server, w = private
    app = recs_app(server.url, w, tmp_path)
    with TestClient(app, headers=SERVER) as client:
        assert client.get("/v1/recommendations/u1").json()["source"] == "inline"
        server.stop()
        bodies = []
        for user in ("u1", "u2"):
            r = client.get(f"/v1/recommendations/{user}", params={"k": 3})
            assert r.status_code == 200
            bodies.append(r.json())
        assert [b["fallback"] for b in bodies] == ["last_good", "popular"]
        assert all(len(b["items"]) == 3 for b in bodies)


def test_live_share_is_configurable_and_checked(tmp_path: Path) -> None:
    from app.recs.config import load_rec_config

    served = load_rec_config(tmp_path / "absent.env")  # no overrides: what was evaluated
    evaluated = RecConfig()
    assert (served.per_category, served.live_share, served.budget_ms) == (
        evaluated.per_category, evaluated.live_share, evaluated.budget_ms,
    )  # fmt: skip
    env = tmp_path / ".env"
    env.write_text("RETAIL_REC_LIVE_SHARE=0\n")
    assert load_rec_config(env).live_share == 0.0
    env.write_text("RETAIL_REC_LIVE_SHARE=1.5\n")
    with pytest.raises(ValueError, match="RETAIL_REC_LIVE_SHARE"):
        load_rec_config(env)


def test_start_up_warms_what_the_first_request_needs_without_writing(
    api: TestClient, client: redis.Redis, world: World
) -> None:
    """Issue 16, item 7: the first product page fell back on its budget (cold connections,
    first Function calls, first KNN query). Start-up now runs a home and a product list; it
    is read-only: no cached list, no session, no exposure for the warm-up identity."""
    body = api.get("/v1/recommender", headers=ADMIN).json()
    assert body["counters"]["warmed_up"] >= 2, body["counters"]
    assert list(client.scan_iter(match=f"{world.engine.key_prefix}*warmup*", count=1000)) == []
    assert "served.inline" not in body["counters"]  # not counted as traffic
    assert body["exposures_dropped"] == 0
