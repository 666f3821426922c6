"""Synthetic browsing around real purchases: views, carts, clicks and searches (deterministic).

The Online Retail data holds purchases only. Features over views, carts, clicks and searches
(and ratios such as view-to-purchase) need those event types too, so tests and benchmarks add
them around the real purchases with a seeded RNG: same input and seed, same events.

Per purchase line (probabilities): a view of the item up to 3 h before (0.7), an add_to_cart
up to 15 min before (0.35), a click up to 90 min before (0.2), a view of another purchased
item up to 3 days before (0.3; a fifth of those exactly on an hour boundary), a search up to
30 min before (0.1, the category's words as the query). Same user and session as the purchase.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from app.core.units import DAY_MS, HOUR_MS, MINUTE_MS


def synthetic_browsing(purchases: Sequence[dict[str, Any]], seed: int = 6) -> list[dict[str, Any]]:
    """Browsing events (API event dicts) around `purchases` (loaders.online_retail events)."""
    rng = random.Random(seed)
    catalog = sorted({(p["items"][0]["item_id"], p["items"][0]["category"]) for p in purchases})
    out: list[dict[str, Any]] = []

    def add(kind: str, p: dict[str, Any], ts: int, item: str, cat: str, **extra: Any) -> None:
        body = {"event_id": f"syn:{seed}:{len(out)}", "type": kind, "user_id": p["user_id"],
                "session_id": p["session_id"], "ts": ts, **extra}  # fmt: skip
        if kind != "search":
            body["item_id"] = item
            body["props"] = {"category": cat, "price": p["items"][0]["price"]}
        out.append(body)

    for p in purchases:
        line = p["items"][0]
        item, cat, ts = line["item_id"], line["category"], p["ts"]
        if rng.random() < 0.7:
            add("view", p, ts - rng.randrange(1, 180 * MINUTE_MS), item, cat)
        if rng.random() < 0.35:
            add("add_to_cart", p, ts - rng.randrange(0, 15 * MINUTE_MS), item, cat)
        if rng.random() < 0.2:
            add("click", p, ts - rng.randrange(0, 90 * MINUTE_MS), item, cat)
        if rng.random() < 0.3 and catalog:
            other, other_cat = rng.choice(catalog)
            when = ts - rng.randrange(0, 3 * DAY_MS)
            if rng.random() < 0.2:
                when -= when % HOUR_MS  # exactly on bucket boundaries
            add("view", p, when, other, other_cat)
        if rng.random() < 0.1:
            query = " ".join(cat.split("-")) or "gift"
            add("search", p, ts - rng.randrange(0, 30 * MINUTE_MS), "", "", props={"query": query})
    return out
