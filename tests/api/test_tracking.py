"""Segment / RudderStack tracking API: mapping, clock skew, limits, auth, gzip, batches that
never fail whole, idempotency, identify / alias merges (HTTP against the real Redis Stack)."""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.datastructures import Secret
from starlette.testclient import TestClient

from app.api.app import create_app
from app.core.errors import ValidationError
from app.core.keys import Keys
from app.core.settings import EngineConfig, Settings
from app.engine import build_engine
from app.ingest.segment import TrackingConfig, event_time, translate
from app.ingest.tracking import TrackingSink, tracking_entries
from app.obs import registry as metrics

BASIC = {"Authorization": "Basic " + base64.b64encode(b"wk_test:").decode()}
ADMIN = {"Authorization": "Bearer s3cret-admin"}
NOW = int(time.time() * 1000)


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def track(mid: str, event: str, user: str = "u1", **props: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": mid, "userId": user, "event": event,
            "properties": props, "timestamp": iso(NOW)}  # fmt: skip


@pytest.fixture
def api(redis_url: str, cfg: EngineConfig, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, write_keys=frozenset(),
        admin_key=Secret("s3cret-admin"), data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=True, engine=cfg,
        # A backend's (server SDK's) key: it may write for any shopper (docs/security.md);
        # the client-key rules are tested in tests/api/test_security.py.
        server_keys=frozenset({"wk_test"}),
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


# -- translation (pure) ----------------------------------------------------------------------------


def test_ecommerce_names_map_to_engine_events() -> None:
    def etype(msg: dict[str, Any]) -> str:
        return translate(msg, received_ms=NOW).effect

    assert etype(track("1", "Product Viewed", product_id="A", price=2.5)) == "event:view"
    assert etype(track("2", "Product Clicked", product_id="A")) == "event:click"
    assert etype(track("3", "Product Added", product_id="A", quantity=2)) == "event:add_to_cart"
    assert etype(track("4", "Product Removed", product_id="A")) == "event:remove_from_cart"
    assert etype(track("5", "Products Searched", query="lantern")) == "event:search"
    assert etype(track("6", "Cart Viewed")) == "stored"
    assert etype(track("7", "Some Custom Event")) == "stored"
    order = translate(
        track("8", "Order Completed", revenue=7.5, currency="GBP", order_id="o1",
              products=[{"product_id": "A", "quantity": 2, "price": 2.5},
                        {"sku": "B", "price": 2.5}]),
        received_ms=NOW,
    )  # fmt: skip
    assert order.event is not None and order.event.type == "purchase"
    assert [(ln.item_id, ln.qty, ln.price) for ln in order.event.lines] == [
        ("A", 2, 2.5), ("B", 1, 2.5)]  # fmt: skip
    assert order.event.props["revenue"] == 7.5 and order.event.props["currency"] == "GBP"
    added = translate(track("9", "Product Added", product_id="A", quantity=3), received_ms=NOW)
    assert added.event is not None and added.event.lines[0].qty == 3


def test_product_id_field_is_configurable() -> None:
    msg = track("1", "Product Viewed", product_id="P-1", sku="SKU-1")
    by_sku = translate(msg, received_ms=NOW, cfg=TrackingConfig(product_id_field="sku"))
    assert by_sku.event is not None and by_sku.event.lines[0].item_id == "SKU-1"
    by_id = translate(msg, received_ms=NOW)
    assert by_id.event is not None and by_id.event.lines[0].item_id == "P-1"


def test_rejections_name_the_segment_field() -> None:
    with pytest.raises(ValidationError, match=r"properties\.product_id"):
        translate(track("1", "Product Viewed"), received_ms=NOW)
    with pytest.raises(ValidationError, match=r"properties\.products"):
        translate(track("1", "Order Completed"), received_ms=NOW)
    with pytest.raises(ValidationError, match="userId or anonymousId"):
        translate({"type": "track", "messageId": "1", "event": "X"}, received_ms=NOW)
    with pytest.raises(ValidationError, match="messageId"):
        translate({"type": "page", "userId": "u"}, received_ms=NOW)
    with pytest.raises(ValidationError, match="32 KB"):
        translate(track("1", "Product Viewed", product_id="A", blob="x" * 33_000),
                  received_ms=NOW)  # fmt: skip


def test_clock_skew_correction() -> None:
    # The device's clock is an hour fast: it stamped the event 2 s before sending.
    device_now = NOW + 3_600_000
    msg = {"timestamp": iso(device_now - 2000), "sentAt": iso(device_now)}
    assert event_time(msg, None, NOW) == NOW - 2000
    assert event_time({"timestamp": iso(NOW - 5000)}, None, NOW) == NOW - 5000  # no sentAt
    assert event_time({}, None, NOW) == NOW
    # Batch-level sentAt applies to every message (what the SDKs send).
    assert event_time({"timestamp": iso(device_now - 10)}, iso(device_now), NOW) == NOW - 10


def test_identify_traits_are_flattened_and_alias_needs_both_ids() -> None:
    msg = {"type": "identify", "messageId": "i1", "userId": "u1",
           "traits": {"tier": "gold", "address": {"city": "Leeds"}, "tags": ["a"]}}  # fmt: skip
    action = translate(msg, received_ms=NOW)
    assert action.identify is not None
    assert action.identify.traits == {"tier": "gold", "address.city": "Leeds"}
    assert action.identify.dropped_traits == ("tags",)
    with pytest.raises(ValidationError, match="previousId"):
        translate({"type": "alias", "messageId": "a", "userId": "u1"}, received_ms=NOW)


# -- HTTP ------------------------------------------------------------------------------------------


def test_auth_basic_header_and_body_write_key(api: TestClient) -> None:
    msg = track("m1", "Product Viewed", product_id="A")
    assert api.post("/v1/track", json=msg).status_code == 401
    bad = {"Authorization": "Basic " + base64.b64encode(b"nope:").decode()}
    resp = api.post("/v1/track", json=msg, headers=bad)
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
    assert api.post("/v1/track", json=msg, headers=BASIC).json() == {
        "success": True, "status": "accepted", "effect": "event:view"}  # fmt: skip
    again = api.post("/v1/track", json=msg, headers={"X-Write-Key": "wk_test"}).json()
    assert again["status"] == "duplicate"  # messageId is the idempotency key
    body = {"batch": [track("m2", "Product Viewed", product_id="B")], "writeKey": "wk_test"}
    assert api.post("/v1/batch", json=body).json()["accepted"] == 1


def test_batch_with_invalid_messages_is_200_and_lists_them(
    api: TestClient, client: redis.Redis, cfg: EngineConfig
) -> None:
    batch = [
        track("b1", "Product Viewed", product_id="A", price=2.0),
        track("b2", "Product Viewed"),  # no product id
        "not a message",
        track("b3", "Product Added", product_id="A", quantity=2),
        {
            "type": "page",
            "messageId": "b4",
            "anonymousId": "v1",
            "name": "Home",
            "context": {"ip": "10.0.0.1", "userAgent": "x"},
        },
    ]
    resp = api.post("/v1/batch", json={"batch": batch, "sentAt": iso(NOW)}, headers=BASIC)
    assert resp.status_code == 200
    body = resp.json()
    assert body["success"] is True
    assert (body["accepted"], body["rejected"]) == (3, 2)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (1, "properties.product_id"), (2, "message")]  # fmt: skip
    session = api.get("/v1/users/u1/session", headers=ADMIN).json()["session"]
    assert list(session["cart"]) == ["A"]
    # The page is in the tracking log, without its context (ip, user agent).
    (stored,) = tracking_entries(client, cfg)
    assert stored["type"] == "page" and stored["name"] == "Home" and "context" not in stored
    # A retry of the same batch: nothing applied twice.
    again = api.post("/v1/batch", json={"batch": batch}, headers=BASIC).json()
    assert (again["accepted"], again["duplicate"], again["rejected"]) == (0, 3, 2)
    assert len(tracking_entries(client, cfg)) == 1


