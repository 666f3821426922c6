"""Live price and stock (`catalog_update`) on the real server: guardrails, atomicity, history."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot
from starlette.testclient import TestClient

from app.catalog.calls import (
    REMOVE,
    PriceStockChange,
    catalog_item,
    catalog_update,
    parse_change,
)
from app.catalog.index import CatalogConfig, CatalogKeys, ProductRecord, create_index, redis_cmd
from app.catalog.search import Filters, ProductSearch, parse_search
from app.catalog.vectorizers import get_vectorizer
from app.core.errors import BadArgumentError, ValidationError
from app.core.settings import EngineConfig
from loaders.catalog import FeedRow, load_rows
from tests.catalog_fixtures import ADMIN, catalog_app, dropping

ITEM = "85123A"
START_PRICE = 2.55


def make_item(client: redis.Redis, cfg: CatalogConfig, ckeys: CatalogKeys, stock: int = 10) -> None:
    rec = ProductRecord(item_id=ITEM, title="WHITE HANGING HEART T-LIGHT HOLDER",
                        price=START_PRICE, stock=stock, line_no=1)  # fmt: skip
    report = load_rows(client, cfg, ckeys, [FeedRow(1, record=rec, item_id=ITEM)],
                       get_vectorizer(), source="feed")  # fmt: skip
    assert report.created == 1, report.summary()


@dataclass(frozen=True)
class Case:
    name: str
    change: PriceStockChange
    status: str
    reason: str = ""
    price: float = START_PRICE
    stock: int = 10
    setup: tuple[PriceStockChange, ...] = field(default=())


AUTO = "automation"
CASES = [
    Case("automation +9.8% ok", PriceStockChange(AUTO, price=2.80), "ok", price=2.80),
    Case("automation +40% velocity", PriceStockChange(AUTO, price=3.57), "refused", "velocity"),
    Case("automation -40% velocity", PriceStockChange(AUTO, price=1.53), "refused", "velocity"),
    Case("exactly +30% ok", PriceStockChange(AUTO, price=3.315), "ok", price=3.315),
    Case("manual +40% ok", PriceStockChange("manual", price=3.57), "ok", price=3.57),
    Case("feed velocity", PriceStockChange("feed", price=5.0), "refused", "velocity"),
    Case(
        "window keeps earlier prices",
        PriceStockChange(AUTO, price=3.60),  # +20% from 3.00, but +41% from 2.55 this hour
        "refused",
        "velocity",
        price=3.00,
        setup=(PriceStockChange(AUTO, price=3.00),),
    ),
    Case(
        "lock refuses automation",
        PriceStockChange(AUTO, price=2.60),
        "refused",
        "locked",
        setup=(PriceStockChange(locked=True, lock_reason="promo"),),
    ),
    Case(
        "manual overrides the lock",
        PriceStockChange("manual", price=1.99),
        "ok",
        price=1.99,
        setup=(PriceStockChange(locked=True),),
    ),
    Case(
        "unlock restores automation",
        PriceStockChange(AUTO, price=2.60),
        "ok",
        price=2.60,
        setup=(PriceStockChange(locked=True), PriceStockChange(locked=False)),
    ),
    Case(
        "floor",
        PriceStockChange(AUTO, price=2.20),
        "refused",
        "below_floor",
        setup=(PriceStockChange(floor=2.30),),
    ),
    Case(
        "ceiling binds manual",
        PriceStockChange("manual", price=3.50),
        "refused",
        "above_ceiling",
        setup=(PriceStockChange(ceiling=3.00),),
    ),
    Case(
        "removed floor",
        PriceStockChange(AUTO, price=2.20),
        "ok",
        price=2.20,
        setup=(PriceStockChange(floor=2.30), PriceStockChange(floor=REMOVE)),
    ),
    Case(
        "refusal is atomic: stock untouched",
        PriceStockChange(AUTO, price=9.0, stock=0),
        "refused",
        "velocity",
    ),
    Case("stock to 0", PriceStockChange(AUTO, stock=0), "ok", stock=0),
    Case("stock delta", PriceStockChange(AUTO, stock_delta=-4), "ok", stock=6),
    Case(
        "oversell refused", PriceStockChange(AUTO, stock_delta=-11), "refused", "insufficient_stock"
    ),
    Case(
        "price and stock together",
        PriceStockChange(AUTO, price=2.70, stock=3),
        "ok",
        price=2.70,
        stock=3,
    ),
    Case("same price is a no-op", PriceStockChange(AUTO, price=START_PRICE), "ok"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_guardrails_table(client: redis.Redis, cfg: EngineConfig, case: Case) -> None:
    catalog_cfg = CatalogConfig(key_prefix=cfg.key_prefix)
    ckeys = CatalogKeys(cfg.key_prefix)
    make_item(client, catalog_cfg, ckeys)
    for step in case.setup:
        assert catalog_update(client, catalog_cfg, ckeys, ITEM, step).status == "ok"
    before = catalog_item(client, ckeys, ITEM, 100)
    assert before is not None
    result = catalog_update(client, catalog_cfg, ckeys, ITEM, case.change)
    assert (result.status, result.reason) == (case.status, case.reason), result.detail
    assert result.price == pytest.approx(case.price)
    assert result.stock == case.stock
    after = catalog_item(client, ckeys, ITEM, 100)
    assert after is not None
    assert after.doc["price"] == pytest.approx(case.price)
    assert after.doc["stock"] == case.stock
    assert after.doc["in_stock"] is (case.stock > 0)
    changed = case.status == "ok" and case.price != before.doc["price"]
    # Every accepted price change is one new point of the history; a refusal writes nothing.
    assert len(after.price_history) == len(before.price_history) + (1 if changed else 0)
    if changed:
        assert after.price_history[0][1] == pytest.approx(case.price)
    if case.status == "refused":
        assert after.doc == before.doc
        assert result.detail


def test_velocity_window_slides(client: redis.Redis, cfg: EngineConfig) -> None:
    catalog_cfg = CatalogConfig(key_prefix=cfg.key_prefix, price_window_ms=300)
    ckeys = CatalogKeys(cfg.key_prefix)
    make_item(client, catalog_cfg, ckeys)
    auto = "automation"
    first = catalog_update(client, catalog_cfg, ckeys, ITEM, PriceStockChange(auto, price=3.0))
    assert first.status == "ok"
    refused = catalog_update(client, catalog_cfg, ckeys, ITEM, PriceStockChange(auto, price=3.6))
    assert refused.reason == "velocity"
    time.sleep(0.4)  # 2.55 is out of the window now: 3.0 -> 3.6 is +20%
    ok = catalog_update(client, catalog_cfg, ckeys, ITEM, PriceStockChange(auto, price=3.6))
    assert ok.status == "ok" and ok.price == pytest.approx(3.6)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (PriceStockChange("automation", floor=1.0), "manual"),
        (PriceStockChange("feed", locked=True), "manual"),
        (PriceStockChange("manual", floor=3.0, ceiling=2.0), "above ceiling"),
        (PriceStockChange("manual", stock=1, stock_delta=1), "not both"),
        (PriceStockChange("oops", price=1.0), "source"),
    ],
)
def test_bad_arguments_are_typed_errors_and_write_nothing(
    client: redis.Redis, cfg: EngineConfig, change: PriceStockChange, match: str
) -> None:
    catalog_cfg = CatalogConfig(key_prefix=cfg.key_prefix)
    ckeys = CatalogKeys(cfg.key_prefix)
    make_item(client, catalog_cfg, ckeys)
    with pytest.raises(BadArgumentError, match=match):
        catalog_update(client, catalog_cfg, ckeys, ITEM, change)
    assert client.exists(ckeys.guard(ITEM)) == 0


def test_unknown_item_is_not_found(client: redis.Redis, cfg: EngineConfig) -> None:
    catalog_cfg = CatalogConfig(key_prefix=cfg.key_prefix)
    ckeys = CatalogKeys(cfg.key_prefix)
    result = catalog_update(client, catalog_cfg, ckeys, "NOPE", PriceStockChange(price=1.0))
    assert result.status == "not_found"
    assert client.exists(*ckeys.item_keys("NOPE")) == 0


def test_price_history_series_is_in_the_items_slot(client: redis.Redis, cfg: EngineConfig) -> None:
    catalog_cfg = CatalogConfig(key_prefix=cfg.key_prefix)
    ckeys = CatalogKeys(cfg.key_prefix)
    make_item(client, catalog_cfg, ckeys)
    catalog_update(client, catalog_cfg, ckeys, ITEM, PriceStockChange(price=2.75))
    keys = ckeys.item_keys(ITEM)
    assert keys == [f"{cfg.key_prefix}p:{{{ITEM}}}", f"{cfg.key_prefix}i:{{{ITEM}}}:guard",
                    f"{cfg.key_prefix}i:{{{ITEM}}}:price"]  # fmt: skip
    assert len({key_slot(k.encode()) for k in keys}) == 1  # one cluster slot per item
    info = _decoded(redis_cmd(client, "TS.INFO", ckeys.price(ITEM)))
    assert info["retentionTime"] == catalog_cfg.price_retention_ms
    points = client.ts().range(ckeys.price(ITEM), "-", "+")
    assert [p for _, p in points] == [2.55, 2.75]


def _decoded(raw: object) -> dict[str, object]:
    if isinstance(raw, list):
        raw = dict(zip(raw[::2], raw[1::2], strict=False))
    assert isinstance(raw, dict)
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"price": "2.5"}, "price"),
        ({"price": -1}, "price"),
        ({"price": float("inf")}, "price"),
        ({"stock": 1.5}, "stock"),
        ({"stock": True}, "stock"),
        ({"colour": "red"}, "colour"),
        ({"source": "robot", "price": 1}, "source"),
        ({"source": "automation", "floor": 1}, "source"),
        ({"locked": "yes"}, "locked"),
        ({"stock": 1, "stock_delta": 1}, "stock_delta"),
    ],
)
def test_patch_body_validation(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_change(body)
    assert err.value.field == field


def test_patch_over_http(
    client: redis.Redis, cfg: EngineConfig, tmp_path: Path, redis_url: str
) -> None:
    catalog_cfg = CatalogConfig(key_prefix=cfg.key_prefix)
    ckeys = CatalogKeys(cfg.key_prefix)
    with dropping(client, ckeys):
        create_index(client, ckeys, get_vectorizer())
        make_item(client, catalog_cfg, ckeys)
        with TestClient(catalog_app(redis_url, cfg, tmp_path)) as api:
            url = f"/v1/items/{ITEM}"
            assert api.patch(url, json={"price": 2.6}).status_code == 401
            assert api.patch(url, json={"price": 2.6}, headers={"Authorization": "Bearer no"}
                             ).status_code == 401  # fmt: skip
            ok = api.patch(url, json={"price": 2.6, "stock": 5}, headers=ADMIN)
            assert ok.status_code == 200, ok.text
            assert ok.json()["price"] == 2.6 and ok.json()["in_stock"] is True
            lock = api.patch(url, json={"locked": True, "lock_reason": "promo"}, headers=ADMIN)
            assert lock.json()["guard"]["locked"] is True
            refused = api.patch(url, json={"price": 2.7, "source": "automation"}, headers=ADMIN)
            assert refused.status_code == 409
            assert refused.json()["reason"] == "locked" and "promo" in refused.json()["detail"]
            bad = api.patch(url, json={"price": "x"}, headers=ADMIN)
            assert bad.status_code == 422 and bad.json()["field"] == "price"
            assert api.patch("/v1/items/NOPE", json={"price": 1}, headers=ADMIN).status_code == 404
            assert api.patch("/v1/items/bad{id}", json={"price": 1}, headers=ADMIN
                             ).status_code == 422  # fmt: skip
            item = api.get(url).json()
            assert item["item"]["price"] == 2.6 and "vec" not in item["item"]
            assert item["guard"] == {"floor": None, "ceiling": None, "locked": True,
                                     "lock_reason": "promo"}  # fmt: skip
            assert [p["price"] for p in item["price_history"]] == [2.6, 2.55]
            # Stock 0 takes the item out of in-stock search at once.
            search = ProductSearch(client, catalog_cfg, get_vectorizer(), cfg)
            req = parse_search({"q": "heart holder"})
            assert [h.item_id for h in search.search(req).hits] == [ITEM]
            assert api.patch(url, json={"stock": 0}, headers=ADMIN).json()["in_stock"] is False
            assert search.search(req).hits == []
            assert search.knn(search.embed("heart"), Filters(), 5) == []
            assert api.get("/v1/search", params={"q": "heart holder"}).json()["hits"] == []
            anyst = api.get("/v1/search", params={"q": "heart holder", "in_stock": "any"})
            assert [h["item_id"] for h in anyst.json()["hits"]] == [ITEM]
