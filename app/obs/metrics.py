"""Observability: in-process metrics, flushed to RedisTimeSeries; Prometheus and JSON views.

The request path never waits on Redis for metrics. `MetricsMiddleware` (pure ASGI) counts each
request and records its latency into a bounded histogram per route template, in process; a
background thread (`Flusher`) drains those aggregates every `flush_s` seconds and writes them
in ONE pipeline:

- `TS.MADD <series> * <value> ...`: counter deltas (DUPLICATE_POLICY SUM) and the interval's
  latency quantiles per route (DUPLICATE_POLICY MAX), at the server's clock;
- `HINCRBYFLOAT <prefix>m:{m}:totals <field> <delta>`: cumulative counters and histogram
  buckets, summed over every worker process (what `/metrics` renders).

Series are created once per process (TS.CREATE with RETENTION, DUPLICATE_POLICY and LABELS,
plus compaction series and TS.CREATERULE; "already exists" from another worker is fine):

  <prefix>m:{m}:<metric>:<label values>        raw, RETENTION raw_retention (2 h)
  <prefix>m:{m}:<metric>:<label values>:1m     compaction: sum (counters), avg (p50) or
                                                max (p95, p99) per minute, RETENTION 8 days
  <prefix>m:{m}:<metric>:<label values>:1h     counters only: sum per hour, RETENTION 90 days

One hash tag (`{m}`) for all of them, so TS.MRANGE, the pipeline and the compaction rules stay
in one cluster slot. Route templates appear in key names with `<...>` instead of `{...}` (the
only hash tag in a key is `{m}`); the labels keep the real template. Every key is bounded: the
series by RETENTION, their number by `max_series` label sets per process (overflow label sets
are counted as `other`), the totals hash by the same cap and a sliding TTL.

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

import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import redis
from starlette.config import Config
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.events import Event
from app.core.logs import REQUEST_ID
from app.redis import calls

log = logging.getLogger("retail.metrics")

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
TAG = "{m}"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+){0,4}$")
LABEL_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_LABEL_BAD = re.compile(r"[^A-Za-z0-9._/{}<>@+-]")
MAX_LABEL = 64
OTHER = "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
CONVERSION_TYPES = ("click", "add_to_cart", "purchase")

# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsConfig:
    key_prefix: str = "rt:"
    enabled: bool = True  # RETAIL_METRICS: false keeps counting in process but never flushes
    flush_s: float = 5.0  # RETAIL_METRICS_FLUSH_S
    raw_retention_ms: int = 2 * HOUR_MS
    minute_retention_ms: int = 8 * DAY_MS
    hour_retention_ms: int = 90 * DAY_MS
    totals_ttl_s: int = 90 * 86_400  # sliding, refreshed at every flush
    max_series: int = 500  # label sets per process (all metrics together)
    public: bool = True  # RETAIL_METRICS_PUBLIC: false -> /metrics and /v1/stats need admin
    socket_timeout_s: float = 2.0


def load_metrics_config(
    env_file: str | Path | None = ".env", *, key_prefix: str | None = None
) -> MetricsConfig:
    """Read once, at app construction (starlette Config, like app/core/settings.py)."""
    config = Config(env_file if env_file and Path(env_file).exists() else None)
    flush_s = config("RETAIL_METRICS_FLUSH_S", cast=float, default=5.0)
    if not 0.05 <= flush_s <= 300:
        raise ValueError("RETAIL_METRICS_FLUSH_S must be between 0.05 and 300")
    return MetricsConfig(
        key_prefix=key_prefix or config("RETAIL_KEY_PREFIX", cast=str, default="rt:"),
        enabled=config("RETAIL_METRICS", cast=bool, default=True),
        flush_s=flush_s,
        public=config("RETAIL_METRICS_PUBLIC", cast=bool, default=True),
    )


# -- latency histogram (bounded, mergeable) ---------------------------------------------------

SUB = 4  # buckets per power of two: upper bounds 2^(i/4) ms
LOW = -5 * SUB  # first upper bound 2^-5 ms = 31 us
HIGH = 16 * SUB  # last finite upper bound 2^16 ms = 65.5 s; above: the overflow bucket
N_BUCKETS = HIGH - LOW + 2


def bucket_upper_ms(index: int) -> float:
    """Upper bound of bucket `index` (ms); the last bucket is unbounded."""
    if index >= N_BUCKETS - 1:
        return math.inf
    return float(2.0 ** ((index + LOW) / SUB))


def bucket_of(ms: float) -> int:
    if ms <= bucket_upper_ms(0):
        return 0
    index = math.ceil(SUB * math.log2(ms) - 1e-9) - LOW
    return min(max(index, 0), N_BUCKETS - 1)


class Histogram:
    """Sparse bucket counts of latencies in ms; quantiles interpolate within a bucket."""

    __slots__ = ("buckets", "count", "sum_ms")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum_ms = 0.0

    def observe(self, ms: float) -> None:
        b = bucket_of(ms)
        self.buckets[b] = self.buckets.get(b, 0) + 1
        self.count += 1
        self.sum_ms += ms

    def merge(self, other: Histogram) -> None:
        for b, n in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + n
        self.count += other.count
        self.sum_ms += other.sum_ms

    def quantile(self, q: float) -> float | None:
        return quantile_of(self.buckets, q)


def quantile_of(buckets: Mapping[int, float], q: float) -> float | None:
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for b in sorted(buckets):
        n = buckets[b]
        if n <= 0:
            continue
        if seen + n >= rank:
            lo = bucket_upper_ms(b - 1) if b > 0 else 0.0
            hi = bucket_upper_ms(b)
            if math.isinf(hi):
                return lo
            return lo + (hi - lo) * max(0.0, min(1.0, (rank - seen) / n))
        seen += n
    return bucket_upper_ms(max(buckets) - 1)


# -- the registry -----------------------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]
SeriesId = tuple[str, Labels]


def clean_label(value: object) -> str:
    text = _LABEL_BAD.sub("_", str(value))[:MAX_LABEL]
    return text or "_"


@dataclass
class Pending:
    """What one flush writes: counter deltas and interval histograms."""

    counters: dict[SeriesId, float] = field(default_factory=dict)
    hists: dict[SeriesId, Histogram] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.counters or self.hists)


class Registry:
    """Process-local counters and latency histograms. Thread-safe, bounded, no I/O."""

    def __init__(self, max_series: int = 500) -> None:
        self.max_series = max_series
        self._lock = threading.Lock()
        self._pending = Pending()
        self._known: set[SeriesId] = set()
        self._totals: dict[SeriesId, float] = {}
        self._hist_totals: dict[SeriesId, Histogram] = {}
        self._collectors: list[Callable[[Registry], None]] = []
        self.dropped = 0  # increments folded into `other` because of the series cap

    def _admit(self, name: str, labels: Labels) -> SeriesId:
        sid = (name, labels)
        if sid in self._known:
            return sid
        if len(self._known) < self.max_series:
            self._known.add(sid)
            return sid
        self.dropped += 1
        other = (name, tuple((k, OTHER) for k, _ in labels))
        self._known.add(other)  # may exceed the cap by one per metric name: still bounded
        return other

    def inc(self, name: str, value: float = 1.0, /, **labels: object) -> None:
        if not NAME_RE.match(name):
            raise ValueError(f"metric names are dotted lowercase words: {name!r}")
        if not math.isfinite(value):
            return
        lab = tuple(sorted((k, clean_label(v)) for k, v in labels.items()))
        if any(not LABEL_NAME_RE.match(k) for k, _ in lab):
            raise ValueError(f"label names are lowercase words: {labels!r}")
        with self._lock:
            sid = self._admit(name, lab)
            self._pending.counters[sid] = self._pending.counters.get(sid, 0.0) + value
            self._totals[sid] = self._totals.get(sid, 0.0) + value

    def observe_request(self, method: str, route: str, status: int, ms: float) -> None:
        method = method if method in HTTP_METHODS else "OTHER"
        route = clean_label(route)
        klass = f"{min(max(status // 100, 1), 5)}xx"
        lab_req = (("method", method), ("route", route), ("status", klass))
        lab_lat = (("method", method), ("route", route))
        with self._lock:
            sid = self._admit("http.requests", lab_req)
            self._pending.counters[sid] = self._pending.counters.get(sid, 0.0) + 1
            self._totals[sid] = self._totals.get(sid, 0.0) + 1
            hid = self._admit("http.latency_ms", lab_lat)
            self._pending.hists.setdefault(hid, Histogram()).observe(ms)
            self._hist_totals.setdefault(hid, Histogram()).observe(ms)

    def add_collector(self, fn: Callable[[Registry], None]) -> None:
        """`fn(registry)` runs before each flush (e.g. to turn cumulative counters into
        `inc` deltas). It must not block for long."""
        with self._lock:
            if fn not in self._collectors:
                self._collectors.append(fn)

    def remove_collector(self, fn: Callable[[Registry], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._collectors.remove(fn)

    def collect(self) -> None:
        with self._lock:
            collectors = list(self._collectors)
        for fn in collectors:
            try:
                fn(self)
            except Exception:  # a collector must never stop the flusher
                log.exception("metrics collector %r failed", fn)

    def drain(self) -> Pending:
        with self._lock:
            pending, self._pending = self._pending, Pending()
        return pending

    def restore(self, pending: Pending) -> None:
        """Put back what a failed flush could not write (merged: memory stays bounded)."""
        with self._lock:
            for sid, v in pending.counters.items():
                self._pending.counters[sid] = self._pending.counters.get(sid, 0.0) + v
            for sid, h in pending.hists.items():
                self._pending.hists.setdefault(sid, Histogram()).merge(h)

    def local_totals(self) -> tuple[dict[SeriesId, float], dict[SeriesId, Histogram]]:
        with self._lock:
            hists = {}
            for sid, h in self._hist_totals.items():
                copy = Histogram()
                copy.merge(h)
                hists[sid] = copy
            return dict(self._totals), hists


DEFAULT = Registry()


def record(name: str, value: float = 1.0, /, **labels: object) -> None:
    """Count `value` into the process's default registry (no I/O; flushed in the background).

    `name`: dotted lowercase words (`recs.cache`, `events.rejected`); labels: a few
    low-cardinality values (never a user or item id). Rendered as `retail_<name>_total`."""
    DEFAULT.inc(name, value, **labels)


# -- key and field names ------------------------------------------------------------------------


def _key_safe(value: str) -> str:
    return value.replace("{", "<").replace("}", ">")


@dataclass(frozen=True)
class MetricKeys:
    prefix: str = "rt:"

    def base(self) -> str:
        return f"{self.prefix}m:{TAG}:"

    def series(self, sid: SeriesId, stat: str | None = None) -> str:
        name, labels = sid
        parts = [*name.split("."), *(_key_safe(v) for _, v in labels)]
        if stat:
            parts.append(stat)
        return self.base() + ":".join(parts)

    @property
    def totals(self) -> str:
        return self.base() + "totals"


def field_of(name: str, labels: Labels, extra: str = "") -> str:
    """Totals hash field: `name|k=v|k=v[|extra]` (values never contain `|` or `=`)."""
    parts = [name, *(f"{k}={v}" for k, v in labels)]
    if extra:
        parts.append(extra)
    return "|".join(parts)


def parse_field(raw: str) -> tuple[str, dict[str, str], str]:
    name, *rest = raw.split("|")
    labels: dict[str, str] = {}
    extra = ""
    for part in rest:
        if "=" in part:
            k, v = part.split("=", 1)
            labels[k] = v
        else:
            extra = part
    return name, labels, extra


def _cmd(target: redis.Redis | redis.client.Pipeline, *args: Any) -> Any:
    return target.execute_command(*args)  # type: ignore[no-untyped-call]


# -- the flusher --------------------------------------------------------------------------------


class Flusher:
    """Drains a Registry into RedisTimeSeries every `cfg.flush_s` seconds (daemon thread)."""

    def __init__(self, registry: Registry, client: redis.Redis, cfg: MetricsConfig) -> None:
        self.registry = registry
        self.client = client
        self.cfg = cfg
        self.keys = MetricKeys(cfg.key_prefix)
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
            base_labels = ["prefix", c.key_prefix, "metric", name, "kind", kind]
            for k, v in labels:
                base_labels += [k, v]
            if stat:
                base_labels += ["stat", stat]
            policy = "SUM" if kind == "counter" else "MAX"
            _cmd(
                pipe,
                "TS.CREATE", key, "RETENTION", c.raw_retention_ms, "DUPLICATE_POLICY", policy,
                "LABELS", *base_labels, "res", "raw",
            )  # fmt: skip
            agg = "sum" if kind == "counter" else ("avg" if stat == "p50" else "max")
            rollups = [("1m", MINUTE_MS, c.minute_retention_ms)]
            if kind == "counter":
                rollups.append(("1h", HOUR_MS, c.hour_retention_ms))
            for suffix, bucket, retention in rollups:
                _cmd(
                    pipe,
                    "TS.CREATE", f"{key}:{suffix}", "RETENTION", retention,
                    "DUPLICATE_POLICY", "LAST", "LABELS", *base_labels, "res", suffix,
                )  # fmt: skip
                _cmd(pipe, "TS.CREATERULE", key, f"{key}:{suffix}", "AGGREGATION", agg, bucket)
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
            _cmd(pipe, "TS.MADD", *madd)
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


# -- reading back (for /metrics and /v1/stats) ------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Totals:
    counters: dict[SeriesId, float]
    hists: dict[SeriesId, Histogram]
    source: str  # redis | local


def read_totals(client: redis.Redis, keys: MetricKeys) -> Totals:
    raw = client.hgetall(keys.totals)
    counters: dict[SeriesId, float] = {}
    hists: dict[SeriesId, Histogram] = {}
    for f, v in raw.items():
        name, labels, extra = parse_field(_text(f))
        sid = (name, tuple(sorted(labels.items())))
        value = float(_text(v))
        if not extra:
            counters[sid] = value
            continue
        h = hists.setdefault(sid, Histogram())
        if extra == "sum":
            h.sum_ms = value
        elif extra == "count":
            h.count = int(value)
        elif extra.startswith("b") and extra[1:].isdigit():
            h.buckets[int(extra[1:])] = int(value)
    return Totals(counters, hists, "redis")


def local_totals(registry: Registry) -> Totals:
    counters, hists = registry.local_totals()
    return Totals(counters, hists, "local")


def parse_mrange(reply: Any) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    """TS.MRANGE ... WITHLABELS, RESP2 or RESP3 shape -> [(labels, [(ts, value)])]."""
    out: list[tuple[dict[str, str], list[tuple[int, float]]]] = []
    if isinstance(reply, dict):
        items: Iterable[Any] = ((k, *v) for k, v in reply.items())
    else:
        items = reply or []
    for row in items:
        row = list(row)
        labels_raw, samples_raw = row[1], row[-1]
        if isinstance(labels_raw, dict):
            labels = {_text(k): _text(v) for k, v in labels_raw.items()}
        else:
            labels = {_text(k): _text(v) for k, v in labels_raw}
        samples = [(int(ts), float(_text(v))) for ts, v in samples_raw]
        out.append((labels, samples))
    return out


def mrange(
    client: redis.Redis,
    prefix: str,
    start_ms: int,
    end_ms: int,
    *,
    kind: str,
    res: str,
    agg: str | None = None,
    bucket_ms: int = MINUTE_MS,
    extra_filters: Sequence[str] = (),
) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    args: list[Any] = ["TS.MRANGE", max(0, start_ms), end_ms, "WITHLABELS"]
    if agg:
        args += ["AGGREGATION", agg, bucket_ms]
    args += ["FILTER", f"prefix={prefix}", f"kind={kind}", f"res={res}", *extra_filters]
    return parse_mrange(_cmd(client, *args))


# -- Prometheus text format ---------------------------------------------------------------------

HELP = {
    "http.requests": "HTTP requests by route template, method and status class.",
    "events.ingested": "Events accepted by ingestion (duplicates and rejects excluded), by type.",
    "recs.served": "Recommendation lists served, by source (cache, inline, fallback).",
    "recs.fallbacks": "Recommendation fallbacks by kind (last_good, popular) and reason.",
    "recs.conversions": "Clicks, add-to-carts and purchases carrying props.variant, by variant.",
    "recs.revenue": "Revenue of purchases carrying props.variant (qty * price), by variant.",
}


def prom_name(name: str) -> str:
    return "retail_" + name.replace(".", "_")


def _prom_labels(labels: Iterable[tuple[str, str]]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    inner = ",".join(f'{k}="{esc(v)}"' for k, v in labels)
    return "{" + inner + "}" if inner else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def render_prometheus(totals: Totals, gauges: Mapping[str, float] | None = None) -> str:
    lines: list[str] = []
    by_name: dict[str, list[tuple[Labels, float]]] = {}
    for (name, labels), value in sorted(totals.counters.items()):
        by_name.setdefault(name, []).append((labels, value))
    for name, rows in by_name.items():
        metric = prom_name(name) + "_total"
        lines.append(f"# HELP {metric} {HELP.get(name, name + ' (record()).')}")
        lines.append(f"# TYPE {metric} counter")
        for labels, value in rows:
            lines.append(f"{metric}{_prom_labels(labels)} {_num(value)}")
    if totals.hists:
        metric = "retail_http_request_duration_seconds"
        lines.append(f"# HELP {metric} HTTP request latency by route template and method.")
        lines.append(f"# TYPE {metric} histogram")
        for (_name, labels), hist in sorted(totals.hists.items()):
            cumulative = 0
            # Expose every 4th fine bucket (powers of two in ms) plus +Inf.
            edges = [i for i in range(N_BUCKETS - 1) if (i + LOW) % SUB == 0]
            counts = sorted(hist.buckets.items())
            pos = 0
            for edge in edges:
                while pos < len(counts) and counts[pos][0] <= edge:
                    cumulative += counts[pos][1]
                    pos += 1
                le = bucket_upper_ms(edge) / 1000
                lab = _prom_labels([*labels, ("le", repr(le))])
                lines.append(f"{metric}_bucket{lab} {cumulative}")
            lab = _prom_labels([*labels, ("le", "+Inf")])
            lines.append(f"{metric}_bucket{lab} {hist.count}")
            lines.append(f"{metric}_sum{_prom_labels(labels)} {hist.sum_ms / 1000:.6f}")
            lines.append(f"{metric}_count{_prom_labels(labels)} {hist.count}")
    for gname, gvalue in (gauges or {}).items():
        lines.append(f"# TYPE {gname} gauge")
        lines.append(f"{gname} {_num(gvalue)}")
    return "\n".join(lines) + "\n"


# -- JSON stats ---------------------------------------------------------------------------------


def _rate(samples_sum: float, window_ms: int) -> float:
    return round(samples_sum / (window_ms / 1000), 4)


def stats_json(
    client: redis.Redis | None, registry: Registry, cfg: MetricsConfig, *, window_s: int = 60
) -> dict[str, Any]:
    """Totals across workers (Redis; this process's own when Redis fails), recent rates and
    latency quantiles over the last `window_s` seconds (raw series)."""
    keys = MetricKeys(cfg.key_prefix)
    now = int(time.time() * 1000)
    window_ms = window_s * 1000
    recent: dict[SeriesId, float] = {}
    recent_lat: dict[tuple[Labels, str], float] = {}
    error: str | None = None
    totals: Totals | None = None
    if client is not None:
        try:
            totals = read_totals(client, keys)
            for labels, samples in mrange(
                client, cfg.key_prefix, now - window_ms, now, kind="counter", res="raw"
            ):
                sid = _sid_from_labels(labels)
                recent[sid] = recent.get(sid, 0.0) + sum(v for _, v in samples)
            for labels, samples in mrange(
                client, cfg.key_prefix, now - window_ms, now, kind="latency", res="raw"
            ):
                if samples:
                    lab = _sid_from_labels(labels)[1]
                    recent_lat[(lab, labels.get("stat", ""))] = max(v for _, v in samples)
        except redis.RedisError as exc:
            error = str(exc)
            totals = None
    if totals is None:
        totals = local_totals(registry)

    def total(name: str, **match: str) -> float:
        return sum(v for (n, lab), v in totals.counters.items() if n == name and _has(lab, match))

    def in_window(name: str, **match: str) -> float:
        return sum(v for (n, lab), v in recent.items() if n == name and _has(lab, match))

    endpoints = []
    routes = sorted({
        (dict(lab)["method"], dict(lab)["route"])
        for (n, lab) in totals.counters if n == "http.requests"
    })  # fmt: skip
    for method, route in routes:
        m = {"method": method, "route": route}
        hist = totals.hists.get(("http.latency_ms", (("method", method), ("route", route))))
        lab = (("method", method), ("route", route))
        endpoints.append({
            "method": method, "route": route,
            "requests": int(total("http.requests", **m)),
            "errors": int(total("http.requests", status="5xx", **m)),
            "client_errors": int(total("http.requests", status="4xx", **m)),
            "rate_per_s": _rate(in_window("http.requests", **m), window_ms),
            "latency_ms": {s: _round(hist.quantile(q)) for s, q in QUANTILES} if hist else {},
            "latency_ms_recent": {s: _round(recent_lat.get((lab, s))) for s, _ in QUANTILES},
        })  # fmt: skip
    served = {src: int(total("recs.served", source=src)) for src in ("cache", "inline", "fallback")}
    n_served = sum(served.values())
    fallbacks: dict[str, int] = {}
    for (n, lab), v in totals.counters.items():
        if n == "recs.fallbacks":
            d = dict(lab)
            fallbacks[f"{d.get('kind', '?')}:{d.get('reason', '?')}"] = int(v)
    variants: dict[str, dict[str, float]] = {}
    for (n, lab), v in totals.counters.items():
        d = dict(lab)
        if n == "recs.conversions":
            variants.setdefault(d.get("variant", "?"), {})[d.get("type", "?")] = int(v)
        elif n == "recs.revenue":
            variants.setdefault(d.get("variant", "?"), {})["revenue"] = round(v, 2)
    by_type = {
        dict(lab).get("type", "?"): int(v)
        for (n, lab), v in totals.counters.items()
        if n == "events.ingested"
    }
    other = {
        field_of(n, lab): v
        for (n, lab), v in sorted(totals.counters.items())
        if n not in ("http.requests", "events.ingested", "recs.served", "recs.fallbacks",
                     "recs.conversions", "recs.revenue")
    }  # fmt: skip
    return {
        "as_of_ms": now,
        "source": totals.source,
        "redis_error": error,
        "window_s": window_s,
        "flush_interval_s": cfg.flush_s,
        "endpoints": endpoints,
        "requests": {
            "total": int(total("http.requests")),
            "errors": int(total("http.requests", status="5xx")),
            "rate_per_s": _rate(in_window("http.requests"), window_ms),
        },
        "events": {
            "ingested": int(total("events.ingested")),
            "per_s": _rate(in_window("events.ingested"), window_ms),
            "by_type": by_type,
        },
        "recommendations": {
            "served": served,
            "cache_hit_rate": round(served["cache"] / n_served, 4) if n_served else None,
            "fallbacks": fallbacks,
            "fallback_rate": round(served["fallback"] / n_served, 4) if n_served else None,
        },
        "variants": variants,
        "counters": other,
        "series_dropped": registry.dropped,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _has(labels: Labels, match: Mapping[str, str]) -> bool:
    d = dict(labels)
    return all(d.get(k) == v for k, v in match.items())


SERIES_LABELS = frozenset({"prefix", "metric", "kind", "res", "stat"})


def _sid_from_labels(labels: Mapping[str, str]) -> SeriesId:
    rest = tuple(sorted((k, v) for k, v in labels.items() if k not in SERIES_LABELS))
    return labels.get("metric", "?"), rest


def series_json(
    client: redis.Redis, cfg: MetricsConfig, *, minutes: int = 60, step_s: int = 60
) -> dict[str, Any]:
    """Per-step series for the dashboard. Steps within the raw retention (2 h) come from the
    raw series aggregated on the fly, so the newest step is live; older steps come from the
    1-minute compactions (a compaction bucket is only written once a later sample arrives)."""
    now = int(time.time() * 1000)
    step = step_s * 1000
    start = (now - minutes * MINUTE_MS) // step * step
    raw_from = max(start, -(-(now - cfg.raw_retention_ms) // step) * step)  # first full step
    res = "raw" if raw_from == start else "1m+raw"
    stamps = list(range(start, now + 1, step))
    index = {ts: i for i, ts in enumerate(stamps)}

    def fill(samples: Sequence[tuple[int, float]], zero: float | None) -> list[float | None]:
        row: list[float | None] = [zero] * len(stamps)
        for ts, v in samples:
            i = index.get(ts // step * step)
            if i is not None:
                row[i] = round(v, 4)
        return row

    def query(
        kind: str, agg: str, extra: Sequence[str] = ()
    ) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
        """Raw steps, preceded by the compacted ones the raw retention no longer covers."""
        rows = mrange(client, cfg.key_prefix, raw_from, now, kind=kind, res="raw", agg=agg,
                      bucket_ms=step, extra_filters=extra)  # fmt: skip
        if raw_from == start:
            return rows
        merged: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
        labels_of: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        old = mrange(client, cfg.key_prefix, start, raw_from - 1, kind=kind, res="1m", agg=agg,
                     bucket_ms=step, extra_filters=extra)  # fmt: skip
        for labels, samples in [*old, *rows]:
            ident = tuple(sorted((k, v) for k, v in labels.items() if k != "res"))
            labels_of[ident] = labels
            merged.setdefault(ident, []).extend(samples)
        return [(labels_of[i], merged[i]) for i in merged]

    counters = query("counter", "sum")
    out: dict[str, dict[str, list[float | None]]] = {
        "requests": {}, "errors": {}, "events": {}, "recs": {}, "fallbacks": {},
        "conversions": {}, "p50": {}, "p95": {}, "p99": {},
    }  # fmt: skip

    def add(group: str, name: str, row: list[float | None]) -> None:
        cur = out[group].get(name)
        if cur is None:
            out[group][name] = row
        else:
            out[group][name] = [(a or 0) + (b or 0) for a, b in zip(cur, row, strict=True)]

    for labels, samples in counters:
        metric = labels.get("metric", "")
        row = fill(samples, 0.0)
        if metric == "http.requests":
            route = f"{labels.get('method', '')} {labels.get('route', '')}"
            add("requests", route, row)
            if labels.get("status") == "5xx":
                add("errors", route, row)
        elif metric == "events.ingested":
            add("events", labels.get("type", "?"), row)
        elif metric == "recs.served":
            add("recs", labels.get("source", "?"), row)
        elif metric == "recs.fallbacks":
            add("fallbacks", f"{labels.get('kind', '?')}:{labels.get('reason', '?')}", row)
        elif metric == "recs.conversions":
            add("conversions", f"{labels.get('variant', '?')}:{labels.get('type', '?')}", row)
    for stat, _ in QUANTILES:
        agg = "avg" if stat == "p50" else "max"
        for labels, samples in query("latency", agg, [f"stat={stat}"]):
            route = f"{labels.get('method', '')} {labels.get('route', '')}"
            out[stat][route] = fill(samples, None)
    return {"from_ms": start, "to_ms": now, "step_s": step_s, "resolution": res,
            "timestamps": stamps, **out}  # fmt: skip


# -- ingestion hook and collectors --------------------------------------------------------------


class IngestMetrics:
    """An observer of `app.ingest.ingestor.Ingestor`: counts the accepted events of each batch
    (by type) and conversions/revenue per `props.variant`; adds no Function call."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or DEFAULT

    def __call__(self, events: Sequence[Event]) -> list[tuple[str, calls.Args]]:
        counts: dict[str, int] = {}
        for ev in events:
            counts[ev.type] = counts.get(ev.type, 0) + 1
            variant = ev.props.get("variant")
            if ev.type in CONVERSION_TYPES and isinstance(variant, str) and variant:
                self.registry.inc("recs.conversions", 1, variant=variant, type=ev.type)
                if ev.type == "purchase":
                    revenue = sum(ln.qty * ln.price for ln in ev.lines)
                    self.registry.inc("recs.revenue", revenue, variant=variant)
        for etype, n in counts.items():
            self.registry.inc("events.ingested", n, type=etype)
        return []


class StatsCollector:
    """Turns a cumulative counter source (e.g. `Recommender.stats()`: `served.cache`,
    `fallback.popular.timeout`, `over_budget`...) into deltas at each flush."""

    def __init__(self, source: Callable[[], Mapping[str, int]]) -> None:
        self.source = source
        self._last: dict[str, int] = {}

    def __call__(self, registry: Registry) -> None:
        current = dict(self.source())
        for name, value in current.items():
            delta = value - self._last.get(name, 0)
            if delta <= 0:
                continue
            parts = name.split(".")
            if parts[0] == "served" and len(parts) == 2:
                registry.inc("recs.served", delta, source=parts[1])
            elif parts[0] == "fallback" and len(parts) == 3:
                registry.inc("recs.fallbacks", delta, kind=parts[1], reason=parts[2])
            else:
                registry.inc("recs.other", delta, name=name)
        self._last = current


# -- the middleware -----------------------------------------------------------------------------


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    return UNMATCHED


class MetricsMiddleware:
    """Pure ASGI: per-request count and latency by route template (in process), and the
    flusher's lifecycle (started after the app's lifespan startup, stopped at shutdown).

    At startup it also hooks into the lifespan state: `IngestMetrics` is added to
    `state["ingestor"].observers`, and the Recommender's counters (`state["recommender"]`
    or `app.state.recommender`) are collected at each flush.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: MetricsConfig | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.app = app
        self.config = config  # None: read from the environment at startup (key prefix known)
        self.registry = registry or DEFAULT
        self.flusher: Flusher | None = None
        self._collector: StatsCollector | None = None

    async def _shutdown(self) -> None:
        flusher, self.flusher = self.flusher, None
        if flusher is not None:
            await anyio.to_thread.run_sync(flusher.stop)
            flusher.client.close()
        if self._collector is not None:
            self.registry.remove_collector(self._collector)
            self._collector = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        # The id RequestContextMiddleware (outside this one) gave the request, for log records.
        token = REQUEST_ID.set((scope.get("state") or {}).get("request_id"))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            ms = (time.perf_counter() - start) * 1000
            self.registry.observe_request(scope["method"], _route_template(scope), status, ms)
            REQUEST_ID.reset(token)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self._shutdown()
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    self._startup(scope)
                except Exception:  # metrics must never stop the app from starting
                    log.exception("metrics start-up failed: metrics stay in process")
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)

    def _startup(self, scope: Scope) -> None:
        state = scope.get("state") or {}
        settings = state.get("settings")
        prefix = getattr(getattr(settings, "engine", None), "key_prefix", None)
        app = scope.get("app")
        app_state = getattr(app, "state", None)
        # Tests (and embedders) may set app.state.metrics_registry / metrics_config first.
        registry = getattr(app_state, "metrics_registry", None)
        if isinstance(registry, Registry):
            self.registry = registry
        cfg = getattr(app_state, "metrics_config", None)
        if not isinstance(cfg, MetricsConfig):
            cfg = self.config or load_metrics_config(key_prefix=prefix)
        if prefix and cfg.key_prefix != prefix:
            cfg = replace(cfg, key_prefix=prefix)
        self.config = cfg
        if app_state is not None:
            app_state.metrics = self
        ingestor = state.get("ingestor")
        hooks = getattr(ingestor, "observers", None)
        if isinstance(hooks, list) and not any(isinstance(h, IngestMetrics) for h in hooks):
            hooks.append(IngestMetrics(self.registry))

        def rec_stats() -> Mapping[str, int]:
            rec = state.get("recommender") or getattr(getattr(app, "state", None), "recommender",
                                                      None)  # fmt: skip
            stats = getattr(rec, "stats", None)
            return stats() if callable(stats) else {}

        self._collector = StatsCollector(rec_stats)
        self.registry.add_collector(self._collector)
        url = getattr(settings, "redis_url", None)
        if cfg.enabled and url:
            client = redis.Redis.from_url(
                url, socket_timeout=cfg.socket_timeout_s,
                socket_connect_timeout=cfg.socket_timeout_s, max_connections=4,
            )  # fmt: skip
            self.flusher = Flusher(self.registry, client, cfg)
            self.flusher.start()
