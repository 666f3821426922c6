"""Redis Cluster balance: per-master shares of server time and memory, ingest events/s, recommend
latency, on a local 3-master cluster (plus its search node) started by this script.

Run from the repo root: `.venv/bin/python -m bench.cluster [--quick] [--events N]`.

1. Start a local cluster (`app/redis/cluster.py`: 3 masters, no replicas, AOF everysec) and the
   search node; load the Functions library on every primary and on the search node.
2. Load the real Online Retail catalog into the search node, then replay the first --events
   purchase events (default 60,000; --quick 15,000) through the engine assembly (the HTTP
   API's path) with a `RedisCluster` client, and train the item model on them.
3. Per master: CPU time of the main thread during the replay (INFO cpu; INFO commandstats
   cannot be summed: FCALL's time includes the commands its Function calls, counted again
   under their names; its top commands are listed for diagnosis) and INFO memory
   (used_memory minus the empty node's), as shares of the total; the key families each master
   holds (`family`: `u:{*}:*:session`, `g:{g}:rec:model`, ...), and the parts it owns.
4. `Recommender.serve` for random replayed shoppers (--requests, default 2,000): p50/p99 ms.
5. Baseline, same run: the same catalog, replay, training and requests on one embedded server
   (`single_*`); `cluster_cost_ratio` = cluster CPU usec per event (all masters) / single-server.

The last line is one JSON object. Goal (issue 15): every master's share of time and memory
within 1/3 +- 5 points, and no master holding a key family the others lack. On this 2-core
machine the figures measure shares and per-event server cost; throughput for more masters is a
projection from them (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

import redis

from app.catalog.index import CatalogKeys, create_index, load_catalog_config
from app.catalog.vectorizers import get_vectorizer
from app.core.settings import ROOT, EngineConfig
from app.recs.config import load_rec_config
from app.recs.keys import RecKeys
from app.recs.lists import RecRequest
from app.recs.recommender import Recommender
from app.redis import cluster, embedded
from app.redis import library as functions
from app.redis.connect import connect, node_name, node_of, primaries
from bench._common import emit_json, percentile
from loaders import online_retail
from loaders.catalog import load_online_retail
from loaders.replay import replay
from loaders.train import train_online_retail

DATA = ROOT / "data" / "online-retail" / "online-retail-2010-12_2011-09.csv.gz"
PREFIX = "bc:"


def server_cpu_s(node: redis.Redis) -> float:
    """CPU seconds of the node's main thread (where commands and Functions run). INFO
    commandstats cannot be summed instead: a Function's FCALL time includes the commands it
    calls, and those are counted again under their own names."""
    cpu: dict[str, Any] = node.info("cpu")
    return float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


def top_commands(node: redis.Redis, n: int = 6) -> dict[str, float]:
    """The node's costliest commands since CONFIG RESETSTAT (usec; FCALL includes the commands
    its Functions call, which are listed again under their names)."""
    stats: dict[str, Any] = node.info("commandstats")
    usec = {k.removeprefix("cmdstat_"): float(v.get("usec", 0)) for k, v in stats.items()}
    return dict(sorted(usec.items(), key=lambda kv: -kv[1])[:n])


def parts_per_master(client: redis.Redis, engine: EngineConfig) -> dict[str, dict[str, int]]:
    """How many partitions, aggregate shards and popularity parts each master owns."""
    keys = RecKeys(PREFIX, engine.partitions, engine.agg_shards)
    cluster = cast(Any, client)
    out: dict[str, dict[str, int]] = {}
    families_of = {
        "partitions": [keys.log_of(p) for p in range(engine.partitions)],
        "agg_shards": [keys.applied(s) for s in range(engine.agg_shards)],
        "hot_parts": keys.hot_shards(load_rec_config(key_prefix=PREFIX).hot_shards),
    }
    for name, part_keys in families_of.items():
        for key in part_keys:
            node = cluster.get_node_from_key(key).name
            out.setdefault(node, {}).setdefault(name, 0)
            out[node][name] += 1
    return out


def used_memory(node: redis.Redis) -> int:
    return int(node.info("memory")["used_memory"])


SPREAD_TAG_RE = re.compile(r"^[a-z]+\d+\.\d+$")  # a part's tag: `p17.41`, `a3.7`, `g2.5`
ENTITY_FAMILIES = ("u", "i")  # `u:{<part>}:<user>:...`, `i:{<shard>}:<item>:...`
# Families that live in one slot on purpose (docs/cluster.md, "Hot slots"): the trainer's model
# pointer and lists, experiment definitions and serving counters (`{g}`: read once per refresh
# per process), the deployment layout and the workers' freshness status (`meta:{meta}`), a
# loader's resume checkpoint (one SET per batch).
ONE_SLOT_BY_DESIGN = re.compile(r"^(g:\{g\}:|meta:\{\*\}:|loader:)")


def family(name: str) -> str:
    """A key's family: hash tag and entity id (user, item) replaced by `*`, hour buckets and
    model versions by placeholders. `i:{a3.7}:10002:co:b` -> `i:{*}:*:co:b`,
    `u:{p5.1}:anon:x7:session` -> `u:{*}:*:session`, `i:{85123A}:nn:v123` -> `i:{*}:nn:<model>`.
    `{g}` stays: it is the one global tag, a family the other masters cannot have."""
    head, sep, rest = name.partition(":")
    m = re.match(r"\{([^}]*)\}(:|$)", rest)
    if not sep or m is None or m.group(1) == "g":
        fam = name
    else:
        tail = rest[m.end() :]
        if SPREAD_TAG_RE.match(m.group(1)) and head in ENTITY_FAMILIES and tail:
            entity, _, after = tail.partition(":")
            if entity == "anon":  # anonymous visitors: `anon:<id>`
                after = after.partition(":")[2]
            tail = "*" + (":" + after if after else "")
        fam = f"{head}:{{*}}" + (":" + tail if tail else "")
    fam = re.sub(r":\d{10,}", ":<t>", fam)  # hour buckets
    return re.sub(r":v\d{8,}(:[a-z_]+)?", ":<model>", fam)  # model versions (+ category)


def families(node: redis.Redis) -> Counter[str]:
    """Key families of this run on one node (`family`), with their key counts."""
    out: Counter[str] = Counter()
    for key in node.scan_iter(match=PREFIX + "*", count=2000):
        out[family(key.decode()[len(PREFIX) :])] += 1
    return out


def shares(values: Sequence[float]) -> list[float]:
    total = sum(values) or 1.0
    return [round(v / total, 4) for v in values]


def measure_recommend(client: redis.Redis, catalog: redis.Redis, engine: EngineConfig,
                      users: list[str], n: int) -> dict[str, float]:  # fmt: skip
    rec = Recommender(client, engine, load_rec_config(key_prefix=PREFIX), catalog_client=catalog)
    rec.refresh()
    rng = random.Random(7)
    took, fallbacks = [], 0
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            resp = rec.serve(RecRequest(rng.choice(users), "home", None, 10))
            took.append((time.perf_counter() - t0) * 1000)
            fallbacks += bool(resp.fallback)
    finally:
        rec.close()
    return {"recommend_p50_ms": round(percentile(took, 50), 3),
            "recommend_p99_ms": round(percentile(took, 99), 3),
            "recommend_fallbacks": fallbacks, "recommend_requests": n}  # fmt: skip


def global_slot_load(
    client: redis.Redis, catalog: redis.Redis, engine: EngineConfig, users: list[str], n: int
) -> dict[str, float]:
    """Commands that reach the one global slot `{g}` (model pointer and lists, experiment
    definitions, serving counters), per served request and per background refresh (what
    every app process runs once a second): counted with MONITOR on that slot's master."""
    keys = RecKeys(PREFIX, engine.partitions, engine.agg_shards)
    node = node_of(client, keys.model_pointer)
    rec = Recommender(client, engine, load_rec_config(key_prefix=PREFIX), catalog_client=catalog)
    rec.refresh()
    rng = random.Random(11)
    marks = ("bench-serve-done", "bench-refresh-done")
    refreshes = 10
    try:
        with node.monitor() as monitor:  # type: ignore[no-untyped-call]
            for _ in range(n):
                rec.serve(RecRequest(rng.choice(users), "home", None, 10))
            node.echo(marks[0])
            for _ in range(refreshes):
                rec.refresh()
            node.echo(marks[1])
            counts = [0, 0]
            phase = 0
            while phase < 2:
                command = str(monitor.next_command()["command"])
                if command.startswith("ECHO") and marks[phase] in command:
                    phase += 1
                elif "{g}:" in command:
                    counts[phase] += 1
    finally:
        rec.close()
    return {"g_slot_commands_per_request": round(counts[0] / n, 3),
            "g_slot_commands_per_refresh": round(counts[1] / refreshes, 2)}  # fmt: skip


