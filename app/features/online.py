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
from typing import Any, cast

import msgpack
import redis
from redis.crc import key_slot

from app.core.errors import ValidationError, from_redis_error
from app.core.events import Event
from app.core.keys import Keys
from app.features.spec import (
    ENTITY_TYPES,
    KMV_BYTES,
    MAX_IDS,
    AsOf,
    EntityRef,
    Feature,
    FeatureSet,
    Routed,
    Touch,
    Value,
    check_entity_id,
    resolve_names,
    route,
    split_user_category,
)
from app.ingest.aggregates import BlockHook, LogBlock
from app.redis.calls import Args, Block, BlockCall, KeyTable, fcall_ro, text
from app.redis.connect import is_cluster
from app.redis.slots import call_groups

STATE_FORMAT = 1  # first element of every packed state (lua/70_features.lua STATE_FORMAT)
KMV_SPACE = 1 << 52
READ_SLICE = 100  # keys per MGET: ~1 KB each, a few us of Redis time per key
FCALL_SLICE = 4  # entities per features_get call: ~0.1-0.25 ms of Redis time each


def state_key(keys: Keys, entity: str, entity_id: str) -> str:
    """The entity's packed feature state, a STRING (one hash tag per entity: cluster-safe).
    `fs` rather than the hash-per-bucket layout's `feat`: old hashes expire by their TTL."""
    if entity == "user":
        return keys.user(entity_id, "fs")
    if entity == "item":
        return keys.item_agg(entity_id, "fs")  # in the item's aggregate shard (workers)
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


# Work per features_ingest call, so that no call holds Redis long: each entity costs its state's
# decode and re-encode (ENTITY_COST) and each of its events one unit. Measured on the replay
# (bench/features.py): see docs/features.md, "Write path".
ENTITY_COST = 4
WORK_PER_CALL = 32


def budget_batches(
    groups: Sequence[tuple[EntityRef, Sequence[Touch]]], budget: int
) -> list[list[tuple[EntityRef, Sequence[Touch]]]]:
    """Groups cut into calls of at most `budget` work; an entity with more events than one
    call takes is split across consecutive calls (applied in order: the same state)."""
    out: list[list[tuple[EntityRef, Sequence[Touch]]]] = [[]]
    used = 0
    per_entity = max(1, budget - ENTITY_COST)
    for ref, touches in groups:
        for i in range(0, len(touches), per_entity):
            part = touches[i : i + per_entity]
            cost = ENTITY_COST + len(part)
            if out[-1] and used + cost > budget:
                out.append([])
                used = 0
            out[-1].append((ref, part))
            used += cost
    return out


def ingest_calls(
    fs: FeatureSet,
    keys: Keys,
    events: Sequence[Event],
    *,
    cluster: bool = False,
    work_per_call: int = WORK_PER_CALL,
) -> list[tuple[str, Args]]:
    """The `features_ingest` calls for accepted events, each of at most `work_per_call` work
    (see ENTITY_COST); with `cluster=True` each call's keys in one hash slot."""
    routed = route(fs, events)
    if not routed:
        return []
    by_slot = call_groups(
        list(routed.items()), lambda group: state_key(keys, *group[0]),
        cluster=cluster, per_call=len(routed),
    )  # fmt: skip
    return [
        ("features_ingest", features_ingest_args(fs, keys, batch))
        for groups in by_slot
        for batch in budget_batches(groups, work_per_call)
    ]


def ack_feature_section(fs: FeatureSet, keys: Keys, routed: Sequence[Routed]) -> Args | None:
    """The user and user x category feature work of one `ingest_partition` call: its keys
    and the argv section (lua/80_ingest.lua), events referred to by their 1-based position in
    the call (`routed`: route() of each of the call's events, in the call's input order).
    None when no feature uses them."""
    touched: dict[EntityRef, list[tuple[int, Touch]]] = defaultdict(list)
    for pos, ev_routes in enumerate(routed, start=1):
        for ref, touches in ev_routes.items():
            if ref[0] != "item":
                touched[ref] += [(pos, t) for t in touches]
    if not touched:
        return None
    key_list: list[str] = []
    argv: list[Any] = [len(touched), fs.spec]
    for (entity, entity_id), rows in touched.items():
        key_list.append(state_key(keys, entity, entity_id))
        argv += [len(key_list), entity, len(rows)]
        for pos, touch in rows:
            ev = touch.event
            argv += [pos, ev.type, ev.ts, ev.identity, ev.session_id, len(touch.lines)]
            for ln in touch.lines:
                argv += [ln.item_id, ln.qty, ln.price, ln.category]
    return key_list, argv


