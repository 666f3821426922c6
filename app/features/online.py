"""Online feature path: the `features_ingest` / `features_get` wrappers, the ingestion hook and
the fast read.

State: one packed STRING per entity (MessagePack, layout in lua/70_features.lua), written by
`features_ingest` as events arrive. Reads (`get_features`) fetch the packed states with MGET in
slices of `READ_SLICE` keys, pipelined (each command holds Redis a few us per entity, so other
clients interleave between slices), and finish the arithmetic here, the same arithmetic as the
Function `features_get` (which services may call directly; `get_features_fcall`). Why this
design and what the alternatives cost: docs/features.md, "Read path".
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import msgpack
import redis
from redis.crc import key_slot

from app.core.errors import ValidationError
from app.core.events import Event
from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.features.spec import (
    ENTITY_TYPES,
    MAX_IDS,
    AsOf,
    EntityRef,
    Feature,
    FeatureSet,
    Touch,
    Value,
    check_entity_id,
    resolve_names,
    route,
    split_user_category,
)
from app.ingest.ingestor import Phase2Hook
from app.redis.calls import Args, fcall_ro, text
from app.redis.slots import call_groups

STATE_FORMAT = 1  # first element of every packed state (lua/70_features.lua STATE_FORMAT)
KMV_BYTES = 7  # a packed 52-bit sketch hash
KMV_SPACE = 1 << 52
READ_SLICE = 100  # keys per MGET: ~1 KB each, a few us of Redis time per key


def state_key(keys: Keys, entity: str, entity_id: str) -> str:
    """The entity's packed feature state, a STRING (one hash tag per entity: cluster-safe).
    `fs` rather than the hash-per-bucket layout's `feat`: old hashes expire by their TTL."""
    if entity == "user":
        return keys.user(entity_id, "fs")
    if entity == "item":
        return keys.item(entity_id, "fs")
    if entity == "user_category":
        user, category = split_user_category(entity_id)
        return keys.user(user, f"fsc:{category}")
    raise ValidationError("entity_type", f"must be one of {list(ENTITY_TYPES)}")


# -- features_ingest ----------------------------------------------------------------------------


def features_ingest_args(
    fs: FeatureSet, keys: Keys, groups: Sequence[tuple[EntityRef, Sequence[Touch]]]
) -> Args:
    """One `features_ingest` call for these entities (each entity once)."""
    key_list: list[str] = []
    argv: list[Any] = [fs.spec, len(groups)]
    for (entity, entity_id), touches in groups:
        key_list.append(state_key(keys, entity, entity_id))
        argv += [len(key_list), entity, len(touches)]
        for touch in touches:
            ev = touch.event
            argv += [ev.type, ev.ts, ev.identity, ev.session_id, len(touch.lines)]
            for ln in touch.lines:
                argv += [ln.item_id, ln.qty, ln.price, ln.category]
    return key_list, argv


def ingest_calls(
    fs: FeatureSet,
    keys: Keys,
    events: Sequence[Event],
    *,
    cluster: bool = False,
    groups_per_call: int = 64,
) -> list[tuple[str, Args]]:
    """The `features_ingest` calls for accepted events: on a standalone server up to
    `groups_per_call` entities per call; with `cluster=True` one call per hash slot."""
    routed = route(fs, events)
    if not routed:
        return []
    batches = call_groups(
        list(routed.items()), lambda group: state_key(keys, *group[0]),
        cluster=cluster, per_call=groups_per_call,
    )  # fmt: skip
    return [("features_ingest", features_ingest_args(fs, keys, batch)) for batch in batches]


def ingest_hook(
    fs: FeatureSet, cfg: EngineConfig, *, cluster: bool = False, groups_per_call: int = 64
) -> Phase2Hook:
    """The `Ingestor(phase2_hooks=[...])` extension that keeps the online features current."""
    keys = Keys(cfg.key_prefix)

    def hook(events: Sequence[Event]) -> list[tuple[str, Args]]:
        return ingest_calls(fs, keys, events, cluster=cluster, groups_per_call=groups_per_call)

    return hook


# -- features_get -------------------------------------------------------------------------------


def as_of_arg(as_of: AsOf) -> str:
    if as_of in ("now", "latest"):
        return str(as_of)
    if isinstance(as_of, bool) or not isinstance(as_of, int) or as_of < 0:
        raise ValidationError("as_of", "must be 'now', 'latest' or ms since the epoch (>= 0)")
    return str(as_of)