def data_skew(client: redis.Redis, engine: EngineConfig, n_events: int) -> dict[str, Any]:
    """Each master's share of the replayed events by the shopper's partition and by the item's
    aggregate shard: what the data alone puts on each master (a few shoppers and items carry
    much of the file), next to which the measured time shares are read."""
    keys = engine.keys()
    cluster = cast(Any, client)
    scan = online_retail.scan(DATA)
    events, _skipped = online_retail.purchase_events(DATA, catalog=scan.catalog)
    shoppers: Counter[str] = Counter()
    items: Counter[str] = Counter()
    for _, ev in zip(range(n_events), events, strict=False):
        shoppers[cluster.get_node_from_key(keys.log_of(keys.partition(ev["user_id"]))).name] += 1
        for line in ev.get("items") or [{"item_id": ev["item_id"]}]:
            shard_key = keys.applied(keys.shard(line["item_id"]))
            items[cluster.get_node_from_key(shard_key).name] += 1
    names = sorted(set(shoppers) | set(items))
    return {
        "shopper_events_share": dict(zip(names, shares([shoppers[n] for n in names]), strict=True)),
        "item_lines_share": dict(zip(names, shares([items[n] for n in names]), strict=True)),
    }


def load_catalog(catalog: redis.Redis) -> None:
    ccfg = load_catalog_config()
    ckeys = CatalogKeys(PREFIX)
    vectorizer = get_vectorizer(ccfg.vectorizer)
    create_index(catalog, ckeys, vectorizer)
    load_online_retail(catalog, ccfg.__class__(key_prefix=PREFIX), ckeys, DATA, vectorizer,
                       progress=False)  # fmt: skip


