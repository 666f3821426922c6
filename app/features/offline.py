"""Offline feature computation: the same definitions, from the event log, point-in-time correct.

`OfflineStore(fs, events)` indexes events per entity (the routing of `app.features.spec.route`,
shared with the online path) and computes any feature "as of t" straight from raw events with
numpy: the window is `Feature.window_bounds(t)` = [start, end) with end <= t, so only events
before t count. It never looks at Redis state or buckets: it is an independent interpreter of
the declarations, which is what the skew test compares the Lua interpreter against.

Exactness: counts and sums are integers (revenue in 1/10,000 GBP, rounded per line exactly
like the Lua side), means and ratios are one IEEE division of the same integers, so they match
the online values bit for bit. `decayed_sum` is a float sum in a different order than the
online buckets: equal within a relative 1e-9 (`FLOAT_RTOL`). `distinct_approx` computes the
same KMV sketch (the k smallest sha1-prefix hashes of the window's members) as the online path,
so it is identical to it; both are within the sketch's documented error of the exact count.

Event sources: the log Stream `g:{g}:log` (`events_from_log`; its entries hold the event JSON in
`data`), a JSONL file of such payloads or of API events (`events_from_jsonl`), or `Event`
objects directly.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from app.core.events import EVENT_TYPES, Event, Line, event_from_payload, parse_event
from app.core.keys import Keys
from app.features.spec import (
    REVENUE_UNITS,
    Feature,
    FeatureSet,
    Touch,
    Value,
    check_entity_id,
    resolve_names,
    route,
)
from app.ingest.log import merged_log
from app.redis.calls import text

FLOAT_RTOL = 1e-9  # decayed_sum: online vs offline (summation order differs)
KMV_HEX = 13
KMV_SPACE = 1 << 52
TYPE_CODE = {t: i for i, t in enumerate(EVENT_TYPES)}

IntArray = npt.NDArray[np.int64]


def revenue_units(lines: Iterable[Line]) -> int:
    """Sum of qty x price in 1/10,000 GBP, each line rounded half up (as lua/70_features.lua)."""
    return sum(math.floor(ln.qty * ln.price * REVENUE_UNITS + 0.5) for ln in lines)


def kmv_hash(member: str) -> int:
    return int(hashlib.sha1(member.encode()).hexdigest()[:KMV_HEX], 16)


def kmv_estimate(hashes: Iterable[int], k: int) -> float:
    """Exact below k distinct hashes, else (k - 1) / U(k) (U(k): k-th smallest, scaled)."""
    smallest = sorted(set(hashes))[:k]
    if len(smallest) < k:
        return float(len(smallest))
    return (k - 1) * KMV_SPACE / (smallest[k - 1] + 1)


def members(of: str, touch: Touch) -> list[str]:
    ev = touch.event
    if of == "user":
        return [ev.identity]
    if of == "session":
        return [ev.session_id] if ev.session_id else []
    out: list[str] = []
    for ln in touch.lines:
        m = ln.item_id if of == "item" else ln.category
        if m and m not in out:
            out.append(m)
    return out


class _Series:
    """One entity's events in time order, as numpy columns."""

    def __init__(self, touches: Sequence[Touch], kinds_of: Iterable[str]) -> None:
        order = sorted(range(len(touches)), key=lambda i: touches[i].event.ts)  # stable
        ordered = [touches[i] for i in order]
        self.ts: IntArray = np.array([t.event.ts for t in ordered], dtype=np.int64)
        self.types = np.array([TYPE_CODE[t.event.type] for t in ordered], dtype=np.int8)
        self.units: IntArray = np.array(
            [sum(ln.qty for ln in t.lines) for t in ordered], dtype=np.int64
        )
        self.revenue: IntArray = np.array([revenue_units(t.lines) for t in ordered], dtype=np.int64)
        self.members = {
            of: [[kmv_hash(m) for m in members(of, t)] for t in ordered] for of in kinds_of
        }
        self._cum: dict[tuple[tuple[str, ...], str], IntArray] = {}

    def mask(self, events: Sequence[str]) -> npt.NDArray[np.bool_]:
        return np.isin(self.types, [TYPE_CODE[e] for e in events])

    def cumulative(self, events: tuple[str, ...], value: str) -> IntArray:
        """Prefix sums of a value over matching events: window sums in O(1)."""
        key = (events, value)
        if key not in self._cum:
            m = self.mask(events).astype(np.int64)
            col = m if value == "events" else m * (self.units if value == "units" else self.revenue)
            self._cum[key] = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(col)])
        return self._cum[key]


class OfflineStore:
    """Point-in-time feature values computed from events (see the module docstring)."""

    def __init__(self, fs: FeatureSet, events: Iterable[Event]) -> None:
        self.fs = fs
        kinds: dict[str, set[str]] = {}
        for f in fs.features.values():
            if f.agg == "distinct_approx":
                kinds.setdefault(f.entity, set()).add(f.of)
        self._series = {
            ref: _Series(touches, kinds.get(ref[0], ()))
            for ref, touches in route(fs, events).items()
        }

    def entities(self, entity: str) -> list[str]:
        return sorted(eid for kind, eid in self._series if kind == entity)

    def event_times(self, entity: str, entity_id: str) -> IntArray:
        s = self._series.get((entity, entity_id))
        return s.ts if s is not None else np.zeros(0, dtype=np.int64)

    def value(self, name: str, entity_id: str, t: int) -> Value:
        f = self.fs.feature(name)
        return compute(f, self._series.get((f.entity, entity_id)), t)

    def row(
        self, entity: str, entity_id: str, t: int, names: Sequence[str] | None = None
    ) -> dict[str, Value]:
        wanted = resolve_names(self.fs, entity, names)
        check_entity_id(entity, entity_id)
        series = self._series.get((entity, entity_id))
        return {n: compute(self.fs.features[n], series, t) for n in wanted}