def test_gzip_body_and_size_limits(api: TestClient) -> None:
    raw = json.dumps({"batch": [track("g1", "Product Viewed", product_id="A")]}).encode()
    headers = {**BASIC, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    resp = api.post("/v1/batch", content=gzip.compress(raw), headers=headers)
    assert resp.status_code == 200 and resp.json()["accepted"] == 1
    # 600 KB of JSON compresses to almost nothing: the limit is on the uncompressed size.
    big = json.dumps({"batch": [], "pad": "x" * 600_000}).encode()
    resp = api.post("/v1/batch", content=gzip.compress(big), headers=headers)
    assert resp.status_code == 413 and resp.json()["code"] == "too_large"
    resp = api.post("/v1/batch", content=b"{not json", headers=BASIC)
    assert resp.status_code == 400 and resp.json()["success"] is False
    resp = api.post("/v1/track", json=track("big", "X", blob="y" * 40_000), headers=BASIC)
    assert resp.status_code == 413
    resp = api.post("/v1/track", json=track("t1", "Product Viewed"), headers=BASIC)
    assert resp.status_code == 400 and "product_id" in resp.json()["message"]


def test_identify_alias_and_group(api: TestClient) -> None:
    anon_view = {
        "type": "track",
        "messageId": "v1",
        "anonymousId": "visitor-1",
        "event": "Product Viewed",
        "properties": {"product_id": "ANON-ITEM"},
    }
    batch = [
        anon_view,
        {"type": "identify", "messageId": "i1", "userId": "shopper-1", "anonymousId": "visitor-1",
         "traits": {"membership": "gold", "income_bracket": "50-75k"}},
        {"type": "group", "messageId": "g1", "userId": "shopper-1", "groupId": "acme"},
    ]  # fmt: skip
    body = api.post("/v1/batch", json={"batch": batch}, headers=BASIC).json()
    assert (body["accepted"], body["rejected"]) == (3, 0), body
    profile = api.get("/v1/users/shopper-1/profile", headers=ADMIN).json()
    assert profile["traits"] == {"membership": "gold", "income_bracket": "50-75k"}
    assert profile["merged_anonymous_ids"] == ["anon:visitor-1"]
    assert [r["item"] for r in profile["session"]["recent"]] == ["ANON-ITEM"]
    # alias: an earlier id's state moves into the user.
    api.post("/v1/track", json={**anon_view, "messageId": "v2", "anonymousId": "old-id",
                                "properties": {"product_id": "OLD"}}, headers=BASIC)  # fmt: skip
    alias = {"messageId": "a1", "previousId": "old-id", "userId": "shopper-1"}
    assert api.post("/v1/alias", json=alias, headers=BASIC).json()["effect"] == "merge"
    profile = api.get("/v1/users/shopper-1/profile", headers=ADMIN).json()
    assert {r["item"] for r in profile["session"]["recent"]} == {"ANON-ITEM", "OLD"}
    # The engine's original identify form still works.
    legacy = api.post("/v1/identify", json={"user_id": "shopper-1", "traits": {"x": 1}},
                      headers={"X-Write-Key": "wk_test"})  # fmt: skip
    assert legacy.status_code == 200 and legacy.json()["status"] == "traits_only"


def test_tracking_messages_are_counted(api: TestClient) -> None:
    def count(status: str, mtype: str) -> float:
        series = ("tracking.messages", (("status", status), ("type", mtype)))
        return metrics.DEFAULT.local_totals()[0].get(series, 0.0)

    before = count("accepted", "track"), count("rejected", "invalid")
    api.post("/v1/batch", json={"batch": [track("c1", "Cart Viewed"), {"type": "bogus"}]},
             headers=BASIC)  # fmt: skip
    assert (count("accepted", "track"), count("rejected", "invalid")) == (
        before[0] + 1, before[1] + 1)  # fmt: skip


def test_tracking_keys_are_bounded(client: redis.Redis, cfg: EngineConfig) -> None:
    """The tracking log is capped (MAXLEN ~) and every remembered messageId expires."""
    tcfg = TrackingConfig(log_maxlen=200, seen_ttl_s=600)
    sink = TrackingSink(client, cfg, build_engine(client, cfg).ingestor, tcfg)
    for start in range(0, 1500, 300):
        msgs = [{"type": "page", "messageId": f"p{i}", "anonymousId": f"v{i % 7}", "name": "Home"}
                for i in range(start, start + 300)]  # fmt: skip
        sink.apply([translate(m, received_ms=NOW) for m in msgs])
    keys = Keys(cfg.key_prefix)
    lengths = [client.xlen(k) for k in keys.tracking_logs]
    assert min(lengths) > 0  # page views spread over the parts
    assert sum(lengths) <= tcfg.log_maxlen + 100 * len(lengths)  # a stream node of slack each
    seen = list(client.scan_iter(match=f"{cfg.key_prefix}trk:*", count=1000))
    assert len(seen) == 1500
    assert all(0 < client.ttl(k) <= 600 for k in seen)


def test_redis_failure_is_a_retryable_503_in_the_sdk_shape(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(actions: object) -> None:
        raise redis.ConnectionError("connection refused")

    assert api.post("/v1/track", json=track("w1", "Cart Viewed"), headers=BASIC).status_code == 200
    sink = api.app.state.tracking_sink  # type: ignore[attr-defined]
    monkeypatch.setattr(sink, "apply", down)
    resp = api.post("/v1/batch", json={"batch": [track("w2", "Cart Viewed")]}, headers=BASIC)
    assert resp.status_code == 503
    assert resp.json()["code"] == "unavailable" and resp.json()["success"] is False


def test_analytics_js_paths_and_cors(api: TestClient) -> None:
    """analytics.js (analytics-next) posts text/plain to <apiHost>/t|i|p|a|g|s and /b with the
    write key in the body; cross-origin pages need the CORS answers."""
    origin = {"Origin": "https://shop.example"}
    msg = {**track("js1", "Product Viewed", product_id="A"), "writeKey": "wk_test"}
    resp = api.post("/v1/t", content=json.dumps(msg),
                    headers={**origin, "Content-Type": "text/plain"})  # fmt: skip
    assert resp.status_code == 200 and resp.json()["effect"] == "event:view"
    assert resp.headers["access-control-allow-origin"] == "*"
    batch = {"writeKey": "wk_test", "sentAt": iso(NOW),
             "batch": [track("js2", "Product Clicked", product_id="A")]}  # fmt: skip
    resp = api.post("/v1/b", content=json.dumps(batch), headers={"Content-Type": "text/plain"})
    assert resp.json()["accepted"] == 1
    ident = {"messageId": "js3", "userId": "u1", "traits": {"tier": "gold"}, "writeKey": "wk_test"}
    assert api.post("/v1/i", json=ident).json()["effect"] == "identify"
    asks = {"Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    preflight = api.options("/v1/batch", headers={**origin, **asks})
    assert preflight.status_code == 204
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    denied = api.post("/v1/t", json=track("js4", "X"), headers=origin)
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "*"
