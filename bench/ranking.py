"""A learned ranking of the engine's candidate pools (issue 20): can any ranking of the
candidates the engine already finds, learned from the data, reach the relevance goal?

Run from the repo root, after the two evaluation runs that dump the pools:

    .venv/bin/python -m bench.evaluate --validate --no-peers --no-repurchase --dump-pool P
    .venv/bin/python -m bench.evaluate --no-repurchase --dump-pool P > test.log
    .venv/bin/python -m bench.ranking --pools P --evaluate-log test.log

`--pools P` reads P.val1.jsonl, P.val2.jsonl, P.test1.jsonl and P.test2.jsonl (one line per
protocol-A query: user, ts, tier, targets, the engine's ranked list, the candidates sent to
`recommend` and the pool: item -> estimated score term per source). `--evaluate-log` is the
output of the test run (its last line, the JSON): the updating MostPopular's and the best
implicit peer's HR@10 come from the run that produced the test pools.

Candidates per query: the ones sent to `recommend` (60) and the engine's list (`--candidates
pool`: every item of the pool). Features per (query, candidate), `FEATURES`:
- the engine's: its estimated term per source, their sum, the number of sources, its rank
  in the sent list and in its own top 10;
- the item's, from the purchases strictly before the query's time (the query's own invoice
  and everything later are never read): sales lines in the last 7 / 30 / 90 days and
  overall, distinct buyers, trend ratios, days since first and last sale, last price paid;
- the shopper's, same rule: invoices, distinct items, days since the last and first
  invoice, mean basket size, price level, how many of the items bought are in the
  candidate's category, whether the last invoice held that category;
- the query's tier (one-hot) and candidate count.

Learners: LightGBM `lambdarank` (extra `dev` / `peers`; skipped with a line when absent) and
a pointwise logistic regression (numpy, L2, Newton steps) on standardised features.

Protocol (the validation folds overlap in time: val1 evaluates May-Jun 2011, val2 Apr-Jun,
so their May-Jun queries are the same invoices): settings are chosen by cross-fitting on
disjoint periods, fit on val2's April queries -> score val1 (May-Jun), and fit on val1 ->
score val2's April queries; the mean HR@10 of the two picks the setting. The final model is
fitted on val1 + val2's April queries (each validation invoice once) and scores each test
fold once. The engine's own order and the oracle of the candidate set are scored on the same
queries. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import emit_json
from bench.evaluate import FOLDS, Invoice, day_ms, load_invoices, ndcg

K = 10
DAY_MS = 86_400_000
WINDOWS_DAYS = (1, 7, 30, 90)
SPLIT_MS = day_ms(FOLDS["val1"].split)  # val2's queries before it do not overlap val1's


# -- pools ---------------------------------------------------------------------------------------


@dataclass
class PoolQuery:
    user: str
    ts: int
    tier: str
    targets: set[str]
    ranked: list[str]
    sent: list[str]
    pool: dict[str, dict[str, float]]


def read_pools(path: Path) -> list[PoolQuery]:
    out = []
    with path.open() as f:
        for line in f:
            r = json.loads(line)
            out.append(
                PoolQuery(
                    r["user"],
                    r["ts"],
                    r["tier"],
                    set(r["targets"]),
                    r["ranked"],
                    r["sent"],
                    r["pool"],
                )
            )
    return out


def candidates(q: PoolQuery, mode: str) -> list[str]:
    """The candidate set, in the engine's order (its list, then the rest of what it sent,
    then, in `pool` mode, the rest of the pool by estimated score): ties of a learner keep
    the engine's order."""
    seen: set[str] = set()
    out: list[str] = []
    rest = sorted(q.pool, key=lambda it: -sum(q.pool[it].values())) if mode == "pool" else []
    for it in itertools.chain(q.ranked, q.sent, rest):
        if it not in seen:
            seen.add(it)
            out.append(it)
    return out


# -- history: everything strictly before a time ---------------------------------------------------


@dataclass
class UserState:
    invoices: int = 0
    items: Counter[str] = field(default_factory=Counter)  # distinct items -> invoices
    lines: int = 0
    log_price_sum: float = 0.0
    priced: int = 0
    first_ts: int = 0
    last_ts: int = 0
    last_categories: set[str] = field(default_factory=set)


