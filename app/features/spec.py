"""Feature store: one definition per feature, compiled for the online and the offline path.

Features are declared once in `features/features.yaml` (see its header and docs/features.md).
`load_feature_set` validates the declarations and compiles them into a `FeatureSet`:

- `FeatureSet.spec`: a compact JSON spec that the generic Lua Functions `features_ingest` and
  `features_get` (lua/70_features.lua) interpret: the online path.
- the typed `Feature` objects that `app.features.offline` interprets over the event log: the
  offline path. Neither side has a per-feature line of code, so they cannot drift apart; the
  skew test (tests/features/test_features_skew.py) checks the two interpreters against each other.

State lives in "slots": one slot per distinct (entity, events, kind, value, bucket) that
features need; features sharing a slot share its buckets (user_purchases_7d and
user_avg_basket_value_30d share the hourly purchase count). A slot's id is a hash of its
meaning, so changing a definition starts a new slot instead of reinterpreting old state.

This module holds the definitions and what both paths share (entity ids, event routing
`route`, feature-name resolution); `app.features.online` holds the Function wrappers, the
ingestion hook and the reads, `app.features.offline` the training-table side.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml

from app.core.errors import ValidationError
from app.core.events import EVENT_TYPES, ID_RE, ID_RULE, IDENTITY_RE, Event, Line
from app.core.settings import ROOT
from app.core.units import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS, WEEK_MS

DEFAULT_PATH = ROOT / "features" / "features.yaml"
SPEC_VERSION = 1

UNIT_MS = {"s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}
DURATION_RE = re.compile(r"^([1-9][0-9]{0,6})(s|m|h|d)$")
# Calendar windows: unit length and the offset that aligns it (1970-01-01 was a Thursday, so
# UTC weeks start on Monday at (t + 3 days) mod 7 days == 0).
CALENDAR_UNITS = {"day": (DAY_MS, 0), "week": (WEEK_MS, 3 * DAY_MS)}

EntityType = Literal["user", "item", "user_category"]
ENTITY_TYPES: tuple[EntityType, ...] = ("user", "item", "user_category")
AGGS = ("count", "sum", "mean", "last", "recency", "distinct_approx", "decayed_sum", "ratio")
VALUES = ("units", "revenue")
MEMBERS = ("item", "user", "category", "session")
LINE_EVENTS = frozenset({"view", "click", "add_to_cart", "remove_from_cart", "purchase"})
LINE_ENTITIES = frozenset({"item", "user_category"})  # routed by the lines of an event
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
REVENUE_UNITS = 10_000  # revenue state: integer 1/10,000 GBP, so sums are exact
MAX_WINDOW_BUCKETS = 10_080  # e.g. 7 d at 1 min; a read touches at most this many per slot
MIN_BUCKET_MS = SECOND_MS
KMV_K = (2, 1024)
KMV_BYTES = 7  # a packed 52-bit sketch hash in the online state
CATEGORY_SEP = "~"  # user_category ids: "<user>~<category>" (ids never contain '~')
MAX_IDS = 1000  # entities per read call

AsOf = int | Literal["now", "latest"]
Value = int | float | None


# -- definitions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    kind: Literal["rolling", "calendar"]
    ms: int  # rolling: the duration; calendar: the unit's length (day, week)
    unit: str = ""  # calendar: "day" | "week"
    offset_ms: int = 0  # calendar: alignment offset (see CALENDAR_UNITS)

    def text(self) -> str:
        if self.kind == "calendar":
            return f"calendar {self.unit} (UTC)"
        return f"rolling {duration_text(self.ms)}"


@dataclass(frozen=True)
class Feature:
    name: str
    entity: EntityType
    events: tuple[str, ...]
    agg: str
    window: Window
    bucket_ms: int
    ttl_s: int
    description: str = ""
    value: str = ""  # sum / mean / last: "units" | "revenue"
    of: str = ""  # distinct_approx: "item" | "user" | "category" | "session"
    k: int = 0  # distinct_approx: KMV sketch size
    half_life_ms: int = 0  # decayed_sum
    weights: tuple[tuple[str, float], ...] = ()  # decayed_sum: (event type, weight)
    per_events: tuple[str, ...] = ()  # ratio: denominator event types

    @property
    def dtype(self) -> Literal["int", "float"]:
        if self.agg == "count" or (self.agg in ("sum", "last") and self.value == "units"):
            return "int"
        return "float"

    @property
    def scale(self) -> int:
        """Divisor from the integer state to the served unit (revenue: 1/10,000 GBP -> GBP)."""
        return REVENUE_UNITS if self.value == "revenue" else 1

    def weight(self, event_type: str) -> float:
        return dict(self.weights).get(event_type, 1.0)

    def window_bounds(self, t: int) -> tuple[int, int]:
        """The window [start, end) a read as of `t` aggregates (ms, event time, UTC epoch).

        Rolling: end is the start of t's bucket, start = end - duration. Calendar: start is
        t's UTC day (Monday for weeks) boundary. Only events with ts < end <= t count.
        """
        end = t - t % self.bucket_ms
        if self.window.kind == "calendar":
            return t - (t + self.window.offset_ms) % self.window.ms, end
        return end - self.window.ms, end

    def granularity(self) -> str:
        return f"{self.window.text()} at {duration_text(self.bucket_ms)} buckets, event time, UTC"


@dataclass(frozen=True)
class Slot:
    """A unit of online state: per-bucket aggregates one or more features read."""

    id: str
    entity: EntityType
    kind: Literal["sum", "dec", "max", "last", "kmv"]
    events: tuple[tuple[str, float], ...]  # (event type, weight), sorted
    value: str  # sum / last: "events" | "units" | "revenue"
    bucket_ms: int
    half_life_ms: int = 0
    of: str = ""
    k: int = 0
    retention_ms: int = 0  # buckets older than (newest event - retention) are trimmed

    def identity(self) -> dict[str, Any]:
        """What the slot's stored buckets mean (its id hashes this, not the retention)."""
        return {
            "e": self.entity, "k": self.kind, "ev": [list(x) for x in self.events],
            "val": self.value, "b": self.bucket_ms, "hl": self.half_life_ms, "of": self.of,
            "kk": self.k,
        }  # fmt: skip


