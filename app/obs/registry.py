"""The in-process metrics registry: bounded, mergeable latency histograms and counters,
counted without I/O on the request path, drained by the flusher (app/obs/flusher.py).

Other modules count with `record(name, value, **labels)`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from starlette.config import Config

from app.core.units import DAY_MS, HOUR_MS

log = logging.getLogger("retail.metrics")

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
