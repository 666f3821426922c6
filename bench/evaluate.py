"""Recommendation quality on the real Online Retail purchases, against baselines, same run.

Run from the repo root: `.venv/bin/python -m bench.evaluate [--quick] [--fold NAME]`.
Folds (time splits; the data ends 2011-09-30):
  test1  train before 2011-07-01, evaluate Jul-Sep 2011   (the default run: test1 and test2)
  test2  train before 2011-08-01, evaluate Aug-Sep 2011   (a later period: a choice tuned on
                                                             one period is seen on another)
  val1   train before 2011-05-01, evaluate May-Jun 2011   (`--validate`: val1 and val2;
  val2   train before 2011-04-01, evaluate Apr-Jun 2011    nothing after 2011-06-30 is read)
Weights and every baseline's settings are chosen on the validation folds (`--weights
name=value,...` and `--rec field=value,...` override the engine's defaults for such a run;
`--peers-grid` scores the implicit settings grid there without the engine) and the test folds
score the choice once. `--split/--end` run one custom fold.
With REDIS_URL unset an embedded Redis Stack is started in a temporary folder; with it set,
that server is used under a unique key prefix removed at the end. Run one benchmark at a time.

Protocol (time split, no peeking), per fold:
1. Parse the purchase log (`loaders.online_retail`: cancellations, fees, guests skipped). One
   query per invoice: an invoice is one basket of one known customer at one time.
2. Train on invoices before the split: the engine's model (`app.recs.model.train`) and the
   baselines. The catalog is loaded with every product IN STOCK (its stock is synthetic in
   this sample; filtering real purchases as "out of stock" would only measure the synthetic
   numbers). Its `created_ms` (derived: the code's first row in the file) drives the engine's
   new-arrival boost, measured against each query's time: a product created after it is not
   new (it did not exist yet). The training purchases are replayed through the real ingestion
   path (sessions, affinities, seen-filter, history, real-time co-occurrence, trending).
3. Replay the evaluated period invoice by invoice, in time order. Before each invoice of a
   customer who bought before (train period or an earlier evaluated invoice), ask every method
   for 10 items for that customer; then ingest the invoice as live events (so the engine's
   real-time state, the updating MostPopular and every method's customer histories move on;
   the baselines' item models stay the offline ones).
4. Score: HitRate@10 (at least one of the invoice's target items in the list) and NDCG@10
   (binary relevance, ideal = min(targets, 10) hits on top), averaged over queries; beside
   them coverage (distinct items recommended / products in the catalog) and novelty (mean
   popularity rank, in the fold's training period, of the items recommended; 1 = the best
   seller, items unsold in training rank last), so a gain bought by recommending only best
   sellers shows.

Two target definitions, both reported; the JSON line carries protocol A:
  A "new items" (primary): targets = the invoice's items the customer never bought before;
    invoices without any are skipped. Every method gets the same candidate rule: nothing the
    customer bought before (the engine by its seen-filter, the baselines by the exact set).
    This is what the engine's default `home` list is for: discovery.
  B "all items": targets = every item of the invoice. Customers here re-buy a lot, so the
    engine runs with the documented repurchase rule (variant `repurchase: true`: bought items
    come back as 'buy again' candidates from the long-term history) and the baselines are
    unfiltered; a "repeat" baseline (the customer's own most bought items) is shown for scale.
Methods (bench/_baselines.py): the engine (the full serving computation: rec_context +
item-slot lists + `recommend`, timed per query), MostPopular (training period), MostPopular
updating with the replay, the project's numpy cosine item-kNN, and implicit's ALS, BM25 and
cosine item-kNN (extra `peers`; skipped with a line when absent). `ratio_vs_best_peer` is the
engine's HR@10 over the best non-popularity baseline's, `ratio_vs_mostpopular_updating` over
the updating MostPopular's.
`--quick`: queries for a seeded sample of customers only (every customer's events are still
replayed, so popularity and co-occurrence are the real ones) and at most `--max-queries`
queries per fold: a CI smoke run of a few minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.catalog.index import CatalogConfig, CatalogKeys
from app.catalog.vectorizers import get_vectorizer
from app.core.events import Event, parse_event
from app.core.settings import EngineConfig, load_settings
from app.engine import Engine, build_engine
from app.recs.config import DEFAULT_WEIGHTS, RecConfig
from app.recs.experiments import DEFAULT, Assignment
from app.recs.keys import RecKeys
from app.recs.lists import RecRequest
from app.recs.model import Interactions, TrainConfig, train
from app.recs.recommender import Recommender
from bench._baselines import (
    PEER_SETTINGS,
    ImplicitPeer,
    Method,
    MostPopular,
    NumpyItemKnn,
    TrainingData,
    UpdatingMostPopular,
    implicit_available,
    load_peers,
    peer_grid,
)
from bench._common import emit_json, percentile, redis_target
from loaders import online_retail
from loaders.catalog import load_rows, online_retail_rows
from loaders.train import catalog_vectors

K = 10
REPURCHASE = Assignment(None, "repurchase", repurchase=True)


@dataclass(frozen=True)
class Fold:
    name: str
    split: str  # first day of the evaluated period
    end: str | None  # first day after it (None: the end of the data)


FOLDS = {
    "test1": Fold("test1", "2011-07-01", None),
    "test2": Fold("test2", "2011-08-01", None),
    "val1": Fold("val1", "2011-05-01", "2011-07-01"),
    "val2": Fold("val2", "2011-04-01", "2011-07-01"),
}
TEST_FOLDS = ("test1", "test2")
VALIDATION_FOLDS = ("val1", "val2")


def day_ms(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


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
    rank_sum: float = 0.0  # popularity ranks of every recommended item (novelty)
    n_recommended: int = 0

    def add(self, ranked: Sequence[str], targets: set[str], pop_rank: dict[str, int]) -> None:
        self.n += 1
        self.hits += any(it in targets for it in ranked[:K])
        self.ndcg += ndcg(ranked, targets)
        self.items.update(ranked[:K])
        unsold = len(pop_rank) + 1
        self.rank_sum += sum(pop_rank.get(it, unsold) for it in ranked[:K])
        self.n_recommended += len(ranked[:K])

    @property
    def hit_rate(self) -> float:
        return self.hits / self.n if self.n else 0.0

    @property
    def mean_ndcg(self) -> float:
        return self.ndcg / self.n if self.n else 0.0

    @property
    def mean_pop_rank(self) -> float:
        return self.rank_sum / self.n_recommended if self.n_recommended else 0.0

    def summary(self, n_products: int) -> dict[str, float]:
        return {
            "hit_rate_at_10": round(self.hit_rate, 4),
            "ndcg_at_10": round(self.mean_ndcg, 4),
            "coverage": round(len(self.items) / n_products, 4),
            "mean_pop_rank": round(self.mean_pop_rank, 1),
            "queries": self.n,
        }


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


@dataclass
class EngineRun:
    rec: Recommender
    engine: Engine
    span_ms: int
    # the last computation's candidate pool (every item any source found) and the candidates
    # sent to `recommend` (the best `max_candidates` by estimated score): the ceiling analysis
    pool: set[str] = field(default_factory=set)
    sent: list[str] = field(default_factory=list)
    terms: dict[str, dict[str, float]] = field(default_factory=dict)  # item -> source -> est.
    dump: Path | None = None  # --dump-pool, this fold's file

    def __post_init__(self) -> None:
        self.rec.pool_observer = self.observe_pool

    def observe_pool(self, pool: Any, sent: Sequence[Any]) -> None:
        self.pool = set(pool.found)
        self.sent = [c.item for c in sent]
        terms: dict[str, dict[str, float]] = {}
        for item, parts in pool.est.items():
            by_src = terms[item] = {}
            for (src, _anchor), term in parts.items():
                by_src[src] = by_src.get(src, 0.0) + term
        self.terms = terms

    def ingest(self, events: Sequence[dict[str, Any]]) -> None:
        ingest_in_batches(self.engine, events, self.span_ms)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The trainer's defaults with `--train field=value,...` (numbers) over them."""
    fields = {f.name: type(getattr(TrainConfig(), f.name)) for f in dataclasses.fields(TrainConfig)}
    overrides: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in args.train.split(","))):
        name, _, value = part.partition("=")
        if fields.get(name.strip()) not in (int, float):
            raise SystemExit(f"--train: {name.strip()!r} is not a numeric TrainConfig field")
        overrides[name.strip()] = fields[name.strip()](value)
    return TrainConfig(**overrides)


