"""Typed wrappers of the recommendation Functions (lua/60_recommend.lua, lua/65_experiments.lua).

Same conventions as `app/redis/calls.py`: each Function has a pure `*_args()` builder returning
`(keys, argv)` (no network: unit-testable, pipelinable) and a parser for its reply; Function
errors come back as the typed errors of `app/core/errors.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from app.recs.keys import RecKeys

Args = tuple[list[str], list[Any]]

# Candidate sources the `recommend` Function knows (see REC.DEFAULT_WEIGHTS in the Lua), with
# their codes: a source travels as `anchor index * 10 + code` (REC.SOURCE_CODES; 'rise', the
# tenth, has code 0).
SOURCES = ("nn", "co", "ct", "cat", "tr", "pop", "rb", "uk", "new", "rise")
SOURCE_CODE = {name: i % 10 for i, name in enumerate(SOURCES, start=1)}


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def num(value: float) -> str:
    """A float for ARGV: shortest repr, never 'nan'/'inf' (the Lua side refuses those)."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return repr(float(value))


def short(value: float) -> str:
    """4 significant digits: enough for a source value, and fewer bytes for Lua to intern."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return f"{value:.4g}"


# -- rec_context -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecContext:
    last_ts: int  # newest event time of the live session (0 = none)
    interactions: int  # distinct items interacted with (seen-filter cardinality)
    recent: tuple[str, ...]  # session items, newest first
    cart: tuple[str, ...]  # cart lines, newest first
    hist: tuple[str, ...]  # long-term history, strongest first
    categories: tuple[str, ...]  # affinity categories, strongest first
    hist_weight: Mapping[str, float] = field(default_factory=dict)  # relative interest 0..1
    peers: Mapping[str, float] = field(default_factory=dict)  # similar shopper -> similarity


def rec_context_args(
    keys: RecKeys,
    user: str,
    n_recent: int,
    n_hist: int,
    n_cats: int,
    *,
    model: str | None = None,
    n_peers: int = 0,
) -> Args:
    """With a model and n_peers > 0, the reply also lists the user's similar shoppers."""
    if model is None or n_peers <= 0:
        return keys.rec_context_keys(user), [n_recent, n_hist, n_cats]
    return [*keys.rec_context_keys(user), keys.peers(user, model)], [
        n_recent, n_hist, n_cats, n_peers,
    ]  # fmt: skip


def _pairs(flat: Sequence[Any]) -> dict[str, float]:
    return {text(flat[i]): float(text(flat[i + 1])) for i in range(0, len(flat), 2)}


def parse_rec_context(reply: Sequence[Any]) -> RecContext:
    pos = 2
    lists: list[tuple[str, ...]] = []
    weights: dict[str, float] = {}
    for section in range(4):
        n = int(reply[pos])
        if section == 2:  # history: (item, weight) pairs
            weights = _pairs(reply[pos + 1 : pos + 1 + 2 * n])
            lists.append(tuple(weights))
            pos += 1 + 2 * n
        else:
            lists.append(tuple(text(x) for x in reply[pos + 1 : pos + 1 + n]))
            pos += 1 + n
    peers: dict[str, float] = {}
    if pos < len(reply):  # (shopper, similarity) pairs
        n = int(reply[pos])
        peers = _pairs(reply[pos + 1 : pos + 1 + 2 * n])
    recent, cart, hist, cats = lists
    return RecContext(
        int(float(text(reply[0]))), int(reply[1]), recent, cart, hist, cats, weights, peers
    )


# -- recommend ---------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One candidate with the product attributes the Function filters and scores on."""

    item: str
    category: str = ""
    price: float = 0.0
    in_stock: bool = True
    popularity: float = 0.0  # 0..1
    flags: tuple[str, ...] = ()  # guard flags, e.g. ('age',)
    sources: list[tuple[str, int, float]] = field(default_factory=list)  # (src, anchor, value)


@dataclass(frozen=True)
class RecParams:
    """Everything `recommend` takes besides the user, anchors and candidates."""

    k: int = 10
    surface: str = "home"
    context_item: str = ""
    weights: Mapping[str, float] = field(default_factory=dict)
    default_weights: Mapping[str, float] = field(default_factory=dict)  # not sent (Lua has them)
    per_category: int = 3
    half_life_ms: int = 3_600_000
    content_min: int = 1
    collab_min: int = 10
    repurchase: bool = False
    excluded: tuple[str, ...] = ()
    guards: tuple[tuple[str, str], ...] = ()  # (flag, trait)
    min_price: float = 0.0
    max_price: float = 0.0
    only_categories: tuple[str, ...] = ()
    personal_share: float = 1.0  # blend of reasons (>= 1: none); see lua/60_recommend.lua
    live_share: float = 0.0  # slots kept for live intent of the session (0: none); same place
    now_ms: int = 0


def weights_spec(weights: Mapping[str, float], defaults: Mapping[str, float] | None = None) -> str:
    """'name=value,...' of the weights that differ from `defaults` (the Lua side starts from
    the same defaults: REC.DEFAULT_WEIGHTS; tests keep the two tables equal)."""
    base = defaults or {}
    return ",".join(
        f"{name}={num(value)}" for name, value in sorted(weights.items()) if base.get(name) != value
    )


