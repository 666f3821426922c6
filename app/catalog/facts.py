"""What ingestion asks of the catalog: does an item exist, and at what price.

The HTTP API looks the items of a request's events up in one pipelined round trip (one
`JSON.GET` per distinct item, so it works on a cluster too) before ingesting them:
- an event for an item the catalog does not know is still accepted (catalog feeds lag behind
  the storefront) but flagged `unknown_item` in its result and counted in `/metrics`;
- a line without a price (`props.price` absent or 0) gets the catalog's price, so a cart line
  shows what the product costs instead of 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import redis

from app.catalog.index import CatalogKeys
from app.core.events import Event


def event_items(events: Iterable[Event]) -> list[str]:
    """Distinct item ids of the events' lines, first seen first."""
    return list(dict.fromkeys(ln.item_id for ev in events for ln in ev.lines))


def catalog_prices(
    client: redis.Redis, ckeys: CatalogKeys, items: Sequence[str]
) -> dict[str, float | None]:
    """item -> its catalog price, or None when the catalog has no such product."""
    if not items:
        return {}
    pipe = client.pipeline(transaction=False)
    for item in items:
        pipe.execute_command("JSON.GET", ckeys.doc(item), "$.price")  # type: ignore[no-untyped-call]
    out: dict[str, float | None] = {}
    for item, raw in zip(items, pipe.execute(), strict=True):
        found = json.loads(raw) if raw is not None else []
        out[item] = float(found[0]) if found and isinstance(found[0], int | float) else None
    return out


def unknown_items(event: Event, prices: Mapping[str, float | None]) -> list[str]:
    return [ln.item_id for ln in event.lines if prices.get(ln.item_id) is None]


def with_catalog_prices(event: Event, prices: Mapping[str, float | None]) -> Event:
    """The event with each price-less line priced from the catalog (unknown items stay 0)."""
    if not any(ln.price <= 0 and prices.get(ln.item_id) for ln in event.lines):
        return event
    lines = tuple(
        replace(ln, price=prices[ln.item_id] or 0.0)
        if ln.price <= 0 and prices.get(ln.item_id)
        else ln
        for ln in event.lines
    )
    return replace(event, lines=lines)
