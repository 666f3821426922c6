"""Feature store benchmark: Redis time and latency of online reads (1 and 100 users), memory
per entity, the longest Redis call, ingest overhead; Feast side by side when installed.

Run from the repo root: `.venv/bin/python -m bench.features [--quick]`. With REDIS_URL unset
an embedded Redis Stack (AOF everysec, as in production) is started in a temporary folder;
with REDIS_URL set that server is used under a unique key prefix. Run one benchmark at a time.

State: the real Online Retail purchases of every customer whose id is a multiple of `--mod`
(default 10: ~360 shoppers, ~26k lines; --quick: 20) plus deterministic synthetic browsing
around them (loaders/browsing.py), ingested through `Ingestor` in batches of 1,000, without
the feature hook and with it (fresh keys each, batch by batch interleaved so both see the same
load): events/s of both and the hook's cost per event; then MEMORY USAGE of the packed feature
states per entity type.

Reads (the 20 user features of features/features.yaml, users drawn uniformly among those with
events, as of one hour after the last event so every window holds data), all from this process
unless named http:
  read_1 / read_100    `get_features`: MGET of the packed states in slices, arithmetic in
                       Python (the application's read path)
  feast_1 / feast_100  Feast's `get_online_features` on the same values (written into Feast's
                       Redis online store with its push API), timed alternately with read_*
  fcall_1 / fcall_100  FCALL_RO features_get: the same arithmetic inside Redis (the other
                       design measured; what services calling the Function directly get)
  http_1 / http_100    GET /v1/features/user/{id} and POST /v1/features/user (100 ids) on a
                       hypercorn server in a subprocess, one keep-alive connection
Latency is wall clock per request, p50/p99 (linear interpolation). Redis time per entity read
is the server's own INFO commandstats usec of the read commands (MGET; FCALL_RO; Feast's
HMGET) divided by the entities read. Call durations are SLOWLOG's (calls above 100 us logged,
the log reset per phase): `max_call_ms` is the longest of the engine's feature commands during
ingestion (features_ingest) and the application read path (MGET, in process and HTTP), with
the ingest calls' p99 / p99.9 beside it (on a loaded machine one call's wall time includes
time the server was descheduled); the FCALL option's are `fcall_max_call_ms` / `_p99_`.
During ingestion the server main thread's preemptions, run-queue wait and the host's steal
time are reported (embedded server on Linux); `--server-fifo` runs that thread SCHED_FIFO.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis

from app.core.events import Event, parse_event
from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.features.online import ack_features, get_features, get_features_fcall, item_feature_hook
from app.features.spec import FeatureSet, load_feature_set
from app.ingest.aggregates import AggregateWorker
from app.ingest.ingestor import Ingestor
from app.redis.embedded import free_port
from bench import _feast_peer
from bench._common import (
    commandstats,
    emit_json,
    percentile,
    redis_target,
    server_cpu_s,
    settle_aof,
)
from loaders.browsing import synthetic_browsing
from loaders.online_retail import purchase_events

ROOT = Path(__file__).resolve().parent.parent

SAMPLE = ROOT / "data" / "online-retail" / "online-retail-2010-12_2011-09.csv.gz"
BATCH = 1000
FAR = 2_000_000_000_000
SLOW_US = 100
SLOWLOG_LEN = 100_000
FEAST_DB = 1
FEATURE_COMMANDS = ("fcall features_ingest", "mget", "time", "get")

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


CPU_MS: dict[str, list[float]] = {}  # this process's CPU ms per call, by name (from `timed`)


def timed(fns: dict[str, Callable[[int], Any]], n: int, warmup: int = 20) -> dict[str, list[float]]:
    """Wall ms per call of each fn(i), the fns alternating call by call (same load, same
    inputs); this process's CPU ms per call go to CPU_MS (steady on a shared machine)."""
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    out: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(n):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn(i)
            out[name].append((time.perf_counter() - t0) * 1000)
            CPU_MS.setdefault(name, []).append((time.process_time() - c0) * 1000)
    return out


def summary(name: str, ms: list[float]) -> dict[str, float]:
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    cpu = percentile(CPU_MS.get(name, [0.0]), 50)
    print(f"  {name:<10} n={len(ms):>5}  p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  max {max(ms):6.3f}"
          f"  (client CPU p50 {cpu:.3f} ms)")  # fmt: skip
    return {"p50": round(p50, 3), "p99": round(p99, 3), "cpu_p50": round(cpu, 3)}