class AckFeatureWork:
    """The Ingestor's `ack_features`: shopper features inside the acknowledged call."""

    def __init__(self, fs: FeatureSet, keys: Keys) -> None:
        self.fs = fs
        self.keys = keys

    def route(self, event: Event) -> Routed:
        return route(self.fs, [event])

    def section(self, routed: Sequence[Routed]) -> Args | None:
        return ack_feature_section(self.fs, self.keys, routed)

    def states(self, routed: Routed) -> list[EntityRef]:
        """The user x category states the event writes (the user's own is the shopper's)."""
        return [ref for ref in routed if ref[0] == "user_category"]


def ack_features(fs: FeatureSet, keys: Keys) -> AckFeatureWork:
    return AckFeatureWork(fs, keys)


def item_feature_hook(fs: FeatureSet, keys: Keys) -> BlockHook:
    """The aggregate workers' hook for item features: per shard one `apply_blocks` call of
    kind `features` with every block's item touches in that shard."""

    def hook(blocks: Sequence[LogBlock]) -> list[BlockCall]:
        per_shard: dict[int, tuple[KeyTable, list[Block]]] = {}
        for block in blocks:
            routed = [
                (ref, touches)
                for ref, touches in route(fs, block.events).items()
                if ref[0] == "item"
            ]
            by_shard: dict[int, list[tuple[EntityRef, list[Touch]]]] = defaultdict(list)
            for ref, touches in routed:
                by_shard[keys.shard(ref[1])].append((ref, touches))
            for shard, groups in by_shard.items():
                table, shard_blocks = per_shard.setdefault(shard, (KeyTable(), []))
                args: list[Any] = []
                for (entity, entity_id), touches in groups:
                    args += [table.ref(state_key(keys, entity, entity_id)), entity, len(touches)]
                    for touch in touches:
                        ev = touch.event
                        args += [ev.type, ev.ts, ev.identity, ev.session_id, len(touch.lines)]
                        for ln in touch.lines:
                            args += [ln.item_id, ln.qty, ln.price, ln.category]
                shard_blocks.append(
                    Block(block.partition, block.first_id, block.last_id, [(len(groups), args)])
                )
        return [
            BlockCall(keys.applied(shard), "features", [fs.spec], table.keys, shard_blocks)
            for shard, (table, shard_blocks) in sorted(per_shard.items())
        ]

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
    Redis far less per entity. Calls of at most FCALL_SLICE entities (each decodes its states
    inside Redis), pipelined in one round trip; with `cluster=True` each in one hash slot.
    """
    wanted = resolve_names(fs, entity, names)
    ids = list(dict.fromkeys(entity_ids))
    if not ids:
        return []
    if len(ids) > MAX_IDS:
        raise ValidationError("ids", f"at most {MAX_IDS} entities per call")
    by_slot = call_groups(
        [check_entity_id(entity, i) for i in ids], lambda i: state_key(keys, entity, i),
        cluster=cluster, per_call=len(ids),
    )  # fmt: skip
    slices = [g[j : j + FCALL_SLICE] for g in by_slot for j in range(0, len(g), FCALL_SLICE)]
    pipe = client.pipeline(transaction=False)
    for members in slices:
        fcall_ro(pipe, "features_get", features_get_args(fs, keys, entity, members, wanted, as_of))
    try:
        replies = pipe.execute()
    except redis.ResponseError as exc:
        raise from_redis_error(exc) from exc
    by_id = {}
    for members, reply in zip(slices, replies, strict=True):
        by_id.update(
            {r.entity_id: r for r in parse_features_get(fs, entity, members, wanted, reply)}
        )
    return [by_id[i] for i in entity_ids]


# -- the fast read: packed states in pipelined slices, the arithmetic here ---------------------


# What a feature's read does with its slots' buckets (FeaturePlan.op).
COUNT, SCALED_SUM, MEAN, RATIO, DECAYED, DISTINCT, LAST, RECENCY = range(8)
_OPS = {"count": COUNT, "mean": MEAN, "ratio": RATIO, "decayed_sum": DECAYED,
        "distinct_approx": DISTINCT, "last": LAST, "recency": RECENCY}  # fmt: skip
_NO_SLOT: tuple[Any, ...] = (0, (), ())


@dataclass(frozen=True, slots=True)
class FeaturePlan:
    """What reading one feature needs from a packed state (flat, for the per-entity loop)."""

    name: str
    op: int
    slots: tuple[bytes, ...]  # slot ids as stored (role 1, then a mean's / ratio's count)
    bucket_ms: int
    window_ms: int
    calendar_offset_ms: int | None  # calendar windows: the alignment offset; rolling: None
    scale: int
    half_life_ms: int
    k: int


_PLANS: dict[tuple[int, tuple[str, ...]], tuple[FeatureSet, list[FeaturePlan]]] = {}


def feature_plans(fs: FeatureSet, names: Sequence[str]) -> list[FeaturePlan]:
    key = (id(fs), tuple(names))
    cached = _PLANS.get(key)
    if cached is not None and cached[0] is fs:
        return cached[1]
    plans = []
    for name in names:
        f = fs.features[name]
        ids = fs.feature_slots[name]
        first = fs.slots[ids[0]]
        op = SCALED_SUM if f.agg == "sum" and f.scale != 1 else _OPS.get(f.agg, COUNT)
        calendar = f.window.offset_ms if f.window.kind == "calendar" else None
        sids = tuple(i.encode() for i in ids)
        plans.append(FeaturePlan(name, op, sids, f.bucket_ms, f.window.ms, calendar, f.scale,
                                 first.half_life_ms, first.k))  # fmt: skip
    if len(_PLANS) > 256:  # name lists are few in practice; bound the cache anyway
        _PLANS.clear()
    _PLANS[key] = (fs, plans)
    return plans


# What state_values needs of one feature as of t, flat (unpacked in the loop header): name,
# op, slot id, second slot id (mean / ratio, else b""), bucket ms, window start ms, first and
# end bucket index [lo, hi), scale, half-life ms, sketch k.
Window = tuple[str, int, bytes, bytes, int, int, int, int, int, int, int]


def windows(plans: Sequence[FeaturePlan], t: int) -> list[Window]:
    """Each feature's window as of t (`Feature.window_bounds`), as bucket indices [lo, hi)."""
    out = []
    for p in plans:
        b = p.bucket_ms
        end = t - t % b
        if p.calendar_offset_ms is None:
            start = end - p.window_ms
        else:
            start = t - (t + p.calendar_offset_ms) % p.window_ms
        second = p.slots[1] if len(p.slots) > 1 else b""
        out.append((p.name, p.op, p.slots[0], second, b, start, start // b, end // b, p.scale,
                    p.half_life_ms, p.k))  # fmt: skip
    return out


