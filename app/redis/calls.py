"""One typed wrapper per Redis Function, each with a pure `*_args()` builder.

A builder returns `(keys, argv)` and touches no network, so it is unit-testable and can be
queued in a pipeline (`pipe.fcall(name, len(keys), *keys, *argv)`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from app.core.errors import from_redis_error
from app.core.events import Event
from app.core.keys import Keys, hour_start
from app.core.settings import EngineConfig
from app.core.units import HOUR_MS

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


# -- ingest_user -----------------------------------------------------------------------------


def ingest_user_args(cfg: EngineConfig, keys: Keys, groups: Sequence[Sequence[Event]]) -> Args:
    """Each group holds the events of one user (the group's first event names the user)."""
    key_list: list[str] = []
    argv: list[Any] = [
        cfg.session_ttl_s, cfg.user_ttl_s, cfg.dedup_window_ms, cfg.dedup_cap, cfg.recent_cap,
        cfg.searches_cap, cfg.aff_epoch_ms, cfg.aff_half_life_ms, cfg.co_window_ms,
        cfg.co_recent_n, cfg.bloom_capacity, cfg.bloom_error, cfg.weights_arg(), cfg.cart_cap,
        len(groups),
    ]  # fmt: skip
    for events in groups:
        key_list += keys.user_group(events[0].identity)
        argv.append(len(events))
        for ev in events:
            argv += [ev.event_id, ev.type, ev.session_id, ev.ts, ev.query, len(ev.lines)]
            for ln in ev.lines:
                argv += [ln.item_id, ln.qty, ln.price, ln.category]
    return key_list, argv


@dataclass(frozen=True)
class UserIngestResult:
    statuses: str  # one char per event: 'A' accepted, 'D' duplicate
    pairs: list[tuple[str, str, str, float]]  # (item a, item b, kind, weight)


def parse_ingest_user(reply: Sequence[Any]) -> UserIngestResult:
    statuses = text(reply[0])
    rest = [text(x) for x in reply[1:]]
    pairs = [
        (rest[i], rest[i + 1], rest[i + 2], float(rest[i + 3])) for i in range(0, len(rest), 4)
    ]
    return UserIngestResult(statuses, pairs)


# -- ingest_aggregates -----------------------------------------------------------------------


class _KeyTable:
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


COUNTED_TYPES = frozenset({"view", "click", "add_to_cart", "purchase"})


def ingest_aggregates_args(
    cfg: EngineConfig,
    keys: Keys,
    events: Iterable[Event],
    pairs: Iterable[tuple[str, str, str, float]],
    *,
    include_global: bool = True,
    include_item: Any = None,
) -> Args:
    """Accepted events and co-occurrence pairs -> one `ingest_aggregates` call.

    `include_item(item_id) -> bool` selects the item keys for this call (cluster clients split
    per slot); `include_global` toggles the log/trending/CMS keys.
    """
    table = _KeyTable()
    want_item = include_item or (lambda _item: True)
    g = include_global
    body: list[Any] = []
    n_events = 0
    for ev in events:
        item_lines = [ln for ln in ev.lines if want_item(ln.item_id)] if ev.lines else []
        if not g and (not item_lines or ev.type not in COUNTED_TYPES):
            continue
        n_events += 1
        if ev.type == "search":
            # Trending searches: the normalised query stands in for the item (no series).
            q = " ".join(ev.query.lower().split())
            body += [
                ev.event_id, ev.type, ev.identity, ev.ts, ev.payload() if g else "",
                table.ref(keys.log) if g else 0, table.ref(keys.watermark) if g else 0,
                1 if g else 0,
            ]  # fmt: skip
            if g:
                body += [
                    q,
                    1,
                    table.ref(keys.trend("search", ev.ts)),
                    table.ref(keys.cms("search")),
                    0,
                    0,
                ]
            continue
        counted = ev.type in COUNTED_TYPES
        body += [
            ev.event_id, ev.type, ev.identity, ev.ts, ev.payload() if g else "",
            table.ref(keys.log) if g else 0, table.ref(keys.watermark) if g else 0,
            len(item_lines) if counted else 0,
        ]  # fmt: skip
        if not counted:
            continue
        trend = table.ref(keys.trend(ev.type, ev.ts)) if g else 0
        cms = table.ref(keys.cms(ev.type)) if g else 0
        for ln in item_lines:
            raw, hourly = keys.item_series(ln.item_id, ev.type)
            body += [ln.item_id, ln.qty, trend, cms, table.ref(raw), table.ref(hourly)]
    pair_args: list[Any] = []
    n_pairs = 0
    for a, b, kind, weight in pairs:
        for src, dst in ((a, b), (b, a)):
            if want_item(src):
                pair_args += [table.ref(keys.co(src, kind)), dst, weight]
                n_pairs += 1
    argv: list[Any] = [
        cfg.log_maxlen, cfg.trend_ttl_s, cfg.item_ttl_s, cfg.co_cap, cfg.raw_retention_ms,
        cfg.hour_retention_ms, cfg.topk, cfg.cms_width, cfg.trend_window_h * HOUR_MS, n_events,
        *body, n_pairs, *pair_args,
    ]  # fmt: skip
    return table.keys, argv


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
    cfg: EngineConfig, keys: Keys, event_type: str, watermark_ms: int, k: int
) -> Args:
    newest = hour_start(watermark_ms)
    starts = [newest - h * 3_600_000 for h in range(cfg.trend_window_h)]
    return (
        [keys.trend(event_type, s) for s in starts],
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
    raw_wm = client.get(keys.watermark)
    if raw_wm is None:
        return None, []
    watermark = int(raw_wm)
    reply = fcall_ro(client, "trending", trending_args(cfg, keys, event_type, watermark, k))
    items = [
        TrendingItem(text(reply[i]), float(text(reply[i + 1])), int(float(text(reply[i + 2]))))
        for i in range(0, len(reply), 3)
    ]
    return watermark, items
