"""Aggregate workers: derive every global aggregate from the partition logs, exactly once.

    python -m app.cli workers [--worker 0 --of 1]

A worker owns a fixed set of partitions (`partition % of == worker`), so each partition log
has one reader at a time, in order. Per step it reads up to `count` (100) new entries of each
owned partition through the consumer group `agg` (on start-up, its pending entries first:
those a killed predecessor read but never acknowledged), cuts each partition's entries into
blocks of at most `agg_entries_per_block` entries (`first_id..last_id`), groups the blocks
into rounds of at most `agg_events_per_call` events (one block per partition per round), and
sends per round each target slot ONE `apply_blocks` call (all rounds in one pipeline), so
that no Function call holds the server much longer than ~1 ms (a Function blocks the server
while it runs):

- per aggregate shard `{a<n>}`: trending Top-K, Count-Min Sketch, item series and
  co-occurrence (kind `aggregates`, summed per key: one TOPK.INCRBY / CMS.INCRBY / TS.MADD per
  key and call), and item features (kind `features`);
- the recommender's popularity `{g}` (`rec_hot`), each shopper partition's item history
  (`rec_track`), each experiment's attribution (`exp_track`): the hooks given by the engine.

Each slot keeps per (kind, partition) the last log id it applied and skips what it already
has, in the same atomic call as the effects: a worker killed at any moment and restarted
double-counts nothing and loses nothing. Entries are acknowledged (XACK) after every call of
the step succeeded. Freshness (acknowledgement to applied, from the log id's server time) is
recorded per event in the metrics registry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from app.core.errors import from_redis_error
from app.core.events import Event, event_from_payload
from app.core.keys import Keys, hour_start
from app.core.settings import EngineConfig
from app.core.units import HOUR_MS
from app.ingest.log import GroupLag, Pair, group_lag, id_tuple, parse_pairs
from app.redis import calls

log = logging.getLogger("retail.ingest.aggregates")
GROUP = "agg"
COUNTED_TYPES = frozenset({"view", "click", "add_to_cart", "purchase"})
TRENDING_TYPES = ("view", "click", "add_to_cart", "purchase", "search")
MAX_BUCKETS_DROPPED = 240
STATUS_TTL_S = 86_400
STATUS_FRESH_MS = 60_000  # a worker's published freshness counts for this long


@dataclass(frozen=True)
class LogBlock:
    """One partition's entries read in one step, in log order."""

    partition: int
    first_id: str
    last_id: str
    events: list[Event]
    pairs: list[Pair]  # co-occurrence pairs of these events
    ack_ms: list[int]  # per event: server time of its acknowledgement (log id ms)
    ids: list[bytes]  # every entry id read (acknowledged after the step)


# A hook turns the step's blocks into `apply_blocks` calls for its own slots.
BlockHook = Callable[[Sequence[LogBlock]], list[calls.BlockCall]]
FreshnessSink = Callable[[Sequence[float]], object]


def search_member(query: str) -> str:
    """The trending member of a search: the normalised query."""
    return " ".join(query.lower().split())


