"""Feature store benchmark: online retrieval latency (1 and 100 entities), ingest overhead.

Run from the repo root: `.venv/bin/python -m bench.features [--quick]`. With REDIS_URL unset
an embedded Redis Stack (AOF everysec, as in production) is started in a temporary folder;
with REDIS_URL set that server is used under a unique key prefix. Run one benchmark at a time.

State: the real Online Retail purchases of every customer whose id is a multiple of `--mod`
(default 10: ~360 shoppers, ~26k lines; --quick: 20) plus deterministic synthetic browsing
around them (loaders/browsing.py), ingested through `Ingestor` in batches of 1,000:
  - without the feature hook and with it (fresh keys each, batch by batch interleaved so
    both see the same load): events/s of both and the hook's cost per event; then MEMORY
    USAGE of the feature hashes per entity type.
Reads (users chosen uniformly among those with events; the 20 user features of
features/features.yaml; as of one hour after the last event, so every window holds data):
  fcall_1    `get_features` (FCALL_RO features_get) for 1 user, from this process
  fcall_100  the same for 100 users in one call
  http_1     GET /v1/features/user/{id}?as_of=...      } a hypercorn server in a subprocess
  http_100   POST /v1/features/user {"ids": [100 ids]} } (app + feature routes, admin key),
             one keep-alive connection, one request at a time
Latency is wall clock per request from this process, p50/p99 (linear interpolation).
The last line printed is one JSON object; p99_ms_1 / p99_ms_100 are the HTTP figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from app.core.events import Event, parse_event
from app.core.settings import EngineConfig
from app.features.spec import ack_features, get_features, item_feature_hook, load_feature_set
from app.ingest.aggregates import AggregateWorker
from app.ingest.ingestor import Ingestor
from app.redis.embedded import free_port
from bench._common import emit_json, percentile, redis_target, settle_aof
from loaders.browsing import synthetic_browsing
from loaders.online_retail import purchase_events

ROOT = Path(__file__).resolve().parent.parent

SAMPLE = ROOT / "data" / "online-retail" / "online-retail-2010-12_2011-09.csv.gz"
BATCH = 1000
FAR = 2_000_000_000_000

SERVER = """
import asyncio
from hypercorn.asyncio import serve
from hypercorn.config import Config
from app.api.features import feature_routes
from app.api.app import create_app
from app.core.settings import load_settings

