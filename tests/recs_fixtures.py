"""A small, fully known world for the recommendation tests (imported explicitly).

Products (category, price, stock):
  K1..K6 kitchen, L1..L4 candles_lights, P1..P3 party, W1 wine (age-restricted category),
  T1 kitchen tagged 'age-restricted', O1 kitchen out of stock.
A toy purchase history trains the model, so neighbour lists are known: K1~K2~K3 (bought
together), L1~L2, P1~P2, and O1/W1/T1 are close to K1 (so they are candidates and must be
filtered).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis

from app.catalog.index import CatalogConfig, CatalogKeys, ProductRecord
from app.catalog.vectorizers import get_vectorizer
from app.core.events import parse_event
from app.core.settings import EngineConfig
from app.engine import Engine, build_engine
from app.ingest.ingestor import Ingestor
from app.recs.config import RecConfig
from app.recs.experiments import ExperimentStore
from app.recs.keys import RecKeys
from app.recs.model import Interactions, TrainConfig, TrainReport, train
from app.recs.recommender import Recommender
from loaders.catalog import FeedRow, load_rows

PRODUCTS: list[tuple[str, str, str, float, int, tuple[str, ...]]] = [
    ("K1", "kitchen", "REGENCY CAKESTAND 3 TIER", 12.75, 10, ()),
    ("K2", "kitchen", "REGENCY TEACUP AND SAUCER", 2.95, 10, ()),
    ("K3", "kitchen", "REGENCY MILK JUG", 4.25, 10, ()),
    ("K4", "kitchen", "ENAMEL MEASURING JUG", 3.75, 10, ()),
    ("K5", "kitchen", "BAKING SET 9 PIECE", 4.95, 10, ()),
    ("K6", "kitchen", "JAM MAKING SET", 4.25, 10, ()),
    ("L1", "candles_lights", "WHITE HANGING HEART T-LIGHT HOLDER", 2.55, 10, ()),
    ("L2", "candles_lights", "RED HANGING HEART T-LIGHT HOLDER", 2.95, 10, ()),
    ("L3", "candles_lights", "WHITE METAL LANTERN", 3.39, 10, ()),
    ("L4", "candles_lights", "GLASS STAR FROSTED T-LIGHT HOLDER", 4.25, 10, ()),
    ("P1", "party", "PARTY BUNTING", 4.95, 10, ()),
    ("P2", "party", "PAPER CHAIN KIT VINTAGE", 2.95, 10, ()),
    ("P3", "party", "PACK OF 12 PARTY CONES", 1.25, 10, ()),
    ("W1", "wine", "WINE GLASS SET", 9.95, 10, ()),
    ("T1", "kitchen", "COCKTAIL SHAKER SET", 7.95, 10, ("age-restricted",)),
    ("O1", "kitchen", "REGENCY SUGAR BOWL", 3.25, 0, ()),
]
OUT_OF_STOCK = {"O1"}
GUARDED = {"W1", "T1"}
BASKETS = [
    ["K1", "K2", "K3", "O1", "W1", "T1"],
    ["K1", "K2", "K3", "O1", "W1", "T1"],
    ["K1", "K2", "K4", "O1", "W1", "T1"],
    ["K2", "K3", "K5"],
    ["L1", "L2", "L3"],
    ["L1", "L2", "L4"],
    ["P1", "P2", "P3"],
    ["P1", "P2", "K6"],
    ["K1", "K3", "L1"],
]
# A generous budget: on a loaded machine the default 50 ms would turn behaviour tests into
# budget tests (a fallback list); the budget tests set their own.
REC_CFG = RecConfig(restricted_categories={"wine": "age"}, per_category=10, budget_ms=2_000.0)
# The shipped budget (also the recommender's socket timeout), for tests of a hung or dead Redis.
SERVING_REC_CFG = replace(REC_CFG, budget_ms=RecConfig.budget_ms)


@dataclass
class World:
    client: redis.Redis
    engine: EngineConfig
    cfg: RecConfig
    keys: RecKeys
    ckeys: CatalogKeys
    model: TrainReport
    ingestor: Ingestor
    store: ExperimentStore
    catalog_client: redis.Redis | None = None

    def recommender(self, client: redis.Redis | None = None, **cfg: Any) -> Recommender:
        from dataclasses import replace

        c = replace(self.cfg, **cfg) if cfg else self.cfg
        rec = Recommender(client or self.client, self.engine, c,
                          catalog_client=self.catalog_client)  # fmt: skip
        rec.refresh()
        return rec

    built: Engine | None = None

    def ingest(self, events: Sequence[dict[str, Any]]) -> None:
        """Acknowledge, then apply the aggregates (history, popularity, attribution)."""
        now = int(time.time() * 1000)
        self.ingestor.ingest([parse_event(e, now_ms=now) for e in events])
        if self.built is not None:
            self.built.drain()

    def rebuild(self, cfg: RecConfig) -> None:
        """The engine again, with another recommender configuration."""
        self.built = build_engine(self.client, self.engine, rec_config=cfg, experiments=self.store)
        self.ingestor = self.built.ingestor


def load_products(client: redis.Redis, prefix: str) -> None:
    rows = [
        FeedRow(i, record=ProductRecord(item_id=item, title=title, price=price, stock=stock,
                                        category=cat, tags=tags, popularity=float(10 - i % 5)))
        for i, (item, cat, title, price, stock, tags) in enumerate(PRODUCTS, start=1)
    ]  # fmt: skip
    report = load_rows(client, CatalogConfig(key_prefix=prefix), CatalogKeys(prefix), rows,
                       get_vectorizer(), source="test")  # fmt: skip
    assert report.created == len(PRODUCTS), report.summary()


def build_world(
    client: redis.Redis,
    prefix: str,
    cfg: RecConfig = REC_CFG,
    *,
    catalog_client: redis.Redis | None = None,
) -> World:
    """`catalog_client`: where the products go (a cluster's search node); default `client`."""
    from dataclasses import replace

    from app.engine import build_engine

    engine = EngineConfig(key_prefix=prefix)
    cfg = replace(cfg, key_prefix=prefix)
    keys = RecKeys(prefix)
    products = catalog_client or client
    load_products(products, prefix)
    pairs = [(f"m{i}", item) for i, basket in enumerate(BASKETS) for item in basket]
    categories = {item: cat for item, cat, *_ in PRODUCTS}
    from loaders.train import catalog_vectors

    vectors = catalog_vectors(products, prefix, categories, {})
    report = train(client, keys, Interactions.from_pairs(pairs), categories,
                   TrainConfig(shrink=0.5), vectors=vectors)  # fmt: skip
    store = ExperimentStore(client, keys)
    built = build_engine(client, engine, rec_config=cfg, experiments=store)
    return World(client, engine, cfg, keys, CatalogKeys(prefix), report, built.ingestor, store,
                 catalog_client, built)  # fmt: skip


def event(event_id: str, etype: str, user: str, item: str, ts: int, **extra: Any) -> dict[str, Any]:
    cat = next((c for i, c, *_ in PRODUCTS if i == item), "")
    price = next((p for i, _, _, p, *_ in PRODUCTS if i == item), 1.0)
    props = {"category": cat, "price": price, **extra.pop("props", {})}
    body: dict[str, Any] = {"event_id": event_id, "type": etype, "user_id": user,
                            "session_id": extra.pop("session_id", "s1"), "ts": ts,
                            "props": props}  # fmt: skip
    if etype == "purchase":
        body["items"] = [{"item_id": item, "qty": 1, "price": price, "category": cat}]
    else:
        body["item_id"] = item
    body.update(extra)
    return body


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    batch = [k for k in client.scan_iter(match=prefix + "*", count=1000)]
    for i in range(0, len(batch), 500):
        client.unlink(*batch[i : i + 500])


def world_fixture(stem: str) -> Any:
    """A module-scoped `world` fixture: the shared recommendation world under its own prefix."""
    import pytest

    from app.redis import library as functions

    @pytest.fixture(scope="module")
    def world(redis_url: str, _library: functions.Library) -> Iterator[World]:
        prefix = f"{stem}{int(time.time() * 1000) % 10**8}:"
        with redis.Redis.from_url(redis_url) as client:
            w = build_world(client, prefix)
            try:
                yield w
            finally:
                delete_prefix(client, prefix)

    return world


def recs_app(redis_url: str, world: World, data_dir: Any, catalog_url: str | None = None) -> Any:
    """The HTTP app against `redis_url` with the world's recommender config, refreshed inline
    (no background worker), keys wk_test / s3cret-admin."""
    from starlette.datastructures import Secret

    from app.api.app import create_app
    from app.core.settings import Settings

    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, server_keys=frozenset({"wk_test"}),
        write_keys=frozenset(), admin_key=Secret("s3cret-admin"),
        data_dir=data_dir, sample_data=data_dir / "none",
        log_json=False, engine=world.engine, catalog_redis_url=catalog_url,
    )  # fmt: skip
    app = create_app(settings)  # create_app installs the recommender
    app.state.rec_config = world.cfg
    app.state.rec_background = False
    return app
