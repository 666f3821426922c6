"""Background worker: refresh an active shopper's recommendations shortly after their events.

    python -m app.recs.worker [--consumer NAME] [--debounce-ms 300] [--max-delay-ms 2000]

It reads the partition logs (`log:{p<n>}`, written by `ingest_partition`) through a consumer
group (`recs`) on each, one XREADGROUP per log (pipelined: each log is its own hash slot, so
this works on a Redis Cluster), so several workers share the work and a crashed worker's
entries are picked up again (its own pending entries on restart; other consumers' after
`claim_idle_ms` via XAUTOCLAIM). Per shopper it waits until no new event came for
`debounce_ms` (or at most `max_delay_ms` after the first), then computes and caches the
`home` list (and the `cart` list when the cart is not empty) with `Recommender.precompute`,
and acknowledges the entries.
A burst of 20 clicks costs one computation, and the next read is a cache hit.

Delivery is at least once: a list may be computed twice, never lost. A user whose refresh
keeps failing is retried `max_attempts` times, then acknowledged (the inline path still
serves them).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from app.core.errors import EngineError
from app.core.settings import EngineConfig, load_settings
from app.ingest.aggregates import LogReader
from app.recs.config import load_rec_config
from app.recs.keys import RecKeys
from app.recs.recommender import Recommender
from app.redis import embedded as redis_stack
from app.redis import library as functions
from app.redis.connect import catalog_connection, connect

log = logging.getLogger("retail.worker")
GROUP = "recs"
# For /health, /v1/stats and the dashboard: this group's lag raises an alert like the `agg` one.
LIST_READER = LogReader(GROUP, "recommendation list workers",
                        "start more list workers (`python -m app.recs.worker`)")  # fmt: skip
SKIP_TYPES = frozenset({"search"})


def _entries(stream: str, reply: Any) -> list[tuple[str, Any, Any]]:
    """(stream, entry id, fields) of a one-stream XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    rows = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
    return [(stream, entry_id, fields) for entry_id, fields in rows]


@dataclass
class _Pending:
    first_ms: float
    last_ms: float
    stream: str = ""  # a shopper's entries are all in its partition's log
    ids: list[bytes] = field(default_factory=list)
    attempts: int = 0
    not_before_ms: float = 0.0


@dataclass
class WorkerStats:
    entries: int = 0
    refreshed: int = 0
    failures: int = 0
    acked: int = 0
    claimed: int = 0


