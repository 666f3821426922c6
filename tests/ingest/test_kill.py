"""Kill tests of the log-first design (real Redis Stack, real SIGKILLs).

1. The acknowledging process killed at random points inside its batches, 20 times, each
   trial's batches retried: every event is in its partition log exactly once and its shopper
   effects are there exactly once.
2. The aggregate worker killed at random points, 20 times, restarted each time (its pending
   entries re-read): every aggregate equals a recomputation from the logs.
3. Redis killed right after an acknowledgement (tests/ingest/test_durability.py).

1 and 2 run again on the local 3-master cluster (marker `cluster`) with fewer kills (6): there
each partition's call and each slot's `apply_blocks` call goes to its own master, so a kill
lands between calls to different masters; the single-server runs keep the 20 kills that
explore the timing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import redis

from app.core.events import event_from_payload
from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.engine import build_engine
from app.ingest.aggregates import GROUP
from app.ingest.log import group_lag, log_length, merged_log, parse_pairs
from app.redis.cluster import LocalCluster
from app.redis.connect import connect
from tests.ingest import kill_child

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20
CLUSTER_KILLS = 6
LEASE_MS = 300


def spawn(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ingest.kill_child", *args], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        _out, err = proc.communicate()  # reaped, pipes closed, whatever went wrong
        raise AssertionError(f"the child did not start: {line!r} {err[-2000:]}")
    return proc


def kill(proc: subprocess.Popen[str], delay_s: float) -> bool:
    """SIGKILL after `delay_s`; True when the process was still working."""
    time.sleep(delay_s)
    alive = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()  # reaps it and closes its pipes
    return alive


def logged_ids(client: redis.Redis, keys: Keys) -> Counter[str]:
    ids: Counter[str] = Counter()
    for _p, _id, fields in merged_log(client, keys):
        ids[event_from_payload(__import__("json").loads(fields[b"data"])).event_id] += 1
    return ids


def test_ack_process_killed_inside_batches_then_retried(
    redis_url: str, client: redis.Redis, prefix: str
) -> None:
    ack_process_killed(redis_url, client, prefix, KILLS)


@pytest.mark.cluster
def test_ack_process_killed_on_the_cluster(local_cluster: LocalCluster, prefix: str) -> None:
    with connect(local_cluster.url) as client:
        ack_process_killed(local_cluster.url, client, prefix, CLUSTER_KILLS)


def ack_process_killed(redis_url: str, client: redis.Redis, prefix: str, kills: int) -> None:
    cfg = kill_child.config(prefix)
    engine = build_engine(client, cfg)
    rng = random.Random(14)
    batches = 2
    killed_mid = 0
    for trial in range(kills):
        proc = spawn("ingest", redis_url, prefix, str(trial), str(batches))
        killed_mid += kill(proc, rng.uniform(0.0, 0.25))
        # The retry: the same batches again, as a client whose request failed would.
        for b in range(batches):
            engine.ingestor.ingest(kill_child.events_of(trial, b))
    sent = [ev for t in range(kills) for b in range(batches) for ev in kill_child.events_of(t, b)]
    assert killed_mid >= kills // 2  # most kills landed while it was still ingesting
    ids = logged_ids(client, engine.keys)
    assert len(ids) == len(sent) and set(ids) == {ev.event_id for ev in sent}
    assert max(ids.values()) == 1  # in the log exactly once
    # Shopper effects exactly once: per shopper, its session counters and its dedup set.
    per_user: Counter[str] = Counter(ev.identity for ev in sent)
    per_type: dict[str, Counter[str]] = defaultdict(Counter)
    for ev in sent:
        per_type[ev.identity][ev.type] += 1
    for user, n in per_user.items():
        doc = client.json().get(engine.keys.user(user, "session"))
        assert doc is not None
        assert sum(doc["counters"].values()) == n
        assert doc["counters"] == dict(per_type[user])
        assert client.zcard(engine.keys.user(user, "dedup")) == n
    # A third pass is all duplicates.
    again = engine.ingestor.ingest(kill_child.events_of(0, 0))
    assert again.accepted == 0


def expected_from_log(client: redis.Redis, keys: Keys) -> dict[str, Counter[tuple[str, ...]]]:
    """Every aggregate recomputed from the logs alone."""
    units: Counter[tuple[str, ...]] = Counter()  # (type, item) -> CMS / series sums
    trend: Counter[tuple[str, ...]] = Counter()  # (type, hour, item) -> Top-K count
    co: Counter[tuple[str, ...]] = Counter()  # (src, kind, dst) -> weight
    import json

    for _p, _id, fields in merged_log(client, keys):
        ev = event_from_payload(json.loads(fields[b"data"]))
        for ln in ev.lines:
            n = max(1, int(ln.qty)) if ev.type == "purchase" else 1
            units[(ev.type, ln.item_id)] += n
            trend[(ev.type, str(ev.ts - ev.ts % 3_600_000), ln.item_id)] += n
        for a, b, kind, w in parse_pairs(fields.get(b"pairs")):
            co[(a, kind, b)] += int(w)
            co[(b, kind, a)] += int(w)
    return {"units": units, "trend": trend, "co": co}


def test_worker_killed_at_random_points_aggregates_match_the_log(
    redis_url: str, client: redis.Redis, prefix: str
) -> None:
    worker_killed(redis_url, client, prefix, KILLS)


@pytest.mark.cluster
def test_worker_killed_on_the_cluster(local_cluster: LocalCluster, prefix: str) -> None:
    with connect(local_cluster.url) as client:
        worker_killed(local_cluster.url, client, prefix, CLUSTER_KILLS)


def worker_killed(redis_url: str, client: redis.Redis, prefix: str, kills: int) -> None:
    cfg: EngineConfig = kill_child.config(prefix)
    engine = build_engine(client, cfg)
    keys = engine.keys
    rng = random.Random(41)
    killed_mid = 0
    for trial in range(kills):
        for b in range(2):
            engine.ingestor.ingest(kill_child.events_of(100 + trial, b))
        proc = spawn("work", redis_url, prefix, str(LEASE_MS))
        kill(proc, rng.uniform(0.0, 0.2))
        lag = group_lag(client, keys, GROUP)
        killed_mid += lag.pending + lag.total_lag > 0  # work was left: read, or not yet
        time.sleep(LEASE_MS / 1000)  # the killed worker's leases lapse
    assert killed_mid >= kills // 2
    applied = engine.drain()  # the restart that finishes the work
    assert applied > 0  # the kills left work behind
    assert log_length(client, keys) == kills * 2 * kill_child.BATCH

    want = expected_from_log(client, keys)
    pipe = client.pipeline(transaction=False)
    units = sorted(want["units"])
    for etype, item in units:
        pipe.execute_command("CMS.QUERY", keys.cms(keys.shard(item), etype), item)
        pipe.execute_command("TS.RANGE", keys.item_series(item, etype)[0], "-", "+")
    replies = pipe.execute()
    for i, (etype, item) in enumerate(units):
        assert replies[2 * i] == [want["units"][(etype, item)]], (etype, item)
        series = sum(float(v) for _, v in replies[2 * i + 1])
        assert series == want["units"][(etype, item)], (etype, item)
    got_trend: Counter[tuple[str, ...]] = Counter()
    for etype, hour, _item in {k for k in want["trend"]}:
        for shard in range(keys.agg_shards):
            key = keys.trend(shard, etype, int(hour))
            if client.exists(key):
                listed = client.execute_command("TOPK.LIST", key, "WITHCOUNT")
                for j in range(0, len(listed), 2):
                    got_trend[(etype, hour, listed[j].decode())] = int(listed[j + 1])
    assert got_trend == want["trend"]
    got_co: Counter[tuple[str, ...]] = Counter()
    for src, kind, _dst in want["co"]:
        for dst, score in client.zrange(keys.co(src, kind), 0, -1, withscores=True):
            got_co[(src, kind, dst.decode())] = int(score)
    assert got_co == want["co"]


def test_a_dead_workers_pending_entries_are_taken_over_by_another_assignment(
    client: redis.Redis, prefix: str
) -> None:
    """Entries delivered to a worker that died before applying them are applied by the next
    lease holder of their partition, even one with another worker count."""
    cfg = kill_child.config(prefix)
    engine = build_engine(client, cfg)
    events = kill_child.events_of(7, 0, n=400)
    engine.ingestor.ingest(events)
    dead = engine.worker(0, 2)
    dead.lease_ms = 200
    assert dead.read() or dead.read()  # delivered (after its pending pass), never applied: dies
    time.sleep(0.3)  # its leases lapse
    assert engine.drain() == len(events)
    assert group_lag(client, engine.keys, GROUP).pending == 0
    want = expected_from_log(client, engine.keys)["units"]
    for (etype, item), n in want.items():
        key = engine.keys.cms(engine.keys.shard(item), etype)
        assert client.execute_command("CMS.QUERY", key, item) == [n]
