"""Recommendation experiments: definitions, deterministic assignment, exposures, attribution.

An experiment splits the traffic of some surfaces between variants (e.g. 98/2). A variant is a
model version and/or `recommend` weights (and optionally the repurchase rule or the diversity
cap). Definitions live in one capped HASH (`g:{g}:exp:defs`, id -> JSON); every process keeps
a copy refreshed every `refresh_s`.

Assignment: bucket = first 8 bytes of sha256("<experiment>:<salt>:<user>") mod 10,000; variants
own consecutive bucket ranges in their declared order, sized by their traffic percent (0.01 %
resolution). Same user, same definition: same variant, in every process. Growing the LAST
variant (98/2 -> 95/5) keeps every user already in it; change `salt` to reshuffle everyone.
When several running experiments cover a surface, the oldest one assigns it.

Metrics (per variant, lua/65_experiments.lua `exp_track`, experiment slot `x:{<id>}`):
  exposures  lists served (buffered in process, flushed every second with the exposure log)
  clicks     click events whose props carry this list's `variant` (and `rec_id`)
  carts      add_to_cart events, likewise
  purchases  purchase events, likewise; revenue = sum of qty * price of their lines
as totals (HASH) and per-minute TimeSeries; attribution runs in the ingestion's phase 2
(`app/recs/hook.py`), so a duplicate event never counts twice. The storefront echoes the
response's `tracking` object ({"rec_id", "variant": "<experiment>:<variant>"}) in the props
of the events the list leads to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from app.core.errors import ValidationError
from app.core.events import ID_RE, ID_RULE, Event
from app.recs import calls as rec_calls
from app.recs.calls import Exposure, Increment
from app.recs.keys import METRICS, NAME_RE, SURFACES, RecKeys
from app.redis import calls

log = logging.getLogger("retail.experiments")

BUCKETS = 10_000
MAX_EXPERIMENTS = 100
MAX_VARIANTS = 10
STATUSES = ("running", "paused", "stopped")
EVENT_METRIC = {"click": "clicks", "add_to_cart": "carts", "purchase": "purchases"}
MAX_PENDING = 20_000  # exposures buffered while Redis is unreachable (oldest dropped beyond)


@dataclass(frozen=True)
class ExpConfig:
    retention_ms: int = 90 * 86_400_000  # per-minute series kept 90 days
    ttl_s: int = 400 * 86_400  # every experiment key: 400 days after its last write
    log_maxlen: int = 100_000  # exposure log entries kept per experiment (approximate)
    bucket_ms: int = 60_000
    refresh_s: float = 2.0


@dataclass(frozen=True)
class Variant:
    name: str
    traffic: float  # percent of the experiment's traffic
    model: str | None = None  # model version (None: the current one)
    weights: Mapping[str, float] = field(default_factory=dict)  # over the defaults
    repurchase: bool | None = None
    per_category: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "traffic": self.traffic, "model": self.model,
                "weights": dict(self.weights), "repurchase": self.repurchase,
                "per_category": self.per_category}  # fmt: skip


@dataclass(frozen=True)
class Experiment:
    id: str
    variants: tuple[Variant, ...]
    status: str = "running"
    surfaces: tuple[str, ...] = SURFACES
    salt: str = ""
    description: str = ""
    created_ms: int = 0
    updated_ms: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "surfaces": list(self.surfaces),
                "salt": self.salt, "description": self.description,
                "variants": [v.as_json() for v in self.variants],
                "created_ms": self.created_ms, "updated_ms": self.updated_ms}  # fmt: skip

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


@dataclass(frozen=True)
class Assignment:
    experiment: str | None
    variant: str
    model: str | None = None
    weights: Mapping[str, float] = field(default_factory=dict)
    repurchase: bool | None = None
    per_category: int | None = None

    @property
    def label(self) -> str:
        """What the storefront echoes as `props.variant`: '<experiment>:<variant>'."""
        return f"{self.experiment}:{self.variant}" if self.experiment else self.variant


DEFAULT = Assignment(None, "default")


# -- assignment (pure) ---------------------------------------------------------------------------


def bucket_of(experiment: str, salt: str, user: str) -> int:
    digest = hashlib.sha256(f"{experiment}:{salt}:{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def choose(exp: Experiment, user: str) -> Variant:
    b = bucket_of(exp.id, exp.salt or exp.id, user)
    edge = 0
    for v in exp.variants:
        edge += round(v.traffic * BUCKETS / 100)
        if b < edge:
            return v
    return exp.variants[-1]  # rounding: the last variant takes the remainder


def assign(experiments: Sequence[Experiment], user: str, surface: str) -> Assignment:
    for exp in experiments:  # oldest first
        if exp.status == "running" and surface in exp.surfaces:
            v = choose(exp, user)
            return Assignment(exp.id, v.name, v.model, v.weights, v.repurchase, v.per_category)
    return DEFAULT


# -- definitions (pure validation) ---------------------------------------------------------------


def _variant(obj: Any, i: int, weight_names: frozenset[str]) -> Variant:
    where = f"variants[{i}]"
    if not isinstance(obj, Mapping):
        raise ValidationError(where, "must be an object")
    unknown = set(obj) - {"name", "traffic", "model", "weights", "repurchase", "per_category"}
    if unknown:
        raise ValidationError(where, f"unknown field(s) {', '.join(sorted(unknown))}")
    name = obj.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(f"{where}.name", "must be 1-48 characters of letters, digits, ._-")
    traffic = obj.get("traffic")
    if isinstance(traffic, bool) or not isinstance(traffic, int | float):
        raise ValidationError(f"{where}.traffic", "must be a number (percent)")
    if not math.isfinite(traffic) or not 0 < traffic <= 100:
        raise ValidationError(f"{where}.traffic", "must be > 0 and <= 100 (percent)")
    model = obj.get("model")
    if model is not None and (not isinstance(model, str) or not NAME_RE.match(model)):
        raise ValidationError(f"{where}.model", "must be a model version or null")
    weights = obj.get("weights") or {}
    if not isinstance(weights, Mapping):
        raise ValidationError(f"{where}.weights", "must be an object name -> number")
    clean: dict[str, float] = {}
    for wname, value in weights.items():
        if wname not in weight_names:
            raise ValidationError(f"{where}.weights", f"unknown weight {wname!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"{where}.weights.{wname}", "must be a number")
        if not math.isfinite(value) or not 0 <= value <= 100:
            raise ValidationError(f"{where}.weights.{wname}", "must be between 0 and 100")
        clean[str(wname)] = float(value)
    rep = obj.get("repurchase")
    if rep is not None and not isinstance(rep, bool):
        raise ValidationError(f"{where}.repurchase", "must be true, false or null")
    per_cat = obj.get("per_category")
    if per_cat is not None and (
        isinstance(per_cat, bool) or not isinstance(per_cat, int) or not 0 <= per_cat <= 50
    ):
        raise ValidationError(f"{where}.per_category", "must be an integer 0..50 or null")
    return Variant(name, float(traffic), model, clean, rep, per_cat)


def parse_experiment(
    exp_id: str,
    body: Any,
    weight_names: frozenset[str],
    *,
    now_ms: int,
    existing: Experiment | None = None,
) -> Experiment:
    """A definition from a request body (create, or replace keeping `created_ms`)."""
    if not ID_RE.match(exp_id):
        raise ValidationError("id", ID_RULE)
    if not isinstance(body, Mapping):
        raise ValidationError("body", "must be a JSON object")
    unknown = set(body) - {"id", "variants", "status", "surfaces", "salt", "description"}
    if unknown:
        raise ValidationError("body", f"unknown field(s) {', '.join(sorted(unknown))}")
    raw_variants = body.get("variants")
    if existing is not None and raw_variants is None:
        variants = existing.variants
    else:
        if not isinstance(raw_variants, list) or not 1 <= len(raw_variants) <= MAX_VARIANTS:
            raise ValidationError("variants", f"must be a list of 1-{MAX_VARIANTS} variants")
        variants = tuple(_variant(v, i, weight_names) for i, v in enumerate(raw_variants))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValidationError("variants", "variant names must be unique")
    total = sum(v.traffic for v in variants)
    if abs(total - 100.0) > 1e-6:
        raise ValidationError("variants", f"traffic must add up to 100 (percent), got {total:g}")
    status = body.get("status", existing.status if existing else "running")
    if status not in STATUSES:
        raise ValidationError("status", f"must be one of {', '.join(STATUSES)}")
    surfaces = body.get("surfaces", list(existing.surfaces) if existing else list(SURFACES))
    if not isinstance(surfaces, list) or not surfaces or any(s not in SURFACES for s in surfaces):
        raise ValidationError("surfaces", f"must be a non-empty list of {', '.join(SURFACES)}")
    salt = body.get("salt", existing.salt if existing else exp_id)
    if not isinstance(salt, str) or not 1 <= len(salt) <= 64:
        raise ValidationError("salt", "must be a string of 1-64 characters")
    desc = body.get("description", existing.description if existing else "")
    if not isinstance(desc, str) or len(desc) > 500:
        raise ValidationError("description", "must be a string of at most 500 characters")
    return Experiment(
        id=exp_id, variants=variants, status=str(status),
        surfaces=tuple(dict.fromkeys(str(s) for s in surfaces)), salt=salt, description=desc,
        created_ms=existing.created_ms if existing else now_ms, updated_ms=now_ms,
    )  # fmt: skip


def experiment_from_json(raw: str | bytes) -> Experiment:
    d = json.loads(raw)
    return Experiment(
        id=d["id"],
        variants=tuple(
            Variant(
                v["name"],
                float(v["traffic"]),
                v.get("model"),
                v.get("weights") or {},
                v.get("repurchase"),
                v.get("per_category"),
            )
            for v in d["variants"]
        ),
        status=d.get("status", "running"),
        surfaces=tuple(d.get("surfaces") or SURFACES),
        salt=d.get("salt") or d["id"],
        description=d.get("description", ""),
        created_ms=int(d.get("created_ms", 0)),
        updated_ms=int(d.get("updated_ms", 0)),
    )


# -- report (pure) -------------------------------------------------------------------------------


def _z_test(x1: float, n1: float, x2: float, n2: float) -> tuple[float, float] | None:
    """Two-proportion z-test: (z, two-sided p) of rate 2 vs rate 1; None without data."""
    if n1 <= 0 or n2 <= 0:
        return None
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return None
    z = (x2 / n2 - x1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def summarize(exp: Experiment, totals: Mapping[str, float]) -> list[dict[str, Any]]:
    rows = []
    control: dict[str, float] | None = None
    for v in exp.variants:
        c = {m: float(totals.get(f"{v.name}:{m}", 0.0)) for m in METRICS}
        n = c["exposures"]
        row: dict[str, Any] = {
            "variant": v.name, "label": f"{exp.id}:{v.name}", "traffic": v.traffic,
            "model": v.model, "counts": {m: (c[m] if m == "revenue" else int(c[m]))
                                         for m in METRICS},
            "ctr": c["clicks"] / n if n else None,
            "cart_rate": c["carts"] / n if n else None,
            "conversion": c["purchases"] / n if n else None,
            "revenue_per_exposure": c["revenue"] / n if n else None,
        }  # fmt: skip
        if control is None:
            control = c
        else:
            for metric, name in (("clicks", "ctr"), ("purchases", "conversion")):
                t = _z_test(control[metric], control["exposures"], c[metric], n)
                row[f"{name}_vs_control"] = (
                    None if t is None else {"z": round(t[0], 3), "p_value": round(t[1], 4)}
                )
        rows.append(row)
    return rows


# -- the store -----------------------------------------------------------------------------------


class ExperimentStore:
    """Definitions (cached), assignment, exposure buffer. Thread-safe."""

    def __init__(self, client: redis.Redis, keys: RecKeys, cfg: ExpConfig | None = None) -> None:
        self.client = client
        self.keys = keys
        self.cfg = cfg or ExpConfig()
        self._defs: list[Experiment] = []
        self._loaded_at = 0.0
        self._lock = threading.Lock()
        self._pending: list[tuple[str, Exposure]] = []
        self.dropped_exposures = 0

    # definitions
    def refresh(self) -> None:
        raw = self.client.hgetall(self.keys.experiments)
        defs = []
        for value in raw.values():
            try:
                defs.append(experiment_from_json(value))
            except (ValueError, KeyError, TypeError):
                log.warning("skipping a damaged experiment definition")
        defs.sort(key=lambda e: (e.created_ms, e.id))
        with self._lock:
            self._defs = defs
            self._loaded_at = time.monotonic()

    def maybe_refresh(self) -> None:
        if time.monotonic() - self._loaded_at >= self.cfg.refresh_s:
            try:
                self.refresh()
            except redis.RedisError as exc:
                log.debug("experiment refresh failed: %s", exc)
                self._loaded_at = time.monotonic()  # retry after refresh_s, not every call

    def all(self) -> list[Experiment]:
        return list(self._defs)

    def get(self, exp_id: str) -> Experiment | None:
        raw = self.client.hget(self.keys.experiments, exp_id)
        return experiment_from_json(raw) if raw is not None else None

    def put(self, exp: Experiment) -> None:
        """Store a definition (create or replace); at most MAX_EXPERIMENTS are kept."""
        key = self.keys.experiments
        if not self.client.hexists(key, exp.id) and self.client.hlen(key) >= MAX_EXPERIMENTS:
            raise ValidationError(
                "id", f"at most {MAX_EXPERIMENTS} experiments: delete a stopped one first"
            )
        self.client.hset(key, exp.id, json.dumps(exp.as_json(), separators=(",", ":")))
        self.refresh()

    def delete(self, exp_id: str) -> bool:
        """Remove a definition and its metrics."""
        keys = [self.keys.exp_counts(exp_id), self.keys.exp_log(exp_id)]
        exp = self.get(exp_id)
        if exp is None:
            return False
        keys += [self.keys.exp_series(exp_id, v.name, m) for v in exp.variants for m in METRICS]
        self.client.hdel(self.keys.experiments, exp_id)
        self.client.unlink(*keys)
        self.refresh()
        return True

    def assign(self, user: str, surface: str) -> Assignment:
        return assign(self._defs, user, surface)

    def resolve(self, label: str) -> tuple[Experiment, Variant] | None:
        """'<experiment>:<variant>' -> the known experiment and variant (None: unknown)."""
        exp_id, sep, name = label.rpartition(":")
        if not sep:
            return None
        exp = next((e for e in self._defs if e.id == exp_id), None)
        if exp is None:
            return None
        v = exp.variant(name)
        return None if v is None else (exp, v)

    # exposures
    def record_exposure(self, assignment: Assignment, exposure: Exposure) -> None:
        if assignment.experiment is None:
            return
        with self._lock:
            self._pending.append((assignment.experiment, exposure))
            if len(self._pending) > MAX_PENDING:
                drop = len(self._pending) - MAX_PENDING
                del self._pending[:drop]
                self.dropped_exposures += drop

    def flush(self) -> int:
        """Send buffered exposures (one `exp_track` per experiment); returns how many."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return 0
        by_exp: dict[str, list[Exposure]] = {}
        for exp_id, e in pending:
            by_exp.setdefault(exp_id, []).append(e)
        pipe = self.client.pipeline(transaction=False)
        for exp_id, exposures in by_exp.items():
            incs = [Increment(e.variant, "exposures", e.ts_ms, 1.0) for e in exposures]
            calls.fcall(pipe, "exp_track", self.track_args(exp_id, incs, exposures))
        try:
            pipe.execute()
        except redis.RedisError:
            with self._lock:  # put them back (bounded) for the next flush
                self._pending = pending + self._pending
                if len(self._pending) > MAX_PENDING:
                    drop = len(self._pending) - MAX_PENDING
                    del self._pending[:drop]
                    self.dropped_exposures += drop
            raise
        return len(pending)

    def track_args(
        self, exp_id: str, incs: Sequence[Increment], exposures: Sequence[Exposure] = ()
    ) -> rec_calls.Args:
        return rec_calls.exp_track_args(
            self.keys, exp_id, incs, exposures, retention_ms=self.cfg.retention_ms,
            ttl_s=self.cfg.ttl_s, log_maxlen=self.cfg.log_maxlen, bucket_ms=self.cfg.bucket_ms,
        )  # fmt: skip

    # attribution (ingestion phase 2)
    def attribution_calls(self, events: Sequence[Event]) -> list[tuple[str, rec_calls.Args]]:
        """exp_track calls for accepted events that carry a known `props.variant`."""
        return [("exp_track", args) for _exp_id, args in self.attribution_by_experiment(events)]

    def attribution_by_experiment(
        self, events: Sequence[Event]
    ) -> list[tuple[str, rec_calls.Args]]:
        """(experiment id, exp_track arguments) for events that carry a known variant."""
        incs: dict[str, list[Increment]] = {}
        for ev in events:
            metric = EVENT_METRIC.get(ev.type)
            label = ev.props.get("variant") if metric else None
            if not isinstance(label, str) or not label:
                continue
            found = self.resolve(label)
            if found is None:
                continue
            exp, v = found
            out = incs.setdefault(exp.id, [])
            out.append(Increment(v.name, str(metric), ev.ts, 1.0))
            if ev.type == "purchase":
                revenue = sum(ln.qty * ln.price for ln in ev.lines)
                out.append(Increment(v.name, "revenue", ev.ts, round(revenue, 6)))
        return [(exp_id, self.track_args(exp_id, i)) for exp_id, i in incs.items()]

    # report
    def report(
        self, exp: Experiment, *, hours: int = 24, now_ms: int | None = None
    ) -> dict[str, Any]:
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        start = now - hours * 3_600_000
        totals = {
            rec_calls.text(k): float(rec_calls.text(v))
            for k, v in self.client.hgetall(self.keys.exp_counts(exp.id)).items()
        }
        pipe = self.client.pipeline(transaction=False)
        series_keys = [(v.name, m) for v in exp.variants for m in METRICS]
        for name, m in series_keys:
            pipe.exists(self.keys.exp_series(exp.id, name, m))
        exists = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        wanted = [sk for sk, e in zip(series_keys, exists, strict=True) if e]
        for name, m in wanted:
            pipe.execute_command(  # type: ignore[no-untyped-call]
                "TS.RANGE", self.keys.exp_series(exp.id, name, m), start, now,
                "AGGREGATION", "sum", 3_600_000,
            )  # fmt: skip
        ranges = dict(zip(wanted, pipe.execute(), strict=True)) if wanted else {}
        rows = summarize(exp, totals)
        for row in rows:
            hourly: dict[int, dict[str, float]] = {}
            for m in METRICS:
                for ts, value in ranges.get((row["variant"], m), []):
                    hourly.setdefault(int(ts), {})[m] = float(rec_calls.text(value))
            points = []
            for ts in sorted(hourly):
                h = hourly[ts]
                n = h.get("exposures", 0.0)
                points.append({
                    "ts": ts, **{m: h.get(m, 0.0) for m in METRICS},
                    "ctr": h.get("clicks", 0.0) / n if n else None,
                    "conversion": h.get("purchases", 0.0) / n if n else None,
                })  # fmt: skip
            row["hourly"] = points
        return {
            "experiment": exp.as_json(),
            "variants": rows,
            "window": {"from_ms": start, "to_ms": now, "bucket_ms": 3_600_000},
            "series": {
                "keys": f"{self.keys.exp(exp.id, 'ts')}:<variant>:<metric>",
                "metrics": list(METRICS),
            },
        }
