"""The recommender's configuration: scoring weights (mirrored in lua/60_recommend.lua), serving
budgets, caches and shares, read from the environment once (`load_rec_config`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from starlette.config import Config

from app.recs.experiments import Assignment

# Mirror of REC.DEFAULT_WEIGHTS in lua/60_recommend.lua (tests/recs/test_recs_lua_unit.py checks
# they are equal). Meaning of each name: docs/recommendations.md, "Scoring".
DEFAULT_WEIGHTS: dict[str, float] = {
    "nn": 1.4, "co": 0.2, "ct": 0.2, "cat": 0.15, "tr": 0.1, "pop": 0.5, "rb": 1.0,
    "view": 1.0, "click": 1.2, "add_to_cart": 1.5, "purchase": 1.0, "cart": 1.5,
    "context": 2.0, "hist": 1.0, "hist_floor": 0.3,
    "aff": 1.0, "price": 0.05, "prior": 0.05,
    "cold.nn": 1, "cold.co": 1, "cold.ct": 1, "cold.cat": 1, "cold.tr": 1.5, "cold.pop": 1.5,
    "cold.rb": 1,
    "content.nn": 0.5, "content.co": 0.5, "content.ct": 1.5, "content.cat": 1, "content.tr": 1,
    "content.pop": 1, "content.rb": 1,
    "collab.nn": 1, "collab.co": 1, "collab.ct": 0.5, "collab.cat": 1, "collab.tr": 0.5,
    "collab.pop": 0.5, "collab.rb": 1,
    "uk": 5.0, "cold.uk": 1, "content.uk": 1, "collab.uk": 1,
    "new": 3.0, "cold.new": 0, "content.new": 0, "collab.new": 1,
    "rise": 1.0, "cold.rise": 0, "content.rise": 0, "collab.rise": 1,
}  # fmt: skip


WEIGHT_NAMES = frozenset(DEFAULT_WEIGHTS)


@dataclass(frozen=True)
class RecConfig:
    """Recommendation tunables; documented in docs/recommendations.md."""

    key_prefix: str = "rt:"
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    per_category: int = 4  # diversity: at most 4 items of one category in a list
    personal_share: float = 1.0  # blend of reasons (< 1: slots kept for popular-now items)
    # At least half of the first i items reflect live intent of this session (views, clicks,
    # cart, the product page) while such candidates remain: the similar-shoppers source,
    # tuned offline on purchases, otherwise outscores a click from two seconds ago.
    live_share: float = 0.5
    recency_half_life_ms: int = 3_600_000  # a session item's anchor weight halves every hour
    content_min: int = 1  # interactions (distinct items) for the content-based tier
    collab_min: int = 10  # ... and for the collaborative tier
    repurchase: bool = False  # variants may allow "buy again" on home
    surface_exclusions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    restricted_categories: Mapping[str, str] = field(default_factory=dict)  # category -> flag
    restricted_tags: Mapping[str, str] = field(
        default_factory=lambda: {"age-restricted": "age", "age_restricted": "age", "18+": "age"}
    )
    guards: tuple[tuple[str, str], ...] = (("age", "age_verified"),)  # flag -> required trait
    # candidate gathering
    n_recent: int = 8
    n_cart: int = 8
    n_hist: int = 40  # history anchors, strongest first (docs/recommendations.md: why 40)
    n_cats: int = 3
    max_anchors: int = 56
    neighbours: int = 20  # per session anchor and list
    hist_neighbours: int = 10  # per history anchor and list
    # lists read for history anchors: the model neighbours only (content and co-bought lists
    # there add no measurable quality and cost inline time; figures in the docs)
    hist_lists: tuple[str, ...] = ("nn",)
    co_shrink: float = 3.0  # co-occurrence count c -> c / (c + shrink)
    co_view_share: float = 0.5  # co-viewed counts this much of co-bought
    n_trending: int = 30
    n_popular: int = 60
    n_rising: int = 30  # 'rise' candidates: items selling above their usual rate lately
    n_category: int = 15
    # similar shoppers (user-kNN): the model's peers of the user, and what they bought lately
    n_peers: int = 100  # peers read per request (the trainer keeps TrainConfig.peers)
    peer_items: int = 30  # strongest history items read per peer
    n_peer_candidates: int = 60  # candidates taken from the peers' items
    # candidates sent to `recommend`: parsing and scoring them is most of the Function's cost
    # (~4 us each); more did not score better on validation (docs/recommendations.md)
    max_candidates: int = 60
    max_sources: int = 8  # per candidate, the strongest (weight x value) are sent
    # new arrivals: a candidate whose catalog `created_ms` lies within the window before now
    # gets the 'new' source, value 2^(-age / half-life)
    new_window_ms: int = 90 * 86_400_000
    new_half_life_ms: int = 30 * 86_400_000
    trending_types: tuple[tuple[str, float], ...] = (
        ("purchase", 1.0), ("add_to_cart", 0.7), ("view", 0.3),
    )  # fmt: skip
    # serving
    budget_ms: float = 50.0  # inline computation budget (also the socket timeout)
    cache_k: int = 20  # cached lists hold this many items (requests up to k=20 can hit)
    cache_max_age_s: float = 300.0  # a cached list is fresh this long (and if no newer event)
    lkg_ttl_s: int = 86_400  # the Redis copy lives a day: last-known-good
    lru_size: int = 10_000  # in-process last-known-good lists
    snapshot_size: int = 200  # in-process popularity snapshot
    breaker_open_s: float = 1.0  # after a connection failure, skip Redis this long
    refresh_s: float = 1.0  # background refresh of globals, catalog, experiments, stats
    # ... except trending and real-time popularity, every `lists_refresh_s`: parsing them is
    # ~2.5 ms of Python, and a background pass holding the GIL every second showed up in the
    # inline p99 (a request waits for the GIL up to the 5 ms switch interval).
    lists_refresh_s: float = 5.0
    # long-term history (rec_track, via the ingestion hook)
    hist_half_life_ms: int = 14 * 86_400_000  # chosen on validation (docs: 14 vs 30 days)
    hist_cap: int = 100
    hist_weights: tuple[tuple[str, float], ...] = (
        ("view", 1.0), ("click", 2.0), ("add_to_cart", 4.0), ("purchase", 8.0),
    )  # fmt: skip
    # real-time popularity (rec_hot, via the ingestion hook): 14-day half-life, like the
    # affinities (same epoch: scores stay finite until ~2044, see docs/keys.md)
    hot_half_life_ms: int = 14 * 86_400_000
    hot_cap: int = 5000
    # On a cluster the real-time popularity is split this many ways by item hash (each part
    # capped at 2 * hot_cap / hot_shards: the top few hundred read back are exact), so no one
    # master takes every batch's write. A standalone server keeps one key.
    hot_shards: int = 12
    hot_weights: tuple[tuple[str, float], ...] = (
        ("view", 0.05), ("click", 0.1), ("add_to_cart", 0.3), ("purchase", 1.0),
    )  # fmt: skip
    model_popularity_share: float = 0.5  # model popularity next to real-time popularity

    def weights_for(self, assignment: Assignment) -> dict[str, float]:
        return {**self.weights, **assignment.weights}


def load_rec_config(env_file: str | Path | None = ".env", key_prefix: str = "rt:") -> RecConfig:
    """Environment overrides: RETAIL_REC_BUDGET_MS, RETAIL_REC_CACHE_MAX_AGE_S,
    RETAIL_REC_PER_CATEGORY, RETAIL_REC_WEIGHTS ('name=value,...'), RETAIL_REC_REPURCHASE,
    RETAIL_REC_LIVE_SHARE (0..1; 0 turns the live-session slots off)."""
    config = Config(env_file if env_file and Path(env_file).exists() else None)
    weights = dict(DEFAULT_WEIGHTS)
    spec = config("RETAIL_REC_WEIGHTS", cast=str, default="")
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in WEIGHT_NAMES:
            raise ValueError(f"RETAIL_REC_WEIGHTS: unknown weight {name!r}")
        weights[name.strip()] = float(value)
    return RecConfig(
        key_prefix=key_prefix,
        weights=weights,
        # Defaults are RecConfig's own (the values the evaluation measured), not copies.
        budget_ms=config("RETAIL_REC_BUDGET_MS", cast=float, default=RecConfig.budget_ms),
        cache_max_age_s=config(
            "RETAIL_REC_CACHE_MAX_AGE_S", cast=float, default=RecConfig.cache_max_age_s
        ),
        per_category=config("RETAIL_REC_PER_CATEGORY", cast=int, default=RecConfig.per_category),
        repurchase=config("RETAIL_REC_REPURCHASE", cast=bool, default=RecConfig.repurchase),
        live_share=share(config("RETAIL_REC_LIVE_SHARE", cast=float, default=RecConfig.live_share)),
    )


def share(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"RETAIL_REC_LIVE_SHARE must be within 0..1, got {value}")
    return value
