"""Aggregate workers: derive every global aggregate from the partition logs, exactly once.

    python -m app.cli workers [--worker 0 --of 1]

A worker owns a fixed set of partitions (`partition % of == worker`), so each partition log
has one reader at a time, in order. Per step it reads up to `count` new entries of each owned
partition through the consumer group `agg` (on start-up, its pending entries first: those a
killed predecessor read but never acknowledged), turns each partition's entries into a block
(`first_id..last_id`), and sends each target slot ONE `apply_blocks` call for all blocks:

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

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from app.core.errors import from_redis_error
from app.core.events import Event, event_from_payload
from app.core.keys import HOUR_MS, Keys, hour_start
from app.core.settings import EngineConfig
from app.ingest.log import Pair, id_tuple, parse_pairs
from app.redis import calls

log = logging.getLogger("retail.ingest.aggregates")
GROUP = "agg"
COUNTED_TYPES = frozenset({"view", "click", "add_to_cart", "purchase"})
TRENDING_TYPES = ("view", "click", "add_to_cart", "purchase", "search")
MAX_BUCKETS_DROPPED = 240


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
    return LogBlock(
        partition, calls.text(first), calls.text(last), events, pairs, ack_ms, ids
    )


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
        count: int = 2000,
        group: str = GROUP,
        freshness: FreshnessSink | None = None,
    ) -> None:
        if not 0 <= worker < of:
            raise ValueError("worker must be in [0, of)")
        self.client = client
        self.cfg = cfg
        self.keys = cfg.keys()
        self.hooks = list(hooks)
        self.partitions = [p for p in range(self.keys.partitions) if p % of == worker]
        self.count = count
        self.group = group
        self.consumer = f"{group}-{worker}-of-{of}"
        self.freshness = freshness
        self.stats = WorkerStats()
        self._pending_done = False
        self._groups_ready = False

    def ensure_groups(self) -> None:
        """The consumer group on every owned log, from the log's start (idempotent)."""
        pipe = self.client.pipeline(transaction=False)
        for p in self.partitions:
            pipe.xgroup_create(self.keys.log_of(p), self.group, id="0", mkstream=True)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply
        self._groups_ready = True

    def read(self) -> list[LogBlock]:
        """Pending entries first (once, after a restart), then new ones."""
        if not self._groups_ready:
            self.ensure_groups()
        start = "0" if not self._pending_done else ">"
        pipe = self.client.pipeline(transaction=False)
        for p in self.partitions:
            pipe.xreadgroup(self.group, self.consumer, {self.keys.log_of(p): start},
                            count=self.count)  # fmt: skip
        blocks: list[LogBlock] = []
        for p, reply in zip(self.partitions, pipe.execute(), strict=True):
            block = parse_entries(p, _entries(reply))
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
        planned = self.plan(blocks)
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
        if self.freshness is not None and fresh:
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
        """Apply everything logged so far (tests, loaders, benchmarks)."""
        total = 0
        for _ in range(max_steps):
            reading_new = self._pending_done
            n = self.step()
            total += n
            if n == 0 and reading_new:
                return total
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


def _entries(reply: Any) -> list[Any]:
    """The entries of a one-stream XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values()))[0] if reply else [])
    return list(reply[0][1])


def drain_all(workers: Iterable[AggregateWorker]) -> int:
    return sum(w.drain() for w in workers)