class History:
    """The purchase log, read only strictly before a query's time: the query's own invoice
    (same timestamp) and later ones never reach a feature."""

    def __init__(self, invoices: Sequence[Invoice], categories: dict[str, str]) -> None:
        self.categories = categories
        sales: dict[str, list[tuple[int, float]]] = defaultdict(list)
        first_buy: dict[str, dict[str, int]] = defaultdict(dict)
        self.user_invoices: dict[str, list[Invoice]] = defaultdict(list)
        for inv in sorted(invoices, key=lambda x: x.ts):
            self.user_invoices[inv.user].append(inv)
            for ev in inv.events:
                line = ev["items"][0]
                sales[line["item_id"]].append((inv.ts, float(line.get("price") or 0.0)))
            for it in inv.items:
                first_buy[it].setdefault(inv.user, inv.ts)
        self.sale_ts = {it: np.array([t for t, _ in v], dtype=np.int64) for it, v in sales.items()}
        self.sale_price = {it: [p for _, p in v] for it, v in sales.items()}
        self.buyer_ts = {
            it: np.sort(np.fromiter(v.values(), dtype=np.int64)) for it, v in first_buy.items()
        }
        self.user_ts = {u: [inv.ts for inv in v] for u, v in self.user_invoices.items()}

    def user_state(self, user: str, ts: int) -> UserState:
        n = bisect.bisect_left(self.user_ts.get(user, []), ts)
        st = UserState(invoices=n)
        for inv in self.user_invoices.get(user, [])[:n]:
            st.items.update(inv.items)
            for ev in inv.events:
                price = float(ev["items"][0].get("price") or 0.0)
                st.lines += 1
                if price > 0:
                    st.log_price_sum += math.log(price)
                    st.priced += 1
        if n:
            invs = self.user_invoices[user]
            st.first_ts, st.last_ts = invs[0].ts, invs[n - 1].ts
            st.last_categories = {self.categories.get(it, "") for it in invs[n - 1].items}
        return st

    def item_row(self, item: str, ts: int) -> list[float]:
        """Sales lines in each window and overall, distinct buyers, the share of last month's
        lines bought by first-time buyers, trend ratios, days since
        the first and the last sale, log of the last price paid (NaN: never sold before)."""
        times = self.sale_ts.get(item)
        n_all = int(np.searchsorted(times, ts, "left")) if times is not None else 0
        if times is None or n_all == 0:
            return [0.0] * (len(WINDOWS_DAYS) + 5) + [math.nan] * 3
        windows = [
            n_all - int(np.searchsorted(times, ts - d * DAY_MS, "left")) for d in WINDOWS_DAYS
        ]
        buyer_ts = self.buyer_ts[item]
        buyers = int(np.searchsorted(buyer_ts, ts, "left"))
        new_buyers = buyers - int(np.searchsorted(buyer_ts, ts - 30 * DAY_MS, "left"))
        _, w7, w30, w90 = windows
        price = self.sale_price[item][n_all - 1]
        return [
            *(math.log1p(w) for w in windows),
            math.log1p(n_all),
            math.log1p(buyers),
            new_buyers / (w30 + 1),  # adoption: share of last month's sales to first-time buyers
            math.log((w7 + 1) / (w30 * 7 / 30 + 1)),  # selling faster this week than this month
            math.log((w30 + 1) / (w90 / 3 + 1)),
            (ts - int(times[0])) / DAY_MS,
            (ts - int(times[n_all - 1])) / DAY_MS,
            math.log(price) if price > 0 else math.nan,
        ]


ITEM_FEATURES = (
    *(f"item_lines_{d}d" for d in WINDOWS_DAYS),
    "item_lines_all",
    "item_buyers",
    "item_adoption_30d",
    "item_trend_7_30",
    "item_trend_30_90",
    "item_age_days",
    "item_days_since_sale",
    "item_log_price",
)
USER_FEATURES = (
    "user_invoices",
    "user_items",
    "user_days_since_last",
    "user_days_since_first",
    "user_basket",
    "user_log_price",
    "price_vs_user",
    "user_cat_items",
    "user_cat_share",
    "cat_in_last_invoice",
)
ENGINE_FEATURES = ("est_sum", "n_sources", "sent_rank", "engine_rank", "est_rank")


@dataclass
class Schema:
    sources: list[str]  # the engine's score terms (from the pool files)
    tiers: list[str]

    @property
    def features(self) -> list[str]:
        return [
            *(f"term_{s}" for s in self.sources),
            *ENGINE_FEATURES,
            *ITEM_FEATURES,
            *USER_FEATURES,
            *(f"tier_{t}" for t in self.tiers),
            "n_candidates",
        ]