def single_server(
    engine: EngineConfig, n_events: int, n_requests: int, users: list[str]
) -> dict[str, float]:
    """The same replay, training and requests on one embedded server: the baseline."""
    server = embedded.temporary().start()
    try:
        with redis.Redis.from_url(server.url) as client:
            functions.load(client)
            load_catalog(client)
            cpu0 = server_cpu_s(client)
            t0 = time.perf_counter()
            report = replay(client, engine, DATA, limit=n_events, progress=False)
            took = time.perf_counter() - t0 - report.scan_seconds
            usec = (server_cpu_s(client) - cpu0) * 1e6
            train_online_retail(client, engine, DATA, content=False)
            recs = measure_recommend(client, client, engine, users, n_requests) if users else {}
        per_event = usec / max(report.accepted, 1)
        return {"single_events_per_s": round(report.accepted / took, 1),
                "single_server_usec_per_event": round(per_event, 2),
                **{f"single_{k}": v for k, v in recs.items()}}  # fmt: skip
    finally:
        server.stop()


def run(engine: EngineConfig, n_events: int, n_requests: int) -> dict[str, Any]:
    cl = cluster.temporary(3).start()
    try:
        client = connect(cl.url)
        catalog = redis.Redis.from_url(cl.catalog_url)
        functions.load(client)
        functions.load(catalog)
        nodes = primaries(client)
        names = [node_name(n) for n in nodes]
        empty_mem = [used_memory(n) for n in nodes]

        load_catalog(catalog)
        for node in nodes:
            node.config_resetstat()
        cpu0 = [server_cpu_s(n) for n in nodes]
        t0 = time.perf_counter()
        report = replay(client, engine, DATA, limit=n_events, progress=False)
        replay_s = time.perf_counter() - t0 - report.scan_seconds
        usec = [(server_cpu_s(n) - c0) * 1e6 for n, c0 in zip(nodes, cpu0, strict=True)]
        commands = {name: top_commands(n) for name, n in zip(names, nodes, strict=True)}
        mem = [used_memory(n) - e for n, e in zip(nodes, empty_mem, strict=True)]

        train_online_retail(client, engine, DATA, content=False, catalog_client=catalog)
        fams = [families(n) for n in nodes]
        every = set.intersection(*(set(f) for f in fams))
        only_some = sorted(set.union(*(set(f) for f in fams)) - every)
        by_design = [f for f in only_some if ONE_SLOT_BY_DESIGN.match(f)]
        only_some = [f for f in only_some if f not in by_design]
        users = _replayed_users(nodes)
        if not users:
            raise SystemExit("no replayed shopper has a history: nothing to recommend for")
        recs = measure_recommend(client, catalog, engine, users, n_requests) if users else {}
        if users:
            recs.update(global_slot_load(client, catalog, engine, users, min(n_requests, 300)))
        return {
            "bench": "cluster", "masters": 3, "events": report.accepted,
            "ingest_events_per_s": round(report.accepted / replay_s, 1),
            "server_usec_per_event": round(sum(usec) / max(report.accepted, 1), 2),
            "time_share": dict(zip(names, shares(usec), strict=True)),
            "memory_share": dict(zip(names, shares(mem), strict=True)),
            "max_time_share_off_third_pts": round(max(abs(s - 1 / 3) for s in shares(usec))
                                                   * 100, 1),
            "max_memory_share_off_third_pts": round(max(abs(s - 1 / 3) for s in shares(mem))
                                                     * 100, 1),
            "parts_per_master": parts_per_master(client, engine),
            "data_skew": data_skew(client, engine, n_events),
            "top_commands_usec": commands,
            "families_not_on_every_master": {
                f: [names[i] for i, fam in enumerate(fams) if f in fam] for f in only_some
            },
            "one_slot_families_by_design": by_design,
            **recs, "users": users,
        }  # fmt: skip
    finally:
        cl.stop()


