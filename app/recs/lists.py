"""What a recommendation request asks (`RecRequest`, `RecFilters`) and what it gets
(`RecList`, cached as JSON; `RecResponse`, with its source and fallback reason)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from app.recs.calls import RecItem
from app.recs.experiments import Assignment


@dataclass(frozen=True)
class RecFilters:
    categories: tuple[str, ...] = ()
    min_price: float = 0.0
    max_price: float = 0.0

    @property
    def empty(self) -> bool:
        return not self.categories and self.min_price <= 0 and self.max_price <= 0

    def key(self) -> str:
        return f"{','.join(self.categories)}|{self.min_price:g}|{self.max_price:g}"

    def admits(self, category: str, price: float) -> bool:
        if self.categories and category not in self.categories:
            return False
        if self.min_price > 0 and price < self.min_price:
            return False
        return not (self.max_price > 0 and price > self.max_price)


@dataclass(frozen=True)
class RecRequest:
    user: str
    surface: str = "home"
    item: str | None = None
    k: int = 10
    filters: RecFilters = field(default_factory=RecFilters)
    now_ms: int = 0  # 0: the server's clock (replays pass event time)


@dataclass
class RecList:
    """A computed list (what the cache and the LRU hold)."""

    items: list[RecItem]
    tier: str
    interactions: int
    as_of_ts: int  # the session's newest event time the list reflects
    computed_ms: int  # wall clock
    variant: str
    model: str | None
    candidates: int = 0
    filtered: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "items": [it.as_cache() for it in self.items], "tier": self.tier,
            "interactions": self.interactions, "as_of_ts": self.as_of_ts,
            "computed_ms": self.computed_ms, "variant": self.variant, "model": self.model,
        }, separators=(",", ":"))  # fmt: skip

    @classmethod
    def from_json(cls, raw: str | bytes) -> RecList:
        d = json.loads(raw)
        return cls(
            items=[RecItem.from_cache(r) for r in d["items"]], tier=d["tier"],
            interactions=int(d["interactions"]), as_of_ts=int(d["as_of_ts"]),
            computed_ms=int(d["computed_ms"]), variant=d["variant"], model=d.get("model"),
        )  # fmt: skip


@dataclass
class RecResponse:
    request: RecRequest
    items: list[RecItem]
    source: str  # cache | inline | fallback
    fallback: str | None  # last_good | popular (when source is fallback)
    fallback_reason: str | None  # redis_unavailable | timeout | budget | error
    age_ms: int
    tier: str | None
    interactions: int | None
    assignment: Assignment
    model: str | None
    rec_id: str
    took_ms: float
    filtered: dict[str, int] = field(default_factory=dict)