def _empty(f: Feature) -> Value:
    if f.agg in ("count",) or (f.agg == "sum" and f.dtype == "int"):
        return 0
    if f.agg in ("sum", "decayed_sum", "distinct_approx"):
        return 0.0
    return None  # mean, ratio, last, recency: undefined without events


def compute(f: Feature, s: _Series | None, t: int) -> Value:
    """One feature of one entity as of t, from its raw events (None: undefined)."""
    if s is None or len(s.ts) == 0:
        return _empty(f)
    start, end = f.window_bounds(t)
    lo = int(np.searchsorted(s.ts, start, side="left"))
    hi = int(np.searchsorted(s.ts, end, side="left"))  # events with ts < end (end <= t)
    if f.agg in ("count", "sum", "mean", "ratio"):
        value = "events" if f.agg in ("count", "ratio") else f.value
        cum = s.cumulative(f.events, value)
        total = int(cum[hi] - cum[lo])
        if f.agg == "count":
            return total
        if f.agg == "sum":
            return total if f.scale == 1 else total / f.scale
        den_events = f.per_events if f.agg == "ratio" else f.events
        den_cum = s.cumulative(den_events, "events")
        den = int(den_cum[hi] - den_cum[lo])
        if den == 0:
            return None
        return total / den if f.agg == "ratio" else total / den / f.scale
    sel = np.nonzero(s.mask(f.events)[lo:hi])[0] + lo
    if f.agg == "decayed_sum":
        if len(sel) == 0:
            return 0.0
        weights = np.array([f.weight(EVENT_TYPES[c]) for c in s.types[sel]], dtype=np.float64)
        ages = (t - s.ts[sel]).astype(np.float64)
        return float(np.sum(weights * np.exp2(-ages / f.half_life_ms)))
    if f.agg == "distinct_approx":
        hashes = [h for i in sel for h in s.members[f.of][i]]
        return kmv_estimate(hashes, f.k)
    if len(sel) == 0:
        return None
    newest = int(s.ts[sel].max())
    if f.agg == "recency":
        return (t - newest) / 1000
    column = s.units if f.value == "units" else s.revenue
    best = int(column[sel[s.ts[sel] == newest]].max())  # same ms: the larger value
    return best if f.scale == 1 else best / f.scale


# -- comparing online and offline -------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    feature: str
    entity_id: str
    as_of_ms: int
    online: Value
    offline: Value


def same_value(f: Feature, online: Value, offline: Value) -> bool:
    """Identical for exact aggregations; decayed sums within FLOAT_RTOL (summation order)."""
    if online is None or offline is None:
        return online is None and offline is None
    if f.agg == "decayed_sum":
        return math.isclose(online, offline, rel_tol=FLOAT_RTOL, abs_tol=1e-12)
    return online == offline and type(online) is type(offline)


def compare_rows(
    fs: FeatureSet,
    entity_id: str,
    as_of_ms: int,
    online: Mapping[str, Value],
    offline: Mapping[str, Value],
) -> list[Mismatch]:
    return [
        Mismatch(name, entity_id, as_of_ms, online[name], offline[name])
        for name in online
        if not same_value(fs.features[name], online[name], offline[name])
    ]


# -- event sources ----------------------------------------------------------------------------


def _is_payload(obj: Mapping[str, Any]) -> bool:
    items = obj.get("items")
    return "user" in obj and isinstance(items, list) and all(isinstance(i, list) for i in items)


def log_payloads(
    client: redis.Redis, keys: Keys, *, start: str = "-", end: str = "+", page: int = 5000
) -> Iterator[str]:
    """The `data` JSON of the partition logs' entries, merged oldest first by log id (as far
    back as each partition's MAXLEN kept them)."""
    for _partition, _entry_id, fields in merged_log(client, keys, start=start, end=end, page=page):
        data = fields.get(b"data")
        if data:
            yield text(data)


def events_from_log(
    client: redis.Redis, keys: Keys, *, start: str = "-", end: str = "+", page: int = 5000
) -> Iterator[Event]:
    """Events of the log Stream, oldest first."""
    for data in log_payloads(client, keys, start=start, end=end, page=page):
        yield event_from_payload(json.loads(data))


def events_from_jsonl(path: str | Path) -> Iterator[Event]:
    """One JSON object per line: a log payload or an API event (validated like the API's)."""
    far_future = int(time.time() * 1000) + 10 * 365 * 86_400_000
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            obj = json.loads(line)
            if _is_payload(obj):
                yield event_from_payload(obj)
            else:
                yield parse_event(obj, now_ms=far_future)
