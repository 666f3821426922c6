"""Offline prototype of candidate ranking signals (issue 20), numpy only, on the evaluation's
folds and protocol A: which signals carry information the item model lacks, before any of
them is built into the engine.

Run from the repo root: `.venv/bin/python -m bench.signals [--fold val1 --fold val2]`
(default: the two validation folds; the test folds are for the engine's final scoring).

Same parsing, folds, queries and scoring as `bench/evaluate.py` (protocol A: before each
invoice of a returning customer, 10 items the customer never bought; targets = the invoice's
new items). Every method folds the customer's history in at query time, as the baselines do.
Methods, each a score over the training items, history items excluded:

- `ease`: EASE item-item weights (the engine's item model, `app.recs.model.ease_similarity`),
  summed over the history items, each weighted by its recency (14-day half-life, as the
  engine's history interest).
- `next`: "bought next": T[i, j] = customers who bought j for the first time in the invoice
  right after an invoice holding i (training period), normalised per row with a shrink; a
  directed list that fits protocol A (new items of the next basket), unlike co-occurrence.
- `ease+next*b`: the blend that the trainer can write as one neighbour list.
- `ease_decayed_<h>d`: EASE on a matrix whose cells weigh 2^(-age / h days) by the
  customer's last purchase of the item, age at the split (time-decayed co-purchase: recent
  baskets weigh more; `app.recs.model.decayed_matrix`).

The last line is one JSON object: HR@10 / NDCG@10 per method and fold.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.settings import load_settings
from app.recs.model import (
    Interactions,
    TrainConfig,
    decayed_matrix,
    ease_similarity,
    next_transitions,
)
from bench._common import emit_json
from bench.evaluate import FOLDS, Invoice, Score, load_invoices, split_fold

K = 10
DAY_MS = 86_400_000


def dense_from_lists(n: int, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
    m = np.zeros((n, n))
    rows = np.repeat(np.arange(n), idx.shape[1])
    m[rows, idx.ravel()] = vals.ravel()
    return m


def run(
    fold_name: str,
    invoices: Sequence[Invoice],
    blends: Sequence[float],
    pop_exponents: Sequence[float],
    half_lives: Sequence[float],
) -> dict[str, dict[str, float]]:
    fold = FOLDS[fold_name]
    train_inv, test_inv = split_fold(invoices, fold)
    pairs = [(inv.user, it) for inv in train_inv for it in inv.items]
    inter = Interactions.from_pairs(pairs)
    index = {it: i for i, it in enumerate(inter.items)}
    n = len(inter.items)
    cfg = TrainConfig()
    idx, vals = ease_similarity(inter, cfg)
    ease = dense_from_lists(n, idx, vals)
    seqs = [(inv.user, inv.ts, inv.items) for inv in train_inv]
    nexts: dict[float, np.ndarray] = {}
    for pe in pop_exponents:
        nx_idx, nx_vals = next_transitions(seqs, inter.items, cfg.neighbours, pop_exponent=pe)
        nexts[pe] = dense_from_lists(n, nx_idx, nx_vals)
    decayed: dict[float, np.ndarray] = {}
    for hl in half_lives:  # time-decayed co-purchase (EASE on decayed cells)
        xd = decayed_matrix(inter, seqs, hl * DAY_MS)
        d_idx, d_vals = ease_similarity(inter, cfg, xd)
        decayed[hl] = dense_from_lists(n, d_idx, d_vals)

    buyers = inter.matrix().sum(axis=0)
    pop_rank = {inter.items[i]: r for r, i in enumerate(np.argsort(-buyers, kind="stable"), 1)}
    history: dict[str, Counter[str]] = defaultdict(Counter)
    last_ts: dict[str, dict[str, int]] = defaultdict(dict)
    for inv in train_inv:
        history[inv.user].update(inv.items)
        for it in inv.items:
            last_ts[inv.user][it] = inv.ts
    methods: dict[str, np.ndarray] = {"ease": ease}
    for hl, m in decayed.items():
        methods[f"ease_decayed_{hl:g}d"] = m
    for pe, nxt in nexts.items():
        methods[f"next^{pe:g}"] = nxt
        for b in blends:
            methods[f"ease+next^{pe:g}*{b:g}"] = ease + b * nxt
    scores: dict[str, Score] = defaultdict(Score)
    for inv in test_inv:
        past = history[inv.user]
        new = set(inv.items) - set(past)
        if past and new:
            w = np.zeros(n)
            for it in past:
                i = index.get(it)
                if i is not None:
                    w[i] = 2.0 ** (-(inv.ts - last_ts[inv.user][it]) / (14 * DAY_MS))
            w = np.maximum(w / max(w.max(), 1e-12), 0.3) * (w > 0)
            seen = [index[it] for it in past if it in index]
            for name, m in methods.items():
                s = w @ m
                s[seen] = -1.0
                top = np.argsort(-s, kind="stable")[:K]
                scores[name].add([inter.items[i] for i in top if s[i] > 0], new, pop_rank)
        history[inv.user].update(inv.items)
        for it in inv.items:
            last_ts[inv.user][it] = inv.ts
    out = {name: sc.summary(len(inter.items)) for name, sc in scores.items()}
    for name, s in out.items():
        print(f"  {fold_name} {name:<20} HR@10 {s['hit_rate_at_10']:.4f} "
              f"NDCG@10 {s['ndcg_at_10']:.4f} (n={s['queries']})")  # fmt: skip
    return out


# -- the engine's candidate pools (bench/evaluate.py --dump-pool) ------------------------------

POOL_FEATURES = ("nn", "co", "ct", "cat", "tr", "pop", "uk", "new", "rise", "engine")


@dataclass
class PoolQuery:
    items: list[str]
    x: np.ndarray  # items x POOL_FEATURES
    targets: set[str]
    ranked: list[str]


def load_pools(path: Path) -> list[PoolQuery]:
    """Each query's pool as a feature matrix: the estimated score term per source, and
    'engine' = 1 / (1 + position) for the engine's own top 10 (0 below it)."""
    out = []
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            items = list(row["pool"])
            pos = {it: i for i, it in enumerate(row["ranked"])}
            x = np.zeros((len(items), len(POOL_FEATURES)))
            for r, it in enumerate(items):
                for c, name in enumerate(POOL_FEATURES[:-1]):
                    x[r, c] = row["pool"][it].get(name, 0.0)
                x[r, -1] = 1.0 / (1 + pos[it]) if it in pos else 0.0
            out.append(PoolQuery(items, x, set(row["targets"]), row["ranked"]))
    return out


