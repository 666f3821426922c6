"""The flusher: in-process metrics drained to RedisTimeSeries; how the series are laid out.

The request path never waits on Redis for metrics. `MetricsMiddleware` (pure ASGI) counts each
request and records its latency into a bounded histogram per route template, in process; a
background thread (`Flusher`) drains those aggregates every `flush_s` seconds and writes them
in ONE pipeline:

- `TS.MADD <series> * <value> ...`: counter deltas (DUPLICATE_POLICY SUM) and the interval's
  latency quantiles per route (DUPLICATE_POLICY MAX), at the server's clock;
- `HINCRBYFLOAT <prefix>m:{m<i>.<k>}:totals <field> <delta>`: cumulative counters and
  histogram buckets of this process's part (what `/metrics` renders, summed over the parts).

Series are created once per process (TS.CREATE with RETENTION, DUPLICATE_POLICY and LABELS,
plus compaction series and TS.CREATERULE; "already exists" from another worker is fine):

  <prefix>m:{m<i>.<k>}:<metric>:<label values>      raw, RETENTION raw_retention (2 h)
  <prefix>m:{m<i>.<k>}:<metric>:<label values>:1m   compaction: sum (counters), avg (p50) or
                                                     max (p95, p99) per minute, RETENTION 8 days
  <prefix>m:{m<i>.<k>}:<metric>:<label values>:1h   counters only: sum per hour, RETENTION 90 d

`{m<i>.<k>}` is the hash tag of the process's part (one of `series.PARTS`, by host and pid;
spread evenly over a cluster's masters), so this process's pipeline and its compaction rules
stay in one slot while the processes spread over the masters; the readers (views.py) merge the
parts (labels carry `part`). Route templates appear in key names with `<...>` instead of
`{...}` (the only hash tag in a key is the part's); the labels keep the real template. Every
key is bounded: the series by RETENTION, their number by `max_series` label sets per process
(overflow label sets are counted as `other`) times the fixed number of parts, the totals hashes
by the same cap and a sliding TTL.

Other modules count things with `record(name, value, **labels)` (e.g. `record("recs.cache",
1, result="hit")`); the ingest hook (`IngestMetrics`) counts accepted events per type and
conversions/revenue per experiment variant (`props.variant`); the Recommender's own counters
(`Recommender.stats()`) are collected at each flush when the app has one.

Latency quantiles in TS are per worker process and flush interval (a minute's p95 is the worst
interval p95 of any worker); the cumulative histogram in the totals hash is exact at bucket
resolution (buckets 2^(1/4) apart: <= 19 % wide) across workers, and is what Prometheus
`histogram_quantile` and `/v1/stats` (`latency_ms`) use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis

from app.core.units import HOUR_MS, MINUTE_MS
from app.obs.registry import QUANTILES, MetricsConfig, Pending, Registry, SeriesId
from app.obs.series import MetricKeys, cmd, field_of

log = logging.getLogger("retail.metrics")

# -- the flusher --------------------------------------------------------------------------------


class Flusher:
    """Drains a Registry into RedisTimeSeries every `cfg.flush_s` seconds (daemon thread)."""

    def __init__(
        self,
        registry: Registry,
        client: redis.Redis,
        cfg: MetricsConfig,
        *,
        part: int | None = None,
    ) -> None:
        self.registry = registry
        self.client = client
        self.cfg = cfg
        self.keys = MetricKeys(cfg.key_prefix, part)  # part None: this process's own
        self._ensured: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()
        self.last_flush_ms = 0
        self.last_error: str | None = None
        self.flushes = 0
        self.failures = 0
        self._last_log = 0.0

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="metrics-flush", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.cfg.flush_s):
            self.flush()

    def stop(self) -> None:
        """Stop the thread, then one last flush (best effort)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def flush(self) -> int:
        """Write everything pending; returns the number of samples written (0 on failure)."""
        with self._flush_lock:
            self.registry.collect()
            pending = self.registry.drain()
            if not pending:
                return 0
            try:
                self.last_error = None
                written = self._write(pending)
            except (redis.RedisError, OSError) as exc:
                self.registry.restore(pending)
                self.failures += 1
                self.last_error = str(exc)
                now = time.monotonic()
                if now - self._last_log > 30:
                    self._last_log = now
                    log.warning("metrics flush failed (kept in process): %s", exc)
                return 0
            self.flushes += 1
            self.last_flush_ms = int(time.time() * 1000)
            return written

    # counters: raw + 1m + 1h sums; latency quantiles: raw + 1m (avg for p50, max otherwise)
    def _series_specs(self, pending: Pending) -> list[tuple[str, SeriesId, str, str]]:
        """(key, series id, kind, stat) of every series this flush writes."""
        out = []
        for sid in pending.counters:
            out.append((self.keys.series(sid), sid, "counter", ""))
        for sid, hist in pending.hists.items():
            if hist.count:
                for stat, _ in QUANTILES:
                    out.append((self.keys.series(sid, stat), sid, "latency", stat))
        return out

    def _ensure(self, specs: Iterable[tuple[str, SeriesId, str, str]]) -> None:
        todo = [s for s in specs if s[0] not in self._ensured]
        if not todo:
            return
        pipe = self.client.pipeline(transaction=False)
        c = self.cfg
        for key, (name, labels), kind, stat in todo:
            base_labels = ["prefix", c.key_prefix, "metric", name, "kind", kind,
                           "part", str(self.keys.current_part)]  # fmt: skip
            for k, v in labels:
                base_labels += [k, v]
            if stat:
                base_labels += ["stat", stat]
            policy = "SUM" if kind == "counter" else "MAX"
            cmd(
                pipe,
                "TS.CREATE", key, "RETENTION", c.raw_retention_ms, "DUPLICATE_POLICY", policy,
                "LABELS", *base_labels, "res", "raw",
            )  # fmt: skip
            agg = "sum" if kind == "counter" else ("avg" if stat == "p50" else "max")
            rollups = [("1m", MINUTE_MS, c.minute_retention_ms)]
            if kind == "counter":
                rollups.append(("1h", HOUR_MS, c.hour_retention_ms))
            for suffix, bucket, retention in rollups:
                cmd(
                    pipe,
                    "TS.CREATE", f"{key}:{suffix}", "RETENTION", retention,
                    "DUPLICATE_POLICY", "LAST", "LABELS", *base_labels, "res", suffix,
                )  # fmt: skip
                cmd(pipe, "TS.CREATERULE", key, f"{key}:{suffix}", "AGGREGATION", agg, bucket)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and "already" not in str(reply):
                raise reply
        self._ensured.update(key for key, *_ in todo)

    def _write(self, pending: Pending) -> int:
        specs = self._series_specs(pending)
        self._ensure(specs)
        madd: list[Any] = []
        for key, sid, kind, stat in specs:
            if kind == "counter":
                value = pending.counters[sid]
            else:
                q = dict(QUANTILES)[stat]
                value = pending.hists[sid].quantile(q) or 0.0
            madd += [key, "*", round(value, 6)]
        pipe = self.client.pipeline(transaction=False)
        if madd:
            cmd(pipe, "TS.MADD", *madd)
        totals = self.keys.totals
        for (name, labels), delta in pending.counters.items():
            pipe.hincrbyfloat(totals, field_of(name, labels), delta)
        for (name, labels), hist in pending.hists.items():
            for b, n in hist.buckets.items():
                pipe.hincrbyfloat(totals, field_of(name, labels, f"b{b}"), n)
            pipe.hincrbyfloat(totals, field_of(name, labels, "sum"), round(hist.sum_ms, 6))
            pipe.hincrbyfloat(totals, field_of(name, labels, "count"), hist.count)
        pipe.expire(totals, self.cfg.totals_ttl_s)
        # Connection errors raise here (the caller restores `pending`). After that point the
        # totals are applied, so per-command errors are logged, never retried (no double count).
        replies = pipe.execute(raise_on_error=False)
        failed = [r for r in replies if isinstance(r, Exception)]
        if madd and isinstance(replies[0], list):
            failed += [r for r in replies[0] if isinstance(r, Exception)]
        if failed:
            self._ensured.clear()  # a series vanished (FLUSHALL, cleanup): recreate next time
            self.last_error = str(failed[0])
            log.warning("metrics flush: %d commands failed, e.g. %s", len(failed), failed[0])
        return len(madd) // 3
