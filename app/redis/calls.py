"""One typed wrapper per Redis Function, each with a pure `*_args()` builder.

A builder returns `(keys, argv)` and touches no network, so it is unit-testable and can be
queued in a pipeline (`pipe.fcall(name, len(keys), *keys, *argv)`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from app.core.errors import from_redis_error
from app.core.events import Event
from app.core.keys import Keys, hour_start
from app.core.settings import EngineConfig

Args = tuple[list[str], list[Any]]


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fcall(client: redis.Redis | redis.client.Pipeline, name: str, args: Args) -> Any:
    """FCALL (or queue it on a pipeline); a Function's error reply becomes its typed error."""
    keys, argv = args
    try:
        return client.fcall(name, len(keys), *keys, *argv)
    except redis.ResponseError as exc:
        raise from_redis_error(exc) from exc


def fcall_ro(client: redis.Redis | redis.client.Pipeline, name: str, args: Args) -> Any:
    keys, argv = args
    try:
        return client.fcall_ro(name, len(keys), *keys, *argv)
    except redis.ResponseError as exc:
        raise from_redis_error(exc) from exc


# -- ingest_partition ------------------------------------------------------------------------


def ingest_partition_args(
    cfg: EngineConfig,
    keys: Keys,
    partition: int,
    groups: Sequence[Sequence[Event]],
    features: Args | None = None,
) -> Args:
    """One partition's events, grouped by shopper (a group's first event names the user).

    `features`: the feature section (app/features/spec.py `ack_feature_section`): its keys
    follow the user keys; its argv refers to them 1-based and to events by input position.
    """
    key_list: list[str] = [keys.log_of(partition)]
    argv: list[Any] = [
        cfg.session_ttl_s, cfg.user_ttl_s, cfg.dedup_window_ms, cfg.dedup_cap, cfg.recent_cap,
        cfg.searches_cap, cfg.aff_epoch_ms, cfg.aff_half_life_ms, cfg.co_window_ms,
        cfg.co_recent_n, cfg.bloom_capacity, cfg.bloom_error, cfg.weights_arg(), cfg.cart_cap,
        len(groups),
    ]  # fmt: skip
    for events in groups:
        user = events[0].identity
        if keys.partition(user) != partition:
            raise ValueError(f"user {user!r} is not in partition {partition}")
        key_list += keys.user_group(user)
        argv.append(len(events))
        for ev in events:
            argv += [ev.event_id, ev.type, ev.session_id, ev.ts, ev.query, len(ev.lines)]
            for ln in ev.lines:
                argv += [ln.item_id, ln.qty, ln.price, ln.category]
    argv.append(cfg.log_maxlen)
    for events in groups:
        for ev in events:
            argv += [ev.identity, ev.payload()]
    if features is None:
        argv.append(0)
    else:
        key_list += features[0]
        argv += features[1]
    return key_list, argv


@dataclass(frozen=True)
class PartitionResult:
    statuses: str  # one char per event, input order: 'A' accepted, 'D' duplicate
    logged: int
    last_id: str


def parse_ingest_partition(reply: Sequence[Any]) -> PartitionResult:
    return PartitionResult(text(reply[0]), int(reply[1]), text(reply[2]))


# -- apply_blocks ------------------------------------------------------------------------------


class KeyTable:
    """De-duplicated KEYS list; `ref` returns the 1-based index ARGV uses."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.index: dict[str, int] = {}

    def ref(self, key: str) -> int:
        idx = self.index.get(key)
        if idx is None:
            self.keys.append(key)
            idx = self.index[key] = len(self.keys)
        return idx


# Which lists of each kind are preceded by their record count (lua/80_ingest.lua BLOCK_KINDS).
BLOCK_LISTS: dict[str, tuple[bool, ...]] = {
    "aggregates": (True, True),
    "features": (True,),
    "rec_hot": (False,),
    "rec_track": (False,),
    "exp_track": (True, True),
}
BlockList = tuple[int, list[Any]]  # (record count, arguments)


@dataclass(frozen=True)
class Block:
    """One partition's share of a call: its effects of the log entries first_id..last_id."""

    partition: int
    first_id: str
    last_id: str
    lists: list[BlockList]


@dataclass(frozen=True)
class BlockCall:
    """One `apply_blocks` call: a kind's logic on one slot, for one or more partitions."""

    applied_key: str
    kind: str
    header: list[Any]
    keys: list[str]
    blocks: list[Block]


