"""What feeds the registry besides requests: the ingestion hook (accepted events per type,
conversions and revenue per experiment variant) and the recommender's serving counters."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from app.core.events import Event
from app.obs.registry import CONVERSION_TYPES, DEFAULT, Registry
from app.redis import calls

# -- ingestion hook and collectors --------------------------------------------------------------


class IngestMetrics:
    """An observer of `app.ingest.ingestor.Ingestor`: counts the accepted events of each batch
    (by type) and conversions/revenue per `props.variant`; adds no Function call."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or DEFAULT

    def __call__(self, events: Sequence[Event]) -> list[tuple[str, calls.Args]]:
        counts: dict[str, int] = {}
        for ev in events:
            counts[ev.type] = counts.get(ev.type, 0) + 1
            variant = ev.props.get("variant")
            if ev.type in CONVERSION_TYPES and isinstance(variant, str) and variant:
                self.registry.inc("recs.conversions", 1, variant=variant, type=ev.type)
                if ev.type == "purchase":
                    revenue = sum(ln.qty * ln.price for ln in ev.lines)
                    self.registry.inc("recs.revenue", revenue, variant=variant)
        for etype, n in counts.items():
            self.registry.inc("events.ingested", n, type=etype)
        return []


class StatsCollector:
    """Turns a cumulative counter source (e.g. `Recommender.stats()`: `served.cache`,
    `fallback.popular.timeout`, `over_budget`...) into deltas at each flush."""

    def __init__(self, source: Callable[[], Mapping[str, int]]) -> None:
        self.source = source
        self._last: dict[str, int] = {}

    def __call__(self, registry: Registry) -> None:
        current = dict(self.source())
        for name, value in current.items():
            delta = value - self._last.get(name, 0)
            if delta <= 0:
                continue
            parts = name.split(".")
            if parts[0] == "served" and len(parts) == 2:
                registry.inc("recs.served", delta, source=parts[1])
            elif parts[0] == "fallback" and len(parts) == 3:
                registry.inc("recs.fallbacks", delta, kind=parts[1], reason=parts[2])
            else:
                registry.inc("recs.other", delta, name=name)
        self._last = current