def schema_of(queries: Sequence[PoolQuery]) -> Schema:
    sources = sorted({s for q in queries for t in q.pool.values() for s in t})
    return Schema(sources, sorted({q.tier for q in queries}))


def query_matrix(q: PoolQuery, items: Sequence[str], hist: History, schema: Schema) -> np.ndarray:
    """One row per candidate, `schema.features` columns."""
    terms = np.array([[q.pool.get(it, {}).get(s, 0.0) for s in schema.sources] for it in items])
    terms = terms.reshape(len(items), len(schema.sources))
    est = terms.sum(axis=1)
    sent = {it: i for i, it in enumerate(q.sent)}
    ranked = {it: i for i, it in enumerate(q.ranked)}
    est_rank = np.empty(len(items))
    est_rank[np.argsort(-est, kind="stable")] = np.arange(1, len(items) + 1)
    engine = np.column_stack(
        [
            est,
            (terms != 0).sum(axis=1),
            [sent.get(it, len(q.sent)) + 1 for it in items],
            [ranked.get(it, K) + 1 for it in items],
            est_rank,
        ]
    )
    item = np.array([hist.item_row(it, q.ts) for it in items]).reshape(len(items), -1)
    user = user_block(hist.user_state(q.user, q.ts), items, item[:, -1], q.ts, hist.categories)
    tiers = np.tile([float(q.tier == t) for t in schema.tiers], (len(items), 1))
    n = np.full((len(items), 1), float(len(items)))
    return np.hstack([terms, engine, item, user, tiers, n])


def user_block(
    st: UserState,
    items: Sequence[str],
    item_log_price: np.ndarray,
    ts: int,
    categories: dict[str, str],
) -> np.ndarray:
    n_items = max(len(st.items), 1)
    by_cat = Counter(categories.get(it, "") for it in st.items)
    log_price = st.log_price_sum / st.priced if st.priced else math.nan
    rows = []
    for it, lp in zip(items, item_log_price, strict=True):
        cat = categories.get(it, "")
        rows.append(
            [
                math.log1p(st.invoices),
                math.log1p(len(st.items)),
                (ts - st.last_ts) / DAY_MS if st.invoices else math.nan,
                (ts - st.first_ts) / DAY_MS if st.invoices else math.nan,
                st.lines / st.invoices if st.invoices else 0.0,
                log_price,
                lp - log_price,
                math.log1p(by_cat[cat]),
                by_cat[cat] / n_items,
                float(cat in st.last_categories),
            ]
        )
    return np.array(rows).reshape(len(items), len(USER_FEATURES))


@dataclass
class Block:
    """The feature rows of a set of queries, stacked; `groups` = candidates per query."""

    queries: list[PoolQuery]
    items: list[list[str]]
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray

    def subset(self, keep: Callable[[PoolQuery], bool]) -> Block:
        starts = np.r_[0, np.cumsum(self.groups)[:-1]]
        idx = [i for i, q in enumerate(self.queries) if keep(q)]
        rows = np.concatenate([np.arange(starts[i], starts[i] + self.groups[i]) for i in idx])
        return Block(
            [self.queries[i] for i in idx],
            [self.items[i] for i in idx],
            self.x[rows],
            self.y[rows],
            self.groups[idx],
        )

    def __add__(self, other: Block) -> Block:
        return Block(
            self.queries + other.queries,
            self.items + other.items,
            np.vstack([self.x, other.x]),
            np.r_[self.y, other.y],
            np.r_[self.groups, other.groups],
        )


def build_block(queries: Sequence[PoolQuery], hist: History, schema: Schema, mode: str) -> Block:
    items = [candidates(q, mode) for q in queries]
    xs = [query_matrix(q, its, hist, schema) for q, its in zip(queries, items, strict=True)]
    y = np.concatenate(
        [[float(it in q.targets) for it in its] for q, its in zip(queries, items, strict=True)]
    )
    groups = np.array([len(its) for its in items])
    return Block(list(queries), items, np.vstack(xs), y, groups)


# -- scoring -------------------------------------------------------------------------------------