def recommend_args(
    keys: RecKeys,
    user: str,
    params: RecParams,
    anchors: Sequence[str],
    candidates: Sequence[Candidate],
) -> Args:
    argv: list[Any] = [
        params.now_ms, params.k, params.surface, params.context_item,
        weights_spec(params.weights, params.default_weights), params.per_category,
        params.half_life_ms,
        params.content_min, params.collab_min, 1 if params.repurchase else 0,
        ",".join(params.excluded), ",".join(f"{f}={t}" for f, t in params.guards),
        num(params.min_price), num(params.max_price), ",".join(params.only_categories),
        num(params.personal_share), num(params.live_share), len(anchors), *anchors,
        len(candidates),
    ]  # fmt: skip
    for c in candidates:
        argv += [c.item, c.category, num(c.price), 1 if c.in_stock else 0,
                 short(c.popularity), ",".join(c.flags), len(c.sources)]  # fmt: skip
        for src, anchor, value in c.sources:
            argv += [anchor * 10 + SOURCE_CODE[src], short(value)]
    return keys.recommend_keys(user), argv


class RecItem(NamedTuple):
    """A tuple of atomic values (not tracked by the cyclic GC once collected: lists of them
    in the last-known-good LRU cost nothing in GC pauses)."""

    item_id: str
    score: float
    reason: str  # code: viewed | carted | bought | in_cart | context | history | similar | ...
    anchor: str  # the item the reason refers to ('' = none)
    category: str

    def as_cache(self) -> list[Any]:
        return [self.item_id, round(self.score, 6), self.reason, self.anchor, self.category]

    @classmethod
    def from_cache(cls, row: Sequence[Any]) -> RecItem:
        return cls(str(row[0]), float(row[1]), str(row[2]), str(row[3]), str(row[4]))


@dataclass(frozen=True)
class RecReply:
    tier: str  # cold | content | collab
    interactions: int
    candidates: int
    filtered: dict[str, int]
    items: list[RecItem]


def parse_recommend(reply: Sequence[Any]) -> RecReply:
    filtered: dict[str, int] = {}
    for part in text(reply[3]).split(","):
        if part:
            name, _, n = part.partition("=")
            filtered[name] = int(n)
    rest = reply[4:]
    items = [
        RecItem(
            text(rest[i]),
            float(text(rest[i + 1])),
            text(rest[i + 2]),
            text(rest[i + 3]),
            text(rest[i + 4]),
        )
        for i in range(0, len(rest), 5)
    ]
    return RecReply(text(reply[0]), int(reply[1]), int(reply[2]), filtered, items)


# -- rec_track ---------------------------------------------------------------------------------


def rec_track_args(
    keys: RecKeys,
    groups: Sequence[tuple[str, Sequence[tuple[str, str, int]]]],
    *,
    epoch_ms: int,
    half_life_ms: int,
    cap: int,
    ttl_s: int,
    weights: Mapping[str, float],
) -> Args:
    """groups: (user, [(item, event type, ts_ms), ...]) -> one call over those users' hist keys."""
    spec = ",".join(f"{name}={value:g}" for name, value in weights.items())
    key_list: list[str] = []
    argv: list[Any] = [epoch_ms, half_life_ms, cap, ttl_s, spec]
    for user, entries in groups:
        key_list.append(keys.hist(user))
        argv.append(len(entries))
        for item, etype, ts in entries:
            argv += [item, etype, ts]
    return key_list, argv


# -- rec_hot -------------------------------------------------------------------------------------


def rec_hot_args(
    keys: RecKeys,
    entries: Sequence[tuple[str, float, int]],
    *,
    epoch_ms: int,
    half_life_ms: int,
    cap: int,
    ttl_s: int,
    key: str | None = None,
) -> Args:
    """entries: (item, weight, ts_ms) of accepted interactions; `key`: one part of the split
    popularity (`RecKeys.hot_shards`), default the global `hot`."""
    argv: list[Any] = [epoch_ms, half_life_ms, cap, ttl_s]
    for item, weight, ts in entries:
        argv += [item, num(weight), ts]
    return [key or keys.hot], argv


# -- exp_track -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Increment:
    variant: str
    metric: str
    ts_ms: int
    value: float


@dataclass(frozen=True)
class Exposure:
    rec_id: str
    user: str
    variant: str
    surface: str
    items: tuple[str, ...]
    ts_ms: int


def exp_track_args(
    keys: RecKeys,
    experiment: str,
    increments: Sequence[Increment],
    exposures: Sequence[Exposure],
    *,
    retention_ms: int,
    ttl_s: int,
    log_maxlen: int,
    bucket_ms: int = 60_000,
) -> Args:
    key_list = [keys.exp_counts(experiment), keys.exp_log(experiment)]
    index: dict[str, int] = {}
    body: list[Any] = []
    for inc in increments:
        key = keys.exp_series(experiment, inc.variant, inc.metric)
        if key not in index:
            key_list.append(key)
            index[key] = len(key_list)
        body += [index[key], f"{inc.variant}:{inc.metric}", inc.ts_ms, num(inc.value)]
    argv: list[Any] = [retention_ms, ttl_s, log_maxlen, bucket_ms, len(increments), *body,
                       len(exposures)]  # fmt: skip
    for e in exposures:
        argv += [e.rec_id, e.user, e.variant, e.surface, ",".join(e.items), e.ts_ms]
    return key_list, argv
