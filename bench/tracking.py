"""Tracking API benchmark: the same shopper events through `POST /v1/batch` (Segment format,
translated by app/ingest/segment.py) and through `POST /v1/events` (the engine's own format),
in the same run against the same live server, plus the warehouse profile sync.

Run from the repo root: `.venv/bin/python -m bench.tracking [--events N] [--rounds R] [--quick]`.
With REDIS_URL unset an embedded Redis Stack (AOF everysec) is started in a temporary folder.

The app (every ingestion hook, as served) runs under hypercorn on a free localhost port; one
keep-alive HTTP connection posts batches of `--batch` events. Workload (deterministic): `--users`
shoppers, `--items` items; view 70 %, click 10 %, add to cart 10 %, purchase 5 %, search 5 %.
After an unmeasured warm-up, each round posts fresh events (new ids, new users) in three
phases: engine format, Segment format, Segment format gzipped; the phase that goes first
rotates from round to round, so neither order nor a slow spell of the machine favours one.
Figures: events/s per phase (min / median / max over rounds) and
`segment_vs_engine` = median Segment events/s / median engine events/s (1.0: no overhead).
Profile sync: the shipped sample (3.6k rows) straight to Redis, then again (all duplicates).
CPU alone (no I/O, stable on a noisy machine): microseconds per message of `translate` (which
ends in `parse_event`) against `parse_event` on the engine form, best of 5 passes.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import http.client
import json
import math
import random
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Secret

from app.api.app import create_app
from app.core.events import parse_event
from app.core.settings import EngineConfig, Settings
from app.engine import build_engine
from app.ingest.segment import TrackingConfig, translate
from app.ingest.tracking import TrackingSink
from bench._common import emit_json, redis_target
from loaders import profiles

WRITE_KEY = "wk_bench"
NAMES = {"view": "Product Viewed", "click": "Product Clicked", "add_to_cart": "Product Added",
         "purchase": "Order Completed", "search": "Products Searched"}  # fmt: skip
PHASES = ("engine", "segment", "segment_gzip")
MIX = [("view", 70), ("click", 10), ("add_to_cart", 10), ("purchase", 5), ("search", 5)]


def workload(n: int, users: int, items: int, tag: str, seed: int) -> list[dict[str, Any]]:
    """Engine-format events (dicts) with ids and users unique to `tag`."""
    rng = random.Random(seed)
    kinds = [k for k, w in MIX for _ in range(w)]
    now = int(time.time() * 1000) - n
    out = []
    for i in range(n):
        kind = rng.choice(kinds)
        item = f"I{int(rng.paretovariate(1.0)) % items}"
        props = {"category": f"c{int(item[1:]) % 40}", "price": 2.5}
        ev: dict[str, Any] = {"event_id": f"{tag}-{i}", "type": kind, "session_id": "s1",
                              "user_id": f"{tag}-u{rng.randrange(users)}", "ts": now + i,
                              "props": props}  # fmt: skip
        if kind == "purchase":
            ev["items"] = [{"item_id": item, "qty": 1, "price": 2.5}]
        elif kind == "search":
            ev["props"]["query"] = "heart lantern"
        else:
            ev["item_id"] = item
        out.append(ev)
    return out


def warm_up(args: argparse.Namespace) -> list[bytes]:
    """A first, unmeasured pass (connection, thread pool, Function and key creation)."""
    events = workload(min(args.events, 1000), args.users, args.items, "warm", 99)
    return [json.dumps({"events": events[i : i + args.batch]}).encode()
            for i in range(0, len(events), args.batch)]  # fmt: skip


def as_segment(ev: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {"category": ev["props"]["category"], "price": 2.5}
    if ev["type"] == "purchase":
        props["products"] = [{"product_id": it["item_id"], "quantity": it["qty"], "price": 2.5}
                             for it in ev["items"]]  # fmt: skip
        props["revenue"], props["currency"] = 2.5, "GBP"
    elif ev["type"] == "search":
        props["query"] = ev["props"]["query"]
    else:
        props["product_id"] = ev["item_id"]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ev["ts"] / 1000))
    return {
        "type": "track",
        "event": NAMES[ev["type"]],
        "messageId": ev["event_id"],
        "userId": ev["user_id"],
        "properties": props,
        "timestamp": f"{stamp}.{ev['ts'] % 1000:03d}Z",
        "context": {"sessionId": "s1"},
    }


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[str]:
    import asyncio

    from hypercorn.asyncio import serve as hyper_serve
    from hypercorn.config import Config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    app = create_app(settings)
    app.state.rec_background = False

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(hyper_serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=20)


def post_all(url: str, path: str, bodies: list[bytes], headers: dict[str, str]) -> float:
    """POST every body on one keep-alive connection; events/s is computed by the caller."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    t0 = time.perf_counter()
    for body in bodies:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        reply = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status} {reply[:200]!r}")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def parse_cost(args: argparse.Namespace) -> dict[str, float]:
    """Microseconds per message of the translation alone (no I/O): `translate` on the
    Segment form against `parse_event` on the engine form of the same events, best of 5."""
    events = workload(args.events, args.users, args.items, "cpu", 7)
    messages = [as_segment(e) for e in events]
    now = int(time.time() * 1000) + len(events)
    best = {"engine": math.inf, "segment": math.inf}
    for _ in range(5):
        t0 = time.perf_counter()
        for e in events:
            parse_event(e, now_ms=now)
        best["engine"] = min(best["engine"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        for m in messages:
            translate(m, received_ms=now)
        best["segment"] = min(best["segment"], time.perf_counter() - t0)
    return {k: round(v / len(events) * 1e6, 2) for k, v in best.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"engine": [], "segment": [], "segment_gzip": []}
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    with redis_target("tracking") as target:
        engine_cfg = replace(EngineConfig(), key_prefix=target.prefix)
        settings = Settings(
            redis_url=target.url, host="127.0.0.1", port=0, write_keys=frozenset({WRITE_KEY}),
            admin_key=Secret("bench-admin"), data_dir=Path("/nonexistent"),
            sample_data=Path("/nonexistent"), log_json=False, engine=engine_cfg,
        )  # fmt: skip
        with serve(settings) as url:
            post_all(url, "/v1/events", warm_up(args), {"content-type": "application/json",
                                                         "authorization": auth})  # fmt: skip
            for r in range(args.rounds):
                order = PHASES[r % 3 :] + PHASES[: r % 3]  # each phase leads once in 3 rounds
                for phase in order:
                    events = workload(args.events, args.users, args.items, f"{phase}{r}", r)
                    chunks = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
                    headers = {"content-type": "application/json", "authorization": auth}
                    if phase == "engine":
                        bodies = [json.dumps({"events": c}).encode() for c in chunks]
                        path = "/v1/events"
                    else:
                        bodies = [json.dumps({"batch": [as_segment(e) for e in c]}).encode()
                                  for c in chunks]  # fmt: skip
                        path = "/v1/batch"
                    if phase == "segment_gzip":
                        bodies = [gzip.compress(b) for b in bodies]
                        headers["content-encoding"] = "gzip"
                    elapsed = post_all(url, path, bodies, headers)
                    rates[phase].append(len(events) / elapsed)
                    print(f"round {r + 1} {phase:<13} {len(events) / elapsed:8,.0f} events/s",
                          file=sys.stderr)  # fmt: skip
        client = target.client()
        eng = build_engine(client, engine_cfg)
        sink = TrackingSink(client, engine_cfg, eng.ingestor, TrackingConfig())
        send = profiles.sink_sender(sink.apply)
        first = profiles.sync(profiles.SAMPLE, profiles.ColumnMap(), send, batch_size=500)
        again = profiles.sync(profiles.SAMPLE, profiles.ColumnMap(), send, batch_size=500)
        print(first.summary(), file=sys.stderr)
        print(again.summary(), file=sys.stderr)
        client.close()

    def spread(xs: list[float]) -> dict[str, float]:
        return {"min": round(min(xs)), "median": round(statistics.median(xs)),
                "max": round(max(xs))}  # fmt: skip

    cpu = parse_cost(args)
    print(f"translate {cpu['segment']} us/message, parse_event {cpu['engine']} us/event",
          file=sys.stderr)  # fmt: skip
    return {
        "bench": "tracking",
        "parse_us_per_event": cpu["engine"],
        "translate_us_per_message": cpu["segment"],
        "events_per_round": args.events,
        "batch": args.batch,
        "rounds": args.rounds,
        "engine_events_per_s": spread(rates["engine"]),
        "segment_events_per_s": spread(rates["segment"]),
        "segment_gzip_events_per_s": spread(rates["segment_gzip"]),
        "segment_vs_engine": round(
            statistics.median(rates["segment"]) / statistics.median(rates["engine"]), 3
        ),
        "profile_rows": first.read,
        "profile_rows_per_s": round(first.read / first.seconds),
        "profile_rerun_rows_per_s": round(again.read / again.seconds),
        "profile_rerun_duplicates": again.duplicates,
        "quick": args.quick,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run for CI")
    parser.add_argument("--events", type=int, default=None, help="events per phase and round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=3000)
    args = parser.parse_args()
    args.events = args.events or (1000 if args.quick else 10_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    emit_json(run(args))


if __name__ == "__main__":
    main()
