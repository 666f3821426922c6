"""Shopper events: the accepted shape, validated field by field.

A rejected event raises `ValidationError(field, message)` before anything is sent to Redis,
and the Lua side validates again before its first write, so a bad event writes nothing.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.core.errors import ValidationError

EVENT_TYPES = ("view", "click", "add_to_cart", "remove_from_cart", "purchase", "search")
ITEM_TYPES = frozenset({"view", "click", "add_to_cart", "remove_from_cart"})
# Ids become part of key names (inside a {hash tag}): a documented alphabet (docs/security.md)
# with no braces (they would move the hash tag), no ':' (the key plan's separator, and the
# `anon:` identity prefix), no '/' or spaces, no control characters; \A...\Z is a full match
# even with `.match` (`$` would accept a trailing newline).
ID_ALPHABET = "letters, digits or . _ @ + = -"
ID_RULE = f"must be 1-64 characters of {ID_ALPHABET}"
ID_RE = re.compile(r"\A[A-Za-z0-9._@+=-]{1,64}\Z")
# A shopper's identity: a user id, or "anon:" + an anonymous id.
ANON_PREFIX = "anon:"
IDENTITY_RE = re.compile(r"\A(?:anon:)?[A-Za-z0-9._@+=-]{1,64}\Z")
EVENT_ID_MAX = 128
# Lines per purchase. Real invoices reach 420 lines in the shipped sample and ~1,100 in the
# full Online Retail data (Dec 2011). Bounded because one purchase is one Function call that
# blocks Redis: measured ~170 ms at 1,000 lines and ~430 ms at 2,000 (ingest, 2-core machine),
# and Lua's unpack() limit (~8,000 values) broke at 4,000 lines.
MAX_ITEMS = 1200
MAX_QUERY = 256
MAX_PROPS_BYTES = 4096
MIN_TS_MS = 946_684_800_000  # 2000-01-01: anything older is a unit mistake (s vs ms)
MAX_FUTURE_MS = 5 * 60 * 1000  # tolerated client clock skew
LABEL_RULE = "must be a string of at most 64 printable characters, without { or }"
PROP_STRINGS = ("query", "surface", "rec_id", "variant", "category")


@dataclass(frozen=True, slots=True)
class Line:
    item_id: str
    qty: int = 1
    price: float = 0.0
    category: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    type: str
    identity: str  # user id, or "anon:<anonymous_id>"
    session_id: str
    ts: int
    lines: tuple[Line, ...] = ()
    query: str = ""
    props: Mapping[str, Any] = field(default_factory=dict)

    @property
    def user_id(self) -> str:
        return self.identity

    def payload(self) -> str:
        """Compact JSON for the interaction log (the Stream). Items are `[item_id, qty, price]`,
        plus the line's category as a 4th element when it has one (the offline feature path
        rebuilds user x category features from the log: app/features/offline.py)."""
        return json.dumps(
            {
                "event_id": self.event_id,
                "type": self.type,
                "user": self.identity,
                "session_id": self.session_id,
                "ts": self.ts,
                "items": [
                    [ln.item_id, ln.qty, ln.price, ln.category]
                    if ln.category
                    else [ln.item_id, ln.qty, ln.price]
                    for ln in self.lines
                ],
                "props": dict(self.props),
            },
            separators=(",", ":"),
        )


def identity_for(user_id: str | None, anonymous_id: str | None) -> str:
    if user_id:
        return user_id
    if anonymous_id:
        return f"anon:{anonymous_id}"
    raise ValidationError("user_id", "user_id or anonymous_id is required")


def _id(obj: Mapping[str, Any], name: str, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None or value == "":
        if required:
            raise ValidationError(name, "is required")
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ValidationError(name, ID_RULE)
    return value


def _label_ok(value: str) -> bool:
    # Categories become part of feature key names (user x category): printable, no braces.
    return len(value) <= 64 and value.isprintable() and "{" not in value and "}" not in value


def _number(value: Any, name: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(name, "must be a number")
    if not math.isfinite(value) or value < minimum:
        raise ValidationError(name, f"must be a finite number >= {minimum:g}")
    return float(value)


def _qty(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise ValidationError(name, "must be an integer from 1 to 100000")
    return value


def _line(obj: Any, name: str, default_category: str) -> Line:
    if not isinstance(obj, Mapping):
        raise ValidationError(name, "must be an object with item_id, qty, price")
    item_id = _id(obj, "item_id")
    assert item_id is not None
    qty = _qty(obj.get("qty", 1), f"{name}.qty")
    price = _number(obj.get("price", 0.0), f"{name}.price")
    category = obj.get("category", default_category) or ""
    if not isinstance(category, str) or not _label_ok(category):
        raise ValidationError(f"{name}.category", LABEL_RULE)
    return Line(item_id, qty, price, category)


def parse_event(obj: Any, *, now_ms: int | None = None) -> Event:
    """Validate one event object (as decoded from JSON)."""
    if not isinstance(obj, Mapping):
        raise ValidationError("event", "must be a JSON object")
    now = now_ms if now_ms is not None else int(time.time() * 1000)

    event_id = obj.get("event_id")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= EVENT_ID_MAX:
        raise ValidationError("event_id", f"must be a string of 1-{EVENT_ID_MAX} characters")
    etype = obj.get("type")
    if etype not in EVENT_TYPES:
        raise ValidationError("type", f"must be one of {', '.join(EVENT_TYPES)}")
    identity = identity_for(_id(obj, "user_id", False), _id(obj, "anonymous_id", False))
    session_id = obj.get("session_id", "") or ""
    # Written into the session document by the Lua side without escaping: the id alphabet.
    if not isinstance(session_id, str) or (session_id and not ID_RE.match(session_id)):
        raise ValidationError("session_id", ID_RULE)

    ts = obj.get("ts", now)
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise ValidationError("ts", "must be an integer (event time, ms since the epoch)")
    if ts < MIN_TS_MS:
        raise ValidationError("ts", "is before 2000-01-01: send milliseconds, not seconds")
    if ts > now + MAX_FUTURE_MS:
        raise ValidationError("ts", "is more than 5 minutes in the future")

    props = obj.get("props") or {}
    if not isinstance(props, Mapping):
        raise ValidationError("props", "must be an object")
    if len(json.dumps(props, separators=(",", ":"))) > MAX_PROPS_BYTES:
        raise ValidationError("props", f"must encode to at most {MAX_PROPS_BYTES} bytes")
    for name in PROP_STRINGS:
        if name in props and not isinstance(props[name], str):
            raise ValidationError(f"props.{name}", "must be a string")
    category = props.get("category", "") or ""
    if not _label_ok(category):
        raise ValidationError("props.category", LABEL_RULE)

    lines: tuple[Line, ...] = ()
    query = ""
    if etype in ITEM_TYPES:
        item_id = _id(obj, "item_id")
        assert item_id is not None
        price = _number(props.get("price", 0.0), "props.price")
        lines = (Line(item_id, _qty(obj.get("qty", 1), "qty"), price, category),)
    elif etype == "purchase":
        raw_items = obj.get("items")
        if raw_items is None and obj.get("item_id") is not None:
            raw_items = [
                {k: obj[k] for k in ("item_id", "qty") if k in obj}
                | {"price": props.get("price", 0.0)}
            ]
        if not isinstance(raw_items, list) or not raw_items:
            raise ValidationError("items", "a purchase needs items: [{item_id, qty, price}]")
        if len(raw_items) > MAX_ITEMS:
            raise ValidationError("items", f"at most {MAX_ITEMS} lines per purchase")
        lines = tuple(_line(it, f"items[{i}]", category) for i, it in enumerate(raw_items))
    else:  # search
        query = props.get("query", "")
        if not isinstance(query, str) or not query.strip():
            raise ValidationError("props.query", "a search event needs a non-empty query")
        if len(query) > MAX_QUERY:
            raise ValidationError("props.query", f"must be at most {MAX_QUERY} characters")
        query = query.strip()
    return Event(event_id, etype, identity, session_id, ts, lines, query, dict(props))


def event_from_payload(obj: Mapping[str, Any]) -> Event:
    """A log entry's `data` JSON (app.core.events.Event.payload) -> Event."""
    props = obj.get("props") or {}
    default_category = props.get("category") or "" if isinstance(props, Mapping) else ""
    lines = tuple(
        Line(
            str(it[0]), int(it[1]), float(it[2]),
            str(it[3]) if len(it) > 3 else str(default_category),
        )
        for it in obj.get("items") or []
    )  # fmt: skip
    etype = str(obj["type"])
    query = str(props.get("query", "")).strip() if etype == "search" else ""
    return Event(
        str(obj["event_id"]), etype, str(obj["user"]), str(obj.get("session_id") or ""),
        int(obj["ts"]), lines, query, dict(props),
    )  # fmt: skip