app = create_app(load_settings(env_file=None))
app.router.routes.extend(feature_routes())
config = Config()
config.bind = ["127.0.0.1:{port}"]
config.accesslog = None
asyncio.run(serve(app, config))
"""


def load_events(mod: int) -> list[Event]:
    stream, _ = purchase_events(SAMPLE)
    purchases = [obj for obj in stream if int(obj["user_id"][1:]) % mod == 0]
    raw = purchases + synthetic_browsing(purchases, seed=6)
    events = [parse_event(obj, now_ms=FAR) for obj in raw]
    events.sort(key=lambda ev: ev.ts)
    return events


Pipeline = tuple[Ingestor, AggregateWorker]


def ingest_pair(plain: Pipeline, featured: Pipeline, events: list[Event]) -> tuple[float, float]:
    """Seconds for the same batches without and with the features (acknowledged path + the
    aggregate worker's drain), interleaved batch by batch so both see the same machine load."""
    spent = [0.0, 0.0]
    for i in range(0, len(events), BATCH):
        for j, (ingestor, worker) in enumerate((plain, featured)):
            t0 = time.perf_counter()
            ingestor.ingest(events[i : i + BATCH])
            worker.drain()
            spent[j] += time.perf_counter() - t0
    return spent[0], spent[1]


def timed(fn: Callable[[], Any], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(name: str, ms: list[float]) -> dict[str, float]:
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    print(f"  {name:<10} n={len(ms):>5}  p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  max {max(ms):6.3f}")
    return {"p50": round(p50, 3), "p99": round(p99, 3)}


def state_memory(client: redis.Redis, prefix: str) -> dict[str, tuple[int, float, int]]:
    """Feature hashes per entity type: (count, mean MEMORY USAGE bytes, max)."""
    sizes: dict[str, list[int]] = {"user": [], "item": [], "user_category": []}
    for raw in client.scan_iter(match=prefix + "*:feat*", count=5000):
        key = raw.decode()
        kind = "item" if ":i:{" in key else "user_category" if ":featc:" in key else "user"
        sizes[kind].append(int(client.memory_usage(key, samples=0) or 0))
    return {k: (len(v), sum(v) / max(len(v), 1), max(v, default=0)) for k, v in sizes.items()}


def start_server(url: str, prefix: str, admin: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "REDIS_URL": url, "RETAIL_KEY_PREFIX": prefix,
           "RETAIL_ADMIN_KEY": admin, "RETAIL_LOG_JSON": "0"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(port=port)], cwd=ROOT,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-800:]}")  # type: ignore[union-attr]
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the HTTP server did not come up in 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run for CI")
    parser.add_argument("--mod", type=int, default=None, help="customers with id % mod == 0")
    parser.add_argument("--reads", type=int, default=None, help="requests per latency figure")
    args = parser.parse_args()
    mod = args.mod or (20 if args.quick else 10)
    reads = args.reads or (300 if args.quick else 3000)
    fs = load_feature_set()
    names = fs.names("user")

    t0 = time.monotonic()
    events = load_events(mod)
    users = sorted({ev.identity for ev in events})
    print(f"{len(events):,} events ({len(users)} users) prepared in {time.monotonic() - t0:.1f} s")

    with redis_target("features") as target, target.client() as client:
        plain_cfg = replace(EngineConfig(), key_prefix=target.prefix + "plain:")
        cfg = replace(EngineConfig(), key_prefix=target.prefix + "feat:")
        settle_aof(client)
        keys = cfg.keys()
        plain_s, feat_s = ingest_pair(
            (Ingestor(client, plain_cfg), AggregateWorker(client, plain_cfg)),
            (
                Ingestor(client, cfg, ack_features=ack_features(fs, keys)),
                AggregateWorker(client, cfg, hooks=[item_feature_hook(fs, keys)]),
            ),
            events,
        )
        settle_aof(client)
        hook_us = (feat_s - plain_s) / len(events) * 1e6
        print(f"ingest: {len(events) / plain_s:,.0f} events/s without the feature hook, "
              f"{len(events) / feat_s:,.0f} with it ({hook_us:.0f} us per event for "
              f"{len(fs.features)} features)")  # fmt: skip
        hlens = [int(client.hlen(keys.user(u, "feat"))) for u in users]
        print(f"user state: {sum(hlens) / len(hlens):.0f} fields on average, max {max(hlens)}")
        memory = state_memory(client, cfg.key_prefix)
        for kind, (n, avg, top) in memory.items():
            print(f"  {kind:<14} {n:>6,} hashes, MEMORY USAGE {avg:,.0f} B on average, max {top:,}")

        as_of = max(ev.ts for ev in events) + 3_600_000
        rng = random.Random(1)
        print(f"reads of {len(names)} user features as of {as_of}:")
        res: dict[str, dict[str, float]] = {}
        res["fcall_1"] = summary("fcall_1", timed(
            lambda: get_features(client, fs, keys, "user", [rng.choice(users)], names, as_of),
            reads))  # fmt: skip
        res["fcall_100"] = summary("fcall_100", timed(
            lambda: get_features(client, fs, keys, "user", rng.sample(users, 100), names, as_of),
            max(reads // 10, 50)))  # fmt: skip

        admin = secrets.token_urlsafe(16)
        proc, port = start_server(target.url, cfg.key_prefix, admin)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            headers = {"Authorization": f"Bearer {admin}", "content-type": "application/json"}

            def http_one() -> None:
                conn.request("GET", f"/v1/features/user/{rng.choice(users)}?as_of={as_of}",
                             headers=headers)  # fmt: skip
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or len(json.loads(body)["features"]) != len(names):
                    raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")

            def http_batch() -> None:
                payload = json.dumps({"ids": rng.sample(users, 100), "as_of": as_of})
                conn.request("POST", "/v1/features/user", body=payload, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or len(json.loads(body)["rows"]) != 100:
                    raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")

            res["http_1"] = summary("http_1", timed(http_one, reads, warmup=50))
            res["http_100"] = summary("http_100", timed(http_batch, max(reads // 10, 50)))
            conn.close()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    emit_json({
        "bench": "features", "p99_ms_1": res["http_1"]["p99"], "p99_ms_100": res["http_100"]["p99"],
        "p50_ms_1": res["http_1"]["p50"], "p50_ms_100": res["http_100"]["p50"],
        "fcall_p99_ms_1": res["fcall_1"]["p99"], "fcall_p99_ms_100": res["fcall_100"]["p99"],
        "fcall_p50_ms_1": res["fcall_1"]["p50"], "fcall_p50_ms_100": res["fcall_100"]["p50"],
        "features": len(names), "events": len(events), "users": len(users),
        "ingest_events_per_s_plain": round(len(events) / plain_s),
        "ingest_events_per_s_with_features": round(len(events) / feat_s),
        "hook_us_per_event": round(hook_us),
        "bytes_per_user": round(memory["user"][1]), "bytes_per_item": round(memory["item"][1]),
        "bytes_per_user_category": round(memory["user_category"][1]), "quick": args.quick,
    })  # fmt: skip


if __name__ == "__main__":
    main()