class RecWorker:
    def __init__(
        self,
        client: redis.Redis,
        rec: Recommender,
        *,
        group: str = GROUP,
        consumer: str | None = None,
        debounce_ms: float = 300.0,
        max_delay_ms: float = 2000.0,
        batch: int = 500,
        block_ms: int = 100,
        claim_idle_ms: int = 60_000,
        max_attempts: int = 5,
    ) -> None:
        self.client = client
        self.rec = rec
        self.keys = RecKeys(rec.engine.key_prefix, rec.engine.partitions, rec.engine.agg_shards)
        self.streams = self.keys.logs
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.debounce_ms = debounce_ms
        self.max_delay_ms = max_delay_ms
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_attempts = max_attempts
        self.pending: dict[str, _Pending] = {}
        self.stats = WorkerStats()
        self._backlog_read = False
        self._last_claim = 0.0

    def ensure_group(self) -> None:
        """Create the consumer group at each log's end (new events only); idempotent."""
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xgroup_create(stream, self.group, id="$", mkstream=True)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply

    def _schedule(self, entries: Sequence[tuple[str, Any, Any]], now_ms: float) -> None:
        for stream, entry_id, fields in entries:
            if not fields:  # deleted by MAXLEN trimming meanwhile
                self._ack(stream, [entry_id])
                continue
            self.stats.entries += 1
            etype = fields.get(b"type", b"").decode()
            user = fields.get(b"user", b"").decode()
            if not user or etype in SKIP_TYPES:
                self._ack(stream, [entry_id])
                continue
            p = self.pending.get(user)
            if p is None:
                p = self.pending[user] = _Pending(now_ms, now_ms, stream)
            p.last_ms = now_ms
            p.ids.append(entry_id)

    def _ack(self, stream: str, ids: Sequence[bytes]) -> None:
        if ids:
            self.stats.acked += int(self.client.xack(stream, self.group, *ids))

    def _read_each(self, start: str) -> list[tuple[str, Any, Any]]:
        """One XREADGROUP per partition log, pipelined: each log sits in its own hash slot, so
        one multi-stream read would be CROSSSLOT on a cluster (a cluster pipeline sends each
        node its own reads)."""
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xreadgroup(self.group, self.consumer, {stream: start}, count=self.batch)
        out: list[tuple[str, Any, Any]] = []
        for stream, reply in zip(self.streams, pipe.execute(), strict=True):
            out += _entries(stream, reply)
        return out

    def _claim_stale(self, now_ms: float) -> None:
        """Take over entries another consumer read but left unacknowledged for claim_idle_ms."""
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xautoclaim(stream, self.group, self.consumer, self.claim_idle_ms,
                            count=self.batch)  # fmt: skip
        for stream, claimed in zip(self.streams, pipe.execute(), strict=True):
            rows = [(stream, eid, f) for eid, f in (claimed[1] if claimed else [])]
            self.stats.claimed += len(rows)
            self._schedule(rows, now_ms)

    def read(self, block_ms: int | None = None) -> int:
        """Read entries into the pending set: first this consumer's own unacknowledged ones
        (after a restart), then stale ones of dead consumers, then new ones. The reads do not
        block (a blocking read per log would wait on each in turn): when nothing came, it
        waits `block_ms` before returning (an idle worker polls every log ten times a second by
        default; the debounce is a few of those turns)."""
        now_ms = time.monotonic() * 1000
        if not self._backlog_read:
            entries = self._read_each("0")
            self._schedule(entries, now_ms)
            per_log = Counter(stream for stream, _id, _fields in entries)
            if max(per_log.values(), default=0) < self.batch:  # no log has more pending
                self._backlog_read = True
            return len(entries)
        if time.monotonic() - self._last_claim > self.claim_idle_ms / 1000:
            self._last_claim = time.monotonic()
            self._claim_stale(now_ms)
        entries = self._read_each(">")
        self._schedule(entries, now_ms)
        block = self.block_ms if block_ms is None else block_ms
        if not entries and block:
            time.sleep(block / 1000)
        return len(entries)

    def due(self, now_ms: float) -> list[str]:
        return [
            user
            for user, p in self.pending.items()
            if now_ms >= p.not_before_ms
            and (now_ms - p.last_ms >= self.debounce_ms or now_ms - p.first_ms >= self.max_delay_ms)
        ]

    def flush(self, now_ms: float | None = None, *, force: bool = False) -> int:
        """Refresh the users that are due (all with `force`); returns how many."""
        now = now_ms if now_ms is not None else time.monotonic() * 1000
        users = list(self.pending) if force else self.due(now)
        done = 0
        for user in users:
            p = self.pending[user]
            try:
                self.rec.precompute(user)
            except (redis.RedisError, EngineError) as exc:
                p.attempts += 1
                self.stats.failures += 1
                log.warning("refresh of %s failed (%d/%d): %s", user, p.attempts,
                            self.max_attempts, exc)  # fmt: skip
                if p.attempts < self.max_attempts:
                    p.not_before_ms = now + 500 * 2**p.attempts
                    continue
            else:
                self.stats.refreshed += 1
                done += 1
            self._ack(p.stream, p.ids)
            del self.pending[user]
        return done

    def step(self, block_ms: int | None = None) -> int:
        """One loop turn: read (waiting up to block_ms when idle), then refresh the due users."""
        self.read(block_ms)
        return self.flush()

    def run(self, stop: threading.Event, *, refresh_every_s: float = 1.0) -> None:
        self.ensure_group()
        last_refresh = 0.0
        while not stop.is_set():
            if time.monotonic() - last_refresh >= refresh_every_s:
                self.rec.refresh()  # model pointer, trending, catalog attributes
                last_refresh = time.monotonic()
            try:
                self.step()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("worker: Redis unavailable (%s); retrying in 1 s", exc)
                stop.wait(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings()
    parser = argparse.ArgumentParser(
        prog="python -m app.recs.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--redis-url", default=None, help="default: $REDIS_URL")
    parser.add_argument("--consumer", default=None, help="consumer name (default host-pid)")
    parser.add_argument("--debounce-ms", type=float, default=300.0)
    parser.add_argument("--max-delay-ms", type=float, default=2000.0)
    args = parser.parse_args(argv)
    url = args.redis_url or settings.redis_url
    if not url:
        print("error: set REDIS_URL or pass --redis-url", file=sys.stderr)
        return 2
    engine: EngineConfig = settings.engine
    client = connect(url)
    try:
        redis_stack.probe(client)
        functions.ensure_current(client, load_if_stale=False)
        catalog = catalog_connection(replace(settings, redis_url=url), client)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rec = Recommender(client, engine, load_rec_config(key_prefix=engine.key_prefix),
                      catalog_client=catalog)  # fmt: skip
    worker = RecWorker(client, rec, consumer=args.consumer, debounce_ms=args.debounce_ms,
                       max_delay_ms=args.max_delay_ms)  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("worker %s on %d partition logs (group %s)", worker.consumer, len(worker.streams),
             worker.group)  # fmt: skip
    rec.refresh()
    gc.freeze()  # libraries and caches out of the cyclic GC's full collections
    try:
        worker.run(stop)
    finally:
        rec.close()
        client.close()
    s = worker.stats
    print(f"entries {s.entries}, refreshed {s.refreshed}, failures {s.failures}, acked {s.acked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