def metrics(block: Block, scores: np.ndarray | None) -> dict[str, float]:
    """HR@10 and NDCG@10 of ranking each query's candidates by `scores` (None: the engine's
    own list); the oracle: share of queries with a target among the candidates."""
    hits, gain, oracle = 0, 0.0, 0
    start = 0
    for q, its, n in zip(block.queries, block.items, block.groups, strict=True):
        if scores is None:
            top = q.ranked[:K]
        else:
            order = np.argsort(-scores[start : start + n], kind="stable")[:K]
            top = [its[i] for i in order]
        hits += any(it in q.targets for it in top)
        gain += ndcg(top, q.targets)
        oracle += bool(q.targets.intersection(its))
        start += n
    m = max(len(block.queries), 1)
    return {
        "hit_rate_at_10": round(hits / m, 4),
        "ndcg_at_10": round(gain / m, 4),
        "oracle": round(oracle / m, 4),
        "queries": len(block.queries),
    }


# -- learners ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    learner: str
    params: tuple[tuple[str, float], ...]

    @property
    def label(self) -> str:
        return f"{self.learner}(" + ", ".join(f"{k}={v:g}" for k, v in self.params) + ")"


class Logistic:
    """Pointwise logistic regression, L2, Newton steps on standardised features (NaN: the
    fitted mean)."""

    def __init__(self, l2: float) -> None:
        self.l2 = l2

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Logistic:
        known = ~np.isnan(x)
        n = np.maximum(known.sum(axis=0), 1)  # a column never known: mean 0, scale 1
        filled = np.where(known, x, 0.0)
        self.mean = filled.sum(axis=0) / n
        var = (np.where(known, x - self.mean, 0.0) ** 2).sum(axis=0) / n
        self.std = np.where(var > 0, np.sqrt(var), 1.0)
        z = self.design(x)
        w = np.zeros(z.shape[1])
        reg = np.full(z.shape[1], self.l2)
        reg[-1] = 0.0  # the intercept is not shrunk
        for _ in range(25):
            p = 1 / (1 + np.exp(-(z @ w)))
            grad = z.T @ (p - y) + reg * w
            hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg + 1e-9)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-6:
                break
        self.w = w
        return self

    def design(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        z = np.where(np.isnan(z), 0.0, z)
        return np.hstack([z, np.ones((len(z), 1))])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.design(x) @ self.w)


def lightgbm_available() -> bool:
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        return False
    return True


class LambdaRank:
    def __init__(self, params: dict[str, float], rounds: int) -> None:
        self.params = params
        self.rounds = rounds

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> LambdaRank:
        import lightgbm as lgb

        params = {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [K],
            "lambdarank_truncation_level": 2 * K,
            "learning_rate": 0.05,
            "feature_fraction": 0.8,
            "lambda_l2": 1.0,
            "verbose": -1,
            "num_threads": 2,
            "deterministic": True,
            "force_row_wise": True,
            "seed": 7,
            "num_leaves": int(self.params["num_leaves"]),
            "min_data_in_leaf": int(self.params["min_data_in_leaf"]),
        }
        self.model = lgb.train(params, lgb.Dataset(x, y, group=groups), self.rounds)
        return self

    def predict(self, x: np.ndarray, rounds: int | None = None) -> np.ndarray:
        return np.asarray(self.model.predict(x, num_iteration=rounds or self.rounds))

    def importance(self, names: Sequence[str]) -> dict[str, float]:
        gain = self.model.feature_importance("gain")
        total = max(float(gain.sum()), 1e-12)
        top = sorted(zip(names, gain, strict=True), key=lambda p: -p[1])[:12]
        return {n: round(float(g) / total, 3) for n, g in top}


LOGISTIC_GRID = [Setting("logistic", (("l2", v),)) for v in (0.1, 10.0, 1000.0)]
LGB_ROUNDS = (50, 100, 200, 300)
LGB_TREES = [(15, 50), (63, 50), (15, 400), (63, 400)]  # (num_leaves, min_data_in_leaf)


def fit_and_score(setting: Setting, fit: Block, score: Block) -> np.ndarray:
    p = dict(setting.params)
    if setting.learner == "logistic":
        return Logistic(p["l2"]).fit(fit.x, fit.y, fit.groups).predict(score.x)
    model = LambdaRank(p, int(p["rounds"])).fit(fit.x, fit.y, fit.groups)
    return model.predict(score.x)