def state_memory(client: redis.Redis, prefix: str) -> dict[str, tuple[int, float, int]]:
    """Packed feature states per entity type: (count, mean MEMORY USAGE bytes, max)."""
    sizes: dict[str, list[int]] = {"user": [], "item": [], "user_category": []}
    for raw in client.scan_iter(match=prefix + "*:fs*", count=5000):
        key = raw.decode()
        kind = "item" if ":i:{" in key else "user_category" if ":fsc:" in key else "user"
        sizes[kind].append(int(client.memory_usage(key, samples=0) or 0))
    return {k: (len(v), sum(v) / max(len(v), 1), max(v, default=0)) for k, v in sizes.items()}


@contextlib.contextmanager
def slowlog(client: redis.Redis) -> Iterator[dict[str, list[float]]]:
    """Durations (ms) of the calls slower than SLOW_US per command (FCALL: per Function) while
    the block runs, from SLOWLOG (it measures the command's execution, which is what blocks
    the other clients; on a loaded machine it includes time the server was descheduled)."""
    old = client.config_get("slowlog-*")
    client.config_set("slowlog-log-slower-than", SLOW_US)
    client.config_set("slowlog-max-len", SLOWLOG_LEN)
    client.slowlog_reset()
    calls: dict[str, list[float]] = {}
    try:
        yield calls
        for entry in client.slowlog_get(SLOWLOG_LEN):
            cmd = entry["command"]
            words = (cmd.decode(errors="replace") if isinstance(cmd, bytes) else str(cmd)).split()
            label = words[0].lower() if words else "?"
            if label in ("fcall", "fcall_ro") and len(words) > 1:
                label += " " + words[1]
            calls.setdefault(label, []).append(entry["duration"] / 1000)
    finally:
        for name, value in old.items():
            client.config_set(name, value)


def report_slow(phase: str, calls: dict[str, list[float]]) -> None:
    top = sorted(calls.items(), key=lambda kv: -max(kv[1]))[:4]
    text = "; ".join(f"{k} {len(v)} above {SLOW_US} us, max {max(v):.3f} ms" for k, v in top)
    print(f"  calls ({phase}): {text}")


def feature_calls(*phases: dict[str, list[float]]) -> list[float]:
    return [d for phase in phases for k, v in phase.items() if k in FEATURE_COMMANDS for d in v]


def upper_percentile(slow: list[float], total: int, p: float) -> float:
    """The p-th percentile of `total` calls of which `slow` are those logged (> SLOW_US); 0.0
    when it lies below the threshold."""
    above = int(total * (100 - p) / 100)
    ranked = sorted(slow, reverse=True)
    return ranked[above] if above < len(ranked) else 0.0


class ServerThread:
    """Scheduler figures of the server's main thread (Linux, server on this host): how long
    it waited for a CPU while runnable and how often it was preempted (a command then lasts
    longer than its work: SLOWLOG measures wall time), and the host's steal time (the
    hypervisor running another guest). None where /proc does not show them."""

    def __init__(self, client: redis.Redis, embedded: bool) -> None:
        pid = int(client.info("server")["process_id"])
        self.path = Path(f"/proc/{pid}/task/{pid}")
        self.pid = pid
        self.ok = embedded and self.path.exists()

    def sample(self) -> tuple[float, int, float] | None:
        """(ms waited runnable, involuntary switches, host steal ms) since boot."""
        if not self.ok:
            return None
        waited_ns = int((self.path / "schedstat").read_text().split()[1])
        status = (self.path / "status").read_text().splitlines()
        switches = next(int(x.split()[1]) for x in status if x.startswith("nonvoluntary"))
        steal = int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8])
        return waited_ns / 1e6, switches, steal * 1000 / os.sysconf("SC_CLK_TCK")

    def realtime(self) -> str:
        """Run the main thread SCHED_FIFO (never preempted by ordinary processes): the
        server as it runs on a core of its own. Needs CAP_SYS_NICE."""
        if not self.ok:
            return "default (server not on this host)"
        try:
            os.sched_setscheduler(self.pid, os.SCHED_FIFO, os.sched_param(1))
        except PermissionError:
            return "default (SCHED_FIFO not permitted)"
        return "fifo"


def sched_delta(
    before: tuple[float, int, float] | None, after: tuple[float, int, float] | None
) -> dict[str, float]:
    if before is None or after is None:
        return {}
    return {"server_runq_wait_ms": round(after[0] - before[0], 1),
            "server_preemptions": after[1] - before[1],
            "host_steal_ms": round(after[2] - before[2], 1)}  # fmt: skip