def aggregate_lists(
    keys: Keys, table: calls.KeyTable, block: LogBlock, shard: int
) -> list[calls.BlockList] | None:
    """The block's `ingest_aggregates` events and pairs for one shard (None: nothing there).
    Layout: lua/20_ingest_aggregates.lua (k_log is 0: the log is already written)."""
    body: list[Any] = []
    n_events = 0
    for ev in block.events:
        if ev.type == "search":
            q = search_member(ev.query)
            if not q or keys.shard(q) != shard:
                continue
            body += [ev.event_id, ev.type, ev.identity, ev.ts, "", 0,
                     table.ref(keys.watermark(shard)), 1, q, 1,
                     table.ref(keys.trend(shard, "search", ev.ts)),
                     table.ref(keys.cms(shard, "search")), 0, 0]  # fmt: skip
            n_events += 1
            continue
        if ev.type not in COUNTED_TYPES:
            continue
        lines = [ln for ln in ev.lines if keys.shard(ln.item_id) == shard]
        if not lines:
            continue
        n_events += 1
        body += [ev.event_id, ev.type, ev.identity, ev.ts, "", 0,
                 table.ref(keys.watermark(shard)), len(lines)]  # fmt: skip
        trend = table.ref(keys.trend(shard, ev.type, ev.ts))
        cms = table.ref(keys.cms(shard, ev.type))
        for ln in lines:
            raw, hourly = keys.item_series(ln.item_id, ev.type)
            body += [ln.item_id, ln.qty, trend, cms, table.ref(raw), table.ref(hourly)]
    pair_args: list[Any] = []
    n_pairs = 0
    for a, b, kind, weight in block.pairs:
        for src, dst in ((a, b), (b, a)):
            if keys.shard(src) == shard:
                pair_args += [table.ref(keys.co(src, kind)), dst, weight]
                n_pairs += 1
    if n_events == 0 and n_pairs == 0:
        return None
    return [(n_events, body), (n_pairs, pair_args)]


def aggregate_calls(
    cfg: EngineConfig, keys: Keys, blocks: Sequence[LogBlock]
) -> list[calls.BlockCall]:
    """One `apply_blocks` call of kind `aggregates` per shard the blocks touch."""
    header: list[Any] = [
        cfg.log_maxlen, cfg.trend_ttl_s, cfg.item_ttl_s, cfg.co_cap, cfg.raw_retention_ms,
        cfg.hour_retention_ms, cfg.topk, cfg.cms_width, cfg.trend_window_h * HOUR_MS,
    ]  # fmt: skip
    out: list[calls.BlockCall] = []
    for shard in range(keys.agg_shards):
        table = calls.KeyTable()
        shard_blocks: list[calls.Block] = []
        for block in blocks:
            lists = aggregate_lists(keys, table, block, shard)
            if lists is not None:
                shard_blocks.append(
                    calls.Block(block.partition, block.first_id, block.last_id, lists)
                )
        if shard_blocks:
            out.append(
                calls.BlockCall(keys.applied(shard), "aggregates", header, table.keys, shard_blocks)
            )
    return out


def parse_entries(partition: int, entries: Sequence[Any]) -> LogBlock | None:
    events: list[Event] = []
    pairs: list[Pair] = []
    ack_ms: list[int] = []
    ids: list[bytes] = []
    for entry_id, fields in entries:
        ids.append(entry_id)
        if not fields:  # trimmed by MAXLEN before it was read: counted by the lag alert
            continue
        events.append(event_from_payload(json.loads(fields[b"data"])))
        pairs += parse_pairs(fields.get(b"pairs"))
        ack_ms.append(id_tuple(entry_id)[0])
    if not ids:
        return None
    first, last = ids[0], ids[-1]
    return LogBlock(partition, calls.text(first), calls.text(last), events, pairs, ack_ms, ids)


def block_rounds(blocks: Sequence[LogBlock], budget: int) -> list[list[LogBlock]]:
    """The step's blocks in rounds, each planned as its own `apply_blocks` calls (one per
    target slot): a round holds at most one block per partition (a call takes a partition
    once) and, past its first block, at most `budget` events, so no call carries more (the
    `{g}` popularity call sees every event of its round). A partition's blocks stay in log
    order, in consecutive rounds."""
    queues: dict[int, deque[LogBlock]] = {}
    for block in blocks:
        queues.setdefault(block.partition, deque()).append(block)
    rounds: list[list[LogBlock]] = []
    while queues:
        rnd: list[LogBlock] = []
        used = 0
        for partition in list(queues):
            queue = queues[partition]
            if rnd and used + len(queue[0].events) > budget:
                continue
            block = queue.popleft()
            rnd.append(block)
            used += len(block.events)
            if not queue:
                del queues[partition]
        rounds.append(rnd)
    return rounds


