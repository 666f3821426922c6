"""Experiments: deterministic assignment, split accuracy, validation, exposures and attribution
through the ingestion hook, the per-variant report, and the admin-only HTTP API."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.core.errors import ValidationError
from app.recs.config import WEIGHT_NAMES
from app.recs.experiments import (
    DEFAULT,
    Experiment,
    ExperimentStore,
    Variant,
    assign,
    bucket_of,
    parse_experiment,
)
from app.recs.lists import RecRequest
from tests.recs_fixtures import World, event, recs_app, world_fixture

NOW = int(time.time() * 1000)
ADMIN = {"Authorization": "Bearer s3cret-admin"}
WRITE = {"X-Write-Key": "wk_test"}

SERVER = {"X-Write-Key": "wk_test"}  # a backend's key: may read any shopper's lists


def split(exp_id: str = "e1", a: float = 98, b: float = 2) -> Experiment:
    return Experiment(exp_id, (Variant("control", a), Variant("treatment", b, weights={"nn": 2})))


def test_assignment_is_stable_and_independent_of_the_process() -> None:
    exp = split()
    first = [assign([exp], f"user{i}", "home").variant for i in range(2000)]
    again = [assign([split()], f"user{i}", "home").variant for i in range(2000)]
    assert first == again
    assert bucket_of("e1", "e1", "user1") == bucket_of("e1", "e1", "user1")
    # another surface the experiment does not cover: the default
    limited = Experiment("e1", exp.variants, surfaces=("product",))
    assert assign([limited], "user1", "home") == DEFAULT
    assert assign([Experiment("e1", exp.variants, status="paused")], "user1", "home") == DEFAULT


@pytest.mark.parametrize(("a", "b"), [(98, 2), (50, 50), (90, 10), (99.5, 0.5)])
def test_split_accuracy(a: float, b: float) -> None:
    n = 40_000
    counts = Counter(assign([split("e2", a, b)], f"u{i}", "home").variant for i in range(n))
    share = counts["treatment"] / n * 100
    # binomial: 4 standard deviations
    sd = (b * (100 - b) / n) ** 0.5
    assert abs(share - b) < 4 * sd + 0.01, (share, b)


def test_growing_the_last_variant_keeps_its_users_and_salt_reshuffles() -> None:
    before = {u for u in (f"u{i}" for i in range(20_000))
              if assign([split("e3", 98, 2)], u, "home").variant == "treatment"}  # fmt: skip
    after = {u for u in (f"u{i}" for i in range(20_000))
             if assign([split("e3", 95, 5)], u, "home").variant == "treatment"}  # fmt: skip
    assert before <= after and len(after) > 2 * len(before)
    salted = Experiment("e3", split("e3").variants, salt="v2")
    moved = {u for u in before if assign([salted], u, "home").variant != "treatment"}
    assert len(moved) > 0.8 * len(before)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"variants": []}, "variants"),
        ({"variants": [{"name": "a", "traffic": 60}, {"name": "b", "traffic": 30}]}, "variants"),
        ({"variants": [{"name": "a", "traffic": 50}, {"name": "a", "traffic": 50}]}, "variants"),
        ({"variants": [{"name": "a b", "traffic": 100}]}, "variants[0].name"),
        ({"variants": [{"name": "a", "traffic": 100, "weights": {"zz": 1}}]},
         "variants[0].weights"),
        ({"variants": [{"name": "a", "traffic": 100, "weights": {"nn": -1}}]},
         "variants[0].weights.nn"),
        ({"variants": [{"name": "a", "traffic": 100, "model": "bad version!"}]},
         "variants[0].model"),
        ({"variants": [{"name": "a", "traffic": 100}], "status": "live"}, "status"),
        ({"variants": [{"name": "a", "traffic": 100}], "surfaces": ["checkout"]}, "surfaces"),
        ({"variants": [{"name": "a", "traffic": 100}], "color": "red"}, "body"),
    ],
)  # fmt: skip
def test_definitions_are_validated(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        parse_experiment("e9", body, WEIGHT_NAMES, now_ms=1)
    assert exc.value.field == field


world = world_fixture("texp")


def test_exposures_and_attributed_events_make_the_report(world: World) -> None:
    w = world
    exp = parse_experiment("ab1", {"variants": [{"name": "control", "traffic": 50},
                                                {"name": "more-nn", "traffic": 50,
                                                 "weights": {"nn": 3}}]},
                           WEIGHT_NAMES, now_ms=NOW)  # fmt: skip
    w.store.put(exp)
    rec = w.recommender()
    served = {}
    for i in range(40):
        resp = rec.serve(RecRequest(f"x{i}", "home", None, 3))
        assert resp.assignment.experiment == "ab1"
        served[f"x{i}"] = resp
    rec.experiments.flush()
    # shoppers click, cart and buy what they were shown, echoing the tracking props
    events = []
    for user, resp in list(served.items())[:10]:
        props = {"rec_id": resp.rec_id, "variant": resp.assignment.label}
        item = resp.items[0].item_id
        events.append(event(f"{user}-c", "click", user, item, NOW, props=props))
        events.append(event(f"{user}-a", "add_to_cart", user, item, NOW, props=props))
        events.append(event(f"{user}-p", "purchase", user, item, NOW, props=props))
    events.append(event("z-1", "click", "z", "K1", NOW, props={"variant": "ab1:nope"}))
    events.append(event("z-2", "click", "z", "K1", NOW, props={"variant": "unknown:x"}))
    w.ingest(events)
    w.ingest(events[:3])  # duplicates never count twice
    report = w.store.report(exp)
    rows = {r["variant"]: r for r in report["variants"]}
    exposures = Counter(r.assignment.variant for r in served.values())
    clicked = Counter(r.assignment.variant for r in list(served.values())[:10])
    for name in ("control", "more-nn"):
        counts = rows[name]["counts"]
        assert counts["exposures"] == exposures[name]
        assert counts["clicks"] == counts["carts"] == counts["purchases"] == clicked[name]
        assert rows[name]["ctr"] == pytest.approx(clicked[name] / exposures[name])
        assert rows[name]["hourly"] and rows[name]["hourly"][-1]["exposures"] > 0
    revenue = sum(rows[n]["counts"]["revenue"] for n in rows)
    assert revenue > 0
    assert "ctr_vs_control" in rows["more-nn"]
    # the exposure log holds rec_id, user, variant, items
    entry = w.client.xrange(w.keys.exp_log("ab1"), count=1)[0][1]
    assert set(entry) >= {b"rec_id", b"user", b"variant", b"surface", b"items"}
    for key in (w.keys.exp_counts("ab1"), w.keys.exp_log("ab1"),
                w.keys.exp_series("ab1", "control", "exposures")):  # fmt: skip
        assert w.client.ttl(key) > 0
    assert w.store.delete("ab1") and not w.client.exists(w.keys.exp_counts("ab1"))
    rec.close()


def test_a_variant_can_pin_a_model_version_and_its_weights(world: World) -> None:
    w = world
    version = w.model.version
    exp = parse_experiment("pin1", {"variants": [{"name": "pinned", "traffic": 100,
                                                  "model": version, "per_category": 1,
                                                  "weights": {"tr": 0, "pop": 0}}],
                                    "surfaces": ["cart"]},
                           WEIGHT_NAMES, now_ms=NOW)  # fmt: skip
    w.store.put(exp)
    rec = w.recommender()
    w.ingest([event("pin-a", "add_to_cart", "pinuser", "K1", NOW)])
    resp = rec.serve(RecRequest("pinuser", "cart", None, 5))
    assert resp.assignment.label == "pin1:pinned" and resp.model == version
    cats = [it.category for it in resp.items]
    assert len(cats) == len(set(cats))  # per_category 1
    assert rec.serve(RecRequest("pinuser", "home", None, 5)).assignment == DEFAULT
    w.store.delete("pin1")
    rec.close()


@pytest.fixture
def api(redis_url: str, world: World, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(recs_app(redis_url, world, tmp_path), headers=SERVER) as client:
        yield client


def test_http_experiments_need_the_admin_key_and_report_counts(
    api: TestClient, world: World
) -> None:
    body = {"variants": [{"name": "control", "traffic": 98}, {"name": "b", "traffic": 2}],
            "description": "98/2"}  # fmt: skip
    assert api.put("/v1/experiments/web-ab", json=body).status_code == 401
    assert api.get("/v1/experiments/web-ab").status_code == 401
    created = api.put("/v1/experiments/web-ab", json=body, headers=ADMIN)
    assert created.status_code == 201, created.text
    bad = api.put("/v1/experiments/web-ab", json={"variants": [{"name": "a", "traffic": 10}]},
                  headers=ADMIN)  # fmt: skip
    assert bad.status_code == 422 and bad.json()["field"] == "variants"
    unknown_model = {"variants": [{"name": "a", "traffic": 100, "model": "v1"}]}
    missing = api.put("/v1/experiments/x2", headers=ADMIN, json=unknown_model)
    assert missing.status_code == 422
    rec = api.get("/v1/recommendations/webuser", params={"k": 3}).json()
    assert rec["experiment"] == "web-ab" and rec["variant"].startswith("web-ab:")
    click = event("wc1", "click", "webuser", rec["items"][0]["item_id"], NOW,
                  props=rec["tracking"])  # fmt: skip
    assert api.post("/v1/events", json=click, headers=WRITE).json()["accepted"] == 1
    assert world.built is not None
    world.built.drain()  # the aggregate worker attributes the click (from the log)
    report = api.get("/v1/experiments/web-ab", headers=ADMIN).json()
    rows = {r["variant"]: r for r in report["variants"]}
    mine = rows[rec["variant"].split(":")[1]]
    assert mine["counts"]["exposures"] == 1 and mine["counts"]["clicks"] == 1
    assert mine["ctr"] == 1.0
    listed = api.get("/v1/experiments", headers=ADMIN).json()["experiments"]
    assert [e["id"] for e in listed] == ["web-ab"]
    paused = api.put("/v1/experiments/web-ab", json={"status": "paused"}, headers=ADMIN)
    assert paused.status_code == 200 and paused.json()["experiment"]["status"] == "paused"
    assert api.get("/v1/recommendations/webuser").json()["experiment"] is None
    assert api.delete("/v1/experiments/web-ab", headers=ADMIN).status_code == 200
    assert api.get("/v1/experiments/web-ab", headers=ADMIN).status_code == 404


def test_store_refuses_more_than_the_cap(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.recs.experiments as experiments

    monkeypatch.setattr(experiments, "MAX_EXPERIMENTS", 1)
    store = ExperimentStore(world.client, world.keys)
    store.put(split("cap-a"))
    with pytest.raises(ValidationError, match="at most 1"):
        store.put(split("cap-b"))
    store.put(split("cap-a", 50, 50))  # replacing is fine
    store.delete("cap-a")