def select(
    learner: str, pairs: Sequence[tuple[str, Block, Block]]
) -> tuple[Setting, dict[str, dict[str, Any]]]:
    """Every setting of `learner`, fitted on each pair's first block and scored on its
    second; the best mean HR@10 (NDCG breaks ties). Returns it and the grid's scores."""
    grid: dict[Setting, list[dict[str, float]]] = defaultdict(list)
    for _name, fit, score in pairs:
        if learner == "logistic":
            for s in LOGISTIC_GRID:
                grid[s].append(metrics(score, fit_and_score(s, fit, score)))
            continue
        for leaves, min_leaf in LGB_TREES:
            p = {"num_leaves": float(leaves), "min_data_in_leaf": float(min_leaf)}
            model = LambdaRank(p, max(LGB_ROUNDS)).fit(fit.x, fit.y, fit.groups)
            for r in LGB_ROUNDS:
                s = Setting("lambdarank", (*sorted(p.items()), ("rounds", float(r))))
                grid[s].append(metrics(score, model.predict(score.x, r)))
    table = {
        s.label: {
            "per_pair": [m["hit_rate_at_10"] for m in ms],
            "ndcg": [m["ndcg_at_10"] for m in ms],
            "mean_hit_rate_at_10": round(float(np.mean([m["hit_rate_at_10"] for m in ms])), 4),
        }
        for s, ms in grid.items()
    }
    best = max(
        grid,
        key=lambda s: (
            table[s.label]["mean_hit_rate_at_10"],
            float(np.mean(table[s.label]["ndcg"])),
        ),
    )
    for s in grid:
        print(
            f"  {s.label:<70}"
            + "".join(f"{h:>9.4f}" for h in table[s.label]["per_pair"])
            + f"{table[s.label]['mean_hit_rate_at_10']:>9.4f}"
        )
    return best, table


# -- the evaluation run's baselines ----------------------------------------------------------------


def reference_figures(log: Path | None) -> dict[str, dict[str, Any]]:
    """Per test fold, from the evaluation's JSON line: the engine's, the updating
    MostPopular's and the best implicit peer's HR@10 (the best peer of any kind when that
    run had no implicit peers)."""
    if log is None:
        return {}
    row: dict[str, Any] = {}
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"folds"' in line:
            row = json.loads(line)
    out = {}
    for f in row.get("folds", []):
        methods = f["methods"]
        peers = {k: v for k, v in methods.items() if k.startswith("implicit_")}
        if not peers:
            peers = {f["best_peer"]: methods[f["best_peer"]]}
        best = max(peers, key=lambda k: peers[k]["hit_rate_at_10"])
        out[f["name"]] = {
            "engine": methods["engine"]["hit_rate_at_10"],
            "mostpopular_updating": methods["mostpopular_updating"]["hit_rate_at_10"],
            "best_peer": best,
            "best_peer_hit_rate_at_10": peers[best]["hit_rate_at_10"],
        }
    return out


# -- main ----------------------------------------------------------------------------------------


def load_blocks(
    prefix: Path, mode: str, invoices: Sequence[Invoice], categories: dict[str, str]
) -> tuple[dict[str, Block], Schema]:
    pools = {
        f: read_pools(prefix.with_name(f"{prefix.name}.{f}.jsonl"))
        for f in ("val1", "val2", "test1", "test2")
    }
    schema = schema_of([q for qs in pools.values() for q in qs])
    hist = History(invoices, categories)
    blocks = {}
    for f, qs in pools.items():
        t0 = time.monotonic()
        blocks[f] = build_block(qs, hist, schema, mode)
        print(
            f"  {f}: {len(qs):,} queries, {len(blocks[f].y):,} candidate rows, "
            f"{len(schema.features)} features, {time.monotonic() - t0:.1f} s"
        )
    return blocks, schema