class FreshnessWindow:
    """The newest `size` freshness samples (ms from acknowledgement to applied) of a worker,
    published to Redis at most every `every_s` so /metrics, /health and the dashboard of
    any process can read them (`ingest_status`)."""

    def __init__(self, size: int = 10_000, every_s: float = 1.0) -> None:
        self.samples: deque[float] = deque(maxlen=size)
        self.every_s = every_s
        self._published = 0.0

    def __call__(self, values: Sequence[float]) -> None:
        self.samples.extend(values)

    def quantile(self, q: float) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def publish(self, client: redis.Redis, keys: Keys, name: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.samples or (not force and now - self._published < self.every_s):
            return
        self._published = now
        p50, p99 = self.quantile(0.5), self.quantile(0.99)
        client.hset(keys.agg_status, mapping={
            f"{name}:p50_ms": f"{p50:.1f}", f"{name}:p99_ms": f"{p99:.1f}",
            f"{name}:at_ms": int(time.time() * 1000), f"{name}:samples": len(self.samples),
        })  # fmt: skip
        client.expire(keys.agg_status, STATUS_TTL_S)


@dataclass
class WorkerStats:
    steps: int = 0
    entries: int = 0
    calls: int = 0
    skipped_blocks: int = 0
    freshness_ms: list[float] = field(default_factory=list)


class AggregateWorker:
    def __init__(
        self,
        client: redis.Redis,
        cfg: EngineConfig,
        *,
        hooks: Sequence[BlockHook] = (),
        worker: int = 0,
        of: int = 1,
        count: int = 100,
        group: str = GROUP,
        freshness: FreshnessSink | None = None,
        lease_ms: int = 3000,
    ) -> None:
        if not 0 <= worker < of:
            raise ValueError("worker must be in [0, of)")
        self.client = client
        self.cfg = cfg
        self.keys = cfg.keys()
        self.hooks = list(hooks)
        self.assigned = [p for p in range(self.keys.partitions) if p % of == worker]
        self.partitions: list[int] = []  # the assigned partitions whose lease this process holds
        self.lease_ms = lease_ms
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease_at = 0.0
        self.count = count
        self.group = group
        self.consumer = f"{group}-{worker}-of-{of}"  # its name in the freshness status
        self.freshness = freshness
        self.window = FreshnessWindow()
        self.stats = WorkerStats()
        self._pending_done = False
        self._read_new = False  # whether the last read asked for new entries (not pending)
        self._groups_ready = False

    def renew_leases(self) -> None:
        """Hold a lease on each assigned partition (SET NX PX, renewed at a third of its
        life): one reader per partition log at a time, whatever runs next to this process
        (a second worker with the same assignment, a loader's drain). A killed worker's
        partitions are free again after `lease_ms`."""
        now = time.monotonic()
        if self.partitions and now - self._lease_at < self.lease_ms / 3000:
            return
        pipe = self.client.pipeline(transaction=False)
        for p in self.assigned:
            pipe.set(self.keys.part(p, "agg_lease"), self.token, nx=True, px=self.lease_ms)
            pipe.get(self.keys.part(p, "agg_lease"))
        replies = pipe.execute()
        held = [
            p
            for i, p in enumerate(self.assigned)
            if replies[2 * i + 1] is not None and calls.text(replies[2 * i + 1]) == self.token
        ]
        pipe = self.client.pipeline(transaction=False)
        for p in held:
            pipe.pexpire(self.keys.part(p, "agg_lease"), self.lease_ms)
        pipe.execute()
        if set(held) != set(self.partitions):
            self._pending_done = False  # newly held partitions: their pending entries first
        self.partitions = held
        self._lease_at = now

    def release_leases(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for p in self.partitions:
            pipe.delete(self.keys.part(p, "agg_lease"))
        pipe.execute()
        self.partitions = []

    def ensure_groups(self) -> None:
        """The consumer group on every owned log, from the log's start (idempotent)."""
        pipe = self.client.pipeline(transaction=False)
        for p in self.assigned:
            pipe.xgroup_create(self.keys.log_of(p), self.group, id="0", mkstream=True)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply
        self._groups_ready = True

    def read(self) -> list[LogBlock]:
        """Pending entries first (once, after a restart), then new ones."""
        if not self._groups_ready:
            self.ensure_groups()
        self.renew_leases()
        if not self.partitions:
            self._pending_done = True
            return []
        start = "0" if not self._pending_done else ">"
        self._read_new = start == ">"
        pipe = self.client.pipeline(transaction=False)
        for p in self.partitions:
            # One consumer name per partition, whoever holds its lease: the next holder (a
            # restart, another worker count, a loader's drain) re-reads what a dead one left
            # pending.
            pipe.xreadgroup(self.group, f"{self.group}-p{p}", {self.keys.log_of(p): start},
                            count=self.count)  # fmt: skip
        blocks: list[LogBlock] = []
        size = self.cfg.agg_entries_per_block
        for p, reply in zip(self.partitions, pipe.execute(), strict=True):
            # Blocks of at most `size` entries, cut from the read's first entry: a re-read of
            # the same pending entries after a crash is cut at the same ids, so a slot's
            # applied mark always falls between two blocks (never inside one: ERR_OVERLAP).
            entries = _entries(reply)
            for i in range(0, len(entries), size):
                block = parse_entries(p, entries[i : i + size])
                if block is not None:
                    blocks.append(block)
        if not self._pending_done and not blocks:
            self._pending_done = True
        return blocks

    def plan(self, blocks: Sequence[LogBlock]) -> list[calls.BlockCall]:
        planned = aggregate_calls(self.cfg, self.keys, blocks)
        for hook in self.hooks:
            planned += hook(blocks)
        return planned

    def apply(self, blocks: Sequence[LogBlock]) -> int:
        planned = [
            call
            for rnd in block_rounds(blocks, self.cfg.agg_events_per_call)
            for call in self.plan(rnd)
        ]
        pipe = self.client.pipeline(transaction=False)
        for call in planned:
            calls.fcall(pipe, "apply_blocks", calls.apply_blocks_args(call))
        replies = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise from_redis_error(reply)
        for reply in replies:
            self.stats.skipped_blocks += int(reply[1])
        self._drop_for(planned, replies)
        pipe = self.client.pipeline(transaction=False)
        for block in blocks:
            pipe.xack(self.keys.log_of(block.partition), self.group, *block.ids)
        pipe.execute()
        now = time.time() * 1000
        fresh = [now - ms for block in blocks for ms in block.ack_ms]
        if fresh:
            self.window(fresh)
            self.window.publish(self.client, self.keys, self.consumer)
            if self.freshness is not None:
                self.freshness(fresh)
        self.stats.calls += len(planned)
        self.stats.entries += sum(len(b.ids) for b in blocks)
        return sum(len(b.ids) for b in blocks)

    def _drop_for(self, planned: Sequence[calls.BlockCall], replies: Sequence[Any]) -> None:
        shard_of = {self.keys.applied(s): s for s in range(self.keys.agg_shards)}
        for call, reply in zip(planned, replies, strict=True):
            if call.kind == "aggregates" and reply[2]:
                old_wm, new_wm = int(calls.text(reply[2][4])), int(calls.text(reply[2][5]))
                self._drop_stale_trend_buckets(shard_of[call.applied_key], old_wm, new_wm)

    def _drop_stale_trend_buckets(self, shard: int, old_wm: int, new_wm: int) -> None:
        """UNLINK hour buckets the advancing watermark pushed out of the trending window.

        They would expire anyway (trend_ttl_s), but a replay of months of history would keep
        thousands alive until then. Big jumps leave the skipped buckets to their TTL."""
        window = self.cfg.trend_window_h * HOUR_MS
        first, last = hour_start(max(old_wm, 1) - window), hour_start(new_wm - window)
        if old_wm == 0 or last <= first or (last - first) // HOUR_MS > MAX_BUCKETS_DROPPED:
            return
        stale = [
            self.keys.trend(shard, etype, hour)
            for hour in range(first, last, HOUR_MS)
            for etype in TRENDING_TYPES
        ]
        self.client.unlink(*stale)

    def step(self) -> int:
        """Read and apply once; the number of log entries handled."""
        blocks = self.read()
        self.stats.steps += 1
        if not blocks:
            return 0
        return self.apply(blocks)

    def drain(self, max_steps: int = 100_000) -> int:
        """Apply everything logged so far (tests, loaders, benchmarks), then give the
        partitions' leases back so a worker elsewhere can take them at once."""
        total = 0
        try:
            for _ in range(max_steps):
                n = self.step()
                total += n
                if n == 0 and (self._read_new or not self.partitions):
                    break
        finally:
            self.release_leases()
        return total

    def run(self, stop: threading.Event, *, idle_s: float = 0.05) -> None:
        """Until `stop` is set: step; sleep `idle_s` when there was nothing to do. Errors are
        logged and retried (the entries stay pending and are read again)."""
        while not stop.is_set():
            try:
                if self.step() == 0:
                    stop.wait(idle_s)
            except (redis.RedisError, OSError) as exc:
                log.error("aggregate step failed (retrying): %s", exc)
                self._pending_done = False
                stop.wait(1.0)
        with contextlib.suppress(redis.RedisError, OSError):
            self.release_leases()


@dataclass(frozen=True)
class IngestStatus:
    freshness_p50_ms: float | None  # worst published by a live worker (last minute)
    freshness_p99_ms: float | None
    lag: GroupLag
    lag_limit: int  # an alert when a partition's lag passes it (half the log cap)
    alerts: list[str]
    other_lags: dict[str, GroupLag] = field(default_factory=dict)  # the `other_groups`


@dataclass(frozen=True)
class LogReader:
    """Another consumer group on the partition logs whose lag is worth an alert (e.g. the
    recommendation list workers, group `recs`): who they are and how to catch up."""

    group: str
    who: str
    remedy: str


def ingest_status(
    client: redis.Redis, cfg: EngineConfig, other_groups: Sequence[LogReader] = ()
) -> IngestStatus:
    """Workers' freshness and lag (the aggregate workers' and `other_groups`'), for /health,
    /metrics and the dashboard. A group that does not exist (no such worker deployed) has no
    lag and no alert."""
    keys = cfg.keys()
    raw = {calls.text(k): calls.text(v) for k, v in client.hgetall(keys.agg_status).items()}
    now = time.time() * 1000
    p50s: list[float] = []
    p99s: list[float] = []
    for name, value in raw.items():
        if name.endswith(":at_ms") and now - int(value) <= STATUS_FRESH_MS:
            worker = name[: -len(":at_ms")]
            p50s.append(float(raw.get(f"{worker}:p50_ms", "nan")))
            p99s.append(float(raw.get(f"{worker}:p99_ms", "nan")))
    limit = max(1, cfg.log_maxlen // 2)
    readers = [LogReader(GROUP, "aggregate workers", "start more workers "
                         "(`python -m app.cli workers`)"), *other_groups]  # fmt: skip
    lags = {r.group: group_lag(client, keys, r.group) for r in readers}
    alerts = [
        f"{r.who} trail a partition log by {lags[r.group].max_lag:,} entries (limit {limit:,}, "
        f"log cap {cfg.log_maxlen:,}): {r.remedy} before entries are trimmed unread"
        for r in readers
        if lags[r.group].max_lag > limit
    ]
    others = {g: lag for g, lag in lags.items() if g != GROUP}
    return IngestStatus(max(p50s) if p50s else None, max(p99s) if p99s else None, lags[GROUP],
                        limit, alerts, others)  # fmt: skip


def _entries(reply: Any) -> list[Any]:
    """The entries of a one-stream XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values()))[0] if reply else [])
    return list(reply[0][1])


def drain_all(workers: Iterable[AggregateWorker]) -> int:
    return sum(w.drain() for w in workers)
