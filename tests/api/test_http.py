"""The HTTP API end to end (Starlette TestClient against the real Redis Stack)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.datastructures import Secret
from starlette.testclient import TestClient

from app.api.app import create_app
from app.core.keys import Keys
from app.core.settings import EngineConfig, Settings
from app.ingest.log import log_length

WRITE = {"X-Write-Key": "wk_test"}
ADMIN = {"Authorization": "Bearer s3cret-admin"}
NOW = int(time.time() * 1000)


@pytest.fixture
def api(redis_url: str, cfg: EngineConfig, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, server_keys=frozenset({"wk_test"}),
        write_keys=frozenset(), admin_key=Secret("s3cret-admin"),
        data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=True, engine=cfg,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def view(event_id: str, user: str = "42", item: str = "A", **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "type": "view", "user_id": user, "session_id": "s1",
            "item_id": item, "ts": NOW, **extra}  # fmt: skip


def test_health_reports_modules_and_library(api: TestClient) -> None:
    resp = api.get("/health")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "ok"
    assert set(body["modules"]) >= {"search", "ReJSON", "timeseries", "bf"}
    assert body["library_version"] == body["expected_library_version"]
    assert resp.headers["x-request-id"]


def test_event_ingestion_needs_the_write_key(
    api: TestClient, client: redis.Redis, keys: Keys
) -> None:
    assert api.post("/v1/events", json=view("e1")).status_code == 401
    assert (
        api.post("/v1/events", json=view("e1"), headers={"X-Write-Key": "nope"}).status_code == 401
    )
    assert client.exists(keys.user("42", "session")) == 0


def test_single_event_accepted_then_duplicate(api: TestClient) -> None:
    first = api.post("/v1/events", json=view("e1"), headers=WRITE)
    assert first.status_code == 200
    # Item "A" is not in this test's (empty) catalog: accepted, and said so.
    unknown = {"warning": "unknown_item", "unknown_items": ["A"]}
    assert first.json()["results"] == [{"event_id": "e1", "status": "accepted", **unknown}]
    again = api.post("/v1/events", json=view("e1"), headers=WRITE)
    assert again.json()["results"] == [{"event_id": "e1", "status": "duplicate", **unknown}]


def test_invalid_single_event_is_422_naming_the_field(
    api: TestClient, client: redis.Redis, cfg: EngineConfig
) -> None:
    for body, field in [
        ({**view("e1"), "ts": 1700000000}, "ts"),
        ({**view("e1"), "type": "teleport"}, "type"),
        ({k: v for k, v in view("e1").items() if k != "item_id"}, "item_id"),
        ({**view("e1"), "user_id": "bad{tag}"}, "user_id"),
        ({**view("e1"), "qty": 0}, "qty"),
        ({"event_id": "p", "type": "purchase", "user_id": "1", "items": []}, "items"),
        ({"event_id": "s", "type": "search", "user_id": "1"}, "props.query"),
    ]:
        resp = api.post("/v1/events", json=body, headers=WRITE)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["field"] == field
    bad_json = api.post("/v1/events", content=b"{nope", headers=WRITE)
    assert bad_json.status_code == 422 and bad_json.json()["field"] == "body"
    layout = cfg.keys().layout.encode()  # written at start-up, not by the requests
    assert [k for k in client.keys(cfg.key_prefix + "*") if k != layout] == []


def test_batch_reports_each_event(api: TestClient, client: redis.Redis, keys: Keys) -> None:
    batch = {
        "events": [view("b1"), {**view("b2"), "ts": "yesterday"}, view("b1"), view("b3", item="B")]
    }
    resp = api.post("/v1/events", json=batch, headers=WRITE)
    assert resp.status_code == 200
    body = resp.json()
    assert [r["status"] for r in body["results"]] == [
        "accepted",
        "rejected",
        "duplicate",
        "accepted",
    ]
    assert body["results"][1]["field"] == "ts"
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (2, 1, 1)
    assert log_length(client, keys) == 2


def test_session_and_profile_need_proof(api: TestClient) -> None:
    api.post(
        "/v1/events", json=view("e1", props={"category": "candles", "price": 3.0}), headers=WRITE
    )
    assert api.get("/v1/users/42/session").status_code == 403  # no key, no shopper token
    assert api.get("/v1/users/42/session", headers={"Authorization": "Bearer x"}).status_code == 401
    session = api.get("/v1/users/42/session", headers=ADMIN)
    assert session.status_code == 200
    assert session.json()["session"]["recent"][0]["item"] == "A"
    profile = api.get("/v1/users/42/profile", headers=ADMIN).json()
    assert profile["affinities"][0]["attribute"] in ("cat:candles", "price:2-5")
    assert profile["seen_items_estimate"] == 1
    assert api.get("/v1/users/nobody/profile", headers=ADMIN).status_code == 404
    assert api.get("/v1/users/nobody/session", headers=ADMIN).status_code == 404


def test_identify_merges_the_anonymous_session(
    api: TestClient, client: redis.Redis, keys: Keys
) -> None:
    anon_view = {**view("a1", item="ANON-ITEM", props={"category": "toys", "price": 4.0})}
    del anon_view["user_id"]
    anon_view["anonymous_id"] = "visitor-9"
    api.post("/v1/events", json=anon_view, headers=WRITE)
    api.post("/v1/events", json=view("k1", user="77", item="KNOWN"), headers=WRITE)

    body = {
        "user_id": "77",
        "anonymous_id": "visitor-9",
        "traits": {"membership": "gold", "income": "50-75k"},
    }
    resp = api.post("/v1/identify", json=body, headers=WRITE)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "merged"
    profile = api.get("/v1/users/77/profile", headers=ADMIN).json()
    assert profile["traits"] == {"membership": "gold", "income": "50-75k"}
    assert profile["merged_anonymous_ids"] == ["anon:visitor-9"]
    assert {r["item"] for r in profile["session"]["recent"]} == {"ANON-ITEM", "KNOWN"}
    assert "cat:toys" in {a["attribute"] for a in profile["affinities"]}
    assert client.execute_command("BF.EXISTS", keys.user("77", "seen"), "ANON-ITEM") == 1
    assert client.exists(*keys.user_all("anon:visitor-9")) == 0
    # Identify again (a client retry): nothing is added twice.
    again = api.post("/v1/identify", json=body, headers=WRITE).json()
    assert again["status"] in ("already_merged", "merged")
    profile2 = api.get("/v1/users/77/profile", headers=ADMIN).json()
    assert profile2["session"]["counters"] == profile["session"]["counters"]
    assert profile2["merged_anonymous_ids"] == ["anon:visitor-9"]


def test_identify_validates_traits(api: TestClient) -> None:
    resp = api.post(
        "/v1/identify", json={"user_id": "1", "traits": {"x": {"nested": 1}}}, headers=WRITE
    )
    assert resp.status_code == 422 and resp.json()["field"] == "traits.x"
    resp = api.post("/v1/identify", json={"traits": {}}, headers=WRITE)
    assert resp.status_code == 422 and resp.json()["field"] == "user_id"


def test_trending_endpoint(redis_url: str, cfg: EngineConfig, tmp_path: Path) -> None:
    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, server_keys=frozenset({"wk_test"}),
        write_keys=frozenset(), admin_key=None, data_dir=tmp_path,
        sample_data=tmp_path / "none", log_json=False, engine=cfg, agg_workers=1,
    )  # fmt: skip
    with TestClient(create_app(settings)) as api:
        events = [view(f"t{i}", user=f"u{i}", item="HOT" if i % 3 else "WARM") for i in range(9)]
        posted = api.post("/v1/events", json={"events": events}, headers=WRITE)
        assert posted.status_code == 200 and posted.json()["accepted"] == 9, posted.text
        # The in-process aggregate worker applies the log within moments.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            resp = api.get("/v1/trending?type=view&k=2")
            assert resp.status_code == 200
            if sum(it["count"] for it in resp.json()["items"]) == 9:
                break
            time.sleep(0.05)
        health = api.get("/health").json()["ingest"]
        check_trending(api, resp.json()["items"])
    assert health["log_lag_max"] == 0 and health["alerts"] == []
    assert health["freshness_p99_ms"] is not None and health["freshness_p99_ms"] < 10_000


def check_trending(api: TestClient, items: list[dict[str, Any]]) -> None:
    assert [it["item_id"] for it in items] == ["HOT", "WARM"]
    assert [it["count"] for it in items] == [6, 3]
    assert api.get("/v1/trending?type=nope").status_code == 422
    assert api.get("/v1/trending?k=1000").status_code == 422


def test_admin_endpoints_disabled_without_a_configured_key(
    redis_url: str, cfg: EngineConfig, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, write_keys=frozenset(), admin_key=None,
        data_dir=tmp_path, sample_data=tmp_path / "none", log_json=False, engine=cfg,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/users/42/session", headers=ADMIN).status_code == 401
        assert client.post("/v1/events", json=view("e"), headers=WRITE).status_code == 401
