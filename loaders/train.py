"""Train the recommendation model on the Online Retail purchases and swap it in.

    python -m loaders.train [--path FILE] [--until YYYY-MM-DD] [--redis-url URL]
                            [--neighbours 50] [--method ease|cosine] [--shrink 5]
                            [--no-content] [--version V]

Interactions are the distinct (customer, item) pairs of the valid purchase lines
(`loaders.online_retail.purchase_events`: cancellations, fees, guests... skipped), optionally
only those before `--until` (a time split: train on the past, evaluate on the rest). Content
vectors are the catalog's own (the product documents' `$.vec.<vectorizer>` when the catalog is
loaded), else computed from the products' titles with the configured vectorizer, exactly as
the catalog loader would. See `app/recs/model.py` for the similarity, the keys and the swap.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import redis

from app.catalog.index import (
    CatalogKeys,
    ProductRecord,
    content_of,
    embedding_text,
    json_reply,
    read_meta,
    redis_cmd,
)
from app.catalog.vectorizers import embed_texts, get_vectorizer, vector_slug
from app.core.errors import EngineError
from app.core.settings import EngineConfig, load_settings
from app.recs.keys import RecKeys
from app.recs.model import Interactions, TrainConfig, TrainReport, train
from app.redis import embedded as redis_stack
from app.redis.connect import connect
from loaders import online_retail
from loaders.online_retail import Product


def purchase_pairs(
    path: str | Path, until_ms: int | None = None, users: set[str] | None = None
) -> tuple[list[tuple[str, str]], dict[str, Product]]:
    """(user id, item id) of every valid purchase line before `until_ms`; and the catalog."""
    scan = online_retail.scan(path)
    events, _ = online_retail.purchase_events(path, catalog=scan.catalog)
    pairs = []
    try:
        for ev in events:
            if until_ms is not None and ev["ts"] >= until_ms:
                break  # the file is in time order
            if users is not None and ev["user_id"] not in users:
                continue
            for line in ev["items"]:
                pairs.append((ev["user_id"], line["item_id"]))
    finally:
        events.close()
    return pairs, scan.catalog


def catalog_vectors(
    client: redis.Redis, prefix: str, items: Iterable[str], catalog: dict[str, Product]
) -> tuple[list[str], np.ndarray]:
    """The catalog documents' vectors when loaded (the index meta names the path; without an
    index, the configured vectorizer's path), else the vectorizer's vectors of the Online
    Retail product text."""
    items = sorted(set(items) | set(catalog))
    ckeys = CatalogKeys(prefix)
    meta = read_meta(client, ckeys)
    vectorizer = get_vectorizer()
    path = meta.vector_path if meta is not None else f"$.vec.{vector_slug(vectorizer.model)}"
    if items:
        pipe = client.pipeline(transaction=False)
        for item in items:
            redis_cmd(pipe, "JSON.GET", ckeys.doc(item), path)
        found, rows = [], []
        for item, raw in zip(items, pipe.execute(), strict=True):
            got = json_reply(raw) if raw is not None else None
            if got:
                found.append(item)
                rows.append(np.asarray(got[0], dtype=np.float32))
        if found:
            return found, np.vstack(rows)
    known = [i for i in items if i in catalog]
    if not known:
        return [], np.zeros((0, 1), dtype=np.float32)
    texts = []
    for item in known:
        p = catalog[item]
        rec = ProductRecord(item_id=item, title=p.title or item, price=max(p.price, 0.01))
        texts.append(embedding_text(content_of(rec)))
    return known, embed_texts(vectorizer, texts)


def train_online_retail(
    client: redis.Redis,
    engine: EngineConfig,
    path: str | Path,
    cfg: TrainConfig | None = None,
    *,
    until_ms: int | None = None,
    content: bool = True,
    version: str | None = None,
    users: set[str] | None = None,
    fingerprint: str = "",
    catalog_client: redis.Redis | None = None,
) -> TrainReport:
    """`catalog_client`: where the product documents (and their vectors) live, when not on
    `client` (the search node of a cluster)."""
    pairs, catalog = purchase_pairs(path, until_ms, users)
    if not pairs:
        raise EngineError("no purchases to train on (check --until and the file)")
    inter = Interactions.from_pairs(pairs)
    categories = {item: p.category for item, p in catalog.items()}
    products = catalog_client or client
    vectors = (
        catalog_vectors(products, engine.key_prefix, inter.items, catalog) if content else None
    )
    until = f" until {until_ms}" if until_ms else ""
    keys = RecKeys(engine.key_prefix, engine.partitions, engine.agg_shards)
    return train(
        client, keys, inter, categories, cfg, vectors=vectors,
        version=version, source=f"online-retail {Path(path).name}{until}",
        fingerprint=fingerprint,
    )  # fmt: skip


def training_fingerprint(path: str | Path, cfg: TrainConfig | None = None) -> str:
    """Names what a model is trained from: the data file's bytes and the training settings
    (a model with the same fingerprint would come out the same, so it can be reused)."""
    digest = hashlib.sha256(Path(path).read_bytes())
    digest.update(repr(cfg or TrainConfig()).encode())
    return digest.hexdigest()[:24]


def date_ms(text: str) -> int:
    dt = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(
        prog="python -m loaders.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--path", type=Path, default=settings.sample_data)
    parser.add_argument("--until", default=None, help="train on purchases before this date")
    parser.add_argument("--redis-url", default=None, help="default: $REDIS_URL")
    parser.add_argument("--neighbours", type=int, default=TrainConfig.neighbours)
    parser.add_argument(
        "--method", choices=("ease", "cosine"), default=TrainConfig.method,
        help="item model (ease falls back to cosine above 6,000 items)",
    )  # fmt: skip
    parser.add_argument("--shrink", type=float, default=TrainConfig.shrink, help="cosine only")
    parser.add_argument("--no-content", action="store_true", help="skip content neighbours")
    parser.add_argument("--version", default=None, help="model version (default: v<UTC time>)")
    args = parser.parse_args(argv)
    url = args.redis_url or settings.redis_url
    if not url:
        print("error: set REDIS_URL or pass --redis-url", file=sys.stderr)
        return 2
    cfg = TrainConfig(neighbours=args.neighbours, method=args.method, shrink=args.shrink)
    until = date_ms(args.until) if args.until else None
    with connect(url) as client:
        try:
            redis_stack.probe(client)
            catalog = connect(settings.catalog_redis_url) if settings.catalog_redis_url else None
            report = train_online_retail(
                client, settings.engine, args.path, cfg, until_ms=until,
                content=not args.no_content, version=args.version, catalog_client=catalog,
            )  # fmt: skip
        except (EngineError, redis.RedisError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
