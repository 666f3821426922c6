"""Hybrid search on the real Online Retail catalog: exact filters, injection, re-rank, HTTP."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from app.catalog.index import CatalogConfig, CatalogKeys, create_index, ft_info, redis_cmd
from app.catalog.search import (
    Filters,
    ProductSearch,
    band_preference,
    filter_expression,
    hybrid_query_string,
    parse_search,
    price_band,
    price_clauses,
    query_words,
    rerank,
    text_clause,
    trait_band,
    word_forms,
)
from app.catalog.vectorizers import get_vectorizer
from app.core.errors import ValidationError
from app.core.keys import Keys
from app.core.settings import AFF_EPOCH_MS, EngineConfig
from app.ingest import users
from app.redis import library as functions
from loaders.catalog import load_online_retail
from tests.catalog_fixtures import SAMPLE, catalog_app, dropping, new_prefix


@dataclass(frozen=True)
class Catalog:
    client: redis.Redis
    engine: EngineConfig
    cfg: CatalogConfig
    ckeys: CatalogKeys
    search: ProductSearch
    docs: dict[str, dict[str, Any]]  # item id -> document (without vectors)


@pytest.fixture(scope="module")
def catalog(redis_url: str, _library: functions.Library) -> Iterator[Catalog]:
    """The real catalog under its own prefix, loaded once for this module, dropped after."""
    prefix = new_prefix()
    engine = EngineConfig(key_prefix=prefix)
    cfg = CatalogConfig(key_prefix=prefix)
    ckeys = CatalogKeys(prefix)
    with redis.Redis.from_url(redis_url) as client, dropping(client, ckeys):
        create_index(client, ckeys, get_vectorizer())
        report = load_online_retail(client, cfg, ckeys, SAMPLE, get_vectorizer())
        assert report.created > 3000, report.summary()
        docs = {}
        for item in _all_ids(client, ckeys):
            doc = client.json().get(ckeys.doc(item))
            doc.pop("vec")
            docs[item] = doc
        yield Catalog(client, engine, cfg, ckeys, ProductSearch(client, cfg, get_vectorizer(),
                      engine), docs)  # fmt: skip


def _all_ids(client: redis.Redis, ckeys: CatalogKeys) -> list[str]:
    return [ckeys.item_of(k) for k in client.scan_iter(match=ckeys.doc_prefix + "*", count=1000)]


def _count(cat: Catalog, filters: Filters, words: tuple[str, ...] = (),
           median: float | None = None) -> int:  # fmt: skip
    """How many documents pass `filters` (and contain one of `words`), asked of the index."""
    expr = filter_expression(filters, median)
    query = " ".join(x for x in (str(expr) if expr else "", text_clause(words) if words else "")
                     if x) or "*"  # fmt: skip
    # VERBATIM: the hybrid query's pre-filter is not stem-expanded either (word_forms).
    reply = redis_cmd(cat.client, "FT.SEARCH", cat.ckeys.alias, query, "LIMIT", 0, 0,
                      "VERBATIM", "DIALECT", 2)  # fmt: skip
    if isinstance(reply, dict):
        return int(reply.get(b"total_results", reply.get("total_results", 0)))
    return int(reply[0])


def _violations(cat: Catalog, filters: Filters, item: str) -> list[str]:
    """Check a hit against the stored document (not the returned fields)."""
    doc = cat.docs[item] | _live(cat, item)
    bad = []
    if filters.categories and doc["category"] not in filters.categories:
        bad.append(f"{item}: category {doc['category']}")
    if filters.min_price is not None and doc["price"] < filters.min_price:
        bad.append(f"{item}: price {doc['price']} < {filters.min_price}")
    if filters.max_price is not None and doc["price"] > filters.max_price:
        bad.append(f"{item}: price {doc['price']} > {filters.max_price}")
    if filters.in_stock is not None and doc["in_stock"] is not filters.in_stock:
        bad.append(f"{item}: in_stock {doc['in_stock']}")
    if filters.in_stock is not None and (doc["stock"] > 0) is not filters.in_stock:
        bad.append(f"{item}: stock {doc['stock']}")
    return bad


def _live(cat: Catalog, item: str) -> dict[str, Any]:
    got = cat.client.json().get(cat.ckeys.doc(item), "$.price", "$.stock", "$.in_stock")
    return {k[2:]: v[0] for k, v in got.items()}


QUERIES = ["lightweight heart lantern", "red retrospot mug", "christmas", "cake stand",
           "vintage paisley bag", "glass"]  # fmt: skip
FILTERS = [
    Filters(),
    Filters(in_stock=None),
    Filters(in_stock=False),
    Filters(max_price=5.0),
    Filters(min_price=2.0, max_price=3.0),
    Filters(categories=("kitchen",), max_price=4.0),
    Filters(categories=("candles_lights", "christmas"), min_price=1.0, in_stock=None),
    Filters(categories=("clocks",), max_price=5.0),  # a small set: every member must come back
    Filters(categories=("bags",), min_price=10.0, in_stock=False),
]


@pytest.mark.parametrize("filters", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_filters_are_exact_and_applied_inside_the_index(catalog: Catalog, filters: Filters) -> None:
    passing = _count(catalog, filters)
    # The median-based rewrite of price ranges selects exactly the same documents.
    for median in (0.5, 2.5, 4.0, 100.0):
        assert _count(catalog, filters, median=median) == passing
    for q, k in itertools.product(QUERIES, (10, 100)):
        req = parse_search({"q": q, "k": str(k)})
        req = type(req)(req.q, req.words, filters, req.k, None)
        result = catalog.search.search(req)
        hits = result.hits
        for h in hits:
            assert not _violations(catalog, filters, h.item_id), (q, filters)
        ids = [h.item_id for h in hits]
        assert len(ids) == len(set(ids))
        # Not post-filtered: candidates are the documents passing the filters with one of
        # the words, so whenever fewer than k exist, every one of them comes back.
        matching = _count(catalog, filters, req.words)
        if matching:
            assert not result.fallback
            assert len(hits) == min(k, matching, max(catalog.cfg.candidates, k)), (q, matching)
            assert all(h.components["bm25"] > 0 for h in hits)
        else:
            assert result.fallback and len(hits) == min(k, passing)
        knn = catalog.search.knn(catalog.search.embed(q), filters, k)
        assert len(knn) == min(k, passing)
        for h in knn:
            assert not _violations(catalog, filters, h.item_id), (q, filters)


def test_no_word_match_falls_back_to_vectors(catalog: Catalog) -> None:
    result = catalog.search.search(parse_search({"q": "lantrens", "k": "5"}))
    assert result.fallback and len(result.hits) == 5
    assert all(h.components["bm25"] == 0 and h.components["vector"] > 0 for h in result.hits)


@pytest.mark.parametrize(
    ("word", "forms"),
    [
        ("cake", ["cake", "cakes"]),
        ("cakes", ["cake", "cakes"]),
        ("doily", ["doilies", "doily"]),
        ("doilies", ["doilies", "doily"]),
        ("box", ["box", "boxes"]),
        ("boxes", ["box", "boxes"]),
        ("glass", ["glass", "glasses"]),
        ("candles", ["candle", "candles"]),
        ("day", ["day", "days"]),
        ("6", ["6"]),
        ("t", ["t"]),
    ],
)
def test_word_forms(word: str, forms: list[str]) -> None:
    assert word_forms(word) == forms


def test_price_clauses_choose_the_narrow_side() -> None:
    assert [str(c) for c in price_clauses(None, 10.0, 3.0)] == ["-@price:[(10.0 +inf]"]
    assert [str(c) for c in price_clauses(None, 1.0, 3.0)] == ["@price:[-inf 1.0]"]
    assert [str(c) for c in price_clauses(1.0, None, 3.0)] == ["-@price:[-inf (1.0]"]
    assert [str(c) for c in price_clauses(5.0, None, 3.0)] == ["@price:[5.0 +inf]"]
    assert [str(c) for c in price_clauses(1.0, 10.0, 3.0)] == ["-@price:[-inf (1.0]",
                                                               "-@price:[(10.0 +inf]"]  # fmt: skip
    assert [str(c) for c in price_clauses(4.0, 10.0, 3.0)] == ["@price:[4.0 10.0]"]
    assert [str(c) for c in price_clauses(None, 10.0, None)] == ["@price:[-inf 10.0]"]


def test_hybrid_ranks_text_and_vector_matches(catalog: Catalog) -> None:
    hits = catalog.search.search(parse_search({"q": "red retrospot mug", "k": "5"})).hits
    assert hits[0].title == "RED RETROSPOT MUG"
    top = hits[0].components
    assert set(top) == {"vector", "bm25", "text", "hybrid"}
    assert top["hybrid"] == pytest.approx(0.7 * top["vector"] + 0.3 * top["text"], abs=1e-6)
    assert top["text"] == pytest.approx(top["bm25"] / (top["bm25"] + 4.0 * 3), abs=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    lantern = catalog.search.search(parse_search({"q": "lightweight heart lantern"})).hits
    assert all("LANTERN" in h.title or "HEART" in h.title for h in lantern[:5])


def test_user_affinities_rerank(catalog: Catalog) -> None:
    """A shopper's favourite category moves up: a low-ranked category of the plain top 10,
    with a strong affinity, comes first."""
    q = {"q": "heart", "k": "10", "in_stock": "any"}
    plain = catalog.search.search(parse_search(q)).hits
    favourite = next(h.category for h in reversed(plain) if h.category != plain[0].category)
    user = "shopper-1"
    aff = Keys(catalog.engine.key_prefix).user(user, "aff")
    now = 1_700_000_000_000 + 10 * 365 * 86_400_000
    boost = 50.0 * 2 ** ((now - AFF_EPOCH_MS) / catalog.engine.aff_half_life_ms)  # docs/keys.md
    catalog.client.zadd(aff, {f"cat:{favourite}": boost, "cat:zzz": boost / 10,
                              "price:25+": boost})  # fmt: skip
    try:
        personal = catalog.search.search(parse_search({**q, "user": user}))
        assert personal.personalized
        hits = personal.hits
        assert hits[0].category == favourite
        assert hits[0].components["affinity"] >= 0.7
        for h in hits:
            assert h.score == pytest.approx(h.components["hybrid"] + 0.2 * h.components["affinity"])
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        unknown = catalog.search.search(parse_search({**q, "user": "nobody"}))
        assert not unknown.personalized
        assert [h.item_id for h in unknown.hits] == [h.item_id for h in plain]
    finally:
        catalog.client.delete(aff)


def test_rerank_is_pure_and_normalised() -> None:
    from app.catalog.search import Hit

    hits = [Hit("a", "A", "kitchen", 3.0, 1, True, 0, 0.5, {"hybrid": 0.5}),
            Hit("b", "B", "toys", 30.0, 1, True, 0, 0.6, {"hybrid": 0.6})]  # fmt: skip
    out = rerank(hits, [("cat:kitchen", 8.0), ("cat:toys", 2.0), ("price:2-5", 4.0)], 0.2)
    assert [h.item_id for h in out] == ["a", "b"]
    assert out[0].components["affinity"] == pytest.approx(0.7 * 1.0 + 0.3 * 1.0)
    assert out[1].components["affinity"] == pytest.approx(0.7 * 0.25)


# (q, outcome): 422 -> rejected naming q; otherwise the words the query searches for.
QUERY_CASES: list[tuple[str, Any]] = [
    ("heart lantern", ("heart", "lantern")),
    ("T-Light holder", ("t", "light", "holder")),
    ('"unbalanced quote', ("unbalanced", "quote")),
    ("-heart ~lantern *", ("heart", "lantern")),
    ("%%lantern%% (set of 6)", ("lantern", "set", "6")),
    ("heart) | @price:[0 1]", 422),
    ("@title:heart", 422),
    ("heart=>[KNN 1000 @embedding $vector]", 422),
    ("$vector", 422),
    ("{heart}", 422),
    ("***", 422),
    ("the of and", 422),
    ("", 422),
    ("   ", 422),
    ("heart\x00lantern", 422),
    ("x" * 201, 422),
    (" ".join(f"w{i}" for i in range(17)), 422),
    ("£5 mug", ("5", "mug")),
    ("$5 mug", ("5", "mug")),
    ("tasse à café", ("tasse", "à", "café")),
]


@pytest.mark.parametrize(("q", "outcome"), QUERY_CASES)
def test_query_words_escape_or_reject(q: str, outcome: Any) -> None:
    if outcome == 422:
        with pytest.raises(ValidationError) as err:
            query_words(q)
        assert err.value.field == "q"
    else:
        assert query_words(q) == outcome
        text = hybrid_query_string(query_words(q), None)
        inner = text[text.index("(", 1) + 1 : text.index(")")]
        assert all(ch.isalnum() or ch in " |" for ch in inner), inner


@pytest.fixture(scope="module")
def api(
    catalog: Catalog, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    app = catalog_app(redis_url, catalog.engine, tmp_path_factory.mktemp("api"), catalog.cfg)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(("q", "outcome"), QUERY_CASES)
def test_search_http_injection_is_422_or_escaped(api: TestClient, q: str, outcome: Any) -> None:
    resp = api.get("/v1/search", params={"q": q, "max_price": "3", "k": "20"})
    if outcome == 422:
        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == "q"
    else:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["words"] == list(outcome)
        assert all(h["price"] <= 3 and h["in_stock"] for h in body["hits"])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"q": "heart", "k": "0"}, "k"),
        ({"q": "heart", "k": "101"}, "k"),
        ({"q": "heart", "k": "ten"}, "k"),
        ({"q": "heart", "min_price": "-1"}, "min_price"),
        ({"q": "heart", "max_price": "nan"}, "max_price"),
        ({"q": "heart", "max_price": "inf"}, "max_price"),
        ({"q": "heart", "min_price": "5", "max_price": "2"}, "min_price"),
        ({"q": "heart", "category": "Kitchen!"}, "category"),
        ({"q": "heart", "category": "a}|{b"}, "category"),
        ({"q": "heart", "in_stock": "maybe"}, "in_stock"),
        ({"q": "heart", "user": "bad{user}"}, "user"),
        ({}, "q"),
    ],
)
def test_search_http_parameter_validation(
    api: TestClient, params: dict[str, str], field: str
) -> None:
    resp = api.get("/v1/search", params=params)
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == field


def test_search_http_shape(api: TestClient, catalog: Catalog) -> None:
    resp = api.get("/v1/search", params={"q": "lightweight heart lantern", "category":
                                         "candles_lights", "max_price": "5", "k": "5"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["index"] == catalog.ckeys.index(1) and body["vectorizer"] == "hashed-ngram-v1"
    assert body["filters"] == {"category": ["candles_lights"], "min_price": None,
                               "max_price": 5.0, "in_stock": True}  # fmt: skip
    assert len(body["hits"]) == 5
    hit = body["hits"][0]
    assert set(hit) == {"item_id", "title", "category", "price", "stock", "in_stock", "score",
                        "components"}  # fmt: skip
    assert set(hit["components"]) == {"vector", "bm25", "text", "hybrid"}
    assert "hybrid" in body["scoring"] and body["fallback"] is False
    typo = api.get("/v1/search", params={"q": "lantrens"}).json()
    assert typo["fallback"] is True and typo["hits"]


def test_item_and_similar_http(api: TestClient, catalog: Catalog) -> None:
    item = api.get("/v1/items/85123A")
    assert item.status_code == 200
    body = item.json()
    assert body["item"]["item_id"] == "85123A" and "vec" not in body["item"]
    assert body["price_history"][0]["price"] == body["item"]["price"]
    assert api.get("/v1/items/NOPE").status_code == 404
    assert api.get("/v1/items/bad{x}").status_code == 422

    sim = api.get("/v1/items/85123A/similar", params={"max_price": "3", "k": "8"})
    assert sim.status_code == 200, sim.text
    hits = sim.json()["hits"]
    assert len(hits) == 8
    assert all(h["item_id"] != "85123A" and h["price"] <= 3 and h["in_stock"] for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert "T-LIGHT" in hits[0]["title"] or "HEART" in hits[0]["title"]
    out = api.get("/v1/items/85123A/similar", params={"in_stock": "false", "k": "5"}).json()
    assert all(not h["in_stock"] and h["stock"] == 0 for h in out["hits"])
    assert api.get("/v1/items/NOPE/similar").status_code == 404
    assert api.get("/v1/items/85123A/similar", params={"k": "1000"}).status_code == 422


def test_app_without_admin_key_cannot_patch(api: TestClient) -> None:
    assert api.patch("/v1/items/85123A", json={"price": 9}).status_code == 401


def test_the_live_index_has_the_schema_fields(catalog: Catalog) -> None:
    info = ft_info(catalog.client, catalog.ckeys.alias)
    assert info is not None
    names = {a["attribute"] if isinstance(a, dict) else a[a.index("attribute") + 1]
             for a in info["attributes"]}  # fmt: skip
    assert names == {"item_id", "title", "description", "category", "brand", "tags", "source",
                     "price", "stock", "in_stock", "popularity", "created_ms", "updated_ms",
                     "embedding"}  # fmt: skip


def test_price_band_trait_blends_into_the_band_preference() -> None:
    assert band_preference({}, None) == {}
    assert band_preference({}, "25+") == {"25+": 1.0}  # no live signal: the warehouse's band
    assert band_preference({"2-5": 1.0, "lt2": 0.5}, "25+") == {
        "2-5": 0.5, "lt2": 0.25, "25+": 0.5}  # fmt: skip
    assert trait_band({"price_band": "nonsense"}) is None and trait_band(None) is None


def test_a_synced_price_band_trait_reranks_search(catalog: Catalog) -> None:
    """A shopper known only from the warehouse (a `price_band` trait, no events yet): the
    search is re-ranked towards that band, and the reply says why."""
    q = {"q": "heart", "k": "10", "in_stock": "any"}
    plain = catalog.search.search(parse_search(q)).hits
    band = next(b for b in (price_band(h.price) for h in reversed(plain))
                if b and b != price_band(plain[0].price))  # fmt: skip
    user = "warehouse-shopper"
    users.identify(catalog.client, catalog.engine, user, None, {"price_band": band, "tier": "gold"})
    try:
        personal = catalog.search.search(parse_search({**q, "user": user}))
        assert personal.personalized and personal.signals == [f"trait:price_band={band}"]
        assert price_band(personal.hits[0].price) == band
        assert personal.hits[0].components["affinity"] == pytest.approx(0.3)
    finally:
        catalog.client.delete(*Keys(catalog.engine.key_prefix).user_all(user))
