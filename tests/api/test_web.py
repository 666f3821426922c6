"""The storefront page, its config endpoint, the catalog listing and the dashboard page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from app.api.web import STATIC_DIR, WebConfig, load_web_config
from app.core.settings import EngineConfig
from tests.web_fixtures import ADMIN_KEY, WRITE_KEY, full_app


@pytest.fixture
def web(redis_url: str, cfg: EngineConfig, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(full_app(redis_url, cfg, tmp_path)) as tc:
        yield tc


def test_pages_and_static_files(web: TestClient) -> None:
    home = web.get("/")
    assert home.status_code == 200
    assert home.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"></script>' in home.text
    assert 'id="recs"' in home.text and 'id="shopper"' in home.text
    js = web.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    # Events go out as Segment track calls with the write key as HTTP Basic user name.
    assert "/v1/track" in js.text and "Product Viewed" in js.text and "Basic " in js.text
    assert web.get("/static/style.css").headers["content-type"].startswith("text/css")
    dash = web.get("/dashboard")
    assert dash.status_code == 200 and "/static/dashboard.js" in dash.text
    assert web.get("/static/dashboard.js").status_code == 200
    assert web.get("/static/nope.js").status_code == 404


def test_the_page_gets_the_public_write_key_never_the_admin_key(web: TestClient) -> None:
    config = web.get("/v1/demo/config")
    assert config.status_code == 200
    body = config.json()
    assert body["write_key"] == WRITE_KEY
    assert body["shoppers"][0] == {"user_id": "c17850", "label": "United Kingdom, 35 orders"}
    assert "kitchen" in body["categories"]
    assert body["apis"]["events"] is True
    served = [config.text, web.get("/").text, web.get("/dashboard").text]
    served += [web.get(f"/static/{p.name}").text for p in STATIC_DIR.iterdir()]
    assert all(ADMIN_KEY not in text for text in served)


def test_the_demo_page_can_be_turned_off(redis_url: str, cfg: EngineConfig, tmp_path: Path) -> None:
    app = full_app(redis_url, cfg, tmp_path, web_config=WebConfig(demo_page=False))
    with TestClient(app) as tc:
        assert tc.get("/").status_code == 404
        assert tc.get("/v1/demo/config").status_code == 404
        assert tc.get("/dashboard").status_code == 200


def test_load_web_config(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("RETAIL_DEMO_SHOPPERS=c1=First shopper, c2\nRETAIL_DEMO_WRITE_KEY=wk_b\n")
    cfg = load_web_config(env)
    assert cfg.shoppers == (("c1", "First shopper"), ("c2", ""))
    assert cfg.demo_write_key == "wk_b" and cfg.demo_page is True
    env.write_text("RETAIL_DEMO_SHOPPERS=bad{id}\n")
    with pytest.raises(ValueError):
        load_web_config(env)


@pytest.fixture
def catalog(client: redis.Redis, cfg: EngineConfig) -> Iterator[None]:
    """The recommendation tests' small, fully known catalog (16 products)."""
    try:
        from app.catalog.index import CatalogKeys, create_index, drop_catalog
        from app.catalog.vectorizers import get_vectorizer
        from tests.recs_fixtures import load_products
    except ImportError as exc:
        pytest.skip(f"the catalog is not importable: {exc}")
    ckeys = CatalogKeys(cfg.key_prefix)
    create_index(client, ckeys, get_vectorizer())
    load_products(client, cfg.key_prefix)
    try:
        yield
    finally:
        drop_catalog(client, ckeys, delete_docs=True)


def test_browse_filters_and_sorts(web: TestClient, catalog: None) -> None:
    body = web.get("/v1/browse?category=kitchen&sort=price_asc").json()
    hits = body["hits"]
    ids = [h["item_id"] for h in hits]
    assert set(ids) == {"K1", "K2", "K3", "K4", "K5", "K6", "T1"}  # O1 is out of stock
    assert [h["price"] for h in hits] == sorted(h["price"] for h in hits)
    assert all(h["category"] == "kitchen" and h["in_stock"] for h in hits)
    any_stock = web.get("/v1/browse?category=kitchen&in_stock=any&k=50").json()["hits"]
    assert "O1" in {h["item_id"] for h in any_stock}
    cheap = web.get("/v1/browse?max_price=2.6&sort=price_desc").json()["hits"]
    assert [h["item_id"] for h in cheap] == ["L1", "P3"]
    page = web.get("/v1/browse?k=3&offset=3&sort=price_asc").json()["hits"]
    everything = web.get("/v1/browse?k=60&sort=price_asc").json()["hits"]
    assert [h["item_id"] for h in page] == [h["item_id"] for h in everything[3:6]]
    popular = web.get("/v1/browse").json()
    assert popular["sort"] == "popular" and popular["filters"]["in_stock"] is True
    pops = [h["item_id"] for h in popular["hits"]]
    assert len(pops) == 15  # every in-stock product
    for query, field in [
        ("sort=cheapest", "sort"), ("k=500", "k"), ("min_price=5&max_price=1", "min_price"),
        ("category=Not A Slug", "category"), ("offset=-1", "offset"),
    ]:  # fmt: skip
        resp = web.get(f"/v1/browse?{query}")
        assert resp.status_code == 422, query
        assert resp.json()["field"] == field


def test_browse_without_an_index_is_a_clear_503(web: TestClient) -> None:
    resp = web.get("/v1/browse")
    assert resp.status_code == 503
    assert "catalog index create" in resp.json()["detail"]
