"""The session document as the API shows it.

Ingestion stores the session in a shape that can be patched one entry at a time
(lua/10_ingest_user.lua, docs/keys.md): item maps `item -> [ts, type, seq]` that may hold up to
2 x cap - 1 entries between trims, plus bookkeeping (`head`, `bhead`, `m`). Clients get the
logical view: lists newest first, capped, without the bookkeeping.
"""

from __future__ import annotations

from typing import Any

from app.core.settings import EngineConfig


def _ordered(entries: Any) -> list[tuple[str, list[Any]]]:
    if not isinstance(entries, dict):
        return []
    rows = [(key, e) for key, e in entries.items() if isinstance(e, list) and len(e) >= 2]
    # Newest first; equal times: the later write (higher seq, always the last element) first.
    rows.sort(key=lambda row: (row[1][0], row[1][-1]), reverse=True)
    return rows


def session_view(doc: dict[str, Any], cfg: EngineConfig) -> dict[str, Any]:
    """Stored session document -> {session_id, started_ts, last_ts, counters, recent, purchased,
    searches, cart} with lists newest first and at most their caps."""
    recent = _ordered(doc.get("recent"))[: cfg.recent_cap]
    purchased = _ordered(doc.get("purchased"))[: cfg.recent_cap]
    searches = _ordered(doc.get("searches"))[: cfg.searches_cap]
    return {
        "session_id": doc.get("session_id", ""),
        "started_ts": doc.get("started_ts"),
        "last_ts": doc.get("last_ts"),
        "counters": doc.get("counters", {}),
        "recent": [{"item": item, "ts": e[0], "type": e[1]} for item, e in recent],
        "purchased": [{"item": item, "ts": e[0]} for item, e in purchased],
        "searches": [{"q": q, "ts": e[0]} for q, e in searches],
        "cart": doc.get("cart", {}),
    }
