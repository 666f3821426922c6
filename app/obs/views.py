"""Reading the metrics back: cumulative totals, TS.MRANGE series, and their Prometheus text and
JSON views (`/metrics`, `/v1/stats`, the dashboard's series)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from app.core.units import MINUTE_MS
from app.obs.registry import (
    LOW,
    N_BUCKETS,
    QUANTILES,
    SUB,
    Histogram,
    Labels,
    MetricsConfig,
    Registry,
    SeriesId,
    bucket_upper_ms,
)
from app.obs.series import MetricKeys, cmd, field_of, parse_field
from app.redis.connect import nodes_of

# -- reading back (for /metrics and /v1/stats) ------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Totals:
    counters: dict[SeriesId, float]
    hists: dict[SeriesId, Histogram]
    source: str  # redis | local

    def total(self, name: str, **match: str) -> float:
        """Sum of the counter `name` over the label sets that carry every `match` label."""
        return sum(v for (n, lab), v in self.counters.items() if n == name and _has(lab, match))


def read_totals(client: redis.Redis, keys: MetricKeys) -> Totals:
    """Every process's totals: the parts' hashes summed (one pipeline; per key on a cluster)."""
    pipe = client.pipeline(transaction=False)
    for key in keys.all_totals():
        pipe.hgetall(key)
    counters: dict[SeriesId, float] = {}
    hists: dict[SeriesId, Histogram] = {}
    for raw in pipe.execute():
        for f, v in raw.items():
            name, labels, extra = parse_field(_text(f))
            sid = (name, tuple(sorted(labels.items())))
            value = float(_text(v))
            if not extra:
                counters[sid] = counters.get(sid, 0.0) + value
                continue
            h = hists.setdefault(sid, Histogram())
            if extra == "sum":
                h.sum_ms += value
            elif extra == "count":
                h.count += int(value)
            elif extra.startswith("b") and extra[1:].isdigit():
                b = int(extra[1:])
                h.buckets[b] = h.buckets.get(b, 0) + int(value)
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
    # TS.MRANGE names no key and reads one node: on a cluster, ask each node holding a part.
    out: list[tuple[dict[str, str], list[tuple[int, float]]]] = []
    for node in nodes_of(client, MetricKeys(prefix).all_totals()):
        out += parse_mrange(cmd(node, *args))
    return out


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


@dataclass
class Recent:
    """The raw series of the last window: counter sums and the worst latency quantiles."""

    counters: dict[SeriesId, float] = field(default_factory=dict)
    latency: dict[tuple[Labels, str], float] = field(default_factory=dict)

    def total(self, name: str, **match: str) -> float:
        return sum(v for (n, lab), v in self.counters.items() if n == name and _has(lab, match))


def read_recent(client: redis.Redis, prefix: str, now: int, window_ms: int) -> Recent:
    recent = Recent()
    for labels, samples in mrange(client, prefix, now - window_ms, now, kind="counter", res="raw"):
        sid = _sid_from_labels(labels)
        recent.counters[sid] = recent.counters.get(sid, 0.0) + sum(v for _, v in samples)
    for labels, samples in mrange(client, prefix, now - window_ms, now, kind="latency", res="raw"):
        if samples:
            lab = _sid_from_labels(labels)[1]
            recent.latency[(lab, labels.get("stat", ""))] = max(v for _, v in samples)
    return recent


def stats_json(
    client: redis.Redis | None, registry: Registry, cfg: MetricsConfig, *, window_s: int = 60
) -> dict[str, Any]:
    """Totals across workers (Redis; this process's own when Redis fails), recent rates and
    latency quantiles over the last `window_s` seconds (raw series)."""
    now = int(time.time() * 1000)
    window_ms = window_s * 1000
    recent = Recent()
    error: str | None = None
    totals: Totals | None = None
    if client is not None:
        try:
            totals = read_totals(client, MetricKeys(cfg.key_prefix))
            recent = read_recent(client, cfg.key_prefix, now, window_ms)
        except redis.RedisError as exc:
            error = str(exc)
            totals, recent = None, Recent()
    if totals is None:
        totals = local_totals(registry)
    return {
        "as_of_ms": now,
        "source": totals.source,
        "redis_error": error,
        "window_s": window_s,
        "flush_interval_s": cfg.flush_s,
        "endpoints": _endpoints(totals, recent, window_ms),
        "requests": {
            "total": int(totals.total("http.requests")),
            "errors": int(totals.total("http.requests", status="5xx")),
            "rate_per_s": _rate(recent.total("http.requests"), window_ms),
        },
        "events": {
            "ingested": int(totals.total("events.ingested")),
            "per_s": _rate(recent.total("events.ingested"), window_ms),
            "by_type": _by_label(totals, "events.ingested", "type"),
            # Accepted events naming an item the catalog does not know (POST /v1/events).
            "unknown_item": int(totals.total("events.unknown_item")),
        },
        "recommendations": _recommendations(totals),
        "variants": _variants(totals),
        "counters": {
            field_of(n, lab): v
            for (n, lab), v in sorted(totals.counters.items())
            if n not in SHOWN_COUNTERS
        },
        "series_dropped": registry.dropped,
    }


# Counters `stats_json` shows in their own sections (the rest go under "counters").
SHOWN_COUNTERS = frozenset({
    "http.requests", "events.ingested", "events.unknown_item", "recs.served", "recs.fallbacks",
    "recs.conversions", "recs.revenue",
})  # fmt: skip


def _endpoints(totals: Totals, recent: Recent, window_ms: int) -> list[dict[str, Any]]:
    out = []
    routes = sorted({
        (dict(lab)["method"], dict(lab)["route"])
        for (n, lab) in totals.counters if n == "http.requests"
    })  # fmt: skip
    for method, route in routes:
        m = {"method": method, "route": route}
        lab = (("method", method), ("route", route))
        hist = totals.hists.get(("http.latency_ms", lab))
        out.append({
            "method": method, "route": route,
            "requests": int(totals.total("http.requests", **m)),
            "errors": int(totals.total("http.requests", status="5xx", **m)),
            "client_errors": int(totals.total("http.requests", status="4xx", **m)),
            "rate_per_s": _rate(recent.total("http.requests", **m), window_ms),
            "latency_ms": {s: _round(hist.quantile(q)) for s, q in QUANTILES} if hist else {},
            "latency_ms_recent": {s: _round(recent.latency.get((lab, s))) for s, _ in QUANTILES},
        })  # fmt: skip
    return out


def _by_label(totals: Totals, name: str, label: str) -> dict[str, int]:
    return {
        dict(lab).get(label, "?"): int(v) for (n, lab), v in totals.counters.items() if n == name
    }


def _recommendations(totals: Totals) -> dict[str, Any]:
    served = {
        src: int(totals.total("recs.served", source=src)) for src in ("cache", "inline", "fallback")
    }
    n_served = sum(served.values())
    fallbacks = {
        f"{dict(lab).get('kind', '?')}:{dict(lab).get('reason', '?')}": int(v)
        for (n, lab), v in totals.counters.items()
        if n == "recs.fallbacks"
    }
    return {
        "served": served,
        "cache_hit_rate": round(served["cache"] / n_served, 4) if n_served else None,
        "fallbacks": fallbacks,
        "fallback_rate": round(served["fallback"] / n_served, 4) if n_served else None,
    }


def _variants(totals: Totals) -> dict[str, dict[str, float]]:
    variants: dict[str, dict[str, float]] = {}
    for (n, lab), v in totals.counters.items():
        d = dict(lab)
        if n == "recs.conversions":
            variants.setdefault(d.get("variant", "?"), {})[d.get("type", "?")] = int(v)
        elif n == "recs.revenue":
            variants.setdefault(d.get("variant", "?"), {})["revenue"] = round(v, 2)
    return variants


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _has(labels: Labels, match: Mapping[str, str]) -> bool:
    d = dict(labels)
    return all(d.get(k) == v for k, v in match.items())


SERIES_LABELS = frozenset({"prefix", "metric", "kind", "res", "stat", "part"})


def _sid_from_labels(labels: Mapping[str, str]) -> SeriesId:
    rest = tuple(sorted((k, v) for k, v in labels.items() if k not in SERIES_LABELS))
    return labels.get("metric", "?"), rest


def _merge_step(stat: str, values: Sequence[float | None]) -> float | None:
    """One step of a latency quantile over the metrics parts (processes): the mean of their
    medians for p50 (as the minute compaction averages), the worst for p95 and p99."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return round(sum(present) / len(present), 4) if stat == "p50" else max(present)


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
        parts: dict[str, list[list[float | None]]] = {}  # route -> one row per metrics part
        for labels, samples in query("latency", agg, [f"stat={stat}"]):
            route = f"{labels.get('method', '')} {labels.get('route', '')}"
            parts.setdefault(route, []).append(fill(samples, None))
        for route, rows in parts.items():
            out[stat][route] = [_merge_step(stat, col) for col in zip(*rows, strict=True)]
    return {"from_ms": start, "to_ms": now, "step_s": step_s, "resolution": res,
            "timestamps": stamps, **out}  # fmt: skip