def parse_as_of(raw: Any) -> AsOf:
    """HTTP / CLI form: missing -> 'now'; 'now' | 'latest' | integer ms."""
    if raw is None or raw == "" or raw == "now":
        return "now"
    if raw == "latest":
        return "latest"
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.isdigit():
        value = int(raw)
    else:
        raise ValidationError("as_of", "must be 'now', 'latest' or ms since the epoch")
    as_of_arg(value)
    return value


def features_get_args(
    fs: FeatureSet,
    keys: Keys,
    entity: str,
    entity_ids: Sequence[str],
    names: Sequence[str],
    as_of: AsOf = "now",
) -> Args:
    key_list = [state_key(keys, entity, check_entity_id(entity, i)) for i in entity_ids]
    return key_list, [fs.spec, as_of_arg(as_of), len(names), *names]


@dataclass(frozen=True)
class FeatureRow:
    entity: str
    entity_id: str
    as_of_ms: int
    values: dict[str, Value]


def convert(f: Feature, raw: Any) -> Value:
    if raw is None:
        return None
    s = text(raw)
    return int(s) if f.dtype == "int" else float(s)


def parse_features_get(
    fs: FeatureSet, entity: str, entity_ids: Sequence[str], names: Sequence[str], reply: Any
) -> list[FeatureRow]:
    width = len(names) + 1
    if len(reply) != width * len(entity_ids):
        raise ValueError(f"features_get: {len(reply)} values for {len(entity_ids)} entities")
    feats = [fs.features[n] for n in names]
    rows = []
    for i, entity_id in enumerate(entity_ids):
        part = reply[i * width : (i + 1) * width]
        values = {f.name: convert(f, raw) for f, raw in zip(feats, part[1:], strict=True)}
        rows.append(FeatureRow(entity, entity_id, int(text(part[0])), values))
    return rows


def get_features_fcall(
    client: redis.Redis,
    fs: FeatureSet,
    keys: Keys,
    entity: str,
    entity_ids: Sequence[str],
    names: Sequence[str] | None = None,
    as_of: AsOf = "now",
    *,
    cluster: bool = False,
) -> list[FeatureRow]:
    """Feature values computed inside Redis (FCALL_RO features_get), in input order: what
    other services calling the Function get; the same values as `get_features`, which holds
    Redis far less per entity. Standalone: one call for all ids (up to MAX_IDS: a long call);
    `cluster=True`: one call per hash slot.
    """
    wanted = resolve_names(fs, entity, names)
    ids = list(dict.fromkeys(entity_ids))
    if not ids:
        return []
    if len(ids) > MAX_IDS:
        raise ValidationError("ids", f"at most {MAX_IDS} entities per call")
    if not cluster:
        args = features_get_args(fs, keys, entity, ids, wanted, as_of)
        reply = fcall_ro(client, "features_get", args)
        by_id = {r.entity_id: r for r in parse_features_get(fs, entity, ids, wanted, reply)}
    else:
        groups: dict[int, list[str]] = defaultdict(list)
        for i in ids:
            groups[key_slot(state_key(keys, entity, check_entity_id(entity, i)).encode())].append(i)
        by_id = {}
        for members in groups.values():
            args = features_get_args(fs, keys, entity, members, wanted, as_of)
            reply = fcall_ro(client, "features_get", args)
            by_id.update(
                {r.entity_id: r for r in parse_features_get(fs, entity, members, wanted, reply)}
            )
    return [by_id[i] for i in entity_ids]


# -- the fast read: packed states in pipelined slices, the arithmetic here ---------------------


@dataclass(frozen=True, slots=True)
class FeaturePlan:
    """What reading one feature needs from a packed state (compiled once per feature set)."""

    feature: Feature
    slots: tuple[bytes, ...]  # slot ids as stored (role 1, then a mean's / ratio's count)
    kind: str  # the first slot's kind
    half_life_ms: int
    k: int


_PLANS: dict[tuple[int, str], FeaturePlan] = {}


def feature_plan(fs: FeatureSet, name: str) -> FeaturePlan:
    key = (id(fs), name)
    plan = _PLANS.get(key)
    if plan is None or plan.feature is not fs.features[name]:
        f = fs.features[name]
        ids = fs.feature_slots[name]
        first = fs.slots[ids[0]]
        plan = FeaturePlan(f, tuple(i.encode() for i in ids), first.kind, first.half_life_ms,
                           first.k)  # fmt: skip
        _PLANS[key] = plan
    return plan