def run(
    blocks: dict[str, Block],
    schema: Schema,
    refs: dict[str, dict[str, Any]],
    learners: Sequence[str],
) -> dict[str, Any]:
    val2_april = blocks["val2"].subset(lambda q: q.ts < SPLIT_MS)
    pairs = [
        ("val2_april->val1", val2_april, blocks["val1"]),
        ("val1->val2_april", blocks["val1"], val2_april),
    ]
    final_fit = blocks["val1"] + val2_april
    out: dict[str, Any] = {"learners": {}, "validation": {}, "test": {}}
    for name, _fit, score in pairs:
        out["validation"][name] = {"engine": metrics(score, None)}
    for f in ("test1", "test2"):
        out["test"][f] = {"engine": metrics(blocks[f], None)}
    for learner in learners:
        print(f"\n{learner}: settings (HR@10 per cross-fit pair, mean)")
        best, table = select(learner, pairs)
        info: dict[str, Any] = {"chosen": best.label, "grid": table}
        for name, fit, score in pairs:
            out["validation"][name][learner] = metrics(score, fit_and_score(best, fit, score))
        p = dict(best.params)
        if learner == "lambdarank":
            model: Any = LambdaRank(p, int(p["rounds"]))
        else:
            model = Logistic(p["l2"])
        model.fit(final_fit.x, final_fit.y, final_fit.groups)
        if isinstance(model, LambdaRank):
            info["importance_gain_share"] = model.importance(schema.features)
        for f in ("test1", "test2"):  # each test fold scored once, with the chosen setting
            out["test"][f][learner] = metrics(blocks[f], model.predict(blocks[f].x))
        out["learners"][learner] = info
    for f, row in out["test"].items():
        ref = refs.get(f)
        if ref is None:
            continue
        for m in [k for k in row if k != "engine"] + ["engine"]:
            hr = row[m]["hit_rate_at_10"]
            row[m]["ratio_vs_mostpopular_updating"] = round(hr / ref["mostpopular_updating"], 3)
            row[m]["ratio_vs_best_peer"] = round(hr / ref["best_peer_hit_rate_at_10"], 3)
        row["reference"] = ref
        row["goal_hit_rate_at_10"] = round(
            max(2.5 * ref["mostpopular_updating"], 1.2 * ref["best_peer_hit_rate_at_10"]), 4
        )
    return out


def print_report(out: dict[str, Any]) -> None:
    print(
        f"\n{'queries':<24}{'method':<14}{'queries':>8}{'HR@10':>8}{'NDCG@10':>9}"
        f"{'oracle':>8}{'x MP upd':>9}{'x peer':>8}"
    )
    for part in ("validation", "test"):
        for name, row in out[part].items():
            for m, s in row.items():
                if m in ("reference", "goal_hit_rate_at_10"):
                    continue
                ratios = (
                    f"{s['ratio_vs_mostpopular_updating']:>9.2f}{s['ratio_vs_best_peer']:>8.2f}"
                    if "ratio_vs_best_peer" in s
                    else ""
                )
                print(
                    f"{name:<24}{m:<14}{s['queries']:>8,}{s['hit_rate_at_10']:>8.4f}"
                    f"{s['ndcg_at_10']:>9.4f}{s['oracle']:>8.4f}{ratios}"
                )
            if "goal_hit_rate_at_10" in row:
                print(f"{name:<24}{'goal':<14}{'':>8}{row['goal_hit_rate_at_10']:>8.4f}")


def main(argv: Sequence[str] | None = None) -> int:
    from app.core.settings import load_settings

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--pools",
        type=Path,
        required=True,
        help="the --dump-pool prefix P (P.val1.jsonl ... P.test2.jsonl)",
    )
    parser.add_argument(
        "--evaluate-log",
        type=Path,
        default=None,
        help="the test run's output (its JSON line): the baselines' HR@10",
    )
    parser.add_argument("--candidates", choices=("sent", "pool"), default="sent")
    parser.add_argument("--learner", action="append", choices=("lambdarank", "logistic"))
    parser.add_argument("--path", type=Path, default=None, help="the purchase file")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    learners = args.learner or ["logistic", "lambdarank"]
    if "lambdarank" in learners and not lightgbm_available():
        print("lightgbm is not installed (pip install -e '.[dev]'): lambdarank skipped")
        learners = [m for m in learners if m != "lambdarank"]
    invoices, catalog = load_invoices(args.path or load_settings().sample_data)
    categories = {it: p.category for it, p in catalog.items()}
    blocks, schema = load_blocks(args.pools, args.candidates, invoices, categories)
    out = run(blocks, schema, reference_figures(args.evaluate_log), learners)
    print_report(out)
    emit_json(
        {
            "bench": "ranking",
            "candidates": args.candidates,
            "features": schema.features,
            "protocol": "settings by cross-fitting val2 (April) <-> val1; final fit on "
            "val1 + val2 April; each test fold scored once",
            **out,
            "seconds": round(time.monotonic() - t0, 1),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
