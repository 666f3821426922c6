"""Ingestion benchmark of the log-first design: the acknowledged path, the aggregate workers,
freshness, and a kill check.

Run from the repo root: `.venv/bin/python -m bench.ingest [--events N] [--quick]`.
With REDIS_URL unset an embedded Redis Stack (AOF everysec, as in production) is started in a
temporary folder; with REDIS_URL set that server is used under a unique key prefix (its
commandstats are reset, so use a server nothing else is using).

Workload (deterministic, `--seed`): `--users` shoppers (20% anonymous) with Zipf(0.8) activity,
`--items` items in 40 categories with Zipf(1.0) popularity and log-normal prices. Event mix:
view 70%, click 10%, search 8%, add_to_cart 7%, purchase 3% (1-3 lines), remove_from_cart 2%;
clicks/carts/purchases mostly pick an item the shopper viewed or carted before. Timestamps
increase over the last two hours (new session after 30 min idle), event ids are unique.

Phases (each on fresh keys under its own sub-prefix; the AOF is rewritten between phases on the
embedded server so no rewrite lands in one phase by chance):
  A. Acknowledged path: `engine.ingestor.ingest` (the code the HTTP API runs) over pre-parsed
     events in batches of `--batch`, one client process, no worker running:
     `events_per_s`; `ack_server_us_per_event` = INFO commandstats usec of FCALL (the
     `ingest_partition` calls) per event.
  B. Aggregates: one in-process worker drains the logs phase A wrote (`count` entries per
     partition and step): `agg_server_us_per_event` = usec of every command the worker sent
     (FCALL apply_blocks, XREADGROUP, XACK, SET/GET/PEXPIRE of the leases, UNLINK) per event;
     `agg_events_per_s` (worker wall clock).
  C. Freshness: events acknowledged at a paced `--rate` (default 10,000/s) for `--seconds` while
     a worker process (`python -m app.cli workers`) applies them; the worker measures each
     event's acknowledgement-to-applied time (log id time to after its apply call) and
     publishes p50/p99 (`freshness_p50_ms`, `freshness_p99_ms`).
  D. Kill: a child process acknowledging batches is SIGKILLed at random points `--kills` times,
     each trial's batches retried: `lost_after_kill` = acknowledged-or-retried events missing
     from the logs (must be 0), `duplicated_after_kill` = events logged twice (must be 0).

Last line: one JSON object with those fields.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from app.core.events import Event, parse_event
from app.core.settings import EngineConfig
from app.engine import build_engine
from app.ingest.aggregates import ingest_status
from app.ingest.log import log_length, merged_log
from bench._common import commandstats, emit_json, percentile, redis_target, settle_aof

ROOT = Path(__file__).resolve().parent.parent

TYPE_MIX = (
    ("view", 0.70), ("click", 0.10), ("search", 0.08), ("add_to_cart", 0.07),
    ("purchase", 0.03), ("remove_from_cart", 0.02),
)  # fmt: skip
N_CATEGORIES = 40
SESSION_GAP_MS = 30 * 60 * 1000
SPAN_MS = 2 * 3_600_000
WORDS = (
    "red", "blue", "white", "black", "green", "mug", "candle", "lantern", "heart", "bag", "tin",
    "box", "cake", "stand", "jar", "vintage", "retro", "paper", "garden", "party", "set", "glass",
    "metal", "wooden", "christmas", "doormat", "clock",
)  # fmt: skip


# -- workload --------------------------------------------------------------------------------


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, n + 1)]


def generate(n_events: int, n_users: int, n_items: int, seed: int) -> list[dict[str, Any]]:
    """Raw event dicts as a client would POST them, ts increasing up to ~now."""
    rng = random.Random(seed)
    run = f"{seed:x}{int(time.time()):x}"
    cats = [f"cat{c:02d}" for c in range(N_CATEGORIES)]
    items = []
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i in range(n_items):
        cat = cats[min(int(rng.paretovariate(1.2)) - 1, N_CATEGORIES - 1)]
        price = round(min(max(rng.lognormvariate(1.6, 0.9), 0.19), 500.0), 2)
        items.append((f"SKU{i:05d}", cat, price))
        by_cat[cat].append(i)
    item_w = _zipf_weights(n_items, 1.0)
    users = []
    for u in range(n_users):
        if rng.random() < 0.2:
            users.append(("anonymous_id", f"a{u:06d}x{run}"))
        else:
            users.append(("user_id", f"u{u:06d}"))
    rng.shuffle(users)
    user_w = _zipf_weights(n_users, 0.8)
    queries = [" ".join(rng.sample(WORDS, rng.randint(1, 3))) for _ in range(500)]
    query_w = _zipf_weights(len(queries), 1.0)
    types = [t for t, _ in TYPE_MIX]
    type_w = [w for _, w in TYPE_MIX]

    picked_users = rng.choices(range(n_users), weights=user_w, k=n_events)
    picked_types = rng.choices(types, weights=type_w, k=n_events)
    popular = rng.choices(range(n_items), weights=item_w, k=n_events)
    state: dict[int, dict[str, Any]] = {}
    start = int(time.time() * 1000) - SPAN_MS - 1000
    out: list[dict[str, Any]] = []
    for n in range(n_events):
        u = picked_users[n]
        ts = start + n * SPAN_MS // n_events
        st = state.get(u)
        if st is None:
            fav = rng.sample(cats[:12], 2)
            st = state[u] = {"fav": fav, "last": ts, "sess": 0, "viewed": [], "cart": []}
        if ts - st["last"] > SESSION_GAP_MS:
            st["sess"] += 1
            st["viewed"].clear()
        st["last"] = ts
        id_field, uid = users[u]
        ev: dict[str, Any] = {
            "event_id": f"{run}-{n}",
            "type": picked_types[n],
            id_field: uid,
            "session_id": f"{uid}-s{st['sess']}",
            "ts": ts,
        }
        etype = ev["type"]
        if etype == "search":
            q = rng.choices(queries, weights=query_w)[0]
            ev["props"] = {"query": q, "surface": "search_box"}
            out.append(ev)
            continue
        if etype == "remove_from_cart" and not st["cart"]:
            etype = ev["type"] = "view"
        if etype == "view":
            if rng.random() < 0.6:
                idx = rng.choice(by_cat[rng.choice(st["fav"])] or [popular[n]])
            else:
                idx = popular[n]
            st["viewed"].append(idx)
            del st["viewed"][:-20]
        elif etype == "remove_from_cart":
            idx = st["cart"].pop(rng.randrange(len(st["cart"])))
        elif st["viewed"] and rng.random() < 0.8:
            idx = rng.choice(st["viewed"])
        else:
            idx = popular[n]
        if etype == "purchase":
            lines = list(dict.fromkeys([*st["cart"][:2], idx]))[: rng.randint(1, 3)]
            st["cart"] = [x for x in st["cart"] if x not in lines]
            ev["items"] = [
                {"item_id": items[i][0], "qty": rng.randint(1, 3), "price": items[i][2],
                 "category": items[i][1]}
                for i in lines
            ]  # fmt: skip
            ev["props"] = {"surface": "checkout"}
        else:
            if etype == "add_to_cart":
                st["cart"].append(idx)
            ev["item_id"] = items[idx][0]
            ev["qty"] = 1
            ev["props"] = {"price": items[idx][2], "category": items[idx][1]}
        out.append(ev)
    return out


# -- raw baseline: the Functions' command sequence from pipelines ---------------------------


MINUTE_MS = 60_000


def reset_stats(client: redis.Redis) -> None:
    client.config_resetstat()


def total_usec(client: redis.Redis, only: set[str] | None = None) -> tuple[float, dict[str, float]]:
    stats = commandstats(client)
    per = {cmd: s["usec"] for cmd, s in stats.items() if cmd not in ("info", "config|resetstat")}
    if only is not None:
        per = {cmd: v for cmd, v in per.items() if cmd in only}
    return sum(per.values()), per


def phase_ack(
    client: redis.Redis, cfg: EngineConfig, events: list[Event], batch: int
) -> dict[str, Any]:
    engine = build_engine(client, cfg)
    warm = events[: min(2000, len(events) // 10)]
    engine.ingestor.ingest(warm)  # imports, caches, first keys
    rest = events[len(warm) :]
    reset_stats(client)
    lat: list[float] = []
    t0 = time.perf_counter()
    for i in range(0, len(rest), batch):
        t = time.perf_counter()
        engine.ingestor.ingest(rest[i : i + batch])
        lat.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - t0
    fcall_us, _ = total_usec(client, {"fcall"})
    return {
        "events": len(rest),
        "events_per_s": round(len(rest) / wall),
        "batch_p50_ms": round(percentile(lat, 50), 2),
        "batch_p99_ms": round(percentile(lat, 99), 2),
        "ack_server_us_per_event": round(fcall_us / len(rest), 2),
        "_engine": engine,
    }


def phase_agg(client: redis.Redis, engine: Any, n_events: int, count: int) -> dict[str, Any]:
    worker = engine.worker(count=count)
    reset_stats(client)
    t0 = time.perf_counter()
    applied = worker.drain()
    wall = time.perf_counter() - t0
    usec, per = total_usec(client)
    inner = {
        "fcall",
        "xreadgroup",
        "xack",
        "set",
        "get",
        "pexpire",
        "unlink",
        "hset",
        "expire",
        "del",
    }  # the commands the worker itself sends
    sent = sum(v for k, v in per.items() if k in inner)
    return {
        "applied": applied,
        "agg_events_per_s": round(applied / wall) if wall else None,
        "agg_server_us_per_event": round(sent / max(applied, 1), 2),
        "agg_calls": worker.stats.calls,
        "agg_fcall_us_per_event": round(per.get("fcall", 0.0) / max(applied, 1), 2),
        "_total_us": usec,
    }


def phase_freshness(
    url: str, cfg: EngineConfig, events: list[Event], rate: int, seconds: float
) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    engine = build_engine(client, cfg)
    env = {**os.environ, "REDIS_URL": url, "RETAIL_KEY_PREFIX": cfg.key_prefix}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "workers"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "aggregate worker 0 of 1: ..."
    step = 100  # events per send: 100 sends a second at 10k/s
    n = min(len(events), int(rate * seconds))
    t0 = time.perf_counter()
    for i in range(0, n, step):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        engine.ingestor.ingest(events[i : i + step])
    sent_wall = time.perf_counter() - t0
    deadline = time.time() + 30
    while time.time() < deadline:
        status = ingest_status(client, cfg)
        if status.lag.total_lag == 0 and status.lag.pending == 0:
            break
        time.sleep(0.2)
    time.sleep(1.2)  # the worker publishes its window at most once a second
    status = ingest_status(client, cfg)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    return {
        "freshness_events": n,
        "freshness_rate_per_s": round(n / sent_wall),
        "freshness_p50_ms": status.freshness_p50_ms,
        "freshness_p99_ms": status.freshness_p99_ms,
    }


def child_ingest(url: str, prefix: str, trial: int, n: int, batch: int) -> None:
    cfg = replace(EngineConfig(), key_prefix=prefix)
    engine = build_engine(redis.Redis.from_url(url), cfg)
    events = kill_events(trial, n)
    print("ready", flush=True)
    for i in range(0, n, batch):
        engine.ingestor.ingest(events[i : i + batch])


def kill_events(trial: int, n: int) -> list[Event]:
    now = int(time.time() * 1000) // 3_600_000 * 3_600_000
    rng = random.Random(trial)
    return [
        parse_event({"event_id": f"kill{trial}-{i}", "type": "view",
                     "user_id": f"ku{rng.randrange(500)}", "session_id": "s",
                     "item_id": f"KI{rng.randrange(100)}", "ts": now - rng.randrange(600_000)})
        for i in range(n)
    ]  # fmt: skip


def phase_kill(url: str, cfg: EngineConfig, kills: int, n: int, batch: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    engine = build_engine(client, cfg)
    rng = random.Random(99)
    mid = 0
    for trial in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.ingest", "--child-ingest", url, cfg.key_prefix,
             str(trial), str(n), str(batch)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.2))
        mid += proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        for i in range(0, n, batch):  # the client's retry
            engine.ingestor.ingest(kill_events(trial, n)[i : i + batch])
    logged: Counter[str] = Counter()
    for _p, _id, fields in merged_log(client, engine.keys):
        logged[json.loads(fields[b"data"])["event_id"]] += 1
    want = {f"kill{t}-{i}" for t in range(kills) for i in range(n)}
    return {
        "kills": kills,
        "kills_mid_batch": mid,
        "lost_after_kill": len(want - set(logged)),
        "duplicated_after_kill": sum(1 for v in logged.values() if v > 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    raw = generate(args.events, args.users, args.items, args.seed)
    now = int(time.time() * 1000)
    events = [parse_event(e, now_ms=now + 600_000) for e in raw]
    out: dict[str, Any] = {"bench": "ingest", "events": len(events), "batch": args.batch,
                           "partitions": EngineConfig().partitions,
                           "agg_shards": EngineConfig().agg_shards}  # fmt: skip
    with redis_target("ingest") as target:
        client = target.client()
        cfg = replace(EngineConfig(), key_prefix=target.prefix + "a:")
        settle_aof(client)
        ack = phase_ack(client, cfg, events, args.batch)
        engine = ack.pop("_engine")
        print(f"A ack path: {ack}", flush=True)
        agg = phase_agg(client, engine, ack["events"], args.count)
        agg.pop("_total_us")
        print(f"B aggregates: {agg}", flush=True)
        settle_aof(client)
        fcfg = replace(EngineConfig(), key_prefix=target.prefix + "f:")
        fresh = phase_freshness(target.url, fcfg, events, args.rate, args.seconds)
        print(f"C freshness: {fresh}", flush=True)
        kcfg = replace(EngineConfig(), key_prefix=target.prefix + "k:")
        kill = phase_kill(target.url, kcfg, args.kills, args.kill_events, args.batch)
        print(f"D kill: {kill}", flush=True)
        assert log_length(client, engine.keys) == len(events)
        out.update(ack)
        out.update(agg)
        out.update(fresh)
        out.update(kill)
        out["server"] = "embedded" if target.embedded else "REDIS_URL"
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-ingest":
        child_ingest(argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=4_000)
    ap.add_argument("--batch", type=int, default=1_000)
    ap.add_argument("--count", type=int, default=100, help="worker: entries per partition and step")
    ap.add_argument("--rate", type=int, default=10_000, help="phase C: events/s acknowledged")
    ap.add_argument("--seconds", type=float, default=8.0, help="phase C duration")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--kill-events", type=int, default=2_000, help="events per kill trial")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="CI smoke: a few thousand events")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.users, args.items = 6_000, 1_500, 500
        args.seconds, args.kills, args.kill_events = 2.0, 3, 1_000
    emit_json(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