class CountingHook:
    """The number of Function calls that carried feature work (the denominator of the call
    percentiles: the slow log only holds the slow ones)."""

    def __init__(self, calls: int) -> None:
        self.calls = calls


def ack_calls(ingestor: Ingestor, events: list[Event]) -> int:
    """`ingest_partition` calls the featured ingestor made for these batches."""
    return sum(
        len(ingestor.partition_calls(events[i : i + BATCH])) for i in range(0, len(events), BATCH)
    )


def engine_rows(
    client: redis.Redis, fs: FeatureSet, keys: Keys, users: list[str], names: list[str], t: int
) -> dict[str, dict[str, Any]]:
    rows = {}
    for i in range(0, len(users), 100):
        for row in get_features(client, fs, keys, "user", users[i : i + 100], names, t):
            rows[row.entity_id] = row.values
    return rows


def feast_setup(
    url: str, names: list[str], rows: dict[str, dict[str, Any]], users: list[str]
) -> tuple[_feast_peer.FeastPeer | None, dict[str, Any]]:
    """Feast holding the engine's values, checked equal on 50 users x all features."""
    why = _feast_peer.available()
    if why is not None:
        print(f"Feast peer skipped: {why}")
        return None, {"feast": "not installed"}
    u = urlparse(url)
    peer = _feast_peer.FeastPeer(f"{u.hostname}:{u.port}", FEAST_DB, names)
    peer.write(rows)
    checked = users[:50]
    got = peer.read(checked)
    bad = [(uid, n) for i, uid in enumerate(checked) for n in names
           if not _feast_peer.same(rows[uid][n], got[n][i])]  # fmt: skip
    if bad:
        raise RuntimeError(f"Feast and the engine disagree on {len(bad)} values, e.g. {bad[:3]}")
    print(f"Feast {_feast_peer.version()}: values equal on {len(checked)} users x "
          f"{len(names)} features")  # fmt: skip
    with redis.Redis(host=u.hostname, port=u.port, db=FEAST_DB, password=u.password) as db:
        sizes = [int(db.memory_usage(k, samples=0) or 0) for k in db.scan_iter(count=5000)]
    extra = {"feast_users": len(sizes),
             "feast_bytes_per_user": round(sum(sizes) / max(len(sizes), 1))}  # fmt: skip
    print(f"  Feast: {len(sizes)} user hashes, MEMORY USAGE {extra['feast_bytes_per_user']} B avg")
    return peer, extra


