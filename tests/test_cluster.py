"""The engine on a local 3-master Redis Cluster plus its search node (one cluster per session).

The cluster pass of the behaviour suite: what a shopper, a loader and an operator do, end to end
through the HTTP app built by `create_app` with `REDIS_URL=redis+cluster://...` and
`CATALOG_REDIS_URL=<search node>`: ingestion with retries, identify-merge across slots,
trending, features, recommendations, experiments, the tracking API, catalog, search, item
pages, live price changes, metrics, the Functions library on every primary. What is not
repeated here (it does not depend on where keys live): the Lua unit tests (lupa), input
validation, the taxonomy, vectorizers, the offline evaluation, the browser test and the
per-family memory bounds; they run once on the single server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from app.catalog.index import CatalogKeys, create_index
from app.catalog.vectorizers import get_vectorizer
from app.cli.main import main as cli_main
from app.core.errors import LibraryVersionError, RedisSetupError
from app.ingest.log import group_lag
from app.obs.flusher import Flusher
from app.obs.registry import MetricsConfig, Registry
from app.obs.series import PARTS, MetricKeys
from app.obs.views import read_totals, series_json
from app.recs.keys import hot_shard_of
from app.recs.worker import RecWorker
from app.redis import library as functions
from app.redis.cluster import LocalCluster
from app.redis.connect import connect, primaries
from tests.recs_fixtures import PRODUCTS, World, build_world, delete_prefix, event, recs_app
from tests.web_fixtures import settings_for

pytestmark = pytest.mark.cluster

WRITE = {"X-Write-Key": "wk_test"}
ADMIN = {"Authorization": "Bearer s3cret-admin"}
NOW = int(time.time() * 1000)


@pytest.fixture
def ccl(local_cluster: LocalCluster) -> Iterator[redis.Redis]:
    with connect(local_cluster.url) as conn:
        yield conn


@pytest.fixture(scope="module")
def world(local_cluster: LocalCluster) -> Iterator[World]:
    prefix = f"tc{int(time.time() * 1000) % 10**8}:"
    with (
        connect(local_cluster.url) as client,
        redis.Redis.from_url(local_cluster.catalog_url) as catalog,
    ):
        w = build_world(client, prefix, catalog_client=catalog)
        create_index(catalog, CatalogKeys(prefix), get_vectorizer())
        try:
            yield w
        finally:
            delete_prefix(catalog, prefix)
            for node in primaries(client):
                delete_one_by_one(node, prefix)


@pytest.fixture
def api(local_cluster: LocalCluster, world: World, tmp_path: Path) -> Iterator[TestClient]:
    app = recs_app(local_cluster.url, world, tmp_path, catalog_url=local_cluster.catalog_url)
    # wk_test is a server key (recs_app): it may read any shopper's lists and write for anyone
    with TestClient(app, headers=WRITE) as client:
        yield client


def delete_one_by_one(node: redis.Redis, prefix: str) -> None:
    """UNLINK each key alone: even on one node, a multi-key command must stay in one slot."""
    pipe = node.pipeline(transaction=False)
    for key in node.scan_iter(match=prefix + "*", count=1000):
        pipe.unlink(key)
    pipe.execute()


def keys_per_primary(client: redis.Redis, pattern: str) -> list[int]:
    return [sum(1 for _ in node.scan_iter(match=pattern, count=1000)) for node in primaries(client)]


# -- the library and /health ----------------------------------------------------------------------


def test_health_checks_the_library_on_every_primary_and_the_search_node(api: TestClient) -> None:
    body = api.get("/health").json()
    assert body["status"] == "ok", body
    assert len(body["cluster_primaries"]) == 3
    assert {n["library_version"] for n in body["cluster_primaries"]} == {
        body["expected_library_version"]
    }
    assert body["catalog_library_version"] == body["expected_library_version"]


def test_a_primary_without_the_library_is_found_and_fixed_by_the_cli(
    ccl: redis.Redis, local_cluster: LocalCluster, api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = primaries(ccl)[1]  # as a master added to the cluster later would be
    victim.function_delete(functions.LIBRARY_NAME)
    try:
        versions = functions.node_versions(ccl)
        assert sorted(versions.values(), key=str).count(None) == 1
        with pytest.raises(LibraryVersionError, match="lack Functions library"):
            functions.ensure_current(ccl, load_if_stale=False)
        health = api.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "stale_library"
        monkeypatch.setenv("REDIS_URL", local_cluster.url)
        assert cli_main(["functions", "version"]) == 1
        assert cli_main(["functions", "load"]) == 0
        assert cli_main(["functions", "version"]) == 0
        assert api.get("/health").status_code == 200
    finally:
        functions.load(ccl)


def test_a_cluster_without_a_catalog_url_is_refused_with_the_fix(
    local_cluster: LocalCluster, world: World, tmp_path: Path
) -> None:
    from app.api.app import create_app

    app = create_app(settings_for(local_cluster.url, world.engine, tmp_path))
    with pytest.raises(RedisSetupError, match="CATALOG_REDIS_URL"), TestClient(app):
        pass


# -- ingestion, identify, trending, features -------------------------------------------------


def views(n_users: int, per_user: int, tag: str) -> list[dict[str, Any]]:
    return [
        event(f"{tag}-{u}-{i}", "view", f"{tag}u{u}", ["K1", "L1", "P1", "K2"][i % 4], NOW - i)
        for u in range(n_users)
        for i in range(per_user)
    ]


def test_events_spread_over_every_master_and_a_retry_is_duplicate(
    api: TestClient, ccl: redis.Redis, world: World
) -> None:
    batch = views(120, 3, "spread")
    first = api.post("/v1/events", json={"events": batch}, headers=WRITE).json()
    assert first["accepted"] == len(batch), first
    again = api.post("/v1/events", json={"events": batch}, headers=WRITE).json()
    assert again["duplicate"] == len(batch)
    sessions = keys_per_primary(ccl, f"{world.engine.key_prefix}u:{{p*}}:spreadu*:session")
    assert sum(sessions) == 120 and min(sessions) > 20, sessions  # 1/3 each, give or take
    for user in ("spreadu0", "spreadu1", "spreadu119"):
        got = api.get(f"/v1/users/{user}/session", headers=ADMIN)
        assert got.status_code == 200 and got.json()["session"]["recent"], got.text


def test_identify_merges_an_anonymous_visitor_living_on_another_master(
    api: TestClient, ccl: redis.Redis, world: World
) -> None:
    keys = world.keys
    anon, user = "anon-x7", "merge-c9"
    assert ccl.cluster_keyslot(keys.user(f"anon:{anon}", "session")) != ccl.cluster_keyslot(
        keys.user(user, "session")
    )
    ev = {**event("m1", "add_to_cart", "ignored", "L1", NOW), "anonymous_id": anon}
    del ev["user_id"]
    assert api.post("/v1/events", json=ev, headers=WRITE).json()["accepted"] == 1
    merged = api.post("/v1/identify", json={"user_id": user, "anonymous_id": anon,
                                           "traits": {"tier": "gold"}}, headers=WRITE)  # fmt: skip
    assert merged.status_code == 200 and merged.json()["status"] == "merged", merged.text
    profile = api.get(f"/v1/users/{user}/profile", headers=ADMIN).json()
    assert profile["traits"] == {"tier": "gold"}
    assert list(profile["session"]["cart"]) == ["L1"], profile["session"]
    assert ccl.exists(*keys.user_all(f"anon:{anon}")) == 0


def test_trending_lists_the_viewed_items(api: TestClient, world: World) -> None:
    batch = [event(f"tr-{i}", "view", f"tr{i}", "P3" if i % 3 else "K5", NOW) for i in range(30)]
    assert api.post("/v1/events", json={"events": batch}, headers=WRITE).json()["accepted"] == 30
    assert world.built is not None
    world.built.drain()  # the aggregate workers: trending from the partition logs, per shard
    body = api.get("/v1/trending", params={"type": "view", "k": 10}).json()
    counts = {it["item_id"]: it["count"] for it in body["items"]}
    # Other tests of this module viewed K1, L1, ... too: these views are in, P3 above K5.
    assert counts["P3"] >= 20 and counts["K5"] >= 10, body
    order = [it["item_id"] for it in body["items"]]
    assert order.index("P3") < order.index("K5"), body


def test_features_of_users_on_every_master(api: TestClient, ccl: redis.Redis) -> None:
    batch = views(12, 4, "feat")
    assert api.post("/v1/events", json={"events": batch}, headers=WRITE).json()["accepted"] == 48
    ids = [f"featu{u}" for u in range(12)]
    # A rolling window counts closed buckets: read two hours on, the four views are in.
    body = {"ids": ids, "as_of": NOW + 2 * 3_600_000, "names": ["user_views_24h"]}
    rows = api.post("/v1/features/user", json=body, headers=ADMIN).json()["rows"]
    assert [(r["id"], r["features"]) for r in rows] == [(i, {"user_views_24h": 4}) for i in ids]


# -- recommendations, experiments ---------------------------------------------------------------


def test_recommendations_and_an_experiment_on_the_cluster(api: TestClient, world: World) -> None:
    shopper = "recs-b4"
    views_ = [event(f"rv{i}", "view", shopper, item, NOW - 1000 + i)
              for i, item in enumerate(["K1", "K2"])]  # fmt: skip
    assert api.post("/v1/events", json={"events": views_}, headers=WRITE).json()["accepted"] == 2
    body = {"variants": [{"name": "control", "traffic": 50}, {"name": "b", "traffic": 50}]}
    assert api.put("/v1/experiments/cl-ab", json=body, headers=ADMIN).status_code == 201
    try:
        rec = api.get(f"/v1/recommendations/{shopper}", params={"k": 4}).json()
        items = [it["item_id"] for it in rec["items"]]
        assert rec["fallback"] is None or rec["fallback"] is False, rec
        assert "K3" in items  # bought with K1 and K2 (the toy model)
        assert not {"O1", "W1", "T1"} & set(items)  # out of stock / guarded (catalog node)
        assert rec["experiment"] == "cl-ab"
        click = event("rc1", "click", shopper, items[0], NOW, props=rec["tracking"])
        assert api.post("/v1/events", json=click, headers=WRITE).json()["accepted"] == 1
        assert world.built is not None
        world.built.drain()  # attribution comes from the log
        report = api.get("/v1/experiments/cl-ab", headers=ADMIN).json()
        mine = {r["variant"]: r for r in report["variants"]}[rec["variant"].split(":")[1]]
        assert mine["counts"]["exposures"] == 1 and mine["counts"]["clicks"] == 1
    finally:
        assert api.delete("/v1/experiments/cl-ab", headers=ADMIN).status_code == 200


def test_the_recs_worker_reads_every_partition_log_and_caches_the_lists(
    ccl: redis.Redis, world: World
) -> None:
    """The list worker reads each partition log alone (one multi-stream read would be
    CROSSSLOT): shoppers on every master get their lists cached and the group is drained."""
    rec = world.recommender()
    worker = RecWorker(ccl, rec, consumer="cl-w1", debounce_ms=0, block_ms=0)
    try:
        worker.ensure_group()
        worker.read(0)  # earlier tests' entries: not this test's
        worker.flush(force=True)
        shoppers = [f"rw{u}" for u in range(9)]
        batch = [event(f"rw-{u}-{i}", "view", s, ["K1", "L1", "P1"][i], NOW - 3000 + i)
                 for u, s in enumerate(shoppers) for i in range(3)]  # fmt: skip
        world.ingest(batch)
        masters = {ccl.cluster_keyslot(world.keys.user(s, "session")) for s in shoppers}
        assert len({ccl.nodes_manager.get_node_from_slot(slot).name for slot in masters}) == 3
        assert worker.read(0) == len(batch)
        assert set(worker.pending) == set(shoppers)
        assert worker.flush() == len(shoppers)  # one computation per shopper
        assert all(ccl.exists(world.keys.recs(s, "home")) for s in shoppers)
        assert group_lag(ccl, world.keys, "recs").pending == 0
    finally:
        rec.close()


# -- catalog, search, items on the search node ----------------------------------------------


def test_catalog_search_and_items_live_on_the_search_node(
    api: TestClient, ccl: redis.Redis, world: World
) -> None:
    found = api.get("/v1/search", params={"q": "heart t-light holder", "k": 3}).json()
    assert {h["item_id"] for h in found["hits"]} >= {"L1", "L2"}, found
    item = api.get("/v1/items/L1").json()
    assert item["item"]["title"].startswith("WHITE HANGING HEART"), item
    similar = api.get("/v1/items/L1/similar", params={"k": 3}).json()
    assert similar["hits"] and "L1" not in {h["item_id"] for h in similar["hits"]}
    changed = api.patch("/v1/items/L3", json={"stock": 0}, headers=ADMIN)
    assert changed.status_code == 200, changed.text
    in_stock = api.get("/v1/search", params={"q": "lantern", "in_stock": "true"}).json()
    assert "L3" not in {h["item_id"] for h in in_stock["hits"]}
    # Nothing of the catalog on the cluster's masters: one index, one place.
    assert keys_per_primary(ccl, f"{world.engine.key_prefix}p:*") == [0, 0, 0]


def test_metrics_and_stats_answer_on_the_cluster(api: TestClient) -> None:
    assert api.get("/health").status_code == 200
    assert api.get("/metrics").status_code == 200
    assert api.get("/v1/stats").status_code == 200


def test_metrics_of_processes_on_every_master_are_merged(ccl: redis.Redis, world: World) -> None:
    """Each process flushes into its own part (one slot); parts sit on every master and the
    readers (totals, TS.MRANGE per node) merge them."""
    # Its own prefix: the app of the other tests flushes this module's metrics meanwhile.
    mcfg = MetricsConfig(key_prefix=world.engine.key_prefix + "mt:")
    keys = MetricKeys(mcfg.key_prefix)
    by_master: dict[str, int] = {}
    for part in range(PARTS):
        node = ccl.nodes_manager.get_node_from_slot(ccl.cluster_keyslot(keys.all_totals()[part]))
        by_master.setdefault(node.name, part)
    assert len(by_master) == 3  # the parts are spread over every master
    for part in by_master.values():
        reg = Registry()
        reg.inc("events.ingested", 5, type="click")
        reg.observe_request("GET", "/v1/trending", 200, 4.0)
        Flusher(reg, ccl, mcfg, part=part).flush()
    assert read_totals(ccl, keys).total("events.ingested", type="click") == 15
    series = series_json(ccl, mcfg, minutes=5, step_s=60)
    assert sum(series["events"]["click"]) == 15
    assert sum(series["requests"]["GET /v1/trending"]) == 3


def test_real_time_popularity_is_split_over_every_master_and_merged_on_read(
    api: TestClient, ccl: redis.Redis, world: World
) -> None:
    items = [p[0] for p in PRODUCTS]
    batch = [event(f"hot-{i}", "purchase", f"hot{i}", items[i % len(items)], NOW)
             for i in range(64)] + [event(f"hot-x{i}", "purchase", f"hotx{i}", "L4", NOW)
                                    for i in range(12)]  # fmt: skip
    assert api.post("/v1/events", json={"events": batch}, headers=WRITE).json()["accepted"] == 76
    assert world.built is not None
    world.built.drain()  # popularity comes from the log (one apply_blocks call per part)
    parts = keys_per_primary(ccl, f"{world.engine.key_prefix}g:{{g*}}:rec:hot")
    touched = {hot_shard_of(i, world.cfg.hot_shards) for i in items}
    assert min(parts) >= 1 and sum(parts) == len(touched), parts
    assert ccl.exists(world.keys.hot) == 0  # no single global key on a cluster
    rec = world.recommender()
    try:
        assert rec.hot[0][0] == "L4" and {i for i, _ in rec.hot} == set(items)
    finally:
        rec.close()


def test_segment_batch_and_identify_on_the_cluster(api: TestClient) -> None:
    """The tracking API (Segment / RudderStack) lands on the shoppers' masters too."""
    batch = [
        {
            "type": "track",
            "messageId": f"sg{i}",
            "userId": f"seg{i}",
            "event": "Product Viewed",
            "properties": {"product_id": "K1", "price": 12.75},
            "timestamp": "2026-12-04T10:00:00Z",
        }
        for i in range(9)
    ] + [{"type": "identify", "messageId": "sgi", "userId": "seg0", "traits": {"tier": "vip"}}]
    body = api.post("/v1/batch", json={"batch": batch}, headers=WRITE).json()
    assert body["accepted"] == 10 and body["rejected"] == 0, body
    profile = api.get("/v1/users/seg0/profile", headers=ADMIN).json()
    assert profile["traits"] == {"tier": "vip"}
    again = api.post("/v1/batch", json={"batch": batch}, headers=WRITE).json()
    assert again["duplicate"] == 10, again


def test_list_reads_by_node_keep_the_order_of_the_specs(ccl: redis.Redis, world: World) -> None:
    from app.recs.candidates import by_node_pipelines, resp2_twin

    keys = [f"{world.engine.key_prefix}i:{{bn{i}}}:nn:x" for i in range(24)]
    for i, key in enumerate(keys):
        ccl.zadd(key, {f"m{i}": float(i), f"n{i}": float(i) / 2})
    twin = resp2_twin(ccl)
    try:
        specs = [(key, 2) for key in reversed(keys)]
        pipe = twin.pipeline(transaction=False)  # the cluster pipeline: the reference
        for key, n in specs:
            pipe.execute_command("ZRANGE", key, 0, n - 1, "REV", "WITHSCORES")
        assert by_node_pipelines(twin, specs) == pipe.execute()
        assert by_node_pipelines(twin, specs)[0][0] == b"m23"
        assert len({ccl.cluster_keyslot(k) for k in keys}) > 3  # several nodes were asked
    finally:
        twin.close()
        ccl.delete(*keys[:1])
        for key in keys[1:]:
            ccl.delete(key)
