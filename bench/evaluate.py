"""Recommendation quality on the real Online Retail purchases, against baselines, same run.

Run from the repo root: `.venv/bin/python -m bench.evaluate [--quick] [--split YYYY-MM-DD]`.
`--validate` is the tuning run: the same protocol on the training period only (train before
2011-05-01, evaluate on May-June 2011; nothing of the test period is read). Weights are chosen
there (`--weights name=value,...` overrides the engine's defaults for such a run) and the
default run on the test period confirms them once.
With REDIS_URL unset an embedded Redis Stack is started in a temporary folder; with it set,
that server is used under a unique key prefix removed at the end. Run one benchmark at a time.

Protocol (time split, no peeking):
1. Parse the purchase log (`loaders.online_retail`: cancellations, fees, guests skipped). One
   query per invoice: an invoice is one basket of one known customer at one time.
2. Train on invoices before `--split` (default 2011-07-01; the data ends 2011-09-30): the
   engine's model (`app.recs.model.train`: weighted cosine + significance, content neighbours,
   popularity) and the baselines. The catalog is loaded with every product IN STOCK (its stock
   is synthetic in this sample; filtering real purchases as "out of stock" would only measure
   the synthetic numbers). Its `created_ms` (derived: the code's first row in the file) drives
   the engine's new-arrival boost, measured against each query's time: a product created
   after it is not new (it did not exist yet). The training purchases are replayed through the
   real ingestion path (sessions, affinities, seen-filter, history, real-time co-occurrence,
   trending).
3. Replay the test period invoice by invoice, in time order. Before each invoice of a
   customer who bought before (train period or an earlier test invoice), ask every method for
   10 items for that customer; then ingest the invoice as live events (so the engine's
   real-time state and the baselines' customer histories move on; the baselines' models stay
   the offline ones).
4. Score: HitRate@10 (at least one of the invoice's target items in the list) and NDCG@10
   (binary relevance, ideal = min(targets, 10) hits on top), averaged over queries.

Two target definitions, both reported; the JSON line carries protocol A:
  A "new items" (primary): targets = the invoice's items the customer never bought before;
    invoices without any are skipped. Every method gets the same candidate rule: nothing the
    customer bought before (the engine by its seen-filter, the baselines by the exact set).
    This is what the engine's default `home` list is for: discovery.
  B "all items": targets = every item of the invoice. Customers here re-buy a lot, so the
    engine runs with the documented repurchase rule (variant `repurchase: true`: bought items
    come back as 'buy again' candidates from the long-term history) and the baselines are
    unfiltered; a "repeat" baseline (the customer's own most bought items) is shown for scale.
Methods: engine (the full serving computation: rec_context + item-slot lists + `recommend`,
timed per query), MostPopular (distinct customers in the training period), item-kNN (offline,
numpy: plain cosine over customers, score = sum of similarities to the customer's items).
Coverage: distinct items the engine recommended / products in the catalog.
`--quick`: queries for a seeded sample of customers only (every customer's events are still
replayed, so popularity and co-occurrence are the real ones) and at most `--max-queries`
queries: a smoke run well under 90 s.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.catalog.index import CatalogConfig, CatalogKeys
from app.catalog.vectorizers import get_vectorizer
from app.core.events import Event, parse_event
from app.core.settings import EngineConfig, load_settings
from app.engine import Engine, build_engine
from app.recs.experiments import DEFAULT, Assignment
from app.recs.keys import RecKeys
from app.recs.model import Interactions, TrainConfig, train
from app.recs.recommender import DEFAULT_WEIGHTS, RecConfig, Recommender, RecRequest
from bench._common import emit_json, percentile, redis_target
from loaders import online_retail
from loaders.catalog import load_rows, online_retail_rows
from loaders.train import catalog_vectors

ROOT = Path(__file__).resolve().parent.parent

K = 10
REPURCHASE = Assignment(None, "repurchase", repurchase=True)


@dataclass
class Invoice:
    ts: int
    user: str
    invoice: str
    items: list[str]
    events: list[dict[str, Any]]


def load_invoices(path: Path) -> tuple[list[Invoice], dict[str, online_retail.Product]]:
    scan = online_retail.scan(path)
    events, _ = online_retail.purchase_events(path, catalog=scan.catalog)
    invoices: list[Invoice] = []
    by_id: dict[str, Invoice] = {}
    try:
        for ev in events:
            inv = ev["session_id"]
            cur = by_id.get(inv)
            if cur is None:
                cur = by_id[inv] = Invoice(ev["ts"], ev["user_id"], inv, [], [])
                invoices.append(cur)
            cur.events.append(ev)
            item = ev["items"][0]["item_id"]
            if item not in cur.items:
                cur.items.append(item)
    finally:
        events.close()
    invoices.sort(key=lambda x: (x.ts, x.invoice))
    return invoices, scan.catalog


# -- metrics ---------------------------------------------------------------------------------------


def ndcg(ranked: Sequence[str], targets: set[str], k: int = K) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, it in enumerate(ranked[:k]) if it in targets)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(targets), k)))
    return dcg / ideal if ideal else 0.0


@dataclass
class Score:
    n: int = 0
    hits: int = 0
    ndcg: float = 0.0
    items: set[str] = field(default_factory=set)

    def add(self, ranked: Sequence[str], targets: set[str]) -> None:
        self.n += 1
        self.hits += any(it in targets for it in ranked[:K])
        self.ndcg += ndcg(ranked, targets)
        self.items.update(ranked[:K])

    @property
    def hit_rate(self) -> float:
        return self.hits / self.n if self.n else 0.0

    @property
    def mean_ndcg(self) -> float:
        return self.ndcg / self.n if self.n else 0.0


# -- baselines (offline, numpy) -----------------------------------------------------------------


class Baselines:
    def __init__(self, train_pairs: Sequence[tuple[str, str]]) -> None:
        inter = Interactions.from_pairs(train_pairs)
        self.items = inter.items
        self.index = {it: i for i, it in enumerate(self.items)}
        x = inter.matrix()
        counts = x.sum(axis=0)
        self.popular = [self.items[i] for i in np.lexsort((np.arange(len(counts)), -counts))]
        norms = np.sqrt(counts)
        norms[norms == 0] = 1.0
        sim = (x.T @ x) / norms[:, None] / norms[None, :]
        np.fill_diagonal(sim, 0.0)
        self.sim = sim.astype(np.float32)

    def most_popular(self, exclude: set[str], k: int = K) -> list[str]:
        out = []
        for it in self.popular:
            if it not in exclude:
                out.append(it)
                if len(out) == k:
                    break
        return out

    def item_knn(self, history: set[str], exclude: set[str], k: int = K) -> list[str]:
        idx = [self.index[it] for it in history if it in self.index]
        if not idx:
            return self.most_popular(exclude, k)
        scores = self.sim[:, idx].sum(axis=1)
        order = np.argsort(-scores, kind="stable")
        out = []
        for j in order:
            if scores[j] <= 0:
                break
            it = self.items[int(j)]
            if it not in exclude:
                out.append(it)
                if len(out) == k:
                    return out
        for it in self.most_popular(exclude | set(out), k):  # fill like any recommender would
            if len(out) == k:
                break
            out.append(it)
        return out


def repeat_baseline(counts: Counter[str], k: int = K) -> list[str]:
    return [it for it, _ in counts.most_common(k)]


# -- engine ----------------------------------------------------------------------------------------


def ingest_in_batches(engine: Engine, events: Sequence[dict[str, Any]], span_ms: int) -> None:
    """The acknowledged path, then the aggregate workers' drain, batch by batch (as a live
    shop with its workers keeping up)."""
    now = int(time.time() * 1000)
    batch: list[Event] = []
    for obj in events:
        ev = parse_event(obj, now_ms=now)
        if batch and (len(batch) >= 2000 or abs(ev.ts - batch[0].ts) > span_ms):
            engine.ingestor.ingest(batch)
            engine.drain()
            batch = []
        batch.append(ev)
    if batch:
        engine.ingestor.ingest(batch)
        engine.drain()


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sampled customers (CI smoke)")
    parser.add_argument("--split", default="2011-07-01", help="first day of the test period")
    parser.add_argument("--path", type=Path, default=settings.sample_data)
    parser.add_argument("--customers", type=int, default=None, help="sample N customers")
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-repurchase", action="store_true", help="skip protocol B")
    parser.add_argument("--end", default=None, help="first day after the evaluated period")
    parser.add_argument("--validate", action="store_true",
                        help="validation split: --split 2011-05-01 --end 2011-07-01")  # fmt: skip
    parser.add_argument("--weights", default="", help="engine weights 'name=value,...'")
    parser.add_argument("--rec", default="", help="RecConfig integers 'field=value,...'")
    args = parser.parse_args(argv)
    if args.validate:
        args.split, args.end = "2011-05-01", "2011-07-01"
    weights = dict(DEFAULT_WEIGHTS)
    for part in filter(None, (p.strip() for p in args.weights.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in DEFAULT_WEIGHTS:
            parser.error(f"--weights: unknown weight {name!r}")
        weights[name.strip()] = float(value)
    if args.quick:
        args.customers = args.customers or 300
        args.max_queries = args.max_queries or 600
    t_start = time.monotonic()
    split_ms = int(datetime.strptime(args.split, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)

    invoices, catalog = load_invoices(args.path)
    if args.end:  # the evaluated period ends here: later invoices are never read
        end_ms = int(datetime.strptime(args.end, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)
        invoices = [inv for inv in invoices if inv.ts < end_ms]
    train_inv = [inv for inv in invoices if inv.ts < split_ms]
    test_inv = [inv for inv in invoices if inv.ts >= split_ms]
    train_users = {inv.user for inv in train_inv}
    sample: set[str] | None = None
    if args.customers:
        rng = random.Random(args.seed)
        eligible = sorted({inv.user for inv in test_inv} & train_users)
        sample = set(rng.sample(eligible, min(args.customers, len(eligible))))
    train_pairs = [(inv.user, it) for inv in train_inv for it in inv.items]
    print(f"invoices: train {len(train_inv):,} (before {args.split}), test {len(test_inv):,}"
          f"{f' (before {args.end})' if args.end else ''}; "
          f"train pairs {len(train_pairs):,}; products {len(catalog):,}"
          + (f"; sampled customers {len(sample):,}" if sample else ""))  # fmt: skip

    baselines = Baselines(train_pairs)
    with redis_target("evaluate") as target:
        client = target.client()
        prefix = target.prefix
        engine = EngineConfig(key_prefix=prefix)
        keys = RecKeys(prefix)
        # Catalog: every product in stock (see the protocol).
        rows, _ = online_retail_rows(args.path)
        rows = [replace(r, record=replace(r.record, stock=100, stock_mode="set"))
                for r in rows if r.record is not None]  # fmt: skip
        t0 = time.monotonic()
        load_rows(client, CatalogConfig(key_prefix=prefix), CatalogKeys(prefix), rows,
                  get_vectorizer(), source="online-retail")  # fmt: skip
        categories = {item: p.category for item, p in catalog.items()}
        inter = Interactions.from_pairs(train_pairs)
        vectors = catalog_vectors(client, prefix, inter.items, catalog)
        report = train(client, keys, inter, categories, TrainConfig(), vectors=vectors,
                       source=f"evaluate before {args.split}")  # fmt: skip
        print(f"catalog + {report.summary()}; {time.monotonic() - t0:.1f} s")

        overrides = {f.strip(): int(v) for f, _, v in
                     (p.partition("=") for p in args.rec.split(",") if p.strip())}  # fmt: skip
        cfg = RecConfig(key_prefix=prefix, weights=weights, **overrides)
        rec = Recommender(client, engine, cfg)
        built = build_engine(client, engine, rec_config=cfg, experiments=rec.experiments)
        t0 = time.monotonic()
        replay = [ev for inv in train_inv for ev in inv.events]
        ingest_in_batches(built, replay, engine.raw_retention_ms // 2)
        print(f"replayed {len(replay):,} training events in {time.monotonic() - t0:.1f} s")
        rec.refresh()
        gc.freeze()  # as the app does after start-up (app/api/recs.py)

        history: dict[str, Counter[str]] = defaultdict(Counter)
        for inv in train_inv:
            history[inv.user].update(inv.items)
        scores: dict[str, Score] = defaultdict(Score)
        tiers: dict[str, Score] = defaultdict(Score)
        latencies: list[float] = []
        cold = Score()
        queries = 0
        t0 = time.monotonic()
        for n_inv, inv in enumerate(test_inv):
            if args.max_queries and queries >= args.max_queries:
                break
            if n_inv % 20 == 0:
                rec.refresh_trending()  # trending and popularity follow the replay
                rec.refresh_hot()
            past = history[inv.user]
            bought = set(past)
            if sample is not None and inv.user not in sample:
                pass  # not asked: its events still flow through the engine below
            elif not bought:
                lst = rec.compute(RecRequest(inv.user, "home", None, K, now_ms=inv.ts), DEFAULT)
                cold.add([i.item_id for i in lst.items], set(inv.items))
                scores["popular (cold)"].add(baselines.most_popular(set()), set(inv.items))
            else:
                new = set(inv.items) - bought
                req = RecRequest(inv.user, "home", None, K, now_ms=inv.ts)
                if new:
                    queries += 1
                    q0 = time.perf_counter()
                    lst = rec.compute(req, DEFAULT)
                    latencies.append((time.perf_counter() - q0) * 1000)
                    ranked = [i.item_id for i in lst.items]
                    scores["A engine"].add(ranked, new)
                    tiers[lst.tier].add(ranked, new)
                    scores["A popular"].add(baselines.most_popular(bought), new)
                    scores["A item-knn"].add(baselines.item_knn(bought, bought), new)
                if not args.no_repurchase:
                    allt = set(inv.items)
                    lst = rec.compute(req, REPURCHASE)
                    scores["B engine (repurchase)"].add([i.item_id for i in lst.items], allt)
                    scores["B popular"].add(baselines.most_popular(set()), allt)
                    scores["B item-knn"].add(baselines.item_knn(bought, set()), allt)
                    scores["B repeat"].add(repeat_baseline(past), allt)
            ingest_in_batches(built, inv.events, engine.raw_retention_ms // 2)
            history[inv.user].update(inv.items)
        test_s = time.monotonic() - t0
        rec.close()
        client.close()

    print(f"\n{queries:,} protocol-A queries ({cold.n:,} cold-start invoices apart) "
          f"in {test_s:.1f} s; engine latency p50 {percentile(latencies, 50):.2f} ms, "
          f"p99 {percentile(latencies, 99):.2f} ms (wall, 3 round trips, localhost)")  # fmt: skip
    print(f"{'method':<24}{'queries':>9}{'HR@10':>9}{'NDCG@10':>9}{'coverage':>10}")
    n_products = len(catalog)
    for name in sorted(scores):
        s = scores[name]
        print(f"{name:<24}{s.n:>9,}{s.hit_rate:>9.4f}{s.mean_ndcg:>9.4f}"
              f"{len(s.items) / n_products:>10.3f}")  # fmt: skip
    print(f"{'cold-start engine':<24}{cold.n:>9,}{cold.hit_rate:>9.4f}{cold.mean_ndcg:>9.4f}")
    for tier, s in sorted(tiers.items()):
        print(f"  A engine, tier {tier:<8}{s.n:>9,}{s.hit_rate:>9.4f}{s.mean_ndcg:>9.4f}")
    a, pop, knn = scores["A engine"], scores["A popular"], scores["A item-knn"]
    print(f"engine / popular {a.hit_rate / max(pop.hit_rate, 1e-9):.2f}x, "
          f"engine / item-knn {a.hit_rate / max(knn.hit_rate, 1e-9):.2f}x; "
          f"total {time.monotonic() - t_start:.1f} s")  # fmt: skip
    out: dict[str, Any] = {
        "bench": "evaluate",
        "hit_rate_at_10": round(a.hit_rate, 4),
        "ndcg_at_10": round(a.mean_ndcg, 4),
        "popular_hit_rate_at_10": round(pop.hit_rate, 4),
        "itemknn_hit_rate_at_10": round(knn.hit_rate, 4),
        "coverage": round(len(a.items) / n_products, 4),
        "popular_ndcg_at_10": round(pop.mean_ndcg, 4),
        "itemknn_ndcg_at_10": round(knn.mean_ndcg, 4),
        "queries": a.n,
        "protocol": "A: new-to-customer items, same exclusion rule for all methods",
        "latency_p50_ms": round(percentile(latencies, 50), 3),
        "latency_p99_ms": round(percentile(latencies, 99), 3),
        "quick": bool(args.quick),
        "split": args.split,
        "end": args.end,
        "weights": args.weights,
        "rec": args.rec,
    }
    if not args.no_repurchase:
        b = scores["B engine (repurchase)"]
        out["b_all_items"] = {
            "hit_rate_at_10": round(b.hit_rate, 4),
            "popular": round(scores["B popular"].hit_rate, 4),
            "itemknn": round(scores["B item-knn"].hit_rate, 4),
            "repeat": round(scores["B repeat"].hit_rate, 4),
        }
    emit_json(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