def start_server(url: str, prefix: str, admin: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "REDIS_URL": url, "RETAIL_KEY_PREFIX": prefix,
           "RETAIL_ADMIN_KEY": admin, "RETAIL_LOG_JSON": "0",
           "RETAIL_RATE_PER_ADDRESS": "0"}  # fmt: skip
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
    parser.add_argument(
        "--server-fifo",
        action="store_true",
        help="run the embedded server's main thread SCHED_FIFO (a core of its own)",
    )
    args = parser.parse_args()
    mod = args.mod or (20 if args.quick else 10)
    reads = args.reads or (300 if args.quick else 3000)
    fs = load_feature_set()
    names = fs.names("user")

    load_start = os.getloadavg()
    print(f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
          f"({os.cpu_count()} CPUs)")  # fmt: skip
    t0 = time.monotonic()
    events = load_events(mod)
    users = sorted({ev.identity for ev in events})
    print(f"{len(events):,} events ({len(users)} users) prepared in {time.monotonic() - t0:.1f} s")

    out: dict[str, Any] = {"bench": "features"}
    with redis_target("features") as target, target.client() as client:
        plain_cfg = replace(EngineConfig(), key_prefix=target.prefix + "plain:")
        cfg = replace(EngineConfig(), key_prefix=target.prefix + "feat:")
        settle_aof(client)
        keys = cfg.keys()
        featured_worker = AggregateWorker(client, cfg, hooks=[item_feature_hook(fs, keys)])
        featured = Ingestor(client, cfg, ack_features=ack_features(fs, keys))
        plain = Ingestor(client, plain_cfg)
        plain_worker = AggregateWorker(client, plain_cfg)
        thread = ServerThread(client, target.embedded)
        out["server_sched"] = thread.realtime() if args.server_fifo else "default"
        print(f"server main thread scheduling: {out['server_sched']}")
        cpu0, sched0 = server_cpu_s(client), thread.sample()
        with slowlog(client) as slow_ingest:
            plain_s, feat_s = ingest_pair((plain, plain_worker), (featured, featured_worker),
                                          events)  # fmt: skip
        # The feature work runs inside the acknowledged call (shopper features) and the
        # workers' apply_blocks calls (item features); the slow log holds both runs' calls,
        # so both are counted.
        counting = CountingHook(
            featured_worker.stats.calls + ack_calls(featured, events)
            + plain_worker.stats.calls + ack_calls(plain, events)
        )  # fmt: skip
        # Server CPU (main thread) per Function call of the ingestion, on average (the other
        # commands' CPU included, so a little high): free of the time a descheduled server
        # adds to SLOWLOG's wall-clock durations on a loaded machine.
        cpu_per_call_ms = (server_cpu_s(client) - cpu0) * 1000 / counting.calls
        out |= sched_delta(sched0, thread.sample())
        report_slow("ingestion", slow_ingest)
        if "server_preemptions" in out:
            print(f"  server main thread during ingestion: preempted {out['server_preemptions']}"
                  f" times, {out['server_runq_wait_ms']} ms waiting for a CPU; host steal "
                  f"{out['host_steal_ms']} ms")  # fmt: skip
        print(f"  server CPU per ingestion call (all commands / Function calls): "
              f"{cpu_per_call_ms:.3f} ms")  # fmt: skip
        settle_aof(client)
        hook_us = (feat_s - plain_s) / len(events) * 1e6
        print(f"ingest: {len(events) / plain_s:,.0f} events/s without the feature hook, "
              f"{len(events) / feat_s:,.0f} with it ({hook_us:.0f} us per event for "
              f"{len(fs.features)} features)")  # fmt: skip
        memory = state_memory(client, cfg.key_prefix)
        for kind, (n, avg, top) in memory.items():
            print(f"  {kind:<14} {n:>6,} states, MEMORY USAGE {avg:,.0f} B on average, max {top:,}")

        as_of = max(ev.ts for ev in events) + 3_600_000
        rows = engine_rows(client, fs, keys, users, names, as_of)
        peer, feast_extra = feast_setup(target.url, names, rows, users)
        rng = random.Random(1)
        one = [rng.choice(users) for _ in range(reads + 50)]
        hundred = [rng.sample(users, 100) for _ in range(max(reads // 10, 50) + 20)]
        print(f"reads of {len(names)} user features as of {as_of}:")

        def engine_1(i: int) -> None:
            get_features(client, fs, keys, "user", [one[i]], names, as_of)

        def engine_100(i: int) -> None:
            get_features(client, fs, keys, "user", hundred[i], names, as_of)

        fns_1: dict[str, Callable[[int], Any]] = {"read_1": engine_1}
        fns_100: dict[str, Callable[[int], Any]] = {"read_100": engine_100}
        if peer is not None:
            fns_1["feast_1"] = lambda i: peer.read([one[i]])
            fns_100["feast_100"] = lambda i: peer.read(hundred[i])
        res: dict[str, dict[str, float]] = {}
        client.config_resetstat()
        with slowlog(client) as slow_read:
            ms = timed(fns_1, reads, warmup=50) | timed(fns_100, max(reads // 10, 50))
        stats = commandstats(client)
        report_slow("reads", slow_read)
        for name, values in ms.items():
            res[name] = summary(name, values)
        n_read = (reads + 50) + 100 * (max(reads // 10, 50) + 20)  # warm-up included
        out["fn_us_per_entity"] = round(stats.get("mget", {}).get("usec", 0) / n_read, 2)
        if peer is not None:
            hm = stats.get("hmget", {})
            out["feast_fn_us_per_entity"] = round(hm.get("usec", 0) / max(hm.get("calls", 0), 1), 2)

        client.config_resetstat()
        with slowlog(client) as slow_fcall:
            ms = timed({"fcall_1": lambda i: get_features_fcall(
                client, fs, keys, "user", [one[i]], names, as_of)}, reads, warmup=50)  # fmt: skip
            ms |= timed({"fcall_100": lambda i: get_features_fcall(
                client, fs, keys, "user", hundred[i], names, as_of)},
                max(reads // 10, 50))  # fmt: skip
        stats = commandstats(client)
        report_slow("FCALL_RO features_get", slow_fcall)
        for name, values in ms.items():
            res[name] = summary(name, values)
        fc = stats.get("fcall_ro", {})
        out["fcall_us_per_entity"] = round(fc.get("usec", 0) / n_read, 2)
        out["fcall_max_call_ms"] = round(max(slow_fcall.get("fcall_ro features_get", [0.0])), 3)
        fcall_n = (reads + 50) + max(reads // 10, 50) + 20
        out["fcall_p99_call_ms"] = round(
            upper_percentile(slow_fcall.get("fcall_ro features_get", []), fcall_n, 99), 3
        )

        admin = secrets.token_urlsafe(16)
        proc, port = start_server(target.url, cfg.key_prefix, admin)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            headers = {"Authorization": f"Bearer {admin}", "content-type": "application/json"}

            def http_one(i: int) -> None:
                conn.request("GET", f"/v1/features/user/{one[i]}?as_of={as_of}", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or len(json.loads(body)["features"]) != len(names):
                    raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")

            def http_batch(i: int) -> None:
                payload = json.dumps({"ids": hundred[i], "as_of": as_of})
                conn.request("POST", "/v1/features/user", body=payload, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or len(json.loads(body)["rows"]) != 100:
                    raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")

            with slowlog(client) as slow_http:
                ms = timed({"http_1": http_one}, reads, warmup=50)
                ms |= timed({"http_100": http_batch}, max(reads // 10, 50))
            report_slow("HTTP reads", slow_http)
            for name, values in ms.items():
                res[name] = summary(name, values)
            conn.close()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # Slow calls of the ack path and the workers (both runs: the plain one is the cheaper).
    ingest_calls = slow_ingest.get("fcall ingest_partition", []) + slow_ingest.get(
        "fcall apply_blocks", []
    )
    read_calls = feature_calls(slow_read, slow_http)
    load_end = os.getloadavg()
    print(f"load average {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at the end")
    out |= {
        "p50_ms_1": res["read_1"]["p50"], "p99_ms_1": res["read_1"]["p99"],
        "p50_ms_100": res["read_100"]["p50"], "p99_ms_100": res["read_100"]["p99"],
        "cpu_p50_ms_1": res["read_1"]["cpu_p50"], "cpu_p50_ms_100": res["read_100"]["cpu_p50"],
        "bytes_per_user": round(memory["user"][1]), "max_bytes_per_user": memory["user"][2],
        "bytes_per_item": round(memory["item"][1]),
        "bytes_per_user_category": round(memory["user_category"][1]),
        "max_call_ms": round(max(ingest_calls + read_calls, default=0.0), 3),
        "max_read_call_ms": round(max(read_calls, default=0.0), 3),
        "max_ingest_call_ms": round(max(ingest_calls, default=0.0), 3),
        "max_ack_call_ms": round(max(slow_ingest.get("fcall ingest_partition", [0.0])), 3),
        "max_worker_call_ms": round(max(slow_ingest.get("fcall apply_blocks", [0.0])), 3),
        "p50_ingest_call_ms": round(upper_percentile(ingest_calls, counting.calls, 50), 3),
        "p99_ingest_call_ms": round(upper_percentile(ingest_calls, counting.calls, 99), 3),
        "p999_ingest_call_ms": round(upper_percentile(ingest_calls, counting.calls, 99.9), 3),
        "ingest_calls": counting.calls,
        "server_cpu_ms_per_ingest_call": round(cpu_per_call_ms, 3),
        "http_p50_ms_1": res["http_1"]["p50"], "http_p99_ms_1": res["http_1"]["p99"],
        "http_p50_ms_100": res["http_100"]["p50"], "http_p99_ms_100": res["http_100"]["p99"],
        "fcall_p50_ms_1": res["fcall_1"]["p50"], "fcall_p99_ms_1": res["fcall_1"]["p99"],
        "fcall_p50_ms_100": res["fcall_100"]["p50"], "fcall_p99_ms_100": res["fcall_100"]["p99"],
        **feast_extra,
        "features": len(names), "events": len(events), "users": len(users),
        "ingest_events_per_s_plain": round(len(events) / plain_s),
        "ingest_events_per_s_with_features": round(len(events) / feat_s),
        "hook_us_per_event": round(hook_us), "quick": args.quick,
        "load_avg_start": round(load_start[0], 2), "load_avg_end": round(load_end[0], 2),
    }  # fmt: skip
    if peer is not None:
        out |= {f"feast_{k}": res[f"feast_{n}"][k2] for n in ("1", "100")
                for k, k2 in ((f"p50_ms_{n}", "p50"), (f"p99_ms_{n}", "p99"))}  # fmt: skip
    emit_json(out)


if __name__ == "__main__":
    main()
