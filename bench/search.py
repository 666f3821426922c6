"""Search benchmark: KNN and hybrid latency, HNSW recall@10, catalog load rate.

Run from the repo root: `.venv/bin/python -m bench.search [--quick] [--items N]`.
With REDIS_URL unset an embedded Redis Stack is started in a temporary folder (AOF everysec,
as in production); with REDIS_URL set that server is used under a unique key prefix, and this
run's indexes and keys are removed at the end. Run one benchmark at a time.

Catalogs (each under its own sub-prefix, with its own index from indexes/products.yaml):
  real       the Online Retail catalog (~3.6k products) via `loaders.catalog`
  synthetic  `--items` products (default 100,000; --quick 5,000): titles made by taking a real
             title and replacing each word with probability 0.35 by a word drawn from the real
             titles' vocabulary (frequency-weighted), plus a variant word and a number; price
             log-normal (median ~3 GBP), stock as the loader's synthetic stock. Same loader
             path (`load_rows` -> `catalog_upsert`), so the load rate includes embedding,
             JSON parse and HNSW insert.

Queries (deterministic, `--seed`): texts made the same way from titles NOT used in the
catalog when possible, 1-4 words. Per catalog:
  knn          pure KNN k=10, unfiltered, raw FT.SEARCH from redis-py (the query vector's
               bytes prepared beforehand), EF_RUNTIME = the configured default (128)
  knn_app      the same through `ProductSearch.knn` (redisvl VectorQuery + result parsing)
  knn_filtered KNN k=10 with category tag + max_price + in_stock filters (raw FT.SEARCH, the
               filter exactly as the app writes it: `filter_expression` with the median)
  hybrid       `ProductSearch.search`: embed the text, one FT.AGGREGATE (filters + at least one
               word, exact KNN 50 over those candidates, BM25STD text score), with the same
               kind of filters, k=10 (the goal's "text + vector + filters")
  hybrid_unfiltered  the same queries without any filter (every document with one of the
               words is a candidate: common words make that thousands at 100k)
Recall@10: HNSW (unfiltered KNN) against an exact numpy brute force over the very vectors the
index holds (cosine, float32). Ties at the 10th distance count as hits (a returned item whose
exact similarity is >= the 10th best minus 1e-6). An EF_RUNTIME sweep is printed as well.

Latency figures are wall-clock per query from this Python process (one connection, one query
at a time), p50/p99 with linear interpolation, measured after any AOF rewrite the load
triggered has finished (`settle`). The machine's other work shows in the tails: run it on an
otherwise idle machine. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from app.catalog.index import (
    CatalogConfig,
    CatalogKeys,
    ProductRecord,
    content_of,
    create_index,
    drop_catalog,
    embedding_text,
    ft_info,
    json_reply,
    redis_cmd,
)
from app.catalog.search import (
    Filters,
    ProductSearch,
    SearchRequest,
    filter_expression,
    query_words,
)
from app.catalog.vectorizers import embed_texts, get_vectorizer, words
from app.core.settings import EngineConfig, load_settings
from app.core.taxonomy import category_for
from bench._common import emit_json, percentile, redis_target
from loaders.catalog import FeedRow, load_online_retail, load_rows, synthetic_stock
from loaders.online_retail import build_catalog

ROOT = Path(__file__).resolve().parent.parent

K = 10
VARIANTS = ["SMALL", "LARGE", "MINI", "JUMBO", "RED", "BLUE", "PINK", "GREEN", "IVORY",
            "VINTAGE", "RETRO", "SET", "PACK", "DELUXE", "CLASSIC"]  # fmt: skip


# -- data ------------------------------------------------------------------------------------------


def vocabulary(titles: Sequence[str]) -> tuple[list[str], list[float]]:
    counts = Counter(w for t in titles for w in t.split())
    vocab = sorted(counts)
    return vocab, [float(counts[w]) for w in vocab]


def mutate(title: str, rng: random.Random, vocab: list[str], weights: list[float]) -> str:
    out = [rng.choices(vocab, weights)[0] if rng.random() < 0.35 else w for w in title.split()] or [
        rng.choice(vocab)
    ]
    return " ".join(out)


def synthetic_rows(titles: Sequence[str], n: int, rng: random.Random) -> list[FeedRow]:
    vocab, weights = vocabulary(titles)
    rows = []
    for i in range(n):
        base = mutate(rng.choice(titles), rng, vocab, weights)
        title = f"{base} {rng.choice(VARIANTS)} {rng.randrange(1, 100)}"[:300]
        item = f"S{i:06d}"
        price = round(min(max(rng.lognormvariate(1.1, 0.8), 0.1), 999.0), 2)
        rec = ProductRecord(item_id=item, title=title, price=price, stock=synthetic_stock(item),
                            stock_mode="initial", popularity=float(rng.randrange(0, 500)),
                            source="synthetic", stock_source="synthetic",
                            line_no=i + 1)  # fmt: skip
        rows.append(FeedRow(i + 1, record=rec, item_id=item))
    return rows


def query_texts(titles: Sequence[str], n: int, rng: random.Random) -> list[str]:
    vocab, weights = vocabulary(titles)
    out = []
    while len(out) < n:
        ws = [w for w in words(mutate(rng.choice(titles), rng, vocab, weights)) if len(w) > 2]
        if ws:
            size = min(len(ws), rng.randint(1, 4))
            start = rng.randrange(0, len(ws) - size + 1)
            out.append(" ".join(ws[start : start + size]))
    return out


# -- measuring -------------------------------------------------------------------------------------


def timed(fn: Callable[[Any], Any], inputs: Sequence[Any], warmup: int = 20) -> list[float]:
    for x in inputs[:warmup]:
        fn(x)
    gc.collect()
    out = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
            "mean_ms": round(sum(ms) / len(ms), 3)}  # fmt: skip


def settle(client: redis.Redis, timeout_s: float = 600.0) -> float:
    """Let background persistence finish before measuring: a bulk load grows the AOF past
    auto-aof-rewrite-percentage, and a BGREWRITEAOF fork competing for the cores would show up
    as query tail latency. Rewrites the AOF now and waits; returns the seconds spent."""
    t0 = time.monotonic()
    info: dict[str, Any] = client.info("persistence")
    if int(info.get("aof_enabled", 0)) and not int(info.get("aof_rewrite_in_progress", 0)):
        with contextlib.suppress(redis.ResponseError):  # one is already scheduled
            client.bgrewriteaof()
    while time.monotonic() - t0 < timeout_s:
        info = client.info("persistence")
        busy = ("aof_rewrite_in_progress", "aof_rewrite_scheduled", "rdb_bgsave_in_progress")
        if not any(int(info.get(k, 0)) for k in busy):
            break
        time.sleep(0.2)
    return time.monotonic() - t0


def raw_knn(client: redis.Redis, alias: str, vec: bytes, k: int, ef: int,
            filters: str = "*") -> list[str]:  # fmt: skip
    reply = redis_cmd(
        client, "FT.SEARCH", alias,
        f"({filters})=>[KNN {k} @embedding $v EF_RUNTIME {ef} AS d]",
        "SORTBY", "d", "RETURN", "1", "item_id", "LIMIT", 0, k, "PARAMS", 2, "v", vec,
        "DIALECT", 2,
    )  # fmt: skip
    if isinstance(reply, dict):
        results = reply.get(b"results", reply.get("results", []))
        return [_id(r) for r in results]
    return [reply[i].decode() for i in range(1, len(reply), 2)]


def _id(row: Any) -> str:
    value = row.get(b"id", row.get("id"))
    return value.decode() if isinstance(value, bytes) else str(value)


def stored_vectors(client: redis.Redis, ckeys: CatalogKeys, path: str) -> tuple[list[str], Any]:
    ids, vecs = [], []
    keys = [k.decode() for k in client.scan_iter(match=ckeys.doc_prefix + "*", count=2000)]
    for i in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for key in keys[i : i + 1000]:
            redis_cmd(pipe, "JSON.GET", key, path)
        for key, got in zip(keys[i : i + 1000], pipe.execute(), strict=True):
            value = json_reply(got)
            ids.append(key)
            vecs.append(value[0])
    return ids, np.asarray(vecs, dtype=np.float32)


def recall_at_k(
    client: redis.Redis, alias: str, ids: list[str], matrix: Any, queries: Any, ef: int
) -> tuple[float, float]:
    """(tie-aware recall@K of HNSW vs exact cosine, numpy brute-force ms per query)."""
    norms = np.linalg.norm(matrix, axis=1)
    norms[norms == 0] = 1
    unit = matrix / norms[:, None]
    index_of = {key: i for i, key in enumerate(ids)}
    found = 0
    brute_ms = 0.0
    for q in queries:
        qn = q / (np.linalg.norm(q) or 1)
        t0 = time.perf_counter()
        sims = unit @ qn
        top = np.argpartition(-sims, K)[:K]
        brute_ms += (time.perf_counter() - t0) * 1000
        kth = float(np.min(sims[top]))
        got = raw_knn(client, alias, q.astype(np.float32).tobytes(), K, ef)
        found += sum(1 for key in got if sims[index_of[key]] >= kth - 1e-6)
    return found / (K * len(queries)), brute_ms / len(queries)


def bench_catalog(
    name: str,
    client: redis.Redis,
    cfg: CatalogConfig,
    ckeys: CatalogKeys,
    titles: Sequence[str],
    n_queries: int,
    rng: random.Random,
    ef_sweep: Sequence[int],
) -> dict[str, Any]:
    vectorizer = get_vectorizer(cfg.vectorizer)
    print(f"  (settled background persistence in {settle(client):.1f} s before measuring)")
    search = ProductSearch(client, cfg, vectorizer, EngineConfig(key_prefix=cfg.key_prefix))
    meta = search.meta()
    texts = query_texts(titles, n_queries, rng)
    qvecs = embed_texts(vectorizer, texts)
    qbytes = [v.astype(np.float32).tobytes() for v in qvecs]
    ids, matrix = stored_vectors(client, ckeys, meta.vector_path)
    cats = Counter(category_for(t) for t in titles)
    cat_list = sorted(cats)
    cat_weights = [float(cats[c]) for c in cat_list]
    filters = [
        Filters(categories=(rng.choices(cat_list, cat_weights)[0],),
                max_price=rng.choice([3.0, 5.0, 10.0, 25.0]), in_stock=True)
        for _ in texts
    ]  # fmt: skip
    out: dict[str, Any] = {"catalog": name, "items": len(ids), "queries": len(texts)}
    ef = cfg.ef_runtime
    out["knn"] = summary(timed(lambda v: raw_knn(client, ckeys.alias, v, K, ef), qbytes))
    out["knn_app"] = summary(timed(lambda v: search.knn(v, Filters(in_stock=None), K), qbytes))
    median = search.price_median()  # the app's filter form (price_clauses)
    fq = list(zip(qbytes, [str(filter_expression(f, median)) for f in filters], strict=True))
    out["knn_filtered"] = summary(
        timed(lambda x: raw_knn(client, ckeys.alias, x[0], K, ef, x[1]), fq)
    )
    reqs = [SearchRequest(t, query_words(t), f, K, None)
            for t, f in zip(texts, filters, strict=True)]  # fmt: skip
    out["hybrid"] = summary(timed(search.search, reqs))
    unfiltered = [SearchRequest(r.q, r.words, Filters(in_stock=None), K, None) for r in reqs]
    out["hybrid_unfiltered"] = summary(timed(search.search, unfiltered))
    results = [search.search(r) for r in reqs[:200]]
    out["hybrid_mean_hits"] = round(sum(len(r.hits) for r in results) / len(results), 2)
    out["hybrid_fallback_rate"] = round(sum(r.fallback for r in results) / len(results), 3)
    sample = qvecs[: min(len(qvecs), 300)]
    recall, brute = recall_at_k(client, ckeys.alias, ids, matrix, sample, ef)
    out["recall_at_10"] = round(recall, 4)
    out["ef_runtime"] = ef
    out["numpy_brute_force_ms"] = round(brute, 3)
    sweep = []
    for e in ef_sweep:
        r, _ = recall_at_k(client, ckeys.alias, ids, matrix, sample[:200], e)
        lat = summary(timed(lambda v, e=e: raw_knn(client, ckeys.alias, v, K, e), qbytes[:300]))
        sweep.append({"ef_runtime": e, "recall_at_10": round(r, 4), **lat})
    out["ef_sweep"] = sweep
    return out


def print_catalog(res: dict[str, Any]) -> None:
    print(f"\n== {res['catalog']}: {res['items']:,} items, {res['queries']:,} queries, k={K}, "
          f"EF_RUNTIME {res['ef_runtime']}")  # fmt: skip
    for key in ("knn", "knn_app", "knn_filtered", "hybrid", "hybrid_unfiltered"):
        s = res[key]
        print(f"  {key:13s} p50 {s['p50_ms']:7.3f} ms  p99 {s['p99_ms']:7.3f} ms  "
              f"mean {s['mean_ms']:7.3f} ms")  # fmt: skip
    print(f"  hybrid mean hits {res['hybrid_mean_hits']}, vector fallback (no word matched) "
          f"{res['hybrid_fallback_rate']:.1%}")  # fmt: skip
    print(f"  recall@10 {res['recall_at_10']:.4f} (HNSW vs numpy exact; numpy brute force "
          f"{res['numpy_brute_force_ms']:.2f} ms/query)")  # fmt: skip
    for row in res["ef_sweep"]:
        print(f"    EF_RUNTIME {row['ef_runtime']:4d}: recall@10 {row['recall_at_10']:.4f}  "
              f"p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 synthetic items (CI smoke)")
    parser.add_argument("--items", type=int, default=None, help="synthetic items (100,000)")
    parser.add_argument("--queries", type=int, default=None, help="queries per catalog")
    parser.add_argument("--batch", type=int, default=500, help="loader pipeline batch")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    n_items = args.items or (5_000 if args.quick else 100_000)
    n_queries = args.queries or (300 if args.quick else 1_000)
    ef_sweep = [32, 128] if args.quick else [32, 64, 128, 256]
    rng = random.Random(args.seed)
    sample = load_settings().sample_data
    products, _ = build_catalog(sample)
    titles = [p.title for p in products.values() if p.title]

    with redis_target("search") as target:
        client = target.client()
        real = CatalogKeys(target.prefix + "real:")
        syn = CatalogKeys(target.prefix + "syn:")
        results: dict[str, Any] = {}
        try:
            vectorizer = get_vectorizer()
            cfg_real = CatalogConfig(key_prefix=real.prefix)
            create_index(client, real, vectorizer)
            report = load_online_retail(client, cfg_real, real, sample, vectorizer,
                                        batch=args.batch)  # fmt: skip
            print(report.summary())
            results["real_load_per_s"] = round(report.products_per_s, 1)
            results["real"] = bench_catalog("real (Online Retail)", client, cfg_real, real,
                                            titles, min(n_queries, 500), rng, ef_sweep)  # fmt: skip
            print_catalog(results["real"])

            cfg_syn = CatalogConfig(key_prefix=syn.prefix)
            rows = synthetic_rows(titles, n_items, rng)
            create_index(client, syn, vectorizer)
            t0 = time.monotonic()
            report = load_rows(client, cfg_syn, syn, rows, vectorizer, source="synthetic",
                               batch=args.batch, progress=True, total=len(rows))  # fmt: skip
            load_s = time.monotonic() - t0
            print(report.summary())
            info = ft_info(client, syn.alias) or {}
            print(f"  index: {info.get('num_docs')} docs, vectors "
                  f"{float(info.get('vector_index_sz_mb', 0)):.1f} MB, used_memory "
                  f"{client.info('memory')['used_memory_human']}")  # fmt: skip
            results["synthetic_load_per_s"] = round(report.created / load_s, 1)
            # Sanity: the embedding share of the load (client side).
            t0 = time.monotonic()
            embed_texts(vectorizer, [embedding_text(content_of(r.record)) for r in rows[:5000]
                                     if r.record])  # fmt: skip
            results["embed_per_s"] = round(5000 / (time.monotonic() - t0), 1)
            results["synthetic"] = bench_catalog("synthetic", client, cfg_syn, syn, titles,
                                                 n_queries, rng, ef_sweep)  # fmt: skip
            print_catalog(results["synthetic"])
        finally:
            for ck in (real, syn):
                drop_catalog(client, ck, delete_docs=False)
            client.close()

    s = results["synthetic"]
    emit_json({
        "bench": "search",
        "items": s["items"],
        "knn_p99_ms": s["knn"]["p99_ms"],
        "hybrid_p99_ms": s["hybrid"]["p99_ms"],
        "recall_at_10": s["recall_at_10"],
        "load_per_s": results["synthetic_load_per_s"],
        "knn_p50_ms": s["knn"]["p50_ms"],
        "knn_app_p99_ms": s["knn_app"]["p99_ms"],
        "knn_filtered_p99_ms": s["knn_filtered"]["p99_ms"],
        "hybrid_p50_ms": s["hybrid"]["p50_ms"],
        "hybrid_unfiltered_p99_ms": s["hybrid_unfiltered"]["p99_ms"],
        "ef_runtime": s["ef_runtime"],
        "numpy_brute_force_ms": s["numpy_brute_force_ms"],
        "real_items": results["real"]["items"],
        "real_knn_p99_ms": results["real"]["knn"]["p99_ms"],
        "real_hybrid_p99_ms": results["real"]["hybrid"]["p99_ms"],
        "real_recall_at_10": results["real"]["recall_at_10"],
        "real_load_per_s": results["real_load_per_s"],
        "quick": bool(args.quick),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
