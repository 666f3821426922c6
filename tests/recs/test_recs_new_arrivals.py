"""New arrivals: the value by age (`new_arrival`), the attribute cache's `created_ms`, and the
recommender's boost (only for items another source found)."""

from __future__ import annotations

import time

import pytest

from app.catalog.index import CatalogConfig, ProductRecord, create_index, drop_catalog
from app.catalog.vectorizers import get_vectorizer
from app.recs import calls as rec_calls
from app.recs.experiments import DEFAULT
from app.recs.items import ItemCatalog, new_arrival
from app.recs.lists import RecRequest
from app.redis import calls
from loaders.catalog import FeedRow, load_rows
from tests.recs_fixtures import World, event, world_fixture

DAY = 86_400_000
WINDOW, HALF_LIFE = 90 * DAY, 30 * DAY
NOW = 1_700_000_000_000

world = world_fixture("tnew")


def add_products(w: World, rows: list[tuple[str, str, int, int]]) -> None:
    """(item, category, created_ms, stock) rows, created through the catalog loader."""
    feed = [
        FeedRow(i, record=ProductRecord(item_id=item, title=f"GARDEN GNOME {item}", price=3.0,
                                        stock=stock, category=cat, created_ms=created))
        for i, (item, cat, created, stock) in enumerate(rows, start=1)
    ]  # fmt: skip
    report = load_rows(w.client, CatalogConfig(key_prefix=w.engine.key_prefix), w.ckeys, feed,
                       get_vectorizer(), source="test-new")  # fmt: skip
    assert report.created == len(rows), report.summary()


@pytest.mark.parametrize(("created", "value"), [
    (NOW, 1.0),
    (NOW - 30 * DAY, 0.5),
    (NOW - 60 * DAY, 0.25),
    (NOW - 90 * DAY, 0.125),  # the window's last day
    (NOW - 90 * DAY - 1, 0.0),  # older than the window
    (NOW + 1, 0.0),  # created after now: it did not exist yet
    (0, 0.0),  # creation time unknown
])  # fmt: skip
def test_new_arrival_value_decays_within_the_window(created: int, value: float) -> None:
    assert new_arrival(created, NOW, WINDOW, HALF_LIFE) == pytest.approx(value)


def test_the_attribute_cache_reads_created_ms_on_load_and_refresh(world: World) -> None:
    w, now = world, int(time.time() * 1000)
    add_products(w, [("N1", "garden", now - DAY, 5), ("N2", "garden", now - 10 * DAY, 0)])
    create_index(w.client, w.ckeys, get_vectorizer())
    try:
        cat = ItemCatalog(w.client, w.engine.key_prefix)
        cat.full_load()
        n1, n2, k1 = cat.get("N1"), cat.get("N2"), cat.get("K1")
        assert n1 is not None and n1.created_ms == now - DAY
        assert n2 is not None and n2.created_ms == now - 10 * DAY and not n2.in_stock
        assert k1 is not None and k1.created_ms == 0  # the feed gave none: unknown, never new
        add_products(w, [("N3", "garden", now - 3 * 3_600_000, 5)])
        time.sleep(0.01)
        assert cat.refresh() >= 1  # incremental: FT.SEARCH on updated_ms
        n3 = cat.get("N3")
        assert n3 is not None and n3.created_ms == now - 3 * 3_600_000
    finally:
        drop_catalog(w.client, w.ckeys)


def test_the_boost_goes_to_items_other_sources_found(world: World) -> None:
    """A brand-new product nobody bought or viewed is not recommended for being new alone;
    a new product another source found (here: bought a second ago, so popular right now)
    carries the 'new' source; products of unknown age never do."""
    w, t0 = world, int(time.time() * 1000)
    add_products(w, [("N7", "garden", t0 - DAY, 5), ("N8", "garden", t0 - DAY, 5)])
    w.ingest([event("nb-buy", "purchase", "new-buyer", "N8", t0 - 500)])
    items = ["K1", "K2", "K3", "K4", "K5", "K6", "L1", "L2", "L3", "L4", "P1"]
    w.ingest(
        [event(f"nb{i}", "view", "new-boost", it, t0 - 1000 * i) for i, it in enumerate(items)]
    )
    rec = w.recommender()
    now = int(time.time() * 1000)
    req = RecRequest("new-boost", "home", None, 10, now_ms=now)
    ctx = rec_calls.parse_rec_context(
        calls.fcall_ro(w.client, "rec_context", rec.context_args(req.user, rec.model))
    )
    weights = rec.params(req, DEFAULT, 10).weights
    _, cands = rec.candidates(ctx, req, rec.model, weights, False, None)
    by_item = {c.item: c for c in cands}
    assert "N7" not in by_item
    n8 = {src: v for src, _, v in by_item["N8"].sources}
    assert n8["pop"] > 0
    assert n8["new"] == pytest.approx(new_arrival(t0 - DAY, now, WINDOW, HALF_LIFE))
    assert [c.item for c in cands if any(src == "new" for src, _, _ in c.sources)] == ["N8"]
    rec.close()