@dataclass(frozen=True, eq=False)
class FeatureSet:
    features: Mapping[str, Feature]
    slots: Mapping[str, Slot]
    feature_slots: Mapping[str, tuple[str, ...]]
    history_ms: int
    entity_ttl_s: Mapping[str, int]
    spec: str  # the compiled JSON both Lua Functions take as ARGV[1]
    version: str  # sha256 of the spec, 12 hex digits
    source: str = ""

    def names(self, entity: str) -> list[str]:
        return [f.name for f in self.features.values() if f.entity == entity]

    def max_buckets(self, entity: str) -> int:
        """The most buckets one entity's packed state can hold: per slot those within its
        retention (every write drops older ones; docs/features.md, "Memory")."""
        slots = [s for s in self.slots.values() if s.entity == entity]
        return sum(s.retention_ms // s.bucket_ms + 1 for s in slots)

    def max_state_bytes(self, entity: str) -> int:
        """The most bytes one entity's packed state (MessagePack, lua/70_features.lua) can take:
        every slot full (max_buckets) with each value at its widest encoding. A bound, not a
        typical size (docs/features.md, "Memory")."""
        total = 16  # array header, format, newest ts (uint64), map header
        for s in self.slots.values():
            if s.entity != entity:
                continue
            value = {"sum": 9, "dec": 9, "max": 5, "last": 15}.get(s.kind, 3 + KMV_BYTES * s.k)
            # slot id key, [h, ages, values] headers, h; per bucket an age (uint16) and a value
            total += 29 + (s.retention_ms // s.bucket_ms + 1) * (3 + value)
        return total

    def entities(self) -> list[str]:
        return [e for e in ENTITY_TYPES if self.names(e)]

    def event_types(self, entity: str) -> frozenset[str]:
        return frozenset(t for s in self.slots.values() if s.entity == entity for t, _ in s.events)

    @cached_property
    def routed_types(self) -> Mapping[str, frozenset[str]]:
        """Per entity type, the event types its features use (route() asks per event)."""
        return {e: self.event_types(e) for e in ENTITY_TYPES}

    def feature(self, name: str) -> Feature:
        try:
            return self.features[name]
        except KeyError:
            raise ValidationError("names", f"unknown feature {name!r}") from None

    def describe(self) -> list[dict[str, Any]]:
        """The definitions as JSON-able dicts (GET /v1/features, docs)."""
        out = []
        for f in self.features.values():
            item: dict[str, Any] = {
                "name": f.name, "entity": f.entity, "events": list(f.events), "agg": f.agg,
                "window": f.window.text(), "bucket": duration_text(f.bucket_ms),
                "granularity": f.granularity(), "ttl": duration_text(f.ttl_s * 1000),
                "dtype": f.dtype, "description": f.description,
            }  # fmt: skip
            for name in ("value", "of", "k", "per_events"):
                if getattr(f, name):
                    item[name] = list(f.per_events) if name == "per_events" else getattr(f, name)
            if f.half_life_ms:
                item["half_life"] = duration_text(f.half_life_ms)
                item["weights"] = dict(f.weights)
            out.append(item)
        return out


def duration_ms(raw: Any, where: str) -> int:
    if not isinstance(raw, str) or not (m := DURATION_RE.match(raw.strip())):
        raise ValidationError(where, f"must be a duration like 90s, 5m, 1h, 7d; got {raw!r}")
    return int(m[1]) * UNIT_MS[m[2]]


def duration_text(ms: int) -> str:
    """7d, 24h, 90m, 5m, 30s (days from two days up)."""
    for unit in ("d", "h", "m", "s"):
        if ms % UNIT_MS[unit] == 0 and (unit != "d" or ms >= 2 * DAY_MS):
            return f"{ms // UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


def _event_list(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ValidationError(where, "must be a non-empty list of event types")
    bad = [e for e in raw if e not in EVENT_TYPES]
    if bad:
        raise ValidationError(where, f"unknown event type(s) {bad}; known: {list(EVENT_TYPES)}")
    if len(set(raw)) != len(raw):
        raise ValidationError(where, "lists an event type twice")
    return tuple(str(e) for e in raw)


def _window(raw: Any, where: str) -> Window:
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise ValidationError(where, "must be {rolling: <duration>} or {calendar: day|week}")
    ((kind, value),) = raw.items()
    if kind == "rolling":
        return Window("rolling", duration_ms(value, f"{where}.rolling"))
    if kind == "calendar":
        if value not in CALENDAR_UNITS:
            raise ValidationError(f"{where}.calendar", "must be day or week (UTC)")
        unit_ms, offset = CALENDAR_UNITS[value]
        return Window("calendar", unit_ms, str(value), offset)
    raise ValidationError(where, "must be {rolling: <duration>} or {calendar: day|week}")


FEATURE_KEYS = frozenset({
    "name", "description", "entity", "events", "agg", "window", "bucket", "ttl", "value", "of",
    "k", "half_life", "weights", "per_events",
})  # fmt: skip


def _feature_head(raw: Any, index: int) -> tuple[str, str, EntityType, str]:
    """Name (and the `where` of later errors), entity and aggregation of a declaration."""
    if not isinstance(raw, Mapping):
        raise ValidationError(f"features[{index}]", "must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(f"features[{index}].name", "must be snake_case, 1-64 characters")
    where = f"features[{name}]"
    unknown = set(raw) - FEATURE_KEYS
    if unknown:
        raise ValidationError(where, f"unknown field(s) {sorted(unknown)}")
    entity = raw.get("entity")
    if entity not in ENTITY_TYPES:
        raise ValidationError(f"{where}.entity", f"must be one of {list(ENTITY_TYPES)}")
    agg = raw.get("agg")
    if agg not in AGGS:
        raise ValidationError(f"{where}.agg", f"must be one of {list(AGGS)}")
    return name, where, entity, agg


def _feature_timing(
    raw: Mapping[str, Any], where: str, history_ms: int, raise_ttl: bool
) -> tuple[Window, int, int]:
    """Window, bucket ms and TTL ms: the bucket divides a day and the window, and the TTL
    covers window + bucket + history (lifted to it with `raise_ttl`)."""
    window = _window(raw.get("window"), f"{where}.window")
    bucket = duration_ms(raw.get("bucket"), f"{where}.bucket")
    if bucket < MIN_BUCKET_MS or DAY_MS % bucket:
        raise ValidationError(f"{where}.bucket", "must divide one day (UTC days are whole buckets)")
    if window.ms % bucket:
        raise ValidationError(f"{where}.window", "must be a whole number of buckets")
    if window.ms // bucket > MAX_WINDOW_BUCKETS:
        raise ValidationError(
            f"{where}.bucket", f"at most {MAX_WINDOW_BUCKETS} buckets per window (read cost)"
        )
    ttl_ms = duration_ms(raw.get("ttl"), f"{where}.ttl")
    needed = window.ms + bucket + history_ms
    if raise_ttl:
        ttl_ms = max(ttl_ms, needed)
    if ttl_ms < needed:
        raise ValidationError(
            f"{where}.ttl",
            f"must be >= window + bucket + history ({duration_text(needed)}): a shorter TTL "
            "would expire state that a window still covers",
        )
    return window, bucket, ttl_ms


def _distinct_params(
    raw: Mapping[str, Any], where: str, events: tuple[str, ...]
) -> tuple[str, int]:
    """`of` and `k` of a distinct_approx feature."""
    of = raw.get("of", "")
    if of not in MEMBERS:
        raise ValidationError(f"{where}.of", f"must be one of {list(MEMBERS)}")
    if of in ("item", "category") and not set(events) <= LINE_EVENTS:
        raise ValidationError(f"{where}.events", f"{of} members come from item lines")
    k = raw.get("k", 64)
    if isinstance(k, bool) or not isinstance(k, int) or not KMV_K[0] < k <= KMV_K[1]:
        raise ValidationError(f"{where}.k", f"must be an integer in ({KMV_K[0]}, {KMV_K[1]}]")
    return of, k


def _decay_params(
    raw: Mapping[str, Any], where: str, events: tuple[str, ...]
) -> tuple[int, tuple[tuple[str, float], ...]]:
    """Half-life ms and per-type weights (1.0 where not given) of a decayed_sum feature."""
    half_life = duration_ms(raw.get("half_life"), f"{where}.half_life")
    raw_w = raw.get("weights") or {}
    if not isinstance(raw_w, Mapping):
        raise ValidationError(f"{where}.weights", "must map event types to numbers")
    for etype, w in raw_w.items():
        if etype not in events:
            raise ValidationError(f"{where}.weights", f"{etype!r} is not in events")
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w <= 1e6:
            raise ValidationError(f"{where}.weights", f"{etype}: must be a number in (0, 1e6]")
    return half_life, tuple(sorted((e, float(raw_w.get(e, 1.0))) for e in events))


def _agg_params(
    raw: Mapping[str, Any], where: str, agg: str, entity: str, events: tuple[str, ...]
) -> dict[str, Any]:
    """The aggregation's own fields (value, of, k, half_life, weights, per_events), checked;
    a field the aggregation does not use is refused."""
    out: dict[str, Any] = {"value": "", "of": "", "k": 0, "half_life_ms": 0, "weights": (),
                           "per_events": ()}  # fmt: skip
    if agg in ("sum", "mean", "last"):
        out["value"] = raw.get("value", "")
        if out["value"] not in VALUES:
            raise ValidationError(f"{where}.value", f"must be one of {list(VALUES)}")
        if not set(events) <= LINE_EVENTS:
            raise ValidationError(f"{where}.events", "values come from item lines")
    elif "value" in raw:
        raise ValidationError(f"{where}.value", f"is not used by {agg}")
    if agg == "distinct_approx":
        out["of"], out["k"] = _distinct_params(raw, where, events)
    if agg == "decayed_sum":
        out["half_life_ms"], out["weights"] = _decay_params(raw, where, events)
    if agg == "ratio":
        out["per_events"] = _event_list(raw.get("per_events"), f"{where}.per_events")
        if entity in LINE_ENTITIES and not set(out["per_events"]) <= LINE_EVENTS:
            raise ValidationError(f"{where}.per_events", f"{entity} features take item events")
    fields = {"of": "of", "k": "k", "half_life": "half_life_ms", "weights": "weights",
              "per_events": "per_events"}  # fmt: skip
    for extra, param in fields.items():
        if extra in raw and not out[param]:
            raise ValidationError(f"{where}.{extra}", f"is not used by {agg}")
    return out


def parse_feature(raw: Any, index: int, history_ms: int, *, raise_ttl: bool = False) -> Feature:
    """One declaration -> Feature, or ValidationError naming the offending field.

    `raise_ttl`: lift a TTL shorter than window + bucket + history to that instead of refusing
    it (used with an overridden, longer history)."""
    name, where, entity, agg = _feature_head(raw, index)
    events = _event_list(raw.get("events"), f"{where}.events")
    window, bucket, ttl_ms = _feature_timing(raw, where, history_ms, raise_ttl)
    if entity in LINE_ENTITIES and not set(events) <= LINE_EVENTS:
        raise ValidationError(f"{where}.events", f"{entity} features take item events only")
    params = _agg_params(raw, where, agg, entity, events)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ValidationError(f"{where}.description", "must be a string")
    return Feature(
        name=name, entity=entity, events=events, agg=agg, window=window, bucket_ms=bucket,
        ttl_s=ttl_ms // 1000, description=" ".join(description.split()), **params,
    )  # fmt: skip


def _slot_shapes(f: Feature) -> list[tuple[str, tuple[str, ...], str]]:
    """(kind, events, value) of the slots a feature reads, in the order Lua expects."""
    if f.agg == "count":
        return [("sum", f.events, "events")]
    if f.agg == "sum":
        return [("sum", f.events, f.value)]
    if f.agg == "mean":
        return [("sum", f.events, f.value), ("sum", f.events, "events")]
    if f.agg == "ratio":
        return [("sum", f.events, "events"), ("sum", f.per_events, "events")]
    if f.agg == "last":
        return [("last", f.events, f.value)]
    if f.agg == "recency":
        return [("max", f.events, "")]
    if f.agg == "decayed_sum":
        return [("dec", f.events, "")]
    return [("kmv", f.events, "")]


def _slot(f: Feature, kind: str, events: tuple[str, ...], value: str) -> Slot:
    weighted = (
        tuple(sorted(f.weights)) if kind == "dec" else tuple(sorted((e, 1.0) for e in events))
    )
    probe = Slot(
        id="", entity=f.entity, kind=kind, events=weighted, value=value,  # type: ignore[arg-type]
        bucket_ms=f.bucket_ms, half_life_ms=f.half_life_ms if kind == "dec" else 0,
        of=f.of if kind == "kmv" else "", k=f.k if kind == "kmv" else 0,
    )  # fmt: skip
    ident = json.dumps(probe.identity(), sort_keys=True, separators=(",", ":"))
    return replace(probe, id=hashlib.sha1(ident.encode()).hexdigest()[:8])


def compile_definitions(raw: Any, *, history_ms: int | None = None, source: str = "") -> FeatureSet:
    """Validate the YAML document (already parsed) and compile it. `history_ms` overrides the
    file's `history` (tests and analyses use a long one to read far back); TTLs are then raised
    to cover it. Slot ids and feature semantics do not depend on it."""
    if not isinstance(raw, Mapping):
        raise ValidationError("features.yaml", "must be a mapping with version and features")
    if raw.get("version") != SPEC_VERSION:
        raise ValidationError("version", f"must be {SPEC_VERSION}")
    if raw.get("time", "event") != "event":
        raise ValidationError("time", "only event time is supported")
    if raw.get("timezone", "UTC") != "UTC":
        raise ValidationError("timezone", "only UTC is supported (bucket and day boundaries)")
    history = duration_ms(raw.get("history", "1d"), "history") if history_ms is None else history_ms
    for gone in ("trim_every", "trim_min_fields"):
        if gone in raw:
            raise ValidationError(gone, "is no longer used (every write trims); remove it")
    items = raw.get("features")
    if not isinstance(items, list) or not items:
        raise ValidationError("features", "must be a non-empty list")

    features: dict[str, Feature] = {}
    for i, item in enumerate(items):
        f = parse_feature(item, i, history, raise_ttl=history_ms is not None)
        if f.name in features:
            raise ValidationError(f"features[{f.name}].name", "is declared twice")
        features[f.name] = f

    slots: dict[str, Slot] = {}
    retention: dict[str, int] = defaultdict(int)
    feature_slots: dict[str, tuple[str, ...]] = {}
    for f in features.values():
        ids = []
        for kind, events, value in _slot_shapes(f):
            slot = _slot(f, kind, events, value)
            known = slots.get(slot.id)
            if known is not None and known.identity() != slot.identity():
                raise ValidationError(f"features[{f.name}]", "slot id collision; rename")
            slots[slot.id] = slot
            # Reads at t >= newest event - history need buckets from t - bucket - window on.
            retention[slot.id] = max(retention[slot.id], f.window.ms + f.bucket_ms + history)
            ids.append(slot.id)
        feature_slots[f.name] = tuple(ids)
    slots = {sid: replace(s, retention_ms=retention[sid]) for sid, s in slots.items()}
    ttl: dict[str, int] = {e: max((f.ttl_s for f in features.values() if f.entity == e), default=0)
           for e in ENTITY_TYPES}  # fmt: skip

    spec_obj = {
        "v": SPEC_VERSION,
        "hist": history,
        "ttl": ttl,
        "slots": [
            {"id": s.id, "e": s.entity, "k": s.kind, "ev": dict(s.events),
             "val": s.value or "events", "b": s.bucket_ms, "ret": s.retention_ms,
             **({"hl": s.half_life_ms} if s.kind == "dec" else {}),
             **({"of": s.of, "kk": s.k} if s.kind == "kmv" else {})}
            for s in slots.values()
        ],
        "feats": [
            {"n": f.name, "e": f.entity, "a": f.agg, "s": list(feature_slots[f.name]),
             "cal": 1 if f.window.kind == "calendar" else 0, "w": f.window.ms, "b": f.bucket_ms,
             "off": f.window.offset_ms, "sc": f.scale}
            for f in features.values()
        ],
    }  # fmt: skip
    spec = json.dumps(spec_obj, separators=(",", ":"), sort_keys=True)
    return FeatureSet(
        features=features, slots=slots, feature_slots=feature_slots, history_ms=history,
        entity_ttl_s=ttl, spec=spec,
        version=hashlib.sha256(spec.encode()).hexdigest()[:12], source=source,
    )  # fmt: skip


def load_feature_set(
    path: str | Path | None = None, *, history_ms: int | None = None
) -> FeatureSet:
    p = Path(path) if path else DEFAULT_PATH
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValidationError("features.yaml", f"cannot read {p}: {exc}") from exc
    return compile_definitions(raw, history_ms=history_ms, source=str(p))


_DEFAULT: dict[str, FeatureSet] = {}


def default_feature_set() -> FeatureSet:
    """features/features.yaml (or $RETAIL_FEATURES), loaded once per process."""
    path = os.environ.get("RETAIL_FEATURES") or str(DEFAULT_PATH)
    if path not in _DEFAULT:
        _DEFAULT[path] = load_feature_set(path)
    return _DEFAULT[path]


# -- entities, keys and routing -----------------------------------------------------------------


def split_user_category(entity_id: str) -> tuple[str, str]:
    user, sep, category = entity_id.partition(CATEGORY_SEP)
    if not sep or not category:
        raise ValidationError("id", "a user_category id is '<user>~<category>'")
    return user, category


def check_entity_id(entity: str, entity_id: str) -> str:
    if entity not in ENTITY_TYPES:
        raise ValidationError("entity_type", f"must be one of {list(ENTITY_TYPES)}")
    main = entity_id
    if entity == "user_category":
        main, category = split_user_category(entity_id)
        if len(category) > 64 or not category.isprintable():
            raise ValidationError("id", "the category must be 1-64 printable characters")
    if not (IDENTITY_RE if entity != "item" else ID_RE).match(main):
        raise ValidationError("id", ID_RULE)
    return entity_id


@dataclass(frozen=True, slots=True)
class Touch:
    """One event as one entity sees it: the lines routed to that entity."""

    event: Event
    lines: tuple[Line, ...]


EntityRef = tuple[str, str]  # (entity type, entity id)
Routed = dict[EntityRef, list[Touch]]  # route(): entity -> the event's touches of it


def route(fs: FeatureSet, events: Iterable[Event]) -> dict[EntityRef, list[Touch]]:
    """Which entities each event touches, with its lines for each (shared by both paths).

    user: the event's identity, all lines. item: each item of the lines, that item's lines.
    user_category: each non-empty category of the lines, that category's lines. Events whose
    type no feature of the entity type uses are left out. Per entity, input order is kept.
    """
    wanted = fs.routed_types
    out: dict[EntityRef, list[Touch]] = defaultdict(list)
    for ev in events:
        if ev.type in wanted["user"]:
            out[("user", ev.identity)].append(Touch(ev, ev.lines))
        if not ev.lines:
            continue
        if ev.type in wanted["item"]:
            by_item: dict[str, list[Line]] = defaultdict(list)
            for ln in ev.lines:
                by_item[ln.item_id].append(ln)
            for item, lines in by_item.items():
                out[("item", item)].append(Touch(ev, tuple(lines)))
        if ev.type in wanted["user_category"]:
            by_cat: dict[str, list[Line]] = defaultdict(list)
            for ln in ev.lines:
                if ln.category:
                    by_cat[ln.category].append(ln)
            for cat, lines in by_cat.items():
                ref = ("user_category", f"{ev.identity}{CATEGORY_SEP}{cat}")
                out[ref].append(Touch(ev, tuple(lines)))
    return out


def resolve_names(fs: FeatureSet, entity: str, names: Sequence[str] | None) -> list[str]:
    if entity not in ENTITY_TYPES:
        raise ValidationError("entity_type", f"must be one of {list(ENTITY_TYPES)}")
    if not names:
        all_names = fs.names(entity)
        if not all_names:
            raise ValidationError("entity_type", f"no features are declared for {entity}")
        return all_names
    out: list[str] = []
    for name in names:
        f = fs.feature(name)
        if f.entity != entity:
            raise ValidationError("names", f"{name} is a {f.entity} feature, not {entity}")
        if name not in out:
            out.append(name)
    return out
