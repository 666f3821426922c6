"""Catalog loads on the real server: feeds (JSONL, CSV), bad rows, idempotency, deletions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from app.catalog.calls import PriceStockChange, catalog_item, catalog_update
from app.catalog.index import CatalogConfig, CatalogKeys, create_index, ft_info, read_meta
from app.catalog.vectorizers import HashedNgramVectorizer, get_vectorizer
from app.core.errors import SearchIndexError, ValidationError
from app.core.settings import EngineConfig
from loaders.catalog import (
    LoadReport,
    feed_rows,
    load_feed,
    load_online_retail,
    main,
    online_retail_rows,
    synthetic_stock,
)
from tests.catalog_fixtures import SAMPLE, dropping


def product(item: str, **extra: Any) -> dict[str, Any]:
    return {"item_id": item, "title": f"RED HEART LANTERN {item}", "price": 2.5, "stock": 5,
            **extra}  # fmt: skip


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def setup(client: redis.Redis, cfg: EngineConfig) -> tuple[CatalogConfig, CatalogKeys]:
    return CatalogConfig(key_prefix=cfg.key_prefix), CatalogKeys(cfg.key_prefix)


def load(client: redis.Redis, setup: Any, path: Path, **kw: Any) -> LoadReport:
    catalog_cfg, ckeys = setup
    return load_feed(client, catalog_cfg, ckeys, path, get_vectorizer(), **kw)


def test_jsonl_bad_rows_are_reported_with_line_and_reason(
    client: redis.Redis, setup: Any, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "feed.jsonl", [
        product("A1"),                                   # 1
        "{not json",                                     # 2
        product("A2", price=-3),                         # 3
        "",                                              # 4 (blank: skipped)
        {"title": "no id", "price": 1},                  # 5
        product("A3", colour="red"),                     # 6
        product("A1"),                                   # 7 duplicate of line 1
        product("bad{id}"),                              # 8
        product("A4", stock=1.5),                        # 9
        product("A5", tags=["x", "y"], category="gifts", description="A lovely lantern."),  # 10
        [1, 2],                                          # 11
        product("A6", price=float("nan")),               # 12 (json.dumps writes NaN)
    ])  # fmt: skip
    report = load(client, setup, path)
    reasons = dict(report.rejected_examples)
    assert report.created == 2 and report.rejected == 9, report.summary()
    assert reasons[2].startswith("line: invalid JSON")
    assert reasons[3].startswith("price:")
    assert reasons[5] == "item_id: is required"
    assert reasons[6].startswith("colour: unknown field")
    assert reasons[7] == "item_id: duplicate of line 1"
    assert reasons[8].startswith("item_id:")
    assert reasons[9].startswith("stock: must be an integer")
    assert reasons[11] == "line: must be a JSON object"
    assert reasons[12].startswith("price:")
    assert "rejected line 3: price" in report.summary()
    _, ckeys = setup
    doc = catalog_item(client, ckeys, "A5")
    assert doc is not None
    assert doc.doc["category"] == "gifts" and doc.doc["category_source"] == "feed"
    assert doc.doc["tags"] == ["x", "y"] and doc.doc["description"] == "A lovely lantern."
    derived = catalog_item(client, ckeys, "A1")
    assert derived is not None
    assert derived.doc["category"] == "candles_lights"
    assert derived.doc["category_source"] == "derived"


def test_csv_feed_with_bad_rows(client: redis.Redis, setup: Any, tmp_path: Path) -> None:
    path = tmp_path / "feed.csv"
    path.write_text(
        "item_id,title,price,stock,tags,deleted\n"      # 1
        "C1,Zinc Heart Lantern,3.5,7,garden|metal,\n"   # 2
        "C2,Blue Mug,abc,1,,\n"                          # 3
        "C3,,1.0,1,,\n"                                  # 4
        "C4,\"Mug, \"\"large\"\"\",4.25,,,\n"            # 5: quoted, stock empty
        "C5,Too,Many,Fields,Here,x,y\n"                  # 6
        "C6,Red Mug,2,0,,\n"                             # 7
    )  # fmt: skip
    report = load(client, setup, path)
    assert (report.created, report.rejected) == (3, 3), report.summary()
    reasons = dict(report.rejected_examples)
    assert reasons[3].startswith("price: must be a number")
    assert reasons[4].startswith("title:")
    assert reasons[6] == "line: 7 fields, the header has 6"
    _, ckeys = setup
    c1 = catalog_item(client, ckeys, "C1")
    c4 = catalog_item(client, ckeys, "C4")
    c6 = catalog_item(client, ckeys, "C6")
    assert c1 is not None and c4 is not None and c6 is not None
    assert c1.doc["tags"] == ["garden", "metal"] and c1.doc["stock"] == 7
    assert c4.doc["title"] == 'Mug, "large"' and c4.doc["stock"] == 0  # no stock: created at 0
    assert c6.doc["in_stock"] is False


def test_missing_csv_columns_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "feed.csv"
    path.write_text("sku,name\nA,B\n")
    with pytest.raises(ValidationError, match="missing column"):
        list(feed_rows(path))


def test_rerun_is_idempotent_and_changes_are_merged(
    client: redis.Redis, setup: Any, tmp_path: Path
) -> None:
    rows = [product(f"P{i}") for i in range(30)]
    path = write_jsonl(tmp_path / "feed.jsonl", rows)
    first = load(client, setup, path, batch=7)
    assert (first.created, first.updated, first.unchanged) == (30, 0, 0)
    _, ckeys = setup
    before = {r["item_id"]: client.json().get(ckeys.doc(r["item_id"])) for r in rows}
    again = load(client, setup, path, batch=7)
    assert (again.created, again.updated, again.unchanged, again.rejected) == (0, 0, 30, 0)
    after = {r["item_id"]: client.json().get(ckeys.doc(r["item_id"])) for r in rows}
    assert after == before  # not rewritten: updated_ms and everything else identical

    # A title change and a price change: merged, live stock kept when the feed has none.
    catalog_cfg, _ = setup
    catalog_update(client, catalog_cfg, ckeys, "P2", PriceStockChange(stock=99))
    rows[1] = {**rows[1], "title": "NEW TITLE"}
    rows[2] = {k: v for k, v in rows[2].items() if k != "stock"} | {"price": 2.75}
    third = load(client, setup, write_jsonl(tmp_path / "feed.jsonl", rows))
    assert (third.created, third.updated, third.unchanged) == (0, 2, 28), third.summary()
    p1, p2 = catalog_item(client, ckeys, "P1"), catalog_item(client, ckeys, "P2")
    assert p1 is not None and p2 is not None
    assert p1.doc["title"] == "NEW TITLE" and p1.doc["created_ms"] == before["P1"]["created_ms"]
    assert p2.doc["price"] == 2.75 and p2.doc["stock"] == 99
    assert [p for _, p in p2.price_history] == [2.75, 2.5]


def test_feed_price_change_goes_through_the_guardrails(
    client: redis.Redis, setup: Any, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "feed.jsonl", [product("G1"), product("G2")])
    load(client, setup, path)
    catalog_cfg, ckeys = setup
    catalog_update(client, catalog_cfg, ckeys, "G2", PriceStockChange(locked=True))
    path = write_jsonl(
        tmp_path / "feed.jsonl", [product("G1", price=9.0), product("G2", price=2.6)]
    )
    report = load(client, setup, path)
    assert report.updated == 2
    assert report.price_refused == {"velocity": 1, "locked": 1}
    assert "price change refused (velocity): 1 (e.g. G1)" in report.summary()
    g1 = catalog_item(client, ckeys, "G1")
    assert g1 is not None and g1.doc["price"] == 2.5
    # A refused price is retried by the next run (its product is not marked unchanged):
    # with a wider velocity limit G1's goes through; G2 stays locked and is retried again.
    wide = replace(catalog_cfg, max_change_pct=1000.0)
    retry = load_feed(client, wide, ckeys, path, get_vectorizer())
    assert retry.updated == 2 and retry.price_refused == {"locked": 1}, retry.summary()
    g1 = catalog_item(client, ckeys, "G1")
    assert g1 is not None and g1.doc["price"] == 9.0
    third = load_feed(client, wide, ckeys, path, get_vectorizer())
    assert (third.unchanged, third.updated) == (1, 1)


def test_deletions_and_delete_missing(client: redis.Redis, setup: Any, tmp_path: Path) -> None:
    rows = [product(f"D{i}") for i in range(10)]
    load(client, setup, write_jsonl(tmp_path / "f.jsonl", rows), source="shop1")
    load(client, setup, write_jsonl(tmp_path / "o.jsonl", [product("OTHER")]), source="shop2")
    _, ckeys = setup
    # An explicit deletion row.
    report = load(client, setup, write_jsonl(tmp_path / "d.jsonl", [
        {"item_id": "D0", "deleted": True}]), source="shop1")  # fmt: skip
    assert report.deleted == 1 and client.exists(*ckeys.item_keys("D0")) == 0
    # Missing from a full feed: deleted, but only this source's products; a row with an
    # error still protects its product.
    keep = [*rows[1:8], {**rows[8], "price": "bad"}]  # D9 missing, D8 has a bad row
    report = load(client, setup, write_jsonl(tmp_path / "f.jsonl", keep), source="shop1",
                  delete_missing=True)  # fmt: skip
    assert report.deleted == 1 and report.rejected == 1, report.summary()
    assert client.exists(ckeys.doc("D9")) == 0
    assert client.exists(ckeys.doc("D8")) == 1 and client.exists(ckeys.doc("OTHER")) == 1
    # A feed that would delete most products is refused with a warning.
    report = load(client, setup, write_jsonl(tmp_path / "f.jsonl", [rows[1]]), source="shop1",
                  delete_missing=True)  # fmt: skip
    assert report.deleted == 0 and "nothing deleted" in report.warnings[0]


def test_loader_refuses_an_index_built_with_another_vectorizer(
    client: redis.Redis, setup: Any, tmp_path: Path
) -> None:
    catalog_cfg, ckeys = setup

    class Other(HashedNgramVectorizer):
        model: str = "test-other-64"
        dims: int | None = 64

    with dropping(client, ckeys):
        create_index(client, ckeys, get_vectorizer())
        with pytest.raises(SearchIndexError, match="test-other-64"):
            load_feed(client, catalog_cfg, ckeys, write_jsonl(tmp_path / "f.jsonl",
                      [product("X")]), Other())  # fmt: skip


def test_online_retail_catalog(client: redis.Redis, setup: Any) -> None:
    catalog_cfg, ckeys = setup
    with dropping(client, ckeys):
        create_index(client, ckeys, get_vectorizer())
        report = load_online_retail(client, catalog_cfg, ckeys, SAMPLE, get_vectorizer())
        assert report.rejected == 0, report.summary()
        assert report.created == report.skipped.kept if report.skipped else False
        assert report.created > 3000
        assert report.skipped is not None and report.skipped.counts["non_product"] > 0
        assert "non_product" in report.summary()
        again = load_online_retail(client, catalog_cfg, ckeys, SAMPLE, get_vectorizer())
        assert (again.created, again.updated, again.unchanged) == (0, 0, report.created)
        doc = catalog_item(client, ckeys, "85123A")
        assert doc is not None
        assert doc.doc["title"] == "WHITE HANGING HEART T-LIGHT HOLDER"
        assert doc.doc["category"] == "candles_lights"
        assert doc.doc["category_source"] == "derived"
        assert doc.doc["stock_source"] == "synthetic"
        assert doc.doc["stock"] == synthetic_stock("85123A")
        assert doc.doc["popularity"] > 1000
        meta = read_meta(client, ckeys)
        info = ft_info(client, ckeys.alias)
        assert meta is not None and info is not None
        assert int(info["num_docs"]) == report.created
        assert int(info["hash_indexing_failures"]) == 0


def test_synthetic_stock_is_deterministic_with_some_out_of_stock() -> None:
    rows, _ = online_retail_rows(SAMPLE)
    stocks = [r.record.stock for r in rows if r.record is not None]
    assert stocks == [synthetic_stock(r.item_id or "") for r in rows]
    zero = sum(1 for s in stocks if s == 0) / len(stocks)
    assert 0.04 < zero < 0.12
    assert max(stocks) <= 250


def test_cli_without_redis_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env
    assert main(["feed", str(tmp_path / "x.jsonl")]) == 2
    assert "REDIS_URL" in capsys.readouterr().err


def test_cli_loads_a_feed(
    redis_url: str, client: redis.Redis, cfg: EngineConfig, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("RETAIL_KEY_PREFIX", cfg.key_prefix)
    monkeypatch.chdir(tmp_path)
    path = write_jsonl(tmp_path / "f.jsonl", [product("Z1"), product("Z2", price=0)])
    ckeys = CatalogKeys(cfg.key_prefix)
    with dropping(client, ckeys):
        rc = main(["feed", str(path), "--redis-url", redis_url, "--no-progress"])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "created 1" in out and "rejected line 1" not in out and "rejected line 2" in out
        assert read_meta(client, ckeys) is not None  # the index was created first
        assert replace(CatalogConfig(), key_prefix=cfg.key_prefix).key_prefix == cfg.key_prefix