class PackedState:
    """One entity's packed state as stored: the newest event ts and per slot (horizon ms,
    bucket ages (floor(newest / bucket) - index, ascending: newest first), packed values),
    decoded as tuples (read only; cheaper to build than lists)."""

    __slots__ = ("newest", "slots")

    def __init__(self, blob: bytes | None) -> None:
        self.slots: dict[bytes, Sequence[Any]] = {}
        self.newest: int | None = None
        if blob is None:
            return
        try:
            obj = msgpack.unpackb(blob, raw=True, strict_map_key=False, use_list=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise ValidationError("state", f"feature state is not MessagePack: {exc}") from exc
        if not isinstance(obj, tuple) or len(obj) != 3 or obj[0] != STATE_FORMAT:
            raise ValidationError("state", f"feature state is not format {STATE_FORMAT}")
        self.newest = int(obj[1])
        if isinstance(obj[2], dict):
            self.slots = obj[2]

    def bucket_count(self) -> int:
        return sum(len(ages) for _h, ages, _vs in self.slots.values())


def state_values(st: PackedState, wins: Sequence[Window], t: int) -> dict[str, Value]:
    """The features of one entity as of t: the arithmetic of lua/70_features.lua
    `feature_value`, operation for operation (integer and float results are identical; the
    tests compare both). A value needing dropped buckets (window start before the horizon) is
    null; for last / recency only when no newer kept bucket lies in the window. Buckets are
    found by age: index n in [lo, hi) <=> age in [base - hi + 1, base - lo + 1)."""
    out: dict[str, Value] = {}
    slot, bl = st.slots.get, bisect.bisect_left
    newest = st.newest or 0
    for name, op, sid, sid2, b, start, lo, hi, scale, hl, k in wins:
        h, ages, vs = slot(sid, _NO_SLOT)
        base = newest // b
        # Reads as of now end past the newest bucket (ages >= 0): the window starts at age 0.
        end_age = base - hi + 1
        i, j = bl(ages, end_age) if end_age > 0 else 0, bl(ages, base - lo + 1)
        if op >= LAST:  # the window's newest bucket (first in age order) holds the answer
            if i == j or (start < h and (base - ages[i]) * b < h):
                out[name] = None
            elif op == RECENCY:
                out[name] = (t - ((base - ages[i]) * b + vs[i])) / 1000
            else:
                v = vs[i][1]
                out[name] = v if scale == 1 else v / scale
            continue
        if sid2:
            h2, ages2, vs2 = slot(sid2, _NO_SLOT)
            h = max(h, h2)
        if start < h:
            out[name] = None
        elif op == COUNT:
            out[name] = sum(vs[i:j])
        elif op == SCALED_SUM:
            out[name] = sum(vs[i:j]) / scale
        elif op in (MEAN, RATIO):
            y = sum(vs2[bl(ages2, base - hi + 1) : bl(ages2, base - lo + 1)])
            x = sum(vs[i:j])
            out[name] = None if y == 0 else x / y if op == RATIO else x / y / scale
        elif op == DECAYED:
            # Oldest bucket first, as the Lua sum runs (float addition is not associative).
            total = 0.0
            for n in range(j - 1, i - 1, -1):
                total += vs[n] * 2.0 ** (-(t - (base - ages[n]) * b) / hl)
            out[name] = total
        else:
            out[name] = _distinct(vs[i:j], k)
    return out


def _distinct(packed_buckets: Sequence[bytes], k: int) -> float:
    data = b"".join(packed_buckets)
    seen = {data[i : i + KMV_BYTES] for i in range(0, len(data), KMV_BYTES)}
    if len(seen) < k:
        return float(len(seen))
    kth = sorted(seen)[k - 1]  # fixed-width big-endian: byte order is numeric order
    return (k - 1) * KMV_SPACE / (int.from_bytes(kth, "big") + 1)


def _blob(raw: Any) -> bytes | None:
    if raw is None or isinstance(raw, bytes):
        return raw
    raise ValidationError("client", "feature reads need a client with decode_responses=False")


def _fetch_states(
    client: redis.Redis, keys: list[str], *, need_time: bool, cluster: bool
) -> tuple[list[bytes | None], int | None]:
    """The packed states (MGET per slice of READ_SLICE keys; with `cluster`, per hash slot) in
    one pipelined round trip, and the server time in ms when asked."""
    if cluster and is_cluster(client):
        # redis-py refuses MGET inside a cluster pipeline (multi-key); its mget_nonatomic
        # groups the keys by slot and sends one MGET per slot, node by node.
        now = None
        if need_time:
            sec, usec = client.time()
            now = int(sec) * 1000 + int(usec) // 1000
        raw = cast(Any, client).mget_nonatomic(keys)
        return [_blob(b) for b in raw], now
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
    plans = feature_plans(fs, wanted)
    shared_t = as_of if isinstance(as_of, int) else now
    shared = windows(plans, shared_t) if shared_t is not None else []
    by_id: dict[str, FeatureRow] = {}
    for entity_id, blob in zip(ids, blobs, strict=True):
        st = PackedState(blob)
        if as_of == "latest" and st.newest is not None:
            t = st.newest + 1
            values = state_values(st, windows(plans, t), t)
        else:
            assert shared_t is not None
            t = shared_t
            values = state_values(st, shared, t)
        by_id[entity_id] = FeatureRow(entity, entity_id, t, values)
    return [by_id[i] for i in entity_ids]