def pool_hit_rate(queries: Sequence[PoolQuery], w: np.ndarray) -> float:
    hits = 0
    for q in queries:
        top = np.argsort(-(q.x @ w), kind="stable")[:K]
        hits += any(q.items[i] in q.targets for i in top)
    return hits / max(len(queries), 1)


def fit_pool_weights(queries: Sequence[PoolQuery], rounds: int = 3) -> np.ndarray:
    """Coordinate ascent on HR@10 (the metric itself), from the engine's own order plus the
    plain sum of the estimated terms; each weight tried on a fixed multiplicative grid."""
    w = np.ones(len(POOL_FEATURES))
    best = pool_hit_rate(queries, w)
    for _ in range(rounds):
        improved = False
        for c in range(len(POOL_FEATURES)):
            for factor in (0.0, 0.25, 0.5, 2.0, 4.0):
                trial = w.copy()
                trial[c] = w[c] * factor if w[c] else factor
                hr = pool_hit_rate(queries, trial)
                if hr > best + 1e-9:
                    best, w, improved = hr, trial, True
        if not improved:
            break
    return w


def pools_report(fit_paths: Sequence[Path], score_paths: Sequence[Path]) -> dict[str, Any]:
    """Fit the pool weights on `fit_paths` (validation), score them once on `score_paths`."""
    fit = [q for p in fit_paths for q in load_pools(p)]
    w = fit_pool_weights(fit)
    print(
        "  fitted weights: "
        + ", ".join(f"{n}={v:g}" for n, v in zip(POOL_FEATURES, w, strict=True))
    )
    out: dict[str, Any] = {"weights": dict(zip(POOL_FEATURES, w.tolist(), strict=True))}
    engine_only = np.zeros(len(POOL_FEATURES))
    engine_only[-1] = 1.0
    for p in [*fit_paths, *score_paths]:
        qs = load_pools(p)
        row = {
            "queries": len(qs),
            "engine": round(pool_hit_rate(qs, engine_only), 4),
            "sum_of_terms": round(pool_hit_rate(qs, np.r_[np.ones(len(POOL_FEATURES) - 1), 0]), 4),
            "fitted": round(pool_hit_rate(qs, w), 4),
            "oracle_pool": round(
                sum(bool(q.targets & set(q.items)) for q in qs) / max(len(qs), 1), 4
            ),
        }
        print(f"  {p.name}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
        out[p.name] = row
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--fold", action="append", choices=sorted(FOLDS))
    parser.add_argument("--blend", type=float, action="append")
    parser.add_argument("--pop-exponent", type=float, action="append")
    parser.add_argument("--half-life", type=float, action="append", help="days")
    parser.add_argument("--pools", type=Path, action="append", help="fit on these dumps")
    parser.add_argument("--score-pools", type=Path, action="append", help="score once on these")
    args = parser.parse_args(argv)
    if args.pools:
        emit_json({"bench": "signals", "pools": pools_report(args.pools, args.score_pools or [])})
        return 0
    invoices, _ = load_invoices(load_settings().sample_data)
    folds = args.fold or ["val1", "val2"]
    res = {
        f: run(
            f,
            invoices,
            args.blend or [0.25, 0.5, 1.0],
            args.pop_exponent or [0.0, 0.25],
            args.half_life or [30, 60, 120],
        )
        for f in folds
    }
    emit_json({"bench": "signals", "folds": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