@contextmanager
def engine_for_fold(
    args: argparse.Namespace,
    fold: Fold,
    train_inv: Sequence[Invoice],
    catalog: dict[str, online_retail.Product],
    weights: dict[str, float],
) -> Iterator[EngineRun]:
    """The engine trained on the fold's training period and fed its purchases, on a fresh
    server (or a fresh prefix of REDIS_URL)."""
    train_pairs = [(inv.user, it) for inv in train_inv for it in inv.items]
    with redis_target("evaluate") as target:
        client = target.client()
        prefix = target.prefix
        engine = EngineConfig(key_prefix=prefix)
        keys = RecKeys(prefix)
        # Every product in stock (see the protocol); the catalog's popularity (the feature
        # 'prior', the long-run rate of 'rise') counts the training period's lines only: the
        # file's own count includes the evaluated period.
        lines = Counter(ev["items"][0]["item_id"] for inv in train_inv for ev in inv.events)
        rows, _ = online_retail_rows(args.path)
        rows = [replace(r, record=replace(r.record, stock=100, stock_mode="set",
                                          popularity=float(lines.get(r.record.item_id, 0))))
                for r in rows if r.record is not None]  # fmt: skip
        t0 = time.monotonic()
        load_rows(client, CatalogConfig(key_prefix=prefix), CatalogKeys(prefix), rows,
                  get_vectorizer(), source="online-retail")  # fmt: skip
        categories = {item: p.category for item, p in catalog.items()}
        inter = Interactions.from_pairs(train_pairs)
        vectors = catalog_vectors(client, prefix, inter.items, catalog)
        report = train(client, keys, inter, categories, train_config(args), vectors=vectors,
                       source=f"evaluate before {fold.split}",
                       invoices=[(inv.user, inv.ts, inv.items) for inv in train_inv])  # fmt: skip
        print(f"  catalog + {report.summary()}; {time.monotonic() - t0:.1f} s")
        overrides = {f.strip(): int(v) for f, _, v in
                     (p.partition("=") for p in args.rec.split(",") if p.strip())}  # fmt: skip
        cfg = RecConfig(key_prefix=prefix, weights=weights, **overrides)
        rec = Recommender(client, engine, cfg)
        built = build_engine(client, engine, rec_config=cfg, experiments=rec.experiments)
        run = EngineRun(rec, built, engine.raw_retention_ms // 2)
        if args.dump_pool is not None:
            run.dump = args.dump_pool.with_name(f"{args.dump_pool.stem}.{fold.name}.jsonl")
            run.dump.unlink(missing_ok=True)
        t0 = time.monotonic()
        replay = [ev for inv in train_inv for ev in inv.events]
        run.ingest(replay)
        print(f"  replayed {len(replay):,} training events in {time.monotonic() - t0:.1f} s")
        rec.refresh()
        gc.freeze()  # as the app does after start-up (app/api/recs.py)
        try:
            yield run
        finally:
            rec.close()
            client.close()
            gc.unfreeze()


# -- one fold ------------------------------------------------------------------------------------


@dataclass
class FoldResult:
    fold: Fold
    scores: dict[str, Score]
    tiers: dict[str, Score]
    cold: Score
    latencies: list[float]
    ceiling: Counter[str]
    baseline_keys: dict[str, str]  # JSON key -> method name, protocol A baselines
    n_products: int
    seconds: float


def method_key(method: Method) -> str:
    if isinstance(method, ImplicitPeer):
        return f"implicit_{method.setting.model}"
    return {
        MostPopular: "mostpopular",
        UpdatingMostPopular: "mostpopular_updating",
        NumpyItemKnn: "itemknn_numpy",
    }[type(method)]


def split_fold(invoices: Sequence[Invoice], fold: Fold) -> tuple[list[Invoice], list[Invoice]]:
    end_ms = day_ms(fold.end) if fold.end else None  # later invoices are never read
    split_ms = day_ms(fold.split)
    kept = [inv for inv in invoices if end_ms is None or inv.ts < end_ms]
    return [inv for inv in kept if inv.ts < split_ms], [inv for inv in kept if inv.ts >= split_ms]


def sampled_customers(
    args: argparse.Namespace, train_inv: Sequence[Invoice], test_inv: Sequence[Invoice]
) -> set[str] | None:
    if not args.customers:
        return None
    rng = random.Random(args.seed)
    eligible = sorted({inv.user for inv in test_inv} & {inv.user for inv in train_inv})
    return set(rng.sample(eligible, min(args.customers, len(eligible))))


@dataclass
class Tally:
    """Every method's scores over one fold (see `Score`)."""

    pop_rank: dict[str, int]
    scores: dict[str, Score] = field(default_factory=lambda: defaultdict(Score))
    tiers: dict[str, Score] = field(default_factory=lambda: defaultdict(Score))
    cold: Score = field(default_factory=Score)
    latencies: list[float] = field(default_factory=list)
    ceiling: Counter[str] = field(default_factory=Counter)

    def add_ceiling(self, run: EngineRun, targets: set[str]) -> None:
        """Candidate recall: is a target anywhere in the pool, among the candidates sent?
        Either is the HR@10 of an oracle ranking of that set (it would put the target first)."""
        self.ceiling["queries"] += 1
        self.ceiling["in_pool"] += bool(run.pool & targets)
        self.ceiling["in_sent"] += bool(targets.intersection(run.sent))
        self.ceiling["pool_size"] += len(run.pool)

    def add(self, name: str, ranked: Sequence[str], targets: set[str]) -> None:
        self.scores[name].add(ranked, targets, self.pop_rank)


def dump_pool(
    path: Path,
    run: EngineRun,
    inv: Invoice,
    targets: set[str],
    ranked: Sequence[str],
    tier: str,
    bought: set[str],
) -> None:
    """One JSON line per protocol-A query: the engine's candidate pool with each item's
    estimated score term per source (items the customer bought left out: the Function's
    seen-filter drops them), the engine's list and the targets (offline analysis of the
    ranking, `bench/signals.py --pools`)."""
    row = {
        "user": inv.user,
        "ts": inv.ts,
        "tier": tier,
        "targets": sorted(targets),
        "ranked": list(ranked),
        "sent": run.sent,
        "pool": {it: {s: round(v, 6) for s, v in t.items()} for it, t in run.terms.items()},
    }
    with path.open("a") as f:
        f.write(json.dumps(row, separators=(",", ":")) + "\n")  # fmt: skip


@dataclass
class FoldBaselines:
    popular: MostPopular
    updating: UpdatingMostPopular
    knn: NumpyItemKnn
    all: list[Method]  # protocol A: every baseline, popular and updating included


def fit_baselines(
    args: argparse.Namespace,
    data: TrainingData,
    train_pairs: Sequence[tuple[str, str]],
    peer_settings: Sequence[Any] | None,
) -> FoldBaselines:
    t0 = time.monotonic()
    popular, updating, knn = MostPopular(data), UpdatingMostPopular(train_pairs), NumpyItemKnn(data)
    if args.no_peers:
        peers: list[ImplicitPeer] = []
    elif peer_settings is None:
        peers = load_peers(data)
    else:
        peers = [ImplicitPeer(data, s) for s in peer_settings]
    methods: list[Method] = [popular, updating, knn, *peers]
    names = ", ".join(m.name for m in methods) if len(methods) < 10 else f"{len(methods)}"
    print(f"  baselines fitted in {time.monotonic() - t0:.1f} s: {names}")
    return FoldBaselines(popular, updating, knn, methods)


def ask_returning(
    args: argparse.Namespace,
    engine: EngineRun | None,
    b: FoldBaselines,
    tally: Tally,
    inv: Invoice,
    past: Counter[str],
) -> bool:
    """Ask every method before an invoice of a customer who bought before; True when it was
    a protocol-A query (the invoice holds an item new to the customer)."""
    bought = set(past)
    targets_all = set(inv.items)
    new = targets_all - bought
    req = RecRequest(inv.user, "home", None, K, now_ms=inv.ts)
    if new:
        if engine is not None:
            q0 = time.perf_counter()
            lst = engine.rec.compute(req, DEFAULT)
            tally.latencies.append((time.perf_counter() - q0) * 1000)
            ranked = [i.item_id for i in lst.items]
            tally.add("A engine", ranked, new)
            tally.add_ceiling(engine, new)
            if engine.dump is not None:
                dump_pool(engine.dump, engine, inv, new, ranked, lst.tier, bought)
            tally.tiers[lst.tier].add(ranked, new, tally.pop_rank)
        union = set(engine.pool) if engine is not None else set()
        for m in b.all:
            ranked = m.recommend(past, bought)
            tally.add(f"A {m.name}", ranked, new)
            union.update(ranked[:K])
        if engine is not None:  # the oracle of every set this run knows for the query
            tally.ceiling["in_any"] += bool(union & new)
    if not args.no_repurchase:
        if engine is not None:
            lst = engine.rec.compute(req, REPURCHASE)
            tally.add("B engine (repurchase)", [i.item_id for i in lst.items], targets_all)
        tally.add("B popular", b.popular.recommend(past, set()), targets_all)
        tally.add("B item-knn", b.knn.recommend(past, set()), targets_all)
        tally.add("B repeat", repeat_baseline(past), targets_all)
    return bool(new)


def run_fold(
    args: argparse.Namespace,
    fold: Fold,
    invoices: Sequence[Invoice],
    catalog: dict[str, online_retail.Product],
    weights: dict[str, float],
    with_engine: bool = True,
    peer_settings: Sequence[Any] | None = None,
) -> FoldResult:
    t_start = time.monotonic()
    train_inv, test_inv = split_fold(invoices, fold)
    sample = sampled_customers(args, train_inv, test_inv)
    train_pairs = [(inv.user, it) for inv in train_inv for it in inv.items]
    print(f"\n== fold {fold.name}: train {len(train_inv):,} invoices (before {fold.split}), "
          f"evaluate {len(test_inv):,}{f' (before {fold.end})' if fold.end else ''}; "
          f"train pairs {len(train_pairs):,}; products {len(catalog):,}"
          + (f"; sampled customers {len(sample):,}" if sample else ""))  # fmt: skip
    data = TrainingData(train_pairs)
    b = fit_baselines(args, data, train_pairs, peer_settings)
    tally = Tally(data.popularity_rank())
    history: dict[str, Counter[str]] = defaultdict(Counter)
    for inv in train_inv:
        history[inv.user].update(inv.items)

    with (engine_for_fold(args, fold, train_inv, catalog, weights) if with_engine
          else _no_engine()) as engine:  # fmt: skip
        t0 = time.monotonic()
        queries = 0
        for n_inv, inv in enumerate(test_inv):
            if args.max_queries and queries >= args.max_queries:
                break
            if engine is not None and n_inv % 20 == 0:
                engine.rec.refresh_trending()  # trending and popularity follow the replay
                engine.rec.refresh_hot()
            asked = sample is None or inv.user in sample  # others' events still flow below
            if asked and not history[inv.user]:
                if engine is not None:
                    req = RecRequest(inv.user, "home", None, K, now_ms=inv.ts)
                    lst = engine.rec.compute(req, DEFAULT)
                    tally.cold.add([i.item_id for i in lst.items], set(inv.items), tally.pop_rank)
                tally.add("popular (cold)", b.popular.recommend(Counter(), set()), set(inv.items))
            elif asked:
                queries += ask_returning(args, engine, b, tally, inv, history[inv.user])
            if engine is not None:
                engine.ingest(inv.events)
            b.updating.observe(inv.user, inv.items)
            history[inv.user].update(inv.items)
        print(f"  {queries:,} protocol-A queries ({tally.cold.n:,} cold-start invoices apart) "
              f"in {time.monotonic() - t0:.1f} s")  # fmt: skip
    return FoldResult(
        fold, tally.scores, tally.tiers, tally.cold, tally.latencies, tally.ceiling,
        {method_key(m): f"A {m.name}" for m in b.all},
        len(catalog), time.monotonic() - t_start,
    )  # fmt: skip


@contextmanager
def _no_engine() -> Iterator[None]:
    yield None


# -- report --------------------------------------------------------------------------------------


NON_PEERS = ("mostpopular", "mostpopular_updating")  # popularity is not a "peer" recommender


def print_fold(res: FoldResult) -> None:
    s = res.scores
    print(f"\n-- {res.fold.name}: train before {res.fold.split}, evaluated "
          f"{res.fold.split} .. {res.fold.end or 'end of data'}")  # fmt: skip
    if res.latencies:
        print(f"engine latency p50 {percentile(res.latencies, 50):.2f} ms, "
              f"p99 {percentile(res.latencies, 99):.2f} ms (wall, 3 round trips)")  # fmt: skip
    print(f"{'method':<62}{'queries':>8}{'HR@10':>8}{'NDCG@10':>9}{'cover':>7}{'poprank':>9}")
    for name in sorted(s):
        sc = s[name]
        print(f"{name:<62}{sc.n:>8,}{sc.hit_rate:>8.4f}{sc.mean_ndcg:>9.4f}"
              f"{len(sc.items) / res.n_products:>7.3f}{sc.mean_pop_rank:>9.1f}")  # fmt: skip
    if res.cold.n:
        print(f"{'cold-start engine':<62}{res.cold.n:>8,}{res.cold.hit_rate:>8.4f}"
              f"{res.cold.mean_ndcg:>9.4f}")  # fmt: skip
    if res.ceiling["queries"]:
        c = res.ceiling
        print(f"ceiling (oracle HR@10 of a set = share of queries with a target in it): "
              f"candidates sent {c['in_sent'] / c['queries']:.4f}, whole pool "
              f"{c['in_pool'] / c['queries']:.4f} "
              f"(mean {c['pool_size'] / c['queries']:.0f} items), "
              f"pool or any method's top 10 {c['in_any'] / c['queries']:.4f}")  # fmt: skip
    for tier, sc in sorted(res.tiers.items()):
        print(f"  A engine, tier {tier:<46}{sc.n:>8,}{sc.hit_rate:>8.4f}{sc.mean_ndcg:>9.4f}")


def ceiling_json(c: Counter[str]) -> dict[str, float]:
    """Oracle HR@10 of the candidates sent, of the whole pool, and of the pool together with
    every method's top 10 (share of queries with a target in the set)."""
    n = max(c["queries"], 1)
    return {"oracle_sent": round(c["in_sent"] / n, 4), "oracle_pool": round(c["in_pool"] / n, 4),
            "oracle_pool_or_any_list": round(c["in_any"] / n, 4),
            "mean_pool_size": round(c["pool_size"] / n, 1)}  # fmt: skip


def fold_json(res: FoldResult, args: argparse.Namespace) -> dict[str, Any]:
    s = res.scores
    methods = {key: s[name].summary(res.n_products) for key, name in res.baseline_keys.items()}
    out: dict[str, Any] = {
        "name": res.fold.name,
        "split": res.fold.split,
        "end": res.fold.end,
        "queries": s["A engine"].n if "A engine" in s else s[next(iter(s))].n,
        "seconds": round(res.seconds, 1),
    }
    if "A engine" not in s:
        out["methods"] = methods
        return out
    engine = s["A engine"]
    methods = {"engine": engine.summary(res.n_products), **methods}
    peers = {k: v for k, v in methods.items() if k != "engine" and k not in NON_PEERS}
    best = max(peers, key=lambda k: peers[k]["hit_rate_at_10"])
    upd = methods["mostpopular_updating"]["hit_rate_at_10"]
    out.update({
        "methods": methods,
        "best_peer": best,
        "ratio_vs_best_peer": round(engine.hit_rate / max(peers[best]["hit_rate_at_10"], 1e-9), 3),
        "ratio_vs_mostpopular_updating": round(engine.hit_rate / max(upd, 1e-9), 3),
        "ratio_vs_mostpopular": round(
            engine.hit_rate / max(methods["mostpopular"]["hit_rate_at_10"], 1e-9), 3),
        "latency_p50_ms": round(percentile(res.latencies, 50), 3),
        "latency_p99_ms": round(percentile(res.latencies, 99), 3),
        "cold_start": {"queries": res.cold.n, "hit_rate_at_10": round(res.cold.hit_rate, 4),
                       "popular": round(s["popular (cold)"].hit_rate, 4)},
        "tiers": {t: {"queries": sc.n, "hit_rate_at_10": round(sc.hit_rate, 4)}
                  for t, sc in sorted(res.tiers.items())},
        "ceiling": ceiling_json(res.ceiling),
    })  # fmt: skip
    if not args.no_repurchase:
        out["b_all_items"] = {
            "hit_rate_at_10": round(s["B engine (repurchase)"].hit_rate, 4),
            "popular": round(s["B popular"].hit_rate, 4),
            "itemknn": round(s["B item-knn"].hit_rate, 4),
            "repeat": round(s["B repeat"].hit_rate, 4),
        }
    return out


# -- the implicit settings grid (validation only) ------------------------------------------------


def run_peers_grid(
    args: argparse.Namespace,
    folds: Sequence[Fold],
    invoices: Sequence[Invoice],
    catalog: dict[str, online_retail.Product],
) -> int:
    if not implicit_available():
        print("implicit is not installed: pip install -e '.[peers]'")
        return 1
    if any(f.name.startswith("test") for f in folds):
        print("--peers-grid chooses settings: run it on the validation folds (--validate)")
        return 2
    grid = peer_grid(args.grid_rounds or (1, 2))
    results = [run_fold(args, f, invoices, catalog, {}, with_engine=False, peer_settings=grid)
               for f in folds]  # fmt: skip
    print(f"\n{'setting':<70}" + "".join(f"{f.name:>9}" for f in folds) + f"{'mean':>9}")
    best: dict[str, tuple[float, str]] = {}
    for setting in grid:
        hrs = [r.scores[f"A {setting.label}"].hit_rate for r in results]
        mean = sum(hrs) / len(hrs)
        print(f"{setting.label:<70}" + "".join(f"{h:>9.4f}" for h in hrs) + f"{mean:>9.4f}")
        if mean > best.get(setting.model, (-1.0, ""))[0]:
            best[setting.model] = (mean, setting.label)
    for name in ("A MostPopular", "A MostPopular (updating)", "A item-kNN (numpy cosine)"):
        hrs = [r.scores[name].hit_rate for r in results]
        print(f"{name[2:]:<70}" + "".join(f"{h:>9.4f}" for h in hrs)
              + f"{sum(hrs) / len(hrs):>9.4f}")  # fmt: skip
    print("\nbest per model (mean HR@10 of the folds):")
    for model, (mean, label) in sorted(best.items()):
        print(f"  {model}: {label}  {mean:.4f}   (shipped: {PEER_SETTINGS[model].label})")
    emit_json({"bench": "evaluate", "mode": "peers-grid", "folds": [f.name for f in folds],
               "best": {m: {"setting": lab, "mean_hit_rate_at_10": round(v, 4)}
                        for m, (v, lab) in best.items()}})  # fmt: skip
    return 0


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, float]]:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sampled customers (CI smoke)")
    parser.add_argument("--fold", action="append", choices=sorted(FOLDS),
                        help="run this fold only (repeatable)")  # fmt: skip
    parser.add_argument("--validate", action="store_true", help="the validation folds val1, val2")
    parser.add_argument("--split", default=None, help="custom fold: first day evaluated")
    parser.add_argument("--end", default=None, help="custom fold: first day after it")
    parser.add_argument("--path", type=Path, default=settings.sample_data)
    parser.add_argument("--customers", type=int, default=None, help="sample N customers")
    parser.add_argument("--max-queries", type=int, default=None, help="per fold")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-repurchase", action="store_true", help="skip protocol B")
    parser.add_argument("--no-peers", action="store_true", help="skip the implicit baselines")
    parser.add_argument("--no-engine", action="store_true", help="the baselines only")
    parser.add_argument("--weights", default="", help="engine weights 'name=value,...'")
    parser.add_argument("--rec", default="", help="RecConfig integers 'field=value,...'")
    parser.add_argument("--dump-pool", type=Path, default=None,
                        help="append each query's candidate pool to this JSON-lines file "
                        "(the fold's name is added to the file name)")  # fmt: skip
    parser.add_argument("--train", default="", help="TrainConfig numbers 'field=value,...'")
    parser.add_argument("--peers-grid", action="store_true",
                        help="score the implicit grid (validation folds, no engine)")  # fmt: skip
    parser.add_argument("--grid-round", dest="grid_rounds", type=int, action="append",
                        choices=(1, 2), help="--peers-grid: this round (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    weights = dict(DEFAULT_WEIGHTS)
    for part in filter(None, (p.strip() for p in args.weights.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in DEFAULT_WEIGHTS:
            parser.error(f"--weights: unknown weight {name!r}")
        weights[name.strip()] = float(value)
    if args.quick:
        args.customers = args.customers or 300
        args.max_queries = args.max_queries or 600
    return args, weights


def chosen_folds(args: argparse.Namespace) -> list[Fold]:
    if args.split:
        return [Fold("custom", args.split, args.end)]
    if args.fold:
        return [FOLDS[name] for name in args.fold]
    return [FOLDS[name] for name in (VALIDATION_FOLDS if args.validate else TEST_FOLDS)]


def main(argv: Sequence[str] | None = None) -> int:
    args, weights = parse_args(argv)
    t_start = time.monotonic()
    folds = chosen_folds(args)
    invoices, catalog = load_invoices(args.path)
    if args.peers_grid:
        return run_peers_grid(args, folds, invoices, catalog)
    results = []
    for fold in folds:
        results.append(run_fold(args, fold, invoices, catalog, weights, not args.no_engine))
        print_fold(results[-1])  # each fold's table as soon as it is done
    per_fold = [fold_json(res, args) for res in results]
    if args.no_engine:
        emit_json({"bench": "evaluate", "mode": "baselines", "folds": per_fold})
        return 0
    print()
    for f in per_fold:
        print(f"{f['name']}: engine HR@10 {f['methods']['engine']['hit_rate_at_10']:.4f} = "
              f"{f['ratio_vs_mostpopular_updating']:.2f}x MostPopular (updating), "
              f"{f['ratio_vs_best_peer']:.2f}x the best peer ({f['best_peer']})")  # fmt: skip
    print(f"total {time.monotonic() - t_start:.1f} s")
    emit_json({
        "bench": "evaluate",
        "protocol": "A: new-to-customer items, same exclusion rule for all methods",
        "quick": bool(args.quick),
        "implicit": implicit_available(),
        "weights": args.weights,
        "rec": args.rec,
        "train": args.train,
        "folds": per_fold,
        "min_ratio_vs_best_peer": min(f["ratio_vs_best_peer"] for f in per_fold),
        "min_ratio_vs_mostpopular_updating": min(
            f["ratio_vs_mostpopular_updating"] for f in per_fold),
        "seconds": round(time.monotonic() - t_start, 1),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