def _replayed_users(nodes: list[redis.Redis]) -> list[str]:
    """Shopper ids with a live history (`u:{<partition>}:<user>:hist`), read from the masters
    (up to 2,000)."""
    out: list[str] = []
    for node in nodes:
        for key in node.scan_iter(match=PREFIX + "u:{*}:*:hist", count=2000):
            user = key.decode().split("}:", 1)[1].removesuffix(":hist")
            if user.startswith("c"):  # the replay's customers (loaders/online_retail.py)
                out.append(user)
            if len(out) >= 2000:
                return out
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="15,000 events, 500 requests (CI)")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--agg-shards", type=int, default=None,
                        help="aggregate shards (default: the engine's)")  # fmt: skip
    args = parser.parse_args(argv)
    engine = EngineConfig(key_prefix=PREFIX)
    if args.agg_shards:
        engine = replace(engine, agg_shards=args.agg_shards)
    n_events = args.events or (15_000 if args.quick else 60_000)
    n_requests = args.requests or (500 if args.quick else 2_000)
    result = run(engine, n_events, n_requests)
    result["agg_shards"] = engine.agg_shards
    base = single_server(engine, n_events, n_requests, result.pop("users"))
    result.update(base)
    result["cluster_cost_ratio"] = round(
        result["server_usec_per_event"] / base["single_server_usec_per_event"], 3
    )
    emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