def apply_blocks_args(call: BlockCall) -> Args:
    lists = BLOCK_LISTS[call.kind]
    argv: list[Any] = [call.kind, len(call.header), *call.header, len(call.blocks)]
    for block in call.blocks:
        if len(block.lists) != len(lists):
            raise ValueError(f"{call.kind} takes {len(lists)} lists per block")
        argv += [f"p{block.partition}", block.first_id, block.last_id]
        for counted, (n_records, args) in zip(lists, block.lists, strict=True):
            if counted:
                argv.append(n_records)
            argv.append(len(args))
            argv += args
    return [call.applied_key, *call.keys], argv


# -- user_profile / export_user / identify_user ----------------------------------------------


def user_profile_args(cfg: EngineConfig, keys: Keys, identity: str, top_n: int = 20) -> Args:
    return keys.user_profile_keys(identity), [cfg.aff_epoch_ms, cfg.aff_half_life_ms, top_n]


@dataclass(frozen=True)
class UserProfile:
    session: dict[str, Any] | None
    profile: dict[str, Any] | None
    seen_estimate: int
    affinities: list[tuple[str, float]]


def parse_user_profile(reply: Sequence[Any]) -> UserProfile:
    session, profile = text(reply[0]), text(reply[1])
    rest = reply[3:]
    return UserProfile(
        session=json.loads(session) if session else None,
        profile=json.loads(profile) if profile else None,
        seen_estimate=int(reply[2]),
        affinities=[(text(rest[i]), float(text(rest[i + 1]))) for i in range(0, len(rest), 2)],
    )


def user_profile(
    client: redis.Redis, cfg: EngineConfig, keys: Keys, identity: str, top_n: int = 20
) -> UserProfile:
    return parse_user_profile(
        fcall_ro(client, "user_profile", user_profile_args(cfg, keys, identity, top_n))
    )


def export_user_args(keys: Keys, identity: str) -> Args:
    return [keys.user(identity, "session"), keys.user(identity, "aff")], []


def identify_user_args(
    cfg: EngineConfig,
    keys: Keys,
    user_id: str,
    anonymous_identity: str,
    traits: dict[str, Any],
    exported: Sequence[Any] | None,
) -> Args:
    argv: list[Any] = [
        user_id, anonymous_identity, json.dumps(traits, separators=(",", ":")),
        cfg.session_ttl_s, cfg.user_ttl_s, cfg.profile_ttl_s, cfg.recent_cap,
        cfg.bloom_capacity, cfg.bloom_error,
    ]  # fmt: skip
    if exported:
        argv.append(text(exported[0]))
        argv += [text(x) for x in exported[1:]]
    else:
        argv.append("")
    return keys.user_profile_keys(user_id), argv


# -- trending ----------------------------------------------------------------------------------


def trending_args(
    cfg: EngineConfig, keys: Keys, shard: int, event_type: str, watermark_ms: int, k: int
) -> Args:
    newest = hour_start(watermark_ms)
    starts = [newest - h * 3_600_000 for h in range(cfg.trend_window_h)]
    return (
        [keys.trend(shard, event_type, s) for s in starts],
        [watermark_ms, cfg.trend_half_life_ms, k, *starts],
    )


@dataclass(frozen=True)
class TrendingItem:
    item_id: str
    score: float
    count: int


def trending(
    client: redis.Redis, cfg: EngineConfig, keys: Keys, event_type: str, k: int = 10
) -> tuple[int | None, list[TrendingItem]]:
    """Trending now, merged over the aggregate shards (an item lives in one shard, so the
    merge is a sort). The watermark is the newest event time of any shard."""
    pipe = client.pipeline(transaction=False)
    for key in keys.watermarks:
        pipe.get(key)
    marks = [int(v) for v in pipe.execute() if v is not None]
    if not marks:
        return None, []
    watermark = max(marks)
    pipe = client.pipeline(transaction=False)
    for shard in range(keys.agg_shards):
        fcall_ro(pipe, "trending", trending_args(cfg, keys, shard, event_type, watermark, k))
    items: list[TrendingItem] = []
    for reply in pipe.execute():
        items += [
            TrendingItem(text(reply[i]), float(text(reply[i + 1])), int(float(text(reply[i + 2]))))
            for i in range(0, len(reply), 3)
        ]
    items.sort(key=lambda it: (-it.score, it.item_id))
    return watermark, items[:k]