class PackedState:
    """One entity's packed state, decoded lazily: a slot's bucket indices are rebuilt from
    their deltas only when a feature reads it."""

    __slots__ = ("_raw", "_slots", "newest")

    def __init__(self, blob: bytes | None) -> None:
        self._slots: dict[bytes, tuple[int, list[int], list[Any]]] = {}
        self._raw: dict[bytes, list[Any]] = {}
        self.newest: int | None = None
        if blob is None:
            return
        try:
            obj = msgpack.unpackb(blob, raw=True, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise ValidationError("state", f"feature state is not MessagePack: {exc}") from exc
        if not isinstance(obj, list) or len(obj) != 3 or obj[0] != STATE_FORMAT:
            raise ValidationError("state", f"feature state is not format {STATE_FORMAT}")
        self.newest = int(obj[1])
        self._raw = obj[2] if isinstance(obj[2], dict) else {}

    def bucket_count(self) -> int:
        return sum(len(raw[1]) for raw in self._raw.values())

    def slot(self, sid: bytes) -> tuple[int, list[int], list[Any]] | None:
        """(horizon ms, ascending bucket indices, packed values) or None."""
        got = self._slots.get(sid)
        if got is None:
            raw = self._raw.get(sid)
            if raw is None:
                return None
            got = (int(raw[0]), list(accumulate(raw[1])), raw[2])
            self._slots[sid] = got
        return got


def _sums(plan: FeaturePlan, st: PackedState, lo: int, hi: int) -> tuple[int, int, int]:
    """Sums of the role-1 and role-2 slots over buckets [lo, hi), and the highest horizon."""
    out = [0, 0]
    h_max = 0
    for role, sid in enumerate(plan.slots):
        got = st.slot(sid)
        if got is None:
            continue
        h, ns, vs = got
        h_max = max(h_max, h)
        out[role] = sum(vs[bisect.bisect_left(ns, lo) : bisect.bisect_left(ns, hi)])
    return out[0], out[1], h_max


def _newest_in(plan: FeaturePlan, st: PackedState, lo: int, hi: int, start: int, t: int) -> Value:
    """last / recency: the newest bucket of the window holds the answer (within a bucket the
    packed value already is the newest event's). Dropped buckets are older than any kept one,
    so the value is known when the window starts after the horizon or holds a newer bucket."""
    f = plan.feature
    got = st.slot(plan.slots[0])
    h, ns, vs = got if got is not None else (0, [], [])
    j = bisect.bisect_left(ns, hi)
    found = j > 0 and ns[j - 1] >= lo
    if start < h and not (found and ns[j - 1] * f.bucket_ms >= h):
        return None
    if not found:
        return None
    n, packed = ns[j - 1], vs[j - 1]
    if f.agg == "recency":
        return (t - (n * f.bucket_ms + int(packed))) / 1000
    value = int(packed[1])
    return value if f.scale == 1 else value / f.scale


def _distinct(plan: FeaturePlan, st: PackedState, lo: int, hi: int) -> float:
    got = st.slot(plan.slots[0])
    if got is None:
        return 0.0
    _, ns, vs = got
    seen: set[bytes] = set()
    for packed in vs[bisect.bisect_left(ns, lo) : bisect.bisect_left(ns, hi)]:
        seen.update(packed[i : i + KMV_BYTES] for i in range(0, len(packed), KMV_BYTES))
    k = plan.k
    if len(seen) < k:
        return float(len(seen))
    kth = sorted(seen)[k - 1]  # fixed-width big-endian: byte order is numeric order
    return (k - 1) * KMV_SPACE / (int.from_bytes(kth, "big") + 1)


def _decayed(plan: FeaturePlan, st: PackedState, lo: int, hi: int, t: int) -> float:
    got = st.slot(plan.slots[0])
    if got is None:
        return 0.0
    _, ns, vs = got
    b, hl = plan.feature.bucket_ms, plan.half_life_ms
    i, j = bisect.bisect_left(ns, lo), bisect.bisect_left(ns, hi)
    total = 0.0
    for n, v in zip(ns[i:j], vs[i:j], strict=True):
        total += v * 2.0 ** (-(t - n * b) / hl)
    return total


def feature_value(plan: FeaturePlan, st: PackedState, t: int) -> Value:
    """One feature as of t from a packed state: the arithmetic of lua/70_features.lua
    `feature_value`, operation for operation (so integer and float results are identical)."""
    f = plan.feature
    b = f.bucket_ms
    start, end = f.window_bounds(t)
    lo, hi = start // b, end // b
    agg = f.agg
    if agg in ("last", "recency"):
        return _newest_in(plan, st, lo, hi, start, t)
    h_max = max((got[0] for sid in plan.slots if (got := st.slot(sid)) is not None), default=0)
    if start < h_max:
        return None
    if agg == "decayed_sum":
        return _decayed(plan, st, lo, hi, t)
    if agg == "distinct_approx":
        return _distinct(plan, st, lo, hi)
    x, y, _ = _sums(plan, st, lo, hi)
    if agg == "count" or (agg == "sum" and f.scale == 1):
        return x
    if agg == "sum":
        return x / f.scale
    if y == 0:
        return None
    return x / y if agg == "ratio" else x / y / f.scale


def _blob(raw: Any) -> bytes | None:
    if raw is None or isinstance(raw, bytes):
        return raw
    raise ValidationError("client", "feature reads need a client with decode_responses=False")


def _fetch_states(
    client: redis.Redis, keys: list[str], *, need_time: bool, cluster: bool
) -> tuple[list[bytes | None], int | None]:
    """The packed states (MGET per slice of READ_SLICE keys; with `cluster`, per hash slot) in
    one pipelined round trip, and the server time in ms when asked."""
    if cluster:
        groups: dict[int, list[int]] = defaultdict(list)
        for i, k in enumerate(keys):
            groups[key_slot(k.encode())].append(i)
        slices = [
            members[j : j + READ_SLICE]
            for members in groups.values()
            for j in range(0, len(members), READ_SLICE)
        ]
    else:
        order = list(range(len(keys)))
        slices = [order[j : j + READ_SLICE] for j in range(0, len(order), READ_SLICE)]
    if not need_time and len(slices) == 1:
        return [_blob(b) for b in client.mget([keys[i] for i in slices[0]])], None
    pipe = client.pipeline(transaction=False)
    if need_time:
        pipe.time()
    for members in slices:
        pipe.mget([keys[i] for i in members])
    replies = pipe.execute()
    now = None
    if need_time:
        sec, usec = replies.pop(0)
        now = int(sec) * 1000 + int(usec) // 1000
    blobs: list[bytes | None] = [None] * len(keys)
    for members, reply in zip(slices, replies, strict=True):
        for i, blob in zip(members, reply, strict=True):
            blobs[i] = _blob(blob)
    return blobs, now


def get_features(
    client: redis.Redis,
    fs: FeatureSet,
    keys: Keys,
    entity: str,
    entity_ids: Sequence[str],
    names: Sequence[str] | None = None,
    as_of: AsOf = "now",
    *,
    cluster: bool = False,
) -> list[FeatureRow]:
    """Feature values of entities of one type, in input order: packed states fetched in
    pipelined MGET slices (no command holds Redis long), the arithmetic done here.

    `as_of`: "now" (server time), "latest" (just after each entity's newest event) or ms.
    `cluster=True`: one MGET per hash slot (and slice).
    """
    wanted = resolve_names(fs, entity, names)
    as_of_arg(as_of)
    ids = list(dict.fromkeys(entity_ids))
    if not ids:
        return []
    if len(ids) > MAX_IDS:
        raise ValidationError("ids", f"at most {MAX_IDS} entities per call")
    key_list = [state_key(keys, entity, check_entity_id(entity, i)) for i in ids]
    blobs, now = _fetch_states(client, key_list, need_time=not isinstance(as_of, int),
                               cluster=cluster)  # fmt: skip
    plans = [feature_plan(fs, n) for n in wanted]
    by_id: dict[str, FeatureRow] = {}
    for entity_id, blob in zip(ids, blobs, strict=True):
        st = PackedState(blob)
        if isinstance(as_of, int):
            t = as_of
        elif as_of == "latest" and st.newest is not None:
            t = st.newest + 1
        else:
            assert now is not None
            t = now
        values = {p.feature.name: feature_value(p, st, t) for p in plans}
        by_id[entity_id] = FeatureRow(entity, entity_id, t, values)
    return [by_id[i] for i in entity_ids]
