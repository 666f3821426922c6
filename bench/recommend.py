"""Recommendation latency: the `recommend` Function and the HTTP endpoint (cache hit, inline).

Run from the repo root: `.venv/bin/python -m bench.recommend [--quick] [--items N] [--users N]`.
With REDIS_URL unset an embedded Redis Stack is started in a temporary folder (AOF everysec);
with it set, that server is used under a unique key prefix removed at the end. Run one
benchmark at a time: the figures are latencies on a shared machine.

Two data sets, each under its own key prefix:
  real       the Online Retail catalog (all products), the model trained on all purchases,
             and the purchases replayed through the real ingestion path (--quick: the first
             30,000 events); queries for customers drawn from the replayed ones.
  synthetic  --items products (default 100,000; --quick 5,000) in 20 categories, written as
             product documents; neighbour lists (20 collaborative + 20 content per item,
             mostly within clusters of 50 similar items) written as a model version;
             --users shoppers (default 100,000; --quick 5,000), 80 % with 4 events (content
             tier), 20 % with 12 (collaborative tier), sent through the real ingestion path.

Figures (all on localhost, one client, one request at a time):
  fn       server-side execution time of `recommend` from SLOWLOG (threshold 0 during the
           run: the time Redis spends executing the FCALL_RO, without network and parsing),
           with arguments prepared as the serving path prepares them (rec_context + item-slot
           lists + catalog attributes), p50/p99 over the calls. Also shown: the FCALL_RO round
           trip from Python minus the PING round-trip p50 (includes argument transfer/parsing).
  http_hit the endpoint served by hypercorn in a subprocess (the real app with the
           recommendations installed), `GET /v1/recommendations/{user}` after the list was
           computed once: a cached list (the response says source=cache; checked).
  inline   `GET /v1/recommendations/{user}?surface=product&item=<an item they bought>`: never
           cached, computed inline every time (rec_context, the item-slot lists, recommend).
The last line printed is one JSON object (the worst of the two data sets for each figure).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from app.catalog.index import (
    CatalogConfig,
    CatalogKeys,
    create_index,
    drop_catalog,
)
from app.catalog.vectorizers import get_vectorizer
from app.core.events import parse_event
from app.core.settings import EngineConfig, load_settings
from app.core.taxonomy import CATEGORIES
from app.engine import build_engine
from app.recs import calls as rec_calls
from app.recs.config import RecConfig
from app.recs.experiments import DEFAULT
from app.recs.keys import RecKeys
from app.recs.lists import RecRequest
from app.recs.model import Interactions, TrainConfig, train
from app.recs.recommender import Recommender
from app.redis import calls
from bench._common import emit_json, percentile, redis_target, settle_aof
from loaders import online_retail
from loaders.catalog import load_rows, online_retail_rows
from loaders.train import catalog_vectors

ROOT = Path(__file__).resolve().parent.parent

BENCH_KEY = "sk_bench"
SERVER = r"""
import asyncio, os, sys
from hypercorn.asyncio import serve
from hypercorn.config import Config
from app.api.app import create_app
from app.api.recs import install_recommendations
from app.core.settings import load_settings
app = create_app(load_settings(env_file=None))
install_recommendations(app)  # idempotent: a no-op once app.api.app installs it
cfg = Config()
cfg.bind = [f"127.0.0.1:{os.environ['RETAIL_PORT']}"]
cfg.accesslog = None
asyncio.run(serve(app, cfg))
"""


@dataclass
class DataSet:
    name: str
    prefix: str
    users: list[str]
    items_of: dict[str, str]  # user -> an item they interacted with (product page)


def ingest(client: redis.Redis, engine: EngineConfig, events: Sequence[dict[str, Any]]) -> float:
    built = build_engine(client, engine)  # the API's ingestion and workers, every hook
    now = int(time.time() * 1000) + 60_000
    t0 = time.monotonic()
    batch = []
    for obj in events:
        batch.append(parse_event(obj, now_ms=now))
        if len(batch) >= 2000:
            built.ingestor.ingest(batch)
            built.drain()
            batch = []
    if batch:
        built.ingestor.ingest(batch)
        built.drain()
    return time.monotonic() - t0


# -- data sets -------------------------------------------------------------------------------------


def real_data(client: redis.Redis, prefix: str, path: Path, limit: int | None) -> DataSet:
    engine = EngineConfig(key_prefix=prefix)
    create_index(client, CatalogKeys(prefix), get_vectorizer())
    rows, _ = online_retail_rows(path)
    load_rows(client, CatalogConfig(key_prefix=prefix), CatalogKeys(prefix), rows,
              get_vectorizer(), source="online-retail")  # fmt: skip
    scan = online_retail.scan(path)
    events_iter, _ = online_retail.purchase_events(path, catalog=scan.catalog)
    events = []
    try:
        for ev in events_iter:
            events.append(ev)
            if limit and len(events) >= limit:
                break
    finally:
        events_iter.close()
    pairs = [(ev["user_id"], ev["items"][0]["item_id"]) for ev in events]
    inter = Interactions.from_pairs(pairs)
    categories = {i: p.category for i, p in scan.catalog.items()}
    train(client, RecKeys(prefix), inter, categories, TrainConfig(),
          vectors=catalog_vectors(client, prefix, inter.items, scan.catalog))  # fmt: skip
    seconds = ingest(client, engine, events)
    print(f"  real: {len(scan.catalog):,} products, {len(events):,} purchase events replayed "
          f"in {seconds:.1f} s")  # fmt: skip
    items_of = {u: i for u, i in pairs}
    return DataSet("real", prefix, sorted(items_of), items_of)


def synthetic_data(
    client: redis.Redis, prefix: str, n_items: int, n_users: int, rng: random.Random
) -> DataSet:
    engine = EngineConfig(key_prefix=prefix)
    keys = RecKeys(prefix)
    ckeys = CatalogKeys(prefix)
    cats = [c for c in CATEGORIES if c != "other"][:20]
    items = [f"S{i:06d}" for i in range(n_items)]
    cluster = 50
    now = int(time.time() * 1000)
    t0 = time.monotonic()
    pipe = client.pipeline(transaction=False)
    for i, item in enumerate(items):
        cat = cats[(i // cluster) % len(cats)]
        price = round(min(max(rng.lognormvariate(1.1, 0.8), 0.2), 500.0), 2)
        stock = 0 if rng.random() < 0.08 else rng.randrange(1, 250)
        doc = {"item_id": item, "title": f"SYNTHETIC {cat.upper()} PRODUCT {i}",
               "category": cat, "price": price, "stock": stock, "in_stock": stock > 0,
               "popularity": float(int(1000 / (1 + rng.random() * 50))), "tags": [],
               "source": "synthetic", "updated_ms": now}  # fmt: skip
        pipe.execute_command("JSON.SET", ckeys.doc(item), "$", json.dumps(doc))  # type: ignore[no-untyped-call]
        if i % 2000 == 1999:
            pipe.execute()
            pipe = client.pipeline(transaction=False)
    pipe.execute()
    # The search index (the app's catalog cache follows changes through it); documents
    # without vectors are indexed without the vector field.
    create_index(client, ckeys, get_vectorizer(), timeout_s=600)
    version = "vsynthetic"
    pipe = client.pipeline(transaction=False)
    for i, item in enumerate(items):
        base = (i // cluster) * cluster
        for kind in ("nn", "cn"):
            nbrs = {items[min(base + rng.randrange(cluster), n_items - 1)]: 0.0 for _ in range(17)}
            nbrs.update({items[rng.randrange(n_items)]: 0.0 for _ in range(3)})
            nbrs.pop(item, None)
            mapping = {m: round(rng.uniform(0.05, 0.6), 4) for m in nbrs}
            key = keys.nn(item, version) if kind == "nn" else keys.cn(item, version)
            pipe.zadd(key, mapping)
            pipe.expire(key, 86_400)
        if i % 1000 == 999:
            pipe.execute()
            pipe = client.pipeline(transaction=False)
    popular = {items[rng.randrange(n_items)]: float(rng.randrange(1, 1000)) for _ in range(500)}
    pipe.zadd(keys.popular(version), popular)
    for c in cats:
        pipe.zadd(keys.category_top(version, c), {
            items[(j * len(cats) + cats.index(c)) * cluster % n_items]: float(50 - j)
            for j in range(50)
        })  # fmt: skip
    meta = {"version": version, "source": "synthetic", "categories": cats}
    pipe.set(keys.model_pointer, version)
    pipe.hset(keys.models, version, json.dumps(meta))
    pipe.execute()
    print(f"  synthetic: {n_items:,} products and model lists written in "
          f"{time.monotonic() - t0:.1f} s")  # fmt: skip
    users = [f"U{u:06d}" for u in range(n_users)]
    events: list[dict[str, Any]] = []
    items_of = {}
    for u, user in enumerate(users):
        n_ev = 12 if u % 5 == 0 else 4
        home = rng.randrange(n_items // cluster) * cluster
        for e in range(n_ev):
            item = items[min(home + rng.randrange(cluster * 2), n_items - 1)]
            etype = ("view", "view", "add_to_cart", "purchase")[e % 4]
            body: dict[str, Any] = {
                "event_id": f"{user}-{e}", "type": etype, "user_id": user,
                "session_id": f"s{user}", "ts": now - (n_ev - e) * 30_000,
                "props": {"price": 3.0},
            }  # fmt: skip
            if etype == "purchase":
                body["items"] = [{"item_id": item, "qty": 1, "price": 3.0}]
            else:
                body["item_id"] = item
            events.append(body)
            items_of[user] = item
    events.sort(key=lambda ev: ev["ts"])
    seconds = ingest(client, engine, events)
    print(f"  synthetic: {n_users:,} shoppers, {len(events):,} events ingested in "
          f"{seconds:.1f} s ({len(events) / seconds:,.0f} events/s)")  # fmt: skip
    return DataSet("synthetic", prefix, users, items_of)


# -- measurements ------------------------------------------------------------------------------


def measure_function(
    client: redis.Redis,
    ds: DataSet,
    n: int,
    rng: random.Random,
    weights: dict[str, float] | None = None,
) -> dict[str, float]:
    """The `recommend` Function's server-side time on prepared arguments; `weights` override
    the defaults (the same run measures the defaults without a signal, for its cost)."""
    engine = EngineConfig(key_prefix=ds.prefix)
    cfg = RecConfig(key_prefix=ds.prefix)
    if weights:
        cfg = RecConfig(key_prefix=ds.prefix, weights={**cfg.weights, **weights})
    rec = Recommender(client, engine, cfg)
    rec.refresh()
    sample = rng.sample(ds.users, min(len(ds.users), 400))
    prepared = []
    n_cands = []
    for user in sample:
        req = RecRequest(user, "home", None, rec.cfg.cache_k)
        ctx = rec_calls.parse_rec_context(
            calls.fcall_ro(client, "rec_context", rec.context_args(user))
        )
        params = rec.params(req, DEFAULT, req.k)
        anchors, cands = rec.candidates(ctx, req, rec.model, params.weights, False, None)
        prepared.append(rec_calls.recommend_args(rec.keys, user, params, anchors, cands))
        n_cands.append(len(cands))
    rec.close()
    old = client.config_get("slowlog-*")
    client.config_set("slowlog-max-len", n + 1000)
    client.config_set("slowlog-log-slower-than", 0)
    client.slowlog_reset()
    rtt = []
    for i in range(n):
        args = prepared[i % len(prepared)]
        t0 = time.perf_counter()
        calls.fcall_ro(client, "recommend", args)
        rtt.append((time.perf_counter() - t0) * 1000)
    log = client.slowlog_get(n + 1000)
    for name, value in old.items():
        client.config_set(name, value)
    server = []
    for entry in log:
        cmd = entry["command"]
        words = (cmd if isinstance(cmd, bytes) else str(cmd).encode()).split(b" ", 2)
        if words[0].upper() == b"FCALL_RO" and len(words) > 1 and words[1] == b"recommend":
            server.append(entry["duration"] / 1000)
    pings = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.ping()
        pings.append((time.perf_counter() - t0) * 1000)
    ping50 = percentile(pings, 50)
    return {
        "fn_p50_ms": percentile(server, 50),
        "fn_p99_ms": percentile(server, 99),
        "fn_calls": float(len(server)),
        "rtt_minus_ping_p50_ms": percentile(rtt, 50) - ping50,
        "rtt_minus_ping_p99_ms": percentile(rtt, 99) - ping50,
        "candidates_mean": sum(n_cands) / len(n_cands),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(url: str, prefix: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    # A backend's server key reads any shopper's list; rate limits off: this measures serving.
    env = {**os.environ, "REDIS_URL": url, "RETAIL_KEY_PREFIX": prefix, "RETAIL_PORT": str(port),
           "RETAIL_LOG_JSON": "false", "RETAIL_SERVER_KEYS": BENCH_KEY,
           "RETAIL_RATE_PER_ADDRESS": "0", "RETAIL_RATE_PER_KEY": "0"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", SERVER], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"the app did not start:\n{err[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
            conn.close()
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the app did not answer /health within 120 s")


def http_get(conn: http.client.HTTPConnection, path: str) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {BENCH_KEY}"})
    resp = conn.getresponse()
    body = resp.read()
    took = (time.perf_counter() - t0) * 1000
    if resp.status != 200:
        raise RuntimeError(f"{path}: HTTP {resp.status} {body[:200]!r}")
    return took, json.loads(body)


def measure_http(url: str, ds: DataSet, n: int, rng: random.Random) -> dict[str, float]:
    proc, port = start_app(url, ds.prefix)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        users = rng.sample(ds.users, min(len(ds.users), 300))
        for user in users:  # first read computes and caches the list
            http_get(conn, f"/v1/recommendations/{user}?k=10")
        hits, sources = [], []
        for i in range(n):
            took, body = http_get(conn, f"/v1/recommendations/{users[i % len(users)]}?k=10")
            hits.append(took)
            sources.append(body["source"])
        inline, inline_sources = [], []
        for i in range(n):
            user = users[i % len(users)]
            item = ds.items_of[user]
            took, body = http_get(
                conn, f"/v1/recommendations/{user}?surface=product&item={item}&k=10"
            )
            inline.append(took)
            inline_sources.append(body["source"])
        conn.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "http_hit_p50_ms": percentile(hits, 50),
        "http_hit_p99_ms": percentile(hits, 99),
        "http_hit_cache_share": sources.count("cache") / len(sources),
        "http_inline_p50_ms": percentile(inline, 50),
        "http_inline_p99_ms": percentile(inline, 99),
        "http_inline_share": inline_sources.count("inline") / len(inline_sources),
    }


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 items and users (CI)")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=3000, help="Function calls measured")
    parser.add_argument("--requests", type=int, default=2000, help="HTTP requests per figure")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.users, args.calls, args.requests = 5000, 5000, 1000, 500
    rng = random.Random(args.seed)
    results: dict[str, dict[str, float]] = {}
    t_start = time.monotonic()
    with redis_target("recommend") as target:
        client = target.client()
        # Each data set is measured right after it is loaded: the real catalog on a server
        # holding just it, the 100k set on one holding both.
        loaders: list[Callable[[], DataSet]] = [
            lambda: real_data(client, target.prefix + "real:", settings.sample_data,
                              30_000 if args.quick else None),
            lambda: synthetic_data(client, target.prefix + "syn:", args.items, args.users, rng),
        ]  # fmt: skip
        sets: list[DataSet] = []
        for load in loaders:
            print("loading data ...")
            ds = load()
            sets.append(ds)
            # Loading grows the AOF past its rewrite threshold: rewrite it now, not (by
            # chance) while latency is being measured.
            if target.embedded:
                settle_aof(client)
            fn = measure_function(client, ds, args.calls, rng)
            # the same calls without the 'rise' source: its cost in the Function
            base = measure_function(client, ds, args.calls, rng, weights={"rise": 0.0})
            fn["fn_p99_ms_without_rise"] = base["fn_p99_ms"]
            fn["fn_p50_ms_without_rise"] = base["fn_p50_ms"]
            web = measure_http(target.url, ds, args.requests, rng)
            results[ds.name] = {**fn, **web}
        used = client.info("memory")["used_memory"]
        for ds in sets:
            drop_catalog(client, CatalogKeys(ds.prefix))
        client.close()
    print(f"\n{'':<34}{'real':>12}{'synthetic':>12}")
    names = [
        ("fn_p50_ms", "recommend Function p50 (SLOWLOG)"),
        ("fn_p99_ms", "recommend Function p99 (SLOWLOG)"),
        ("fn_p50_ms_without_rise", "  same calls, 'rise' off: p50"),
        ("fn_p99_ms_without_rise", "  same calls, 'rise' off: p99"),
        ("rtt_minus_ping_p50_ms", "FCALL_RO RTT - PING p50"),
        ("rtt_minus_ping_p99_ms", "FCALL_RO RTT - PING p99"),
        ("candidates_mean", "candidates per call"),
        ("http_hit_p50_ms", "HTTP cache hit p50"),
        ("http_hit_p99_ms", "HTTP cache hit p99"),
        ("http_hit_cache_share", "  share answered from cache"),
        ("http_inline_p50_ms", "HTTP inline p50"),
        ("http_inline_p99_ms", "HTTP inline p99"),
        ("http_inline_share", "  share computed inline"),
    ]
    for key, label in names:
        print(f"{label:<34}{results['real'][key]:>12.3f}{results['synthetic'][key]:>12.3f}")
    print(f"synthetic: {args.items:,} items, {args.users:,} users; Redis used_memory "
          f"{used / 2**20:,.0f} MB; total {time.monotonic() - t_start:.0f} s")  # fmt: skip

    def worst(key: str) -> float:
        return round(max(r[key] for r in results.values()), 3)

    emit_json({
        "bench": "recommend", "fn_p99_ms": worst("fn_p99_ms"),
        "http_hit_p99_ms": worst("http_hit_p99_ms"),
        "http_inline_p99_ms": worst("http_inline_p99_ms"),
        "fn_p50_ms": worst("fn_p50_ms"), "http_hit_p50_ms": worst("http_hit_p50_ms"),
        "http_inline_p50_ms": worst("http_inline_p50_ms"),
        "fn_p99_ms_without_rise": worst("fn_p99_ms_without_rise"),
        "items": args.items, "users": args.users, "quick": bool(args.quick),
        "fn_method": "SLOWLOG execution time of FCALL_RO recommend (server-side)",
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
