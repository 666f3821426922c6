"""Index lifecycle: create, info, zero-downtime re-index (alias swap), vectorizer migration."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from app.catalog.index import (
    CatalogConfig,
    CatalogKeys,
    ProductRecord,
    create_index,
    drop_catalog,
    ft_info,
    index_info,
    list_versions,
    load_schema_spec,
    read_meta,
    reindex,
)
from app.catalog.search import Filters, ProductSearch, parse_search
from app.catalog.vectorizers import HashedNgramVectorizer, get_vectorizer
from app.core.errors import SearchIndexError
from app.core.settings import EngineConfig
from loaders.catalog import FeedRow, load_rows
from tests.catalog_fixtures import dropping

TITLES = [
    "WHITE HANGING HEART T-LIGHT HOLDER", "RED RETROSPOT MUG", "ZINC HEART LANTERN",
    "PAPER CHAIN KIT CHRISTMAS", "SET OF 3 CAKE TINS", "BLUE POLKADOT BAG", "GLASS STAR LANTERN",
    "HEART OF WICKER LARGE", "REGENCY TEACUP AND SAUCER", "ALARM CLOCK BAKELIKE RED",
]  # fmt: skip


def seed(client: redis.Redis, cfg: CatalogConfig, ckeys: CatalogKeys, n: int = 200,
         vectorizer: Any = None) -> None:  # fmt: skip
    rows = [
        FeedRow(i, record=ProductRecord(item_id=f"I{i}", title=f"{TITLES[i % 10]} {i}",
                                        price=1 + i % 9, stock=i % 5), item_id=f"I{i}")
        for i in range(n)
    ]  # fmt: skip
    report = load_rows(client, cfg, ckeys, rows, vectorizer or get_vectorizer(), source="feed")
    assert report.created == n, report.summary()


@pytest.fixture
def setup(client: redis.Redis, cfg: EngineConfig) -> Any:
    catalog_cfg = CatalogConfig(key_prefix=cfg.key_prefix)
    ckeys = CatalogKeys(cfg.key_prefix)
    with dropping(client, ckeys):
        yield catalog_cfg, ckeys


def test_names_carry_the_key_prefix(cfg: EngineConfig) -> None:
    ckeys = CatalogKeys(cfg.key_prefix)
    p = cfg.key_prefix
    assert ckeys.alias == f"{p}idx:products" and ckeys.index(3) == f"{p}idx:products:v3"
    assert ckeys.doc("85123A") == f"{p}p:{{85123A}}" and ckeys.doc_prefix == f"{p}p:"
    assert ckeys.meta == f"{p}idx:{{products}}:meta"
    assert ckeys.item_of(ckeys.doc("85123A")) == "85123A"
    with pytest.raises(ValueError, match="braces"):
        ckeys.doc("a{b}")


def test_create_is_idempotent_and_info_reports(client: redis.Redis, setup: Any) -> None:
    catalog_cfg, ckeys = setup
    seed(client, catalog_cfg, ckeys, 50)
    first = create_index(client, ckeys, get_vectorizer())
    assert first.action == "created" and first.num_docs == 50
    again = create_index(client, ckeys, get_vectorizer())
    assert again.action == "exists" and again.meta == first.meta and not again.warnings
    info = index_info(client, ckeys)
    assert info["meta"]["index"] == ckeys.index(1) and info["versions"] == [ckeys.index(1)]
    assert info["live"]["num_docs"] == 50 and info["live"]["hash_indexing_failures"] == 0
    # A changed schema file is noticed (and left to reindex).
    spec = load_schema_spec()
    next(f for f in spec["fields"] if f["name"] == "embedding")["attrs"]["m"] = 24
    assert create_index(client, ckeys, get_vectorizer(), spec=spec).warnings


def test_other_prefixes_have_their_own_index(client: redis.Redis, setup: Any) -> None:
    catalog_cfg, ckeys = setup
    other = CatalogKeys(ckeys.prefix.rstrip(":") + "x:")
    with dropping(client, other):
        seed(client, catalog_cfg, ckeys, 20)
        seed(client, CatalogConfig(key_prefix=other.prefix), other, 30)
        create_index(client, ckeys, get_vectorizer())
        create_index(client, other, get_vectorizer())
        assert ft_info(client, ckeys.alias)["num_docs"] == 20  # type: ignore[index]
        assert ft_info(client, other.alias)["num_docs"] == 30  # type: ignore[index]


def test_reindex_swaps_alias_and_drops_old(client: redis.Redis, setup: Any) -> None:
    catalog_cfg, ckeys = setup
    seed(client, catalog_cfg, ckeys, 100)
    create_index(client, ckeys, get_vectorizer())
    swapped: list[str] = []
    report = reindex(client, ckeys, get_vectorizer(), on_swap=lambda m: swapped.append(m.index))
    assert report.action == "reindexed" and report.previous == ckeys.index(1)
    assert report.meta.index == ckeys.index(2) == swapped[0] and report.num_docs == 100
    assert list_versions(client, ckeys) == [(2, ckeys.index(2))]
    assert ft_info(client, ckeys.alias)["index_name"] == ckeys.index(2)  # type: ignore[index]
    meta = read_meta(client, ckeys)
    assert meta is not None and meta.version == 2
    kept = reindex(client, ckeys, get_vectorizer(), drop_old=False)
    assert [v for v, _ in list_versions(client, ckeys)] == [2, 3] and kept.dropped is None
    assert drop_catalog(client, ckeys) == 2
    assert read_meta(client, ckeys) is None and list_versions(client, ckeys) == []


def test_reindex_without_index_creates_one(client: redis.Redis, setup: Any) -> None:
    catalog_cfg, ckeys = setup
    seed(client, catalog_cfg, ckeys, 10)
    assert reindex(client, ckeys, get_vectorizer()).action == "created"


def test_alias_swap_under_concurrent_queries_has_zero_errors(
    client: redis.Redis, setup: Any, redis_url: str, cfg: EngineConfig
) -> None:
    catalog_cfg, ckeys = setup
    seed(client, catalog_cfg, ckeys, 400)
    create_index(client, ckeys, get_vectorizer())
    stop = threading.Event()
    errors: list[str] = []
    counts = {"queries": 0, "empty": 0}

    def query_loop() -> None:
        with redis.Redis.from_url(redis_url) as conn:
            search = ProductSearch(conn, catalog_cfg, get_vectorizer(), cfg)
            req = parse_search({"q": "heart lantern", "k": "5", "in_stock": "any"})
            vec = search.embed("red mug")
            while not stop.is_set():
                try:
                    hits = search.search(req).hits
                    knn = search.knn(vec, Filters(in_stock=None), 5)
                    counts["queries"] += 2
                    if len(hits) != 5 or len(knn) != 5:
                        counts["empty"] += 1
                except Exception as exc:  # every failure counts, whatever its type
                    errors.append(repr(exc))

    threads = [threading.Thread(target=query_loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        for _ in range(3):
            report = reindex(client, ckeys, get_vectorizer())
            assert report.action == "reindexed"
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    assert counts["empty"] == 0
    assert counts["queries"] > 20
    assert read_meta(client, ckeys).version == 4  # type: ignore[union-attr]


class Hashed128(HashedNgramVectorizer):
    model: str = "test-hashed-128"
    dims: int | None = 128


def test_vectorizer_migration_reindex(client: redis.Redis, setup: Any, cfg: EngineConfig) -> None:
    catalog_cfg, ckeys = setup
    seed(client, catalog_cfg, ckeys, 60)
    create_index(client, ckeys, get_vectorizer())
    old = ProductSearch(client, catalog_cfg, get_vectorizer(), cfg)
    before = [h.item_id for h in old.search(parse_search({"q": "red mug", "in_stock": "any"})).hits]
    report = reindex(client, ckeys, Hashed128())
    assert report.vectors_backfilled == 60 and report.vectors_removed == 60
    assert report.meta.vectorizer == "test-hashed-128" and report.meta.dims == 128
    doc = client.json().get(ckeys.doc("I1"))
    assert set(doc["vec"]) == {"test_hashed_128"} and len(doc["vec"]["test_hashed_128"]) == 128
    new = ProductSearch(client, catalog_cfg, Hashed128(), cfg)
    after = [h.item_id for h in new.search(parse_search({"q": "red mug", "in_stock": "any"})).hits]
    assert after and after[0] in before  # same catalog, still sensible
    old._meta = None
    with pytest.raises(SearchIndexError, match="test-hashed-128"):
        old.search(parse_search({"q": "red mug"}))


def test_stored_vectors_equal_the_vectorizer_output(client: redis.Redis, setup: Any) -> None:
    catalog_cfg, ckeys = setup
    seed(client, catalog_cfg, ckeys, 5)
    from app.catalog.index import content_of, embedding_text
    from app.catalog.vectorizers import embed_texts

    rec = ProductRecord(item_id="I3", title=f"{TITLES[3]} 3", price=4, stock=3)
    want = embed_texts(get_vectorizer(), [embedding_text(content_of(rec))])[0]
    stored = np.asarray(client.json().get(ckeys.doc("I3"))["vec"]["hashed_ngram_v1"], np.float32)
    assert np.array_equal(stored, want)


def test_missing_meta_is_a_clear_error(client: redis.Redis, setup: Any, tmp_path: Path,
                                       cfg: EngineConfig) -> None:  # fmt: skip
    catalog_cfg, _ = setup
    search = ProductSearch(client, catalog_cfg, get_vectorizer(), cfg)
    with pytest.raises(SearchIndexError, match="catalog index create"):
        search.search(parse_search({"q": "heart"}))
