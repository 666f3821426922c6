"""Events checked against the catalog (issue 16, items 10 and 11): a cart line without a
price gets the catalog's, an unknown item is accepted but flagged and counted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from app.catalog.index import CatalogConfig, CatalogKeys
from app.catalog.vectorizers import get_vectorizer
from app.core.keys import Keys
from app.core.settings import EngineConfig, load_settings
from app.obs.registry import MetricsConfig
from app.obs.series import MetricKeys
from app.obs.views import read_totals
from loaders.catalog import load_rows, online_retail_rows
from tests.web_fixtures import WRITE, full_app

NOW = int(time.time() * 1000)


@pytest.fixture
def api(
    redis_url: str, cfg: EngineConfig, tmp_path: Path, client: redis.Redis
) -> Iterator[TestClient]:
    rows, _ = online_retail_rows(load_settings(None).sample_data)
    rows = [r for r in rows if r.record is not None and r.record.item_id in ("85123A", "71053")]
    prefix = cfg.key_prefix
    load_rows(client, CatalogConfig(key_prefix=prefix), CatalogKeys(prefix), rows,
              get_vectorizer(), source="online-retail")  # fmt: skip
    app = full_app(redis_url, cfg, tmp_path, catalog=False, recommendations=False,
                   metrics_config=MetricsConfig(flush_s=60))  # fmt: skip
    with TestClient(app) as tc:
        yield tc


def cart(event_id: str, item: str, **props: object) -> dict[str, object]:
    return {"event_id": event_id, "type": "add_to_cart", "user_id": "u-cat", "session_id": "s",
            "item_id": item, "ts": NOW, "props": props}  # fmt: skip


def test_a_cart_line_without_a_price_gets_the_catalogs(
    api: TestClient, client: redis.Redis, keys: Keys
) -> None:
    price = client.json().get(CatalogKeys(keys.prefix).doc("85123A"), "$.price")[0]
    assert price > 0
    body = api.post("/v1/events", json=cart("c1", "85123A"), headers=WRITE).json()
    assert body["results"] == [{"event_id": "c1", "status": "accepted"}]  # known: no warning
    api.post("/v1/events", json=cart("c2", "71053", price=9.99), headers=WRITE)
    lines = client.json().get(keys.user("u-cat", "session"))["cart"]
    assert lines["85123A"]["price"] == price  # from the catalog
    assert lines["71053"]["price"] == 9.99  # the event's own price wins


def test_unknown_items_are_accepted_flagged_and_counted(
    api: TestClient, client: redis.Redis, cfg: EngineConfig
) -> None:
    events = [
        cart("u1", "NOT-IN-CATALOG"),
        cart("u2", "85123A"),
        {"event_id": "u3", "type": "purchase", "user_id": "u-cat", "session_id": "s", "ts": NOW,
         "items": [{"item_id": "85123A", "qty": 1}, {"item_id": "GHOST", "qty": 2}]},
    ]  # fmt: skip
    body = api.post("/v1/events", json={"events": events}, headers=WRITE).json()
    assert body["accepted"] == 3
    flagged = {"warning": "unknown_item", "unknown_items": ["NOT-IN-CATALOG"]}
    assert body["results"][0] == {"event_id": "u1", "status": "accepted", **flagged}
    assert "warning" not in body["results"][1]
    assert body["results"][2]["unknown_items"] == ["GHOST"]
    again = api.post("/v1/events", json={"events": events[:1]}, headers=WRITE).json()
    assert again["results"][0]["status"] == "duplicate"  # still flagged, not counted again
    assert again["results"][0]["warning"] == "unknown_item"

    mw = api.app.state.metrics  # type: ignore[attr-defined]
    assert mw.flusher is not None and mw.flusher.flush() > 0
    totals = read_totals(client, MetricKeys(cfg.key_prefix))
    assert totals.counters[("events.unknown_item", ())] == 2
    assert "retail_events_unknown_item_total 2" in api.get("/metrics").text
    assert api.get("/v1/stats").json()["events"]["unknown_item"] == 2
